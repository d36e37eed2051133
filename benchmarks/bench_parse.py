"""How fast TraceParser turns trace text into events, next to a naive parser measured in the same run: lines/s.

    python benchmarks/bench_parse.py [--lines N] [--repeat R]

For the same trace, R interleaved rounds each run every variant once (a fresh parser per run: compiling the
per-event patterns is part of the cost) and each figure is the median of its R runs, in CPU time of this
process (the machine may be shared; wall time would count the other processes' turns). What a variant returns
is dropped inside its timing: freeing the events is part of what they cost.

(a) ``wc -l`` of the trace file (a subprocess, wall time: reading the bytes, no parsing at all);
(b) the naive baseline: one generic regular expression per line into a dict of strings (the header's
    columns, the event name and the whole body as one string: no field is split, nothing is typed);
(c) ``TraceParser.parse``, and asking the result for ``len(events)``, ``lost``, ``unparsed`` and the
    per-event counts (``event_counts()``): all of that is exact after the parse's one pass over the text
    (every line's event name, head and timestamp found, LOST / header / multi-line / odd lines through the
    reference parser), but no :class:`~pytest_ktrace._events.Event` is built yet;
(d) (c) and then the whole trace as typed events (``list(parsed.events)``): one ``Event`` per line with its
    task (``comm``, ``pid``, ``cpu``) and ``timestamp`` typed; its fields, like (b)'s body, not split yet:
    they are decoded, typed by the event's format, for all the events of one kind when the first of them
    is read;
(g) (d) and then every field of every event read (``event.fields`` of each): every field split by its
    format and typed, ``int`` or ``str``: more work than (b) does, measured against it all the same;
(e) (c) and the events of one probe (``parsed.of("bench", "ent")``, about a quarter of the lines) with their
    fields read, what a test asking about one probe pays;
(c-py), (d-py): (c) and (d) with the index pass in Python, as where the parser's C helper
    (``pytest_ktrace._speedups``) was not built (no C compiler at install): when the helper is there;
(r) the line-by-line reference parser inside TraceParser (``_parse_slow``, every event decoded).

The targets: (c) >= 1 million lines/s, (d) at least (b)'s lines/s. Before timing, the result is checked
equal to the reference's (events, lost, unparsed, per-probe selections). Ends with one RESULT line per figure
(``_results.py``): (c), (d), (g) and (e), each next to (b) of the same run.

The trace is synthetic but made of real line shapes (kernel 6.x guests and 5.15-6.4 ones): uprobe /
uretprobe / kprobe / kretprobe events with ints, strings and ``%pS`` values, in the ``fields`` format, in
reverse field order and in the default probe format; tracepoints (sched_switch, sys_enter_openat /
sys_exit_openat, irq_handler_entry / irq_handler_exit); a few string values holding newlines, LOST lines and
the ``trace`` file's header.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).parent))
from _results import Result, emit

try:
    from pytest_ktrace import _indexed as indexed_mod
    from pytest_ktrace._events import Event
    from pytest_ktrace._formats import FormatCatalog, parse_format
    from pytest_ktrace._parse import ParsedTrace, TraceParser
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from pytest_ktrace import _indexed as indexed_mod
    from pytest_ktrace._events import Event
    from pytest_ktrace._formats import FormatCatalog, parse_format
    from pytest_ktrace._parse import ParsedTrace, TraceParser

COMMON = """\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
"""


def fmt(name: str, eid: int, fields: str) -> str:
    return f'name: {name}\nID: {eid}\nformat:\n{COMMON}\n{fields}\nprint fmt: ""\n'


def fl(decl: str, off: int, size: int, signed: int) -> str:
    return f"\tfield:{decl};\toffset:{off};\tsize:{size};\tsigned:{signed};\n"


FORMATS = {
    "bench": [  # uprobes / uretprobes (as pytest-ktrace defines them)
        fmt(
            "ent",
            3000,
            fl("unsigned long __probe_ip", 8, 8, 0)
            + fl("s32 irq", 16, 4, 1)
            + fl("__data_loc char[] name", 20, 4, 1)
            + fl("u64 t", 24, 8, 0)
            + fl("u8 c", 32, 1, 0),
        ),
        fmt(
            "ret",
            3001,
            fl("unsigned long __probe_func", 8, 8, 0)
            + fl("unsigned long __probe_ret_ip", 16, 8, 0)
            + fl("s32 ret", 24, 4, 1),
        ),
    ],
    "kbench": [  # kprobes / kretprobes
        fmt(
            "kopen",
            3002,
            fl("unsigned long __probe_ip", 8, 8, 0)
            + fl("s32 dfd", 16, 4, 1)
            + fl("__data_loc char[] path", 20, 4, 1)
            + fl("u32 flags", 24, 4, 0),
        ),
        fmt(
            "kopen_ret",
            3003,
            fl("unsigned long __probe_func", 8, 8, 0)
            + fl("unsigned long __probe_ret_ip", 16, 8, 0)
            + fl("s64 ret", 24, 8, 1),
        ),
    ],
    "syscalls": [
        fmt(
            "sys_enter_openat",
            782,
            fl("int __syscall_nr", 8, 4, 1)
            + fl("int dfd", 16, 8, 0)
            + fl("const char * filename", 24, 8, 0)
            + fl("int flags", 32, 8, 0)
            + fl("umode_t mode", 40, 8, 0),
        ),
        fmt("sys_exit_openat", 781, fl("int __syscall_nr", 8, 4, 1) + fl("long ret", 16, 8, 1)),
    ],
    "sched": [
        fmt(
            "sched_switch",
            300,
            fl("char prev_comm[16]", 8, 16, 0)
            + fl("pid_t prev_pid", 24, 4, 1)
            + fl("int prev_prio", 28, 4, 1)
            + fl("long prev_state", 32, 8, 1)
            + fl("char next_comm[16]", 40, 16, 0)
            + fl("pid_t next_pid", 56, 4, 1)
            + fl("int next_prio", 60, 4, 1),
        ),
    ],
    "irq": [
        fmt("irq_handler_entry", 120, fl("int irq", 8, 4, 1) + fl("__data_loc char[] name", 12, 4, 1)),
        fmt("irq_handler_exit", 119, fl("int irq", 8, 4, 1) + fl("int ret", 12, 4, 1)),
    ],
}

HEADER = """\
# tracer: nop
#
# entries-in-buffer/entries-written: 500000/500000   #P:2
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""

