"""Call stacks of ``stacktrace=True`` probes: the ``<stack trace>`` entries the kernel's ``stacktrace`` event
trigger writes right after the event on the same CPU, read from the trace text and attached to that event.

The kernel prints a stack as its own entry (trace_output.c ``trace_stack_print``)::

    insmod-812  [001] .....  91.203: p___setup_irq: (__setup_irq+0x0/0x6e0) irq=0x1
    insmod-812  [001] .....  91.203: <stack trace>
     => __setup_irq
     => request_threaded_irq
     => i8042_probe

Each CPU's buffer holds an event and then its stack, so the stack belongs to the last event seen on that CPU
(``trace`` merges the CPUs by time, which keeps each CPU's own order). The frames of the tracer itself in front
(``kprobe_dispatcher``, the ftrace trampoline, ``trace_event_raw_event_*``) are left out: a stack starts at the
probed function."""

from __future__ import annotations

import bisect
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._events import Event
from ._splitters import HEADER_RE

__all__ = [
    "StackKey",
    "TraceStacks",
    "frame_name",
    "probed_part",
    "stack_key",
    "stacks_by_event",
    "symbolize_user",
    "with_stacks",
]

StackKey = Tuple[int, int, float, str]  # cpu, pid, timestamp, event name

_KERNEL_STACK = "<stack trace>"
_USER_STACK = "<user stack trace>"
_SYM_OFFSET = re.compile(r"\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+$")
# The tracer's own frames above the probed code (kprobe/uprobe dispatch, the ftrace trampoline, printed as a bare
# address, the tracepoint's event writer): left out of the front of a stack, so it starts where the probe is.
_MACHINERY = re.compile(
    r"(?:k|kret|u|uret)probe_(?:trace_func|dispatcher|ftrace_handler|perf_func)|__kretprobe_trampoline_handler|"
    r"kretprobe_trampoline_handler|trampoline_handler|__kretprobe_trampoline|kretprobe_trampoline|"
    r"arch_rethook_trampoline(?:_callback)?|rethook_trampoline_handler|kprobe_breakpoint_handler|"
    r"kprobe_handler|handler_chain|handle_swbp|uprobe_notify_resume|"
    r"call_break_hook|brk_handler|do_debug_exception|el1_dbg|el1h_64_sync_handler|el1h_64_sync|"  # arm64 BRK
    r"kprobe_int3_handler|do_int3|exc_int3|asm_exc_int3|"  # x86 int3
    r"trace_event_raw_event_\w+|__traceiter_\w+|perf_trace_\w+|trace_\w+_rcuidle|"
    r"0x[0-9a-fA-F]+|\[FTRACE TRAMPOLINE\]"
)


def frame_name(frame: str) -> str:
    """A frame as printed (``name``, ``name+0x1a/0x40`` with options/sym-offset, ``[FTRACE TRAMPOLINE]``)
    without the offset."""
    return _SYM_OFFSET.sub("", frame.strip())


def probed_part(frames: Sequence[str]) -> Tuple[str, ...]:
    """``frames`` without the tracing machinery in front of the probed function (all of it if nothing is left)."""
    start = 0
    while start < len(frames) and _MACHINERY.fullmatch(frames[start]):
        start += 1
    return tuple(frames[start:] if start < len(frames) else frames)


@dataclass
class TraceStacks:
    """The stack entries of one trace, keyed by the event each follows: ``kernel`` frames (names, the probed
    part) and ``user`` frames (what ``<user stack trace>`` printed: addresses as ints, ``path[+0x..]`` as str)."""

    kernel: Dict[StackKey, Tuple[str, ...]] = field(default_factory=dict)
    user: Dict[StackKey, Tuple[Union[int, str], ...]] = field(default_factory=dict)


def _user_frame(text: str) -> Union[int, str]:
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        try:
            return int(text[1:-1], 16)
        except ValueError:
            return text
    return text


def stacks_by_event(text: str) -> TraceStacks:
    """Every stack entry of a trace, keyed by the event it follows on the same CPU."""
    last: Dict[int, StackKey] = {}  # cpu -> key of the last event on it
    found = TraceStacks()
    frames: Optional[List[str]] = None
    owner: Optional[StackKey] = None
    user = False

    def close() -> None:
        if owner is None or frames is None:
            return
        if user:
            found.user[owner] = tuple(_user_frame(frame) for frame in frames)
        else:
            found.kernel[owner] = probed_part([frame_name(frame) for frame in frames])

    for line in text.split("\n"):
        if frames is not None and line.startswith(" => "):
            frames.append(line[4:])
            continue
        if not line or line.startswith("#"):
            continue
        head = HEADER_RE.fullmatch(line)
        if head is None:
            continue  # a continuation of a multi-line string value
        close()
        frames, owner = None, None
        cpu = int(head.group("cpu"))
        other = head.group("other") or ""
        if other.startswith(_KERNEL_STACK) or other.startswith(_USER_STACK):
            user = other.startswith(_USER_STACK)
            owner = last.get(cpu)
            frames = []
            continue
        if head.group("name") is not None:
            last[cpu] = (cpu, int(head.group("pid")), float(head.group("ts")), head.group("name"))
    close()
    return found


def symbolize_user(
    frames: Sequence[Union[int, str]], *, anchor_address: int, anchor_offset: int, functions: Mapping[str, int]
) -> Tuple[str, ...]:
    """User frames (addresses) as function names of one ELF file: ``anchor_address`` is where the probe hit
    (its file offset ``anchor_offset``) in this process, which gives the load bias; ``functions`` maps names to
    file offsets. A frame outside the file's functions stays a hex address (another library)."""
    starts = sorted((offset, name) for name, offset in functions.items())
    offsets = [offset for offset, _ in starts]
    last_end = offsets[-1] + 0x100000 if offsets else 0
    bias = anchor_address - anchor_offset
    out: List[str] = []
    for frame in frames:
        if isinstance(frame, str):
            out.append(frame)
            continue
        offset = frame - bias
        index = bisect.bisect_right(offsets, offset) - 1
        if index >= 0 and offset < last_end:
            out.append(starts[index][1])
        else:
            out.append(f"0x{frame:x}")
    return tuple(out)


def stack_key(event: Event) -> StackKey:
    return (event.cpu, event.pid, event.timestamp, event.name)


def with_stacks(events: Sequence[Event], stacks: Mapping[StackKey, Tuple[str, ...]]) -> List[Event]:
    """``events`` with ``stack`` set from ``stacks`` (an event without a stack entry keeps ``()``)."""
    out: List[Event] = []
    for event in events:
        stack = stacks.get(stack_key(event))
        out.append(dataclasses.replace(event, stack=stack) if stack else event)
    return out
