"""pytest_ktrace._parse: format files and trace text, against this machine's real kernel where possible.

Real-kernel tests need root and tracefs (skipped otherwise). They work in a scratch instance
``instances/ktrace_parsetest_<pid>`` and a uprobe group ``ktrace_parsetest_<pid>``, both removed afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import os
import pickle
import platform
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ktrace_testing import build_probed
from pytest_ktrace import _indexed as indexed_mod
from pytest_ktrace import _splitters as splitters_mod
from pytest_ktrace._errors import KtraceError
from pytest_ktrace._events import Event
from pytest_ktrace._formats import EventFormat, FieldFormat, FormatCatalog, parse_format
from pytest_ktrace._parse import ParsedTrace, TraceParser

TRACEFS = Path("/sys/kernel/tracing")
PROG = Path(__file__).resolve().parent / "prog"
NAME = f"ktrace_parsetest_{os.getpid()}"  # scratch instance and uprobe group


def _tracefs_ok() -> bool:
    return (TRACEFS / "events").is_dir() and os.access(TRACEFS / "instances", os.W_OK)


needs_tracefs = pytest.mark.skipif(not _tracefs_ok(), reason="needs root and a mounted tracefs")
needs_x86_uprobes = pytest.mark.skipif(
    platform.machine() != "x86_64" or not (TRACEFS / "uprobe_events").exists() or shutil.which("gcc") is None,
    reason="uprobe fetch args below use x86_64 registers; needs uprobes and gcc",
)


# ------------------------------------------------------------------------------------------------ helpers

COMMON = (
    "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
    "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
    "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
    "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n"
)


def fmt_text(name: str, fields: Sequence[tuple[str, int, int]], eid: int = 1000) -> str:
    """A format file: fields as (declaration, size, signed)."""
    body = ""
    off = 8
    for decl, size, signed in fields:
        body += f"\tfield:{decl};\toffset:{off};\tsize:{size};\tsigned:{signed};\n"
        off += max(size, 4)
    return f'name: {name}\nID: {eid}\nformat:\n{COMMON}\n{body}\nprint fmt: "x"\n'


def mkfmt(name: str, fields: Sequence[tuple[str, int, int]], system: str = "t", eid: int = 1000) -> EventFormat:
    return parse_format(fmt_text(name, fields, eid), system)


def line(name: str, body: str, comm: str = "prog", pid: int = 42, cpu: int = 1, ts: str = "123.456789") -> str:
    return f"{comm:>16}-{pid:<7} [{cpu:03d}] ..... {ts:>12}: {name}:{body}"


def parser_for(*fmts: EventFormat) -> TraceParser:
    return TraceParser(FormatCatalog(list(fmts)))


def parse1(p: TraceParser, text: str) -> Event:
    res = p.parse(text)
    assert res.unparsed == [], res.unparsed
    assert len(res.events) == 1, res.events
    return res.events[0]


def append(path: Path, text: str) -> None:
    """Append like ``echo >>``: O_APPEND, never O_TRUNC (truncating uprobe_events would drop everyone's
    probes)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def read_format(system: str, name: str) -> EventFormat:
    return parse_format((TRACEFS / "events" / system / name / "format").read_text(), system)


def read_trace(inst: Path) -> str:
    return (inst / "trace").read_bytes().decode("utf-8", "surrogateescape")


@contextlib.contextmanager
def scratch_instance() -> Iterator[Path]:
    inst = TRACEFS / "instances" / NAME
    inst.mkdir()
    try:
        yield inst
    finally:
        with contextlib.suppress(OSError):
            (inst / "tracing_on").write_text("0")
        with contextlib.suppress(OSError):
            (inst / "events" / "enable").write_text("0")
        inst.rmdir()


# --------------------------------------------------------------------------------------- format files


@needs_tracefs
def test_parse_format_every_format_file_of_this_kernel() -> None:
    paths = sorted(TRACEFS.glob("events/*/*/format"))
    assert len(paths) > 100
    catalog = FormatCatalog()
    failures = []
    for path in paths:
        system, name = path.parent.parent.name, path.parent.name
        try:
            fmt = parse_format(path.read_text(), system)
        except KtraceError as exc:
            failures.append(f"{system}:{name}: {exc}")
            continue
        assert (fmt.system, fmt.name) == (system, name)
        assert fmt.id == int((path.parent / "id").read_text()) if (path.parent / "id").exists() else fmt.id > 0
        assert not any(f.name.startswith("common_") for f in fmt.fields)
        assert all(f.is_common for f in fmt.common_fields)
        assert fmt.print_fmt
        catalog.add(fmt)
    assert not failures, "\n".join(failures[:20])
    assert len(catalog) == len(paths)
    # every format also compiles into a splitter (regexes and converters) without error
    parser = TraceParser(catalog)
    for fmt in catalog:
        assert parser._splitter(fmt.name) is not None


@needs_tracefs
def test_real_format_details() -> None:
    exec_ = read_format("sched", "sched_process_exec")
    assert exec_.field_names == ("filename", "pid", "old_pid")
    filename = exec_.field("filename")
    assert filename is not None and filename.ctype == "__data_loc char[]" and filename.is_string
    assert filename.is_dynamic and not filename.is_integer
    pid = exec_.field("pid")
    assert pid is not None and pid.signed and pid.size == 4 and pid.is_integer and not pid.is_string
    assert [f.name for f in exec_.common_fields] == [
        "common_type",
        "common_flags",
        "common_preempt_count",
        "common_pid",
    ]
    assert exec_.field("common_pid") is not None
    assert "filename=%s" in exec_.print_fmt
    switch = read_format("sched", "sched_switch")
    prev_comm = switch.field("prev_comm")
    assert prev_comm is not None and prev_comm.ctype == "char[16]" and prev_comm.size == 16 and prev_comm.is_string
    openat = read_format("syscalls", "sys_enter_openat")
    fn = openat.field("filename")
    assert fn is not None and fn.ctype == "const char *" and fn.is_string and fn.is_pointer_string


def test_parse_format_minimal_and_field_kinds() -> None:
    fmt = mkfmt(
        "ev",
        [
            ("__data_loc char[] s", 4, 1),
            ("char comm[16]", 16, 0),
            ("__rel_loc char[] r", 4, 0),
            ("const char * p", 8, 0),
            ("unsigned long args[6]", 48, 0),
            ("u8 addr[6]", 6, 0),
            ("__data_loc u64[] arr", 4, 0),
            ("struct foo * ptr", 8, 0),
            ("enum x_type kind", 4, 0),
            ("unsigned long ip", 8, 0),
        ],
        eid=77,
    )
    assert (fmt.system, fmt.name, fmt.id) == ("t", "ev", 77)
    by = {f.name: f for f in fmt.fields}
    assert by["s"].is_string and by["comm"].is_string and by["r"].is_string and by["p"].is_string
    assert by["comm"].ctype == "char[16]" and by["args"].ctype == "unsigned long[6]"
    assert not by["args"].is_string and not by["args"].is_integer
    assert not by["addr"].is_string and by["addr"].ctype == "u8[6]"
    assert by["arr"].is_dynamic and not by["arr"].is_string
    assert by["ptr"].ctype == "struct foo *" and by["ptr"].is_integer
    assert by["kind"].ctype == "enum x_type" and by["kind"].is_integer
    assert not by["ip"].signed and by["s"].signed
    assert fmt.print_fmt == '"x"'
    assert fmt.full_name == "t:ev"


def test_parse_format_multiline_print_fmt_and_no_signed_column() -> None:
    text = (
        "name: old\nID: 5\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\n"
        '\tfield:int x;\toffset:8;\tsize:4;\n\nprint fmt: "a\n\tb=%d", REC->x\n'
    )
    fmt = parse_format(text, "s")
    assert fmt.fields == (FieldFormat("x", "int", 8, 4, False),)
    assert fmt.print_fmt == '"a\n\tb=%d", REC->x'


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no 'name:'"),
        ("garbage\n", "unexpected line"),
        ("name: x\n", "no 'ID:'"),
        ("name: x\nID: abc\n", "ID is not a number"),
        ("name: x\nID: 1\nformat:\n\tfield:int;\toffset:8;\tsize:4;\tsigned:1;\n", "type and name"),
        ("name: x\nID: 1\nformat:\n\tfield:int a;\toffset:x;\tsize:4;\tsigned:1;\n", "malformed field"),
        ("name: x\nID: 1\nformat:\n\tfield:int a\n", "malformed field"),
        ("name: x\nID: 1\n", "no 'format:'"),
        ("name: x y\nID: 1\nformat:\n", "bad event name"),
        (
            "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n"
            "\tfield:int a;\toffset:12;\tsize:4;\tsigned:1;\n",
            "duplicate field",
        ),
    ],
)
def test_parse_format_garbage_raises_ktrace_error(text: str, message: str) -> None:
    with pytest.raises(KtraceError, match=message) as info:
        parse_format(text, "sys")
    assert "sys" in str(info.value)