# (weight, line template); {ts} is the timestamp, {i} a counter
SHAPES: List[Tuple[int, str]] = [
    # uprobes, fields format (6.x)
    (
        6,
        "          probed-4585    [001] d..1. {ts}: ent: __probe_ip=0x560a0faad1c9 (94601212514761) "
        "irq=0xc8 (200) name=eth0 t=0x{i:x} ({i}) c='c'(99)",
    ),
    (
        6,
        "          probed-4585    [001] d..1. {ts}: ret: __probe_func=0x560a0faad1c9 (94601212514761) "
        "__probe_ret_ip=0x560a0faad3fe (94601212515326) ret=0xffffffea (-22)",
    ),
    (
        1,
        "          probed-4585    [001] d..1. {ts}: ent: __probe_ip=0x560a0faad1c9 (94601212514761) "
        "irq=0x7d0 (2000) name=eth 2 x=1 t=0xffffffffffffffff (-1) c=(1)",
    ),
    # uprobes, default probe format (kernels without options/fields)
    (3, '          probed-4590    [000] d..1. {ts}: ent: (0x5613c8dbe1c9) irq=200 name="lo" t=0x{i:x} c=3'),
    (3, "          probed-4590    [000] d..1. {ts}: ret: (0x5613c8dbe3fe <- 0x5613c8dbe1c9) ret=-22"),
    # kprobes (%pS addresses), fields format; kretprobe in reverse order (5.15-6.4)
    (
        3,
        "            bash-4264    [000] ..... {ts}: kopen: __probe_ip=do_sys_openat2+0x0/0x3a0 (-2127569872) "
        "dfd=0xffffff9c (-100) path=/etc/ld.so.cache flags=0x80000 (524288)",
    ),
    (
        3,
        "            bash-4264    [000] d..1. {ts}: kopen_ret: ret=0x3 (3) "
        "__probe_ret_ip=do_sys_open+0x5a/0xa0 (-2127569440) __probe_func=do_sys_openat2+0x0/0x3a0 (-2127569872)",
    ),
    # tracepoints
    (
        4,
        "            bash-4264    [000] ..... {ts}: sys_enter_openat: __syscall_nr=0x101 (257) "
        "dfd=0xffffff9c (4294967196) filename=(0xffff888102a4301c) flags=0x241 (577) mode=0x1b6 (438)",
    ),
    (4, "            bash-4264    [000] ..... {ts}: sys_exit_openat: __syscall_nr=0x101 (257) ret=0x3 (3)"),
    (
        4,
        "            bash-4264    [000] d..2. {ts}: sched_switch: prev_comm=bash prev_pid=0x10a8 (4264) "
        "prev_prio=0x78 (120) prev_state=0x1 (1) next_comm=swapper/0 next_pid=0x0 (0) next_prio=0x78 (120)",
    ),
    (2, "          <idle>-0       [001] d.h1. {ts}: irq_handler_entry: irq=0x18 (24) name=ahci[0000:00:1f.2]"),
    (2, "          <idle>-0       [001] d.h1. {ts}: irq_handler_exit: irq=0x18 (24) ret=0x1 (1)"),
]
MULTILINE = (
    "          probed-4586    [001] d..1. {ts}: ent: __probe_ip=0x5613c8dbe1c9 (94642974220745) "
    "irq=0x7d0 (2000) name=line1\nline2 q t=0x0 (0) c=(0)"
)
LOST = "CPU:1 [LOST 12 EVENTS]"
PROBE = ("bench", "ent")  # the probe of (e)


