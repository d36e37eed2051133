"""Counting in the kernel against counting the stream: events per second handled, in a qemu guest.

Usage: .venv/bin/python benchmarks/bench_hist.py [--arch x86_64] [--events 100000] [--runs 3]

The workload is busybox ``dd if=/dev/zero of=/dev/null bs=1 count=EVENTS`` in the guest (Debian 6.1 kernel with
hist triggers), one ``vfs_read`` per byte, with a kprobe on ``vfs_read``. Each path counts the probe's events per
task, in its own test session on the same guest, alternating, ``--runs`` times each:

- kernel: ``ktrace.hist(probe, "common_pid.execname")``, the table read with the run (same round trip);
- stream: stream mode (``trace_pipe`` read while the command runs, every event parsed and counted by the pump),
  the count taken once the run's sync marker has streamed past.

"Handled" is what the count accounts for: the table's hits (and its drops, none here) for the kernel; the events
the pump counted for the stream (the ring buffer's losses are reported apart, they are not handled). Events/s is
handled events over the wall time from the run's start until the count is there. The baseline, in the same run,
is the stream.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).parent))

from _results import Result, emit

from pytest_ktrace._identity import RunIdentity
from pytest_ktrace._session import TraceSession
from pytest_ktrace.backends.ssh._backend import SshBackend
from pytest_ktrace.guests import boot, qemu_available

_serial = [0]


def _session(backend: SshBackend, *, stream: bool) -> TraceSession:
    _serial[0] += 1
    return TraceSession(
        backend, RunIdentity.current(), 70000 + _serial[0], stream=stream, run_timeout=900.0, keep_events=1000
    )


def _workload(events: int) -> list[str]:
    return ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={events}"]


def kernel_path(backend: SshBackend, events: int) -> tuple[float, int, int]:
    """Seconds, events handled (the table's hits and drops), dd's own reads counted."""
    session = _session(backend, stream=False)
    try:
        probe = session.kprobe("vfs_read")
        table = session.hist(probe, "common_pid.execname")
        session.arm()
        started = time.perf_counter()
        session.run(_workload(events), check=True)
        handled = table.total
        elapsed = time.perf_counter() - started
        dd = sum(entry.hitcount for task, entry in table.items() if task.comm == "dd")
        return elapsed, handled, dd
    finally:
        report = session.teardown()
        assert not report, report.failures


def stream_path(backend: SshBackend, events: int) -> tuple[float, int, int, int]:
    """Seconds, events handled (counted by the pump), dd's own reads counted, events the ring buffer lost."""
    session = _session(backend, stream=True)
    try:
        probe = session.kprobe("vfs_read")
        session.arm()
        started = time.perf_counter()
        session.run(_workload(events), check=True)
        handled = probe.call_count
        elapsed = time.perf_counter() - started
        lost = sum(session.collect().lost.values())
        dd = sum(1 for event in probe.events if event.comm == "dd")  # the kept ones only
        return elapsed, handled, dd, lost
    finally:
        report = session.teardown()
        assert not report, report.failures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="x86_64")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    missing = qemu_available(args.arch)
    if missing is not None:
        print(f"skipped: {missing}")
        return 0
    with boot(args.arch) as guest:
        backend = SshBackend(guest.host_alias, ssh_config=guest.ssh_config_path)
        try:
            if not backend.describe().has("hist"):
                print(f"skipped: the {args.arch} guest has no hist triggers")
                return 0
            kernel_path(backend, 1000)  # warm: the connection, the probe's BTF-free path, page cache
            kernel: list[tuple[float, int, int]] = []
            stream: list[tuple[float, int, int, int]] = []
            for _ in range(args.runs):
                kernel.append(kernel_path(backend, args.events))
                stream.append(stream_path(backend, args.events))
        finally:
            backend.close()
    kernel_rate = statistics.median(handled / seconds for seconds, handled, _ in kernel)
    stream_rate = statistics.median(handled / seconds for seconds, handled, _, _ in stream)
    lost = max(lost for *_, lost in stream)
    print(f"{args.arch} guest, dd of {args.events} one-byte reads, kprobe on vfs_read, {args.runs} runs per path")
    for name, rows in (("kernel (hist)", kernel), ("stream", stream)):
        for row in rows:
            seconds, handled, dd = row[0], row[1], row[2]
            extra = f", ring buffer lost {row[3]}" if len(row) > 3 else ""
            rate = handled / seconds
            print(f"  {name:14} {seconds:7.2f} s  {handled:8d} handled ({dd} of dd){extra}  {rate:10.0f}/s")
    print(
        f"  median: kernel {kernel_rate:.0f} events/s, stream {stream_rate:.0f} events/s, "
        f"x{kernel_rate / stream_rate:.2f}; the stream lost up to {lost} events"
    )
    emit(
        Result(
            benchmark="bench_hist",
            metric=f"events/s counted per task, {args.events} vfs_read hits in the {args.arch} guest",
            value=round(kernel_rate),
            unit="events/s",
            baseline="the same events streamed (trace_pipe) and counted by the pump, same guest, same run",
            baseline_value=round(stream_rate),
            better="higher",
            note=f"the stream lost up to {lost} events to the ring buffer; the kernel's table dropped none",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