def test_parse_format_rejects_non_text() -> None:
    with pytest.raises(KtraceError):
        parse_format(b"name: x\n", "s")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_format_arbitrary_text_raises_only_ktrace_error(text: str) -> None:
    with contextlib.suppress(KtraceError):
        parse_format(text, "fuzz")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_parse_format_mutated_real_format_raises_only_ktrace_error(data: st.DataObject) -> None:
    text = fmt_text("ev", [("__data_loc char[] s", 4, 1), ("int x", 4, 1), ("char c[16]", 16, 0)])
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, min(len(text), i + 20)))
    junk = data.draw(st.text(max_size=10))
    with contextlib.suppress(KtraceError):
        parse_format(text[:i] + junk + text[j:], "fuzz")


def test_catalog_lookup() -> None:
    a = mkfmt("ev", [("int x", 4, 1)], system="one")
    b = mkfmt("ev", [("int y", 4, 1)], system="two")
    c = mkfmt("other", [("int z", 4, 1)], system="one")
    cat = FormatCatalog([a, c])
    assert cat.get("ev") is a and cat.get("one:ev") is a and cat.get("other") is c
    assert "ev" in cat and "one:other" in cat and "two:ev" not in cat and "nope" not in cat
    assert 5 not in cat
    cat.add(b)  # same bare name, other system: the newest wins bare lookups, full names stay exact
    assert cat.get("ev") is b and cat.get("one:ev") is a and cat.get("two:ev") is b
    assert len(cat) == 3 and set(cat) == {a, b, c}
    cat.remove("two:ev")
    assert cat.get("ev") is a and "two:ev" not in cat
    assert cat.get("missing") is None


def test_parser_notices_catalog_changes() -> None:
    cat = FormatCatalog([mkfmt("ev", [("int x", 4, 1)])])
    p = TraceParser(cat)
    assert parse1(p, line("ev", " x=0xffffffff (-1)"))["x"] == -1
    cat.add(mkfmt("ev", [("unsigned int x", 4, 0)]))
    assert parse1(p, line("ev", " x=0xffffffff (-1)"))["x"] == 4294967295


# ------------------------------------------------------------------------------------------- synthetic lines


ENT = mkfmt(
    "ent",
    [
        ("unsigned long __probe_ip", 8, 0),
        ("s32 irq", 4, 1),
        ("__data_loc char[] name", 4, 1),
        ("u64 b", 8, 0),
        ("__data_loc char[] nm", 4, 1),
    ],
    system="grp",
)
RET = mkfmt(
    "ret",
    [("unsigned long __probe_func", 8, 0), ("unsigned long __probe_ret_ip", 8, 0), ("s32 ret", 4, 1)],
    system="grp",
)


def test_fields_line_typed_values() -> None:
    p = parser_for(ENT, RET)
    ev = parse1(
        p,
        line(
            "ent",
            ' __probe_ip=0x557f5fb2b149 (94005554753865) irq=0xc8 (200) name=eth 2"x b=0x0 (0) nm= '
            "b=0xffffffffffffffff (-1) nm=last one",
        ),
    )
    assert ev.system == "grp" and ev.name == "ent" and ev.full_name == "grp:ent"
    assert ev.fields == {
        "__probe_ip": 0x557F5FB2B149,
        "irq": 200,
        "name": 'eth 2"x b=0x0 (0) nm=',
        "b": 2**64 - 1,
        "nm": "last one",
    }
    assert (ev.pid, ev.comm, ev.cpu, ev.timestamp) == (42, "prog", 1, 123.456789)
    assert ev.raw.endswith("nm=last one")
    ret = parse1(p, line("ret", " __probe_func=0x10 (16) __probe_ret_ip=0x20 (32) ret=0xffffffea (-22)"))
    assert ret.fields == {"__probe_func": 16, "__probe_ret_ip": 32, "ret": -22}


def test_size_and_signedness_reinterpretation() -> None:
    fmt = mkfmt(
        "ints",
        [
            ("u32 u", 4, 0),
            ("s32 s", 4, 1),
            ("unsigned long ul", 8, 0),
            ("long sl", 8, 1),
            ("u16 u16", 2, 0),
            ("s16 s16", 2, 1),
            ("u8 u8", 1, 0),
            ("s8 s8", 1, 1),
            ("bool flag", 1, 0),
        ],
    )
    ev = parse1(
        parser_for(fmt),
        line(
            "ints",
            " u=0xffffffff (-1) s=0xffffffea (-22) ul=0xffff888102c94440 (-131387297807296)"
            " sl=0xfffffffffffffffd (-3) u16=0xfffe (65534) s16=0xfffe (65534) u8='A'(65) s8=(254) flag=(1)",
        ),
    )
    assert ev.fields == {
        "u": 4294967295,
        "s": -22,
        "ul": 0xFFFF888102C94440,
        "sl": -3,
        "u16": 65534,
        "s16": -2,
        "u8": 65,
        "s8": -2,
        "flag": 1,
    }


def test_one_byte_fields_any_char() -> None:
    fmt = mkfmt("c", [("char a", 1, 1), ("char b", 1, 1), ("u8 c", 1, 0), ("u8 d", 1, 0)])
    ev = parse1(parser_for(fmt), line("c", " a=''(39) b=')'(41) c='\xfe'(254) d=(10)"))
    assert ev.fields == {"a": 39, "b": 41, "c": 254, "d": 10}


def test_reverse_order_kernels_5_15_to_6_4() -> None:
    p = parser_for(ENT, RET)
    fwd = parse1(p, line("ent", " __probe_ip=0x1 (1) irq=0xffffffff (-1) name=a b c b=0x2 (2) nm=x y=1 z")).fields
    rev = parse1(p, line("ent", " nm=x y=1 z b=0x2 (2) name=a b c irq=0xffffffff (-1) __probe_ip=0x1 (1)")).fields
    assert rev == fwd == {"__probe_ip": 1, "irq": -1, "name": "a b c", "b": 2, "nm": "x y=1 z"}
    r = parse1(p, line("ret", " ret=0x0 (0) __probe_ret_ip=0x20 (32) __probe_func=0x10 (16)"))
    assert r.fields == {"ret": 0, "__probe_ret_ip": 32, "__probe_func": 16}


def test_pS_eight_byte_fields_kernel_6_15() -> None:
    kfree = mkfmt("kfree", [("unsigned long call_site", 8, 0), ("const void * ptr", 8, 0)], system="kmem")
    hr = mkfmt(
        "hrtimer_start",
        [("void * hrtimer", 8, 0), ("void * function", 8, 0), ("s64 expires", 8, 1), ("bool was_armed", 1, 0)],
        system="timer",
    )
    p = parser_for(kfree, hr)
    ev = parse1(p, line("kfree", " call_site=rcu_do_batch+0x3d1/0x14a0 (-1768960207) ptr=0x0 (0)"))
    assert ev.system == "kmem"
    assert ev.fields == {"call_site": -1768960207 & (2**64 - 1), "ptr": 0}
    ev = parse1(p, line("kfree", " call_site=my_fn.isra.0+0x1c/0x80 [my_mod] (-2124454788) ptr=0x10 (16)"))
    assert ev.fields == {"call_site": -2124454788 & (2**64 - 1), "ptr": 16}
    ev = parse1(
        p,
        line(
            "hrtimer_start",
            " hrtimer=0xffff888627d1c6f8 (-131365201656072) function=tick_nohz_handler+0x0/0x140 (-2126241184)"
            " expires=0x5d2cd33e00 (400184000000) was_armed=(0)",
        ),
    )
    assert ev.fields["function"] == -2126241184 & (2**64 - 1) and ev.fields["was_armed"] == 0
    assert ev.fields["hrtimer"] == 0xFFFF888627D1C6F8 and ev.fields["expires"] == 400184000000


def test_overflow_invalid_and_arrays() -> None:
    fmt = mkfmt(
        "odd",
        [
            ("__data_loc char[] s", 4, 0),
            ("int i", 4, 1),
            ("u8 mac[6]", 6, 0),
            ("__data_loc u8[] bytes", 4, 0),
            ("__data_loc cpumask_t mask", 4, 0),
            ("u32 pair[2]", 8, 0),
            ("const char * p", 8, 0),
            ("const char * q", 8, 0),
        ],
    )
    ev = parse1(
        parser_for(fmt),
        line(
            "odd",
            " s=<OVERFLOW> i=<OVERFLOW> mac=<INVALID-SIZE> bytes=01,02,ff mask=<INVALID-TYPE>"
            " pair=0x5644b931d488 (94853164815496) p=(0xffff888102a4301c) q=(0xffffffff8200:hello world)",
        ),
    )
    assert ev.fields == {
        "s": "<OVERFLOW>",
        "i": "<OVERFLOW>",
        "mac": "<INVALID-SIZE>",
        "bytes": "01,02,ff",
        "mask": "<INVALID-TYPE>",
        "pair": 0x5644B931D488,
        "p": "(0xffff888102a4301c)",
        "q": "hello world",
    }