def build_catalog() -> FormatCatalog:
    cat = FormatCatalog()
    for system, texts in FORMATS.items():
        for text in texts:
            cat.add(parse_format(text, system))
    return cat


def build_trace(n: int) -> Tuple[str, int]:
    """About ``n`` lines of trace text (header included) and the exact line count."""
    cycle = [shape for weight, shape in SHAPES for _ in range(weight)]
    # interleave the shapes deterministically (a stride coprime to the cycle length)
    stride = 7 if len(cycle) % 7 else 11
    out = HEADER.rstrip("\n").split("\n")
    i = 0
    while len(out) < n:
        ts = f"{452 + i / 1e5:12.6f}"
        if i % 1000 == 999:
            out.append(MULTILINE.format(ts=ts, i=i))
        elif i % 50000 == 25000:
            out.append(LOST)
        else:
            out.append(cycle[(i * stride) % len(cycle)].format(ts=ts, i=i))
        i += 1
    text = "\n".join(out) + "\n"
    return text, text.count("\n")


# (b): one generic regex per line -> a dict (header columns + the body's key=value pairs as strings)
_BASELINE_RE = re.compile(
    r"\s*(?P<comm>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>[\d.]+): (?P<name>\w+):(?P<body>.*)"
)


def baseline(text: str) -> List[Dict[str, str]]:
    out = []
    match = _BASELINE_RE.match
    for line in text.split("\n"):
        m = match(line)
        if m is not None:
            out.append(m.groupdict())
    return out


