"""Hist triggers in a fake tracefs: ``hist:...`` written to an event's ``trigger`` file, the table it keeps per
trace array and event, fed by the event's hits, and the event's ``hist`` file printed in the kernel's format.

From kernel/trace/trace_events_hist.c and tracing_map.c (v6.1 and v6.12), checked against the Debian 6.1 guests
(``tests/data/hist``):

* the line is split like event_hist_trigger_parse(): the filter after an ``if`` with blanks around it, the
  attributes at ``:`` (``keys=``/``key=``, ``vals=``/``val=``/``values=``, ``sort=``, ``size=``); values are
  checked first, then keys, then sort keys, each error logged in the instance's ``error_log`` (``hist:SYS:EVENT:
  error: ...``, the caret at the first occurrence of the culprit in the command, as errpos() finds it); a size out
  of 128..131072, more than 3 keys or 2 values, keys over HIST_KEY_SIZE_MAX and a bad filter fail with EINVAL and
  log nothing;
* a trigger that matches one already there (keys, values, sort and filter: not size) is EEXIST, "Hist trigger
  already exists"; ``!hist:...`` removes the one it matches and is no error when none does;
* a trigger soft-enables its event: it is listed in ``set_event``, ``enable`` reads ``0*``/``1*``, and the event
  cannot be removed (EBUSY). It counts every hit of its event in its trace array that passes the array's pid
  filter and its own filter, whether or not the event is enabled or tracing is on, before the event's filter;
* a table holds ``size`` entries; a hit of a new key once it is full is dropped (``Dropped``), a hit of a key it
  has still counts; keys and sums are u64 (a signed field's value sign-extended); ``.execname`` names an entry
  after the comm of the task that created it;
* the ``hist`` file prints each table (``\\n\\n`` between them) sorted on the sort keys; entries whose sort keys are
  equal come in insertion order here (the kernel's order of ties follows its hash table).

Not modelled (FakeUnsupportedError): named triggers, variables, expressions, actions (``onmatch`` and the rest),
``pause``/``cont``/``clear``, ``clock=``, ``.syscall`` (the fake has no system call table), ``.percent``,
``.graph``, string values.
"""

from __future__ import annotations

import errno
import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from ._events import EventDefinition
from ._filters import CompiledFilter, FilterError
from ._formats import EventField
from ._kernel import FakeKernel
from ._syscall_errors import FakeOSError, FakeUnsupportedError
from ._trace_arrays import TraceArray

__all__ = ["HistTables"]

_U64 = 1 << 64
_KEYS_MAX = 3  # TRACING_MAP_KEYS_MAX
_VALS_MAX = 3  # TRACING_MAP_VALS_MAX, hitcount included
_SORT_KEYS_MAX = 2
_BITS_MIN, _BITS_MAX, _BITS_DEFAULT = 7, 17, 11
_MAX_FILTER_STR_VAL = 256
_STACKTRACE_DEPTH = 16
_KEY_SIZE_MAX = _MAX_FILTER_STR_VAL + _STACKTRACE_DEPTH * 8  # HIST_KEY_SIZE_MAX
_COMMON = {"common_type": 2, "common_flags": 1, "common_preempt_count": 1, "common_pid": 4}
_UNMODELLED_MODIFIERS = ("syscall", "percent", "graph")

# err_text[] of trace_events_hist.c
_FIELD_NOT_FOUND = "Couldn't find field"
_BAD_FIELD_MODIFIER = "Invalid field modifier"
_TRIGGER_EEXIST = "Hist trigger already exists"
_EMPTY_ASSIGNMENT = "Empty assignment"
_INVALID_SORT_MODIFIER = "Invalid sort modifier"
_EMPTY_SORT_FIELD = "Empty sort field"
_TOO_MANY_SORT_FIELDS = "Too many sort fields (Max = 2)"
_INVALID_SORT_FIELD = "Sort field must be a key or a val"


