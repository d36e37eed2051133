"""Typed trace events: one :class:`Event` per line of a trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Tuple, Union

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


@dataclass(frozen=True)
class Event:
    """One recorded event. ``fields`` holds the event's own fields (no ``common_*``), typed from its format:
    integers as ``int`` (signed as the format says), strings as ``str``."""

    system: str
    name: str
    fields: Mapping[str, FieldValue]
    pid: int
    comm: str
    cpu: int
    timestamp: float
    raw: str = field(default="", compare=False, repr=False)
    #: the kernel call stack of this hit, innermost first (probes defined with ``stacktrace=True``)
    stack: Tuple[str, ...] = field(default=(), compare=False, repr=False)

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
