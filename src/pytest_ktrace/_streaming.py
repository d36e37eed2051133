"""Streaming mode: events read from an instance's ``trace_pipe`` as they happen, into bounded memory.

A :class:`StreamPump` thread reads a :class:`~pytest_ktrace.backends._base.TraceStream`, splits complete lines
(keeping a partial tail), parses them with :class:`~pytest_ktrace._parse.TraceParser` and dispatches each event to
its probe: an exact count, a bounded deque of the most recent events, and the aggregates registered on the probe
(:mod:`._aggregates`), which see every event and keep none. :class:`StreamMode` is a test's side of it: it opens
the stream and synchronises with the pump through ``trace_marker`` writes: the pump counts the marker lines it has
seen, and :meth:`StreamPump.wait` waits until it has seen a given number.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from ._aggregates import Aggregate, AggregateSet
from ._assertions import Observation
from ._collection import tracefs_gone
from ._errors import ConnectionLost, KtraceError, hide_for_ktrace_errors
from ._events import Event
from ._formats import FormatCatalog
from ._parse import ParsedTrace, TraceParser
from .backends._base import Backend, OpResult, Read, Streaming, TraceStream, Write

__all__ = ["DEFAULT_KEEP", "SYNC_PREFIX", "ProbeState", "StreamMode", "StreamPump"]

__tracebackhide__ = hide_for_ktrace_errors

DEFAULT_KEEP = 100_000
SYNC_PREFIX = "ktrace-sync-"

# A trace_marker record: its text with the `fields` option off, "UNKNOWN TYPE 5" (TRACE_PRINT) with it on, as 6.x
# kernels print it. Only the session writes to its instance's trace_marker, so marker lines are counted.
_MARKER = re.compile(r": (?:UNKNOWN TYPE 5|tracing_mark_write: " + SYNC_PREFIX + r"\d+)\s*$")
# The start of an event line (comm-pid [cpu] ... ts:), to hold back an event whose string may continue
_EVENT_START = re.compile(r"^\s*\S.*?-\d+\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\]\s")
_MAX_HELD_LINES = 256
_RAW_TAIL = 400  # raw lines kept for the failure report section


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


# ------------------------------------------------------------------------------------------------- stream mode
class StreamMode:
    """Stream mode for one test: the instance's ``trace_pipe`` open from the first arming to teardown, a pump
    reading it, and sync points: a ``trace_marker`` write the pump must have seen before the test looks."""

    def __init__(
        self,
        backend: Backend,
        instance: str,
        catalog: FormatCatalog,
        aggregates: AggregateSet,
        *,
        keep: int,
        stall_s: float,
    ) -> None:
        self.backend = backend
        self.instance = instance
        self.instance_path = f"instances/{instance}"
        self.catalog = catalog
        self.aggregates = aggregates
        self.keep = keep
        self.stall_s = stall_s
        self.pump: Optional[StreamPump] = None
        self.stream: Optional[TraceStream] = None
        self._markers = 0  # sync markers written to trace_marker (and so, eventually, streamed)

    def start(self, probes: Sequence[Tuple[str, str]]) -> None:
        """Open the instance's trace_pipe and start the pump (right after the first arm)."""
        if not isinstance(self.backend, Streaming):
            raise KtraceError(
                f"stream mode needs a backend that can stream trace_pipe (the Streaming capability, open_stream()), "
                f"and {self.backend.name} ({type(self.backend).__name__}) has none; run this test without "
                "stream=True / --ktrace-stream"
            )
        self.stream = self.backend.open_stream(f"{self.instance_path}/trace_pipe")
        pump = StreamPump(self.stream, self.catalog, keep=self.keep, name=f"ktrace-pump-{self.instance}")
        for key in probes:
            pump.add_probe(key)
        for aggregate in self.aggregates.all:
            pump.register(aggregate)
        self.pump = pump
        pump.start()

    def marker_op(self) -> Write:
        """The write of the next sync marker (it travels with a command, or alone in :meth:`sync`)."""
        return Write(f"{self.instance_path}/trace_marker", f"{SYNC_PREFIX}{self._markers + 1}")

    def synced(self, write: Optional[OpResult]) -> None:
        """After a marker write (its result): wait until the pump has streamed up to it, then publish."""
        pump = self.pump
        assert pump is not None
        if write is not None:
            if not write.ok:
                raise KtraceError(
                    f"writing the sync marker to {write.op.path} failed ({write.errno_name} {write.error}); "
                    f"the stream of {self.instance} cannot be synchronised"
                )
            self._markers += 1
        pump.wait(self._markers, stall_s=self.stall_s, describe=self._describe)
        pump.publish(self.aggregates.all)

    def sync(self) -> None:
        """Write a sync marker and wait until it has streamed past (everything before it is dispatched)."""
        marker, mounted = self.backend.apply([self.marker_op(), Read("tracing_on")])
        if not mounted.ok:
            raise tracefs_gone(self.backend)
        self.synced(marker)

    def snapshot(self) -> ParsedTrace:
        pump = self.pump
        assert pump is not None
        return ParsedTrace(events=pump.ordered(), lost=dict(pump.lost_copy()))

    def observation(self, key: Tuple[str, str], *, lost_policy: str, hints: Sequence[str]) -> Observation:
        pump = self.pump
        assert pump is not None
        events, count = pump.snapshot(key)
        return Observation(
            events,
            dict(pump.lost_copy()),
            hints if not count else (),
            lost_policy,
            total=count,
            evicted=count - len(events),
            keep=self.keep,
        )

    def raw_tail(self) -> str:
        pump = self.pump
        assert pump is not None
        with pump.lock:
            tail = list(pump.raw_tail)
            total = pump.lines
        return f"# streamed from trace_pipe: the last {len(tail)} of {total} lines\n" + "\n".join(tail) + "\n"

    def stop(self) -> List[str]:
        """Stop the pump (joined) and close the stream, before anything is disabled or removed."""
        problems: List[str] = []
        pump, stream = self.pump, self.stream
        self.stream = None
        if pump is not None and not pump.stop(timeout=10.0):
            problems.append(f"the stream reader thread of {self.instance} did not stop within 10 s")
        if stream is not None:
            try:
                stream.close()
            except ConnectionLost:
                raise
            except KtraceError as exc:
                problems.append(f"closing the trace_pipe stream of {self.instance}: {exc}")
        if pump is not None and pump.alive and not pump.stop(timeout=5.0):
            problems.append(f"the stream reader thread of {self.instance} is still alive after the stream closed")
        return problems

    def _describe(self) -> str:
        return f"instance {self.instance} on {self.backend.describe().name}"
