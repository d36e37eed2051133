"""Event formats and trace text -> typed :class:`~pytest_ktrace._events.Event` objects.

The plugin turns on the per-instance trace option ``fields`` (kernel >= 5.15), so every event prints as::

    <comm>-<pid> [<cpu>] <flags> <ts>: <event>: f1=v1 f2=v2 ...

with each value printed by its *type* (``print_fields()`` in ``kernel/trace/trace_output.c``):

* 1-byte ints ``'c'(99)`` or ``(1)``; 2/4-byte ints ``0x%x (%d)``; 8-byte ints ``0x%llx (%lld)``, or, on newer
  kernels, ``%pS (%lld)`` (``call_site=rcu_do_batch+0x3d1/0x14a0 (-1768960207)``);
* strings (``char[N]``, ``__data_loc char[]``, ``__rel_loc char[]``) raw: unquoted, may hold spaces, ``=``,
  quotes and newlines (the latter continue on the next lines of the trace);
* ``const char *`` as ``(0x<ptr>)`` or ``(0x<ptr>:<string>)``; other dynamic arrays as ``xx,xx,..`` hex bytes;
  ``<OVERFLOW>``, ``<INVALID-SIZE>`` (e.g. ``u8 addr[6]``), ``<INVALID-TYPE>`` (e.g. cpumasks).

Kernels 5.15-6.4 print the fields in reverse order. Values are split using the *known* field names of the
event (from its ``format`` file) with a precompiled, cached regular expression per event and direction, so
strings that contain spaces, ``=`` or quotes still split right. Integers are taken from the decimal in
parentheses and reinterpreted by the field's size and signedness.

For kernels without ``fields`` (< 5.15) the default probe output is understood too: ``name: (0x..) a=1 b="x"``
and ``name: (0x.. <- 0x..) ret=-22``; values then follow the field's type (decimal or ``0x`` hex ints, quoted
strings, ``(fault)``). Other events print their ``print fmt``; their ``key=value`` pairs are picked up
best-effort.
"""

from __future__ import annotations

import gc
import re
import sys
import threading
import weakref
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress, count, repeat
from operator import add, eq
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Pattern,
    Sequence,
    Tuple,
    Union,
    cast,
    overload,
)

from ._errors import KtraceError
from ._events import (
    Event,
    FieldValue,
    _events_from_headers,
    _fields_builder,
    _give,
    _make_event,
    _set_fields,
    _set_raw,
    _source_index,
)

__all__ = ["EventFormat", "FieldFormat", "FormatCatalog", "ParsedTrace", "TraceParser", "parse_format"]


# ------------------------------------------------------------------------------------------------------------
# format files
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldFormat:
    """One ``field:`` line of an event's ``format`` file. ``ctype`` is the kernel's type string, arrays
    included (``char[16]``, ``__data_loc char[]``, ``unsigned long[6]``)."""

    name: str
    ctype: str
    offset: int
    size: int
    signed: bool

    @property
    def is_string(self) -> bool:
        """A field the kernel treats as a string (``filter_assign_type``): ``__data_loc char[]``,
        ``__rel_loc char[]``, ``char[N]`` and ``char *`` / ``const char *``."""
        t = self.ctype
        if "char" in t and ("__data_loc" in t or "__rel_loc" in t or "[" in t):
            return True
        return t in ("char *", "const char *")

    @property
    def is_pointer_string(self) -> bool:
        """``char *`` / ``const char *``: printed as ``(0x<ptr>)`` or ``(0x<ptr>:<string>)``."""
        return self.ctype in ("char *", "const char *")

    @property
    def is_dynamic(self) -> bool:
        """``__data_loc`` / ``__rel_loc``: the 4 bytes in the record locate data elsewhere in the event."""
        return "__data_loc" in self.ctype or "__rel_loc" in self.ctype

    @property
    def is_array(self) -> bool:
        return "[" in self.ctype

    @property
    def is_common(self) -> bool:
        return self.name.startswith("common_")

    @property
    def is_integer(self) -> bool:
        """Printed as a number: a non-string, non-dynamic field of 1, 2, 4 or 8 bytes (fixed arrays of such
        sizes included, as the raw bits)."""
        return not self.is_string and not self.is_dynamic and self.size in (1, 2, 4, 8)


@dataclass(frozen=True)
class EventFormat:
    """A parsed ``events/<system>/<name>/format`` file. ``fields`` excludes the ``common_*`` fields, which are
    kept in ``common_fields``."""

    system: str
    name: str
    id: int
    fields: Tuple[FieldFormat, ...]
    print_fmt: str = ""
    common_fields: Tuple[FieldFormat, ...] = ()

    @property
    def full_name(self) -> str:
        return f"{self.system}:{self.name}"

    @property
    def field_names(self) -> Tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Optional[FieldFormat]:
        for f in self.fields:
            if f.name == name:
                return f
        for f in self.common_fields:
            if f.name == name:
                return f
        return None

    @property
    def is_probe(self) -> bool:
        """A k/u(ret)probe-like event: its first field is ``__probe_ip`` or ``__probe_func``."""
        return bool(self.fields) and self.fields[0].name in ("__probe_ip", "__probe_func")


_FIELD_RE = re.compile(
    r"field:(?P<decl>[^;]*);\s*offset:\s*(?P<offset>\d+);\s*size:\s*(?P<size>\d+);"
    r"(?:\s*signed:\s*(?P<signed>-?\d+);)?\s*"
)
_DECL_RE = re.compile(r"(?P<type>.*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<arr>\[[^\]]*\])?")


def _parse_decl(decl: str) -> Tuple[str, str]:
    m = _DECL_RE.fullmatch(decl.strip())
    if m is None or not m.group("type").strip():
        raise ValueError(f"cannot split field declaration {decl!r} into type and name")
    ctype = " ".join(m.group("type").split())
    arr = m.group("arr")
    if arr:
        ctype += arr.replace(" ", "")
    return ctype, m.group("name")


def _parse_field_line(line: str, where: str) -> FieldFormat:
    """One ``field:TYPE NAME; offset:N; size:N; signed:N;`` line of a format file."""
    m = _FIELD_RE.fullmatch(line)
    if m is None:
        raise KtraceError(f"{where}: malformed field line {line!r}")
    try:
        ctype, fname = _parse_decl(m.group("decl"))
    except ValueError as exc:
        raise KtraceError(f"{where}: {exc}") from None
    signed = m.group("signed")
    return FieldFormat(
        name=fname,
        ctype=ctype,
        offset=int(m.group("offset")),
        size=int(m.group("size")),
        signed=bool(signed) and int(signed) != 0,
    )


# What follows a format file's ``name:`` and ``ID:`` lines is the same for every probe of one layout (each test
# makes its own probes, with new names and IDs), so it is parsed once per layout: (system, that text) -> the
# parse. Bounded: cleared when full.
_FORMATS: Dict[Tuple[str, str], EventFormat] = {}
_FORMATS_KEPT = 256
_FORMAT_HEAD_RE = re.compile(r"name: (\S+)\nID: ([0-9]+)\n")


def parse_format(text: str, system: str) -> EventFormat:
    """Parse the text of an event ``format`` file. Raises :class:`KtraceError` naming the line on garbage."""
    if not isinstance(text, str):
        raise KtraceError(f"format of an event in {system!r}: expected text, got {type(text).__name__}")
    head = _FORMAT_HEAD_RE.match(text)
    if head is None:
        return _parse_format(text, system)
    key = (system, text[head.end() :])
    known = _FORMATS.get(key)
    if known is not None:
        return EventFormat(
            system, head.group(1), int(head.group(2)), known.fields, known.print_fmt, known.common_fields
        )
    parsed = _parse_format(text, system)
    # kept only when the first two lines alone give the name and ID (no later line sets them again)
    if "name:" not in key[1] and "ID:" not in key[1]:
        if len(_FORMATS) >= _FORMATS_KEPT:
            _FORMATS.clear()
        _FORMATS[key] = parsed
    return parsed


