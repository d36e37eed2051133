"""Per-test overhead of pytest-ktrace on each backend, and SSH round trips against a naive approach.

Usage (root, tracefs mounted):  .venv/bin/python benchmarks/bench_per_test.py [--rounds 10] [--no-vm]

One "test" is what the ktrace fixture does for a typical two-probe test: define an entry and a return probe,
arm them (one batch), run one command, collect the trace, check one assertion, tear everything down.
- local:  uprobes on tests/prog/probed.c through this machine's tracefs
- fake:   the in-memory tracefs imitating the arm64 guest kernel, events injected (it runs no commands)
- ssh:    the same through a real OpenSSH server on 127.0.0.1 (tests/ssh/sshd.py) as a /bin/sh user
- naive:  the same SSH operations, but every tracefs write/read as its own command (what a shell script does)
- vm:     kprobes on __setup_irq in the x86_64 and arm64 qemu guests (TCG), triggered by a device rebind
Prints the median and min per test, round trips per test, and the ratio to local.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from loopback_sshd import ssh_backend  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import Result, emit  # noqa: E402

from ktrace_testing import build_probed  # noqa: E402
from pytest_ktrace._identity import RunIdentity  # noqa: E402
from pytest_ktrace._session import TraceSession  # noqa: E402
from pytest_ktrace._warm import ParkedProbes  # noqa: E402
from pytest_ktrace.backends._base import Backend, Op, OpResult  # noqa: E402
from pytest_ktrace.backends._local import LocalBackend  # noqa: E402


class OneCommandPerOp:
    """Wraps a backend so each operation is its own round trip, like `ssh board 'echo ... >> file'` per step."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        results: list[OpResult] = []
        for op in ops:
            results.extend(self.inner.apply([op]))
            if stop_on_error and not results[-1].ok:
                break
        return results


def uprobe_test(binary: str) -> Callable[[TraceSession], None]:
    def body(session: TraceSession) -> None:
        entry = session.uprobe(binary, "setup_thing", irq="$arg1:s32", name="+0($arg2):string")
        done = session.uretprobe(binary, "setup_thing")
        session.run([binary, "setup", "eth2", "30"])
        entry.assert_called_once_with(irq=30, name="eth2")
        done.assert_returned(0)

    return body


def tracepoint_test(session: TraceSession) -> None:
    """A kernel event, no file on the target to check: what a kprobe test costs in round trips."""
    opened = session.tracepoint("syscalls:sys_enter_openat", filter='filename ~ "*ktrace-bench*"')
    session.run(["cat", "/nonexistent/ktrace-bench"])
    opened.assert_called()


def injected_test(session: TraceSession) -> None:
    """The fake backend runs no commands: the same two probes, with the events injected instead."""
    setup = session.kprobe("__setup_irq", irq="$arg1:u32")
    done = session.kretprobe("__setup_irq")
    session.inject(setup, irq=16)
    session.inject(done, ret=0)
    setup.assert_called()
    done.assert_returned(0)


def setup_irq_test(arch: str) -> Callable[[TraceSession], None]:
    driver, device = {
        "x86_64": ("/sys/bus/platform/drivers/i8042", "i8042"),
        "arm64": ("/sys/bus/amba/drivers/rtc-pl031", "9010000.pl031"),
    }[arch]

    def body(session: TraceSession) -> None:
        setup = session.kprobe("__setup_irq", irq="$arg1:u32")
        done = session.kretprobe("__setup_irq")
        session.run(["sh", "-c", f"echo {device} > {driver}/unbind; echo {device} > {driver}/bind"])
        setup.assert_called()
        done.assert_returned(0)

    return body


def measure(
    backend: Any, body: Callable[[TraceSession], None], rounds: int, *, parked: bool = False
) -> tuple[float, float, float]:
    """Median and min seconds per test and median round trips; ``parked``: as the plugin runs a suite by default,
    the probes parked in the run's instance between tests (else each test's own instance, --ktrace-fresh-probes)."""
    identity = RunIdentity.current()
    times: list[float] = []
    trips: list[int] = []
    backend.describe()
    elf_copies: dict[str, Any] = {}  # what the plugin shares across one run's tests
    serials = iter(range(1, 10_000))
    pool = ParkedProbes(backend, lambda: identity.instance(next(serials))) if parked else None
    try:
        for round_number in range(1, rounds + 2):
            before = backend.round_trips
            started = time.perf_counter()
            session = TraceSession(backend, identity, next(serials), elf_cache=elf_copies, parked=pool)
            try:
                body(session)
            finally:
                report = session.teardown()
            elapsed = time.perf_counter() - started
            assert not report, report.failures
            if round_number > 1:  # the first round warms caches (ELF symbols, formats, connection) and arms
                times.append(elapsed)
                trips.append(backend.round_trips - before)
    finally:
        if pool is not None:
            assert not pool.close()
    return statistics.median(times), min(times), statistics.median(trips)


