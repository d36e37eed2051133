"""``ktrace.hist()``: counts made in the kernel by a hist trigger, which sees every hit of its event whatever the
rate (no ring buffer between the event and the count).

Three parts:

* :class:`HistSpec` is a trigger as the test asked for it, validated where the kernel would not say why (how many
  keys and values, the modifiers, the table size), and rendered as the exact line written to the event's
  ``trigger`` file in the test's instance (``hist:keys=...:vals=hitcount,...:sort=...:size=N [if FILTER]``); its
  removal is the same line after ``!``.
* :func:`parse_hist` reads an event's ``hist`` file (one table per hist trigger, kernel/trace/trace_events_hist.c
  ``hist_trigger_show()``) and :func:`decode` types one table's rows with the event's format.
* :class:`HistResult` is what the test holds: a mapping from keys to :class:`HistEntry` (``hitcount`` and the sums
  of the values), ``hits``, ``dropped``, ``total``, ``entries`` and a ``counter`` view. It is updated at the
  session's sync points; :class:`HistTriggers` does the work for the session (arming, reading, teardown).

What the kernel does that shapes this (checked on the Debian 6.1 guests, v6.1 and v6.12 sources):

* a hist trigger soft-enables its event: it counts whether or not the event is enabled, whatever ``tracing_on``
  says (trace_event_buffer_lock_reserve() falls back to a temporary buffer for triggers), and before the event's own
  filter is tested: the probe's filter is therefore folded into the trigger's (``if ...``). ``set_event_pid``
  applies;
* ``!hist:...`` removes only a trigger that matches (keys, values, sort and filter); one that matches nothing is
  no error, so the removal is the very line that was written. An event with a trigger cannot be removed
  (``-:group/event`` is EBUSY): the removal joins teardown's first stage;
* a table holds ``size`` entries (a power of two in 128..131072); hits of a new key once it is full are
  ``Dropped``: never lost silently here, :attr:`HistResult.dropped` says how many;
* keys and sums are printed as unsigned 64-bit numbers: a signed field's ``-2`` shows as 18446744073709551614 and
  is read back as ``-2`` from the format's ``signed:1``.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple, Optional, Union

import pytest

from ._aggregates import Counted
from ._errors import HistUnavailable, KtraceError, ProbeRejected, hide_for_ktrace_errors
from ._events import TASK_KEYS
from ._parse import EventFormat, FieldFormat
from .backends._base import Backend, Op, OpResult, Read, Write

__all__ = [
    "DEFAULT_SIZE",
    "HistEntry",
    "HistField",
    "HistResult",
    "HistRow",
    "HistSpec",
    "HistTable",
    "HistTriggers",
    "Task",
    "decode",
    "hist_spec",
    "kernel_count_key",
    "parse_hist",
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
_U64 = 1 << 64


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


# ---------------------------------------------------------------------------------------------------- the hist file
@dataclass(frozen=True)
class HistRow:
    """One printed entry, untyped: the text between ``{ `` and ``}``, and the ``name: number`` pairs after it
    (``hitcount`` first)."""

    key_text: str
    values: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class HistTable:
    """One table of a ``hist`` file: the trigger info (without ``[active]``/``[paused]``), its rows in the
    kernel's order and its totals."""

    info: str
    paused: bool
    rows: tuple[HistRow, ...]
    hits: int
    entries: int
    dropped: int
    text: str = field(repr=False, default="")


_TABLE_HEAD = "# event histogram\n"
_INFO = re.compile(r"^# trigger info: (?P<info>.*?) \[(?P<state>active|paused)\]\s*$", re.M)
_ROW_END = re.compile(r"\}(?P<values>(?:\s+[A-Za-z_][\w.]*:\s+[0-9a-f]+)+)[ \t]*$")
_PAIR = re.compile(r"([A-Za-z_][\w.]*):\s+([0-9a-f]+)")
_TOTALS = re.compile(r"^Totals:\n\s+Hits: (\d+)\n\s+Entries: (\d+)\n\s+Dropped: (\d+)\s*$", re.M)


