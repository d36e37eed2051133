"""Trace text as the kernel prints it: the ``trace`` header, each line's context and each event's body.

Sources (v6.12): ``trace.c`` (``print_event_info``, ``print_func_help_header[_irq]``, ``print_trace_line``),
``trace_output.c`` (``trace_print_context``, ``trace_print_lat_fmt``, ``print_fields``), ``trace_probe.c`` (type
printers, ``trace_probe_print_args``), ``trace_kprobe.c``/``trace_uprobe.c`` (probe event bodies).

What is rendered how:

* kprobe: ``name: (sym+0xoff/0xsize) args``; kretprobe ``name: (ret_sym+0xoff/0xsize <- func_sym) args``;
  uprobe ``name: (0x<ip>) args``; uretprobe ``name: (0x<ret_ip> <- 0x<func>) args``.  Arguments use the fetch
  type printers (untyped arguments are ``x64``: hex).
* with the ``fields`` option every event prints through ``print_fields()`` (``name: f1=v1 f2=v2``); a
  ``trace_marker`` record then prints ``UNKNOWN TYPE 5``, exactly like a 6.x kernel, because print_event_fields()
  stops looking for ftrace's own event types at the first dynamic event in ``ftrace_events``.
* tracepoint events without ``fields``: the kernel evaluates their ``print fmt`` (C expressions, helper
  functions such as ``__print_symbolic``).  That is not modelled: they print in the ``print_fields()`` style,
  which :class:`pytest_ktrace._parse.TraceParser` reads back just the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Optional, Tuple, Union

from ._formats import EventField, fetch_type_info

__all__ = [
    "TRACE_FLAG_BH_OFF",
    "TRACE_FLAG_HARDIRQ",
    "TRACE_FLAG_IRQS_NOSUPPORT",
    "TRACE_FLAG_IRQS_OFF",
    "TRACE_FLAG_NEED_RESCHED",
    "TRACE_FLAG_NMI",
    "TRACE_FLAG_PREEMPT_RESCHED",
    "TRACE_FLAG_SOFTIRQ",
    "TRACE_PRINT_TYPE",
    "EventLayout",
    "EventRecord",
    "RecordValue",
    "Symbolizer",
    "render_body",
    "render_context",
    "render_header",
    "render_lost_events",
    "render_timestamp",
]

# include/linux/trace_events.h, enum trace_flag_type
TRACE_FLAG_IRQS_OFF = 0x01
TRACE_FLAG_IRQS_NOSUPPORT = 0x02
TRACE_FLAG_NEED_RESCHED = 0x04
TRACE_FLAG_HARDIRQ = 0x08
TRACE_FLAG_SOFTIRQ = 0x10
TRACE_FLAG_PREEMPT_RESCHED = 0x20
TRACE_FLAG_NMI = 0x40
TRACE_FLAG_BH_OFF = 0x80

#: The ring-buffer type of trace_marker records (TRACE_PRINT in trace.h's enum trace_type).
TRACE_PRINT_TYPE = 5

#: A stored field value: an integer, a string (``None``: the probe could not fetch it, printed ``(fault)``), or
#: the elements of a probe array argument.
RecordValue = Union[int, str, None, tuple[Union[int, str, None], ...]]
#: address -> ``sym+0xoff/0xsize`` (with_offset) or ``sym``; None when no symbol holds the address.
Symbolizer = Callable[[int, bool], Optional[str]]

EventKind = Literal["tracepoint", "kprobe", "uprobe", "marker"]


@dataclass(frozen=True)
class EventLayout:
    """What rendering needs to know about an event, captured when the record is made."""

    system: str
    name: str
    kind: EventKind
    is_return: bool = False
    fields: tuple[EventField, ...] = ()


@dataclass(frozen=True)
class EventRecord:
    """One entry of a per-CPU ring buffer."""

    layout: EventLayout
    pid: int
    comm: str
    cpu: int
    timestamp: float
    values: Mapping[str, RecordValue] = field(hash=False)
    irq_flags: int = 0
    preempt_count: int = 0
    stack: Optional[Tuple[str, ...]] = None  # set: this entry is the <stack trace> a trigger wrote after an event


# --------------------------------------------------------------------------------------------------------------
# Header and context
# --------------------------------------------------------------------------------------------------------------


def render_header(
    *, tracer: str, entries: int, written: int, cpus: int, context_info: bool, irq_info: bool, record_tgid: bool
) -> str:
    """The ``# tracer:`` block of ``trace`` (s_show() with no entry, trace_default_header())."""
    lines = [f"# tracer: {tracer}", "#"]
    if context_info:
        lines += [f"# entries-in-buffer/entries-written: {entries}/{written}   #P:{cpus}", "#"]
        if irq_info:
            precision = 12 if record_tgid else 2
            space = " " * precision
            tgid_title = "     TGID   "[:precision]
            tgid_bar = "       |    "[:precision]
            lines += [
                f"#                            {space}  _-----=> irqs-off/BH-disabled",
                f"#                            {space} / _----=> need-resched",
                f"#                            {space}| / _---=> hardirq/softirq",
                f"#                            {space}|| / _--=> preempt-depth",
                f"#                            {space}||| / _-=> migrate-disable",
                f"#                            {space}|||| /     delay",
                f"#           TASK-PID  {tgid_title} CPU#  |||||  TIMESTAMP  FUNCTION",
                f"#              | |    {tgid_bar}   |   |||||     |         |",
            ]
        else:
            tgid_title = "   TGID   " if record_tgid else ""
            tgid_bar = "     |    " if record_tgid else ""
            lines += [
                f"#           TASK-PID    {tgid_title} CPU#     TIMESTAMP  FUNCTION",
                f"#              | |      {tgid_bar}   |         |         |",
            ]
    return "\n".join(lines) + "\n"


