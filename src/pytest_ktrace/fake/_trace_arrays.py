"""Trace arrays: the top level and each instance, with their ring buffers, options and per-event state.

A :class:`TraceArray` stores the records of the events enabled in it (one buffer per CPU, overwriting or dropping
as ``overwrite`` says), prints them through ``trace`` and consumes them through ``trace_pipe``, and answers the
files that concern only itself (``buffer_size_kb``, ``tracing_on``, ``trace_marker``, ``set_event_pid``, options
...).  The per-event state it keeps (:class:`EventFile`) is read and written by :mod:`._event_files`.
:class:`TraceArrays` holds the top level and the instances.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

from ._filters import CompiledFilter
from ._formats import EventField
from ._kernel import FakeKernel
from ._kernel_lib import KERNEL_SPACE, kstrtoul_from_user
from ._render import (
    EventLayout,
    EventRecord,
    RecordValue,
    render_body,
    render_context,
    render_header,
    render_lost_events,
)
from ._syscall_errors import FakeOSError

__all__ = ["CpuBuffer", "EventFile", "TraceArray", "TraceArrays", "parse_switch"]

_TRACE_STACK = 4  # enum trace_type: TRACE_STACK, as "UNKNOWN TYPE 4" shows it
_ERROR_LOG_MAX = 8  # TRACING_LOG_ERRS_MAX
_BUFFER_PAGE_DATA = 4080  # BUF_PAGE_SIZE: a 4 KiB sub-buffer minus its header
_DEFAULT_BUFFER_PAGES = 354  # 1410 KiB per CPU, what a 6.x kernel shows once the buffer is expanded
_MAX_BUFFER_KB = 1 << 24  # larger resizes fail with ENOMEM (the allocation would)
_TRACE_MARKER_MAX_SIZE = 4096
_PID_MAX_LIMIT = 4 * 1024 * 1024

# trace_options as a 6.18 kernel lists them (top level; instances differ in the two printk/marker options).
_CORE_OPTIONS: tuple[tuple[str, bool], ...] = (
    ("print-parent", True),
    ("sym-offset", False),
    ("sym-addr", False),
    ("verbose", False),
    ("raw", False),
    ("hex", False),
    ("bin", False),
    ("block", False),
    ("fields", False),
    ("trace_printk", True),
    ("annotate", True),
    ("userstacktrace", False),
    ("sym-userobj", False),
    ("printk-msg-only", False),
    ("context-info", True),
    ("latency-format", False),
    ("record-cmd", True),
    ("record-tgid", False),
    ("overwrite", True),
    ("disable_on_free", False),
    ("irq-info", True),
    ("markers", True),
    ("event-fork", False),
    ("trace_printk_dest", True),
    ("copy_trace_marker", True),
    ("pause-on-trace", False),
    ("hash-ptr", True),
    ("function-trace", True),
    ("function-fork", False),
    ("stacktrace", False),
    ("test_nop_accept", False),
    ("test_nop_refuse", False),
)
_INSTANCE_DEFAULTS_OFF = frozenset({"trace_printk_dest", "copy_trace_marker"})
# options/ also holds options of tracers that are not current (they are not in trace_options).
_EXTRA_OPTION_FILES = ("func-no-repeats", "func_stack_trace")
_TOP_ONLY_OPTION_FILES = ("blk_cgname", "blk_cgroup", "blk_classic", "printk-msg-only", "record-cmd")
_INSTANCE_HIDDEN_OPTION_FILES = frozenset({"printk-msg-only", "record-cmd", "trace_printk"})


def parse_switch(data: str) -> bool:
    """A write to a 0/1 file (``enable``, ``options/*``): kstrtoul_from_user(), then EINVAL unless 0 or 1."""
    value = kstrtoul_from_user(data)
    if value not in (0, 1):
        raise FakeOSError(errno.EINVAL, "")
    return value == 1


@dataclass
class EventFile:
    """One event's files in one trace array."""

    enabled: bool = False
    was_enabled: bool = False
    active_filter: Optional[CompiledFilter] = None
    filter_text: Optional[str] = None  # what the filter file shows; None: "none"
    stacktrace: bool = False  # a "stacktrace" trigger is set (the only trigger the fake models)
    stack_filter: Optional[CompiledFilter] = None  # its "if ..." filter
    stack_filter_text: str = ""


@dataclass
class CpuBuffer:
    """One CPU's ring buffer: its records, and the events it lost to overwriting (``overrun``), of which
    ``unreported_lost`` are not yet announced on ``trace_pipe``."""

    records: deque[EventRecord] = field(default_factory=deque)
    used_bytes: int = 0
    overrun: int = 0
    unreported_lost: int = 0

    def reset(self) -> None:
        self.records.clear()
        self.used_bytes = 0
        self.overrun = 0
        self.unreported_lost = 0


def _record_size(layout: EventLayout, values: Mapping[str, RecordValue]) -> int:
    """Bytes a record takes in the ring buffer: 4-byte header, the fixed part and string data, 4-aligned."""
    fixed = 8 + sum(f.size for f in layout.fields)
    dynamic = sum(len(str(v)) + 1 for v in values.values() if isinstance(v, str))
    return 4 + ((fixed + dynamic + 3) & ~3)


def _current_comm() -> str:
    try:
        with open("/proc/self/comm") as comm:
            return comm.read().strip()[:15]
    except OSError:
        return "python3"


class TraceArray:
    """The top level (``name == ""``) or one instance: its buffers, options, event files, pid filter and error_log.

    ``created_serial`` is the serial of the newest event when the array was made (it orders the array's event
    list, see :meth:`EventTable.ordered_for`).
    """

    def __init__(self, name: str, created_serial: int, kernel: FakeKernel) -> None:
        self.name = name
        self.created_serial = created_serial
        self._kernel = kernel
        self.files: dict[str, EventFile] = {}
        self.error_log: deque[str] = deque(maxlen=_ERROR_LOG_MAX)
        self.options = {option: default for option, default in _CORE_OPTIONS}
        if name:
            for option in _INSTANCE_DEFAULTS_OFF:
                self.options[option] = False
        for option in _EXTRA_OPTION_FILES:
            self.options.setdefault(option, False)
        self.tracing_on = True
        self.buffer_pages = _DEFAULT_BUFFER_PAGES
        self.buffers = [CpuBuffer() for _ in range(kernel.cpus)]
        self.pids: set[int] = set()
        self.tgids: dict[int, int] = {}
        self.open_references = 0

    def file(self, key: str) -> EventFile:
        """The event's state here, made on first use."""
        event_file = self.files.get(key)
        if event_file is None:
            event_file = self.files[key] = EventFile()
        return event_file

    def is_enabled(self, key: str) -> bool:
        event_file = self.files.get(key)
        return event_file is not None and event_file.enabled

    def option_files(self) -> list[str]:
        names = set(self.options)
        if self.name:
            names -= _INSTANCE_HIDDEN_OPTION_FILES
        else:
            names |= set(_TOP_ONLY_OPTION_FILES)
        return sorted(names)

    def reset_buffers(self) -> None:
        for buffer in self.buffers:
            buffer.reset()

    # --- recording --------------------------------------------------------------------------------------------

    def record_event(
        self,
        key: str,
        record: EventRecord,
        filter_values: Mapping[str, Union[int, str]],
        tgid: int,
        stack: Sequence[str],
    ) -> bool:
        """Event ``key`` fired: store ``record`` if the event is enabled here and passes the pid list and its
        filter, followed by a stack entry when its ``stacktrace`` trigger fires.  Returns whether it was kept."""
        event_file = self.files.get(key)
        if event_file is None or not event_file.enabled or not self.tracing_on:
            return False
        if self.pids and record.pid not in self.pids:
            return False
        if event_file.active_filter is not None and not event_file.active_filter.matches(filter_values):
            return False
        if not self.store(record, tgid):
            return False
        stacked = event_file.stacktrace and (
            event_file.stack_filter is None or event_file.stack_filter.matches(filter_values)
        )
        if stacked:  # the trigger's entry follows the event in the same CPU's buffer
            self.store(dataclasses.replace(record, values={}, stack=tuple(stack)), tgid)
        return True

    def store(self, record: EventRecord, tgid: int) -> bool:
        """Put ``record`` in its CPU's buffer, overwriting the oldest records if it is full (or, without the
        ``overwrite`` option, dropping the new one: False)."""
        buffer = self.buffers[record.cpu]
        size = _record_size(record.layout, record.values)
        capacity = self.buffer_pages * _BUFFER_PAGE_DATA
        limit = self._kernel.buffer_events_per_cpu

        def full() -> bool:
            if limit is not None:
                return len(buffer.records) >= limit
            return buffer.used_bytes + size > capacity

        if full() and not self.options["overwrite"]:
            return False  # producer/consumer mode: the new event is dropped, not counted
        while buffer.records and full():
            oldest = buffer.records.popleft()
            buffer.used_bytes -= _record_size(oldest.layout, oldest.values)
            buffer.overrun += 1
            buffer.unreported_lost += 1
        if limit == 0:  # a buffer that holds nothing loses every event at once
            buffer.overrun += 1
            buffer.unreported_lost += 1
            return True
        buffer.records.append(record)
        buffer.used_bytes += size
        if self.options["record-tgid"]:
            self.tgids[record.pid] = tgid
        return True

    def follow_fork(self, key: str, values: Mapping[str, RecordValue]) -> None:
        """The event-fork hooks on sched_process_fork/exit: children inherit, exiting tasks leave the pid list."""
        if not self.options["event-fork"] or not self.pids:
            return
        if key == "sched/sched_process_fork":
            parent, child = values.get("parent_pid"), values.get("child_pid")
            if isinstance(parent, int) and isinstance(child, int) and parent in self.pids:
                self.pids.add(child)
        elif key == "sched/sched_process_exit":
            exiting = values.get("pid")
            if isinstance(exiting, int):
                self.pids.discard(exiting)

    # --- reading ----------------------------------------------------------------------------------------------

    def read_file(self, name: str) -> str:
        """One of the array's own files (not ``events/``, ``options/``, ``set_event`` or top-level-only ones)."""
        return self._READERS[name](self)

    def _read_buffer_size_kb(self) -> str:
        return f"{self.buffer_pages * _BUFFER_PAGE_DATA >> 10}\n"

    def _read_buffer_total_size_kb(self) -> str:
        return f"{self.buffer_pages * _BUFFER_PAGE_DATA * self._kernel.cpus >> 10}\n"

    def _read_tracing_on(self) -> str:
        return f"{int(self.tracing_on)}\n"

    def _read_error_log(self) -> str:
        return "".join(self.error_log)

    def _read_set_event_pid(self) -> str:
        return "".join(f"{pid}\n" for pid in sorted(self.pids))

    def read_option(self, name: str) -> str:
        return f"{int(self.options.get(name, False))}\n"

    def _trace_options_text(self) -> str:
        lines = [("" if self.options[name] else "no") + name for name, _ in _CORE_OPTIONS]
        return "\n".join(lines) + "\n"

    def _merged_records(self) -> list[EventRecord]:
        records = [record for buffer in self.buffers for record in buffer.records]
        return sorted(records, key=lambda record: (record.timestamp, record.cpu))

    def _render(self, record: EventRecord) -> str:
        options = self.options
        if record.stack is None:
            body = render_body(record, fields_option=options["fields"], symbolize=self._kernel.symbolize)
        elif options["fields"]:
            body = f"UNKNOWN TYPE {_TRACE_STACK}"  # print_event_fields() knows no stack entries
        else:
            body = "<stack trace>" + "".join(f"\n => {frame}" for frame in record.stack)
        if not options["context-info"]:
            return body
        context = render_context(
            record,
            irq_info=options["irq-info"],
            tgid=self.tgids.get(record.pid),
            record_tgid=options["record-tgid"],
        )
        return context + body

    def _trace_text(self) -> str:
        entries = sum(len(buffer.records) for buffer in self.buffers)
        written = entries + sum(buffer.overrun for buffer in self.buffers)
        header = render_header(
            tracer="nop",
            entries=entries,
            written=written,
            cpus=self._kernel.cpus,
            context_info=self.options["context-info"],
            irq_info=self.options["irq-info"],
            record_tgid=self.options["record-tgid"],
        )
        return header + "".join(self._render(record) + "\n" for record in self._merged_records())

    def _consume(self) -> str:
        lines: list[str] = []
        for record in self._merged_records():
            buffer = self.buffers[record.cpu]
            if buffer.unreported_lost:
                lines.append(render_lost_events(record.cpu, buffer.unreported_lost))
                buffer.unreported_lost = 0
            lines.append(self._render(record))
        for buffer in self.buffers:
            buffer.records.clear()
            buffer.used_bytes = 0
        return "".join(line + "\n" for line in lines)

    # One reader per file.
    _READERS: Mapping[str, Callable[[TraceArray], str]] = {
        "available_tracers": lambda array: "nop\n",
        "current_tracer": lambda array: "nop\n",
        "trace_clock": lambda array: "[local] global counter uptime perf mono mono_raw boot tai x86-tsc\n",
        "buffer_size_kb": _read_buffer_size_kb,
        "buffer_total_size_kb": _read_buffer_total_size_kb,
        "tracing_on": _read_tracing_on,
        "error_log": _read_error_log,
        "trace_options": _trace_options_text,
        "set_event_pid": _read_set_event_pid,
        "trace": _trace_text,
        "trace_pipe": _consume,
    }

    # --- writing ----------------------------------------------------------------------------------------------

    def write_file(self, path: str, name: str, data: str, append: bool, size: int) -> int:
        """One write(2) of ``data`` (``size`` bytes) to the array's file ``name``; returns the bytes taken.
        EINVAL for a file without a write operation."""
        writer = self._WRITERS.get(name)
        if writer is None:
            raise FakeOSError(errno.EINVAL, path)
        return writer(self, path, data, append, size)

    # One writer per file: (path, data, append, size of data in bytes) -> bytes taken.

    def _write_set_event_pid(self, path: str, data: str, append: bool, size: int) -> int:
        if not append:
            self.pids.clear()
        self._write_pids(data)
        return size

    def _write_trace(self, path: str, data: str, append: bool, size: int) -> int:
        if not append:
            self.reset_buffers()
        return size

    def _write_error_log(self, path: str, data: str, append: bool, size: int) -> int:
        if not append:
            self.error_log.clear()
        return size

    def _write_trace_marker(self, path: str, data: str, append: bool, size: int) -> int:
        return self._write_marker(path, data)

    def _write_trace_options(self, path: str, data: str, append: bool, size: int) -> int:
        text = data[:63].strip(KERNEL_SPACE)  # trace_options_write() copies at most 63 bytes, then strstrip()
        negate = text.startswith("no")
        name = text[2:] if negate else text
        if name not in dict(_CORE_OPTIONS):
            raise FakeOSError(errno.EINVAL, path)
        self.set_option(path, name, not negate)
        return size

    def _write_tracing_on(self, path: str, data: str, append: bool, size: int) -> int:
        self.tracing_on = kstrtoul_from_user(data) != 0
        return size

    def _write_buffer_size_kb(self, path: str, data: str, append: bool, size: int) -> int:
        kilobytes = kstrtoul_from_user(data)
        if not kilobytes:
            raise FakeOSError(errno.EINVAL, path)
        if kilobytes > _MAX_BUFFER_KB:
            raise FakeOSError(errno.ENOMEM, path)
        self.buffer_pages = max(2, -(-(kilobytes << 10) // _BUFFER_PAGE_DATA))
        return size

    def _write_current_tracer(self, path: str, data: str, append: bool, size: int) -> int:
        if data.strip(KERNEL_SPACE) != "nop":
            raise FakeOSError(errno.EINVAL, path)
        return size

    _WRITERS: Mapping[str, Callable[[TraceArray, str, str, bool, int], int]] = {
        "set_event_pid": _write_set_event_pid,
        "trace": _write_trace,
        "error_log": _write_error_log,
        "trace_marker": _write_trace_marker,
        "trace_options": _write_trace_options,
        "tracing_on": _write_tracing_on,
        "buffer_size_kb": _write_buffer_size_kb,
        "current_tracer": _write_current_tracer,
    }

    def set_option(self, path: str, name: str, value: bool) -> None:
        if name == "test_nop_refuse" and value:
            raise FakeOSError(errno.EINVAL, path)  # the nop tracer refuses it, by design (selftest hook)
        self.options[name] = value

    def _write_marker(self, path: str, data: str) -> int:
        if not self.options["markers"]:
            raise FakeOSError(errno.EINVAL, path)
        if not self.tracing_on:
            raise FakeOSError(errno.EBADF, path)  # the ring buffer is off: "as if not open for write"
        raw = data.encode("utf-8", "surrogateescape")[:_TRACE_MARKER_MAX_SIZE]
        text = raw.decode("utf-8", "surrogateescape")
        if not text.endswith("\n"):
            text += "\n"
        layout = EventLayout("ftrace", "print", "marker", False, (EventField("buf", "char[]", 16, 0, False),))
        # The writer is this process (like a real write(2)); preempt_count 1 as tracing_mark_write() records it.
        record = EventRecord(layout, os.getpid(), _current_comm(), 0, self._kernel.clock(), {"buf": text}, 0, 1)
        self.store(record, os.getpid())
        return len(raw)

    def _write_pids(self, data: str) -> None:
        """trace_pid_write(): every whitespace-separated number; nothing changes if one is bad."""
        pids = set(self.pids)
        for word in re.split(f"[{KERNEL_SPACE}]+", data):
            if not word:
                continue
            pid = kstrtoul_from_user(word, 0)
            if pid >= _PID_MAX_LIMIT:
                raise FakeOSError(errno.EINVAL, "")
            pids.add(pid)
        self.pids = pids


class TraceArrays:
    """The top-level trace array and the instances, by name."""

    def __init__(self, kernel: FakeKernel, created_serial: int) -> None:
        self._kernel = kernel
        self.top = TraceArray("", created_serial, kernel)
        self.instances: dict[str, TraceArray] = {}

    def all(self) -> list[TraceArray]:
        """The top level first, then the instances in creation order."""
        return [self.top, *self.instances.values()]

    def create(self, name: str, created_serial: int) -> TraceArray:
        array = self.instances[name] = TraceArray(name, created_serial, self._kernel)
        return array

    def remove(self, name: str) -> None:
        del self.instances[name]  # its event files go with it, enabled or not
