"""What an event's ``hist`` file says: :func:`parse_hist` reads its tables (one per hist trigger,
kernel/trace/trace_events_hist.c ``hist_trigger_show()``), :func:`decode` types one table's rows with the event's
format, and :class:`HistResult` is what the test holds (a mapping from keys to :class:`HistEntry`, ``hits``,
``dropped``, ``total``, ``entries``, a ``counter`` view), updated at the session's sync points.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import pytest

from ._errors import KtraceError, hide_for_ktrace_errors
from ._formats import EventFormat, FieldFormat
from ._hist_spec import MAX_SIZE, HistField, HistSpec, Task

if TYPE_CHECKING:
    from ._hist import HistTriggers

__all__ = [
    "HistEntry",
    "HistResult",
    "HistRow",
    "HistTable",
    "decode",
    "parse_hist",
]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_U64 = 1 << 64  # keys and sums are printed as u64


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
