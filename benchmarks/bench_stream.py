"""Streaming throughput: events per second read from trace_pipe, parsed and dispatched, locally and over SSH.

Usage: .venv/bin/python benchmarks/bench_stream.py [--events 200000] [--burst 2000]

Two workloads on a uprobe on add_u64 of tests/prog/probed.c (``probed loop N``), each through the local backend
and through SSH to a real sshd on 127.0.0.1 (the dd-based stream):

- one burst: ``loop --events`` in one run with a large buffer (nothing lost), timed from the run's start until
  the pump has seen the run's sync marker: the pump's own throughput (the program makes events far faster);
- many runs: ``--events`` in runs of ``loop --burst`` with a 64 KB per-CPU buffer (each run alone overflows it
  without a reader): events/s of a long busy test, with the lost count (should be 0).

The baseline of the burst, in the same run: the same burst collected the ordinary way (the trace read after the
run and parsed, every event counted). The many-runs workload has none (collected, it would lose events), so its
figures go in the burst's note.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))

from _results import Result, emit  # noqa: E402
from loopback_sshd import ssh_backend  # noqa: E402

from ktrace_testing import build_probed  # noqa: E402
from pytest_ktrace._identity import RunIdentity  # noqa: E402
from pytest_ktrace._session import TraceSession  # noqa: E402
from pytest_ktrace.backends._local import LocalBackend  # noqa: E402

_serial = [0]


def _session(backend: Any, stream: bool = True, **kwargs: Any) -> TraceSession:
    _serial[0] += 1
    if stream:
        kwargs["keep_events"] = 1000
    return TraceSession(backend, RunIdentity.current(), _serial[0], stream=stream, **kwargs)


def one_burst(backend: Any, binary: str, events: int, stream: bool = True) -> tuple[float, int, int]:
    """Seconds from the run's start until every event is counted, events counted, events lost."""
    session = _session(backend, stream=stream, buffer_kb=65536)
    try:
        add = session.uprobe(binary, "add_u64", a="$arg1:u64")
        session.arm()
        started = time.perf_counter()
        session.run([binary, "loop", str(events)], check=True)
        counted = add.call_count  # collected: the trace is read and parsed here
        elapsed = time.perf_counter() - started
        return elapsed, counted, sum(session.collect().lost.values())
    finally:
        assert not session.teardown()


def many_runs(backend: Any, binary: str, events: int, burst: int) -> tuple[float, int, int]:
    session = _session(backend, buffer_kb=64)
    try:
        add = session.uprobe(binary, "add_u64", a="$arg1:u64")
        session.arm()
        started = time.perf_counter()
        for _ in range(events // burst):
            session.run([binary, "loop", str(burst)], check=True)
        elapsed = time.perf_counter() - started
        return elapsed, add.call_count, sum(session.collect().lost.values())
    finally:
        assert not session.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--no-ssh", action="store_true")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str, float, int, int]] = []
    collected: dict[str, tuple[float, int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="ktrace-bench-") as scratch:
        binary = str(build_probed(Path(scratch)))

        def measure(name: str, backend: Any) -> None:
            collected[name] = one_burst(backend, binary, args.events, stream=False)
            rows.append((name, "one burst, 64 MB buffer", *one_burst(backend, binary, args.events)))
            rows.append(
                (name, f"runs of {args.burst}, 64 KB buffer", *many_runs(backend, binary, args.events, args.burst))
            )

        measure("local", LocalBackend())
        if not args.no_ssh:
            with ssh_backend(Path(scratch)) as ssh:
                measure("ssh 127.0.0.1", ssh)
    print(f"\nstreamed {args.events} uprobe events (add_u64), parsed and dispatched")
    print(f"{'backend':16} {'workload':28} {'seconds':>8} {'events/s':>10} {'counted':>9} {'lost':>7}")
    for name, workload, seconds, counted, lost in rows:
        print(f"{name:16} {workload:28} {seconds:8.2f} {counted / seconds:10.0f} {counted:9d} {lost:7d}")
    for name, (seconds, counted, lost) in collected.items():
        workload = "one burst, collected"
        print(f"{name:16} {workload:28} {seconds:8.2f} {counted / seconds:10.0f} {counted:9d} {lost:7d}")
    for name, (base_seconds, base_counted, _) in collected.items():
        burst = next(row for row in rows if row[0] == name and row[1].startswith("one burst"))
        runs = next(row for row in rows if row[0] == name and row[1].startswith("runs of"))
        emit(
            Result(
                benchmark="bench_stream",
                metric=f"events streamed from trace_pipe, parsed and dispatched, {name}, one burst",
                value=round(burst[3] / burst[2]),
                unit="events/s",
                baseline="the same burst collected after the run (trace read and parsed)",
                baseline_value=round(base_counted / base_seconds),
                better="higher",
                note=(
                    f"{args.events} uprobe events; as runs of {args.burst} through a 64 KB buffer "
                    f"{runs[3] / runs[2]:.0f} events/s, {runs[4]} lost"
                ),
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
