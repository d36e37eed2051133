"""Typed trace events: one :class:`Event` per line of a trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple, Union

__all__ = ["TASK_KEYS", "Event", "FieldValue", "task_key"]

FieldValue = Union[int, str]

#: How tests name the task an event happened in (the ``comm-pid [cpu]`` at the start of its trace line).
#: The one rule, everywhere a test names what an event holds (``where``, ``assert_called_with``, ``wait_for``,
#: ``inject``): a keyword is the event's field of that name; ``task_pid``, ``task_comm`` and ``task_cpu`` are
#: always the task; ``pid``, ``comm`` and ``cpu`` are the task only for an event without a field of that name.
TASK_KEYS: Mapping[str, str] = {"task_pid": "pid", "task_comm": "comm", "task_cpu": "cpu"}
_SHORTHANDS = ("pid", "comm", "cpu")


def task_key(key: str, fields: Any) -> str:
    """The task attribute (``pid``, ``comm``, ``cpu``) that ``key`` names for an event with these field names,
    or "" when ``key`` names a field (see :data:`TASK_KEYS`)."""
    if key in TASK_KEYS:
        return TASK_KEYS[key]
    if key in _SHORTHANDS and key not in fields:
        return key
    return ""


# The attributes live in slots of a base class, so that the parser can fill them through a twin class that is
# not frozen and then give each object its final class (see ``_event_builder``): an Event is a few slots, not a
# dict, and building one costs a handful of attribute stores instead of ``__init__``'s ``object.__setattr__`` calls.
_ATTRIBUTES = ("system", "name", "fields", "pid", "comm", "cpu", "timestamp", "raw", "stack")


class _EventSlots:
    __slots__ = _ATTRIBUTES


@dataclass(frozen=True, init=False)
class Event(_EventSlots):
    """One recorded event. ``fields`` holds the event's own fields (no ``common_*``), typed from its format:
    integers as ``int`` (signed as the format says), strings as ``str``."""

    __slots__ = ()

    system: str
    name: str
    fields: Mapping[str, FieldValue]
    pid: int
    comm: str
    cpu: int
    timestamp: float
    raw: str = field(compare=False, repr=False)
    #: the kernel call stack of this hit, innermost first (probes defined with ``stacktrace=True``)
    stack: Tuple[str, ...] = field(compare=False, repr=False)

    def __init__(
        self,
        system: str,
        name: str,
        fields: Mapping[str, FieldValue],
        pid: int,
        comm: str,
        cpu: int,
        timestamp: float,
        raw: str = "",
        stack: Tuple[str, ...] = (),
    ) -> None:
        _set = object.__setattr__
        _set(self, "system", system)
        _set(self, "name", name)
        _set(self, "fields", fields)
        _set(self, "pid", pid)
        _set(self, "comm", comm)
        _set(self, "cpu", cpu)
        _set(self, "timestamp", timestamp)
        _set(self, "raw", raw)
        _set(self, "stack", stack)

    def __reduce__(self) -> Tuple[Any, ...]:
        # the default for slots would set them one by one through the frozen __setattr__
        return (Event, tuple(getattr(self, name) for name in _EventSlots.__slots__))

    @property
    def full_name(self) -> str:
        """``system:name``, as ``available_events`` lists the event."""
        return f"{self.system}:{self.name}"

    def __getitem__(self, key: str) -> FieldValue:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        """A field's value, like ``dict.get``."""
        return self.fields.get(key, default)

    def value(self, key: str) -> Any:
        """What ``key`` names in this event (see :data:`TASK_KEYS`), None if nothing."""
        attribute = task_key(key, self.fields)
        return getattr(self, attribute) if attribute else self.fields.get(key)

    def named(self) -> dict[str, Any]:
        """What a test can name in this event (see :data:`TASK_KEYS`): its fields, ``task_pid``, ``task_comm``,
        ``task_cpu``, and ``pid``/``comm``/``cpu`` for the task where the event has no such field."""
        values: dict[str, Any] = {key: getattr(self, attribute) for key, attribute in TASK_KEYS.items()}
        values.update({key: getattr(self, key) for key in _SHORTHANDS if key not in self.fields})
        values.update(self.fields)
        return values

    def short(self) -> str:
        args = " ".join(f"{k}={v!r}" for k, v in self.fields.items() if not k.startswith("__probe"))
        return f"{self.timestamp:.6f} {self.comm}-{self.pid} [{self.cpu:03d}] {self.name}: {args}"


class _Unfrozen(_EventSlots):
    """An Event's layout without the frozen ``__setattr__``: the parser fills one, then makes it an Event."""

    __slots__ = ()


#: builds the events of one event name from columns: ``(system, name, raws, headers, timestamps, value
#: columns)`` where ``headers`` are ``(comm, pid, cpu)`` tuples and the value columns follow the field names
EventBuilder = Callable[
    [str, str, Sequence[str], Sequence[Tuple[str, int, int]], Sequence[float], Sequence[Sequence[Any]]], List[Event]
]
_BUILDERS: Dict[Tuple[str, ...], EventBuilder] = {}


def _event_builder(names: Tuple[str, ...]) -> EventBuilder:
    """One loop of plain attribute stores per field list: the events whose ``fields`` dict has the keys
    ``names`` (in that order) from their values' columns."""
    try:
        return _BUILDERS[names]
    except KeyError:
        pass
    vs = [f"v{i}" for i in range(len(names))]
    values = ", ".join(f"{n!r}: {v}" for n, v in zip(names, vs))
    src = (
        "def build(system, name, raws, hdrs, tss, cols):\n"
        "    out = list(map(new, repeat(Unfrozen, len(raws))))\n"  # made in C, filled below
        f"    for e, raw, (comm, pid, cpu), ts{''.join(', ' + v for v in vs)} in zip(out, raws, hdrs, tss, *cols):\n"
        "        e.system = system\n"
        "        e.name = name\n"
        f"        e.fields = {{{values}}}\n"
        "        e.pid = pid\n"
        "        e.comm = comm\n"
        "        e.cpu = cpu\n"
        "        e.timestamp = ts\n"
        "        e.raw = raw\n"
        "        e.stack = ()\n"
        "        e.__class__ = Event\n"
        "    return out\n"
    )
    namespace: Dict[str, Any] = {"new": object.__new__, "repeat": repeat, "Unfrozen": _Unfrozen, "Event": Event}
    exec(src, namespace)  # field names are repr()'d literals: no injection possible
    build: EventBuilder = namespace["build"]
    _BUILDERS[names] = build
    return build


def _make_event(
    system: str, name: str, fields: Mapping[str, FieldValue], pid: int, comm: str, cpu: int, ts: float, raw: str
) -> Event:
    """``Event(system, name, fields, pid, comm, cpu, ts, raw)``, without the constructor's calls."""
    e: Any = object.__new__(_Unfrozen)
    e.system = system
    e.name = name
    e.fields = fields
    e.pid = pid
    e.comm = comm
    e.cpu = cpu
    e.timestamp = ts
    e.raw = raw
    e.stack = ()
    e.__class__ = Event
    return e  # type: ignore[no-any-return]