def _parse_format(text: str, system: str) -> EventFormat:
    name: Optional[str] = None
    event_id: Optional[int] = None
    fields: List[FieldFormat] = []
    print_fmt: Optional[str] = None
    seen_format = False
    lines = text.split("\n")
    where = f"format file of an event in system {system!r}"
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("name:"):
            name = line[5:].strip()
            where = f"format file of {system}:{name}"
            if not name or any(c.isspace() for c in name):
                raise KtraceError(f"{where}: line {lineno}: bad event name {raw!r}")
        elif line.startswith("ID:"):
            try:
                event_id = int(line[3:].strip())
            except ValueError:
                raise KtraceError(f"{where}: line {lineno}: ID is not a number: {raw!r}") from None
        elif line == "format:":
            seen_format = True
        elif line.startswith("field:"):
            fields.append(_parse_field_line(line, f"{where}: line {lineno}"))
        elif line.startswith("print fmt:"):
            # the rest of the file is the print format (it may span lines)
            first = raw.split("print fmt:", 1)[1].lstrip()
            print_fmt = "\n".join([first, *lines[lineno:]]).rstrip("\n")
            break
        else:
            raise KtraceError(f"{where}: line {lineno}: unexpected line {raw!r}")
    if name is None:
        raise KtraceError(f"{where}: no 'name:' line (is this an event format file?)")
    if event_id is None:
        raise KtraceError(f"{where}: no 'ID:' line")
    if not seen_format and not fields:
        raise KtraceError(f"{where}: no 'format:' section")
    common = tuple(f for f in fields if f.is_common)
    own = tuple(f for f in fields if not f.is_common)
    names = [f.name for f in own]
    if len(set(names)) != len(names):
        raise KtraceError(f"{where}: duplicate field names in {names}")
    return EventFormat(
        system=system, name=name, id=event_id, fields=own, print_fmt=print_fmt or "", common_fields=common
    )


class FormatCatalog:
    """Known event formats, looked up by event name (as it appears in trace lines) or ``"system:name"``.

    When two systems define the same event name, a bare-name lookup returns the one added last (the probe a
    test just created wins over an older event of that name)."""

    def __init__(self, formats: Sequence[EventFormat] = ()) -> None:
        self._by_name: Dict[str, EventFormat] = {}
        self._by_full: Dict[str, EventFormat] = {}
        self.version = 0  # bumped on every change (parsers drop their cached splitters)
        for fmt in formats:
            self.add(fmt)

    def add(self, fmt: EventFormat) -> None:
        self.version += 1
        self._by_name[fmt.name] = fmt
        self._by_full[fmt.full_name] = fmt

    def remove(self, name: str) -> None:
        """Forget an event (``"system:name"`` or bare name); unknown names are ignored."""
        fmt = self.get(name)
        if fmt is None:
            return
        self.version += 1
        self._by_full.pop(fmt.full_name, None)
        if self._by_name.get(fmt.name) is fmt:
            del self._by_name[fmt.name]
            for other in reversed(list(self._by_full.values())):
                if other.name == fmt.name:
                    self._by_name[fmt.name] = other
                    break

    def get(self, name: str) -> Optional[EventFormat]:
        if ":" in name:
            return self._by_full.get(name)
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        return len(self._by_full)

    def __iter__(self) -> Iterator[EventFormat]:
        return iter(list(self._by_full.values()))


# ------------------------------------------------------------------------------------------------------------
# trace lines
# ------------------------------------------------------------------------------------------------------------


@dataclass
class ParsedTrace:
    """The result of :meth:`TraceParser.parse`: events in trace order, lost-event counts per CPU
    (``CPU:n [LOST EVENTS]`` without a number counts as 1) and lines that could not be understood.

    ``events`` is a sequence (any list may be given); the one :meth:`TraceParser.parse` returns knows its
    length and the events' names at once but builds the typed :class:`Event` objects only when they are first
    read (all of them, when iterated or indexed), so asking for the events of one probe (:meth:`of`,
    :meth:`select`) or for counts (:meth:`count_of`, :meth:`event_counts`) never decodes the others. Decoded
    events are kept: every access returns the same objects."""

    events: Sequence[Event] = field(default_factory=list)
    lost: Dict[int, int] = field(default_factory=dict)
    unparsed: List[str] = field(default_factory=list)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    def of(self, system: str, name: str) -> List[Event]:
        """The events of ``system:name`` in trace order (the same objects ``events`` holds)."""
        return self.select([(system, name)])

    def select(self, keys: Iterable[Tuple[str, str]]) -> List[Event]:
        """The events whose ``(system, name)`` is one of ``keys``, in trace order."""
        events = self.events
        if isinstance(events, _LazyEvents):
            return events.select(keys)
        wanted = set(keys)
        return [e for e in events if (e.system, e.name) in wanted]

    def count_of(self, system: str, name: str) -> int:
        """How many events of ``system:name`` there are (without decoding any)."""
        events = self.events
        if isinstance(events, _LazyEvents):
            return events.count_of(system, name)
        return sum(1 for e in events if e.name == name and e.system == system)

    def event_counts(self) -> Dict[Tuple[str, str], int]:
        """``(system, name) -> number of events`` (without decoding any)."""
        events = self.events
        if isinstance(events, _LazyEvents):
            return events.event_counts()
        out: Dict[Tuple[str, str], int] = {}
        for e in events:
            key = (e.system, e.name)
            out[key] = out.get(key, 0) + 1
        return out


# "<comm>-<pid> [(<tgid>)] [<cpu>] [<flags>] <ts>: <name>: <body>"; comm may hold spaces and dashes, the pid
# is the number after the last '-' before the cpu column. The tgid column (options/record-tgid) and the flags
# column (options/irq-info) are optional, the timestamp may be an integer (counter / tsc clocks). ``other``
# catches event lines without a name (``UNKNOWN TYPE 5``). The comm starts with a non-blank ((?!\s)): the same
# matches as without it (the leading \s* is greedy), but a blank line fails in linear, not quadratic, time.
_HEADER_RE = re.compile(
    r"\s*(?P<comm>(?!\s).*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+(?:(?P<flags>\S+)\s+)?"
    r"(?P<ts>\d+(?:\.\d+)?): (?:(?P<name>[^\s:]+):(?P<body>.*)|(?P<other>.*))",
    re.DOTALL,
)
HEADER_RE = _HEADER_RE  # what an event header line is, for other readers of trace text (stacks.py)
_LOST_RE = re.compile(r"CPU:(\d+) \[LOST(?: (\d+))? EVENTS\]\s*")

# value patterns of print_fields(); integer patterns have two groups: the decimal in parens, or an error.
# An optional part is written "(?:X|)", not "(?:X)?": the same matches in the same order, but re runs a
# branch much faster than a repeat. "\S+" before a blank needs no laziness: it can only end at the blank.
_ERR = r"(<[A-Z][A-Z-]*>)"  # <OVERFLOW>, <INVALID-SIZE>, <INVALID-TYPE>
# Strings are greedy: when a value contains text that looks like the fields after it ("name=a b=0x0 (0)"),
# the string keeps it and the real fields are the last ones that fit. char[N] prints at most N characters.
_V_STRING = r"(.*)"
_V_PTR_STRING = r"(\(.*?\)|<[A-Z][A-Z-]*>)"
_V_INT1 = r"(?:(?:'.'|)\((-?\d+)\)|" + _ERR + r")"
_V_INT24 = r"(?:(?:0x[0-9a-f]+|-?\d+) \((-?\d+)\)|" + _ERR + r")"
_V_INT8 = r"(?:(?:0x[0-9a-f]+|\S+(?: \[[^\]\s]+\]|)) \((-?\d+)\)|" + _ERR + r")"
_V_ARRAY = r"((?:[0-9a-f]{2}(?:,[0-9a-f]{2})*|)|<[A-Z][A-Z-]*>)"
_V_OTHER = r"(.*?)"

# kinds of value conversion
_K_INT = 0  # decimal in the last (...), masked / sign-reinterpreted
_K_STR = 1  # raw string, trailing NULs stripped
_K_PTRSTR = 2  # (0xptr:string) -> string, (0xptr) kept as is
_K_RAW = 3  # kept as printed

# fallback (non-fields) value kinds
_FB_INT = 0
_FB_STR = 1
_FB_RAW = 2

_PlanEntry = Tuple[str, int, int, int]  # (name, kind, mask, sign bit or 0)


def _kind_of(f: FieldFormat) -> Tuple[int, str]:
    if f.is_pointer_string:
        return _K_PTRSTR, _V_PTR_STRING
    if f.is_string:
        if not f.is_dynamic and f.size > 0:
            return _K_STR, f"(.{{0,{f.size}}})"
        return _K_STR, _V_STRING
    if f.is_dynamic:
        return _K_RAW, _V_ARRAY
    if f.size == 1:
        return _K_INT, _V_INT1
    if f.size in (2, 4):
        return _K_INT, _V_INT24
    if f.size == 8:
        return _K_INT, _V_INT8
    return _K_RAW, _V_OTHER


def _plan_entry(f: FieldFormat, kind: int) -> _PlanEntry:
    bits = 8 * f.size if f.size in (1, 2, 4, 8) else 64
    mask = (1 << bits) - 1
    sign = (1 << (bits - 1)) if (f.signed and not f.is_array) else 0
    return (f.name, kind, mask, sign)


