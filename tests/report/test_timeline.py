"""The failure-report timeline, rendered from synthetic events: pairing, nesting, single lines, elision, width."""

from __future__ import annotations

import re
from typing import Optional, Union

import pytest

from pytest_ktrace._assertions import Observation, ProbeView, assert_latency, pair_calls
from pytest_ktrace._events import Event
from pytest_ktrace._probes import ProbeSpec
from pytest_ktrace.report._timeline import build_timeline, format_latency, render_timeline

BIN = "/opt/prog/probed"
FIB_ENTRY = ProbeSpec("uprobe", "g", "u_fib_1", f"{BIN}:0x1139", (("n", "%di:s32"),), display="fib")
FIB_RETURN = ProbeSpec("uretprobe", "g", "ur_fib_2", f"{BIN}:0x1139", (("ret", "$retval:s32"),), display="fib")
SETUP = ProbeSpec(
    "kprobe",
    "g",
    "p___setup_irq_3",
    "__setup_irq",
    (("irq", "%di:u32"), ("name", "+0(%si):string")),
    display="__setup_irq",
)
SETUP_DONE = ProbeSpec(
    "kretprobe", "g", "r___setup_irq_4", "__setup_irq", (("ret", "$retval:s32"),), display="__setup_irq"
)
EXEC = ProbeSpec("tracepoint", "sched", "sched_process_exec", "", display="sched:sched_process_exec")


def ev(
    spec: ProbeSpec,
    ts: float,
    pid: int = 100,
    comm: str = "probed",
    data: Optional[dict[str, Union[int, str]]] = None,
    **fields: Union[int, str],
) -> Event:
    """An event of ``spec``; ``data`` for fields named like the parameters (a tracepoint's ``pid``)."""
    return Event(spec.group, spec.event, {**(data or {}), **fields}, pid, comm, 0, ts)


def fib_events(n: int, pid: int = 100, start: float = 50.0) -> list[Event]:
    """The events of a real recursive fib(n): each call's entry, its children, then its return (1 µs steps)."""
    events: list[Event] = []
    clock = [start]

    def tick() -> float:
        clock[0] += 1e-6
        return clock[0]

    def fib(k: int) -> int:
        events.append(ev(FIB_ENTRY, tick(), pid, n=k))
        value = k if k < 2 else fib(k - 1) + fib(k - 2)
        events.append(ev(FIB_RETURN, tick(), pid, ret=value))
        return value

    fib(n)
    return events


def body(line: str) -> str:
    """What follows the `|` column of a timeline line (the indentation included)."""
    return line.split(" | ", 1)[1]


def test_recursion_is_one_line_per_call_nested_and_paired_like_assert_latency() -> None:
    events = fib_events(3)
    text = render_timeline(build_timeline(events, [FIB_ENTRY, FIB_RETURN]))
    lines = text.splitlines()
    assert lines[0].startswith("timeline: 10 events as 5 calls; time from the first event at 50.000001")
    # fib(3) -> fib(2) -> (fib(1), fib(0)), then fib(1): the depth is the indentation, the value is each call's own
    assert [body(line) for line in lines[1:]] == [
        "fib(n=3) = 2",
        "  fib(n=2) = 1",
        "    fib(n=1) = 1",
        "    fib(n=0) = 0",
        "  fib(n=1) = 1",
    ]
    assert "+0.000000 probed-100" in lines[1] and "9.0 \u00b5s" in lines[1]  # entry at t=1, return at t=10
    assert "1.0 \u00b5s" in lines[3]
    # the same pairs (and so the same latencies) as assert_latency, which the timeline shares its pairing with
    entry = ProbeView(FIB_ENTRY, lambda: Observation([e for e in events if e.name == FIB_ENTRY.event]))
    exit = ProbeView(FIB_RETURN, lambda: Observation([e for e in events if e.name == FIB_RETURN.event]))
    shown = sorted(float(m.group(1)) for m in re.finditer(r"([\d.]+) \u00b5s", text))
    assert shown == sorted(round(us, 1) for us in assert_latency(entry, exit))