def interleaved(fns: Dict[str, Callable[[], object]], repeat: int) -> Dict[str, float]:
    """Median CPU seconds of each function over ``repeat`` rounds, every round running each once in turn (so
    a slower or busier moment of the machine weighs on all of them alike). What a function returns is
    dropped inside its timing: freeing the events is part of what they cost."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[k].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cat = build_catalog()
    text, n = build_trace(args.lines)

    # check once that the trace is understood (everything but header and LOST lines becomes an event), and that
    # the lazily decoded result is the reference's
    check = TraceParser(cat).parse(text)
    if check.unparsed:
        raise SystemExit(f"benchmark trace not fully understood: {check.unparsed[:3]}")
    ref = TraceParser(cat)._parse_slow(text)
    lazy = TraceParser(cat).parse(text)
    if lazy.of(*PROBE) != ref.of(*PROBE) or lazy.event_counts() != ref.event_counts() or lazy != ref:
        raise SystemExit("TraceParser.parse differs from the reference parser on the benchmark trace")
    del ref, lazy

    with tempfile.NamedTemporaryFile("w", suffix=".trace", delete=False) as f:
        f.write(text)
    try:
        wc_out = subprocess.run(["wc", "-l", f.name], check=True, capture_output=True, text=True).stdout
        assert int(wc_out.split()[0]) == n, wc_out
        walls = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            subprocess.run(["wc", "-l", f.name], check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
        t_a = statistics.median(walls)
    finally:
        os.unlink(f.name)

    def indexed() -> ParsedTrace:
        parsed = TraceParser(cat).parse(text)
        len(parsed.events), parsed.lost, parsed.unparsed, parsed.event_counts()
        return parsed

    def every_field() -> List[Event]:
        events = list(indexed().events)
        for event in events:
            event.fields  # noqa: B018
        return events

    def one_probe() -> List[Event]:
        events = indexed().of(*PROBE)
        for event in events:
            event.fields  # noqa: B018
        return events

    fns: Dict[str, Callable[[], object]] = {
        "b": lambda: baseline(text),
        "c": indexed,
        "d": lambda: list(indexed().events),
        "g": every_field,
        "e": one_probe,
    }
    compiled = indexed_mod._compiled_index()
    if compiled is not None:

        def in_python(fn: Callable[[], object]) -> Callable[[], object]:
            def run() -> object:
                indexed_mod._index_rows = indexed_mod._index_rows_python
                try:
                    return fn()
                finally:
                    indexed_mod._index_rows = compiled

            return run

        fns["c-py"] = in_python(indexed)
        fns["d-py"] = in_python(lambda: list(indexed().events))
    fns["r"] = lambda: TraceParser(cat)._parse_slow(text)
    t = interleaved(fns, args.repeat)
    labels = {
        "b": "(b) naive: one generic regex per line -> dict of str",
        "c": "(c) TraceParser.parse: len, lost, unparsed, counts",
        "d": "(d) (c) + the whole trace as typed Events",
        "g": "(g) (d) + every field of every event read",
        "e": f"(e) (c) + of{PROBE} and its fields read",
        "c-py": "(c-py) (c) with the index pass in Python",
        "d-py": "(d-py) (d) with the index pass in Python",
        "r": "(r) reference line-by-line parser",
    }

    print(
        f"trace: {n:,} lines, {len(text) / 1e6:.1f} MB, {len(check.events):,} events "
        f"({check.count_of(*PROBE):,} of {PROBE[0]}:{PROBE[1]}), {sum(check.lost.values())} lost; "
        f"median of {args.repeat} interleaved rounds, CPU time ((a): wall time); "
        f"index pass: {'C helper' if compiled is not None else 'Python (the C helper is not built)'}"
    )
    print(f"  {'(a) wc -l (raw read, subprocess)':52s} {n / t_a:>13,.0f} lines/s  {t_a * 1000:8.1f} ms")
    for k, secs in t.items():
        print(f"  {labels[k]:52s} {n / secs:>13,.0f} lines/s  {secs * 1000:8.1f} ms")
    print("  " + "   ".join(f"{k}/b = {t['b'] / t[k]:.2f}" for k in t if k not in ("b", "r")))
    print(
        "  (b) keeps the body as one string, (d) the fields (decoded per event kind when first read); (g) splits\n"
        "  every field by its event's format and types it (int or str): more work than (b), measured against it"
    )
    verdict = "met" if n / t["c"] >= 1e6 else "NOT met"
    print(f"  target (c) >= 1,000,000 lines/s: {verdict} ({n / t['c']:,.0f})")
    verdict = "met" if t["d"] <= t["b"] else "NOT met"
    print(f"  target (d) >= (b): {verdict} (d/b = {t['b'] / t['d']:.2f})")

    naive = "naive parser: one generic regex per line into a dict of strings (header columns, the body unsplit)"
    figures = [
        ("c", "parse, count only (length, lost, unparsed, per-event counts exact)", "target >= 1,000,000 lines/s"),
        (
            "d",
            "parse into typed events, the whole trace (task and timestamp typed, fields decoded when first read)",
            "goal: at least the baseline",
        ),
        ("g", "parse into typed events and read every field of every event (each field split and typed)", ""),
        ("e", f"parse and read one probe's events ({PROBE[0]}:{PROBE[1]}, a quarter of the lines)", ""),
    ]
    if "c-py" in t:
        figures += [
            ("c-py", "parse, count only, without the C helper (the index pass in Python)", ""),
            ("d-py", "parse into typed events, the whole trace, without the C helper", ""),
        ]
    for key, metric, note in figures:
        emit(
            Result(
                benchmark="bench_parse",
                metric=metric,
                value=round(n / t[key]),
                unit="lines/s",
                baseline=naive,
                baseline_value=round(n / t["b"]),
                better="higher",
                note=(note + "; " if note else "") + f"CPU time, median of {args.repeat}, {n:,}-line trace",
            )
        )


if __name__ == "__main__":
    main()