def test_strings_strip_trailing_nul_and_keep_spaces() -> None:
    fmt = mkfmt("s", [("char comm[16]", 16, 0), ("__data_loc char[] t", 4, 0)])
    ev = parse1(parser_for(fmt), line("s", " comm=a b\0 t=  two  spaces  "))
    assert ev.fields == {"comm": "a b", "t": "  two  spaces  "}


def test_empty_strings() -> None:
    fmt = mkfmt("s", [("__data_loc char[] a", 4, 0), ("__data_loc char[] b", 4, 0), ("int x", 4, 1)])
    ev = parse1(parser_for(fmt), line("s", " a= b= x=0x1 (1)"))
    assert ev.fields == {"a": "", "b": "", "x": 1}


def test_continuation_lines_join_string_values() -> None:
    p = parser_for(ENT, RET)
    text = "\n".join(
        [
            "# tracer: nop",
            "#",
            line("ent", " __probe_ip=0x1 (1) irq=0x7d0 (2000) name=line1"),
            'line2 with = and "quotes"',
            "",
            "#not a header: part of the string",
            "CPUs are great b=0x0 (0) nm=tail",
            "end",
            line("ret", " __probe_func=0x1 (1) __probe_ret_ip=0x2 (2) ret=0xffffffea (-22)", pid=43),
        ]
    )
    res = p.parse(text + "\n")
    assert res.unparsed == [] and res.lost == {}
    ent, ret = res.events
    assert ent.fields["name"] == 'line1\nline2 with = and "quotes"\n\n#not a header: part of the string\nCPUs are great'
    assert ent.fields["nm"] == "tail\nend"
    assert ent.raw.count("\n") == 5
    assert ret.fields["ret"] == -22 and ret.pid == 43


def test_string_ending_in_newline_is_kept() -> None:
    p = parser_for(ENT)
    text = line("ent", " __probe_ip=0x1 (1) irq=0x1 (1) name=a b=0x0 (0) nm=ends with newline") + "\n\n"
    res = p.parse(text + line("ent", " __probe_ip=0x1 (1) irq=0x1 (1) name=a b=0x0 (0) nm=x") + "\n")
    assert res.unparsed == []
    assert [e.fields["nm"] for e in res.events] == ["ends with newline\n", "x"]


def test_noise_after_an_event_is_unparsed_not_glued() -> None:
    p = parser_for(RET)
    res = p.parse(line("ret", " __probe_func=0x1 (1) __probe_ret_ip=0x2 (2) ret=0x0 (0)") + "\nsome noise\n")
    assert [e.fields["ret"] for e in res.events] == [0]
    assert res.unparsed == ["some noise"]


def test_many_noise_lines_after_an_event_are_kept_as_they_are() -> None:
    """(How the parse time grows with such lines: benchmarks/bench_hostile.py.)"""
    mid = mkfmt("mid", [("__data_loc char[] s", 4, 0), ("int x", 4, 1)])
    p = parser_for(ENT, RET, mid)
    noise = [f"function_graph noise {i} |  }}" for i in range(5000)]
    res = p.parse("\n".join([line("mid", " s=a b x=0x1 (1)"), *noise]))
    assert [e.fields for e in res.events] == [{"s": "a b", "x": 1}]
    assert res.unparsed == noise
    # a string as the last field cannot tell noise from its own continuation: capped, and nothing is lost
    res = p.parse("\n".join([line("ent", " __probe_ip=0x1 (1) irq=0x1 (1) name=a b=0x0 (0) nm=x"), *noise]))
    [ev] = res.events
    assert ev.fields["nm"].count("\n") + len(res.unparsed) == len(noise)
    assert ev.fields["nm"].count("\n") <= 256
    # an event without string fields never takes continuation lines
    res = p.parse(line("ret", " __probe_func=0x1 (1) __probe_ret_ip=0x2 (2) ret=0x0 (0)") + "\nnoise\n")
    assert res.unparsed == ["noise"] and res.events[0].fields["ret"] == 0


def test_events_are_real_frozen_events() -> None:
    import dataclasses

    ev = parse1(parser_for(RET), line("ret", " __probe_func=0x1 (1) __probe_ret_ip=0x2 (2) ret=0x0 (0)"))
    same = Event(
        system="grp",
        name="ret",
        fields={"__probe_func": 1, "__probe_ret_ip": 2, "ret": 0},
        pid=42,
        comm="prog",
        cpu=1,
        timestamp=123.456789,
        raw="ignored in comparisons",
    )
    assert ev == same and repr(ev) == repr(same) and ev.short() == same.short()
    assert type(ev) is Event and dataclasses.asdict(ev)["fields"] == same.fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.pid = 1  # type: ignore[misc]


def test_headers_lost_events_and_buffer_started() -> None:
    p = parser_for(RET)
    r = line("ret", " __probe_func=0x1 (1) __probe_ret_ip=0x2 (2) ret=0x0 (0)")
    text = "\n".join(
        [
            "# tracer: nop",
            "#",
            "# entries-in-buffer/entries-written: 654/654   #P:2",
            "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION",
            "#              | |         |   |||||     |         |",
            r,
            "CPU:1 [LOST 12 EVENTS]",
            r,
            "##### CPU 3 buffer started ####",
            "CPU:1 [LOST 3 EVENTS]",
            "CPU:0 [LOST EVENTS]",
            r,
        ]
    )
    res = p.parse(text)
    assert len(res.events) == 3 and res.unparsed == []
    assert res.lost == {1: 15, 0: 1}
    assert isinstance(res, ParsedTrace) and res.lost_total == 16


def test_header_variants_comm_pid_tgid_flags_clock() -> None:
    p = parser_for(RET)
    body = " __probe_func=0x1 (1) __probe_ret_ip=0x2 (2) ret=0x0 (0)"
    cases = {
        f"   my prog-2 x-1234    [003] d..2.   346.121077: ret:{body}": ("my prog-2 x", 1234, 3, 346.121077),
        f"          <idle>-0       [001] dNs5.   400.202534: ret:{body}": ("<idle>", 0, 1, 400.202534),
        f" kworker/u8:1-events-77 (     77) [000] ..... 1.000001: ret:{body}": ("kworker/u8:1-events", 77, 0, 1.000001),
        f" bash-4264 (-------) [000] ..... 1.5: ret:{body}": ("bash", 4264, 0, 1.5),
        f"            bash-4264    [000]   346.120035: ret:{body}": ("bash", 4264, 0, 346.120035),
        f"            bash-4264    [000] ..... 123456789: ret:{body}": ("bash", 4264, 0, 123456789.0),
        f"  probed-pie-6271-1234    [000] DBZff 9.25: ret:{body}": ("probed-pie-6271", 1234, 0, 9.25),
    }
    for text, (comm, pid, cpu, ts) in cases.items():
        ev = parse1(p, text)
        assert (ev.comm, ev.pid, ev.cpu, ev.timestamp) == (comm, pid, cpu, ts), text
        assert ev.fields["ret"] == 0


def test_unknown_events_parse_into_str_fields() -> None:
    p = parser_for()
    ev = parse1(p, line("sys_enter_openat", " __syscall_nr=0x101 (257) dfd=0xffffff9c (4294967196) name=a b"))
    assert ev.system == "" and ev.name == "sys_enter_openat"
    assert ev.fields == {"__syscall_nr": "0x101 (257)", "dfd": "0xffffff9c (4294967196)", "name": "a b"}
    mark = parse1(p, line("tracing_mark_write", " hello marker = 1"))
    assert mark.system == "ftrace" and mark.fields == {"buf": "hello marker = 1"}


def test_known_event_with_unexpected_shape_still_parses_best_effort() -> None:
    fmt = mkfmt("ev", [("int x", 4, 1), ("__data_loc char[] s", 4, 0)])
    ev = parse1(parser_for(fmt), line("ev", " x=-5 s=hi there extra=1"))
    assert ev.fields["x"] == -5 and ev.fields["s"] == "hi there"


def test_event_without_fields() -> None:
    fmt = mkfmt("bare", [])
    p = parser_for(fmt)
    assert parse1(p, line("bare", "")).fields == {}
    assert parse1(p, line("bare", "No fields found")).fields == {}


