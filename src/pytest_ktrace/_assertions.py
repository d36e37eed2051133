"""Mock-style assertions over the events of one probe, and across probes (order, latency).

Failures are ``AssertionError`` with ``__tracebackhide__`` so pytest shows the test line, and their text shows what
was expected, the closest events that did not match, and a hint when the cause is likely outside the test.
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import pytest

from ._errors import KtraceError, hide_for_ktrace_errors
from ._events import Event
from ._matchers import describe_expected, field_matches, mismatches
from ._probes import RETURN_KINDS, ProbeSpec

__all__ = ["CallPairs", "Observation", "ProbeView", "assert_latency", "assert_order", "pair_calls"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_SHOWN = 5  # events quoted in a failure message


@dataclass(frozen=True)
class Observation:
    """What a probe saw, plus what a failure message needs to explain an empty or partial result."""

    events: Sequence[Event]
    lost: Mapping[int, int] = field(default_factory=dict)  # cpu -> events the kernel dropped
    hints: Sequence[str] = ()
    lost_policy: str = "fail"  # "warn": count assertions go on, with a warning, when events were lost
    # stream mode: only the most recent events are kept. ``total`` is the probe's exact number of events,
    # ``evicted`` how many older ones are no longer in ``events``, ``keep`` the bound they were kept under.
    total: Optional[int] = None
    evicted: int = 0
    keep: int = 0
    filtered: bool = False  # ``events`` are those of a where() view: ``total`` counts the unfiltered probe

    @property
    def count(self) -> Optional[int]:
        """The exact number of events, or None when it cannot be known (a where() view of evicted events)."""
        if not self.evicted:
            return len(self.events)
        return None if self.filtered else self.total

    def narrowed(self, events: Sequence[Event]) -> Observation:
        return Observation(
            events, self.lost, self.hints, self.lost_policy, self.total, self.evicted, self.keep, filtered=True
        )


def _call_text(display: str, expected: Mapping[str, Any]) -> str:
    args = ", ".join(f"{name}={describe_expected(want)}" for name, want in expected.items())
    return f"{display}({args})"


def _event_line(event: Event, expected: Mapping[str, Any]) -> str:
    problems = mismatches(expected, event.named())
    shown = " ".join(f"{k}={v!r}" for k, v in event.fields.items() if not k.startswith("__probe"))
    line = f"    {event.timestamp:.6f} {event.comm}-{event.pid} [{event.cpu:03d}] {shown}"
    if problems:
        line += "\n      differs: " + "; ".join(problems)
    return line


def _on_stack(function: str, stack: Sequence[str]) -> bool:
    """``function`` is a frame of ``stack``, also as a compiler clone (``name.isra.0``, ``name.constprop.1``)."""
    return any(frame == function or frame.startswith(function + ".") for frame in stack)


def _closest(events: Sequence[Event], expected: Mapping[str, Any]) -> list[Event]:
    # fewest mismatching fields first; ties keep trace order
    ranked = sorted(enumerate(events), key=lambda pair: (len(mismatches(expected, pair[1].named())), pair[0]))
    return [event for _, event in ranked[:_SHOWN]]


class ProbeView:
    """The events of one probe, with the ``unittest.mock`` assertion vocabulary."""

    def __init__(
        self,
        spec: ProbeSpec,
        observe: Callable[[], Observation],
        criteria: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self._cell = [spec]  # shared with where() views: a definition completed at arming replaces it for all
        self._observe = observe
        self._criteria: Mapping[str, Any] = dict(criteria or {})

    @property
    def spec(self) -> ProbeSpec:
        """The probe's definition."""
        return self._cell[0]

    @spec.setter
    def spec(self, spec: ProbeSpec) -> None:
        self._cell[0] = spec

    # ----------------------------------------------------------------- data
    @property
    def name(self) -> str:
        return self.spec.display

    def _observation(self) -> Observation:
        seen = self._observe()
        if not self._criteria:
            return seen
        return seen.narrowed([event for event in seen.events if self._selected(event)])

    def _selected(self, event: Event) -> bool:
        for key, want in self._criteria.items():
            value = event.value(key)  # None: the event holds nothing of that name (no field value is None)
            if value is None or not field_matches(want, value):
                return False
        return True

    @property
    def events(self) -> list[Event]:
        """The probe's events, in trace order (a ``where()`` view: those that match)."""
        return list(self._observation().events)

    @property
    def call_count(self) -> int:
        """The exact number of calls (in stream mode also those no longer kept)."""
        __tracebackhide__ = True
        return self._exact(self._observation(), "call_count")

    @property
    def called(self) -> bool:
        """Whether the probe fired at least once."""
        __tracebackhide__ = True
        seen = self._observation()
        return bool(seen.events) or self._exact(seen, "called") > 0

    @property
    def return_values(self) -> list[Any]:
        """The return values a return probe recorded, one per event (its ``$retval`` field)."""
        ret = self._return_field()
        return [event.fields.get(ret) for event in self._observation().events]

    def where(self, **criteria: Any) -> ProbeView:
        """A view of only the events that match ``criteria``: fields by name, the task as ``task_pid``,
        ``task_comm``, ``task_cpu`` (or ``pid``/``comm``/``cpu`` where the event has no such field)."""
        merged = {**self._criteria, **criteria}
        view = ProbeView(self.spec, self._observe, merged)
        view._cell = self._cell
        return view

    def __repr__(self) -> str:
        return f"<{self.spec.kind} {self.spec.display} as {self.spec.group}/{self.spec.event}>"

    # ----------------------------------------------------------- reporting
    def _exact(self, seen: Observation, what: str) -> int:
        __tracebackhide__ = True
        count = seen.count
        if count is None:
            self._fail_evicted(what, seen)
            raise AssertionError(what)  # pragma: no cover - _fail_evicted raises
        return count

    def _fail_evicted(self, what: str, seen: Observation) -> None:
        """Stream mode dropped older events: a check that needs each of them fails, saying what to do."""
        __tracebackhide__ = True
        total = seen.total if seen.total is not None else seen.evicted + len(seen.events)
        kept = total - seen.evicted
        lines = [
            f"{self.spec.display}: {what} needs every event, but only the last {kept} of {total} events were kept "
            f"(--ktrace-keep-events={seen.keep or kept}); {seen.evicted} older ones were counted and dropped."
        ]
        if seen.filtered:
            lines.append(
                f"{len(seen.events)} of the kept events match where({_call_text('', self._criteria)[1:-1]}); "
                "the dropped ones cannot be checked."
            )
        lines.append(
            "Hint: aggregate while streaming (ktrace.count_by(probe, field), ktrace.latency_histogram(entry, "
            "exit), registered before the first ktrace.run), which sees every event and keeps none, or raise "
            "--ktrace-keep-events (@pytest.mark.ktrace(keep=N)) above the number of events."
        )
        lines.extend(_lost_lines(seen.lost))
        raise AssertionError("\n".join(lines))

    def _fail(self, headline: str, seen: Observation, expected: Mapping[str, Any] | None = None) -> None:
        __tracebackhide__ = True
        lines = [headline]
        expected = expected or {}
        events = list(seen.events)
        if self._criteria:
            lines.append(f"Only events where {_call_text('', self._criteria)[1:-1]} were considered.")
        if events:
            shown = _closest(events, expected) if expected else events[:_SHOWN]
            order = "closest first" if expected else "first"
            if seen.evicted:
                total = seen.total if seen.total is not None else seen.evicted + len(events)
                lines.append(
                    f"Seen: {total} event(s) of {self.spec.display}; of the last {total - seen.evicted} kept, "
                    f"{len(events)} considered, {order}:"
                )
            else:
                lines.append(f"Seen: {len(events)} event(s) of {self.spec.display}, {order}:")
            lines.extend(_event_line(event, expected) for event in shown)
            if len(events) > len(shown):
                lines.append(f"    ... and {len(events) - len(shown)} more (full trace in the report section)")
        else:
            lines.append(f"Seen: no events of {self.spec.display} ({self.spec.group}/{self.spec.event}).")
        lines.extend(_lost_lines(seen.lost))
        hints = list(seen.hints)
        if not events and self.spec.filter:
            hints.append(f"the probe's filter {self.spec.filter!r} may have dropped them")
        lines.extend(f"Hint: {hint}" for hint in hints)
        raise AssertionError("\n".join(lines))

    def _counted(self) -> Observation:
        """Count-based checks are meaningless when the kernel dropped events: fail, saying how many were lost."""
        __tracebackhide__ = True
        seen = self._observation()
        if seen.lost and seen.lost_policy == "warn":
            warnings.warn(
                pytest.PytestWarning(f"{self.spec.display}: counting events although " + _lost_lines(seen.lost)[0]),
                stacklevel=3,
            )
        elif seen.lost:
            self._fail(f"{self.spec.display}: the kernel lost events, so no count can be trusted.", seen)
        return seen

    # ---------------------------------------------------------- assertions
    def assert_called(self) -> None:
        """The probe fired at least once."""
        __tracebackhide__ = True
        seen = self._observation()
        if not seen.events and not self._exact(seen, "assert_called"):
            self._fail(f"Expected {self.spec.display} to have been called.", seen)

    def assert_not_called(self) -> None:
        """The probe never fired."""
        __tracebackhide__ = True
        seen = self._counted()
        if seen.events:
            count = seen.count
            times = f"Called {count} times." if count is not None else "Called."
            self._fail(f"Expected {self.spec.display} not to have been called. {times}", seen)
        if self._exact(seen, "assert_not_called"):
            self._fail(f"Expected {self.spec.display} not to have been called. Called {seen.count} times.", seen)

    def assert_called_once(self) -> None:
        """The probe fired exactly once."""
        __tracebackhide__ = True
        self.assert_call_count(1)

    def assert_call_count(self, count: int) -> None:
        """The probe fired exactly ``count`` times (exact in stream mode too, where only recent events are kept)."""
        __tracebackhide__ = True
        if isinstance(count, bool) or not isinstance(count, int):
            raise KtraceError(
                f"{self.spec.display}.assert_call_count(count={count!r}): count must be an int, "
                f"got {type(count).__name__}"
            )
        seen = self._counted()
        actual = self._exact(seen, f"assert_call_count({count})")
        if actual != count:
            self._fail(f"Expected {self.spec.display} to be called {count} times. Called {actual} times.", seen)

    def assert_called_with(self, **expected: Any) -> None:
        """The last event matches ``expected``."""
        __tracebackhide__ = True
        seen = self._observation()
        if not seen.events:
            if seen.evicted:
                self._fail_evicted("assert_called_with (the last matching call)", seen)
            self._fail(f"expected call not found.\nExpected: {_call_text(self.spec.display, expected)}", seen)
        last = seen.events[-1]
        problems = mismatches(expected, last.named())
        if problems:
            self._fail(
                f"expected call not found.\nExpected: {_call_text(self.spec.display, expected)}\n"
                f"  Actual (last call): {'; '.join(problems)}",
                Observation([last], seen.lost, seen.hints),
                expected,
            )

    def assert_called_once_with(self, **expected: Any) -> None:
        """The probe fired exactly once, and that event holds ``expected`` (field values or matchers such as
        ``ANY``; the task as ``task_pid``/``task_comm``/``task_cpu``)."""
        __tracebackhide__ = True
        seen = self._counted()
        actual = self._exact(seen, "assert_called_once_with")
        if actual != 1:
            self._fail(
                f"Expected {self.spec.display} to be called once. Called {actual} times.\n"
                f"Expected: {_call_text(self.spec.display, expected)}",
                seen,
                expected,
            )
        self.assert_called_with(**expected)

    def assert_called_from(self, function: str) -> None:
        """Fail unless some hit has ``function`` on its kernel call stack (probe defined with ``stacktrace=True``).
        Compiler clones match their origin: ``do_execveat_common`` matches ``do_execveat_common.isra.0``."""
        __tracebackhide__ = True
        self._check_stack_query("assert_called_from", function)
        seen = self._observation()
        if any(_on_stack(function, event.stack) for event in seen.events):
            return
        self._fail_stack(f"{self.spec.display} was not called from {function}.", function, seen)

    def assert_not_called_from(self, function: str) -> None:
        """Fail if any hit has ``function`` on its kernel call stack (``stacktrace=True``)."""
        __tracebackhide__ = True
        self._check_stack_query("assert_not_called_from", function)
        seen = self._observation()
        hits = [event for event in seen.events if _on_stack(function, event.stack)]
        if hits:
            self._fail_stack(
                f"{self.spec.display} was called from {function} in {len(hits)} of {len(seen.events)} hit(s).",
                function,
                seen.narrowed(hits),
            )

    def _check_stack_query(self, what: str, function: object) -> None:
        if not isinstance(function, str) or not function.strip():
            raise TypeError(f"{what}() needs a function name (str), got {function!r}")
        if not self.spec.stacktrace:
            raise TypeError(f"{what}(): {self.spec.display} records no call stacks; define it with stacktrace=True")

    def _fail_stack(self, headline: str, function: str, seen: Observation) -> None:
        __tracebackhide__ = True
        lines = [headline]
        events = list(seen.events)
        if not events:
            lines.append(f"Seen: no events of {self.spec.display}.")
        stacks: dict[tuple[str, ...], int] = {}
        for event in events:
            stacks[event.stack] = stacks.get(event.stack, 0) + 1
        for number, (stack, count) in enumerate(sorted(stacks.items(), key=lambda item: -item[1])[:_SHOWN]):
            lines.append(f"Stack {number + 1} ({count} hit{'s' if count != 1 else ''}):")
            lines.extend(f"    => {frame}" for frame in stack[:24])
            if not stack:
                lines.append("    (no stack entry was recorded for these hits)")
            elif len(stack) > 24:
                lines.append(f"    ... {len(stack) - 24} more frames")
        near = difflib.get_close_matches(function, {f for stack in stacks for f in stack}, n=3, cutoff=0.6)
        if near:
            lines.append(f"Hint: close names on these stacks: {', '.join(near)}")
        lines.extend(_lost_lines(seen.lost))
        raise AssertionError("\n".join(lines))

    def assert_any_call(self, **expected: Any) -> None:
        """At least one event holds ``expected`` (as in :meth:`assert_called_once_with`)."""
        __tracebackhide__ = True
        seen = self._observation()
        if not any(not mismatches(expected, event.named()) for event in seen.events):
            if seen.evicted:
                self._fail_evicted(f"assert_any_call({_call_text('', expected)[1:-1]}) (no kept event matches)", seen)
            self._fail(
                f"{_call_text(self.spec.display, expected)} call not found.",
                seen,
                expected,
            )

    def assert_all_calls(self, **expected: Any) -> None:
        """Every event matches ``expected`` (and there is at least one)."""
        __tracebackhide__ = True
        seen = self._observation()
        if not seen.events:
            self._fail(f"Expected every call to match {_call_text(self.spec.display, expected)}.", seen)
        bad = [event for event in seen.events if mismatches(expected, event.named())]
        if bad:
            self._fail(
                f"{len(bad)} of {len(seen.events)} calls do not match {_call_text(self.spec.display, expected)}.",
                Observation(bad, seen.lost, seen.hints),
                expected,
            )
        if seen.evicted:
            self._fail_evicted("assert_all_calls", seen)

    # ------------------------------------------------------- return probes
    def _return_field(self) -> str:
        ret = self.spec.return_field
        if not self.spec.is_return or ret is None:
            raise TypeError(
                f"{self.spec.display} is a {self.spec.kind}: return assertions need a kretprobe/uretprobe "
                "recording $retval"
            )
        return ret

    def assert_returned(self, value: Any) -> None:
        """Every return equals ``value``, and there was at least one."""
        __tracebackhide__ = True
        ret = self._return_field()
        seen = self._observation()
        if not seen.events:
            self._fail(f"{self.spec.display} never returned (expected {describe_expected(value)}).", seen)
        bad = [event for event in seen.events if not field_matches(value, event.fields.get(ret))]
        if bad:
            values = _distinct(event.fields.get(ret) for event in bad)
            self._fail(
                f"{self.spec.display} returned {values} (expected {describe_expected(value)}); "
                f"{len(bad)} of {len(seen.events)} returns differ.",
                Observation(bad, seen.lost, seen.hints),
                {ret: value},
            )
        if seen.evicted:
            self._fail_evicted(f"assert_returned({describe_expected(value)})", seen)

    def assert_any_return(self, value: Any) -> None:
        """At least one return event returned ``value`` (a value or a matcher)."""
        __tracebackhide__ = True
        ret = self._return_field()
        seen = self._observation()
        if not any(field_matches(value, event.fields.get(ret)) for event in seen.events):
            if seen.evicted:
                self._fail_evicted(f"assert_any_return({describe_expected(value)}) (no kept return matches)", seen)
            values = _distinct(event.fields.get(ret) for event in seen.events) or "nothing"
            self._fail(
                f"{self.spec.display} never returned {describe_expected(value)}; it returned {values}.",
                seen,
                {ret: value},
            )


