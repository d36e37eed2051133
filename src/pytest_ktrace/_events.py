"""Typed trace events: one :class:`Event` per line of a trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count, repeat
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

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
# not frozen and then give each object its final class (see ``_events_from_headers``): an Event is a few slots,
# not a dict, and building one costs a handful of attribute stores instead of ``__init__``'s
# ``object.__setattr__`` calls. ``fields`` and ``raw`` are read through properties: an event the parser builds
# from its header alone (``_fields`` and ``_raw`` None) gets them from its source when one of them is first read,
# where it is number ``_source_index`` (see ``FieldsSource``).
_ATTRIBUTES = ("system", "name", "fields", "pid", "comm", "cpu", "timestamp", "raw", "stack")


class _EventSlots:
    __slots__ = (
        "_fields",
        "_raw",
        "_source",
        "_source_index",
        "comm",
        "cpu",
        "name",
        "pid",
        "stack",
        "system",
        "timestamp",
    )  # fmt: skip
    _fields: Optional[Mapping[str, FieldValue]]
    _raw: Optional[str]
    _source: FieldsSource
    _source_index: int

    @property
    def fields(self) -> Mapping[str, FieldValue]:
        values = self._fields
        if values is None:
            self._source.fill(self)
            values = self._fields
        assert values is not None  # what fill() is for
        return values

    @property
    def raw(self) -> str:
        line = self._raw
        if line is None:
            self._source.fill_raw(self)
            line = self._raw
        assert line is not None  # what fill() is for
        return line


class FieldsSource(Protocol):
    """Gives events built from their headers alone their ``fields`` and ``raw``, when first read."""

    def fill(self, event: Any) -> None:
        """Set ``event``'s ``_fields`` (and, where it can, those of all the others it was given to, decoded
        together)."""

    def fill_raw(self, event: Any) -> None:
        """Set ``event``'s ``_raw`` (likewise)."""


@dataclass(frozen=True, init=False)
class Event(_EventSlots):
    """One recorded event. ``fields`` holds the event's own fields (no ``common_*``), typed from its format:
    integers as ``int`` (signed as the format says), strings as ``str``. In a parsed trace the fields (and
    ``raw``) of all the events of one kind are decoded together, when the first of them is read."""

    __slots__ = ()

    system: str
    name: str
    fields: Mapping[str, FieldValue]  # read through the base class's property
    pid: int
    comm: str
    cpu: int
    timestamp: float
    raw: str = field(compare=False, repr=False)  # read through the base class's property
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
        _set(self, "_fields", fields)
        _set(self, "pid", pid)
        _set(self, "comm", comm)
        _set(self, "cpu", cpu)
        _set(self, "timestamp", timestamp)
        _set(self, "_raw", raw)
        _set(self, "stack", stack)

    def __reduce__(self) -> Tuple[Any, ...]:
        # the default for slots would set them one by one through the frozen __setattr__
        return (Event, tuple(getattr(self, name) for name in _ATTRIBUTES))

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


# the slots' own setters, past the frozen __setattr__ (looked up in the class dict: to type checkers the names
# are the instance attributes)
_set_fields: Callable[[Any, Any], None] = _EventSlots.__dict__["_fields"].__set__
_set_raw: Callable[[Any, Any], None] = _EventSlots.__dict__["_raw"].__set__


def _events_from_headers(
    system: str,
    name: str,
    headers: Sequence[Tuple[str, int, int]],
    timestamps: Sequence[float],
    source: FieldsSource,
) -> List[Event]:
    """The events of one event name from the columns of their headers (``headers`` are ``(comm, pid, cpu)``
    tuples), with ``fields`` and ``raw`` left to ``source``: event ``i`` is its number ``i``."""
    out: List[Any] = list(map(object.__new__, repeat(_Unfrozen, len(headers))))  # made in C, filled below
    for i, e, (comm, pid, cpu), ts in zip(count(), out, headers, timestamps):
        e.system = system
        e.name = name
        e.pid = pid
        e.comm = comm
        e.cpu = cpu
        e.timestamp = ts
        e._fields = None
        e._raw = None
        e.stack = ()
        e._source = source
        e._source_index = i
        e.__class__ = Event
    return out


def _source_index(event: Event) -> int:
    """Which of its source's events ``event`` is (see :func:`_events_from_headers`)."""
    return event._source_index


#: builds the ``fields`` dicts of ``count`` events from their values' columns (in the order of the field names)
FieldsBuilder = Callable[[int, Sequence[Sequence[Any]]], List[Dict[str, FieldValue]]]
_BUILDERS: Dict[Tuple[str, ...], FieldsBuilder] = {}


def _fields_builder(names: Tuple[str, ...]) -> FieldsBuilder:
    """One comprehension with a dict display per field list: the ``fields`` dicts with the keys ``names`` (in
    that order) from their values' columns."""
    try:
        return _BUILDERS[names]
    except KeyError:
        pass
    if names:
        vs = [f"v{i}" for i in range(len(names))]
        values = ", ".join(f"{n!r}: {v}" for n, v in zip(names, vs))
        src = f"def build(count, cols):\n    return [{{{values}}} for {', '.join(vs)}, in zip(*cols)]\n"
    else:
        src = "def build(count, cols):\n    return [{} for _ in range(count)]\n"
    namespace: Dict[str, Any] = {}
    exec(src, namespace)  # field names are repr()'d literals: no injection possible
    build: FieldsBuilder = namespace["build"]
    _BUILDERS[names] = build
    return build


def _make_event(
    system: str, name: str, fields: Mapping[str, FieldValue], pid: int, comm: str, cpu: int, ts: float, raw: str
) -> Event:
    """``Event(system, name, fields, pid, comm, cpu, ts, raw)``, without the constructor's calls."""
    e: Any = object.__new__(_Unfrozen)
    e.system = system
    e.name = name
    e._fields = fields
    e.pid = pid
    e.comm = comm
    e.cpu = cpu
    e.timestamp = ts
    e._raw = raw
    e.stack = ()
    e.__class__ = Event
    return e  # type: ignore[no-any-return]