def test_calls_are_paired_per_task_and_nest_across_functions() -> None:
    add_entry = ProbeSpec("uprobe", "g", "u_add_5", f"{BIN}:0x1200", (("a", "%di:u64"),), display="add_u64")
    add_return = ProbeSpec("uretprobe", "g", "ur_add_6", f"{BIN}:0x1200", (("ret", "$retval:s64"),), display="add_u64")
    events = [
        ev(FIB_ENTRY, 1.0, pid=1, n=1),
        ev(FIB_ENTRY, 1.1, pid=2, n=7),  # another task: its own stack
        ev(add_entry, 1.2, pid=1, a=5),  # called by pid 1's fib
        ev(FIB_RETURN, 1.3, pid=2, ret=13),
        ev(add_return, 1.4, pid=1, ret=6),
        ev(FIB_RETURN, 1.5, pid=1, ret=1),
    ]
    lines = render_timeline(build_timeline(events, [FIB_ENTRY, FIB_RETURN, add_entry, add_return])).splitlines()[1:]
    assert [(line.split()[1], body(line)) for line in lines] == [
        ("probed-1", "fib(n=1) = 1"),
        ("probed-2", "fib(n=7) = 13"),
        ("probed-1", "  add_u64(a=5) = 6"),
    ]
    assert "500.000 ms" in lines[0] and "200.000 ms" in lines[1] and "200.000 ms" in lines[2]


def test_kprobe_pairs_with_the_kretprobe_of_its_symbol_not_with_an_offset_into_it() -> None:
    inside = ProbeSpec("kprobe", "g", "p___setup_irq_9", "__setup_irq+0x10", display="__setup_irq")
    events = [
        ev(SETUP, 2.0, comm="modprobe", irq=16, name="rtc0"),
        ev(inside, 2.000001, comm="modprobe"),
        ev(SETUP_DONE, 2.000030, comm="modprobe", ret=-22),
    ]
    lines = render_timeline(build_timeline(events, [SETUP, inside, SETUP_DONE])).splitlines()
    assert body(lines[1]) == "__setup_irq(irq=16, name='rtc0') = -22"
    assert "30.0 \u00b5s" in lines[1]
    assert body(lines[2]) == "  __setup_irq()"  # the offset probe: a single line, inside the call


def test_an_explicit_zero_offset_is_the_entry() -> None:
    at_zero = ProbeSpec(
        "kprobe", "g", "p___setup_irq_10", "__setup_irq+0x0", (("irq", "%di:u32"),), display="__setup_irq"
    )
    events = [ev(at_zero, 2.0, irq=9), ev(SETUP_DONE, 2.5, ret=0)]
    lines = render_timeline(build_timeline(events, [at_zero, SETUP_DONE])).splitlines()
    assert [body(line) for line in lines[1:]] == ["__setup_irq(irq=9) = 0"]


def test_unmatched_halves_tracepoints_and_lone_probes_are_single_lines() -> None:
    lone_return = ProbeSpec("uretprobe", "g", "ur_add_7", f"{BIN}:0x1200", (("ret", "$retval:s64"),), display="add_u64")
    events = [
        ev(FIB_RETURN, 1.0, ret=5),  # its entry happened before tracing started
        ev(EXEC, 1.1, data={"filename": "/bin/p", "pid": 100, "old_pid": 100}),
        ev(lone_return, 1.2, ret=3),  # no entry probe defined: nothing is missing
        ev(FIB_ENTRY, 1.3, n=2),  # never returned (in this trace)
    ]
    timeline = build_timeline(events, [FIB_ENTRY, FIB_RETURN, EXEC, lone_return])
    lines = render_timeline(timeline).splitlines()
    assert lines[0] == ("timeline: 4 events as 2 single events, 2 unmatched; time from the first event at 1.000000")
    assert [body(line) for line in lines[1:]] == [
        "fib returned 5 (its entry was not traced)",
        "sched:sched_process_exec filename='/bin/p', pid=100, old_pid=100",
        "add_u64 returned 3",
        "fib(n=2) ... no return traced",
    ]
    assert all(line.split(" | ")[0].rstrip().endswith("probed-100") for line in lines[1:])  # no latency column


def test_return_probe_with_more_fields_shows_them_after_the_value() -> None:
    done = ProbeSpec("uretprobe", "g", "ur_fib_8", f"{BIN}:0x1139", (("rv", "$retval:s32"), ("sp", "$stack0")))
    events = [ev(FIB_ENTRY, 1.0, n=0), ev(done, 1.5, rv=0, sp=77)]
    lines = render_timeline(build_timeline(events, [FIB_ENTRY, done])).splitlines()
    assert body(lines[1]) == "fib(n=0) = 0 (sp=77)"
    assert "500.000 ms" in lines[1]