def _ptr_string(v: str) -> str:
    """``(0xptr:string)`` -> ``string``; ``(0xptr)`` (the kernel could not read it) stays as printed."""
    i = v.find(":")
    if i > 0 and v[0] == "(" and v[-1] == ")":
        return v[i + 1 : -1]
    return v


_Converter = Callable[[Sequence[Optional[str]]], Dict[str, FieldValue]]


_CONVERTERS: Dict[Tuple[_PlanEntry, ...], _Converter] = {}  # per field plan: every parser of a format shares it


def _compile_converter(plan: Sequence[_PlanEntry]) -> _Converter:
    """Straight-line Python for one event's fields (no per-field loop): regex groups -> typed dict."""
    key = tuple(plan)
    conv = _CONVERTERS.get(key)
    if conv is None:
        conv = _CONVERTERS[key] = _generate_converter(key)
    return conv


def _generate_converter(plan: Sequence[_PlanEntry]) -> _Converter:
    lines = ["def convert(g):"]
    items = []
    gi = 0
    for k, (name, kind, mask, sign) in enumerate(plan):
        v = f"v{k}"
        if kind == _K_INT:
            lines.append(f"    {v} = g[{gi}]")
            lines.append(f"    if {v} is None:")
            lines.append(f"        {v} = g[{gi + 1}]")
            lines.append("    else:")
            lines.append(f"        {v} = int({v}) & {mask}")
            if sign:
                lines.append(f"        if {v} & {sign}:")
                lines.append(f"            {v} -= {sign << 1}")
            gi += 2
        elif kind == _K_STR:
            lines.append(f"    {v} = g[{gi}]")
            lines.append(f"    if {v}[-1:] == '\\0':")
            lines.append(f"        {v} = {v}.rstrip('\\0')")
            gi += 1
        elif kind == _K_PTRSTR:
            lines.append(f"    {v} = _ptr_string(g[{gi}])")
            gi += 1
        else:
            lines.append(f"    {v} = g[{gi}]")
            gi += 1
        items.append(f"{name!r}: {v}")
    lines.append("    return {" + ", ".join(items) + "}")
    namespace: Dict[str, object] = {"_ptr_string": _ptr_string}
    exec("\n".join(lines), namespace)  # names are repr()'d literals, values ints: no injection possible
    conv = namespace["convert"]
    return conv  # type: ignore[return-value]


class _Splitter:
    """Precompiled regular expressions and conversion code for one event format."""

    __slots__ = (
        "fallback_parts",
        "fallback_plan",
        "fallback_re",
        "fast",
        "fconv",
        "first",
        "fmt",
        "forward",
        "last",
        "multiline",
        "parts",
        "plan",
        "rconv",
        "reverse",
        "text_field",
    )

    def __init__(self, fmt: EventFormat) -> None:
        self.fmt = fmt
        fields = fmt.fields
        self.multiline = any(f.is_string for f in fields)
        kinds = [_kind_of(f) for f in fields]
        plan = [_plan_entry(f, k[0]) for f, k in zip(fields, kinds)]
        self.first = " " + fields[0].name + "=" if fields else ""
        self.last = " " + fields[-1].name + "=" if fields else ""
        self.plan: Tuple[_PlanEntry, ...] = tuple(plan)
        self.parts: Tuple[str, ...] = ()
        self.fallback_parts: Tuple[str, ...] = ()
        self.fast: Dict[int, Optional[_FastForm]] = {}  # per form (_FORM_*), built on first use
        self.forward: Optional[Pattern[str]] = None
        self.reverse: Optional[Pattern[str]] = None
        self.fconv: Optional[_Converter] = None
        self.rconv: Optional[_Converter] = None
        if fields:
            parts = [" " + re.escape(f.name) + "=" + k[1] for f, k in zip(fields, kinds)]
            self.parts = tuple(parts)
            self.forward = re.compile("".join(parts) + r"\n?", re.DOTALL)
            self.fconv = _compile_converter(plan)
            if len(fields) > 1:
                self.reverse = re.compile("".join(reversed(parts)) + r"\n?", re.DOTALL)
                self.rconv = _compile_converter(list(reversed(plan)))
        self.fallback_re: Optional[Pattern[str]] = None
        self.fallback_plan: Tuple[_PlanEntry, ...] = ()
        self.text_field: Optional[str] = None  # the one string a '"%s", __get_str(X)' event prints, e.g. a log line
        if fmt.is_probe:
            self._build_probe_fallback()
        else:
            text = _WHOLE_TEXT_FMT.fullmatch(fmt.print_fmt.strip())
            if text is not None and any(f.name == text.group(1) and f.is_string for f in fields):
                self.text_field = text.group(1)

    def _build_probe_fallback(self) -> None:
        """Default uprobe/kprobe output: ``(ip) a=.. b=".."`` or ``(ret_ip <- func) a=..``."""
        fields = self.fmt.fields
        addr = r"[^()\s]+(?: \[[^\]\s]+\]|)"
        if fields[0].name == "__probe_func":
            # print_uretprobe_event() / print_kretprobe_event(): "(<ret_ip> <- <func>)"
            head = r" \((?P<ret_ip>" + addr + r") <- (?P<func>" + addr + r")\)"
            args = [f for f in fields if f.name not in ("__probe_func", "__probe_ret_ip")]
        else:
            head = r" \((?P<ip>" + addr + r")\)"
            args = [f for f in fields if f.name != "__probe_ip"]
        parts = [head]
        plan = []
        for f in args:
            if f.is_string and not f.is_pointer_string:
                pat, kind = r"(\(fault\)|\".*?\")", _FB_STR
            elif f.is_integer:
                pat, kind = r"('.'|\S+)", _FB_INT
            else:
                pat, kind = r"(.*?)", _FB_RAW
            parts.append(" " + re.escape(f.name) + "=" + pat)
            plan.append(_plan_entry(f, kind))
        self.fallback_re = re.compile("".join(parts) + r"\n?", re.DOTALL)
        self.fallback_plan = tuple(plan)
        self.fallback_parts = tuple(parts)

    def split_fields(self, body: str) -> Optional[Dict[str, FieldValue]]:
        """``print_fields()`` output (body starts with ``" "``) -> typed values, None if it does not fit."""
        if self.forward is None:
            return {} if body.strip() in ("", "No fields found") else None
        m = self.forward.fullmatch(body)
        if m is not None and self.fconv is not None:
            return self.fconv(m.groups())
        # kernels 5.15 - 6.4 print the fields last to first
        if self.reverse is not None and self.rconv is not None and body.startswith(self.last):
            m = self.reverse.fullmatch(body)
            if m is not None:
                return self.rconv(m.groups())
        return None

    def split_fallback(self, body: str) -> Optional[Dict[str, FieldValue]]:
        """Default output (kernels without ``options/fields``) of a probe, or of an event that prints one string."""
        if self.text_field is not None:
            return {self.text_field: (body[1:] if body[:1] == " " else body).rstrip("\n")}
        if self.fallback_re is None:
            return None
        m = self.fallback_re.fullmatch(body)
        if m is None:
            return None
        out: Dict[str, FieldValue] = {}
        gd = m.groupdict()
        head: List[Tuple[str, Optional[str]]]
        if "func" in gd:
            head = [("__probe_func", gd["func"]), ("__probe_ret_ip", gd["ret_ip"])]
        else:
            head = [("__probe_ip", gd["ip"])]
        for name, v in head:
            if v is not None:
                out[name] = _int_or_str(v, (1 << 64) - 1, 0)
        for (name, kind, mask, sign), v in zip(self.fallback_plan, m.groups()[len(gd) :]):
            if kind == _FB_STR:
                out[name] = v[1:-1] if v.startswith('"') else v
            elif kind == _FB_INT:
                out[name] = _int_or_str(v, mask, sign)
            else:
                out[name] = v
        # keep the format's field order
        order = {f.name: i for i, f in enumerate(self.fmt.fields)}
        return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], 1 << 30)))


def _int_or_str(v: str, mask: int, sign: int) -> FieldValue:
    try:
        if len(v) == 3 and v[0] == "'" and v[2] == "'":
            n = ord(v[1])
        elif v[:2] in ("0x", "0X"):
            n = int(v, 16)
        else:
            n = int(v)
    except ValueError:
        return v
    n &= mask
    return n - (sign << 1) if sign and n & sign else n


# the print fmt of an event that prints one string as it is (printk:console's log line)
_WHOLE_TEXT_FMT = re.compile(r'"%s",\s*__get_str\((\w+)\)')
_KV_RE = re.compile(r"(?:^|(?<=\s))([A-Za-z_]\w*)=")


