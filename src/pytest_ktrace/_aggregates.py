"""``ktrace.count_by()`` and ``ktrace.latency_histogram()``: aggregates that see every event of their probes and keep
none, fed from the whole trace at each collection or, in stream mode, by the pump as events stream past. What the
test holds (``counter``, ``histogram``) changes only at sync points, when the session publishes. Where the target
has hist triggers, ``count_by()`` is counted by the kernel instead (:mod:`._hist`); ``source`` says which."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Dict, List, Optional, Protocol, Tuple

from ._errors import KtraceError, hide_for_ktrace_errors
from ._events import TASK_KEYS, Event
from ._formats import FormatCatalog
from ._parse import ParsedTrace

__all__ = [
    "DEFAULT_BUCKETS_US",
    "Aggregate",
    "AggregateSet",
    "CountBy",
    "Counted",
    "Histogram",
    "LatencyHistogram",
]

__tracebackhide__ = hide_for_ktrace_errors

DEFAULT_BUCKETS_US: Tuple[float, ...] = (10, 100, 1000, 10_000, 100_000, 1_000_000)
_LATENCY_STREAMS = (
    "a latency pairs two events of a task; the kernel pairs them only through a synthetic event and onmatch(), "
    "which keep one open entry per task (no nesting) and set the instance's trace clock, so the streamed events "
    "are paired here"
)


class Counted(Counter[Any]):
    """What ``ktrace.count_by()`` returns: a :class:`collections.Counter` that says where its counts come from.
    ``source`` is ``"kernel"`` (a hist trigger counted every hit, whatever the rate) or ``"stream"`` (counted here
    from the probe's events as they come out of the kernel: ``why`` says why the kernel did not count them).
    ``dropped``: with ``"kernel"``, hits of values the kernel's table had no room for (a warning said so)."""

    source = "stream"
    why = ""
    dropped = 0


class Aggregate(Protocol):
    """What the pump and the collector feed: the probes it reads (``keys``: (group, event)), one event at a time."""

    keys: Tuple[Tuple[str, str], ...]

    def feed(self, key: Tuple[str, str], event: Event) -> None: ...

    def reset(self) -> None: ...

    def publish(self) -> None: ...


class Histogram:
    """Latencies in microseconds, counted into buckets ``(-inf, b0], (b0, b1], ..., (bn, +inf)``; exact count, min,
    max and mean. ``counts[i]`` is the number in bucket ``i`` (the last one is the overflow bucket)."""

    def __init__(self, bounds: Sequence[float], label: str = "latency") -> None:
        cleaned = tuple(float(b) for b in bounds)
        if not cleaned or any(b <= a for a, b in zip(cleaned, cleaned[1:])) or cleaned[0] <= 0:
            raise KtraceError(f"histogram buckets {tuple(bounds)!r} must be positive and strictly increasing")
        self.bounds = cleaned
        self.label = label
        self.source = "stream"  # always paired here, from the probes' events (see why)
        self.why = _LATENCY_STREAMS
        self.counts: List[int] = [0] * (len(cleaned) + 1)
        self.count = 0
        self.min: Optional[float] = None
        self.max: Optional[float] = None
        self.total = 0.0
        self.unpaired = 0  # exits seen without an open entry on their task

    @property
    def mean(self) -> Optional[float]:
        return self.total / self.count if self.count else None

    def add(self, value_us: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value_us)] += 1
        self.count += 1
        self.total += value_us
        self.min = value_us if self.min is None or value_us < self.min else self.min
        self.max = value_us if self.max is None or value_us > self.max else self.max

    def reset(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)
        self.count, self.total, self.unpaired = 0, 0.0, 0
        self.min = self.max = None

    def copy_from(self, other: Histogram) -> None:
        self.counts = list(other.counts)
        self.count, self.total, self.unpaired = other.count, other.total, other.unpaired
        self.min, self.max = other.min, other.max

    def buckets(self) -> List[Tuple[str, int]]:
        """``(label, count)`` per bucket, e.g. ``("<= 10 us", 3)``, ``("> 10000 us", 1)``."""
        labels = [f"<= {_num(b)} us" for b in self.bounds] + [f"> {_num(self.bounds[-1])} us"]
        return list(zip(labels, self.counts))

    def _at_most(self, max_us: float) -> int:
        """How many values are certainly <= ``max_us`` (whole buckets below it; all of them if max is)."""
        if self.max is not None and self.max <= max_us:
            return self.count
        below = bisect.bisect_right(self.bounds, max_us)  # buckets 0..below-1 end at or under max_us
        return sum(self.counts[:below])

    def assert_below(self, max_us: float, quantile: float = 0.99) -> None:
        """At least ``quantile`` of the values are <= ``max_us``; raises ``AssertionError`` with the histogram.
        Values are only known per bucket: a bucket straddling ``max_us`` counts as above it (never a wrong
        pass), so put a bucket boundary at ``max_us`` for a sharp check."""
        __tracebackhide__ = True
        if not 0 < quantile <= 1:
            raise KtraceError(f"quantile={quantile!r} must be in (0, 1]")
        needed = math.ceil(quantile * self.count - 1e-9)
        if self.count and self._at_most(max_us) >= needed:
            return
        if not self.count:
            raise AssertionError(
                f"{self.label}: no values recorded, so p{_num(quantile * 100)} <= {max_us} us cannot hold.\n{self}"
            )
        sure = self._at_most(max_us)
        lines = [
            f"{self.label}: p{_num(quantile * 100)} is not <= {_num(max_us)} us: only {sure} of {self.count} "
            f"values are certainly <= {_num(max_us)} us ({needed} needed)."
        ]
        if max_us not in self.bounds:
            lines.append(
                f"(values in a bucket that straddles {_num(max_us)} us count as above; add {_num(max_us)} to "
                "buckets_us for an exact check)"
            )
        raise AssertionError("\n".join(lines) + "\n" + str(self))

    def __str__(self) -> str:
        if not self.count:
            return f"{self.label}: empty histogram (0 values)"
        head = (
            f"{self.label}: {self.count} values, min {self.min:.1f} us, mean {self.mean:.1f} us, "
            f"max {self.max:.1f} us" + (f", {self.unpaired} unpaired exits" if self.unpaired else "")
        )
        widest = max(self.counts) or 1
        rows = [
            f"  {label:>16} {count:>10}  {'#' * max(1 if count else 0, round(40 * count / widest))}"
            for label, count in self.buckets()
        ]
        return "\n".join([head, *rows])

    def __repr__(self) -> str:
        return f"<Histogram {self.label}: {self.count} values in {len(self.counts)} buckets>"


