"""What the kernel makes a test's teardown wait for, measured on this machine's tracefs (root, tracefs mounted).

Usage:  .venv/bin/python benchmarks/bench_teardown_kernel.py [--rounds 3] [--events 8]

Uprobe events on libc functions, enabled in an instance of their own, are torn down in different ways; each way
is timed from the first write to the last (median of the rounds):

- each event's ``enable`` written 0, one by one; the group's ``enable``; the instance's ``events/enable``;
  ``rmdir`` of the instance with the events still enabled; the same one-by-one disables from one thread per
  event (do the kernel's waits overlap?);
- one event holding all the probes (appended under one name): its single disable;
- the instance's ``rmdir`` once everything is disabled, and the probe removal after it;
- syscall tracepoints instead of uprobes: disabled one by one, by their system, or left to ``rmdir``.

Prints each figure and the ratios that matter for a teardown's design: the cost per uprobe event, whether a
group write or concurrency buys anything, and what one event holding every probe saves. Everything it creates is
in the group and instances ``ktrace_bench_<pid>``, removed at the end whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Callable

TRACEFS = "/sys/kernel/tracing"
GROUP = f"ktrace_bench_{os.getpid()}"
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def write(path: str, data: str) -> None:
    fd = os.open(f"{TRACEFS}/{path}", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def libc_functions(count: int) -> list[int]:
    """Offsets of ``count`` exported libc functions (distinct places for the probes)."""
    listing = subprocess.run(
        ["nm", "-D", "--defined-only", LIBC], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    offsets = sorted({int(line.split()[0], 16) for line in listing if " T " in line})
    return offsets[:count]


@contextlib.contextmanager
def instance(name: str) -> Iterator[str]:
    os.mkdir(f"{TRACEFS}/instances/{name}")
    try:
        yield f"instances/{name}"
    finally:
        with contextlib.suppress(OSError):
            write(f"instances/{name}/events/enable", "0")
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(f"{TRACEFS}/instances/{name}")


def remove_probes() -> None:
    with contextlib.suppress(OSError):
        write("uprobe_events", f"-:{GROUP}/\n")


def define(offsets: list[int], *, one_event: bool) -> list[str]:
    """Uprobe events on ``offsets``: one each, or one event holding them all. Their names."""
    for index, offset in enumerate(offsets):
        write("uprobe_events", f"p:{GROUP}/{'all' if one_event else f'e{index}'} {LIBC}:0x{offset:x}\n")
    return ["all"] if one_event else [f"e{index}" for index in range(len(offsets))]


def timed_uprobe_teardown(offsets: list[int], how: str, rounds: int) -> float:
    """Median seconds of one way of tearing down enabled uprobe events."""
    times = []
    for round_ in range(rounds):
        try:
            with instance(f"{GROUP}_{how}_{round_}") as where:
                names = define(offsets, one_event=how == "one event")
                for name in names:
                    write(f"{where}/events/{GROUP}/{name}/enable", "1")
                started = time.perf_counter()
                _TEARDOWNS[how](where, names)
                times.append(time.perf_counter() - started)
        finally:
            remove_probes()
    return statistics.median(times)


def _each(where: str, names: list[str]) -> None:
    for name in names:
        write(f"{where}/events/{GROUP}/{name}/enable", "0")


def _threads(where: str, names: list[str]) -> None:
    threads = [threading.Thread(target=write, args=(f"{where}/events/{GROUP}/{name}/enable", "0")) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _rmdir(where: str, names: list[str]) -> None:
    os.rmdir(f"{TRACEFS}/{where}")


_TEARDOWNS: dict[str, Callable[[str, list[str]], None]] = {
    "each": _each,
    "group": lambda where, names: write(f"{where}/events/{GROUP}/enable", "0"),
    "instance": lambda where, names: write(f"{where}/events/enable", "0"),
    "rmdir enabled": _rmdir,
    "threads": _threads,
    "one event": _each,
}


def timed_rmdir_and_removal(offsets: list[int], rounds: int) -> tuple[float, float]:
    """Median seconds of rmdir once all is disabled, and of the probe removal after it."""
    rmdirs, removals = [], []
    for round_ in range(rounds):
        try:
            with instance(f"{GROUP}_after_{round_}") as where:
                names = define(offsets, one_event=False)
                for name in names:
                    write(f"{where}/events/{GROUP}/{name}/enable", "1")
                write(f"{where}/events/{GROUP}/enable", "0")
                started = time.perf_counter()
                os.rmdir(f"{TRACEFS}/{where}")
                rmdirs.append(time.perf_counter() - started)
            started = time.perf_counter()
            remove_probes()
            removals.append(time.perf_counter() - started)
        finally:
            remove_probes()
    return statistics.median(rmdirs), statistics.median(removals)


def timed_tracepoints(count: int, how: str, rounds: int) -> float:
    with open(f"{TRACEFS}/available_events") as listing:
        events = [line.strip().replace(":", "/") for line in listing if line.startswith("syscalls:sys_enter_")]
    events = events[:count]
    times = []
    for round_ in range(rounds):
        with instance(f"{GROUP}_tp_{round_}") as where:
            for event in events:
                write(f"{where}/events/{event}/enable", "1")
            started = time.perf_counter()
            if how == "each":
                for event in events:
                    write(f"{where}/events/{event}/enable", "0")
            elif how == "system":
                write(f"{where}/events/syscalls/enable", "0")
            os.rmdir(f"{TRACEFS}/{where}")
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=8)
    args = parser.parse_args()
    offsets = libc_functions(args.events)
    ms = {how: 1000 * timed_uprobe_teardown(offsets, how, args.rounds) for how in _TEARDOWNS}
    single = 1000 * timed_uprobe_teardown(offsets[:1], "each", args.rounds)
    rmdir_s, removal_s = timed_rmdir_and_removal(offsets, args.rounds)
    print(f"{args.events} enabled uprobe events, disabled:")
    for how, value in ms.items():
        print(f"  {how:14} {value:7.1f} ms")
    print(f"  one event alone: {single:.1f} ms; per event when {args.events}: {ms['each'] / args.events:.1f} ms")
    print(
        f"  group write vs one by one: x{ms['each'] / ms['group']:.2f}; threads vs one by one: "
        f"x{ms['each'] / ms['threads']:.2f}; one event holding every probe vs one event each: "
        f"x{ms['each'] / ms['one event']:.2f}"
    )
    print(f"then rmdir of the instance: {1000 * rmdir_s:.1f} ms; removing the probes: {1000 * removal_s:.2f} ms")
    for count in (1, args.events):
        figures = {how: 1000 * timed_tracepoints(count, how, args.rounds) for how in ("each", "system", "rmdir")}
        print(
            f"{count} syscall tracepoint(s), disabled and rmdir: "
            + ", ".join(f"{how} {value:.1f} ms" for how, value in figures.items())
        )


if __name__ == "__main__":
    main()