def _lat_flags(irq_flags: int, preempt_count: int) -> str:
    """trace_print_lat_fmt(): irqs-off, need-resched, hardirq/softirq, preempt depth, migrate-disable."""
    bh_off = irq_flags & TRACE_FLAG_BH_OFF
    if irq_flags & TRACE_FLAG_IRQS_OFF and bh_off:
        irqs_off = "D"
    elif irq_flags & TRACE_FLAG_IRQS_OFF:
        irqs_off = "d"
    elif bh_off:
        irqs_off = "b"
    elif irq_flags & TRACE_FLAG_IRQS_NOSUPPORT:
        irqs_off = "X"
    else:
        irqs_off = "."
    resched = irq_flags & (TRACE_FLAG_NEED_RESCHED | TRACE_FLAG_PREEMPT_RESCHED)
    need_resched = {
        TRACE_FLAG_NEED_RESCHED | TRACE_FLAG_PREEMPT_RESCHED: "N",
        TRACE_FLAG_NEED_RESCHED: "n",
        TRACE_FLAG_PREEMPT_RESCHED: "p",
    }.get(resched, ".")
    nmi, hardirq, softirq = irq_flags & TRACE_FLAG_NMI, irq_flags & TRACE_FLAG_HARDIRQ, irq_flags & TRACE_FLAG_SOFTIRQ
    if nmi and hardirq:
        hardsoft = "Z"
    elif nmi:
        hardsoft = "z"
    elif hardirq and softirq:
        hardsoft = "H"
    elif hardirq:
        hardsoft = "h"
    elif softirq:
        hardsoft = "s"
    else:
        hardsoft = "."
    depth = f"{preempt_count & 0xF:x}" if preempt_count & 0xF else "."
    migrate = f"{(preempt_count >> 4) & 0xF:x}" if preempt_count & 0xF0 else "."
    return f"{irqs_off}{need_resched}{hardsoft}{depth}{migrate}"


def render_timestamp(timestamp: float) -> str:
    """trace_print_time(): ``" %5lu.%06lu"`` of the nanosecond clock rounded to microseconds (ns2usecs)."""
    micros = max(0, round(timestamp * 1_000_000))
    seconds, micros = divmod(micros, 1_000_000)
    return f" {seconds:5d}.{micros:06d}"


def render_context(record: EventRecord, *, irq_info: bool, tgid: Optional[int], record_tgid: bool) -> str:
    """trace_print_context(): ``comm-pid [(tgid)] [cpu] [flags] timestamp: ``."""
    parts = [f"{record.comm:>16}-{record.pid:<7d} "]
    if record_tgid:
        parts.append(f"({tgid:7d}) " if tgid else "(-------) ")
    parts.append(f"[{record.cpu:03d}] ")
    if irq_info:
        parts.append(_lat_flags(record.irq_flags, record.preempt_count))
    parts.append(render_timestamp(record.timestamp))
    parts.append(": ")
    return "".join(parts)


def render_lost_events(cpu: int, count: int) -> str:
    return f"CPU:{cpu} [LOST {count} EVENTS]"


# --------------------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------------------


def _unsigned(value: int, size: int) -> int:
    return value & ((1 << (8 * size)) - 1)


def _signed(value: int, size: int) -> int:
    value = _unsigned(value, size)
    sign = 1 << (8 * size - 1)
    return value - (sign << 1) if value & sign else value


def _as_int(value: RecordValue) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) == 1:
        return ord(value)  # a char argument given as a one-character string
    return 0


def _c_string(value: RecordValue) -> Optional[str]:
    """A stored string as C's %s sees it (up to the first NUL); None for a fault."""
    if value is None or isinstance(value, tuple):
        return None
    text = str(value)
    return text.split("\0", 1)[0]


def _printable(byte: int) -> bool:
    return 0x20 <= byte <= 0x7E


def _print_probe_value(type_name: str, value: RecordValue, symbolize: Symbolizer) -> str:
    """One element through the fetch type's print function (trace_probe.c PRINT_TYPE_FUNC_NAME)."""
    info, _count = fetch_type_info(type_name)
    if info.is_string:
        text = _c_string(value)
        return "(fault)" if text is None else f'"{text}"'
    number = _as_int(value)
    if info.name == "symbol":
        address = _unsigned(number, 8)
        return symbolize(address, True) or f"0x{address:x}"
    if info.name == "char":
        return f"'{chr(_unsigned(number, 1))}'"
    if info.print_format.startswith("0x"):
        return f"0x{_unsigned(number, info.size):x}"
    if info.signed:
        return str(_signed(number, info.size))
    return str(_unsigned(number, info.size))


