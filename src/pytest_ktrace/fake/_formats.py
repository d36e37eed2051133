"""Field layouts and ``format`` files of events, as the kernel lays them out.

Tracepoint events of a snapshot keep the exact text the target printed; this module reads their fields back with
:func:`pytest_ktrace._parse.parse_format`.  Probe events get a layout computed the way ``trace_probe.c`` does it:

* the record starts with ``struct trace_entry`` (8 bytes), then ``unsigned long __probe_ip`` for entry probes or
  ``__probe_func`` + ``__probe_ret_ip`` for return probes (``kprobe_trace_entry_head`` and
  ``uprobe_trace_entry_head`` have the same shape on 64-bit);
* the arguments follow **packed, without alignment** (``parg->offset = *size; *size += type->size * count``),
  so a ``u8`` followed by a ``u64`` puts the ``u64`` at an odd offset;
* each argument's field type is the fetch type's ``fmttype``: ``x8``/``char`` show as ``u8``, ``symbol`` as
  ``u64``, a bitfield as its container (``b4@2/32`` is ``u32``), strings as ``__data_loc char[]`` (size 4,
  ``signed:1`` because the string fetch type is declared signed);
* an array ``T[N]`` becomes the type ``T[N]`` with ``len`` 0, which ``f_show()`` prints as ``T name[]``, while a
  string array keeps the ``__data_loc char[][N]`` type text (f_show never splits a ``__data_loc`` type);
* the print fmt is ``__set_print_fmt()``'s.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Optional

from .._formats import EventFormat, parse_format
from ._grammar import ProbeCommand

__all__ = [
    "COMMON_FIELDS",
    "PROBE_HEADER_FIELDS",
    "EventField",
    "FetchTypeInfo",
    "fetch_type_info",
    "fields_of_format",
    "format_file_text",
    "probe_fields",
    "probe_print_fmt",
]


@dataclass(frozen=True)
class EventField:
    """One field of an event record.

    ``c_type`` is the type text the kernel keeps for the field (``u8[3]``, ``__data_loc char[]``); ``fetch_type``
    names the probe fetch type whose printer formats it in the default output (``None`` for tracepoint fields);
    ``count`` is the array length of a probe argument (0 when it is not an array).
    """

    name: str
    c_type: str
    offset: int
    size: int
    signed: bool
    fetch_type: Optional[str] = None
    count: int = 0

    @property
    def is_string(self) -> bool:
        """Whether the kernel filters the field as a string (filter_assign_type())."""
        text = self.c_type
        if ("__data_loc" in text or "__rel_loc" in text) and "char" in text:
            return True
        if "[" in text and "char" in text:
            return True
        return text in ("char *", "const char *")

    def format_line(self) -> str:
        """The field's line in the ``format`` file (f_show())."""
        bracket = self.c_type.find("[")
        if bracket < 0 or self.c_type.startswith("__data_loc"):
            declaration = f"{self.c_type} {self.name}"
        else:
            # Probe arrays are defined with len 0, so f_show prints "T name[]" whatever N is.
            declaration = f"{self.c_type[:bracket]} {self.name}[]"
        return f"\tfield:{declaration};\toffset:{self.offset};\tsize:{self.size};\tsigned:{int(self.signed)};"


#: struct trace_entry, shared by every event (ftrace_common_fields).
COMMON_FIELDS: tuple[EventField, ...] = (
    EventField("common_type", "unsigned short", 0, 2, False),
    EventField("common_flags", "unsigned char", 2, 1, False),
    EventField("common_preempt_count", "unsigned char", 3, 1, False),
    EventField("common_pid", "int", 4, 4, True),
)

_TRACE_ENTRY_SIZE = 8
_LONG_SIZE = 8

#: The fixed fields of probe records, keyed by "is a return probe".
PROBE_HEADER_FIELDS: dict[bool, tuple[EventField, ...]] = {
    False: (EventField("__probe_ip", "unsigned long", _TRACE_ENTRY_SIZE, _LONG_SIZE, False),),
    True: (
        EventField("__probe_func", "unsigned long", _TRACE_ENTRY_SIZE, _LONG_SIZE, False),
        EventField("__probe_ret_ip", "unsigned long", _TRACE_ENTRY_SIZE + _LONG_SIZE, _LONG_SIZE, False),
    ),
}


@dataclass(frozen=True)
class FetchTypeInfo:
    """A row of ``probe_fetch_types[]``: the format-file type, element size, signedness and print format."""

    name: str
    format_type: str
    size: int
    signed: bool
    print_format: str
    is_string: bool = False


