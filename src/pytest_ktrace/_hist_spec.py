"""A hist trigger as a test asks for it (``ktrace.hist()``): validated where the kernel would not say why (how many
keys and values, the modifiers, the table size, the sort keys), and rendered as the exact line written to the
event's ``trigger`` file (``hist:keys=...:vals=hitcount,...:sort=...:size=N [if FILTER]``); its removal is the
same line after ``!``. The kernel's limits come from kernel/trace/tracing_map.h and trace_events_hist.c.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Union

from ._errors import KtraceError, hide_for_ktrace_errors

__all__ = [
    "COUNT_SIZE",
    "DEFAULT_SIZE",
    "MAX_SIZE",
    "HistField",
    "HistSpec",
    "Task",
    "hist_spec",
]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

MAX_KEYS = 3  # TRACING_MAP_KEYS_MAX
MAX_VALUES = 2  # TRACING_MAP_VALS_MAX holds hitcount and two sums
MIN_SIZE = 1 << 7  # TRACING_MAP_BITS_MIN
MAX_SIZE = 1 << 17  # TRACING_MAP_BITS_MAX
DEFAULT_SIZE = 1 << 11  # TRACING_MAP_BITS_DEFAULT
MAX_SORT = 2  # TRACING_MAP_SORT_KEYS_MAX
COUNT_SIZE = 1 << 13  # count_by()'s table: more distinct values than a test looks at, ~1 MB of kernel memory

# parse_field(): the modifiers a key may carry ("buckets=N" aside); a value takes .hex only (the others are
# display forms the kernel refuses or, for .percent/.graph, prints in another shape)
_KEY_MODIFIERS = ("hex", "sym", "sym-offset", "execname", "syscall", "log2", "usecs")
_STACKTRACE = ("stacktrace", "common_stacktrace")  # the key of the call stack (6.12 prints common_stacktrace)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Task(NamedTuple):
    """The key of a ``common_pid.execname`` field: the task's pid and the comm it had at its first hit (the kernel
    names each entry once, when it creates it)."""

    comm: str
    pid: int


def _refuse(message: str) -> KtraceError:
    return KtraceError(f"ktrace.hist(): {message}")


@dataclass(frozen=True)
class HistField:
    """One key or value: an event field (or ``common_pid``, ``common_cpu``, ``common_timestamp``, ``stacktrace``)
    with at most one modifier (``hex``, ``sym``, ``sym-offset``, ``execname``, ``syscall``, ``log2``, ``usecs``,
    ``buckets`` with its ``buckets`` size)."""

    name: str
    modifier: str = ""
    buckets: int = 0

    @property
    def text(self) -> str:
        """As written in the trigger and printed back by the kernel (``flags.buckets=1024``)."""
        if self.modifier == "buckets":
            return f"{self.name}.buckets={self.buckets}"
        return f"{self.name}.{self.modifier}" if self.modifier else self.name

    @property
    def is_stacktrace(self) -> bool:
        return self.name in _STACKTRACE

    @classmethod
    def parse(cls, text: object, role: str) -> HistField:
        """``role`` is ``"key"`` or ``"value"``; refuses what would change the shape of the trigger line."""
        if not isinstance(text, str):
            raise _refuse(f"a {role} is a field name (str), got {type(text).__name__} {text!r}")
        name, dot, modifier = text.partition(".")
        if not _NAME.fullmatch(name):
            raise _refuse(f"{role} {text!r}: {name!r} is not a field name")
        if not dot:
            return cls(name)
        if role == "value":
            if modifier != "hex":
                raise _refuse(f"value {text!r}: a value is a sum, so .hex is its only modifier")
            return cls(name, "hex")
        if name in _STACKTRACE:
            raise _refuse(f"key {text!r}: the stack key takes no modifier")
        match = re.fullmatch(r"buckets?=(\d+)", modifier)
        if match is not None:
            size = int(match.group(1))
            if size < 1:
                raise _refuse(f"key {text!r}: a bucket holds at least 1 value")
            return cls(name, "buckets", size)
        if modifier not in _KEY_MODIFIERS:
            raise _refuse(
                f"key {text!r}: .{modifier} is not a key modifier (the kernel's: "
                + ", ".join(f".{known}" for known in (*_KEY_MODIFIERS, "buckets=N"))
                + ")"
            )
        if modifier == "execname" and name != "common_pid":
            raise _refuse(f"key {text!r}: .execname names a task, so it goes on common_pid only")
        return cls(name, modifier)


def _power_of_two(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise _refuse(f"size={size!r} must be an int")
    rounded = 1 << (size - 1).bit_length() if size > 0 else 0  # the kernel rounds it up (roundup_pow_of_two)
    if not MIN_SIZE <= rounded <= MAX_SIZE:
        raise _refuse(f"size={size}: the kernel's tables hold {MIN_SIZE} to {MAX_SIZE} entries")
    return rounded


def _sort_name(text: str) -> tuple[str, bool]:
    """A sort key as the kernel compares it: its field name and whether it is descending."""
    name, _, rest = text.partition(".")
    return name, rest.endswith("descending")


@dataclass(frozen=True)
class HistSpec:
    """One hist trigger: its keys (1 to 3), values (0 to 2 sums besides ``hitcount``), sort keys, table size and
    filter, in the kernel's syntax."""

    keys: tuple[HistField, ...]
    values: tuple[HistField, ...] = ()
    sort: tuple[str, ...] = ("hitcount",)
    size: int = DEFAULT_SIZE
    filter: str = ""

    @property
    def command(self) -> str:
        """The line written to the event's ``trigger`` file (also what the kernel shows as its trigger info)."""
        keys = ",".join(key.text for key in self.keys)
        values = ",".join(["hitcount", *(value.text for value in self.values)])
        line = f"hist:keys={keys}:vals={values}:sort={','.join(self.sort)}:size={self.size}"
        return line + (f" if {self.filter}" if self.filter else "")

    @property
    def removal(self) -> str:
        """What removes it: the same line after ``!`` (the kernel removes the trigger it matches)."""
        return "!" + self.command

    def matches(self, info: str) -> bool:
        """Whether a table's trigger info (``hist:keys=...``, its state mark removed) is this trigger's: the
        kernel may print a key in another spelling (``common_stacktrace``), not another trigger."""
        attributes, _, shown_filter = info.partition(" if ")
        if shown_filter.strip() != self.filter.strip():
            return False
        parts = dict(part.partition("=")[::2] for part in attributes.split(":")[1:])
        keys = [("stacktrace" if key in _STACKTRACE else key) for key in parts.get("keys", "").split(",")]
        if keys != [("stacktrace" if key.is_stacktrace else key.text) for key in self.keys]:
            return False
        if parts.get("vals", "").split(",") != ["hitcount", *(value.text for value in self.values)]:
            return False
        return [_sort_name(key) for key in parts.get("sort", "").split(",")] == [_sort_name(k) for k in self.sort]