def bare_loop(binary: str, rounds: int) -> float:
    """The same two-probe test as tracefs operations in a plain Python loop, without the plugin: an instance,
    two uprobe events defined and enabled, the command, the trace read, then disable, rmdir and removal. Median
    seconds per test."""
    import os
    import subprocess

    from pytest_ktrace._elf import symbol_file_offset

    tracefs = "/sys/kernel/tracing"
    offset = symbol_file_offset(binary, "setup_thing")
    group = f"ktrace_bare_{os.getpid()}"

    def append(path: str, text: str) -> None:
        fd = os.open(f"{tracefs}/{path}", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    times = []
    for number in range(rounds + 1):
        started = time.perf_counter()
        instance = f"instances/{group}_{number}"
        os.mkdir(f"{tracefs}/{instance}")
        append("uprobe_events", f"p:{group}/entry_{number} {binary}:{offset:#x} irq=%di:s32 name=+0(%si):string")
        append("uprobe_events", f"r:{group}/exit_{number} {binary}:{offset:#x} ret=%ax:s32")
        for event in (f"entry_{number}", f"exit_{number}"):
            append(f"{instance}/events/{group}/{event}/enable", "1")
        subprocess.run([binary, "setup", "eth2", "30"], stdout=subprocess.DEVNULL, check=True)
        with open(f"{tracefs}/{instance}/trace") as trace:
            assert "irq=30" in trace.read()
        for event in (f"entry_{number}", f"exit_{number}"):
            append(f"{instance}/events/{group}/{event}/enable", "0")
        os.rmdir(f"{tracefs}/{instance}")
        for event in (f"entry_{number}", f"exit_{number}"):
            append("uprobe_events", f"-:{group}/{event}")
        if number:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-vm", action="store_true", help="skip the qemu guests")
    args = parser.parse_args(argv)
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="ktrace-bench-") as scratch:
        binary = str(build_probed(Path(scratch)))
        body = uprobe_test(binary)
        bare = bare_loop(binary, args.rounds)
        rows.append(("local (uprobes)", *measure(LocalBackend(), body, args.rounds)))
        rows.append(("local, probes parked between tests", *measure(LocalBackend(), body, args.rounds, parked=True)))
        local_parked = rows[-1][1]
        rows.append(("local tracepoint, parked", *measure(LocalBackend(), tracepoint_test, args.rounds, parked=True)))
        local_tracepoint = rows[-1][1]
        from pytest_ktrace.fake._backend import FakeBackend
        from pytest_ktrace.snapshots._snapshot import load_snapshot

        fake = FakeBackend(load_snapshot("debian-6.1-arm64"))
        rows.append(("fake debian-6.1-arm64 (inject)", *measure(fake, injected_test, args.rounds)))

        with ssh_backend(Path(scratch)) as ssh:
            rows.append(("ssh 127.0.0.1, batched", *measure(ssh, body, args.rounds)))
            rows.append(("ssh 127.0.0.1, probes parked", *measure(ssh, body, args.rounds, parked=True)))
            ssh_parked = rows[-1]
            rows.append(("ssh 127.0.0.1, tracepoint, parked", *measure(ssh, tracepoint_test, args.rounds, parked=True)))
            ssh_tracepoint = rows[-1]
            rows.append(("ssh 127.0.0.1, one command per op", *measure(OneCommandPerOp(ssh), body, args.rounds)))

        guest_rows: list[tuple[str, Any, Any]] = []  # arch, parked row, fresh row
        if not args.no_vm:
            from pytest_ktrace import guests
            from pytest_ktrace.backends.ssh._backend import SshBackend

            for arch in guests.ARCHES:
                reason = guests.qemu_available(arch)
                if reason:
                    print(f"skipping the {arch} guest: {reason}")
                    continue
                with guests.boot(arch) as guest, SshBackend(guest.host_alias, ssh_config=guest.ssh_config_path) as vm:
                    test = setup_irq_test(arch)
                    rows.append((f"vm {arch} (kprobes, TCG)", *measure(vm, test, args.rounds)))
                    rows.append((f"vm {arch} (kprobes, TCG), parked", *measure(vm, test, args.rounds, parked=True)))
                    guest_rows.append((arch, rows[-1], rows[-2]))

    base = rows[0][1]
    print(
        f"\nper-test overhead, {args.rounds} rounds after one warm-up (define 2 probes, arm, run, collect, "
        "assert, teardown)"
    )
    print(f"{'backend':38} {'median ms':>10} {'min ms':>8} {'round trips':>12} {'x local':>8}")
    for name, median, fastest, trips in rows:
        print(f"{name:38} {median * 1e3:10.1f} {fastest * 1e3:8.1f} {trips:12.0f} {median / base:8.2f}")
    print(f"{'bare Python loop, same tracefs writes':38} {bare * 1e3:10.1f}")
    print(
        f"local with parked probes / bare loop: {local_parked / bare:.2f}x (fresh probes per test: {base / bare:.2f}x)"
    )
    loop = "the same tracefs operations per test in a bare Python loop"
    figures = [
        ("two-uprobe test on this machine, probes parked between tests (the default)", local_parked, loop, bare),
        ("two-uprobe test on this machine, --ktrace-fresh-probes", base, loop, bare),
        (
            f"the same test over SSH on 127.0.0.1, probes parked: {ssh_parked[3]:.0f} round trip(s) (one script: "
            "the uprobe file's check for change, the previous test's teardown, arming, the command, its trace)",
            ssh_parked[1],
            "this machine's tracefs, probes parked, same run",
            local_parked,
        ),
        (
            f"a tracepoint test over SSH on 127.0.0.1, parked: {ssh_tracepoint[3]:.0f} round trip(s) (the previous "
            "test's teardown, arming, the command and its trace in one script)",
            ssh_tracepoint[1],
            "the same test on this machine's tracefs, same run",
            local_tracepoint,
        ),
    ]
    for arch, parked_row, fresh_row in guest_rows:
        figures.append(
            (
                f"a kprobe test in the {arch} qemu guest (TCG) over SSH, parked: {parked_row[3]:.0f} round trip(s)",
                parked_row[1],
                f"the same test with fresh probes per test, same guest and run ({fresh_row[3]:.0f} round trips)",
                fresh_row[1],
            )
        )
    for metric, value, baseline, baseline_value in figures:
        emit(
            Result(
                benchmark="bench_per_test",
                metric=metric,
                value=value * 1e3,
                unit="ms",
                baseline=baseline,
                baseline_value=baseline_value * 1e3,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