def parse_hist(text: str) -> list[HistTable]:
    """The tables of an event's ``hist`` file, in the order of its triggers (empty when it has none)."""
    tables = []
    for start in [match.start() for match in re.finditer(f"^{re.escape(_TABLE_HEAD)}", text, re.M)][::-1]:
        chunk, text = text[start:], text[:start]
        tables.append(_parse_table(chunk))
    if text.strip():
        raise KtraceError(f"unexpected text before the first hist table: {text[:200]!r}")
    return tables[::-1]


def _parse_table(chunk: str) -> HistTable:
    info = _INFO.search(chunk)
    totals = _TOTALS.search(chunk)
    if info is None or totals is None:
        raise KtraceError(f"a hist table without its trigger info or totals: {chunk[:300]!r}")
    body = chunk[chunk.index("\n", info.end()) + 1 : totals.start()]
    rows = []
    pending: list[str] = []
    for line in body.splitlines():
        if not pending and not line.startswith("{"):
            continue  # the "#" line closing the header, blank lines, an action's output
        pending.append(line)
        end = _ROW_END.search(line)
        if end is None:
            continue  # a multi-line key (a call stack)
        key_text = "\n".join([*pending[:-1], line[: end.start()]])
        rows.append(HistRow(key_text[1:].removeprefix(" "), tuple(_PAIR.findall(end.group("values")))))
        pending = []
    if pending:
        raise KtraceError(f"a hist entry without its values: {pending[:3]!r}")
    return HistTable(
        info=info.group("info"),
        paused=info.group("state") == "paused",
        rows=tuple(rows),
        hits=int(totals.group(1)),
        entries=int(totals.group(2)),
        dropped=int(totals.group(3)),
        text=chunk,
    )


