"""A replayed command's recorded trace lines become the events they were: a few lines are decoded one by one,
which must give exactly what the whole-text parser gives (the events it keeps, in order, field for field)."""

from __future__ import annotations

from typing import Optional

import pytest

from pytest_ktrace._formats import FormatCatalog, parse_format
from pytest_ktrace._parse import TraceParser
from pytest_ktrace.fake._backend import _recorded_events
from pytest_ktrace.fake._tracefs import FakeTracefs
from pytest_ktrace.recording._cassette import trace_lines
from pytest_ktrace.snapshots._snapshot import load_snapshot

STRINGS = ["rtc-pl031", "two words", ' x=1 n="y"', "", "caf\u00e9", "a-1-b", None, "(fault)", "tab\there"]


def traced(*, newline: bool = False, stack: bool = False) -> tuple[FakeTracefs, str]:
    """A trace of kprobes with every kind of argument, a return probe, a tracepoint and a marker line."""
    fs = FakeTracefs(load_snapshot("debian-6.1-x86_64"))
    fs.mkdir("instances/i")
    fs.write("kprobe_events", "p:g/a vfs_read n=+0(%di):string c=$comm x=%si:x64 s=%dx:s32 arr=+0(%si):u8[3]")
    fs.write("kprobe_events", "r:g/b vfs_read ret=$retval:s64")
    for event in ("g/a", "g/b", "sched/sched_wakeup"):
        fs.write(f"instances/i/events/{event}/enable", "1")
    if stack:
        fs.write("instances/i/events/g/b/trigger", "stacktrace")
    for index, text in enumerate(STRINGS + (["line\nbreak"] if newline else [])):
        comm = ["sh", "kworker/0:1", "a-1-b", "x y"][index % 4]
        fs.emit("g/a", {"n": text, "x": index << 40, "s": -index, "arr": (index, 255, 0)}, pid=100 + index, comm=comm)
        fs.emit("g/b", {"ret": -(1 << 40) + index}, pid=100 + index, comm=comm, cpu=index % 2, stack=("f", "g"))
        fs.emit("sched/sched_wakeup", {"comm": text or "", "pid": index, "prio": 120}, pid=7, comm="swapper/0")
    fs.write("instances/i/trace_marker", "hello marker")
    return fs, fs.read("instances/i/trace")


def catalog_of(fs: FakeTracefs, events: list[str]) -> FormatCatalog:
    catalog = FormatCatalog()
    for event in events:
        catalog.add(parse_format(fs.read(f"events/{event}/format"), event.split("/")[0]))
    return catalog


@pytest.mark.parametrize(
    ("known", "newline", "stack"),
    [
        (["g/a", "g/b", "sched/sched_wakeup"], False, False),
        (["g/a"], False, False),  # events without a known format
        ([], False, False),
        (["g/a", "g/b", "sched/sched_wakeup"], True, False),  # a string value over two lines
        (["g/a", "g/b"], False, True),  # stack entries after the return probe's events
    ],
)
def test_recorded_lines_decode_as_the_whole_text_parser_does(known: list[str], newline: bool, stack: bool) -> None:
    fs, text = traced(newline=newline, stack=stack)
    lines = trace_lines(text)
    for count in (len(lines), 3, 1, 0):  # a command's few lines, and one over the line-by-line limit
        some = lines[:count]
        joined = "\n".join(some) + "\n"
        catalog = catalog_of(fs, known)
        decoded = list(_recorded_events(TraceParser(catalog), some, joined))
        reference = list(TraceParser(catalog).parse(joined).events)
        assert decoded == reference
        assert len(reference) >= (1 if some and known else 0)


def test_lines_that_are_no_event_are_left_out_as_the_parser_leaves_them() -> None:
    fs, text = traced()
    lines = trace_lines(text)[:4]
    odd: list[Optional[str]] = ["garbage", "CPU:1 [LOST 3 EVENTS]", "          <idle>-0       [001] d..2.   1.000000: "]
    for extra in odd:
        assert extra is not None
        some = [*lines[:2], extra, *lines[2:]]
        joined = "\n".join(some) + "\n"
        catalog = catalog_of(fs, ["g/a", "g/b"])
        assert list(_recorded_events(TraceParser(catalog), some, joined)) == list(
            TraceParser(catalog).parse(joined).events
        )