def _distinct(values: Iterable[Any]) -> str:
    unique: list[Any] = []
    for value in values:
        if value not in unique:
            unique.append(value)
    return ", ".join(repr(v) if isinstance(v, str) else str(v) for v in unique)


def _lost_lines(lost: Mapping[int, int]) -> list[str]:
    if not lost:
        return []
    where = ", ".join(f"{count} on CPU {cpu}" if cpu >= 0 else f"{count} in all" for cpu, count in sorted(lost.items()))
    return [
        f"LOST EVENTS: the kernel's ring buffer overflowed ({where}); counts are incomplete. "
        "Enlarge the buffer (--ktrace-buffer-kb) or add a filter."
    ]


def _check_view(what: str, view: object) -> None:
    if not isinstance(view, ProbeView):
        raise KtraceError(f"{what} must be a ProbeView (a probe made by the ktrace fixture), got {view!r}")


def _check_bound(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KtraceError(f"assert_latency {name}={value!r} must be a number of microseconds or None")
    if isinstance(value, float) and math.isnan(value):
        raise KtraceError(f"assert_latency {name}=nan: NaN compares false with every latency, so nothing is checked")


def assert_order(views: Sequence[ProbeView], *, position: Callable[[Event], int]) -> None:
    """The first event of each view occurs in the given order. ``position`` ranks events in trace order."""
    __tracebackhide__ = True
    for index, view in enumerate(views):
        _check_view(f"assert_order argument {index + 1}", view)
    names = _order_names(views)
    firsts: list[tuple[ProbeView, Event]] = []
    for view in views:
        observed = view._observation()
        if observed.evicted:
            view._fail_evicted("assert_order (its first call)", observed)
        seen = list(observed.events)
        if not seen:
            raise AssertionError(
                f"assert_order: {names[id(view)]} has no events, so the order "
                f"{' -> '.join(names[id(v)] for v in views)} cannot hold."
            )
        firsts.append((view, seen[0]))
    for (before, first_a), (after, first_b) in zip(firsts, firsts[1:]):
        if position(first_a) > position(first_b):
            timeline = "\n".join(
                f"    {event.timestamp:.6f} {names[id(view)]} ({event.comm}-{event.pid})"
                for view, event in sorted(firsts, key=lambda pair: position(pair[1]))
            )
            raise AssertionError(
                f"Expected {names[id(before)]} before {names[id(after)]}, but {names[id(after)]} came first.\n"
                f"Expected order: {' -> '.join(names[id(v)] for v in views)}\nFirst occurrences seen:\n{timeline}"
            )


def _order_names(views: Sequence[ProbeView]) -> dict[int, str]:
    """How assert_order names each view: probes of one function are told apart as its entry and its return."""
    counts: dict[str, int] = {}
    for view in views:
        counts[view.name] = counts.get(view.name, 0) + 1
    return {
        id(view): (
            f"{view.name} ({'return' if view.spec.kind in RETURN_KINDS else 'entry'})"
            if counts[view.name] > 1 and view.spec.kind != "tracepoint"
            else view.name
        )
        for view in views
    }


@dataclass(frozen=True)
class CallPairs:
    """Entry and exit events matched into calls: ``pairs`` in the order the calls returned, ``open_entries``
    (no exit seen yet) and ``orphan_exits`` (their entry happened before tracing started) in trace order."""

    pairs: Sequence[tuple[Event, Event]]
    open_entries: Sequence[Event]
    orphan_exits: Sequence[Event]


def pair_calls(sequence: Iterable[tuple[Event, bool]]) -> CallPairs:
    """Walk ``(event, is_exit)`` in time order; each exit closes the latest unmatched entry of the same task, so
    recursive calls nest correctly (the innermost entry returns first)."""
    open_calls: dict[int, list[tuple[int, Event]]] = {}
    pairs: list[tuple[Event, Event]] = []
    orphans: list[Event] = []
    for position, (event, is_exit) in enumerate(sequence):
        stack = open_calls.setdefault(event.pid, [])
        if not is_exit:
            stack.append((position, event))
        elif stack:
            pairs.append((stack.pop()[1], event))
        else:
            orphans.append(event)
    still_open = sorted((entry for stack in open_calls.values() for entry in stack), key=lambda item: item[0])
    return CallPairs(pairs, [event for _, event in still_open], orphans)


def assert_latency(
    entry: ProbeView,
    exit: ProbeView,
    *,
    max_us: Optional[float] = None,
    min_us: Optional[float] = None,
    position: Optional[Callable[[Event], int]] = None,
) -> list[float]:
    """Pair each exit with the latest unmatched entry of the same task (so recursion nests correctly) and check
    every duration. Returns the durations in microseconds. ``position`` ranks events in trace order, which
    decides between events of one timestamp (a return and the next call in the same microsecond)."""
    __tracebackhide__ = True
    _check_view("assert_latency entry", entry)
    _check_view("assert_latency exit", exit)
    _check_bound("max_us", max_us)
    _check_bound("min_us", min_us)
    for view in (entry, exit):
        observed = view._observation()
        if observed.evicted:
            view._fail_evicted("assert_latency", observed)
    merged = sorted(
        [(event.timestamp, False, event) for event in entry.events]
        + [(event.timestamp, True, event) for event in exit.events],
        key=lambda item: (item[0], position(item[2]) if position is not None else item[1]),
    )
    pairs = [
        (start, end, (end.timestamp - start.timestamp) * 1e6)
        for start, end in pair_calls((event, is_exit) for _, is_exit, event in merged).pairs
    ]
    if not pairs:
        raise AssertionError(
            f"assert_latency: no {entry.name} -> {exit.name} pair on any task "
            f"({len(entry.events)} entries, {len(exit.events)} exits seen)."
        )
    bad = [
        pair for pair in pairs if (max_us is not None and pair[2] > max_us) or (min_us is not None and pair[2] < min_us)
    ]
    if bad:
        bound = " and ".join(
            part
            for part in (
                f">= {min_us} us" if min_us is not None else "",
                f"<= {max_us} us" if max_us is not None else "",
            )
            if part
        )
        worst = sorted(bad, key=lambda pair: -pair[2])[:_SHOWN]
        lines = [f"{len(bad)} of {len(pairs)} {entry.name} -> {exit.name} latencies out of bounds (expected {bound}):"]
        lines.extend(f"    {us:.1f} us  {start.comm}-{start.pid} at {start.timestamp:.6f}" for start, _, us in worst)
        raise AssertionError("\n".join(lines))
    return [us for _, _, us in pairs]