def _split_generic(body: str, fmt: Optional[EventFormat]) -> Dict[str, FieldValue]:
    """Best effort for lines no splitter understands: ``key=value`` pairs (str, or typed by ``fmt``)."""
    out: Dict[str, FieldValue] = {}
    matches = list(_KV_RE.finditer(body))
    if not matches:
        text = body.strip()
        if text:
            out["buf"] = text
        return out
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(body)
        value = body[m.end() : end]
        if i + 1 == len(matches):
            value = value.rstrip("\n")
        elif value.endswith(" "):
            value = value[:-1]
        key = m.group(1)
        if key in out:
            continue
        f = fmt.field(key) if fmt is not None else None
        if f is not None and f.is_integer:
            conv = value
            if conv.endswith(")") and "(" in conv:  # fields-style "0x.. (..)"
                conv = conv[conv.rindex("(") + 1 : -1]
            bits = 8 * f.size
            out[key] = _int_or_str(conv, (1 << bits) - 1, (1 << (bits - 1)) if f.signed else 0)
        elif f is not None and f.is_string and len(value) >= 2 and value[0] == value[-1] == '"':
            out[key] = value[1:-1]
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------------------------
# indexed parsing, lazy decoding
# ------------------------------------------------------------------------------------------------------------
#
# ``TraceParser.parse`` does one cheap pass over the whole text: one ``split`` by ``_INDEX_RE`` (the per-line loop runs
# in C; a row per newline, for the line after it, and the first line matched on its own) cuts every line that is an
# event header of a shape the reference parser (``TraceParser._parse_lines``, line by line) provably reads the same way
# ("H" lines) into its head (``comm-pid [cpu] [flags] ``), timestamp, event name and body, and leaves every other line
# whole. Every other line (LOST lines,
# headers, noise, continuations of multi-line strings, headers of odd shapes), and the H line before it when that one's
# event has a string that could continue on it, goes through the reference parser at once, in runs that start and end
# where the reference's state machine starts afresh. Those runs give ``lost``, ``unparsed`` and their events; an H line
# outside them is exactly one event of its name, nothing else. So the length of ``events``, ``lost``, ``unparsed`` and
# the per-event counts are exact after that pass, before any value is converted.
#
# The typed events of the H lines are built per event name when first needed (``_LazyEvents``), from the columns of
# their heads and timestamps alone (``_events._events_from_headers``). Their fields (and raw lines) are decoded when
# the first of them is read, for all of them at once (``_PendingFields``): the lines are joined and cut with one
# ``split`` per way the event prints (its own value patterns, unchanged but for ``[0-9]`` for ``\d`` on ASCII text;
# each column of values is then a slice of one flat list), the values converted column by column (a column of one
# repeated value converted once) and the dicts made by one generated comprehension per field list; a line that fits
# no form goes through the reference's per-line decoder. The splitters are those of parse time (a later catalog
# change does not change the result).
#
# Why an H line's header is the reference's: ``_INDEX_RE`` matches ``comm-pid [(tgid)] [cpu]`` up to the
# first ``]``, with a ``comm`` holding no ``-<ASCII digit>``, then ``[flags] <ts>: <name>:``, with ASCII digits
# and single-space-or-more separators only. The reference's lazy ``comm`` tries each ``-<digit>`` in turn; one
# before ours would need its own ``[cpu]`` ending at the same first ``]``, with only digits, blanks and a
# ``(tgid)`` in between, and our ``-<digit>`` then lies inside that tgid, where no blank follows it: so the
# reference's ``comm`` ends where ours does. pid, tgid and cpu are then fixed (the reference's wider classes
# stop at the same characters), and the optional flags column is tried first by both. They can only part on
# an all-digit name: the reference reads ``<ts>: <digits>: x`` as flags ``<ts>:`` and an ``other`` line, so
# such names are no H lines. The body is the same text, matched by the same value patterns. Lines with tabs
# or non-ASCII digits in the header are no H lines (the reference reads them, exactly as ever).

_H_LINE = (
    r"([^\]\n-]*(?:-(?![0-9])[^\]\n-]*)*-[0-9]+ +(?:\( *[0-9-]+\) +|)\[[0-9]+\] +(?:\S+ +|))"
    r"([0-9]+(?:\.[0-9]+|)): ([^\s:]+):"
)  # head, timestamp, name; no part of it matches a newline
_H_SEPARATOR = ": "  # between an H line's timestamp and name (the name is followed by ":")
# One row per newline, for the line after it: an H line's head, timestamp and name, then its body (the text
# between matches); None, None, None and the whole line for lines of another shape (the first line is
# _FIRST_INDEX_RE's). A pattern that starts with a newline lets re skip to the next line at memchr speed.
_INDEX_RE = re.compile(r"\n(?:" + _H_LINE + "|)")
_FIRST_INDEX_RE = re.compile(_H_LINE)
# an H line's head, as _HEADER_RE reads its comm, pid and cpu
_HEAD_RE = re.compile(r"\s*((?!\s).*?)-(\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(\d+)\] +(?:\S+ +|)", re.DOTALL)
_DASH_DIGIT_RE = re.compile(r"-\d")
_NUMERIC_NAME_RE = re.compile(r"\d+(?:\.\d+)?")
_HEX_COLUMN_RE = re.compile(r"0[xX][0-9a-fA-F]+(?:\n0[xX][0-9a-fA-F]+)*")
_DEC_COLUMN_RE = re.compile(r"-?[0-9]+(?:\n-?[0-9]+)*")

_FORM_FORWARD = 0
_FORM_REVERSE = 1
_FORM_FALLBACK = 2

# column conversions of a _FastForm
_C_INT = 0  # (decimal, error) groups of print_fields() -> masked / sign-reinterpreted int, or the error text
_C_STR = 1  # raw string, trailing NULs stripped
_C_PTRSTR = 2  # _ptr_string()
_C_RAW = 3  # as printed
_C_FBINT = 4  # default probe output: _int_or_str()
_C_FBSTR = 5  # default probe output: '"..."' -> inner text, '(fault)' as is

_Column = Tuple[int, int, int, int]  # (conversion, first group, mask, sign bit or 0)


class _FastForm:
    """One way an event prints (``fields`` forward or reverse, default probe output), for whole-text use:
    ``regex`` matches whole H lines of the event printed that way (``split`` over such lines joined by
    newlines, see :func:`_split_lines`), its groups are the values' (the header is matched, not captured:
    the header pass has read it); ``columns`` say how groups become the values, in the order of the
    reference parser's dict; ``dicts`` makes the events' ``fields``. ``ascii`` is ``regex`` for ASCII text,
    where the digits of the value patterns are ``[0-9]`` (a range check instead of a Unicode lookup per
    digit)."""

    __slots__ = ("ascii", "columns", "dicts", "regex")

    def __init__(self, regex: str, names: Sequence[str], columns: Sequence[_Column]) -> None:
        self.regex: Pattern[str] = re.compile(regex)
        # the value patterns' "-?\d+" only (re.escape()d names never hold a bare "-?")
        self.ascii: Pattern[str] = re.compile(regex.replace(r"-?\d+", "-?[0-9]+"))
        self.columns: Tuple[_Column, ...] = tuple(columns)
        self.dicts = _fields_builder(tuple(names))


def _split_lines(regex: Pattern[str], joined: str, count: int) -> Tuple[List[int], List[List[Any]]]:
    """``count`` lines, each after a newline (``joined``: ``"\\n" + "\\n".join(lines)``) -> (the indices of those
    ``regex`` matches whole, the columns of its groups for them: ``str``, None for a group that took no
    part). ``split`` returns the text between matches and each match's groups in one flat list: no tuple per
    line and no transposition, each column is a slice. A match is one line with the newline before it (see
    :func:`_marked`), so the text before a match is the lines skipped since the previous one, each with its
    newline: match j is line j plus the newlines up to it."""
    flat = regex.split(joined)
    k = regex.groups + 1
    columns = [flat[i::k] for i in range(1, k)]
    seps = flat[: len(flat) - 1 : k]
    if len(seps) == count:  # every line matched: 0, 1, 2, ...
        return list(range(count)), columns
    return list(map(add, range(len(seps)), accumulate(map(str.count, seps, repeat("\n"))))), columns


_VALUES = 0  # the group of a _FastForm's first value