def test_default_probe_output_fallback() -> None:
    p = parser_for(ENT, RET)
    ev = parse1(p, line("ent", ' (0x560a0faad1c9) irq=-5 name="eth 2"x b=0x0 (0) nm=" b=0xff nm="q"'))
    assert ev.fields == {"__probe_ip": 0x560A0FAAD1C9, "irq": -5, "name": 'eth 2"x b=0x0 (0) nm=', "b": 255, "nm": "q"}
    r = parse1(p, line("ret", " (0x560a0faad3fe <- 0x560a0faad1c9) ret=-22"))
    assert r.fields == {"__probe_func": 0x560A0FAAD1C9, "__probe_ret_ip": 0x560A0FAAD3FE, "ret": -22}
    # kretprobes print symbols
    k = parse1(p, line("ret", " (ksys_read+0x6b/0xf0 <- vfs_read) ret=0xffffffea"))
    assert k.fields == {"__probe_func": "vfs_read", "__probe_ret_ip": "ksys_read+0x6b/0xf0", "ret": -22}
    f = parse1(p, line("ent", ' (0x1) irq=1 name=(fault) b=18446744073709551615 nm="multi\nline"'))
    assert f.fields["name"] == "(fault)" and f.fields["b"] == 2**64 - 1 and f.fields["nm"] == "multi\nline"


def test_default_output_char_type() -> None:
    fmt = mkfmt("c", [("unsigned long __probe_ip", 8, 0), ("u8 ch", 1, 0), ("u8 n", 1, 0), ("s8 s", 1, 1)])
    ev = parse1(parser_for(fmt), line("c", " (0x10) ch='k' n=200 s=-2"))
    assert ev.fields == {"__probe_ip": 16, "ch": ord("k"), "n": 200, "s": -2}


def test_parse_line_api() -> None:
    p = parser_for(RET)
    ev = p.parse_line(line("ret", " __probe_func=0x1 (1) __probe_ret_ip=0x2 (2) ret=0x1 (1)") + "\n")
    assert ev is not None and ev.fields["ret"] == 1
    assert p.parse_line("garbage") is None


def test_parse_rejects_non_text() -> None:
    with pytest.raises(KtraceError):
        parser_for().parse(b"x")  # type: ignore[arg-type]


def test_garbage_goes_to_unparsed() -> None:
    p = parser_for(ENT)
    res = p.parse("hello\n\n  \n\x00\x01 ]: [\n" + line("ent", " what=ever") + "\nUNKNOWN\n")
    assert res.unparsed[:2] == ["hello", "\x00\x01 ]: ["]
    assert len(res.events) == 1 and res.events[0].fields == {"what": "ever"}
    assert res.unparsed[2:] == ["UNKNOWN"]
    res = p.parse("           <...>-4703    [001] ...1.   465.132812: UNKNOWN TYPE 5\n")
    assert res.events == [] and res.unparsed == ["           <...>-4703    [001] ...1.   465.132812: UNKNOWN TYPE 5"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    p = parser_for(ENT, RET)
    res = p.parse(text)
    assert isinstance(res, ParsedTrace)
    for ev in res.events:
        assert isinstance(ev, Event)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=80), max_size=8))
def test_garbage_lines_land_in_unparsed(lines: list[str]) -> None:
    assume(all(splitters_mod._HEADER_RE.fullmatch(x) is None for x in lines))
    assume(all(splitters_mod._LOST_RE.fullmatch(x) is None for x in lines))
    res = parser_for(ENT).parse("\n".join(lines))
    assert res.events == []
    want = [x for x in lines if x.strip() and not x.startswith("#")]
    assert [x for x in res.unparsed] == want


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_lines_never_raise(data: st.DataObject) -> None:
    text = "\n".join(
        [
            line("ent", " __probe_ip=0x1 (1) irq=0xc8 (200) name=eth 2 b=0x0 (0) nm=x"),
            line("ret", " (0x560a0faad3fe <- 0x560a0faad1c9) ret=-22"),
            "CPU:1 [LOST 12 EVENTS]",
        ]
    )
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 10)))
        text = text[:i] + data.draw(st.text(max_size=6)) + text[j:]
    parser_for(ENT, RET).parse(text)


# round trip: render values the way print_fields() does, parse them back

KINDS = {
    "u8": ("u8", 1, 0),
    "s8": ("s8", 1, 1),
    "u16": ("u16", 2, 0),
    "s16": ("s16", 2, 1),
    "u32": ("u32", 4, 0),
    "s32": ("s32", 4, 1),
    "u64": ("u64", 8, 0),
    "s64": ("s64", 8, 1),
    "str": ("__data_loc char[]", 4, 1),
    "comm": ("char[16]", 16, 0),
}
# no '=' (two adjacent strings "a= b=x" are genuinely ambiguous) and no '[' (a continuation line could then
# look like an event header); everything else, newlines and quotes included, must survive
STRING_CHARS = st.characters(blacklist_characters="=[\x00\r", blacklist_categories=("Cs",))


def render(kind: str, raw: int | str, sym: bool) -> str:
    if isinstance(raw, str):
        return raw
    size = KINDS[kind][1]
    if size == 1:
        return (f"'{chr(raw)}'" if 0x20 <= raw < 0x7F else "") + f"({raw})"
    if size == 2:
        return f"{raw:#x} ({raw})"
    signed = raw - (1 << (8 * size)) if raw >= 1 << (8 * size - 1) else raw
    if size == 8 and sym:
        return f"some_func+0x{raw & 0xFF:x}/0x200 ({signed})"
    return f"{raw:#x} ({signed})"


def expect(kind: str, raw: int | str) -> int | str:
    if isinstance(raw, str):
        return raw
    size = KINDS[kind][1]
    if KINDS[kind][2] and raw >= 1 << (8 * size - 1):
        return raw - (1 << (8 * size))
    return raw


@st.composite
def events_and_lines(draw: st.DrawFn) -> tuple[EventFormat, list[tuple[str, int | str]], bool, bool]:
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=7))
    decls = []
    for i, k in enumerate(kinds):
        ctype, size, signed = KINDS[k]
        decl = f"char f{i}[16]" if k == "comm" else f"{ctype} f{i}"
        decls.append((decl, size, signed))
    fmt = mkfmt("rt", decls)
    values: list[tuple[str, int | str]] = []
    for k in kinds:
        if k in ("str", "comm"):
            values.append((k, draw(st.text(alphabet=STRING_CHARS, max_size=16 if k == "comm" else 24))))
        else:
            values.append((k, draw(st.integers(0, (1 << (8 * KINDS[k][1])) - 1))))
    return fmt, values, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=500, deadline=None)
@given(events_and_lines())
def test_round_trip_fields_forward_and_reverse(
    case: tuple[EventFormat, list[tuple[str, int | str]], bool, bool],
) -> None:
    fmt, values, reverse, sym = case
    parts = [f" f{i}={render(k, v, sym)}" for i, (k, v) in enumerate(values)]
    body = "".join(reversed(parts) if reverse else parts)
    text = line("rt", body) + "\n" + line("rt", "".join(parts)) + "\n"
    res = parser_for(fmt).parse(text)
    assert res.unparsed == []
    want = {f"f{i}": expect(k, v) for i, (k, v) in enumerate(values)}
    assert [e.fields for e in res.events] == [want, want]


# --------------------------------------------------------------------------------- real tracepoint traces