_STRING_PRINT_FORMAT = '\\"%s\\"'
_FETCH_TYPES: dict[str, FetchTypeInfo] = {
    info.name: info
    for info in (
        FetchTypeInfo("string", "__data_loc char[]", 4, True, _STRING_PRINT_FORMAT, True),
        FetchTypeInfo("ustring", "__data_loc char[]", 4, True, _STRING_PRINT_FORMAT, True),
        FetchTypeInfo("symstr", "__data_loc char[]", 4, True, _STRING_PRINT_FORMAT, True),
        FetchTypeInfo("u8", "u8", 1, False, "%u"),
        FetchTypeInfo("u16", "u16", 2, False, "%u"),
        FetchTypeInfo("u32", "u32", 4, False, "%u"),
        FetchTypeInfo("u64", "u64", 8, False, "%Lu"),
        FetchTypeInfo("s8", "s8", 1, True, "%d"),
        FetchTypeInfo("s16", "s16", 2, True, "%d"),
        FetchTypeInfo("s32", "s32", 4, True, "%d"),
        FetchTypeInfo("s64", "s64", 8, True, "%Ld"),
        FetchTypeInfo("x8", "u8", 1, False, "0x%x"),
        FetchTypeInfo("x16", "u16", 2, False, "0x%x"),
        FetchTypeInfo("x32", "u32", 4, False, "0x%x"),
        FetchTypeInfo("x64", "u64", 8, False, "0x%Lx"),
        FetchTypeInfo("char", "u8", 1, False, "'%c'"),
        FetchTypeInfo("symbol", "u64", 8, False, "%pS"),
    )
}
_ARRAY_SUFFIX = re.compile(r"^(?P<base>.*)\[(?P<count>\d+)\]$")


def fetch_type_info(type_text: str) -> tuple[FetchTypeInfo, int]:
    """``FetchArg.type`` (``x64``, ``u8[3]``, ``b4@0/32``, ``string[2]``) -> (fetch type, array count or 0).

    A bitfield resolves to the unsigned type of its container, like find_fetch_type() does.
    """
    count = 0
    base = type_text
    match = _ARRAY_SUFFIX.match(type_text)
    if match:
        base, count = match.group("base"), int(match.group("count"))
    if base.startswith("b") and "/" in base:
        container = int(base.rsplit("/", 1)[1], 0)
        base = f"u{container}"
    info = _FETCH_TYPES.get(base)
    if info is None:
        raise ValueError(f"unknown probe fetch type {type_text!r}")
    return info, count


def _argument_field(name: str, type_text: str, offset: int) -> EventField:
    info, count = fetch_type_info(type_text)
    c_type = f"{info.format_type}[{count}]" if count else info.format_type
    return EventField(name, c_type, offset, info.size * (count or 1), info.signed, info.name, count)


# The layout and print fmt of a probe event depend on its kind and its arguments' names and types only; tests
# define the same probes over and over (under new event names), so both are computed once per signature.
_Signature = tuple[bool, tuple[tuple[str, str], ...]]  # (is_return, (name, fetch type) per argument)


def _signature(command: ProbeCommand) -> _Signature:
    return command.is_return, tuple((arg.name, arg.type) for arg in command.args)


def probe_fields(command: ProbeCommand) -> tuple[EventField, ...]:
    """The event-specific fields of a probe event (no common fields), in record order."""
    return _probe_fields(_signature(command))


@functools.lru_cache(maxsize=1024)
def _probe_fields(signature: _Signature) -> tuple[EventField, ...]:
    is_return, args = signature
    header = PROBE_HEADER_FIELDS[is_return]
    offset = header[-1].offset + header[-1].size
    fields = list(header)
    for name, type_text in args:
        field = _argument_field(name, type_text, offset)
        fields.append(field)
        offset += field.size
    return tuple(fields)


def probe_print_fmt(command: ProbeCommand) -> str:
    """__set_print_fmt() for a kprobe/uprobe (PROBE_PRINT_NORMAL or PROBE_PRINT_RETURN)."""
    return _probe_print_fmt(_signature(command))


@functools.lru_cache(maxsize=1024)
def _probe_print_fmt(signature: _Signature) -> str:
    is_return, args = signature
    if is_return:
        head, head_args = "(%lx <- %lx)", ", REC->__probe_func, REC->__probe_ret_ip"
    else:
        head, head_args = "(%lx)", ", REC->__probe_ip"
    formats: list[str] = []
    references: list[str] = []
    for name, type_text in args:
        info, count = fetch_type_info(type_text)
        if count:
            formats.append(f" {name}={{" + ",".join([info.print_format] * count) + "}")
            for index in range(count):
                references.append(f", __get_str({name}[{index}])" if info.is_string else f", REC->{name}[{index}]")
        else:
            formats.append(f" {name}={info.print_format}")
            references.append(f", __get_str({name})" if info.is_string else f", REC->{name}")
    return f'"{head}{"".join(formats)}"{head_args}{"".join(references)}'


def format_file_text(name: str, event_id: int, fields: tuple[EventField, ...], print_fmt: str) -> str:
    """An ``events/<system>/<event>/format`` file (f_show(): header, common fields, a blank line, fields)."""
    return f"name: {name}\nID: {event_id}\n{_format_body(fields, print_fmt)}"


@functools.lru_cache(maxsize=1024)
def _format_body(fields: tuple[EventField, ...], print_fmt: str) -> str:
    """What follows the ``name:`` and ``ID:`` lines, the same for every event of one layout."""
    lines = ["format:"]
    lines += [field.format_line() for field in COMMON_FIELDS]
    lines.append("")
    lines += [field.format_line() for field in fields]
    lines.append("")
    lines.append(f"print fmt: {print_fmt}")
    return "\n".join(lines) + "\n"


def fields_of_format(text: str, system: str) -> tuple[EventFormat, tuple[EventField, ...]]:
    """A snapshot event's format text -> its parsed format and its event-specific fields."""
    parsed = parse_format(text, system)
    fields = tuple(EventField(f.name, f.ctype, f.offset, f.size, f.signed) for f in parsed.fields)
    return parsed, fields