def _marked(name: str, parts: Sequence[str]) -> str:
    """Body parts (each starting with ``" "``) -> the multi-line pattern for whole H lines of event ``name``,
    each with the newline before it (a pattern that starts with a newline lets re skip to the next line at
    memchr speed, past the lines that do not fit). After that newline it matches within one line: ``.``
    without DOTALL cannot cross a newline (so on one line it is the reference's DOTALL ``.``), no other part
    matches a newline but the prefix, which runs to the first ``]`` without minding newlines: every line
    given is an H line, whose first ``]`` closes its cpu column. The header splits only one way: blanks are
    greedy before non-blanks, and without the optional flags column the timestamp would have to be followed
    by ``": <name>:"`` where the flags column's ``"<ts>: <name>:"`` is, i.e. ``name`` would be all digits
    (never an H line)."""
    head = r"[^\]]*\] +(?:\S+ +|)[0-9]+(?:\.[0-9]+|): " + re.escape(name) + ":"
    return r"(?m)\n" + head + parts[0] + "".join(parts[1:]) + "$"


def _fields_form(name: str, plan: Sequence[_PlanEntry], parts: Sequence[str]) -> _FastForm:
    kinds = {_K_INT: _C_INT, _K_STR: _C_STR, _K_PTRSTR: _C_PTRSTR, _K_RAW: _C_RAW}
    columns = []
    gi = _VALUES
    for _name, kind, mask, sign in plan:
        columns.append((kinds[kind], gi, mask, sign))
        gi += 2 if kind == _K_INT else 1
    return _FastForm(_marked(name, parts), [p[0] for p in plan], columns)


def _fallback_form(sp: _Splitter) -> _FastForm:
    """As ``_Splitter.split_fallback``: head values first, then the arguments, sorted by format order."""
    mask64 = (1 << 64) - 1
    entries: List[Tuple[str, _Column]]
    v = _VALUES
    if sp.fmt.fields[0].name == "__probe_func":  # groups: ret_ip, func
        entries = [("__probe_func", (_C_FBINT, v + 1, mask64, 0)), ("__probe_ret_ip", (_C_FBINT, v, mask64, 0))]
        gi = v + 2
    else:
        entries = [("__probe_ip", (_C_FBINT, v, mask64, 0))]
        gi = v + 1
    kinds = {_FB_STR: _C_FBSTR, _FB_INT: _C_FBINT, _FB_RAW: _C_RAW}
    for name, kind, mask, sign in sp.fallback_plan:
        entries.append((name, (kinds[kind], gi, mask, sign)))
        gi += 1
    order = {f.name: i for i, f in enumerate(sp.fmt.fields)}
    entries.sort(key=lambda kv: order.get(kv[0], 1 << 30))
    return _FastForm(_marked(sp.fmt.name, sp.fallback_parts), [e[0] for e in entries], [e[1] for e in entries])


def _fast_form(sp: _Splitter, form: int) -> Optional[_FastForm]:
    try:
        return sp.fast[form]
    except KeyError:
        pass
    ff: Optional[_FastForm] = None
    if form == _FORM_FORWARD and sp.parts:
        ff = _fields_form(sp.fmt.name, sp.plan, sp.parts)
    elif form == _FORM_REVERSE and len(sp.parts) > 1:
        ff = _fields_form(sp.fmt.name, tuple(reversed(sp.plan)), tuple(reversed(sp.parts)))
    elif form == _FORM_FALLBACK and sp.fallback_parts:
        ff = _fallback_form(sp)
    sp.fast[form] = ff
    return ff


def _ints(col: Sequence[str], mask: int, sign: int, base: int = 10) -> List[int]:
    """``int(v, base)`` of every string, masked and reinterpreted (:func:`_fix_ints`); values that repeat a lot
    (pids, probe addresses, flags) converted once."""
    if len(col) > 64 and len(set(col[:256])) * 4 < min(len(col), 256):
        first = col[0]
        if col.count(first) == len(col):  # one value (a probe's address, a pid): compared, not hashed
            return _fix_ints([int(first, base)], mask, sign) * len(col)
        keys = list(dict.fromkeys(col))
        typed = _fix_ints(list(map(int, keys)) if base == 10 else list(map(int, keys, repeat(base))), mask, sign)
        return list(map(dict(zip(keys, typed)).__getitem__, col))
    return _fix_ints(list(map(int, col)) if base == 10 else list(map(int, col, repeat(base))), mask, sign)


def _fix_ints(vals: List[int], mask: int, sign: int) -> List[int]:
    """``v & mask`` reinterpreted as signed when ``sign`` (the sign bit) is set; a no-op when all are in range."""
    if not vals:
        return vals
    lo, hi = (-sign, sign - 1) if sign else (0, mask)
    if lo <= min(vals) and max(vals) <= hi:
        return vals
    if not sign:
        return list(map(mask.__and__, vals))
    # (v & mask) as a signed number is ((v + sign) & mask) - sign: three C-level maps, no Python loop
    return list(map(int.__sub__, map(mask.__and__, map(sign.__add__, vals)), repeat(sign)))


def _fb_ints(col: Sequence[str], mask: int, sign: int) -> List[FieldValue]:
    """``_int_or_str`` of every value, column-wise when all are plain hex or plain decimal numbers."""
    if col and col[0] == col[-1] and col.count(col[0]) == len(col):  # one value (a probe's address)
        return [_int_or_str(col[0], mask, sign)] * len(col)
    joined = "\n".join(col)
    if _HEX_COLUMN_RE.fullmatch(joined):
        return list(_ints(col, mask, sign, 16))
    if _DEC_COLUMN_RE.fullmatch(joined):
        return list(_ints(col, mask, sign))
    return [_int_or_str(v, mask, sign) for v in col]


def _convert(cols: Sequence[Sequence[str]], column: _Column) -> Sequence[FieldValue]:
    """One field's values, exactly as the reference parser converts them one by one."""
    conv, gi, mask, sign = column
    col = cols[gi]
    if conv == _C_INT:
        if all(col):  # no error printed instead of a number (its decimal group is then empty or None)
            return _ints(col, mask, sign)
        out: List[FieldValue] = []
        for d, e in zip(col, cols[gi + 1]):
            if d:
                n = int(d) & mask
                out.append(n - (sign << 1) if sign and n & sign else n)
            else:
                out.append(e)
        return out
    if conv == _C_STR:
        # values of one line each (no newline in them): "\0\n" in the joined column <=> a value ends with NUL
        if "\0\n" in "\n".join(col) + "\n":
            return [v.rstrip("\0") if v[-1:] == "\0" else v for v in col]
        return col
    if conv == _C_PTRSTR:
        return [_ptr_string(v) for v in col] if ":" in "".join(col) else col
    if conv == _C_FBINT:
        return _fb_ints(col, mask, sign)
    if conv == _C_FBSTR:
        if "(fault)" in col:
            return [v[1:-1] if v.startswith('"') else v for v in col]
        return [v[1:-1] for v in col]
    return col


def _prefix(head: str) -> Optional[Tuple[str, int, int]]:
    """An H line's head (``comm-pid [(tgid)] [cpu] [flags] ``) -> (comm, pid, cpu) as the reference header
    regex splits it, or None when the split could be ambiguous (a ``-<digit>`` inside comm)."""
    m = _HEAD_RE.fullmatch(head)
    if m is None:
        return None
    comm, pid, cpu = m.groups()
    if _DASH_DIGIT_RE.search(comm):
        return None
    return (comm, int(pid), int(cpu))


def _indices(names: Sequence[Optional[str]], name: Optional[str]) -> List[int]:
    return list(compress(range(len(names)), map(eq, names, repeat(name))))


def _runs(indices: List[int]) -> Iterator[Tuple[int, int]]:
    """Sorted line indices -> maximal [start, end) runs of consecutive ones."""
    if not indices:
        return
    a = b = indices[0]
    for i in indices[1:]:
        if i != b + 1:
            yield a, b + 1
            a = i
        b = i
    yield a, b + 1


_UNSET: Any = object()
_MAX_CONTINUATION = 256  # lines one string value may continue on; more is noise


def _event_of(sp: Optional[_Splitter], g: Sequence[Any], raw: str) -> Optional[Event]:
    """The reference's decoding of one event: ``g`` are the groups of its ``_HEADER_RE`` match, ``sp`` the
    splitter of its name (None: no format known)."""
    comm, pid, cpu, _flags, ts, name, body, _other = g
    if name is None:
        return None
    values: Optional[Dict[str, FieldValue]] = None
    if sp is not None:
        fmt: Optional[EventFormat] = sp.fmt
        fwd = sp.forward
        if fwd is not None and sp.fconv is not None:
            fm = fwd.fullmatch(body)
            if fm is not None:
                values = sp.fconv(fm.groups())
        if values is None:
            if body[:2] != " (":
                values = sp.split_fields(body)
            if values is None:
                values = sp.split_fallback(body)
    else:
        fmt = None
    if values is None:
        if name == "tracing_mark_write" and fmt is None:
            values = {"buf": (body[1:] if body[:1] == " " else body).rstrip("\n")}
        else:
            values = _split_generic(body, fmt)
    system = fmt.system if fmt is not None else ("ftrace" if name == "tracing_mark_write" else "")
    return _make_event(system, name, values, int(pid), comm, int(cpu), float(ts), raw)