@needs_tracefs
def test_real_tracepoints_exec_and_openat() -> None:
    cat = shutil.which("cat")
    assert cat is not None
    cat = os.path.realpath(cat)
    missing = f"/nonexistent-ktrace-{os.getpid()}"
    events = ["sched/sched_process_exec", "syscalls/sys_enter_openat", "syscalls/sys_exit_openat"]
    with scratch_instance() as inst:
        (inst / "options" / "fields").write_text("1")
        for e in events:
            (inst / "events" / e / "enable").write_text("1")
        proc = subprocess.Popen([cat, "/etc/hostname", missing], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.wait()
        for e in events:
            (inst / "events" / e / "enable").write_text("0")
        fields_text = read_trace(inst)
        (inst / "options" / "fields").write_text("0")
        default_text = read_trace(inst)
    catalog = FormatCatalog([read_format(*e.split("/")) for e in events])
    parsed = TraceParser(catalog).parse(fields_text)
    assert parsed.unparsed == [] and parsed.lost == {}
    mine = [e for e in parsed.events if e.pid == proc.pid]
    [exec_] = [e for e in mine if e.name == "sched_process_exec"]
    assert exec_.system == "sched"
    assert exec_.fields == {"filename": cat, "pid": proc.pid, "old_pid": proc.pid}
    assert exec_.comm == "cat"
    enters = [e for e in mine if e.name == "sys_enter_openat"]
    exits = [e for e in mine if e.name == "sys_exit_openat"]
    assert enters and len(enters) == len(exits)
    for e in enters:
        assert e.system == "syscalls"
        assert isinstance(e["filename"], str) and e["filename"].startswith("(0x")
        assert isinstance(e["flags"], int) and isinstance(e["dfd"], int) and isinstance(e["__syscall_nr"], int)
    rets = [e["ret"] for e in exits]
    assert all(isinstance(r, int) for r in rets)
    assert any(r >= 0 for r in rets)  # /etc/hostname and the libraries
    assert -2 in rets  # ENOENT for the missing file: a negative long
    timestamps = [e.timestamp for e in mine]
    assert timestamps == sorted(timestamps)
    # the same buffer printed without options/fields: print fmt text, best-effort key=value
    plain = TraceParser(catalog).parse(default_text)
    [exec_plain] = [e for e in plain.events if e.pid == proc.pid and e.name == "sched_process_exec"]
    assert exec_plain.fields == {"filename": cat, "pid": proc.pid, "old_pid": proc.pid}


@needs_tracefs
def test_real_busy_trace_parses_strictly() -> None:
    """Many real events (sched, irq, timer, kmem, syscalls, ...) printed by this kernel with options/fields:
    every line is understood by its event's exact splitter (no best-effort fallback)."""
    systems = [
        s
        for s in (
            "sched",
            "irq",
            "timer",
            "kmem",
            "syscalls",
            "signal",
            "task",
            "workqueue",
            "rcu",
            "raw_syscalls",
            "filemap",
            "writeback",
            "block",
            "net",
            "skb",
            "sock",
            "mmap",
            "exceptions",
            "irq_vectors",
            "mce",
            "tlb",
        )
        if (TRACEFS / "events" / s).is_dir()
    ]
    with scratch_instance() as inst:
        (inst / "buffer_size_kb").write_text("4096")
        (inst / "options" / "fields").write_text("1")
        for s in systems:
            with contextlib.suppress(OSError):
                (inst / "events" / s / "enable").write_text("1")
        subprocess.run(["sh", "-c", "ls -l /proc/self/ >/dev/null; kill -USR1 $$ 2>/dev/null; sleep 0.05"], check=False)
        time.sleep(0.05)
        (inst / "events" / "enable").write_text("0")
        text = read_trace(inst)
    catalog = FormatCatalog()
    for s in systems:
        for path in (TRACEFS / "events" / s).glob("*/format"):
            catalog.add(parse_format(path.read_text(), s))
    parser = TraceParser(catalog)
    parsed = parser.parse(text)
    assert parsed.unparsed == []
    assert len(parsed.events) > 100
    names = {e.name for e in parsed.events}
    assert {"sys_enter_openat", "sched_switch"} & names
    strict_failures = []
    for ev in parsed.events:
        sp = parser._splitter(ev.name)
        assert sp is not None, ev.name
        body = ev.raw.split(f": {ev.name}:", 1)[1]
        if sp.split_fields(body) is None:
            strict_failures.append(ev.raw)
        fmt = catalog.get(ev.name)
        assert fmt is not None and ev.system == fmt.system
        for f in fmt.fields:
            v = ev.fields[f.name]
            if f.is_integer:
                assert isinstance(v, int) or (isinstance(v, str) and v.startswith("<")), (ev.raw, f)
            else:
                assert isinstance(v, str), (ev.raw, f)
    assert strict_failures == [], "\n".join(strict_failures[:10])


# ------------------------------------------------------------------------------------------- real uprobes

UPROBES = {
    # event: (kind, function, fetch args) -- x86_64 registers: %di arg1, %si arg2, %ax return
    "ent": ("p", "setup_thing", "irq=%di:s32 name=+0(%si):string u=%di:u32 x=%di:x32 tail=+0(%si):string"),
    "ret": ("r", "setup_thing", "ret=%ax:s32"),
    "st": (
        "p",
        "takes_struct",
        "irq=+0(%di):s32 count=+8(%di):s64 name=+0(+16(%di)):string tag=+24(%di):u8 tagc=+24(%di):char",
    ),
    "flt": ("p", "takes_string", "s=+0(%di):string ptr=%di:x64"),
    "add": ("p", "add_u64", "a=%di:u64 b=%si:x64 bs=%si:s64 b32=%si:x32 b16=%si:u16 s8=%si:s8"),
    "addr": ("r", "add_u64", "ret=%ax:s64"),
    "fib": ("p", "fib", "n=%di:s32 who=$comm"),
}

SETUP_NAMES = [
    ("eth 2", 30),
    ("quo\"te 'single'", 30),
    ("new\nline\n#third", 2000),
    ("x b=0x0 (0) nm= u=0x1 (1)", -5),
    ("é ü ✓", 1),
    ("", 1),
    ("trailing newline\n", 7),
]


class UprobeRun:
    def __init__(self, exe: Path) -> None:
        self.exe = exe
        self.pids: dict[str, list[int]] = {}
        self.fields_text = ""
        self.default_text = ""
        self.catalog = FormatCatalog()

    def events(self, mode: str, event: str, pid: Optional[int] = None) -> list[Event]:
        parsed = TraceParser(self.catalog).parse(self.fields_text if mode == "fields" else self.default_text)
        assert parsed.unparsed == [], parsed.unparsed
        return [e for e in parsed.events if e.name == event and (pid is None or e.pid == pid)]


@pytest.fixture(scope="module")
def uprobe_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UprobeRun]:
    if not _tracefs_ok():
        pytest.skip("needs root and a mounted tracefs")
    d = tmp_path_factory.mktemp("uprobe")
    # a comm with dashes and digits: "pro-bed-1" (pid parsing must take the number after the *last* dash)
    exe = d / "pro-bed-1"
    shutil.copy2(build_probed(d), exe)
    from pytest_ktrace._elf import symbol_file_offset

    run = UprobeRun(exe)
    uprobe_events = TRACEFS / "uprobe_events"
    defined: list[str] = []
    inst = TRACEFS / "instances" / NAME
    inst.mkdir()
    try:
        for event, (kind, func, args) in UPROBES.items():
            off = symbol_file_offset(exe, func)
            append(uprobe_events, f"{kind}:{NAME}/{event} {exe}:{off:#x} {args}")
            defined.append(event)
            run.catalog.add(read_format(NAME, event))
        (inst / "options" / "fields").write_text("1")
        (inst / "events" / NAME / "enable").write_text("1")

        def go(tag: str, *argv: str) -> None:
            # on one CPU: the kernel saves a task's comm for the trace when the CPU that recorded its event next
            # switches it out; a task that exits on another CPU is printed as "<...>"
            proc = subprocess.Popen(["taskset", "-c", "0", str(exe), *argv], stdout=subprocess.DEVNULL)
            assert proc.wait() == 0, argv
            run.pids.setdefault(tag, []).append(proc.pid)

        for name, irq in SETUP_NAMES:
            go(f"setup:{name}", "setup", name, str(irq))
        go("struct", "struct", "s s", "5", "-3")
        go("fault", "fault")
        go("add", "add", "18446744073709551615", "18446744073709551614")
        go("fib", "fib", "3")
        (inst / "events" / NAME / "enable").write_text("0")
        run.fields_text = read_trace(inst)
        (inst / "options" / "fields").write_text("0")
        run.default_text = read_trace(inst)
        yield run
    finally:
        with contextlib.suppress(OSError):
            (inst / "events" / NAME / "enable").write_text("0")
        inst.rmdir()
        for event in defined:
            enable = TRACEFS / "events" / NAME / event / "enable"
            with contextlib.suppress(OSError):
                if enable.read_text().strip() != "0":
                    enable.write_text("0")
            append(uprobe_events, f"-:{NAME}/{event}")


MODES = ["fields", "default"]


@needs_tracefs
@needs_x86_uprobes
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name, irq", SETUP_NAMES)
def test_uprobe_strings_and_signed(uprobe_run: UprobeRun, mode: str, name: str, irq: int) -> None:
    [pid] = uprobe_run.pids[f"setup:{name}"]
    [ent] = uprobe_run.events(mode, "ent", pid)
    [ret] = uprobe_run.events(mode, "ret", pid)
    assert ent.system == NAME and ent.comm == "pro-bed-1" and ent.pid == pid
    assert ent["name"] == name and ent["tail"] == name
    assert ent["irq"] == irq
    assert ent["u"] == irq & 0xFFFFFFFF and ent["x"] == irq & 0xFFFFFFFF
    assert isinstance(ent["__probe_ip"], int) and ent["__probe_ip"] > 0
    assert ret["ret"] == (-22 if irq > 1000 else 0)
    assert ret["__probe_func"] == ent["__probe_ip"]
    assert isinstance(ret["__probe_ret_ip"], int) and ret["__probe_ret_ip"] != ret["__probe_func"]
    assert ret.timestamp >= ent.timestamp


