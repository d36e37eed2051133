"""Event formats and trace text -> typed :class:`~pytest_ktrace.events.Event` objects.

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

import dataclasses
import gc
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Pattern, Sequence, Tuple

from .errors import KtraceError
from .events import Event, FieldValue

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


def parse_format(text: str, system: str) -> EventFormat:
    """Parse the text of an event ``format`` file. Raises :class:`KtraceError` naming the line on garbage."""
    if not isinstance(text, str):
        raise KtraceError(f"format of an event in {system!r}: expected text, got {type(text).__name__}")
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
            m = _FIELD_RE.fullmatch(line)
            if m is None:
                raise KtraceError(f"{where}: line {lineno}: malformed field line {raw!r}")
            try:
                ctype, fname = _parse_decl(m.group("decl"))
            except ValueError as exc:
                raise KtraceError(f"{where}: line {lineno}: {exc}") from None
            signed = m.group("signed")
            fields.append(
                FieldFormat(
                    name=fname,
                    ctype=ctype,
                    offset=int(m.group("offset")),
                    size=int(m.group("size")),
                    signed=bool(signed) and int(signed) != 0,
                )
            )
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
    (``CPU:n [LOST EVENTS]`` without a number counts as 1) and lines that could not be understood."""

    events: List[Event] = field(default_factory=list)
    lost: Dict[int, int] = field(default_factory=dict)
    unparsed: List[str] = field(default_factory=list)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())


# "<comm>-<pid> [(<tgid>)] [<cpu>] [<flags>] <ts>: <name>: <body>"; comm may hold spaces and dashes, the pid
# is the number after the last '-' before the cpu column. The tgid column (options/record-tgid) and the flags
# column (options/irq-info) are optional, the timestamp may be an integer (counter / tsc clocks). ``other``
# catches event lines without a name (``UNKNOWN TYPE 5``).
_HEADER_RE = re.compile(
    r"\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+(?:(?P<flags>\S+)\s+)?"
    r"(?P<ts>\d+(?:\.\d+)?): (?:(?P<name>[^\s:]+):(?P<body>.*)|(?P<other>.*))",
    re.DOTALL,
)
_LOST_RE = re.compile(r"CPU:(\d+) \[LOST(?: (\d+))? EVENTS\]\s*")

# value patterns of print_fields(); integer patterns have two groups: the decimal in parens, or an error
_ERR = r"(<[A-Z][A-Z-]*>)"  # <OVERFLOW>, <INVALID-SIZE>, <INVALID-TYPE>
# Strings are greedy: when a value contains text that looks like the fields after it ("name=a b=0x0 (0)"),
# the string keeps it and the real fields are the last ones that fit. char[N] prints at most N characters.
_V_STRING = r"(.*)"
_V_PTR_STRING = r"(\(.*?\)|<[A-Z][A-Z-]*>)"
_V_INT1 = r"(?:(?:'.')?\((-?\d+)\)|" + _ERR + r")"
_V_INT24 = r"(?:(?:0x[0-9a-f]+|-?\d+) \((-?\d+)\)|" + _ERR + r")"
_V_INT8 = r"(?:(?:0x[0-9a-f]+|\S+?(?: \[[^\]\s]+\])?) \((-?\d+)\)|" + _ERR + r")"
_V_ARRAY = r"((?:[0-9a-f]{2}(?:,[0-9a-f]{2})*)?|<[A-Z][A-Z-]*>)"
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


def _compile_converter(plan: Sequence[_PlanEntry]) -> _Converter:
    """Straight-line Python for one event's fields (no per-field loop): regex groups -> typed dict."""
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
        "fallback_plan",
        "fallback_re",
        "fconv",
        "first",
        "fmt",
        "forward",
        "last",
        "multiline",
        "rconv",
        "reverse",
    )

    def __init__(self, fmt: EventFormat) -> None:
        self.fmt = fmt
        fields = fmt.fields
        self.multiline = any(f.is_string for f in fields)
        kinds = [_kind_of(f) for f in fields]
        plan = [_plan_entry(f, k[0]) for f, k in zip(fields, kinds)]
        self.first = " " + fields[0].name + "=" if fields else ""
        self.last = " " + fields[-1].name + "=" if fields else ""
        self.forward: Optional[Pattern[str]] = None
        self.reverse: Optional[Pattern[str]] = None
        self.fconv: Optional[_Converter] = None
        self.rconv: Optional[_Converter] = None
        if fields:
            parts = [" " + re.escape(f.name) + "=" + k[1] for f, k in zip(fields, kinds)]
            self.forward = re.compile("".join(parts) + r"\n?", re.DOTALL)
            self.fconv = _compile_converter(plan)
            if len(fields) > 1:
                self.reverse = re.compile("".join(reversed(parts)) + r"\n?", re.DOTALL)
                self.rconv = _compile_converter(list(reversed(plan)))
        self.fallback_re: Optional[Pattern[str]] = None
        self.fallback_plan: Tuple[_PlanEntry, ...] = ()
        if fmt.is_probe:
            self._build_probe_fallback()

    def _build_probe_fallback(self) -> None:
        """Default uprobe/kprobe output: ``(ip) a=.. b=".."`` or ``(ret_ip <- func) a=..``."""
        fields = self.fmt.fields
        addr = r"[^()\s]+(?: \[[^\]\s]+\])?"
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
        """Default probe output (kernels without ``options/fields``)."""
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


