"""A compact timeline of one test's events: entry/return pairs folded into one line per call, nested by depth.

It is what a failure report shows before the raw trace, and what ``--ktrace-report`` writes per test. Calls are
matched like ``assert_latency`` does (:func:`pytest_ktrace._assertions.pair_calls`): a kprobe and a kretprobe on
the same symbol, or a uprobe and a uretprobe on the same ``binary:offset``, per task, the innermost entry
returning first. Everything else (tracepoints, probes without a partner, entries that never returned) is one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Literal, Mapping, Optional, Sequence

from .._assertions import pair_calls
from .._events import Event, FieldValue
from .._probes import ProbeSpec

__all__ = ["ItemKind", "Timeline", "TimelineItem", "build_timeline", "format_latency", "render_timeline"]

# call: an entry and its return; entry/return: one half of a call whose other half is missing from the trace;
# event: a tracepoint, or a probe with no partner probe defined (nothing is missing then)
ItemKind = Literal["call", "entry", "return", "event"]

_MICRO = "\u00b5"  # MICRO SIGN, spelled out so no linter mistakes it for a Greek mu
_TIME_WIDTH = 11  # "+123.456789"
_LATENCY_WIDTH = 9  # "999.9 µs", "12.345 ms"
_TASK_MAX = 22  # a 15-character comm and a 6-digit pid
_MAX_INDENT = 10  # levels; deeper calls show their depth as a number instead of more indentation


@dataclass(frozen=True)
class TimelineItem:
    """One line of the timeline. ``start`` is the timestamp of its first event; ``position`` is that event's index
    in the trace (ties of the microsecond clock keep trace order)."""

    kind: ItemKind
    start: float
    position: int
    pid: int
    comm: str
    name: str
    args: str  # the entry's (or the single event's) fields, formatted
    result: str = ""  # the return value and other fields of the return event
    latency_us: Optional[float] = None
    depth: int = 0
    tracepoint: bool = False  # shown as ``system:event field=value``, not as a call

    @property
    def task(self) -> str:
        return f"{_printable(self.comm)}-{self.pid}"


@dataclass(frozen=True)
class Timeline:
    """The timeline of a trace: ``items`` in time order, ``origin`` the timestamp of the first event."""

    items: Sequence[TimelineItem]
    origin: float
    events: int

    def count(self, *kinds: ItemKind) -> int:
        return sum(1 for item in self.items if item.kind in kinds)


def _printable(text: str) -> str:
    """Control characters (a comm can hold them) would break the one-line-per-item layout."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def _value(value: FieldValue) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return str(value)


def _fields(fields: Mapping[str, FieldValue], skip: Iterable[str] = ()) -> str:
    left_out = set(skip)
    return ", ".join(
        f"{name}={_value(value)}"
        for name, value in fields.items()
        if not name.startswith("__probe_") and name not in left_out
    )


def _returned(spec: Optional[ProbeSpec], event: Event) -> str:
    """``-22``, or ``-22 (errno=5)`` when the return probe fetched more than ``$retval``."""
    ret = spec.return_field if spec is not None else None
    if ret is None or ret not in event.fields:
        return _fields(event.fields) or "?"
    others = _fields(event.fields, skip=[ret])
    return _value(event.fields[ret]) + (f" ({others})" if others else "")


def format_latency(us: float) -> str:
    """``12.3 µs``, ``4.567 ms``, ``1.250 s``: three significant places are what a reader compares."""
    if us < 1000:
        return f"{us:.1f} {_MICRO}s"
    if us < 1_000_000:
        return f"{us / 1000:.3f} ms"
    return f"{us / 1_000_000:.3f} s"


def _function_key(spec: ProbeSpec) -> Optional[tuple[str, str]]:
    """Entry and return probes of the same function share this: kprobe/kretprobe the symbol, uprobe/uretprobe
    the ``path:0xoffset`` (both resolve a symbol name to the same offset). An offset into a function
    (``sym+0x10``) is no entry, so it pairs with nothing."""
    if spec.kind in ("kprobe", "kretprobe"):
        symbol, _, offset = spec.location.partition("+")
        return ("kernel", symbol if offset.strip("0x") == "" else spec.location)  # sym+0 is sym's entry
    if spec.kind in ("uprobe", "uretprobe"):
        return ("user", spec.location)
    return None