@needs_tracefs
@needs_x86_uprobes
@pytest.mark.parametrize("mode", MODES)
def test_uprobe_struct_members(uprobe_run: UprobeRun, mode: str) -> None:
    [pid] = uprobe_run.pids["struct"]
    [st_] = uprobe_run.events(mode, "st", pid)
    assert st_.fields["irq"] == 5 and st_["count"] == -3 and st_["name"] == "s s"
    assert st_["tag"] == ord("k") and st_["tagc"] == ord("k")


@needs_tracefs
@needs_x86_uprobes
@pytest.mark.parametrize("mode", MODES)
def test_uprobe_faulting_string(uprobe_run: UprobeRun, mode: str) -> None:
    [pid] = uprobe_run.pids["fault"]
    [flt] = uprobe_run.events(mode, "flt", pid)
    assert flt["ptr"] == 1
    # print_fields() prints the empty data of a failed fetch; the default output says "(fault)"
    assert flt["s"] == ("(fault)" if mode == "default" else "")


@needs_tracefs
@needs_x86_uprobes
@pytest.mark.parametrize("mode", MODES)
def test_uprobe_u64_x64_and_narrow_types(uprobe_run: UprobeRun, mode: str) -> None:
    [pid] = uprobe_run.pids["add"]
    [add] = uprobe_run.events(mode, "add", pid)
    [addr] = uprobe_run.events(mode, "addr", pid)
    assert add.fields == {
        "__probe_ip": add["__probe_ip"],
        "a": 2**64 - 1,
        "b": 2**64 - 2,
        "bs": -2,
        "b32": 2**32 - 2,
        "b16": 2**16 - 2,
        "s8": -2,
    }
    assert addr["ret"] == -3


@needs_tracefs
@needs_x86_uprobes
@pytest.mark.parametrize("mode", MODES)
def test_uprobe_recursion_and_comm_fetcharg(uprobe_run: UprobeRun, mode: str) -> None:
    [pid] = uprobe_run.pids["fib"]
    calls = uprobe_run.events(mode, "fib", pid)
    assert sorted(e["n"] for e in calls) == [0, 1, 1, 2, 3]
    assert {e["who"] for e in calls} == {"pro-bed-1"}


@needs_tracefs
@needs_x86_uprobes
def test_uprobe_trace_fully_understood(uprobe_run: UprobeRun) -> None:
    for text in (uprobe_run.fields_text, uprobe_run.default_text):
        parsed = TraceParser(uprobe_run.catalog).parse(text)
        assert parsed.unparsed == [] and parsed.lost == {}
        assert len(parsed.events) == 2 * len(SETUP_NAMES) + 1 + 1 + 2 + 5
        assert all(e.system == NAME for e in parsed.events)


# fast (whole-text) path == the line-by-line reference, on big generated traces

FAST_FORMATS = [
    mkfmt(
        "fent",
        [
            ("unsigned long __probe_ip", 8, 0),
            ("s32 irq", 4, 1),
            ("__data_loc char[] name", 4, 1),
            ("u64 t", 8, 0),
            ("u8 c", 1, 0),
        ],
        system="fp",
        eid=4000,
    ),
    mkfmt(
        "fret",
        [("unsigned long __probe_func", 8, 0), ("unsigned long __probe_ret_ip", 8, 0), ("s32 ret", 4, 1)],
        system="fp",
        eid=4001,
    ),
    mkfmt(
        "fsw",
        [
            ("char prev_comm[16]", 16, 0),
            ("pid_t prev_pid", 4, 1),
            ("long prev_state", 8, 1),
            ("const char * filename", 8, 0),
            ("u8 mac[6]", 6, 0),
        ],
        system="tp",
        eid=4002,
    ),
    mkfmt("123", [("int a", 4, 1)], system="tp", eid=4003),  # an all-digit event name
]


def _fast_line(rng: random.Random, i: int) -> str:
    """One trace line (or several) of some shape, valid or subtly not."""
    ts = f"{100 + i / 1000:.6f}" if rng.random() < 0.95 else str(1000 + i)
    comm = rng.choice(
        [
            "probed",
            "bash",
            "systemd-journal",
            "jbd2/sda1-8",
            "a b",
            "x-1 [0] 1.0:",
            "<idle>",
            "kworker/0:1",
            "w]eird",
            "",
        ]
    )
    comm = comm if rng.random() < 0.97 else rng.choice(["x-\u0661", "a\tb", "12", "-", "x-1-"])
    pid = rng.choice(["4585", "1", "0", "12345678"]) if rng.random() < 0.98 else "\u0661\u0662"
    cpu = rng.choice(["000", "001", "17"]) if rng.random() < 0.98 else "\u0663"
    flags = rng.choice(["d..1.", ".....", "d.h2.", None, None if rng.random() < 0.98 else "5.0:"])
    tgid = rng.choice([None, None, None, "( 4585)", "(-------)"])
    sep = " " if rng.random() < 0.98 else rng.choice(["\t", "  ", "\u00a0"])
    head = f"{comm:>16}-{pid:<7}{sep}" + (f"{tgid} " if tgid else "") + f"[{cpu}]{sep}" + (f"{flags} " if flags else "")
    if rng.random() < 0.01:
        ts = "\u0661.5"
    head += f"{ts:>12}: "
    u64 = rng.choice([0, 1, 42, 2**63, 2**64 - 1, 94601212514761])
    s64 = u64 - 2**64 if u64 >= 2**63 else u64
    s32 = rng.choice([0, -22, 200, 2**31 - 1, -(2**31)])
    text = rng.choice(
        ["eth0", "eth 2 x=1", "", "a t=0x1 (1)", "tab\there", "nul\0", "line1\nline2", "q\"uo'te", "\n", "end\n"]
    )
    r = rng.random()
    if r < 0.25:
        t = rng.choice([f"0x{u64:x} ({s64})", "<OVERFLOW>", f"sym+0x1/0x2 ({s64})", f"0x{u64:x} [mod] ({s64})"])
        c = rng.choice(["'c'(99)", "(1)", "(-1)", "<INVALID-SIZE>"])
        return head + f"fent: __probe_ip=0x{u64:x} ({s64}) irq=0x{s32 & 0xFFFFFFFF:x} ({s32}) name={text} t={t} c={c}"
    if r < 0.35:  # reverse order (5.15 - 6.4)
        return head + f"fent: c=(3) t=0x2a (42) name={text} irq=0xc8 (200) __probe_ip=0x{u64:x} ({s64})"
    if r < 0.45:  # default probe output
        return head + rng.choice(
            [
                f'fent: (0x{u64:x}) irq={s32} name="{text}" t=0x{u64:x} c={rng.choice(["3", "0x3", "(fault)", "x"])}',
                "fent: (do_sys_open+0x0/0x3a0) irq=1 name=(fault) t=-1 c='c'",
            ]
        )
    if r < 0.6:
        return head + rng.choice(
            [
                f"fret: __probe_func=0x1 (1) __probe_ret_ip=0x2 (2) ret=0x{s32 & 0xFFFFFFFF:x} ({s32})",
                f"fret: (0x5613c8dbe3fe <- 0x5613c8dbe1c9) ret={s32}",
                "fret: (do_sys_open+0x5a/0xa0 <- do_sys_openat2) ret=0x3",
                f"fret: ret=0x3 (3) __probe_ret_ip=sym+0x5/0x10 ({s64}) __probe_func=0x1 (1)",
            ]
        )
    if r < 0.75:
        fname = rng.choice(["(0xffff888102a4301c)", "(0xffff888102a4301c:/etc/passwd)", "<INVALID-TYPE>"])
        mac = rng.choice(["00,11,22,33,44,55", "<INVALID-SIZE>", ""])
        return head + (
            f"fsw: prev_comm={text[:16]} prev_pid=0x10a8 (4264) prev_state=0x{u64:x} ({s64}) filename={fname} mac={mac}"
        )
    if r < 0.8:
        return head + rng.choice(
            [
                "123: a=0x1 (1)",
                "unknown_ev: x=1 y=2",
                "UNKNOWN TYPE 5",
                "fent:",
                "fent: junk",
                "tracing_mark_write: hi\r",
            ]
        )
    return rng.choice(
        [
            "CPU:1 [LOST 12 EVENTS]",
            "CPU:0 [LOST EVENTS]",
            "# tracer: nop",
            "",
            "   ",
            "garbage line",
            "##### CPU 2 buffer started ####",
            "continued t=0x0 (0) c=(0)",
            head + "fent: " + text,
        ]
    )


def _event_key(e: Event) -> tuple[object, ...]:
    return (type(e), [getattr(e, f.name) for f in dataclasses.fields(Event)], list(e.fields.items()), e.raw)


FAST_KEYS = [
    ("fp", "fent"),
    ("fp", "fret"),
    ("tp", "fsw"),
    ("tp", "123"),
    ("", "unknown_ev"),
    ("ftrace", "tracing_mark_write"),
]