# Event is a frozen dataclass; its generated __init__ (object.__setattr__ per field) is a third of the parse
# time. When Event is the plain dataclass we know, build instances by setting __dict__ at once (same object).
_EVENT_FIELDS = ("system", "name", "fields", "pid", "comm", "cpu", "timestamp", "raw")
_FAST_EVENT = (
    tuple(f.name for f in dataclasses.fields(Event)) == _EVENT_FIELDS
    and not hasattr(Event, "__post_init__")
    and "__slots__" not in vars(Event)
)
_new = object.__new__
_setattr = object.__setattr__


def _make_event(
    system: str, name: str, fields: Dict[str, FieldValue], pid: int, comm: str, cpu: int, ts: float, raw: str
) -> Event:
    if _FAST_EVENT:
        ev: Event = _new(Event)
        _setattr(
            ev,
            "__dict__",
            {
                "system": system,
                "name": name,
                "fields": fields,
                "pid": pid,
                "comm": comm,
                "cpu": cpu,
                "timestamp": ts,
                "raw": raw,
            },
        )
        return ev
    return Event(system=system, name=name, fields=fields, pid=pid, comm=comm, cpu=cpu, timestamp=ts, raw=raw)


_UNSET: Any = object()
_MAX_CONTINUATION = 256  # lines one string value may continue on; more is noise


class TraceParser:
    """Parses the text of a ``trace`` / ``trace_pipe`` read into events, using a :class:`FormatCatalog`.

    Splitters are compiled once per event format and cached; a format replaced in the catalog (same name) gets
    a new splitter. Not thread-safe (use one parser per thread)."""

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
        m = _HEADER_RE.fullmatch(line)
        if m is None:
            return None
        return self._event(m, line)

    def _event(self, m: re.Match[str], raw: str) -> Optional[Event]:
        comm, pid, cpu, _flags, ts, name, body, _other = m.groups()
        if name is None:
            return None
        if self._version == self.catalog.version:
            sp = self._splitters.get(name, _UNSET)
            if sp is _UNSET:
                sp = self._splitter(name)
        else:
            sp = self._splitter(name)
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
        if _FAST_EVENT:
            ev: Event = _new(Event)
            _setattr(
                ev,
                "__dict__",
                {
                    "system": system,
                    "name": name,
                    "fields": values,
                    "pid": int(pid),
                    "comm": comm,
                    "cpu": int(cpu),
                    "timestamp": float(ts),
                    "raw": raw,
                },
            )
            return ev
        return _make_event(system, name, values, int(pid), comm, int(cpu), float(ts), raw)

    def parse(self, text: str) -> ParsedTrace:
        """Parse a whole trace. Never raises on odd input: what cannot be understood lands in ``unparsed``."""
        if not isinstance(text, str):
            raise KtraceError(f"trace text must be str, got {type(text).__name__}")
        # The events are acyclic; letting the cyclic GC walk the growing list over and over costs ~30% of the
        # parse time for big traces. Pause it (restored right after, also on errors).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._parse(text)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _parse(self, text: str) -> ParsedTrace:
        result = ParsedTrace()
        events = result.events
        unparsed = result.unparsed
        lost = result.lost
        header_match = _HEADER_RE.fullmatch
        event = self._event
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
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
        return result

    def _flush(self, m: re.Match[str], first: str, more: Optional[List[str]], result: ParsedTrace) -> None:
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
    def _noise(lines: List[str], result: ParsedTrace) -> None:
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
