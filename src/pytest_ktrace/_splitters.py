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

import re
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Pattern, Sequence, Tuple

from ._events import Event, FieldValue, _make_event
from ._formats import EventFormat, FieldFormat

if TYPE_CHECKING:
    from ._indexed import _FastForm


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
    """The event of an H line (see "indexed parsing" in _indexed.py), decoded by the reference."""
    hm = _HEADER_RE.fullmatch(raw)
    ev = _event_of(sp, hm.groups(), raw) if hm is not None else None
    if ev is None:  # cannot happen: an H line is an event header of the reference parser
        raise RuntimeError(f"pytest-ktrace internal error: indexed line is no event: {raw[:200]!r}")
    return ev
