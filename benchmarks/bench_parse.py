"""How fast TraceParser turns trace text into events, next to a naive parser measured in the same run: lines/s.

    python benchmarks/bench_parse.py [--lines N] [--repeat R]

For the same trace, R interleaved rounds each run every variant once (a fresh parser per run: compiling the
per-event patterns is part of the cost) and each figure is the median of its R runs, in CPU time of this
process (the machine may be shared; wall time would count the other processes' turns):

(a) ``wc -l`` of the trace file (a subprocess, wall time: reading the bytes, no parsing at all);
(b) the naive baseline: one generic regular expression per line into a dict of strings (the header's
    columns, the event name and the whole body as one string: no field is split, nothing is typed);
(c) ``TraceParser.parse``, and asking the result for ``len(events)``, ``lost``, ``unparsed`` and the
    per-event counts (``event_counts()``): all of that is exact after the parse's one pass over the text
    (lines split, every line's event name found, LOST / header / multi-line / odd lines through the
    reference parser), but no typed :class:`~pytest_ktrace._events.Event` is built yet;
(d) (c) and then every event decoded (``list(parsed.events)``): what the whole trace as typed events costs
    (every field split by its format and typed, ``int`` or ``str``, one ``Event`` per line);
(e) (c) and then the events of one probe decoded (``parsed.of("bench", "ent")``, about a quarter of the
    lines), what a test asking about one probe pays;
(f) no parsing at all: the same ``Event`` objects built from their values, already split and typed, the
    way the parser builds them (the floor of what (d) returns, next to (b)'s dicts);
(r) the line-by-line reference parser inside TraceParser (``_parse_slow``, every event decoded), when there
    is one;

and the ratios. The targets: (c) >= 1 million lines/s, (d) at least (b)'s lines/s. Before timing, the lazy
result is checked equal to the reference's (events, lost, unparsed, per-probe selections). Ends with one
RESULT line per figure (``_results.py``): (c), (d), (e) and (c) + (f) (what (d) cannot go below without a
cheaper parse pass or cheaper Events), each next to (b) of the same run.

The trace is synthetic but made of real line shapes (kernel 6.x guests and 5.15-6.4 ones): uprobe /
uretprobe / kprobe / kretprobe events with ints, strings and ``%pS`` values, in the ``fields`` format, in
reverse field order and in the default probe format; tracepoints (sched_switch, sys_enter_openat /
sys_exit_openat, irq_handler_entry / irq_handler_exit); a few string values holding newlines, LOST lines and
the ``trace`` file's header.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).parent))
from _results import Result, emit

try:
    from pytest_ktrace._events import Event
    from pytest_ktrace._parse import FormatCatalog, ParsedTrace, TraceParser, parse_format
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from pytest_ktrace._events import Event
    from pytest_ktrace._parse import FormatCatalog, ParsedTrace, TraceParser, parse_format

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


def event_builder(events: Sequence[Event]) -> Optional[Callable[[], object]]:
    """(f): a function building the ``Event``s of ``events`` again from their values, the parser's way (its
    generated builder per field list), or None if the parser has no such way."""
    try:
        from pytest_ktrace import _events as events_mod

        builder = events_mod._event_builder
    except (ImportError, AttributeError):
        return None
    groups: Dict[Tuple[str, str, Tuple[str, ...]], List[Event]] = {}
    for e in events:
        groups.setdefault((e.system, e.name, tuple(e.fields)), []).append(e)
    prepared = []
    for (system, name, keys), evs in groups.items():
        cols = [[e.fields[k] for e in evs] for k in keys]
        hdrs = [(e.comm, e.pid, e.cpu) for e in evs]
        prepared.append((builder(keys), system, name, [e.raw for e in evs], hdrs, [e.timestamp for e in evs], cols))

    def build() -> List[Event]:
        out: List[Event] = []
        gc.disable()  # as the parser does while it builds events
        try:
            for build_events, system, name, raws, hdrs, tss, cols in prepared:
                out.extend(build_events(system, name, raws, hdrs, tss, cols))
        finally:
            gc.enable()
        # as (d)'s list(): the first allocation with the collector back on makes it walk the new events once
        return list(out)

    return build


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
    has_ref = hasattr(TraceParser, "_parse_slow")
    if has_ref:
        ref = TraceParser(cat)._parse_slow(text)
        lazy = TraceParser(cat).parse(text)
        if lazy.of(*PROBE) != ref.of(*PROBE) or lazy.event_counts() != ref.event_counts() or lazy != ref:
            raise SystemExit("TraceParser.parse differs from the reference parser on the benchmark trace")
        del ref, lazy
    floor = event_builder(list(check.events))

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

    fns: Dict[str, Callable[[], object]] = {
        "b": lambda: baseline(text),
        "c": indexed,
        "d": lambda: list(indexed().events),
        "e": lambda: indexed().of(*PROBE),
    }
    if floor is not None:
        fns["f"] = floor
    if has_ref:
        fns["r"] = lambda: TraceParser(cat)._parse_slow(text)
    t = interleaved(fns, args.repeat)
    labels = {
        "b": "(b) naive: one generic regex per line -> dict of str",
        "c": "(c) TraceParser.parse: len, lost, unparsed, counts",
        "d": "(d) (c) + every event decoded (typed Events)",
        "e": f"(e) (c) + of{PROBE} decoded",
        "f": "(f) the Events of (d) built from typed values",
        "r": "(r) reference line-by-line parser",
    }

    print(
        f"trace: {n:,} lines, {len(text) / 1e6:.1f} MB, {len(check.events):,} events "
        f"({check.count_of(*PROBE):,} of {PROBE[0]}:{PROBE[1]}), {sum(check.lost.values())} lost; "
        f"median of {args.repeat} interleaved rounds, CPU time ((a): wall time)"
    )
    print(f"  {'(a) wc -l (raw read, subprocess)':52s} {n / t_a:>13,.0f} lines/s  {t_a * 1000:8.1f} ms")
    for k, secs in t.items():
        print(f"  {labels[k]:52s} {n / secs:>13,.0f} lines/s  {secs * 1000:8.1f} ms")
    ratios = f"  c/b = {t['b'] / t['c']:.2f}   d/b = {t['b'] / t['d']:.2f}   e/b = {t['b'] / t['e']:.2f}"
    if "f" in t:
        ratios += f"   f/b = {t['b'] / t['f']:.2f}"
    if "r" in t:
        ratios += f"   c/r = {t['r'] / t['c']:.1f}   d/r = {t['r'] / t['d']:.2f}"
    print(ratios)
    print(
        "  (b) keeps the body as one string; (d) splits every field by the event's format and types it (int or\n"
        "  str), one Event (and its fields dict) per line: more work than (b), measured against it all the same"
    )
    verdict = "met" if n / t["c"] >= 1e6 else "NOT met"
    print(f"  target (c) >= 1,000,000 lines/s: {verdict} ({n / t['c']:,.0f})")
    verdict = "met" if t["d"] <= t["b"] else "NOT met"
    print(f"  target (d) >= (b): {verdict} (d/b = {t['b'] / t['d']:.2f})")
    if "f" in t:
        # (d) needs (c)'s pass and (f)'s objects at the very least, whatever the field decoding costs
        print(
            f"  (c) + (f), parse and build the Events with no field decoded at all: "
            f"{n / (t['c'] + t['f']):,.0f} lines/s, {t['b'] / (t['c'] + t['f']):.2f}x (b)"
        )

    naive = "naive parser: one generic regex per line into a dict of strings (header columns, the body unsplit)"
    figures = [
        ("c", "parse, count only (length, lost, unparsed, per-event counts exact)", "target >= 1,000,000 lines/s"),
        ("d", "parse and decode every event (typed fields, one Event per line)", "goal: at least the baseline"),
        ("e", f"parse and decode one probe's events ({PROBE[0]}:{PROBE[1]}, a quarter of the lines)", ""),
    ]
    if "f" in t:
        t["c+f"] = t["c"] + t["f"]
        figures.append(
            (
                "c+f",
                "floor of decoding every event: the parse and the Events built from typed values, no field split",
                "",
            )
        )
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