def _fast_text(seed: int, lines: int) -> str:
    rng = random.Random(seed)
    return "\n".join(_fast_line(rng, i) for i in range(lines)) + rng.choice(["", "\n", "\n\n"])


def _check_against_reference(parsed: ParsedTrace, ref: ParsedTrace, order: Sequence[object]) -> None:
    """``parsed`` (lazy) answers like the reference, whatever it is asked first (``order``: keys for of(),
    "counts", "len", "all", an int index)."""
    want = [_event_key(e) for e in ref.events]
    for what in order:
        if what == "counts":
            assert parsed.event_counts() == ref.event_counts()
        elif what == "len":
            assert len(parsed.events) == len(ref.events) and bool(parsed.events) == bool(ref.events)
        elif what == "all":
            assert [_event_key(e) for e in parsed.events] == want
        elif isinstance(what, int):
            if ref.events:
                assert _event_key(parsed.events[what % len(ref.events)]) == want[what % len(ref.events)]
        else:
            system, name = what  # type: ignore[misc]
            got = parsed.of(system, name)
            assert [_event_key(e) for e in got] == [_event_key(e) for e in ref.of(system, name)]
            assert parsed.count_of(system, name) == len(got)
        assert parsed.lost == ref.lost and list(parsed.lost.items()) == list(ref.lost.items())
        assert parsed.unparsed == ref.unparsed
    assert [_event_key(e) for e in parsed.events] == want
    assert parsed == ref and parsed.events == ref.events and ref.events == parsed.events
    # the events of of() are the very objects of events (session.assert_order relies on it)
    ids = {id(e) for e in parsed.events}
    for system, name in FAST_KEYS:
        assert all(id(e) in ids for e in parsed.of(system, name))
    pairs = parsed.select(FAST_KEYS[:2] + FAST_KEYS[4:5])
    assert pairs == [e for e in parsed.events if (e.system, e.name) in set(FAST_KEYS[:2] + FAST_KEYS[4:5])]


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_matches_reference(seed: int) -> None:
    text = _fast_text(seed, 6000)
    cat = FormatCatalog(FAST_FORMATS)
    fast = TraceParser(cat).parse(text)
    ref = TraceParser(cat)._parse_slow(text)
    assert isinstance(ref.events, list) and not isinstance(fast.events, list)  # lazy, vs the plain reference
    order: list[object] = [["all"], ["len", "counts", *FAST_KEYS], [("fp", "fret"), 17, ("tp", "fsw")]][seed % 3]
    _check_against_reference(fast, ref, order)
    # the trace exercises the interesting cases
    assert ref.lost and ref.unparsed and any("\n" in e.raw for e in ref.events)
    assert len(ref.events) > 3000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    lines=st.integers(0, 120),
    order=st.lists(st.one_of(st.sampled_from(["counts", "len", "all", *FAST_KEYS]), st.integers(-200, 200))),
)
def test_lazy_trace_equals_reference_in_any_access_order(seed: int, lines: int, order: list[object]) -> None:
    text = _fast_text(seed, lines)
    cat = FormatCatalog(FAST_FORMATS)
    _check_against_reference(TraceParser(cat).parse(text), TraceParser(cat)._parse_slow(text), order)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=40), st.sampled_from([_fast_line(random.Random(i), i) for i in range(60)]))))
def test_lazy_trace_equals_reference_on_mixed_garbage(lines: list[str]) -> None:
    text = "\n".join(lines)
    cat = FormatCatalog(FAST_FORMATS)
    _check_against_reference(TraceParser(cat).parse(text), TraceParser(cat)._parse_slow(text), ["counts"])


def _clean_trace(n: int) -> str:
    """``n`` single-line events of every form (no multi-line strings), with a header and LOST lines."""
    body = " __probe_ip=0x1 (1) irq=0xc8 (200) name={} t=0x2a (42) c=(1)"
    out = ["# tracer: nop", "#", "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION"]
    for i in range(n):
        ts = f"{i}.5"
        k = i % 5
        if k == 0:
            out.append(line("fent", body.format(f"n{i}"), ts=ts))
        elif k == 1:
            out.append(line("fent", ' (0x5613c8dbe1c9) irq=3 name="lo" t=0x1 c=3', ts=ts))
        elif k == 2:
            out.append(line("fret", " __probe_func=0x1 (1) __probe_ret_ip=0x2 (2) ret=0xffffffea (-22)", ts=ts))
        elif k == 3:
            out.append(line("unknown_ev", " x=1 y=2", ts=ts))
        else:
            out.append(
                line("fsw", " prev_comm=bash prev_pid=0x10a8 (4264) prev_state=0x1 (1) filename=(0x1) mac=", ts=ts)
            )
        if i % 997 == 500:
            out.append("CPU:1 [LOST 7 EVENTS]")
    return "\n".join(out) + "\n"


def _live_events() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Event)


def test_unread_events_are_never_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the parser's speed rests on: parse() builds no Event at all; len, lost, unparsed and the counts
    come from the index; of() builds only the events asked for; reading events builds the rest, once."""
    text = _clean_trace(20000)
    cat = FormatCatalog(FAST_FORMATS)
    before = _live_events()
    parsed = TraceParser(cat).parse(text)
    assert _live_events() == before
    assert len(parsed.events) == 20000 and parsed.events and parsed.lost == {1: 7 * 20} and parsed.unparsed == []
    assert parsed.event_counts() == {
        ("fp", "fent"): 8000,
        ("fp", "fret"): 4000,
        ("", "unknown_ev"): 4000,
        ("tp", "fsw"): 4000,
    }
    assert parsed.count_of("fp", "fret") == 4000 and parsed.count_of("tp", "fret") == 0
    assert _live_events() == before
    rets = parsed.of("fp", "fret")
    assert _live_events() == before + 4000 and [e.timestamp for e in rets[:2]] == [2.5, 7.5]
    assert parsed.of("fp", "fret") == rets and _live_events() == before + 4000  # decoded once
    everything = list(parsed.events)
    assert _live_events() == before + 20000 and len(everything) == 20000
    assert [e for e in everything if e.name == "fret"] == rets and everything[2] is rets[0]
    ref = TraceParser(cat)._parse_slow(text)
    assert parsed == ref


def _counting_field_decoder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts how many lines each column-wise field decoding takes (one entry per decoding)."""
    decoded: list[int] = []
    decode = indexed_mod._decode_fields

    def counting(sp: object, bodies: list[str], line_of: object) -> object:
        decoded.append(len(bodies))
        return decode(sp, bodies, line_of)  # type: ignore[arg-type]

    monkeypatch.setattr(indexed_mod, "_decode_fields", counting)
    return decoded


def test_fields_are_decoded_per_event_kind_when_first_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events come with their headers typed; the fields (and raw lines) of all events of one kind are decoded
    together when the first of them is read, once, and never for kinds nobody reads."""
    decoded = _counting_field_decoder(monkeypatch)
    text = _clean_trace(20000)
    cat = FormatCatalog(FAST_FORMATS)
    parsed = TraceParser(cat).parse(text)
    events = list(parsed.events)
    assert len(events) == 20000 and decoded == []
    assert [e.timestamp for e in events[:3]] == [0.5, 1.5, 2.5] and {e.pid for e in events} == {42}
    assert events[4].raw == text.split("\n")[3 + 4] and decoded == []  # a raw line needs no field
    rets = parsed.of("fp", "fret")
    assert rets[1]["ret"] == -22 and decoded == [4000]
    assert all(e.fields == {"__probe_func": 1, "__probe_ret_ip": 2, "ret": -22} for e in rets) and decoded == [4000]
    assert rets[0].raw == text.split("\n")[3 + 2] and decoded == [4000]
    ref = TraceParser(cat)._parse_slow(text)
    assert [_event_key(e) for e in events] == [_event_key(e) for e in ref.events]
    assert sorted(decoded) == [4000, 4000, 8000]  # fent, fret, fsw: each once (unknown_ev is decoded line by line)


def test_events_outliving_their_trace_still_read_their_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events kept after the parsed trace is dropped are no reference cycle with what decodes them, and each
    still reads the fields and raw line of its own line."""
    decoded = _counting_field_decoder(monkeypatch)
    text = _clean_trace(3000)
    cat = FormatCatalog(FAST_FORMATS)
    kept = TraceParser(cat).parse(text).of("tp", "fsw")[::7]
    ref = TraceParser(cat)._parse_slow(text).of("tp", "fsw")[::7]
    assert len(kept) == len(ref) > 50 and decoded == []
    assert [(_event_key(e), e.raw) for e in kept] == [(_event_key(e), e.raw) for e in ref]
    assert decoded == [600]  # decoded together once, each event taking its own