def _probe_arguments(record: EventRecord, symbolize: Symbolizer) -> str:
    """trace_probe_print_args(): `` name=value`` per argument, arrays as ``{v1,v2}``."""
    parts: list[str] = []
    for event_field in record.layout.fields:
        if event_field.fetch_type is None:
            continue  # the __probe_* header fields
        value = record.values.get(event_field.name)
        if event_field.count:
            elements = value if isinstance(value, tuple) else ()
            padded = [elements[i] if i < len(elements) else None for i in range(event_field.count)]
            if not fetch_type_info(event_field.fetch_type)[0].is_string:
                padded = [0 if element is None else element for element in padded]
            shown = ",".join(_print_probe_value(event_field.fetch_type, element, symbolize) for element in padded)
            parts.append(f" {event_field.name}={{{shown}}}")
        else:
            parts.append(f" {event_field.name}={_print_probe_value(event_field.fetch_type, value, symbolize)}")
    return "".join(parts)


def _print_address(address: int, with_offset: bool, symbolize: Symbolizer) -> str:
    """seq_print_ip_sym(): ``0`` for a null ip, the symbol, or ``0x%08lx`` when no symbol holds it."""
    if not address:
        return "0"
    return symbolize(address, with_offset) or f"0x{address:08x}"


def _array_bytes(value: RecordValue, element_size: int) -> bytes:
    if isinstance(value, tuple):
        return b"".join(_unsigned(_as_int(element), element_size).to_bytes(element_size, "little") for element in value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return b""


def _field_value_text(event_field: EventField, value: RecordValue) -> str:
    """print_fields() for one field, by its filter type and size."""
    c_type = event_field.c_type
    if "cpumask_t" in c_type and "__data_loc" in c_type:
        return "<INVALID-TYPE>"  # FILTER_CPUMASK is not handled by print_fields()
    if event_field.is_string:
        if c_type in ("char *", "const char *"):
            address = _as_int(value) if not isinstance(value, str) else 0
            return f"(0x{_unsigned(address, 8):016x})"
        if isinstance(value, tuple):  # a probe string array: the first element's data_loc is printed
            value = value[0] if value else None
        text = _c_string(value)
        if text is None:
            return ""
        if "__data_loc" not in c_type and "__rel_loc" not in c_type:
            return text[: event_field.size]
        return text
    size = event_field.size
    if size == 4 and ("__data_loc" in c_type or "__rel_loc" in c_type):
        return ",".join(f"{byte:02x}" for byte in _array_bytes(value, 1))
    if size not in (1, 2, 4, 8):
        return "<INVALID-SIZE>"
    if isinstance(value, tuple):
        element_size = size // max(1, event_field.count or len(value) or 1)
        number = int.from_bytes(_array_bytes(value, max(1, element_size))[:size].ljust(size, b"\0"), "little")
    else:
        number = _as_int(value)
    unsigned = _unsigned(number, size)
    if size == 1:
        return (f"'{chr(unsigned)}'" if _printable(unsigned) else "") + f"({unsigned})"
    if size == 2:
        return f"0x{unsigned:x} ({unsigned})"
    return f"0x{unsigned:x} ({_signed(number, size)})"


def _print_fields(record: EventRecord) -> str:
    if not record.layout.fields:
        return f"{record.layout.name}:No fields found"
    shown = "".join(
        f" {event_field.name}={_field_value_text(event_field, record.values.get(event_field.name))}"
        for event_field in record.layout.fields
    )
    return f"{record.layout.name}:{shown}"


def render_body(record: EventRecord, *, fields_option: bool, symbolize: Symbolizer) -> str:
    """The text after the context: the event's output without its final newline (it may hold newlines)."""
    layout = record.layout
    if layout.kind == "marker":
        if fields_option:
            return f"UNKNOWN TYPE {TRACE_PRINT_TYPE}"
        text = str(record.values.get("buf", ""))
        return "tracing_mark_write: " + (text[:-1] if text.endswith("\n") else text)
    if fields_option or layout.kind == "tracepoint":
        return _print_fields(record)
    values = record.values
    if layout.kind == "kprobe":
        if layout.is_return:
            ret_ip = _print_address(_as_int(values.get("__probe_ret_ip")), True, symbolize)
            func = _print_address(_as_int(values.get("__probe_func")), False, symbolize)
            head = f"({ret_ip} <- {func})"
        else:
            head = f"({_print_address(_as_int(values.get('__probe_ip')), True, symbolize)})"
    elif layout.is_return:
        return_address = _unsigned(_as_int(values.get("__probe_ret_ip")), 8)
        function_address = _unsigned(_as_int(values.get("__probe_func")), 8)
        head = f"(0x{return_address:x} <- 0x{function_address:x})"
    else:
        head = f"(0x{_unsigned(_as_int(values.get('__probe_ip')), 8):x})"
    return f"{layout.name}: {head}{_probe_arguments(record, symbolize)}"
