"""How fast a uprobe's place is found in its ELF file: the first lookup (the file's symbols read) and the ones after
it (cached by path, mtime and size).

    python benchmarks/bench_elf.py [--repeat 20] [--lookups 10000]

On tests/prog/probed.c built here and on this machine's C library (a large file, its symbols in .dynsym), each
next to a baseline from the same run:
(a) the first lookup of a symbol, against ``nm --defined-only`` of the same file (binutils reading the symbols,
    a subprocess: wall time, median of --repeat);
(b) a cached lookup, against the ``os.stat`` that keys the cache (the floor of a lookup that notices a rebuilt
    file), per call, CPU time over --lookups calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))

from _results import Result, emit  # noqa: E402

from ktrace_testing import build_probed  # noqa: E402
from pytest_ktrace import _elf as elf  # noqa: E402


def libc() -> Path:
    """The C library this process runs with (as the kernel mapped it)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "/libc.so" in path or "/libc-" in path:
            return Path(os.path.realpath(path))
    raise SystemExit("no C library mapped in this process")


def first_lookup(path: Path, symbol: str, repeat: int) -> tuple[float, float]:
    ours, nm = [], []
    for _ in range(repeat):
        elf._cache.clear()
        started = time.perf_counter()
        elf.symbol_file_offset(path, symbol)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run(["nm", "--defined-only", str(path)], capture_output=True, check=True)
        nm.append(time.perf_counter() - started)
    return statistics.median(ours), statistics.median(nm)


def cached_lookup(path: Path, symbol: str, lookups: int) -> tuple[float, float]:
    elf.symbol_file_offset(path, symbol)
    started = time.process_time()
    for _ in range(lookups):
        elf.symbol_file_offset(path, symbol)
    ours = (time.process_time() - started) / lookups
    started = time.process_time()
    for _ in range(lookups):
        os.stat(path)
    return ours, (time.process_time() - started) / lookups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--lookups", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ktrace-bench-elf-") as scratch:
        files = [("probed.c", build_probed(Path(scratch)), "fib"), ("the C library", libc(), "malloc")]
        results = []
        for label, path, symbol in files:
            first, nm = first_lookup(path, symbol, args.repeat)
            cached, stat = cached_lookup(path, symbol, args.lookups)
            size = path.stat().st_size
            print(
                f"{label} ({size / 1e3:.0f} kB): first lookup {first * 1e3:.2f} ms (nm {nm * 1e3:.2f} ms), "
                f"cached {cached * 1e6:.2f} us (os.stat {stat * 1e6:.2f} us)"
            )
            results.append((label, first, nm, cached, stat))
    for name, first, nm, cached, stat in results:
        emit(
            Result(
                "bench_elf",
                f"first lookup of a symbol in {name}",
                first * 1e3,
                "ms",
                "nm --defined-only of the same file, same run",
                nm * 1e3,
            )
        )
        emit(
            Result(
                "bench_elf",
                f"a cached lookup in {name}",
                cached * 1e6,
                "us",
                "the os.stat that keys the cache, same run",
                stat * 1e6,
            )
        )


if __name__ == "__main__":
    main()
