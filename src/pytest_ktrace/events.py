"""Typed trace events: one :class:`Event` per line of a trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Tuple, Union

__all__ = ["Event", "FieldValue"]

FieldValue = Union[int, str]


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
        return f"{self.system}:{self.name}"

    def __getitem__(self, key: str) -> FieldValue:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def short(self) -> str:
        args = " ".join(f"{k}={v!r}" for k, v in self.fields.items() if not k.startswith("__probe"))
        return f"{self.timestamp:.6f} {self.comm}-{self.pid} [{self.cpu:03d}] {self.name}: {args}"
