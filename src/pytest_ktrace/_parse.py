"""Trace text -> :class:`ParsedTrace`: :class:`TraceParser`, the reference parser (line by line, a state
machine over continuation and LOST lines) and the indexed parse that gives the same result faster."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from . import _indexed
from ._errors import KtraceError
from ._events import Event
from ._formats import FormatCatalog
from ._indexed import _NUMERIC_NAME_RE, _LazyEvents, _PausedGC, _positions, _Rows, _Run, _runs
from ._splitters import _HEADER_RE, _LOST_RE, _event_of, _Splitter

__all__ = ["ParsedTrace", "TraceParser"]


@dataclass
class ParsedTrace:
    """The result of :meth:`TraceParser.parse`: events in trace order, lost-event counts per CPU
    (``CPU:n [LOST EVENTS]`` without a number counts as 1) and lines that could not be understood.

    ``events`` is a sequence (any list may be given); the one :meth:`TraceParser.parse` returns knows its
    length and the events' names at once but builds the typed :class:`Event` objects only when they are first
    read (all of them, when iterated or indexed), so asking for the events of one probe (:meth:`of`,
    :meth:`select`) or for counts (:meth:`count_of`, :meth:`event_counts`) never decodes the others. Decoded
    events are kept: every access returns the same objects."""

    events: Sequence[Event] = field(default_factory=list)
    lost: Dict[int, int] = field(default_factory=dict)
    unparsed: List[str] = field(default_factory=list)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    def of(self, system: str, name: str) -> List[Event]:
        """The events of ``system:name`` in trace order (the same objects ``events`` holds)."""
        return self.select([(system, name)])

    def select(self, keys: Iterable[Tuple[str, str]]) -> List[Event]:
        """The events whose ``(system, name)`` is one of ``keys``, in trace order."""
        events = self.events
        if isinstance(events, _LazyEvents):
            return events.select(keys)
        wanted = set(keys)
        return [e for e in events if (e.system, e.name) in wanted]

    def count_of(self, system: str, name: str) -> int:
        """How many events of ``system:name`` there are (without decoding any)."""
        events = self.events
        if isinstance(events, _LazyEvents):
            return events.count_of(system, name)
        return sum(1 for e in events if e.name == name and e.system == system)

    def event_counts(self) -> Dict[Tuple[str, str], int]:
        """``(system, name) -> number of events`` (without decoding any)."""
        events = self.events
        if isinstance(events, _LazyEvents):
            return events.event_counts()
        out: Dict[Tuple[str, str], int] = {}
        for e in events:
            key = (e.system, e.name)
            out[key] = out.get(key, 0) + 1
        return out


_UNSET: Any = object()
_MAX_CONTINUATION = 256  # lines one string value may continue on; more is noise


class _Sink:
    """Where the reference parser puts what it finds."""

    __slots__ = ("events", "lost", "unparsed")

    def __init__(self, events: List[Event], lost: Dict[int, int], unparsed: List[str]) -> None:
        self.events = events
        self.lost = lost
        self.unparsed = unparsed


class TraceParser:
    """Parses the text of a ``trace`` / ``trace_pipe`` read into events, using a :class:`FormatCatalog`.

    Splitters are compiled once per event format and cached; a format replaced in the catalog (same name) gets
    a new splitter. Not thread-safe (use one parser per thread); the :class:`ParsedTrace` it returns is."""

    def __init__(self, catalog: FormatCatalog) -> None:
        self.catalog = catalog
        self._splitters: Dict[str, Optional[_Splitter]] = {}  # None: no format known for the name
        self._version = catalog.version

    def _splitter(self, name: str) -> Optional[_Splitter]:
        if self._version != self.catalog.version:
            self._splitters.clear()
            self._version = self.catalog.version
        try:
            return self._splitters[name]
        except KeyError:
            pass
        fmt = self.catalog.get(name)
        sp = _Splitter(fmt) if fmt is not None else None
        self._splitters[name] = sp
        return sp

    def parse_line(self, line: str) -> Optional[Event]:
        """One event (its continuation lines joined with ``"\\n"``) -> :class:`Event`, or None."""
        if not isinstance(line, str):
            raise KtraceError(f"trace line must be str, got {type(line).__name__}")
        m = _HEADER_RE.fullmatch(line)
        if m is None:
            return None
        return self._event(m, line)

    def _event(self, m: re.Match[str], raw: str) -> Optional[Event]:
        g = m.groups()
        name = g[5]
        if name is None:
            return None
        if self._version == self.catalog.version:
            sp = self._splitters.get(name, _UNSET)
            if sp is _UNSET:
                sp = self._splitter(name)
        else:
            sp = self._splitter(name)
        return _event_of(sp, g, raw)

    def parse(self, text: str) -> ParsedTrace:
        """Parse a whole trace. Never raises on odd input: what cannot be understood lands in ``unparsed``.

        The result's ``events`` are decoded when first read (see :class:`ParsedTrace`); its length, ``lost``,
        ``unparsed`` and the per-event counts are known at once."""
        if not isinstance(text, str):
            raise KtraceError(f"trace text must be str, got {type(text).__name__}")
        with _PausedGC():
            return self._parse_indexed(text)

    def _parse_slow(self, text: str) -> ParsedTrace:
        """The reference: line by line, every event decoded (``parse`` gives the same result, faster)."""
        result = _Sink([], {}, [])
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self._parse_lines(lines, result)
        return ParsedTrace(result.events, result.lost, result.unparsed)

    def _parse_indexed(self, text: str) -> ParsedTrace:
        """The index pass (see "indexed parsing" in _indexed.py), then the reference parser on the lines it
        leaves to it."""
        rows = _Rows(*_indexed._index_rows(text))
        names = rows.names
        counts = Counter(names)
        splitters: Dict[str, Optional[_Splitter]] = {}
        others: List[int] = []  # lines that are no H lines
        for k, c in counts.items():
            if k and not _NUMERIC_NAME_RE.fullmatch(k):
                splitters[k] = self._splitter(k)
            else:
                others.extend(_positions(names, k, c))
        runs: List[_Run] = []
        lost: Dict[int, int] = {}
        unparsed: List[str] = []
        if others:
            slow = set(others)
            for i in others:
                # the H line before may be continued by this one (unless it is a LOST line, which ends it)
                j = i - 1
                previous = names[j] if j >= 0 and j not in slow else None
                if previous is not None:
                    sp = splitters.get(previous)
                    if sp is not None and sp.multiline:
                        line = rows.line(i)
                        if line[:4] != "CPU:" or _LOST_RE.fullmatch(line) is None:
                            slow.add(j)
            sink = _Sink([], lost, unparsed)
            for a, b in _runs(sorted(slow)):
                sink.events = []
                self._parse_lines(list(map(rows.line, range(a, b))), sink)
                runs.append((a, b, sink.events))
                for i in range(a, b):
                    k = names[i]
                    if k is not None:
                        counts[k] -= 1
                        names[i] = None
        kept = {k: c for k, c in counts.items() if c and k in splitters}
        total = sum(kept.values()) + sum(len(evs) for _a, _b, evs in runs)
        events = _LazyEvents(rows, kept, {k: splitters[k] for k in kept}, runs, total)
        return ParsedTrace(events, lost, unparsed)

    def _parse_lines(self, lines: List[str], result: _Sink) -> None:
        """The reference parser: a state machine over lines (continuations, LOST lines), appending to
        ``result``."""
        events = result.events
        unparsed = result.unparsed
        lost = result.lost
        header_match = _HEADER_RE.fullmatch
        event = self._event
        # the pending event: its header match, first line, continuation lines (None: none so far)
        p_match: Optional[re.Match[str]] = None
        p_line = ""
        p_more: Optional[List[str]] = None
        for line in lines:
            m = header_match(line)
            if m is not None:
                if p_match is not None:
                    if p_more is None:
                        ev = event(p_match, p_line)
                        if ev is None:
                            unparsed.append(p_line)
                        else:
                            events.append(ev)
                    else:
                        self._flush(p_match, p_line, p_more, result)
                p_match = m
                p_line = line
                p_more = None
                continue
            if line[:4] == "CPU:":
                lm = _LOST_RE.fullmatch(line)
                if lm is not None:
                    if p_match is not None:
                        self._flush(p_match, p_line, p_more, result)
                        p_match = None
                    cpu = int(lm.group(1))
                    lost[cpu] = lost.get(cpu, 0) + (int(lm.group(2)) if lm.group(2) is not None else 1)
                    continue
            if p_match is not None:
                # a continuation of a string value (or noise / a stray header line: decided at flush), if the
                # pending event has a string that could hold a newline
                if p_more is None:
                    if self._multiline(p_match):
                        p_more = [line]
                        continue
                elif len(p_more) < _MAX_CONTINUATION:
                    p_more.append(line)
                    continue
                self._flush(p_match, p_line, p_more, result)
                p_match = None
            if line[:1] == "#" or not line.strip():
                continue  # header (or "##### CPU n buffer started ####") and blank lines
            unparsed.append(line)
        if p_match is not None:
            self._flush(p_match, p_line, p_more, result)

    def _flush(self, m: re.Match[str], first: str, more: Optional[List[str]], result: _Sink) -> None:
        if more is None:
            ev = self._event(m, first)
            if ev is None:
                result.unparsed.append(first)
            else:
                result.events.append(ev)
            return
        # an event followed by lines that are no event headers: newlines inside a string value, or noise
        lines = [first, *more]
        # the most continuation lines that still fit the event's format win; the rest is noise
        for cut in range(len(lines), 1, -1):
            text = "\n".join(lines[:cut])
            hm = _HEADER_RE.fullmatch(text)
            if hm is None or not self._fits(hm):
                continue
            ev = self._event(hm, text)
            if ev is not None:
                result.events.append(ev)
                self._noise(lines[cut:], result)
                return
        ev = self._event(m, first)
        if ev is None:
            result.unparsed.append(first)
        else:
            result.events.append(ev)
        self._noise(more, result)

    @staticmethod
    def _noise(lines: List[str], result: _Sink) -> None:
        for line in lines:
            if line[:1] == "#" or not line.strip():
                continue  # header lines, blank lines
            result.unparsed.append(line)

    def _multiline(self, m: re.Match[str]) -> bool:
        """Whether the event of header match ``m`` has a string field (that may continue on the next line)."""
        name = m.group("name")
        if name is None:
            return False
        sp = self._splitter(name)
        return sp is not None and sp.multiline

    def _fits(self, hm: re.Match[str]) -> bool:
        """Whether a (multi-line) event parses with its own format's splitter."""
        name = hm.group("name")
        if name is None:
            return False
        sp = self._splitter(name)
        if sp is None:
            return False  # unknown event: no idea where its strings are; keep the extra lines apart
        body = hm.group("body")
        if body[:2] != " (" and sp.split_fields(body) is not None:
            return True
        return sp.split_fallback(body) is not None