def _system_of(sp: Optional[_Splitter], name: str) -> str:
    """The ``system`` the reference gives an event of ``name`` (as in :func:`_event_of`)."""
    if sp is not None:
        return sp.fmt.system
    return "ftrace" if name == "tracing_mark_write" else ""


def _line_event(sp: Optional[_Splitter], raw: str) -> Event:
    """The event of an H line (see "indexed parsing" above), decoded by the reference."""
    hm = _HEADER_RE.fullmatch(raw)
    ev = _event_of(sp, hm.groups(), raw) if hm is not None else None
    if ev is None:  # cannot happen: an H line is an event header of the reference parser
        raise RuntimeError(f"pytest-ktrace internal error: indexed line is no event: {raw[:200]!r}")
    return ev


_FEW_LINES = 8  # up to this many lines of one event are decoded line by line


def _fast_forms(sp: _Splitter, body: str) -> Iterator[_FastForm]:
    """The forms the lines of ``sp``'s event may print in, the one of ``body`` first. The forms exclude each
    other (a forward body starts with the first field, a reverse one with the last, the default probe output
    with ``" ("``), so the order they are tried in does not change any result."""
    ids = [_FORM_FORWARD, _FORM_REVERSE, _FORM_FALLBACK]
    if body[:2] == " (":
        ids = [_FORM_FALLBACK, _FORM_FORWARD, _FORM_REVERSE]
    elif sp.last and body.startswith(sp.last) and not body.startswith(sp.first):
        ids = [_FORM_REVERSE, _FORM_FORWARD, _FORM_FALLBACK]
    for form_id in ids:  # each compiled only when it is tried
        form = _fast_form(sp, form_id)
        if form is not None:
            yield form


def _prefixes_of(cache: Dict[str, Optional[Tuple[str, int, int]]], prefs: Sequence[str]) -> List[Any]:
    try:
        return list(map(cache.__getitem__, prefs))
    except KeyError:
        pass
    for p in set(prefs).difference(cache):
        cache[p] = _prefix(p)
    return list(map(cache.__getitem__, prefs))


class _Rows:
    """The rows of ``_INDEX_RE`` of a trace, one per line: an H line's head, timestamp, event name and body,
    or None, None, None and the whole line."""

    __slots__ = ("bodies", "heads", "names", "stamps")

    def __init__(
        self, heads: List[Optional[str]], stamps: List[Optional[str]], names: List[Optional[str]], bodies: List[str]
    ) -> None:
        self.heads = heads
        self.stamps = stamps
        self.names = names
        self.bodies = bodies

    def line(self, i: int) -> str:
        """Line ``i`` as it was."""
        name = self.names[i]
        if name is None:
            return self.bodies[i]
        return f"{self.heads[i]}{self.stamps[i]}{_H_SEPARATOR}{name}:{self.bodies[i]}"


_RowColumns = Tuple[List[Optional[str]], List[Optional[str]], List[Optional[str]], List[str]]


def _index_rows_python(text: str) -> _RowColumns:
    """The index pass: the rows of ``text`` (see :class:`_Rows`), one per line, no row for an empty line after
    the last newline. ``pytest_ktrace._speedups.index_rows`` gives the same, in C."""
    flat: List[Any] = _INDEX_RE.split(text)  # one row per newline: no part of _H_LINE matches a newline
    heads, stamps, names, bodies = flat[1::4], flat[2::4], flat[3::4], flat[4::4]
    first = flat[0]
    del flat
    m0 = _FIRST_INDEX_RE.match(first)
    if m0 is not None:
        heads.insert(0, m0.group(1))
        stamps.insert(0, m0.group(2))
        names.insert(0, m0.group(3))
        bodies.insert(0, first[m0.end() :])
    else:
        heads.insert(0, None)
        stamps.insert(0, None)
        names.insert(0, None)
        bodies.insert(0, first)
    if names[-1] is None and bodies[-1] == "":
        for column in (heads, stamps, names, bodies):
            column.pop()
    return heads, stamps, names, bodies


def _compiled_index() -> Optional[Callable[[str], _RowColumns]]:
    """``index_rows`` of the C helper, None when it was not built (no C compiler where the plugin was
    installed: the parser then runs the same index pass in Python, slower)."""
    try:
        from ._speedups import index_rows
    except ImportError:
        return None
    return index_rows


_index_rows: Callable[[str], _RowColumns] = _compiled_index() or _index_rows_python


def _lines_of(name: str, heads: Sequence[str], stamps: Sequence[str], bodies: Sequence[str]) -> List[str]:
    """The whole lines of H lines of event ``name``, from their rows."""
    sep = _H_SEPARATOR + name + ":"
    return [h + t + sep + b for h, t, b in zip(heads, stamps, bodies)]


class _Group(List[Event]):
    """The events of one event name, in trace order (a list the events' source can refer to weakly)."""

    __slots__ = ("__weakref__",)


def _decode_group(
    sp: Optional[_Splitter],
    name: str,
    where: List[int],
    rows: _Rows,
    prefixes: Dict[str, Optional[Tuple[str, int, int]]],
) -> List[Event]:
    """The events of the H lines ``where`` (indices, in order) of event ``name``: exactly :func:`_line_event`
    of each. Built from the columns of their heads and timestamps; their fields and raw lines are left to a
    :class:`_PendingFields` (decoded when the first of them is read)."""
    m = len(where)
    if not m:
        return []
    # the rows of H lines: no None in them
    heads = cast(List[str], list(map(rows.heads.__getitem__, where)))
    stamps = cast(List[str], list(map(rows.stamps.__getitem__, where)))
    bodies = list(map(rows.bodies.__getitem__, where))
    if m <= _FEW_LINES or sp is None or sp.fmt.name != name or _NUMERIC_NAME_RE.fullmatch(name):
        # a handful of lines: decoding them one by one costs less than compiling the whole-text patterns
        return [_line_event(sp, raw) for raw in _lines_of(name, heads, stamps, bodies)]
    hdrs = _prefixes_of(prefixes, heads)
    if None in hdrs:  # never met: the head of an H line always splits (see "indexed parsing" above)
        return [_line_event(sp, raw) for raw in _lines_of(name, heads, stamps, bodies)]
    source = _PendingFields(sp, name, heads, stamps, bodies)
    group = _Group(_events_from_headers(sp.fmt.system, name, hdrs, list(map(float, stamps)), source))
    source.watch(group)
    return group


class _PendingFields:
    """The fields and raw lines of events :func:`_decode_group` built from their headers alone (a
    :class:`~pytest_ktrace._events.FieldsSource`): decoded for all of them at once, column-wise, when the first
    of them is read. It refers to the list of its events weakly, so that events and source make no reference
    cycle: while that list lives (the parsed trace holds it) all of them are given theirs at once; after, each
    event takes its own when it is read. Thread-safe: decoded once."""

    __slots__ = ("bodies", "decoded", "group", "heads", "lock", "name", "splitter", "stamps")

    def __init__(self, splitter: _Splitter, name: str, heads: List[str], stamps: List[str], bodies: List[str]) -> None:
        self.splitter = splitter
        self.name = name
        self.heads: Optional[List[str]] = heads
        self.stamps: Optional[List[str]] = stamps
        self.bodies: Optional[List[str]] = bodies
        self.group: Optional[weakref.ReferenceType[_Group]] = None
        self.decoded: Optional[Tuple[List[Dict[str, FieldValue]], List[str]]] = None
        self.lock = threading.Lock()

    def watch(self, group: _Group) -> None:
        """``group``: the list of its events, in order."""
        self.group = weakref.ref(group)

    def fill(self, event: Any) -> None:
        decoded = self.decoded
        if decoded is None:
            decoded = self._decode()
        if event._fields is None:  # the group was gone when they were decoded
            i = _source_index(event)
            _set_fields(event, decoded[0][i])
            _set_raw(event, decoded[1][i])

    def _decode(self) -> Tuple[List[Dict[str, FieldValue]], List[str]]:
        with self.lock:
            decoded = self.decoded
            if decoded is not None:
                return decoded
            assert self.heads is not None and self.stamps is not None and self.bodies is not None
            raws = _lines_of(self.name, self.heads, self.stamps, self.bodies)
            with _PausedGC():
                decoded = (_decode_fields(self.splitter, raws), raws)
                group = self.group() if self.group is not None else None
                if group is not None:
                    _give(group, *decoded)
            self.heads = self.stamps = self.bodies = None
            self.decoded = decoded
            return decoded