def test_dropped_traces_free_their_events_without_the_collector() -> None:
    cat = FormatCatalog(FAST_FORMATS)
    text = _clean_trace(5000)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        before = _live_events()
        parsed = TraceParser(cat).parse(text)
        first = list(parsed.events)
        first[0].fields  # noqa: B018  # one kind decoded, the others not
        assert _live_events() == before + 5000
        del parsed, first
        assert _live_events() == before  # freed by their reference counts alone
    finally:
        if was:
            gc.enable()


def test_fields_decode_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = _counting_field_decoder(monkeypatch)
    parsed = TraceParser(FormatCatalog(FAST_FORMATS)).parse(_clean_trace(20000))
    events = parsed.of("fp", "fent")
    barrier = threading.Barrier(4)
    seen: list[list[object]] = []

    def read(offset: int) -> None:
        barrier.wait()
        seen.append([e.fields.get("irq") for e in events[offset::4]])

    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert decoded == [8000] and len(seen) == 4 and sum(len(s) for s in seen) == 8000


def test_lazy_events_use_the_formats_of_parse_time() -> None:
    """Decoding later, after the catalog changed, gives what parsing gave then."""
    cat = FormatCatalog(FAST_FORMATS)
    text = _fast_text(7, 500)
    ref = TraceParser(cat)._parse_slow(text)
    parsed = TraceParser(cat).parse(text)
    cat.add(mkfmt("fent", [("int other", 4, 1)], system="changed", eid=4000))
    cat.remove("tp:fsw")
    assert parsed.count_of("fp", "fent") == ref.count_of("fp", "fent") > 0
    assert parsed.of("fp", "fent") == ref.of("fp", "fent")
    assert parsed.events == ref.events


def test_lazy_events_behave_as_a_list() -> None:
    cat = FormatCatalog(FAST_FORMATS)
    text = _clean_trace(50)
    parsed = TraceParser(cat).parse(text)
    ref = TraceParser(cat)._parse_slow(text)
    events, want = parsed.events, ref.events
    assert events == want and want == events and (events != want) is False and events != want[:-1]
    assert events != tuple(want) and events != "x" and events == TraceParser(cat).parse(text).events
    assert events[0] == want[0] and events[-1] == want[-1] and events[3:9] == want[3:9]
    assert list(reversed(events)) == want[::-1] and want[5] in events and events.index(want[5]) == 5
    assert events.count(want[5]) == 1 and repr(events) == repr(want)
    with pytest.raises(TypeError):
        hash(events)
    assert pickle.loads(pickle.dumps(parsed)) == ref
    assert copy.copy(events) == want and type(copy.deepcopy(parsed).events) is list
    empty = TraceParser(cat).parse("# tracer: nop\n")
    assert not empty.events and len(empty.events) == 0 and empty.events == [] and empty.of("fp", "fent") == []
    # a ParsedTrace built from a plain list answers the same questions
    plain = ParsedTrace(events=list(want))
    assert plain.of("fp", "fret") == parsed.of("fp", "fret") and plain.event_counts() == parsed.event_counts()
    assert plain.count_of("fp", "fent") == parsed.count_of("fp", "fent") == 20


def test_lazy_events_decode_once_across_threads() -> None:
    cat = FormatCatalog(FAST_FORMATS)
    parsed = TraceParser(cat).parse(_clean_trace(20000))
    results: list[list[Event]] = []
    barrier = threading.Barrier(4)

    def read() -> None:
        barrier.wait()
        results.append(parsed.of("fp", "fent") if len(results) % 2 else list(parsed.events))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {id(e) for e in parsed.events}
    assert len(results) == 4 and all(id(e) in ids for r in results for e in r)


def test_fast_path_takes_clean_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only lines that need it go line by line, at parse time: a multi-line event; a LOST line goes alone (it
    ends whatever event is before it)."""
    body = " __probe_ip=0x1 (1) irq=0xc8 (200) name={} t=0x2a (42) c=(1)"
    lines = [line("fent", body.format("x"), ts=f"{i}.0") for i in range(1000)]
    lines[500] = line("fent", body.format("a\nb"), ts="500.0")
    lines.insert(700, "CPU:0 [LOST 3 EVENTS]")
    seen: list[str] = []
    parser = TraceParser(FormatCatalog(FAST_FORMATS))
    orig = parser._parse_lines

    def spy(ls: list[str], result: object) -> None:
        seen.extend(ls)
        orig(ls, result)  # type: ignore[arg-type]

    monkeypatch.setattr(parser, "_parse_lines", spy)
    res = parser.parse("\n".join(lines))
    assert len(res.events) == 1000 and res.lost == {0: 3} and res.unparsed == []
    assert seen == [*lines[500].split("\n"), "CPU:0 [LOST 3 EVENTS]"]
    assert res.events[500]["name"] == "a\nb" and res.events[999].timestamp == 999.0
    assert seen == [*lines[500].split("\n"), "CPU:0 [LOST 3 EVENTS]"]  # decoding the others needs no reference


def test_fast_built_events_are_what_the_constructor_builds() -> None:
    """Events the parser fills in place are what ``Event(...)`` gives: the same class, every attribute set
    (the defaulted ``stack`` included), equal, and as frozen."""
    # 50 events: 10 or more of each known name (built column-wise), 10 of an unknown one (built line by line)
    parsed = TraceParser(FormatCatalog(FAST_FORMATS)).parse(_clean_trace(50))
    names = [f.name for f in dataclasses.fields(Event)]
    for event in parsed.events:
        made = Event(**{name: getattr(event, name) for name in names})
        assert type(event) is Event and event.stack == () and event == made
        assert [getattr(event, n) for n in names] == [getattr(made, n) for n in names]
        assert not hasattr(event, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.pid = 1  # type: ignore[misc]


def test_fast_path_reads_non_ascii_digits_as_the_reference() -> None:
    """The column-wise decoder matches ``[0-9]`` where the reference's patterns say ``\\d`` only on ASCII text:
    elsewhere a string would split at another place (here ``s`` keeps ``b=0x2 (2) z=y`` because ``b``'s
    decimal is an Arabic-Indic 3, which ``\\d`` and ``int()`` take)."""
    fmt = mkfmt("uni", [("int a", 4, 1), ("__data_loc char[] s", 4, 1), ("int b", 4, 1), ("__data_loc char[] z", 4, 1)])
    cat = FormatCatalog([fmt])
    tricky = " a=0x1 (1) s=x b=0x2 (2) z=y b=0x3 ({}) z=w"
    for three in ("3", "\u0663"):
        text = "\n".join(
            line("uni", body, ts=f"{i}.5")
            for i, body in enumerate([" a=0x1 (1) s=q b=0x7 (7) z=r", tricky.format(three)])
        )
        ref = TraceParser(cat)._parse_slow(text)
        assert [e.fields for e in ref.events][1] == {"a": 1, "s": "x b=0x2 (2) z=y", "b": 3, "z": "w"}
        parsed = TraceParser(cat).parse(text)
        assert [_event_key(e) for e in parsed.events] == [_event_key(e) for e in ref.events]


@pytest.mark.parametrize("end", ["", "\n", "\n\n"])
def test_index_reads_the_first_and_last_lines(end: str) -> None:
    body = " __probe_func=0x1 (1) __probe_ret_ip=0x2 (2) ret=0x0 (0)"
    lines = [line("fret", body, ts=f"{i}.0") for i in range(3)]
    parsed = TraceParser(FormatCatalog(FAST_FORMATS)).parse("\n".join(lines) + end)
    assert [e.raw for e in parsed.events] == lines and parsed.unparsed == []
    assert parsed.event_counts() == {("fp", "fret"): 3}


@pytest.mark.parametrize(
    "body",
    [
        # fields format: a masked unsigned address, a negative s32, a u8 char, the same on every line
        " __probe_ip=do_sys_openat2+0x0/0x3a0 (-2127569872) irq=0xffffff9c (-100) name=x t=0x1 (1) c='c'(99)",
        # default probe output: the same hex address, decimal, hex and char values, and one that is no number
        " (0x5613c8dbe1c9) irq=-3 name=\"lo\" t=0xffffffffffffffff c='a'",
        ' (0x5613c8dbe1c9) irq=zz name="lo" t=12 c=300',
    ],
)
def test_a_column_of_one_repeated_value_decodes_as_the_reference(body: str) -> None:
    """Columns whose every value is the same (a probe's address, a pid) are converted once: to what the
    reference gives each line."""
    text = "\n".join(line("fent", body, ts=f"{i}.5") for i in range(200)) + "\n"
    cat = FormatCatalog(FAST_FORMATS)
    parsed = TraceParser(cat).parse(text)
    ref = TraceParser(cat)._parse_slow(text)
    assert ref.unparsed == [] and len(ref.events) == 200
    assert [_event_key(e) for e in parsed.events] == [_event_key(e) for e in ref.events]