def test_long_timelines_are_elided_in_the_middle_with_a_count() -> None:
    events: list[Event] = []
    for index in range(200):
        events += [ev(FIB_ENTRY, 10 + index, n=index), ev(FIB_RETURN, 10 + index + 0.5, ret=index)]
    events.insert(150, ev(EXEC, 84.9, data={"filename": "/bin/true", "pid": 100, "old_pid": 100}))
    lines = render_timeline(build_timeline(events, [FIB_ENTRY, FIB_RETURN, EXEC]), max_lines=60).splitlines()
    assert len(lines) == 1 + 60 + 1
    assert body(lines[1]) == "fib(n=0) = 0" and body(lines[30]) == "fib(n=29) = 29"
    assert lines[31].strip() == "... 141 lines elided (140 calls, 1 other) ..."
    assert body(lines[-1]) == "fib(n=199) = 199"
    full = render_timeline(build_timeline(events, [FIB_ENTRY, FIB_RETURN, EXEC]), max_lines=None).splitlines()
    assert len(full) == 1 + 201 and "elided" not in "\n".join(full)


def test_every_line_fits_100_columns_and_keeps_the_name_and_return_value() -> None:
    long_name = "x" * 300
    events = [ev(SETUP, 1.0, pid=4194304, comm="a-very-long-comm", irq=1, name=long_name)]
    events += fib_events(14, pid=4194304, start=1.0)[:40]  # deep recursion: 14 levels of fib, never returning
    events += [ev(SETUP_DONE, 9.0, pid=4194304, comm="a-very-long-comm", ret=-12)]
    events += [ev(EXEC, 9.5, 1, "a-very-long-comm", {"filename": "/" + "d" * 200, "pid": 1})]
    text = render_timeline(build_timeline(events, [SETUP, SETUP_DONE, FIB_ENTRY, FIB_RETURN, EXEC]))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n".join(line for line in lines if len(line) > 100)
    call = next(line for line in lines if "__setup_irq(" in line)
    assert call.endswith("...) = -12") and "8.000 s" in call  # arguments shortened, the return value kept
    assert any(re.search(r"\| {21}\[1[1-4]\] fib\(n=", line) for line in lines)  # depth as a number past 10 levels
    assert lines[-1].endswith("...")


def test_control_characters_in_a_comm_cannot_break_the_layout() -> None:
    events = [ev(EXEC, 1.0, 5, "evil\ncomm\x1b[31m", {"filename": "/x"})]
    lines = render_timeline(build_timeline(events, [EXEC])).splitlines()
    assert len(lines) == 2
    assert lines[0] == "timeline: 1 event; time from the first event at 1.000000"  # no "as 1 single event"
    assert "evil\\x0acomm\\x1b[31m" in lines[1]


def test_no_events() -> None:
    assert render_timeline(build_timeline([], [FIB_ENTRY])) == "timeline: no events"


@pytest.mark.parametrize(
    ("us", "text"),
    [(0.4, "0.4 \u00b5s"), (999.94, "999.9 \u00b5s"), (1000, "1.000 ms"), (12_345.6, "12.346 ms"), (2.5e6, "2.500 s")],
)
def test_latency_units(us: float, text: str) -> None:
    assert format_latency(us) == text


def test_pair_calls_reports_what_it_could_not_pair_in_trace_order() -> None:
    a1, a2 = ev(FIB_ENTRY, 1.0, pid=1, n=1), ev(FIB_ENTRY, 1.1, pid=2, n=2)
    b1, b2 = ev(FIB_RETURN, 1.2, pid=3, ret=0), ev(FIB_ENTRY, 1.3, pid=1, n=3)
    b3 = ev(FIB_RETURN, 1.4, pid=1, ret=9)
    paired = pair_calls([(a1, False), (a2, False), (b1, True), (b2, False), (b3, True)])
    assert paired.pairs == [(b2, b3)]  # the latest entry of the task returns first
    assert paired.open_entries == [a1, a2]
    assert paired.orphan_exits == [b1]