def _decode_fields(sp: _Splitter, raws: List[str]) -> List[Dict[str, FieldValue]]:
    """The ``fields`` of the events of ``raws``, H lines of ``sp``'s event: exactly those of
    :func:`_line_event`, column-wise for the lines that fit a form of the event."""
    m = len(raws)
    pending = list(range(m))
    pieces: List[Tuple[_FastForm, List[int], List[List[Any]]]] = []
    tried: List[_FastForm] = []
    while pending:
        # the form the first pending line prints in first (the forms exclude each other: any order gives the
        # same result, this one runs no regex over lines it cannot match)
        hm = _HEADER_RE.fullmatch(raws[pending[0]])
        body = (hm.group("body") if hm is not None else None) or ""
        form = next((f for f in _fast_forms(sp, body) if f not in tried), None)
        if form is None:
            break
        tried.append(form)
        sub = raws if len(pending) == m else list(map(raws.__getitem__, pending))
        joined = "\n".join(chain(("",), sub))
        fit, vcols = _split_lines(form.ascii if joined.isascii() else form.regex, joined, len(sub))
        del joined
        if not fit:
            continue
        if len(fit) == len(pending):
            pos, pending = pending, []
        else:
            pos = list(map(pending.__getitem__, fit))
            ok = [True] * len(pending)
            deque(map(ok.__setitem__, fit, repeat(False)), maxlen=0)
            pending = list(compress(pending, ok))
        pieces.append((form, pos, vcols))
    built = [form.dicts(len(pos), [_convert(vcols, c) for c in form.columns]) for form, pos, vcols in pieces]
    if len(built) == 1 and not pending:
        return built[0]
    out: List[Any] = [None] * m
    for (_form, pos, _vcols), dicts in zip(pieces, built):
        deque(map(out.__setitem__, pos, dicts), maxlen=0)
    for j in pending:
        out[j] = _line_event(sp, raws[j]).fields
    return out


def _positions(names: List[Optional[str]], name: Optional[str], count: int) -> List[int]:
    """The indices of the ``count`` occurrences of ``name`` in ``names``."""
    if count * 64 > len(names):
        return _indices(names, name)
    out = []
    index = names.index
    i = -1
    for _ in range(count):
        i = index(name, i + 1)
        out.append(i)
    return out


class _PausedGC:
    """``with _PausedGC():`` -- the cyclic GC off (restored after, also on errors). The events are acyclic;
    letting the GC walk the growing lists over and over costs ~30% of the time for big traces."""

    __slots__ = ("was_enabled",)

    def __enter__(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was_enabled:
            gc.enable()


_Run = Tuple[int, int, List[Event]]  # lines [start, end) read by the reference parser at parse time, their events


class _LazyEvents(Sequence[Event]):
    """The ``events`` of :meth:`TraceParser.parse`: a read-only sequence (equal to the list of the same events)
    whose length and per-event counts are known at once, and whose events are decoded per event name when
    first needed (see "indexed parsing" above). Thread-safe."""

    def __init__(
        self,
        rows: _Rows,
        counts: Dict[str, int],
        splitters: Dict[str, Optional[_Splitter]],
        runs: List[_Run],
        total: int,
    ) -> None:
        self._rows: Optional[_Rows] = rows  # the trace's rows (dropped once all groups are decoded)
        self._names: List[Optional[str]] = rows.names  # per line: the name of an H line outside the runs, else None
        self._counts = counts  # event name -> number of such lines
        self._splitters = splitters  # event name -> splitter, as at parse time
        self._runs = runs
        self._total = total
        self._groups: Dict[str, List[Event]] = {}  # decoded so far, per name (in trace order)
        self._where: Dict[str, List[int]] = {}  # line indices of the events of a name (as needed)
        self._all: Optional[List[Event]] = None
        self._prefixes: Dict[str, Optional[Tuple[str, int, int]]] = {}
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- decoding
    def _group(self, name: str) -> List[Event]:
        evs = self._groups.get(name)
        if evs is not None:
            return evs
        with self._lock, _PausedGC():
            evs = self._groups.get(name)
            if evs is None:
                evs = self._decode(name, self._positions(name))
            return evs

    def _decode(self, name: str, where: List[int]) -> List[Event]:
        rows = self._rows
        assert rows is not None  # dropped only when every group is decoded
        evs = self._groups[name] = _decode_group(self._splitters[name], name, where, rows, self._prefixes)
        if len(self._groups) == len(self._counts):
            self._rows = None
        return evs

    def _positions(self, name: str) -> List[int]:
        where = self._where.get(name)
        if where is None:
            where = self._where[name] = _positions(self._names, name, self._counts[name])
        return where

    def _list(self) -> List[Event]:
        """Every event, in trace order."""
        out = self._all
        if out is not None:
            return out
        with self._lock, _PausedGC():
            if self._all is not None:
                return self._all
            names = self._names
            todo = [k for k in self._counts if k not in self._groups]
            if len(todo) > 1:  # the lines of every event in one pass
                buckets: Dict[Optional[str], List[int]] = {k: [] for k in self._counts}
                buckets[None] = []
                deque(map(list.append, map(buckets.__getitem__, names), count()), maxlen=0)
                for k in todo:
                    self._where[k] = buckets[k]
                    self._decode(k, buckets[k])
                del buckets
            else:
                for k in todo:
                    self._group(k)
            its: Dict[Optional[str], Iterator[Event]] = {k: iter(evs) for k, evs in self._groups.items()}
            take = its.__getitem__
            out = []
            start = 0
            for a, b, evs in self._runs:
                if start < a:
                    out.extend(map(next, map(take, names[start:a])))
                out.extend(evs)
                start = b
            if start < len(names):
                out.extend(map(next, map(take, names[start:] if start else names)))
            if len(out) != self._total or any(next(it, None) is not None for it in its.values()):
                raise RuntimeError("pytest-ktrace internal error: decoded events do not match the index")
            self._all = out
            return out

    # ---------------------------------------------------------------- selections
    def select(self, keys: Iterable[Tuple[str, str]]) -> List[Event]:
        wanted = set(keys)
        sel = [k for k in self._counts if (_system_of(self._splitters[k], k), k) in wanted]
        extra = [(a, [e for e in evs if (e.system, e.name) in wanted]) for a, _b, evs in self._runs if evs]
        extra = [(a, evs) for a, evs in extra if evs]
        if len(sel) == 1 and not extra:
            return list(self._group(sel[0]))
        names = self._names
        its: Dict[Optional[str], Iterator[Event]] = {k: iter(self._group(k)) for k in sel}
        take = its.__getitem__
        idx = sorted(chain.from_iterable(map(self._positions, sel)))  # each sorted already: merged in O(n)
        out: List[Event] = []
        pos = 0
        for a, evs in extra:
            cut = bisect_left(idx, a, pos)
            if pos < cut:
                out.extend(map(next, map(take, map(names.__getitem__, idx[pos:cut]))))
            out.extend(evs)
            pos = cut
        if pos < len(idx):
            out.extend(map(next, map(take, map(names.__getitem__, idx[pos:]))))
        return out

    def count_of(self, system: str, name: str) -> int:
        n = self._counts.get(name, 0) if _system_of(self._splitters.get(name), name) == system else 0
        for _a, _b, evs in self._runs:
            n += sum(1 for e in evs if e.name == name and e.system == system)
        return n

    def event_counts(self) -> Dict[Tuple[str, str], int]:
        out = {(_system_of(self._splitters[k], k), k): n for k, n in self._counts.items()}
        for _a, _b, evs in self._runs:
            for e in evs:
                key = (e.system, e.name)
                out[key] = out.get(key, 0) + 1
        return out

    # ---------------------------------------------------------------- Sequence
    def __len__(self) -> int:
        return self._total

    def __bool__(self) -> bool:
        return self._total > 0

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> List[Event]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[Event, List[Event]]:
        return self._list()[index]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._list())

    def __reversed__(self) -> Iterator[Event]:
        return reversed(self._list())

    def __contains__(self, value: object) -> bool:
        return value in self._list()

    def index(self, value: Any, start: int = 0, stop: int = sys.maxsize) -> int:
        return self._list().index(value, start, stop)

    def count(self, value: Any) -> int:
        return self._list().count(value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _LazyEvents):
            return other is self or self._list() == other._list()
        if isinstance(other, list):
            return self._list() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # unhashable, as a list

    def __repr__(self) -> str:
        return repr(self._list())

    def __reduce__(self) -> Tuple[Any, ...]:
        return (list, (self._list(),))  # pickles / copies as the plain list


