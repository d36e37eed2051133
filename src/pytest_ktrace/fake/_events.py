"""The events a fake tracefs knows: the snapshot's tracepoints and the probe events defined since, with their IDs.

:class:`EventTable` is the kernel's list of trace events (``ftrace_events``) and its event type IDs; each entry
is an :class:`EventDefinition`.
"""

from __future__ import annotations

import re
from typing import Optional

from .._formats import EventFormat
from ..snapshots._snapshot import KernelSnapshot
from ._filters import FilterField
from ._formats import fields_of_format, format_file_text, probe_fields, probe_print_fmt
from ._grammar import ProbeCommand
from ._render import EventLayout

__all__ = ["EventDefinition", "EventTable"]

_FIRST_EVENT_TYPE = 21  # the lowest ID the event type IDA hands out above ftrace's own types
_ID_LINE = re.compile(r"^ID: (\d+)$", re.MULTILINE)


class EventDefinition:
    """A registered event: a snapshot tracepoint (format text kept verbatim) or a probe event."""

    def __init__(
        self,
        system: str,
        name: str,
        event_id: int,
        serial: int,
        *,
        format_text: Optional[str] = None,
        probes: Optional[list[ProbeCommand]] = None,
    ) -> None:
        self.system = system
        self.name = name
        self.event_id = event_id
        self.serial = serial  # registration order
        self.probes: list[ProbeCommand] = probes or []
        self._format_text = format_text
        self._layout: Optional[EventLayout] = None
        self._parsed: Optional[EventFormat] = None
        self.open_references = 0

    @property
    def key(self) -> str:
        return f"{self.system}/{self.name}"

    @property
    def primary(self) -> Optional[ProbeCommand]:
        return self.probes[0] if self.probes else None

    @property
    def format_text(self) -> str:
        if self._format_text is None:
            primary = self.primary
            assert primary is not None
            self._format_text = format_file_text(
                self.name, self.event_id, probe_fields(primary), probe_print_fmt(primary)
            )
        return self._format_text

    @property
    def layout(self) -> EventLayout:
        if self._layout is None:
            primary = self.primary
            if primary is not None:
                fields = probe_fields(primary)
                self._layout = EventLayout(self.system, self.name, primary.kind, primary.is_return, fields)
            else:
                self._parsed, fields = fields_of_format(self.format_text, self.system)
                self._layout = EventLayout(self.system, self.name, "tracepoint", False, fields)
        return self._layout

    def filter_fields(self) -> list[FilterField]:
        return [FilterField(f.name, f.is_string, f.size, f.signed, f.c_type) for f in self.layout.fields]


class EventTable:
    """Every event by ``system/name`` and by system; starts with ``snapshot``'s tracepoints in ID order."""

    def __init__(self, snapshot: KernelSnapshot) -> None:
        self.events: dict[str, EventDefinition] = {}
        self.systems: dict[str, dict[str, EventDefinition]] = {}
        self.serial = 0  # the registration serial of the newest event
        # How many events hold each ID, and the ID the next event gets (None: to be found again). The lowest free
        # ID is kept rather than searched for: a test adds and removes probes next to a thousand tracepoints.
        self._ids: dict[int, int] = {}
        self._start = _FIRST_EVENT_TYPE
        self._free: Optional[int] = None
        ranked: list[tuple[int, str, str]] = []
        for key, text in snapshot.events.items():
            match = _ID_LINE.search(text)
            ranked.append((int(match.group(1)) if match else 0, key, text))
        for event_id, key, text in sorted(ranked):
            system, _, name = key.partition("/")
            self.add(EventDefinition(system, name, event_id, self.next_serial(), format_text=text))

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def next_event_id(self) -> int:
        """The ID a new event gets: the lowest free one from the lowest in use (or the first dynamic type)."""
        if self._free is None:
            ids = self._ids
            self._start = min(min(ids), _FIRST_EVENT_TYPE) if ids else _FIRST_EVENT_TYPE
            candidate = self._start
            while candidate in ids:
                candidate += 1
            self._free = candidate
        return self._free

    def add(self, definition: EventDefinition) -> None:
        self.events[definition.key] = definition
        self.systems.setdefault(definition.system, {})[definition.name] = definition
        event_id = definition.event_id
        ids = self._ids
        ids[event_id] = ids.get(event_id, 0) + 1
        if self._free is None:
            return
        if event_id < self._start:
            self._free = None  # the IDs now start lower
        elif event_id == self._free:
            while self._free in ids:
                self._free += 1

    def remove(self, definition: EventDefinition) -> None:
        """Forget the event; its system goes with its last event."""
        del self.events[definition.key]
        system = self.systems[definition.system]
        del system[definition.name]
        if not system:
            del self.systems[definition.system]
        event_id = definition.event_id
        left = self._ids[event_id] - 1
        if left:
            self._ids[event_id] = left
            return
        del self._ids[event_id]
        if self._free is None:
            return
        if event_id <= self._start:
            self._free = None  # the IDs may now start higher
        elif event_id < self._free:
            self._free = event_id

    def ordered_for(self, created_serial: int) -> list[EventDefinition]:
        """tr->events order of a trace array created after event ``created_serial``: events added after the array
        first (newest first), then the rest."""
        events = sorted(self.events.values(), key=lambda definition: definition.serial)
        newer = [e for e in events if e.serial > created_serial]
        older = [e for e in events if e.serial <= created_serial]
        return [*reversed(newer), *older]
