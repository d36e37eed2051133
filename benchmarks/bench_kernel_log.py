"""What capturing the kernel log costs per test, and why it is read as an event rather than from /dev/kmsg.

Usage (root, tracefs mounted):  .venv/bin/python benchmarks/bench_kernel_log.py [--rounds 20]

A "test" is a two-uprobe test on tests/prog/probed.c through this machine's tracefs (define, arm, run, collect,
assert, tear down), once with the kernel log captured (``printk:console`` in the test's instance and the taint
read with each batch: the default) and once with ``--ktrace-kernel-log=off``. Both run interleaved, so drift
hits them alike. The alternative, a ``/dev/kmsg`` read with each trace, is measured as what it would read: the
whole record buffer, since a shell on a board cannot keep a reader's position between commands.

Prints the median per test of each, the ratio, and the /dev/kmsg read's size and time, then the RESULT line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))

from _results import Result, emit  # noqa: E402

from ktrace_testing import build_probed  # noqa: E402
from pytest_ktrace._identity import RunIdentity  # noqa: E402
from pytest_ktrace._session import TraceSession  # noqa: E402
from pytest_ktrace.backends._local import LocalBackend  # noqa: E402


def one_test(backend: LocalBackend, identity: RunIdentity, serial: int, binary: str, kernel_log: str) -> float:
    started = time.perf_counter()
    session = TraceSession(backend, identity, serial, kernel_log=kernel_log)
    try:
        entry = session.uprobe(binary, "setup_thing", irq="$arg1:s32", name="+0($arg2):string")
        session.uretprobe(binary, "setup_thing")
        session.run([binary, "setup", "eth2", "30"])
        entry.assert_called_once_with(irq=30, name="eth2")
        session.check_kernel_log()
    finally:
        report = session.teardown()
        assert not report, report.failures
    return time.perf_counter() - started


def kmsg_read() -> tuple[int, float]:
    """Bytes and seconds of reading every record /dev/kmsg holds (what a stateless reader gets each time)."""
    started = time.perf_counter()
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    size = 0
    try:
        while True:
            try:
                chunk = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # a record overwritten while reading: the reader resumes at the next
                continue
            if not chunk:
                break
            size += len(chunk)
    finally:
        os.close(fd)
    return size, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    backend = LocalBackend()
    identity = RunIdentity.current()
    with tempfile.TemporaryDirectory() as tmp:
        binary = str(build_probed(tmp))
        times: dict[str, list[float]] = {"fail": [], "off": []}
        serial = 0
        for _ in range(args.rounds):
            for policy in ("fail", "off"):
                serial += 1
                times[policy].append(one_test(backend, identity, serial, binary, policy))
    captured, off = statistics.median(times["fail"]), statistics.median(times["off"])
    print(f"two-uprobe test, kernel log captured : {captured * 1e3:7.1f} ms median over {args.rounds}")
    print(f"two-uprobe test, --ktrace-kernel-log=off: {off * 1e3:7.1f} ms median")
    print(f"ratio captured/off: {captured / off:.2f}x (+{(captured - off) * 1e3:.1f} ms per test)")
    sizes, seconds = zip(*(kmsg_read() for _ in range(5)))
    kmsg_kib, kmsg_ms = statistics.median(sizes) / 1024, statistics.median(seconds) * 1e3
    print(
        f"/dev/kmsg read of the whole buffer: {kmsg_kib:.0f} KiB in {kmsg_ms:.1f} ms locally, with every command's "
        "trace (over SSH: that many bytes more per round trip)"
    )
    emit(
        Result(
            benchmark="bench_kernel_log",
            metric="two-uprobe test on this machine, kernel log captured (printk:console, taint with each batch)",
            value=round(captured * 1e3, 2),
            unit="ms",
            baseline="the same test with --ktrace-kernel-log=off",
            baseline_value=round(off * 1e3, 2),
            note=(
                f"median of {args.rounds} interleaved; no round trip of its own, where a /dev/kmsg read would "
                f"fetch the whole record buffer ({kmsg_kib:.0f} KiB here) with every command's trace"
            ),
        )
    )


if __name__ == "__main__":
    main()