class _Sink:
    """Where the reference parser puts what it finds."""

    __slots__ = ("events", "lost", "unparsed")

    def __init__(self, events: List[Event], lost: Dict[int, int], unparsed: List[str]) -> None:
        self.events = events
        self.lost = lost
        self.unparsed = unparsed


class TraceParser:
    """Parses the text of a ``trace`` / ``trace_pipe`` read into events, using a :class:`FormatCatalog`.

    Splitters are compiled once per event format and cached; a format replaced in the catalog (same name) gets
    a new splitter. Not thread-safe (use one parser per thread); the :class:`ParsedTrace` it returns is."""

    def __init__(self, catalog: FormatCatalog) -> None:
        self.catalog = catalog
        self._splitters: Dict[str, Optional[_Splitter]] = {}  # None: no format known for the name
        self._version = catalog.version

    def _splitter(self, name: str) -> Optional[_Splitter]:
        if self._version != self.catalog.version:
            self._splitters.clear()
            self._version = self.catalog.version
        try:
            return self._splitters[name]
        except KeyError:
            pass
        fmt = self.catalog.get(name)
        sp = _Splitter(fmt) if fmt is not None else None
        self._splitters[name] = sp
        return sp

    def parse_line(self, line: str) -> Optional[Event]:
        """One event (its continuation lines joined with ``"\\n"``) -> :class:`Event`, or None."""
        if not isinstance(line, str):
            raise KtraceError(f"trace line must be str, got {type(line).__name__}")
        m = _HEADER_RE.fullmatch(line)
        if m is None:
            return None
        return self._event(m, line)

    def _event(self, m: re.Match[str], raw: str) -> Optional[Event]:
        g = m.groups()
        name = g[5]
        if name is None:
            return None
        if self._version == self.catalog.version:
            sp = self._splitters.get(name, _UNSET)
            if sp is _UNSET:
                sp = self._splitter(name)
        else:
            sp = self._splitter(name)
        return _event_of(sp, g, raw)

    def parse(self, text: str) -> ParsedTrace:
        """Parse a whole trace. Never raises on odd input: what cannot be understood lands in ``unparsed``.

        The result's ``events`` are decoded when first read (see :class:`ParsedTrace`); its length, ``lost``,
        ``unparsed`` and the per-event counts are known at once."""
        if not isinstance(text, str):
            raise KtraceError(f"trace text must be str, got {type(text).__name__}")
        with _PausedGC():
            result = self._parse_indexed(text)
            return result if result is not None else self._parse_slow(text)

    def _parse_slow(self, text: str) -> ParsedTrace:
        """The reference: line by line, every event decoded (``parse`` gives the same result, faster)."""
        result = _Sink([], {}, [])
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self._parse_lines(lines, result)
        return ParsedTrace(result.events, result.lost, result.unparsed)

    def _parse_indexed(self, text: str) -> Optional[ParsedTrace]:
        """The index pass (see "indexed parsing" above); None if an internal check fails (the caller then
        parses line by line)."""
        rows = _Rows(*_index_rows(text))
        names = rows.names
        counts = Counter(names)
        splitters: Dict[str, Optional[_Splitter]] = {}
        others: List[int] = []  # lines that are no H lines
        for k, c in counts.items():
            if k and not _NUMERIC_NAME_RE.fullmatch(k):
                splitters[k] = self._splitter(k)
            else:
                others.extend(_positions(names, k, c))
        runs: List[_Run] = []
        lost: Dict[int, int] = {}
        unparsed: List[str] = []
        if others:
            slow = set(others)
            for i in others:
                # the H line before may be continued by this one (unless it is a LOST line, which ends it)
                j = i - 1
                previous = names[j] if j >= 0 and j not in slow else None
                if previous is not None:
                    sp = splitters.get(previous)
                    if sp is not None and sp.multiline:
                        line = rows.line(i)
                        if line[:4] != "CPU:" or _LOST_RE.fullmatch(line) is None:
                            slow.add(j)
            sink = _Sink([], lost, unparsed)
            for a, b in _runs(sorted(slow)):
                sink.events = []
                self._parse_lines(list(map(rows.line, range(a, b))), sink)
                runs.append((a, b, sink.events))
                for i in range(a, b):
                    k = names[i]
                    if k is not None:
                        counts[k] -= 1
                        names[i] = None
        kept = {k: c for k, c in counts.items() if c and k in splitters}
        total = sum(kept.values()) + sum(len(evs) for _a, _b, evs in runs)
        events = _LazyEvents(rows, kept, {k: splitters[k] for k in kept}, runs, total)
        return ParsedTrace(events, lost, unparsed)

    def _parse_lines(self, lines: List[str], result: _Sink) -> None:
        """The reference parser: a state machine over lines (continuations, LOST lines), appending to
        ``result``."""
        events = result.events
        unparsed = result.unparsed
        lost = result.lost
        header_match = _HEADER_RE.fullmatch
        event = self._event
        # the pending event: its header match, first line, continuation lines (None: none so far)
        p_match: Optional[re.Match[str]] = None
        p_line = ""
        p_more: Optional[List[str]] = None
        for line in lines:
            m = header_match(line)
            if m is not None:
                if p_match is not None:
                    if p_more is None:
                        ev = event(p_match, p_line)
                        if ev is None:
                            unparsed.append(p_line)
                        else:
                            events.append(ev)
                    else:
                        self._flush(p_match, p_line, p_more, result)
                p_match = m
                p_line = line
                p_more = None
                continue
            if line[:4] == "CPU:":
                lm = _LOST_RE.fullmatch(line)
                if lm is not None:
                    if p_match is not None:
                        self._flush(p_match, p_line, p_more, result)
                        p_match = None
                    cpu = int(lm.group(1))
                    lost[cpu] = lost.get(cpu, 0) + (int(lm.group(2)) if lm.group(2) is not None else 1)
                    continue
            if p_match is not None:
                # a continuation of a string value (or noise / a stray header line: decided at flush), if the
                # pending event has a string that could hold a newline
                if p_more is None:
                    if self._multiline(p_match):
                        p_more = [line]
                        continue
                elif len(p_more) < _MAX_CONTINUATION:
                    p_more.append(line)
                    continue
                self._flush(p_match, p_line, p_more, result)
                p_match = None
            if line[:1] == "#" or not line.strip():
                continue  # header (or "##### CPU n buffer started ####") and blank lines
            unparsed.append(line)
        if p_match is not None:
            self._flush(p_match, p_line, p_more, result)

    def _flush(self, m: re.Match[str], first: str, more: Optional[List[str]], result: _Sink) -> None:
        if more is None:
            ev = self._event(m, first)
            if ev is None:
                result.unparsed.append(first)
            else:
                result.events.append(ev)
            return
        # an event followed by lines that are no event headers: newlines inside a string value, or noise
        lines = [first, *more]
        # the most continuation lines that still fit the event's format win; the rest is noise
        for cut in range(len(lines), 1, -1):
            text = "\n".join(lines[:cut])
            hm = _HEADER_RE.fullmatch(text)
            if hm is None or not self._fits(hm):
                continue
            ev = self._event(hm, text)
            if ev is not None:
                result.events.append(ev)
                self._noise(lines[cut:], result)
                return
        ev = self._event(m, first)
        if ev is None:
            result.unparsed.append(first)
        else:
            result.events.append(ev)
        self._noise(more, result)

    @staticmethod
    def _noise(lines: List[str], result: _Sink) -> None:
        for line in lines:
            if line[:1] == "#" or not line.strip():
                continue  # header lines, blank lines
            result.unparsed.append(line)

    def _multiline(self, m: re.Match[str]) -> bool:
        """Whether the event of header match ``m`` has a string field (that may continue on the next line)."""
        name = m.group("name")
        if name is None:
            return False
        sp = self._splitter(name)
        return sp is not None and sp.multiline

    def _fits(self, hm: re.Match[str]) -> bool:
        """Whether a (multi-line) event parses with its own format's splitter."""
        name = hm.group("name")
        if name is None:
            return False
        sp = self._splitter(name)
        if sp is None:
            return False  # unknown event: no idea where its strings are; keep the extra lines apart
        body = hm.group("body")
        if body[:2] != " (" and sp.split_fields(body) is not None:
            return True
        return sp.split_fallback(body) is not None