def build_timeline(events: Sequence[Event], specs: Sequence[ProbeSpec]) -> Timeline:
    """Fold ``events`` (in trace order) into calls and single lines, using the probes' ``specs`` to know which
    events are entries and returns of the same function."""
    by_event = {(spec.group, spec.event): spec for spec in reversed(specs)}  # the first definition wins
    # the first entry and the first return probe of each function are the pair; further probes on the same place
    # (other fetchargs, other filters) stay single lines instead of stealing each other's partners
    entry_of: dict[tuple[str, str], ProbeSpec] = {}
    return_of: dict[tuple[str, str], ProbeSpec] = {}
    for spec in specs:
        key = _function_key(spec)
        if key is not None:
            (return_of if spec.is_return else entry_of).setdefault(key, spec)
    paired = {id(spec): key for key, spec in entry_of.items() if key in return_of}
    paired.update({id(spec): key for key, spec in return_of.items() if key in entry_of})

    position = {id(event): index for index, event in enumerate(events)}
    halves: dict[tuple[str, str], list[Event]] = {}
    items: list[TimelineItem] = []
    for event in events:
        owner = by_event.get((event.system, event.name))
        if owner is not None and id(owner) in paired:
            halves.setdefault(paired[id(owner)], []).append(event)
            continue
        items.append(_single(event, owner, position[id(event)], "event"))

    # trace position of an entry -> (time, position) of its return: calls nest inside the entries still running
    ends: dict[int, tuple[float, int]] = {}
    for key, members in halves.items():
        entry_spec, return_spec = entry_of[key], return_of[key]
        ordered = sorted(members, key=lambda event: (event.timestamp, position[id(event)]))
        matched = pair_calls((event, event.name == return_spec.event) for event in ordered)
        for start, end in matched.pairs:
            items.append(
                TimelineItem(
                    "call",
                    start.timestamp,
                    position[id(start)],
                    start.pid,
                    start.comm,
                    entry_spec.display,
                    _fields(start.fields),
                    _returned(return_spec, end),
                    (end.timestamp - start.timestamp) * 1e6,
                )
            )
            ends[position[id(start)]] = (end.timestamp, position[id(end)])
        for event in matched.open_entries:
            items.append(_single(event, entry_spec, position[id(event)], "entry"))
            # still running when the trace ends: what the task does afterwards happens inside it
            ends[position[id(event)]] = (math.inf, len(events))
        items.extend(_single(event, return_spec, position[id(event)], "return") for event in matched.orphan_exits)

    items.sort(key=lambda item: (item.start, item.position))
    return Timeline(_with_depths(items, ends), min((e.timestamp for e in events), default=0.0), len(events))


def _single(event: Event, spec: Optional[ProbeSpec], position: int, kind: ItemKind) -> TimelineItem:
    if spec is None or spec.kind == "tracepoint":
        # an event of no probe of this test cannot happen in its own instance, but stays visible if it does
        name = spec.display if spec is not None else event.full_name
        return TimelineItem(
            kind, event.timestamp, position, event.pid, event.comm, name, _fields(event.fields), tracepoint=True
        )
    if spec.is_return:
        return TimelineItem(
            kind, event.timestamp, position, event.pid, event.comm, spec.display, "", _returned(spec, event)
        )
    return TimelineItem(kind, event.timestamp, position, event.pid, event.comm, spec.display, _fields(event.fields))


def _with_depths(items: Sequence[TimelineItem], ends: Mapping[int, tuple[float, int]]) -> list[TimelineItem]:
    """The depth of a line is the number of calls of the same task still running when it starts (an entry that
    never returned runs until the end of the trace)."""
    running: dict[int, list[tuple[float, int]]] = {}  # pid -> (time, position) where each open call returns
    placed: list[TimelineItem] = []
    for item in items:
        here = (item.start, item.position)
        stack = [end for end in running.get(item.pid, []) if end > here]
        placed.append(replace(item, depth=len(stack)))
        if item.position in ends:
            stack.append(ends[item.position])
        running[item.pid] = stack
    return placed


