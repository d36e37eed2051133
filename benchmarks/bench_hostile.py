"""How the trace parser's time grows on pathological lines: a huge line of one character, of a pattern that looks
like the start of a trace line, of opening parentheses, of blanks (ASCII and U+3000); and on many lines of noise
after an event whose last field is a string (which cannot tell noise from its own continuation).

    python benchmarks/bench_hostile.py [--size 15000] [--repeat 5]

For each shape, the parse of 4 x --size characters (or 4 x --size / 6 noise lines) next to four times the parse
of --size characters (lines), both measured in this run (CPU time, median of --repeat): a ratio near 1 is linear
growth, near 4 quadratic. Such lines reach the parser from a trace that a test's own program filled (a string
field written by user space) or from a corrupted buffer; the tests check what the parser returns for them, this
script how long it takes. One RESULT line per shape.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))
from _results import Result, emit

from pytest_ktrace._formats import FormatCatalog, parse_format
from pytest_ktrace._parse import TraceParser
from pytest_ktrace.snapshots._snapshot import load_snapshot

SHAPES: dict[str, Callable[[int], str]] = {
    "one character": lambda n: "a" * n,
    "dashes (a task name's separator)": lambda n: "-" * n,
    "'x-1 ' repeated (task-pid pairs)": lambda n: "x-1 " * (n // 4),
    "opening parentheses": lambda n: "(" * n,
    "ASCII blanks": lambda n: " " * n,
    "U+3000 blanks": lambda n: "\u3000" * n,
}
NOISE = "    function_graph noise |  }"
#: an event of the test's own probe group whose last field is a string, then noise lines
PROBE_FORMAT = """name: ent
ID: 4242
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long __probe_ip;\toffset:8;\tsize:8;\tsigned:0;
\tfield:s32 irq;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] nm;\toffset:20;\tsize:4;\tsigned:1;

print fmt: "(%lx) irq=%d nm=\\"%s\\"", REC->__probe_ip, REC->irq, __get_str(nm)
"""
EVENT_LINE = "            prog-42      [001] .....   123.456789: ent: (0x1) irq=1 nm=x"
NOISY: dict[str, Callable[[int], str]] = {
    "noise lines after an event ending in a string": lambda n: "\n".join([EVENT_LINE, *[NOISE] * (n // 6)]),
}


def catalog() -> FormatCatalog:
    """The formats of 40 events of a shipped kernel snapshot and one probe: a parser that knows real events."""
    events = load_snapshot("debian-6.12-x86_64").events
    formats = [parse_format(events[key], key.split("/", 1)[0]) for key in sorted(events)[:40]]
    return FormatCatalog([*formats, parse_format(PROBE_FORMAT, "grp")])


def cpu_seconds(parse: Callable[[str], object], text: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.process_time()
        parse(text)
        times.append(time.process_time() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=15_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    known = catalog()

    def parse(text: str) -> object:
        return TraceParser(known).parse(text)

    print(f"{'shape':48} {'1x ms':>9} {'4x ms':>9} {'4x / (4 * 1x)':>14}")
    results = []
    for shape, make in {**SHAPES, **NOISY}.items():
        small = cpu_seconds(parse, make(args.size), args.repeat)
        large = cpu_seconds(parse, make(4 * args.size), args.repeat)
        print(f"{shape:48} {small * 1e3:9.2f} {large * 1e3:9.2f} {large / (4 * small) if small else 0:14.2f}")
        results.append((shape, small, large))
    for shape, small, large in results:
        emit(
            Result(
                benchmark="bench_hostile",
                metric=f"parsing {4 * args.size} characters: {shape}",
                value=large * 1e3,
                unit="ms",
                baseline=f"4 x the parse of {args.size} characters (linear growth), same run",
                baseline_value=4 * small * 1e3,
            )
        )


if __name__ == "__main__":
    main()
