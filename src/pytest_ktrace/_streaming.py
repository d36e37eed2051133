"""Streaming mode: events read from an instance's ``trace_pipe`` as they happen, into bounded memory.

A :class:`StreamPump` thread reads a :class:`~pytest_ktrace.backends._base.TraceStream`, splits complete lines
(keeping a partial tail), parses them with :class:`~pytest_ktrace._parse.TraceParser` and dispatches each event to
its probe: an exact count, a bounded deque of the most recent events, and the aggregates registered on the probe
(:class:`CountBy`, :class:`LatencyHistogram`), which see every event and keep none. The session synchronises with
the pump through ``trace_marker`` writes: the pump counts the marker lines it has seen, and :meth:`StreamPump.wait`
waits until it has seen a given number.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
import time
from collections import Counter, deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from ._errors import KtraceError, hide_for_ktrace_errors
from ._events import Event
from ._parse import FormatCatalog, TraceParser

__all__ = ["DEFAULT_BUCKETS_US", "DEFAULT_KEEP", "CountBy", "Histogram", "LatencyHistogram", "StreamPump"]

__tracebackhide__ = hide_for_ktrace_errors

DEFAULT_KEEP = 100_000
DEFAULT_BUCKETS_US: Tuple[float, ...] = (10, 100, 1000, 10_000, 100_000, 1_000_000)
SYNC_PREFIX = "ktrace-sync-"

# A trace_marker record: its text with the `fields` option off, "UNKNOWN TYPE 5" (TRACE_PRINT) with it on, as 6.x
# kernels print it. Only the session writes to its instance's trace_marker, so marker lines are counted.
_MARKER = re.compile(r": (?:UNKNOWN TYPE 5|tracing_mark_write: " + SYNC_PREFIX + r"\d+)\s*$")
# The start of an event line (comm-pid [cpu] ... ts:), to hold back an event whose string may continue
_EVENT_START = re.compile(r"^\s*\S.*?-\d+\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\]\s")
_MAX_HELD_LINES = 256
_RAW_TAIL = 400  # raw lines kept for the failure report section


# --------------------------------------------------------------------------------------------------- aggregates
class Histogram:
    """Latencies in microseconds, counted into buckets ``(-inf, b0], (b0, b1], ..., (bn, +inf)``; exact count, min,
    max and mean. ``counts[i]`` is the number in bucket ``i`` (the last one is the overflow bucket)."""

    def __init__(self, bounds: Sequence[float], label: str = "latency") -> None:
        cleaned = tuple(float(b) for b in bounds)
        if not cleaned or any(b <= a for a, b in zip(cleaned, cleaned[1:])) or cleaned[0] <= 0:
            raise KtraceError(f"histogram buckets {tuple(bounds)!r} must be positive and strictly increasing")
        self.bounds = cleaned
        self.label = label
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

    def __init__(self, view: Any, name: str) -> None:
        self.view = view
        self.field = name
        self.keys: Tuple[Tuple[str, str], ...] = ((view.spec.group, view.spec.event),)
        self.counter: Counter[Any] = Counter()  # what the test sees (updated at sync points)
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
        self.keys = ((entry.spec.group, entry.spec.event), (exit.spec.group, exit.spec.event))
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


Aggregate = Any  # CountBy | LatencyHistogram (duck-typed: keys, feed, reset, publish)


# ------------------------------------------------------------------------------------------------------- pump
class ProbeState:
    """What the pump keeps for one probe: the exact count and the last ``keep`` events (with their sequence)."""

    __slots__ = ("aggregates", "count", "kept")

    def __init__(self, keep: int) -> None:
        self.count = 0
        self.kept: Deque[Tuple[int, Event]] = deque(maxlen=keep)
        self.aggregates: List[Aggregate] = []


class StreamPump:
    """The background reader of one test's stream (a daemon thread; :meth:`stop` always joins it)."""

    def __init__(
        self,
        stream: Any,
        catalog: FormatCatalog,
        *,
        keep: int,
        name: str,
        poll_s: float = 0.05,
    ) -> None:
        self.stream = stream
        self.keep = keep
        self.poll_s = poll_s
        self.lock = threading.Lock()
        # held while a batch is parsed and dispatched; the session holds it while arming more probes, so no
        # event of a new probe is parsed before its format is in the catalog
        self.gate = threading.Lock()
        self._cond = threading.Condition(self.lock)
        self._parser = TraceParser(catalog)
        self._probes: Dict[Tuple[str, str], ProbeState] = {}
        self.markers = 0
        self.lines = 0
        self.bytes = 0
        self.lost: Dict[int, int] = {}
        self.unparsed = 0
        self.error: Optional[BaseException] = None
        self.raw_tail: Deque[str] = deque(maxlen=_RAW_TAIL)
        self._seq = 0
        self._tail = ""
        self._held: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ---------------------------------------------------------------- control (test thread)
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def add_probe(self, key: Tuple[str, str]) -> ProbeState:
        with self.lock:
            return self._probes.setdefault(key, ProbeState(self.keep))

    def state(self, key: Tuple[str, str]) -> ProbeState:
        return self._probes.get(key) or self.add_probe(key)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop and join the thread; False if it did not end within ``timeout`` (a stream breaking its contract)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait(self, markers: int, *, stall_s: float, describe: Callable[[], str]) -> None:
        """Until ``markers`` marker lines have been seen. Fails (KtraceError) when the pump died, or when it made
        no progress at all for ``stall_s`` seconds."""
        with self._cond:
            progress = (self.bytes, time.monotonic())
            while self.markers < markers:
                if self.error is not None:
                    raise KtraceError(f"the trace stream failed: {self.error}; {describe()}") from self.error
                if not self._thread.is_alive():
                    raise KtraceError(f"the trace stream reader stopped; {describe()}")
                now = time.monotonic()
                if self.bytes != progress[0]:
                    progress = (self.bytes, now)
                elif now - progress[1] > stall_s:
                    raise KtraceError(
                        f"sync marker {SYNC_PREFIX}{markers} did not arrive from trace_pipe within {stall_s:g} s "
                        f"(the stream delivered nothing meanwhile; {self.markers} markers and {self.lines} lines "
                        f"seen so far); {describe()}"
                    )
                self._cond.wait(0.05)

    # ------------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self.stream.read(self.poll_s)
                if chunk:
                    self._feed(chunk)
                elif self._held:
                    self._dispatch(self._held)  # quiet: the held-back event is complete
                    self._held = []
        except BaseException as exc:  # reported to the test thread by wait()
            with self._cond:
                self.error = exc
                self._cond.notify_all()

    def _feed(self, chunk: str) -> None:
        text = self._tail + chunk
        cut = text.rfind("\n")
        if cut < 0:
            self._tail = text
            return
        self._tail = text[cut + 1 :]
        lines = text[:cut].split("\n")
        with self.lock:
            self.bytes += len(chunk)
            self.raw_tail.extend(lines)
        batch = self._held
        self._held = []
        for line in lines:
            tail = line[-48:]
            if ("UNKNOWN TYPE 5" in tail or SYNC_PREFIX in tail) and _MARKER.search(line) is not None:
                self._dispatch(batch)
                batch = []
                with self._cond:
                    self.markers += 1
                    self._cond.notify_all()
            else:
                batch.append(line)
        # hold back the last event: a string value may continue in the next chunk
        last = len(batch) - 1
        while last >= 0 and _EVENT_START.match(batch[last]) is None:
            last -= 1
        if last > 0:
            self._dispatch(batch[:last])
            self._held = batch[last:]
        elif last == 0 and len(batch) <= _MAX_HELD_LINES:
            self._held = batch
        else:
            self._dispatch(batch)

    def _dispatch(self, lines: List[str]) -> None:
        if not lines:
            return
        with self.gate:
            self._dispatch_now(lines)

    def _dispatch_now(self, lines: List[str]) -> None:
        parsed = self._parser.parse("\n".join(lines) + "\n")
        with self.lock:
            self.lines += len(lines)
            self.unparsed += len(parsed.unparsed)
            for cpu, count in parsed.lost.items():
                self.lost[cpu] = self.lost.get(cpu, 0) + count
            probes = self._probes
            for event in parsed.events:
                key = (event.system, event.name)
                state = probes.get(key)
                if state is None:
                    continue
                self._seq += 1
                state.count += 1
                state.kept.append((self._seq, event))
                for aggregate in state.aggregates:
                    aggregate.feed(key, event)

    # --------------------------------------------------------------------- snapshots
    def snapshot(self, key: Tuple[str, str]) -> Tuple[List[Event], int]:
        with self.lock:
            state = self._probes.get(key)
            if state is None:
                return [], 0
            return [event for _, event in state.kept], state.count

    def ordered(self) -> List[Event]:
        """Every kept event, in stream order."""
        with self.lock:
            merged = [pair for state in self._probes.values() for pair in state.kept]
        merged.sort(key=lambda pair: pair[0])
        return [event for _, event in merged]

    def register(self, aggregate: Aggregate) -> None:
        """Attach ``aggregate`` to its probes, seeded with their kept events (refused when any was evicted)."""
        with self.lock:
            states = [
                self._probes.get(key) or self._probes.setdefault(key, ProbeState(self.keep)) for key in aggregate.keys
            ]
            for key, state in zip(aggregate.keys, states):
                if state.count != len(state.kept):
                    raise KtraceError(
                        f"{key[0]}/{key[1]} already streamed {state.count} events and kept only the last "
                        f"{len(state.kept)}: register aggregates before the events they should count"
                    )
            seen: Dict[int, Tuple[Tuple[str, str], Event]] = {}
            for key, state in zip(aggregate.keys, states):
                for seq, event in state.kept:
                    seen[seq] = (key, event)
            for seq in sorted(seen):
                aggregate.feed(*seen[seq])
            for state in states:
                if aggregate not in state.aggregates:
                    state.aggregates.append(aggregate)
            aggregate.publish()

    def publish(self, aggregates: Sequence[Aggregate]) -> None:
        with self.lock:
            for aggregate in aggregates:
                aggregate.publish()

    def lost_copy(self) -> Mapping[int, int]:
        with self.lock:
            return dict(self.lost)