def _fit(head: str, middle: str, tail: str, room: int) -> str:
    """``head + middle + tail`` in ``room`` columns, shortening the middle (the arguments) first, so the function
    name and its return value stay readable."""
    text = head + middle + tail
    if len(text) <= room:
        return text
    keep = room - len(head) - len(tail) - 3
    if keep >= 0:
        return head + middle[:keep] + "..." + tail
    return text[: max(0, room - 3)] + "..."


def _body(item: TimelineItem, room: int) -> str:
    name = _printable(item.name)
    if item.kind == "call":
        return _fit(f"{name}(", item.args, f") = {item.result}", room)
    if item.kind == "entry":
        return _fit(f"{name}(", item.args, ") ... no return traced", room)
    if item.result:  # a return probe's event
        suffix = " (its entry was not traced)" if item.kind == "return" else ""
        return _fit(f"{name} returned ", item.result, suffix, room)
    if item.tracepoint:
        return _fit(f"{name} ", item.args, "", room) if item.args else _fit(name, "", "", room)
    return _fit(f"{name}(", item.args, ")", room)


def render_timeline(timeline: Timeline, *, width: int = 100, max_lines: Optional[int] = 60) -> str:
    """The timeline as text lines of at most ``width`` columns; more than ``max_lines`` items (None: no limit)
    are elided in the middle, saying how many."""
    items = list(timeline.items)
    if not items:
        return "timeline: no events"
    calls = timeline.count("call")
    unmatched = timeline.count("entry", "return")
    singles = timeline.count("event")
    parts = [f"{calls} call{'s' if calls != 1 else ''}"] if calls else []
    if singles:
        parts.append(f"{singles} single event{'s' if singles != 1 else ''}")
    if unmatched:
        parts.append(f"{unmatched} unmatched")
    lines = [
        f"timeline: {timeline.events} event{'s' if timeline.events != 1 else ''}"
        + (f" as {', '.join(parts)}" if calls or unmatched else "")  # "3 events as 3 single events" says nothing
        + "; "
        f"time from the first event at {timeline.origin:.6f}"
    ]
    task_width = min(_TASK_MAX, max(len(item.task) for item in items))
    prefix_width = _TIME_WIDTH + 1 + task_width + 1 + _LATENCY_WIDTH + 3

    def line(item: TimelineItem) -> str:
        task = item.task
        if len(task) > task_width:  # shorten the comm, never the pid
            pid = f"-{item.pid}"
            task = _printable(item.comm)[: max(0, task_width - len(pid) - 1)] + "~" + pid
        latency = format_latency(item.latency_us) if item.latency_us is not None else ""
        indent = "  " * min(item.depth, _MAX_INDENT) + (f"[{item.depth}] " if item.depth > _MAX_INDENT else "")
        room = max(20, width - prefix_width - len(indent))
        rel = f"+{max(0.0, item.start - timeline.origin):.6f}"
        return (
            f"{rel:>{_TIME_WIDTH}} {task:<{task_width}} {latency:>{_LATENCY_WIDTH}} | {indent}{_body(item, room)}"
        ).rstrip()

    if max_lines is not None and len(items) > max(max_lines, 2):
        head = max_lines // 2
        tail = max_lines - head
        hidden = items[head : len(items) - tail]
        hidden_calls = sum(1 for item in hidden if item.kind == "call")
        lines.extend(line(item) for item in items[:head])
        lines.append(
            f"{'':>{_TIME_WIDTH}} ... {len(hidden)} lines elided ({hidden_calls} calls, "
            f"{len(hidden) - hidden_calls} other) ..."
        )
        lines.extend(line(item) for item in items[len(items) - tail :])
    else:
        lines.extend(line(item) for item in items)
    return "\n".join(lines)