def _listed(names: object) -> list[Any]:
    if isinstance(names, str):
        return [names]
    if isinstance(names, (list, tuple)):
        return list(names)
    raise _refuse(f"{names!r}: give a field name or a list of them")


def hist_spec(
    keys: Union[str, Sequence[str]],
    values: Union[str, Sequence[str]] = (),
    *,
    filter: Optional[str] = None,
    sort: Union[str, Sequence[str], None] = None,
    size: Optional[int] = None,
    probe_filter: Optional[str] = None,
) -> HistSpec:
    """The trigger for ``ktrace.hist(...)``'s arguments; ``probe_filter`` is the probe's own filter, folded in."""
    key_list = _listed(keys)
    value_list = _listed(values)
    if not 1 <= len(key_list) <= MAX_KEYS:
        raise _refuse(f"keys={key_list!r}: a hist table has 1 to {MAX_KEYS} keys")
    parsed_keys = tuple(HistField.parse(key, "key") for key in key_list)
    parsed_values = tuple(HistField.parse(value, "value") for value in value_list if value != "hitcount")
    if len(parsed_values) > MAX_VALUES:
        raise _refuse(f"values={value_list!r}: a hist table sums at most {MAX_VALUES} values besides hitcount")
    if any(key.is_stacktrace for key in parsed_keys) and len(parsed_keys) > 1:
        raise _refuse("the stack key cannot be combined with other keys")
    sort_list = ["hitcount"] if sort is None else ([sort] if isinstance(sort, str) else list(sort))
    if not 1 <= len(sort_list) <= MAX_SORT:
        raise _refuse(f"sort={sort!r}: 1 or {MAX_SORT} sort keys")
    for key in sort_list:
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[\w-]+)*", key):
            raise _refuse(f"sort key {key!r} is not a field name (with .descending for the other order)")
    sort_shown = tuple(key[: -len(".ascending")] if key.endswith(".ascending") else key for key in sort_list)
    conditions = []
    for name, text in (("the probe's filter", probe_filter), ("filter", filter)):
        if text is None or text == "":
            continue
        if not isinstance(text, str) or not text.strip() or "\n" in text:
            raise _refuse(f"{name} {text!r} must be one line of the kernel's filter syntax")
        conditions.append(text.strip())
    condition = " && ".join(f"({text})" for text in conditions) if len(conditions) > 1 else "".join(conditions)
    return HistSpec(
        parsed_keys,
        parsed_values,
        sort_shown,
        DEFAULT_SIZE if size is None else _power_of_two(size),
        condition,
    )