class _Refused(Exception):
    """A refused trigger: the errno, and the error_log message with its position (None: nothing logged)."""

    def __init__(self, code: int, message: Optional[str] = None, position: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.position = position


@dataclass(frozen=True)
class _Field:
    """One key or value: what it reads and how it prints."""

    name: str  # as hist_field_name() gives it (sort keys compare with it)
    source: str  # an event field's name, or common_pid/common_cpu/common_timestamp/stacktrace/common_* for the rest
    modifier: str = ""
    buckets: int = 0
    event_field: Optional[EventField] = None
    size: int = 8  # bytes of the key (ALIGN(size, 8); strings MAX_FILTER_STR_VAL)
    signed: bool = False
    is_string: bool = False

    @property
    def is_stacktrace(self) -> bool:
        return self.source == "stacktrace"

    def shown(self, version: tuple[int, int]) -> str:
        """As the trigger info prints it (hist_field_print())."""
        if self.is_stacktrace:
            return "common_stacktrace" if version >= (6, 5) else "stacktrace"
        text = self.name
        if self.modifier == "buckets":
            return f"{text}.buckets={self.buckets}"
        return f"{text}.{self.modifier}" if self.modifier else text


@dataclass
class _Entry:
    hitcount: int = 0
    sums: list[int] = field(default_factory=list)
    comm: str = ""


@dataclass
class FakeHist:
    """One hist trigger of one event in one trace array, with its table."""

    keys: tuple[_Field, ...]
    values: tuple[_Field, ...]
    sort: tuple[tuple[int, bool], ...]  # (field index: 0 hitcount, then values, then keys; descending)
    bits: int
    filter_text: str
    filter: Optional[CompiledFilter]
    table: dict[tuple[Any, ...], _Entry] = field(default_factory=dict)
    hits: int = 0
    drops: int = 0

    @property
    def fields(self) -> tuple[_Field, ...]:
        """hitcount's place aside: the values, then the keys (the kernel's field order)."""
        return (*self.values, *self.keys)

    def matches(self, other: FakeHist) -> bool:
        """hist_trigger_match(): the same fields with the same flags, sort keys and filter (not the size)."""
        return (
            self.keys == other.keys
            and self.values == other.values
            and self.sort == other.sort
            and self.filter_text == other.filter_text
        )

    def info(self, version: tuple[int, int]) -> str:
        """event_hist_trigger_print(), without the state mark."""
        keys = ",".join(key.shown(version) for key in self.keys)
        values = ",".join(["hitcount", *(value.shown(version) for value in self.values)])
        fields = self.fields
        sort = ",".join(
            ("hitcount" if index == 0 else fields[index - 1].shown(version)) + (".descending" if down else "")
            for index, down in self.sort
        )
        line = f"hist:keys={keys}:vals={values}:sort={sort}:size={1 << self.bits}"
        return line + (f" if {self.filter_text}" if self.filter_text else "")

    # --- counting ---------------------------------------------------------------------------------------------
    def hit(self, key: tuple[Any, ...], sums: Sequence[int], comm: str) -> None:
        entry = self.table.get(key)
        if entry is None:
            if len(self.table) >= 1 << self.bits:
                self.drops += 1  # tracing_map_insert() found no free element
                return
            entry = self.table[key] = _Entry(0, [0] * len(sums), comm)
        self.hits += 1
        entry.hitcount += 1
        entry.sums = [(total + value) % _U64 for total, value in zip(entry.sums, sums)]

    # --- printing ---------------------------------------------------------------------------------------------
    def render(self, version: tuple[int, int], symbolize: Callable[[int, bool], Optional[str]]) -> str:
        lines = [f"# event histogram\n#\n# trigger info: {self.info(version)} [active]\n#\n\n"]
        for key, entry in self._sorted():
            lines.append(self._row(key, entry, version, symbolize))
        lines.append(f"\nTotals:\n    Hits: {self.hits}\n    Entries: {len(self.table)}\n    Dropped: {self.drops}\n")
        return "".join(lines)

    def _sorted(self) -> list[tuple[tuple[Any, ...], _Entry]]:
        items = list(self.table.items())
        fields = self.fields
        for index, descending in reversed(self.sort):  # stable: the first sort key decides last

            def sort_value(item: tuple[tuple[Any, ...], _Entry], index: int = index) -> Any:
                key, entry = item
                if index == 0:
                    return entry.hitcount
                if index <= len(self.values):
                    return entry.sums[index - 1]
                return _sortable(key[index - 1 - len(self.values)], fields[index - 1])

            items.sort(key=sort_value, reverse=descending)
        return items

    def _row(
        self,
        key: tuple[Any, ...],
        entry: _Entry,
        version: tuple[int, int],
        symbolize: Callable[[int, bool], Optional[str]],
    ) -> str:
        parts = []
        multiline = False
        for index, (field_, value) in enumerate(zip(self.keys, key)):
            prefix = ", " if index else ""
            if field_.is_stacktrace:
                label = "common_stacktrace" if version >= (6, 5) else "stacktrace"
                frames = "".join(f"{' ' * 9}{frame}\n" for frame in value)
                parts.append(f"{prefix}{label}:\n{frames}")
                multiline = True
            else:
                parts.append(f"{prefix}{field_.name}: {_key_text(field_, value, entry, symbolize)}")
        text = "{ " + "".join(parts) + ("" if multiline else " ") + "}"
        text += f" hitcount: {entry.hitcount:10d}"
        for field_, total in zip(self.values, entry.sums):
            text += f"  {field_.name}: " + (f"{total:10x}" if field_.modifier == "hex" else f"{total:10d}")
        return text + "\n"


def _sortable(value: Any, field_: _Field) -> Any:
    if field_.is_stacktrace:
        return tuple(value)
    return value


def _key_text(field_: _Field, value: Any, entry: _Entry, symbolize: Callable[[int, bool], Optional[str]]) -> str:
    """hist_trigger_print_key() for one (non-stack) key."""
    modifier = field_.modifier
    if field_.is_string:
        return f"{value:<50}"
    if modifier == "hex":
        return f"{value:x}"
    if modifier in ("sym", "sym-offset"):
        name = symbolize(value, modifier == "sym-offset") or f"0x{value:x}"
        return f"[{value:x}] {name:<{45 if modifier == 'sym' else 55}}"
    if modifier == "execname":
        return f"{entry.comm:<16}[{value:10d}]"
    if modifier == "log2":
        return f"~ 2^{value:<2d}"
    if modifier == "buckets":
        return f"~ {value}-{value + field_.buckets - 1}"
    return f"{value:10d}"


def _u64(value: Any) -> int:
    """A value as the kernel keeps it: u64, a negative one sign-extended."""
    return value % _U64 if isinstance(value, int) else 0


def _log2(value: int) -> int:
    """ilog2(roundup_pow_of_two(value)): 0 and 1 give 0."""
    return (value - 1).bit_length() if value > 1 else 0


def _errpos(command: str, text: str) -> int:
    found = command.find(text)
    return found if found >= 0 else 0


class HistTables:
    """The hist triggers of every trace array over one kernel; each array's go with it."""

    def __init__(self, kernel: FakeKernel) -> None:
        self._kernel = kernel
        self._by_array: weakref.WeakKeyDictionary[TraceArray, dict[str, list[FakeHist]]] = weakref.WeakKeyDictionary()

    @property
    def _version(self) -> tuple[int, int]:
        return self._kernel.snapshot.version

    def triggers(self, array: TraceArray, key: str) -> list[FakeHist]:
        return self._by_array.get(array, {}).get(key, [])

    def soft_enabled(self, array: TraceArray, key: str) -> bool:
        """A hist trigger holds the event in soft mode (listed as enabled, ``enable`` shows ``*``)."""
        return bool(self.triggers(array, key))

    # --- files ------------------------------------------------------------------------------------------------
    def read(self, array: TraceArray, definition: EventDefinition) -> str:
        """The event's ``hist`` file: its tables, in the order their triggers were set."""
        tables = [hist.render(self._version, self._kernel.symbolize) for hist in self.triggers(array, definition.key)]
        return "\n\n".join(tables)

    def trigger_lines(self, array: TraceArray, key: str) -> list[str]:
        return [f"{hist.info(self._version)} [active]\n" for hist in self.triggers(array, key)]

    def write(self, path: str, array: TraceArray, definition: EventDefinition, text: str) -> None:
        """``hist:...`` or ``!hist:...`` written to the event's ``trigger`` file (already stripped)."""
        remove = text.startswith("!")
        command, _, rest = text.lstrip("!").partition(":") if ":" in text else (text.lstrip("!"), "", "")
        if command != "hist" or not rest.strip():
            raise FakeOSError(errno.EINVAL, path)
        logged = f"hist:{rest.lstrip(' ')}"  # last_cmd: what follows the command, as the kernel keeps it
        try:
            hist = self._parse(path, definition, rest.strip(" \t"), logged)
        except _Refused as refused:
            if refused.message is not None:
                self._log(array, definition, logged, refused.message, refused.position)
            raise FakeOSError(refused.code, path) from None
        events = self._by_array.setdefault(array, {})
        existing = events.setdefault(definition.key, [])
        for index, other in enumerate(existing):
            if other.matches(hist):
                if remove:
                    del existing[index]
                    definition.open_references -= 1
                    if not existing:
                        del events[definition.key]
                    return
                self._log(array, definition, logged, _TRIGGER_EEXIST, 0)
                raise FakeOSError(errno.EEXIST, path)
        if remove:
            return  # nothing matched: no error, nothing removed
        existing.append(hist)
        definition.open_references += 1  # a registered probe in use: its removal is EBUSY

    def clear(self, array: TraceArray, definitions: Mapping[str, EventDefinition]) -> None:
        """The array goes (its instance is removed): its triggers go with it (clear_event_triggers())."""
        for key, hists in self._by_array.pop(array, {}).items():
            definition = definitions.get(key)
            if definition is not None:
                definition.open_references -= len(hists)

    def _log(self, array: TraceArray, definition: EventDefinition, command: str, message: str, pos: int) -> None:
        location = f"hist:{definition.system}:{definition.name}"
        caret = " " * (len("  Command: ") + pos) + "^\n"
        array.error_log.append(
            f"{self._kernel.timestamp_prefix()}{location}: error: {message}\n  Command: {command}\n{caret}"
        )

    # --- counting ---------------------------------------------------------------------------------------------
    def hit(
        self,
        array: TraceArray,
        key: str,
        values: Mapping[str, Any],
        filter_values: Mapping[str, Union[int, str]],
        *,
        pid: int,
        comm: str,
        cpu: int,
        timestamp: float,
        stack: Sequence[str],
    ) -> None:
        """Event ``key`` fired: every hist trigger of it in ``array`` counts the hit (trace_event_buffer_reserve()
        returns nothing for a task the pid filter excludes, so no trigger sees it)."""
        hists = self.triggers(array, key)
        if not hists or (array.pids and pid not in array.pids):
            return
        for hist in hists:
            if hist.filter is not None and not hist.filter.matches(filter_values):
                continue
            fields = {"pid": pid, "cpu": cpu, "ns": round(timestamp * 1e9), "stack": tuple(stack)}
            row = tuple(_read(key_field, values, filter_values, fields) for key_field in hist.keys)
            sums = [_u64(_read(value, values, filter_values, fields)) for value in hist.values]
            hist.hit(row, sums, comm)

    # --- parsing ----------------------------------------------------------------------------------------------
    def _parse(self, path: str, definition: EventDefinition, param_and_filter: str, logged: str) -> FakeHist:
        param, filter_text = _split_filter(param_and_filter)
        param = param.replace(".sym-offset", ".symXoffset")
        keys_str: Optional[str] = None
        vals_str: Optional[str] = None
        sort_str: Optional[str] = None
        bits = _BITS_DEFAULT
        for part in param.split(":"):
            name, equals, rhs = part.partition("=")
            if equals:
                if not rhs:
                    raise _Refused(errno.EINVAL, _EMPTY_ASSIGNMENT, _errpos(logged, part))
                if name in ("key", "keys"):
                    keys_str = rhs
                elif name in ("val", "vals", "values"):
                    vals_str = rhs
                elif name == "sort":
                    sort_str = rhs
                elif name == "size":
                    bits = _map_bits(rhs)
                else:
                    raise FakeUnsupportedError(path, f"hist trigger attribute {part!r} (names, clocks, variables)")
            elif part in ("pause", "cont", "continue", "clear") or part.startswith(("onmatch(", "onmax(", "onchange(")):
                raise FakeUnsupportedError(path, f"hist trigger {part!r}")
            else:
                raise _Refused(errno.EINVAL)
        if keys_str is None:
            raise _Refused(errno.EINVAL)
        values = self._values(path, definition, vals_str, logged)
        keys = self._keys(path, definition, keys_str, logged)
        sort = self._sort(sort_str, (*values, *keys), logged)
        compiled: Optional[CompiledFilter] = None
        if filter_text:
            try:
                compiled = self._kernel.compile_filter(filter_text, definition.filter_fields())
            except FilterError:
                raise _Refused(errno.EINVAL) from None
        return FakeHist(keys, values, sort, bits, filter_text, compiled)

    def _values(self, path: str, definition: EventDefinition, text: Optional[str], logged: str) -> tuple[_Field, ...]:
        if text is None:
            return ()
        values: list[_Field] = []
        parts = text.split(",")
        for index, part in enumerate(parts):
            if part == "hitcount":
                continue
            if len(values) == _VALS_MAX - 1:
                if parts[index:] != ["hitcount"]:
                    raise _Refused(errno.EINVAL)  # create_val_fields(): what is left over
                break
            value = self._field(path, definition, part, logged, key=False)
            if value.modifier in ("buckets", "log2", "sym", "sym-offset") or value.is_stacktrace:
                raise _Refused(errno.EINVAL, _BAD_FIELD_MODIFIER, _errpos(logged, part))
            if value.is_string:
                raise FakeUnsupportedError(path, f"hist value {part!r}: a string summed")
            values.append(value)
        return tuple(values)

    def _keys(self, path: str, definition: EventDefinition, text: str, logged: str) -> tuple[_Field, ...]:
        parts = text.split(",")
        if len(parts) > _KEYS_MAX:
            # create_key_fields() parses the first three, then fails on what is left
            for part in parts[:_KEYS_MAX]:
                self._field(path, definition, part, logged, key=True)
            raise _Refused(errno.EINVAL)
        keys = tuple(self._field(path, definition, part, logged, key=True) for part in parts)
        if sum(key.size for key in keys) > _KEY_SIZE_MAX:
            raise _Refused(errno.EINVAL)
        return keys

    def _field(self, path: str, definition: EventDefinition, text: str, logged: str, *, key: bool) -> _Field:
        """parse_field() for one key or value (``text`` with ``.symXoffset`` for ``.sym-offset``)."""
        if key and text == "stacktrace":
            return _Field("stacktrace", "stacktrace", size=_STACKTRACE_DEPTH * 8)
        if re.search(r"[-+*/$()]", text.replace("symXoffset", "")):
            raise FakeUnsupportedError(path, f"hist field {text!r}: expressions and variables")
        name, dot, modifier = text.partition(".")
        modifier, buckets = _modifier(path, name, modifier, logged) if dot else ("", 0)
        if name == "common_timestamp":
            return _Field(name, name, modifier, buckets)
        if name in ("common_cpu", "cpu", "CPU"):
            return _Field("common_cpu", "common_cpu", modifier, buckets, signed=True)
        if name in _COMMON:
            return _Field(name, name, modifier, buckets, signed=name == "common_pid")
        found = next((f for f in definition.layout.fields if f.name == name), None)
        if found is None or not found.size:
            raise _Refused(errno.EINVAL, _FIELD_NOT_FOUND, _errpos(logged, name))
        if found.is_string:
            return _Field(name, name, modifier, buckets, found, _MAX_FILTER_STR_VAL, False, True)
        return _Field(name, name, modifier, buckets, found, 8, found.signed and "[" not in found.c_type)

    def _sort(self, text: Optional[str], fields: tuple[_Field, ...], logged: str) -> tuple[tuple[int, bool], ...]:
        """create_sort_keys(): hitcount by default; a key or value by its name, ascending unless ``.descending``."""
        if text is None:
            return ((0, False),)
        keys: list[tuple[int, bool]] = []
        parts = text.split(",")
        for index, part in enumerate(parts[:_SORT_KEYS_MAX]):
            if not part:
                raise _Refused(errno.EINVAL, _EMPTY_SORT_FIELD, _errpos(logged, "sort="))
            if index == _SORT_KEYS_MAX - 1 and len(parts) > _SORT_KEYS_MAX:
                raise _Refused(errno.EINVAL, _TOO_MANY_SORT_FIELDS, _errpos(logged, "sort="))
            name, dot, order = part.partition(".")
            if not name:
                raise _Refused(errno.EINVAL, _EMPTY_SORT_FIELD, _errpos(logged, "sort="))
            if dot and order not in ("descending", "ascending"):
                position = _errpos(logged, order)
                if name == "hitcount" or any(f.name == name for f in fields):
                    raise _Refused(errno.EINVAL, _INVALID_SORT_MODIFIER, position)
            descending = order == "descending"
            if name == "hitcount":
                keys.append((0, descending))
                continue
            found = next((i for i, f in enumerate(fields) if f.name == name), None)
            if found is None:
                raise _Refused(errno.EINVAL, _INVALID_SORT_FIELD, _errpos(logged, name))
            keys.append((found + 1, descending))
        return tuple(keys)


def _modifier(path: str, name: str, modifier: str, logged: str) -> tuple[str, int]:
    """parse_field()'s modifiers: (the modifier, the bucket size of ``buckets=``)."""
    if modifier == "symXoffset":
        return "sym-offset", 0
    if modifier.startswith("bucket"):
        match = re.fullmatch(r"buckets?=(\w+)", modifier)
        try:
            buckets = int(match.group(1), 0) if match else 0
        except ValueError:
            buckets = 0
        if not buckets:
            raise _Refused(errno.EINVAL, _BAD_FIELD_MODIFIER, _errpos(logged, modifier[6:]))
        return "buckets", buckets
    if modifier in _UNMODELLED_MODIFIERS:
        raise FakeUnsupportedError(path, f"hist modifier .{modifier}")
    known = ("hex", "sym", "execname", "log2", "usecs")
    if modifier not in known or (modifier == "execname" and name != "common_pid"):
        raise _Refused(errno.EINVAL, _BAD_FIELD_MODIFIER, _errpos(logged, modifier))
    return modifier, 0


def _split_filter(text: str) -> tuple[str, str]:
    """event_hist_trigger_parse(): the trigger and its filter, at an ``if`` with a blank on each side."""
    start = 0
    while True:
        found = text.find("if", start)
        if found < 0:
            return text, ""
        if found == 0:
            raise _Refused(errno.EINVAL)
        if text[found - 1] not in " \t":
            start = found + 1
            continue
        if found >= len(text) - 3:
            raise _Refused(errno.EINVAL)
        if text[found + 2] not in " \t":
            start = found + 1
            continue
        return text[: found - 1].strip(" \t"), text[found + 2 :].strip(" \t")


def _map_bits(text: str) -> int:
    """parse_map_size(): the size rounded up to a power of two, 128..131072 (EINVAL otherwise, nothing logged)."""
    try:
        size = int(text, 0)
    except ValueError:
        raise _Refused(errno.EINVAL) from None
    bits = (size - 1).bit_length() if size > 1 else 0
    if not _BITS_MIN <= bits <= _BITS_MAX:
        raise _Refused(errno.EINVAL)
    return bits


def _read(
    field_: _Field, values: Mapping[str, Any], filter_values: Mapping[str, Union[int, str]], task: Mapping[str, Any]
) -> Any:
    """What one key or value reads from a hit, as the kernel keeps it (u64, or a string)."""
    source = field_.source
    if source == "stacktrace":
        return tuple(task["stack"][:_STACKTRACE_DEPTH])
    if source == "common_pid":
        raw: Any = task["pid"]
    elif source == "common_cpu":
        raw = task["cpu"]
    elif source == "common_timestamp":
        raw = task["ns"] // 1000 if field_.modifier == "usecs" else task["ns"]
    elif source in _COMMON:
        raw = filter_values.get(source, 0)
    else:
        raw = values.get(source)
    if field_.is_string:
        return (raw if isinstance(raw, str) else "")[: _MAX_FILTER_STR_VAL - 1]
    if isinstance(raw, tuple):
        raw = raw[0] if raw else 0  # an array: its first element's bits (the kernel reads the field's first word)
    number = _u64(raw)
    if field_.modifier == "log2":
        return _log2(number)
    if field_.modifier == "buckets":
        return number // field_.buckets * field_.buckets
    return number