# ---------------------------------------------------------------------------------------------------------- typing
@dataclass(frozen=True)
class HistEntry(Mapping[str, int]):
    """One entry of a table: its ``key`` (a value, or a tuple of them for a compound key), ``hitcount`` and the sum
    of each value, also by name (``entry["len"]``, ``entry["hitcount"]``)."""

    key: Any
    hitcount: int
    sums: Mapping[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        if name == "hitcount":
            return self.hitcount
        return self.sums[name]

    def __iter__(self) -> Iterator[str]:
        yield "hitcount"
        yield from self.sums

    def __len__(self) -> int:
        return 1 + len(self.sums)

    def __repr__(self) -> str:
        sums = "".join(f", {name}={value}" for name, value in self.sums.items())
        return f"HistEntry({self.key!r}, hitcount={self.hitcount}{sums})"


def _number(text: str, hexadecimal: bool, fmt: Optional[FieldFormat]) -> int:
    value = int(text, 16 if hexadecimal else 10)
    # keys and sums are u64: a signed field's negative value arrives sign-extended
    if fmt is not None and fmt.signed and not fmt.is_array and value >= _U64 >> 1:
        value -= _U64
    return value


def _key_value(field_: HistField, text: str, fmt: Optional[FieldFormat]) -> Any:
    """One key component as the test compares it (see :class:`HistResult`)."""
    if field_.is_stacktrace:
        return tuple(line.strip() for line in text.splitlines()[1:] if line.strip())
    modifier = field_.modifier
    if modifier in ("sym", "sym-offset"):
        return text.split("]", 1)[-1].strip()  # "[ffffffff813669e0] vfs_read   "
    if modifier == "execname":
        comm, _, pid = text.rpartition("[")
        return Task(comm.rstrip(), int(pid.rstrip("] ")))
    if modifier == "syscall":
        name, _, number = text.rpartition("[")
        return name.strip() if name.strip() != "unknown_syscall" else int(number.rstrip("] "))
    if modifier == "log2":
        return int(text.strip().removeprefix("~ 2^"))
    if modifier == "buckets":
        return int(text.strip().removeprefix("~ ").split("-", 1)[0])
    if fmt is not None and fmt.is_string:
        return text.rstrip(" ")  # printed %-50s
    if fmt is None and not re.fullmatch(r"\s*[0-9a-f]+\s*", text):
        return text.rstrip(" ")  # no format to say: a string
    return _number(text.strip(), modifier == "hex", fmt)


def _split_key(spec: HistSpec, text: str) -> list[str]:
    """The printed text of each key of ``spec`` in an entry's ``name: value, name: value`` text."""
    names = [("common_stacktrace" if key.is_stacktrace else key.name) for key in spec.keys]
    if spec.keys[0].is_stacktrace:
        return [text]  # "stacktrace:\n  frame\n ..." (the stack key stands alone)
    parts = []
    rest = text.rstrip(" ")
    for index, name in enumerate(names):
        if not rest.startswith(f"{name}: "):
            raise KtraceError(f"hist entry {text!r}: expected the key {name} at {rest!r}")
        rest = rest[len(name) + 2 :]
        if index + 1 < len(names):
            cut = rest.find(f", {names[index + 1]}: ")
            if cut < 0:
                raise KtraceError(f"hist entry {text!r}: no key {names[index + 1]} after {name}")
            parts.append(rest[:cut])
            rest = rest[cut + 2 :]
        else:
            parts.append(rest)
    return parts


@dataclass(frozen=True)
class HistData:
    """One table decoded: entries by key, in the kernel's order, and the totals."""

    entries: Mapping[Any, HistEntry]
    hits: int
    dropped: int
    count: int  # the table's Entries line
    paused: bool = False
    text: str = ""


def decode(spec: HistSpec, table: HistTable, fmt: Optional[EventFormat] = None) -> HistData:
    """``table`` (a table of ``spec``) typed with the event's format: numbers signed as their field is, strings
    without the kernel's padding, modifiers turned into what they show (see :class:`HistResult`)."""
    fields = [fmt.field(key.name) if fmt is not None else None for key in spec.keys]
    value_fields = {value.name: (value, fmt.field(value.name) if fmt is not None else None) for value in spec.values}
    entries: dict[Any, HistEntry] = {}
    for row in table.rows:
        parts = _split_key(spec, row.key_text)
        components = tuple(_key_value(key, text, f) for key, text, f in zip(spec.keys, parts, fields))
        key = components[0] if len(components) == 1 else components
        sums = {}
        hitcount = 0
        for name, text in row.values:
            if name == "hitcount":
                hitcount = int(text)
                continue
            value, value_format = value_fields.get(name, (HistField(name), None))
            sums[name] = _number(text, value.modifier == "hex", value_format)
        entries[key] = HistEntry(key, hitcount, sums)
    return HistData(entries, table.hits, table.dropped, table.entries, table.paused, table.text)


# ------------------------------------------------------------------------------------------------- what tests hold
_EMPTY = HistData({}, 0, 0, 0)


class HistResult(Mapping[Any, HistEntry]):
    """``ktrace.hist(...)``: the kernel's table for one probe, as a mapping from keys to :class:`HistEntry`.

    A key is the field's value as an event of the probe holds it (a signed number, a string), a tuple of them for
    a compound key; with a modifier, what it shows: ``.execname`` a :class:`Task` ``(comm, pid)``, ``.sym`` and
    ``.sym-offset`` the symbol text, ``.syscall`` the system call's name, ``.log2`` the exponent ``N`` of
    ``~ 2^N``, ``.buckets=S`` the bucket's first value, ``stacktrace`` the frames as a tuple; ``.hex`` changes
    nothing. It is read with every ``ktrace.run()`` (in the same round trip), and again on access after
    anything else happened on the target (``inject()``, ``spawn()``, ``wait_for()``); :meth:`refresh` reads it
    now.

    ``hits`` is what the table counted, ``dropped`` the hits of new keys that found it full, ``total`` both:
    every event of the probe the trigger saw. With drops the table lacks keys: a key that is there is still
    exact, but listing the keys (iteration, ``len``, :attr:`counter`, a missing key) fails like a count
    assertion after lost events (``--ktrace-lost=warn``: a warning)."""

    source = "kernel"

    def __init__(self, spec: HistSpec, probe: str, owner: Optional[HistTriggers] = None, lost_policy: str = "fail"):
        self.spec = spec
        self.probe = probe  # how messages name it
        self._owner = owner
        self._lost_policy = lost_policy
        self._data = _EMPTY
        self._read = False

    # --- updating ---------------------------------------------------------------------------------------------
    def _update(self, data: HistData) -> None:
        self._data = data
        self._read = True

    def _current(self) -> HistData:
        if self._owner is not None:
            self._owner.sync(self)
        return self._data

    def refresh(self) -> HistResult:
        """Read the table now (one round trip)."""
        if self._owner is not None:
            self._owner.sync(self, force=True)
        return self

    # --- the totals: always readable ----------------------------------------------------------------------------
    @property
    def trigger(self) -> str:
        """The trigger line written to the event's ``trigger`` file."""
        return self.spec.command

    @property
    def hits(self) -> int:
        """Events counted in the table (``Totals: Hits``)."""
        return self._current().hits

    @property
    def dropped(self) -> int:
        """Events of new keys that found the table full (``Totals: Dropped``): 0 unless ``size`` was too small."""
        return self._current().dropped

    @property
    def total(self) -> int:
        """Every event the trigger saw: ``hits + dropped``."""
        data = self._current()
        return data.hits + data.dropped

    @property
    def entries(self) -> int:
        """How many entries (distinct keys) the table holds."""
        return self._current().count

    @property
    def size(self) -> int:
        """The table's size in entries (a power of two)."""
        return self.spec.size

    @property
    def complete(self) -> bool:
        """No hit was dropped: the table has every key."""
        return self._current().dropped == 0

    @property
    def text(self) -> str:
        """The table as the kernel printed it."""
        return self._current().text

    # --- the keys: complete or failing ----------------------------------------------------------------------------
    def _complete_entries(self) -> Mapping[Any, HistEntry]:
        __tracebackhide__ = True
        data = self._current()
        if data.dropped:
            message = self._dropped_message(data)
            if self._lost_policy != "warn":
                raise AssertionError(message)
            warnings.warn(pytest.PytestWarning(message), stacklevel=4)
        return data.entries

    def _dropped_message(self, data: HistData) -> str:
        return (
            f"hist({self.probe}): the kernel's table ({self.spec.size} entries) was full, so {data.dropped} of "
            f"{data.hits + data.dropped} events (of keys it had no room for) were dropped and the keys are "
            f"incomplete; ask for a larger size= (up to {MAX_SIZE})"
        )

    def __getitem__(self, key: Any) -> HistEntry:
        __tracebackhide__ = True
        data = self._current()
        found = data.entries.get(key)
        if found is not None:
            return found
        if data.dropped:
            self._complete_entries()  # a key may be missing because it was dropped: say so
        raise KeyError(key)

    def __iter__(self) -> Iterator[Any]:
        __tracebackhide__ = True
        return iter(list(self._complete_entries()))

    def __len__(self) -> int:
        __tracebackhide__ = True
        return len(self._complete_entries())

    @property
    def counter(self) -> Counter[Any]:
        """The hitcounts as a :class:`collections.Counter` (a copy)."""
        __tracebackhide__ = True
        return Counter({key: entry.hitcount for key, entry in self._complete_entries().items()})

    def sums(self, value: str) -> Counter[Any]:
        """The sums of ``value`` by key, as a :class:`collections.Counter` (a copy)."""
        __tracebackhide__ = True
        if value not in [v.name for v in self.spec.values]:
            raise KtraceError(f"hist({self.probe}) sums {[v.name for v in self.spec.values]}, not {value!r}")
        return Counter({key: entry.sums[value] for key, entry in self._complete_entries().items()})

    # a live view of the kernel's table: compared by identity (comparing contents would read the target)
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        data = self._data
        state = f"{data.count} entries, {data.hits} hits, {data.dropped} dropped" if self._read else "not read yet"
        return f"<HistResult {self.probe} {self.spec.command!r}: {state}>"


# ------------------------------------------------------------------------------------------------------ count_by
_CONVERSION = re.compile(r"%%|%[-+ #0]*\d*(?:\.\d+)?(?:hh|h|ll|l|L|z|j|t)?[a-zA-Z]")
_INT_CONVERSION = re.compile(r"%[-+ #0]*\d*(?:hh|h|ll|l|L|z|j|t)?[diu]")


def _printed_as_number(fmt: EventFormat, name: str) -> bool:
    """Whether the trace prints ``name`` as the number it holds (so its parsed event value is that number): a
    probe's integer argument unless it is printed as a symbol (``%pS``); a tracepoint's field printed by a decimal
    conversion of ``REC->name`` itself (not through __print_symbolic() and the like)."""
    text = fmt.print_fmt
    if fmt.is_probe:
        return not re.search(rf"\b{re.escape(name)}=%p", text)
    quoted, _, arguments = text.partition('",')
    match = re.search(rf"\b{re.escape(name)}=%", quoted)
    if match is None:
        return False
    position = len([c for c in _CONVERSION.findall(quoted[: match.end() - 1]) if c != "%%"])
    conversion = _CONVERSION.match(quoted, match.end() - 1)
    listed = _top_level_split(arguments)
    if conversion is None or position >= len(listed):
        return False
    argument = re.sub(r"^\([^()]*\)\s*", "", listed[position].strip())  # a cast
    return argument == f"REC->{name}" and _INT_CONVERSION.fullmatch(conversion.group()) is not None


def _top_level_split(text: str) -> list[str]:
    """A print fmt's arguments, split at the commas between them (not those inside a call)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def kernel_count_key(fmt: EventFormat, name: str) -> tuple[str, str]:
    """The hist key that counts ``count_by(probe, name)`` in the kernel, giving the values the probe's events hold
    (:data:`~pytest_ktrace._events.TASK_KEYS`), or ``""`` and why the events must be counted instead."""
    own = fmt.field(name) if not name.startswith("common_") else None
    if name == "task_pid" or (name == "pid" and own is None):
        return "common_pid", ""
    if name == "task_cpu" or (name == "cpu" and own is None):
        return "common_cpu", ""
    if name in TASK_KEYS or (name == "comm" and own is None):
        return "", (
            "the kernel names a task once, by its comm at the first hit (.execname), so hits after an exec "
            "would count under the old name"
        )
    if own is None:
        return "", ""  # no such field: count_by says so
    if own.is_string and not own.is_pointer_string:
        if fmt.is_probe or _printed_as_string(fmt, name):
            return name, ""
        return "", f"the trace does not print {name} as the string it holds"
    if own.is_integer and not own.is_array and _printed_as_number(fmt, name):
        return name, ""
    return "", f"the trace prints {name} ({own.ctype}) otherwise than as the number the kernel would count"


def _printed_as_string(fmt: EventFormat, name: str) -> bool:
    quoted = fmt.print_fmt.partition('",')[0]
    return re.search(rf"\b{re.escape(name)}=%s", quoted) is not None


# ----------------------------------------------------------------------------------------------- for the session
@dataclass(eq=False)
class _Trigger:
    result: HistResult
    view: Any  # the ProbeView it counts
    event_dir: str = ""  # group/event, fixed when armed
    armed: bool = False
    removal: Optional[Write] = None  # what teardown writes, once joined
    listeners: list[Callable[[HistResult], None]] = field(default_factory=list)


class HistTriggers:
    """The hist triggers of one test: arming ops folded into the session's arming batch, their removal in the
    teardown ledger's first stage (written before the batch runs), reads with each ``run()``.

    ``instance`` gives the instance's tracefs path; ``formats`` an event's format (``"group:event"``), once known;
    ``stale`` whether something may have changed on the target since the last read; ``arm`` arms what is pending
    (the session's ``arm()``); ``closed`` whether the test was torn down (nothing is read after that)."""

    def __init__(
        self,
        backend: Backend,
        *,
        instance: Callable[[], str],
        ledger: Any,
        formats: Callable[[str], Optional[EventFormat]],
        stale: Callable[[], bool],
        arm: Callable[[], None],
        closed: Callable[[], bool],
        lost_policy: str = "fail",
    ) -> None:
        self.backend = backend
        self._instance = instance
        self._ledger = ledger
        self._formats = formats
        self._stale = stale
        self._arm = arm
        self._closed = closed
        self._lost_policy = lost_policy
        self._triggers: list[_Trigger] = []
        self._fresh = False  # the last read came with a run(): publish() need not read again

    # --- as an aggregate of the session: read at its sync points (see publish) ---------------------------------
    keys: tuple[tuple[str, str], ...] = ()  # it reads no events

    def feed(self, key: tuple[str, str], event: Any) -> None:
        """Nothing: the kernel counted."""

    def reset(self) -> None:
        """Nothing: the kernel's tables are not recomputed from the trace."""

    # --- defining ---------------------------------------------------------------------------------------------
    def check_target(self, what: str) -> None:
        """:class:`HistUnavailable` unless the target has hist triggers."""
        info = self.backend.describe()
        if not info.has("hist"):
            raise HistUnavailable(
                f"{what}: {info.name} has no hist triggers: its tracefs README does not offer the hist trigger "
                "and its events have no hist file (a kernel built without CONFIG_HIST_TRIGGERS=y); "
                "ktrace.count_by() counts the streamed events there instead",
                target=info.name,
            )

    def hist(
        self,
        view: Any,
        keys: Union[str, Sequence[str]],
        values: Union[str, Sequence[str]] = (),
        *,
        filter: Optional[str] = None,
        sort: Union[str, Sequence[str], None] = None,
        size: Optional[int] = None,
        scope: str = "all",
    ) -> HistResult:
        """``ktrace.hist()``: the checks, then :meth:`add`."""
        what = f"hist({view.name})"
        self.check_target(what)
        if view._criteria:
            raise KtraceError(
                f"{what}: a where() view's criteria are Python matchers the kernel cannot evaluate: give the probe "
                "itself and the condition as filter= (the kernel's filter syntax)"
            )
        if scope == "run":
            raise KtraceError(
                f"{what}: with scope='run' nothing is traced before a command's pid is in set_event_pid, but a hist "
                "trigger counts from the moment it is set, every task's hits included; use scope='all' with "
                "filter= (common_pid, comm) for the tasks to count"
            )
        spec = hist_spec(keys, values, filter=filter, sort=sort, size=size, probe_filter=view.spec.filter)
        return self.add(view, spec, any_size=size is None)

    def count_by(self, view: Any, name: str, *, ran: bool, scope: str) -> Counted:
        """``count_by(probe, name)``: a :class:`Counted` the kernel fills (``source == "kernel"``) when it can;
        else an empty one for the session's streamed count (``source == "stream"``, ``why`` says why)."""
        info = self.backend.describe()
        why = ""
        if not info.has("hist"):
            why = f"{info.name} has no hist triggers (CONFIG_HIST_TRIGGERS)"
        elif view._criteria:
            why = "a where() view's criteria are Python matchers the kernel cannot evaluate"
        elif scope == "run":
            why = "with scope='run' the kernel would count every task's hits before the first command"
        elif ran:
            why = "registered after a command ran: the kernel counts from when its trigger is set, the trace has more"
        if why:
            return _streamed(why)
        group, event = view.spec.group, view.spec.event
        if self._formats(f"{group}:{event}") is None:
            self._arm()  # the field's type decides (and count_by names a field the probe has)
        fmt = self._formats(f"{group}:{event}")
        key, why = kernel_count_key(fmt, name) if fmt is not None else ("", "")
        if not key:
            return _streamed(why)
        result = self.add(view, hist_spec(key, size=COUNT_SIZE, probe_filter=view.spec.filter), any_size=True)
        counted = Counted()
        counted.source = "kernel"
        label = f"count_by({view.name}, {name!r})"

        def follow(result: HistResult) -> None:
            data = result._data
            counted.clear()
            counted.update({entry_key: entry.hitcount for entry_key, entry in data.entries.items()})
            if data.dropped > counted.dropped:
                warnings.warn(
                    pytest.PytestWarning(
                        f"{label}: the kernel's table ({result.spec.size} values) was full, so {data.dropped} "
                        f"events of values it had no room for are not counted (counter.dropped); "
                        f"ktrace.hist({view.name}, keys=[{key!r}], size=...) can hold up to {MAX_SIZE}"
                    ),
                    stacklevel=2,
                )
            counted.dropped = data.dropped

        self.listen(result, follow)
        self._arm()  # the trigger is set now: it counts what the stream would have seen from here
        return counted

    def add(self, view: Any, spec: HistSpec, *, any_size: bool = False) -> HistResult:
        """The result of ``spec`` on ``view``'s probe. The kernel keeps one trigger per keys, values, sort and filter
        whatever their sizes (another is EEXIST): asked again, it is the same result (of the size first asked, when
        ``any_size``)."""
        for trigger in self._triggers:
            if trigger.view.spec is not view.spec or replace(trigger.result.spec, size=spec.size) != spec:
                continue
            if trigger.result.spec.size == spec.size or any_size:
                return trigger.result
            raise KtraceError(
                f"hist({view.name}): the kernel keeps one table per keys, values, sort and filter, and this one was "
                f"asked with size={trigger.result.spec.size} already (count_by() asks for {COUNT_SIZE})"
            )
        result = HistResult(spec, view.name, self, self._lost_policy)
        self._triggers.append(_Trigger(result, view))
        return result

    def listen(self, result: HistResult, listener: Callable[[HistResult], None]) -> None:
        """``listener`` is called after each read of ``result`` (count_by's counter follows it)."""
        for trigger in self._triggers:
            if trigger.result is result:
                trigger.listeners.append(listener)

    @property
    def pending(self) -> bool:
        return any(not trigger.armed for trigger in self._triggers)

    # --- arming -----------------------------------------------------------------------------------------------
    def _trigger_file(self, trigger: _Trigger) -> str:
        return f"{self._instance()}/events/{trigger.event_dir}/trigger"

    def arm_ops(self) -> list[Op]:
        """The writes that set the pending triggers, for the end of an arming batch (after the probes exist).
        Their removal joins teardown first: a batch that dies half way is still undone."""
        ops: list[Op] = []
        for trigger in self._triggers:
            if trigger.armed:
                continue
            trigger.event_dir = trigger.view.spec.event_dir
            path = self._trigger_file(trigger)
            removal = Write(path, trigger.result.spec.removal)
            if trigger.removal != removal:
                if trigger.removal is not None:
                    self._ledger.forget("disable", trigger.removal)
                self._ledger.join("disable", [removal])
                trigger.removal = removal
            ops.append(Write(path, trigger.result.spec.command))
        return ops

    def read_ops(self) -> list[Op]:
        """One read of the ``hist`` file of each event with an armed trigger."""
        events = dict.fromkeys(trigger.event_dir for trigger in self._triggers if trigger.armed)
        return [Read(f"{self._instance()}/events/{event_dir}/hist") for event_dir in events]

    def take(self, results: Sequence[OpResult]) -> None:
        """What a batch (an arming batch, a run's reads) says about the triggers: set or refused, and the tables."""
        read = False
        for result in results:
            op = result.op
            if isinstance(op, Write) and op.path.endswith("/trigger"):
                for trigger in self._triggers:
                    if not trigger.armed and op.path == self._trigger_file(trigger):
                        if op.data != trigger.result.spec.command:
                            continue
                        if not result.ok:
                            self._refused(trigger, result)
                        trigger.armed = True
            elif isinstance(op, Read) and op.path.endswith("/hist") and result.ok:
                self._publish(op.path, result.data)
                read = True
        if read:
            self._fresh = True

    def _refused(self, trigger: _Trigger, result: OpResult) -> None:
        __tracebackhide__ = True
        self._triggers.remove(trigger)
        if trigger.removal is not None:
            self._ledger.forget("disable", trigger.removal)  # the kernel refuses it too: nothing to remove
        command = trigger.result.spec.command
        log = _error_log_entry(self.backend, f"{self._instance()}/error_log", command)
        said = log.splitlines()[0].split(" error: ", 1)[-1] if log else f"{result.errno_name} {result.error}"
        hint = ""
        if not log and trigger.result.spec.filter:
            hint = " (the kernel logs nothing for a trigger's filter: check the filter's fields and syntax)"
        raise ProbeRejected(
            f"the kernel rejected hist({trigger.result.probe}): {said}{hint}",
            command=command,
            path=result.op.path,
            errno_name=result.errno_name,
            kernel_log=log,
            where=getattr(trigger.view.spec, "where", ""),
        )

    # --- reading ----------------------------------------------------------------------------------------------
    def _publish(self, path: str, text: str) -> None:
        tables = parse_hist(text)
        for trigger in self._triggers:
            if not trigger.armed or not path.endswith(f"/events/{trigger.event_dir}/hist"):
                continue
            spec = trigger.result.spec
            table = next((table for table in tables if spec.matches(table.info)), None)
            if table is None:
                raise KtraceError(
                    f"hist({trigger.result.probe}): the event's hist file has no table of {spec.command!r} "
                    "(was the trigger removed behind the test's back?)"
                )
            group, _, event = trigger.event_dir.partition("/")
            trigger.result._update(decode(spec, table, self._formats(f"{group}:{event}")))
            for listener in trigger.listeners:
                listener(trigger.result)

    def refresh(self, *, arm: bool = True) -> None:
        """Read every table now (one batch), the pending triggers armed first unless ``arm`` is False."""
        if self._closed():
            return
        if arm:
            self._arm()
        ops = self.read_ops()
        if not ops:
            return
        results = self.backend.apply(ops)
        for result in results:
            if not result.ok:
                raise KtraceError(f"reading {result.op.path} failed: {result.errno_name} {result.error}")
        self.take(results)

    def sync(self, result: HistResult, *, force: bool = False) -> None:
        """Before ``result`` is looked at: read when it never was, or when the target may have changed."""
        if self._closed():
            return
        if force or not result._read or self._stale() or self.pending:
            self.refresh()

    def publish(self) -> None:
        """A sync point of the session's aggregates: the tables are read unless a ``run()`` just brought them."""
        if self._fresh:
            self._fresh = False
            return
        if any(trigger.listeners for trigger in self._triggers):
            self.refresh(arm=False)  # a sync point may hold the stream's lock: arming waits for the next arm()
        self._fresh = False


def _streamed(why: str) -> Counted:
    counted = Counted()
    counted.why = why
    return counted


def _error_log_entry(backend: Backend, path: str, command: str) -> str:
    """The instance's error_log entry for ``command``: the last whose ``Command:`` line is it, with its caret."""
    lines = backend.apply([Read(path, missing_ok=True)])[0].data.splitlines()
    wanted = "  Command: " + command
    for index in range(len(lines) - 1, 0, -1):
        if lines[index] == wanted and index + 1 < len(lines):
            return "\n".join(lines[index - 1 : index + 2])
    return ""
