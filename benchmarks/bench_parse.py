"""How fast TraceParser turns ``options/fields`` trace text into events: prints lines/s.

    python benchmarks/bench_parse.py [--lines N] [--repeat R]

The trace is synthetic but made of real line shapes recorded on a 6.18 kernel: uprobe entry / return events
(the typical probe line), syscall tracepoints, sched_switch, and a few multi-line string values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    from pytest_ktrace.parse import FormatCatalog, TraceParser, parse_format
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from pytest_ktrace.parse import FormatCatalog, TraceParser, parse_format

COMMON = """\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
"""


def fmt(name: str, eid: int, fields: str) -> str:
    return f'name: {name}\nID: {eid}\nformat:\n{COMMON}\n{fields}\nprint fmt: ""\n'


FORMATS = {
    "bench": [
        fmt(
            "ent",
            3000,
            "\tfield:unsigned long __probe_ip;\toffset:8;\tsize:8;\tsigned:0;\n"
            "\tfield:s32 irq;\toffset:16;\tsize:4;\tsigned:1;\n"
            "\tfield:__data_loc char[] name;\toffset:20;\tsize:4;\tsigned:1;\n"
            "\tfield:u64 t;\toffset:24;\tsize:8;\tsigned:0;\n",
        ),
        fmt(
            "ret",
            3001,
            "\tfield:unsigned long __probe_func;\toffset:8;\tsize:8;\tsigned:0;\n"
            "\tfield:unsigned long __probe_ret_ip;\toffset:16;\tsize:8;\tsigned:0;\n"
            "\tfield:s32 ret;\toffset:24;\tsize:4;\tsigned:1;\n",
        ),
    ],
    "syscalls": [
        fmt(
            "sys_enter_openat",
            782,
            "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n"
            "\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;\n"
            "\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;\n"
            "\tfield:int flags;\toffset:32;\tsize:8;\tsigned:0;\n"
            "\tfield:umode_t mode;\toffset:40;\tsize:8;\tsigned:0;\n",
        ),
        fmt(
            "sys_exit_openat",
            781,
            "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n"
            "\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n",
        ),
    ],
    "sched": [
        fmt(
            "sched_switch",
            300,
            "\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n"
            "\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;\n"
            "\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;\n"
            "\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;\n"
            "\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;\n"
            "\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;\n"
            "\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;\n",
        ),
    ],
}

LINES = [
    "          probed-4585    [001] d..1.   452.559264: ent: __probe_ip=0x560a0faad1c9 (94601212514761) "
    "irq=0xc8 (200) name=eth0 t=0x2a (42)",
    "          probed-4585    [001] d..1.   452.559272: ret: __probe_func=0x560a0faad1c9 (94601212514761) "
    "__probe_ret_ip=0x560a0faad3fe (94601212515326) ret=0xffffffea (-22)",
    "          probed-4585    [001] d..1.   452.559280: ent: __probe_ip=0x560a0faad1c9 (94601212514761) "
    "irq=0x7d0 (2000) name=eth 2 x=1 t=0xffffffffffffffff (-1)",
    "            bash-4264    [000] .....   346.120035: sys_enter_openat: __syscall_nr=0x101 (257) "
    "dfd=0xffffff9c (4294967196) filename=(0xffff888102a4301c) flags=0x241 (577) mode=0x1b6 (438)",
    "            bash-4264    [000] .....   346.120256: sys_exit_openat: __syscall_nr=0x101 (257) ret=0x3 (3)",
    "            bash-4264    [000] d..2.   346.121077: sched_switch: prev_comm=bash prev_pid=0x10a8 (4264) "
    "prev_prio=0x78 (120) prev_state=0x1 (1) next_comm=swapper/0 next_pid=0x0 (0) next_prio=0x78 (120)",
]
MULTILINE = (
    "          probed-4586    [001] d..1.   452.560049: ent: __probe_ip=0x5613c8dbe1c9 (94642974220745) "
    "irq=0x7d0 (2000) name=line1\nline2 q t=0x0 (0)"
)


def build_catalog() -> FormatCatalog:
    cat = FormatCatalog()
    for system, texts in FORMATS.items():
        for text in texts:
            cat.add(parse_format(text, system))
    return cat


def build_trace(n: int) -> tuple[str, int]:
    out = []
    count = 0
    i = 0
    while count < n:
        if i % 1000 == 999:
            out.append(MULTILINE)
        else:
            out.append(LINES[i % len(LINES)])
        count += 1
        i += 1
    return "\n".join(out) + "\n", count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cat = build_catalog()
    text, n = build_trace(args.lines)
    best = float("inf")
    events = 0
    for _ in range(args.repeat):
        parser = TraceParser(cat)  # fresh parser: splitter compilation is part of the cost
        t0 = time.perf_counter()
        result = parser.parse(text)
        dt = time.perf_counter() - t0
        best = min(best, dt)
        events = len(result.events)
        assert not result.unparsed, result.unparsed[:3]
    print(f"parsed {n} events ({events} events, {len(text) / 1e6:.1f} MB) best of {args.repeat}: {best:.3f}s")
    print(f"{n / best:,.0f} lines/s")


if __name__ == "__main__":
    main()