def _num(value: float) -> str:
    return f"{value:g}"


class CountBy:
    """``ktrace.count_by(probe, field)``: a :class:`collections.Counter` of the field's values (``pid``, ``comm``,
    ``cpu`` work too), fed by every event of the probe (view criteria apply)."""

    def __init__(self, view: Any, name: str, counter: Optional[Counted] = None) -> None:
        self.view = view
        self.field = name
        self.keys: Tuple[Tuple[str, str], ...] = ((view.spec.group, view.spec.event),)
        self.counter: Counted = Counted() if counter is None else counter  # what the test sees (at sync points)
        self._acc: Counter[Any] = Counter()  # fed by the pump

    def feed(self, key: Tuple[str, str], event: Event) -> None:
        if self.view._criteria and not self.view._selected(event):
            return
        self._acc[event.value(self.field)] += 1

    def reset(self) -> None:
        self._acc.clear()

    def publish(self) -> None:
        self.counter.clear()
        self.counter.update(self._acc)


class LatencyHistogram:
    """``ktrace.latency_histogram(entry, exit)``: each exit paired with the latest open entry of the same task
    (recursion nests), durations counted into a :class:`Histogram`."""

    def __init__(self, entry: Any, exit: Any, bounds: Sequence[float]) -> None:
        self.entry = entry
        self.exit = exit
        self.keys: Tuple[Tuple[str, str], ...] = (
            (entry.spec.group, entry.spec.event),
            (exit.spec.group, exit.spec.event),
        )
        label = f"{entry.name} -> {exit.name} latency"
        self.histogram = Histogram(bounds, label)  # what the test sees
        self._acc = Histogram(bounds, label)
        self._open: Dict[int, List[float]] = {}

    def feed(self, key: Tuple[str, str], event: Event) -> None:
        if key == self.keys[0] and not (self.entry._criteria and not self.entry._selected(event)):
            self._open.setdefault(event.pid, []).append(event.timestamp)
        if key == self.keys[1] and not (self.exit._criteria and not self.exit._selected(event)):
            stack = self._open.get(event.pid)
            if stack:
                self._acc.add((event.timestamp - stack.pop()) * 1e6)
            else:
                self._acc.unpaired += 1

    def reset(self) -> None:
        self._acc.reset()
        self._open.clear()

    def publish(self) -> None:
        self.histogram.copy_from(self._acc)


class AggregateSet:
    """The aggregates of one test. A :class:`CountBy` field is checked against its probe's format as soon as the
    format is known (at arming), so a typo fails at the line that asked for it."""

    def __init__(self, catalog: FormatCatalog) -> None:
        self.catalog = catalog
        self.all: List[Aggregate] = []
        self._unchecked: List[CountBy] = []

    def add(self, aggregate: Aggregate) -> None:
        if aggregate in self.all:
            return  # the kernel's counts (one aggregate for all of them)
        self.all.append(aggregate)
        if isinstance(aggregate, CountBy):
            self._unchecked.append(aggregate)
        self.check_fields()

    def check_fields(self) -> None:
        for aggregate in list(self._unchecked):
            spec = aggregate.view.spec
            fmt = self.catalog.get(f"{spec.group}:{spec.event}")
            if fmt is None:
                continue  # checked when the probe is armed
            self._unchecked.remove(aggregate)
            names = [f.name for f in fmt.fields if not f.name.startswith(("common_", "__probe_"))]
            known = (*names, *TASK_KEYS, "pid", "comm", "cpu")
            if aggregate.field not in known and not aggregate.field.startswith("__probe_"):
                self.all.remove(aggregate)
                raise KtraceError(
                    f"count_by({aggregate.view.name}, {aggregate.field!r}): the probe has no such field "
                    f"(its fields: {', '.join(names) or 'none'}; the task: task_pid, task_comm, task_cpu)"
                )

    def feed_trace(self, parsed: ParsedTrace, aggregates: Optional[Sequence[Aggregate]] = None) -> None:
        """Trace mode: ``aggregates`` (default: all) recomputed from the whole trace."""
        chosen: Sequence[Aggregate] = self.all if aggregates is None else aggregates
        if not chosen:
            return
        by_key: Dict[Tuple[str, str], List[Aggregate]] = {}
        for aggregate in chosen:
            aggregate.reset()
            for key in aggregate.keys:
                by_key.setdefault(key, []).append(aggregate)
        for event in parsed.select(by_key):  # decodes the events of these probes only
            key = (event.system, event.name)
            for aggregate in by_key[key]:
                aggregate.feed(key, event)
        for aggregate in chosen:
            aggregate.publish()
