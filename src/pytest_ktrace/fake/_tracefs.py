"""An in-memory ``/sys/kernel/tracing``, faithful at the file level.

:class:`FakeTracefs` answers the same reads, writes, ``mkdir`` and ``rmdir`` calls a real tracefs does, with the
same text and the same errno (as :class:`FakeOSError`).  It imitates one target described by a
:class:`~pytest_ktrace.snapshots._snapshot.KernelSnapshot` (its tracepoints' format files, kernel symbols, kprobe
blacklist, README, features).  Probe commands are parsed by :mod:`._grammar`, filters by :mod:`._filters`, format
files are laid out by :mod:`._formats` and trace lines printed by :mod:`._render`.  Events are produced by :meth:`emit`.

Kernel behaviours copied on purpose (v6.12 sources, checked against a 6.18 kernel by
``tests/fake/test_tracefs_differential.py``):

* a write is one ``write(2)``: ``append=False`` means the file was opened with ``O_TRUNC``.  On the probe control
  files that releases every probe of the file's kind first and fails with EBUSY (deleting nothing) if any is
  enabled; ``set_event``/``set_event_pid``/``trace``/``error_log`` are cleared by it.
* :meth:`write` returns how many bytes the kernel consumed: ``set_event`` takes one word per write(2) (what
  ``echo`` would resend is left over), every other file takes everything.
* removing a dynamic event clears the buffer of every trace array in which that event was ever enabled
  (``tracing_reset_all_online_cpus()`` after ``event_remove()`` set ``clear_trace``).
* a uprobe event with several probes loses one of them even while enabled; a kprobe never (EBUSY).
* kprobe registration refuses blacklisted functions and, per arch, offsets that are not instruction boundaries
  or hit the ftrace call site (see :meth:`FakeTracefs._registration_error`; checked against the Debian 6.1
  guests by ``tests/fake/test_kprobe_differential.py``).  ``trigger`` files list the trigger commands the
  snapshot's README names (snapshot and hist triggers only where the kernel has them).
* ``trace`` does not show ``CPU:N [LOST M EVENTS]`` for events overwritten before the read: the kernel only
  reports losses on the consuming ``trace_pipe`` (a ``trace`` iterator reports them only when the writer
  overtakes it mid-read, which cannot happen here).  ``entries-written`` counts the overwritten ones.
* listings of ``available_events``/``set_event`` follow the trace array's event list: events that existed when
  the array was created in ID order, events added later in front, newest first.
* with the ``fields`` option a ``trace_marker`` record prints ``UNKNOWN TYPE 5`` (see :mod:`.render`).

Not modelled: tracers other than ``nop``, triggers (``trigger`` files list the available ones, writes fail with
EINVAL), ``header_page``/``header_event`` contents, ``per_cpu`` files, the ``events/ftrace`` system,
eprobes/fprobes/synthetic events (refused with :class:`FakeUnsupportedError`), perf users of events, page-granular
ring-buffer overwrite (one record at a time here), blocking reads of ``trace_pipe`` (it returns what is there).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Optional, Sequence, Union

from .._parse import EventFormat
from ..snapshots._kallsyms import KernelText
from ..snapshots._snapshot import KernelSnapshot
from ._filters import (
    CURRENT_COMM_KEY,
    CURRENT_CPU_KEY,
    FILTER_WRITE_LIMIT,
    CompiledFilter,
    FilterError,
    FilterField,
    compile_filter,
    normalize_filter_text,
)
from ._formats import EventField, fields_of_format, format_file_text, probe_fields, probe_print_fmt
from ._grammar import (
    KernelDialect,
    LineTooLongError,
    ProbeCommand,
    ProbeSyntaxError,
    RemovalCommand,
    UnsupportedCommand,
    parse_command,
    split_commands,
)
from ._kernel_lib import KERNEL_SPACE, KstrtoxError, argv_split, from_kernel_bytes, kstrtoul_from_user, to_kernel_bytes
from ._render import (
    EventLayout,
    EventRecord,
    RecordValue,
    render_body,
    render_context,
    render_header,
    render_lost_events,
)

__all__ = ["FakeOSError", "FakeTracefs", "FakeUnsupportedError", "FieldInput"]

#: What :meth:`FakeTracefs.emit` accepts per field: ints, strs (``None``: a string fetch that faulted) and, for
#: probe array arguments, the elements.
FieldInput = Union[int, str, None, Sequence[Union[int, str, None]]]

_PROBE_CONTROL_FILES = ("kprobe_events", "uprobe_events", "dynamic_events")
_TOP_LEVEL_ONLY_FILES = ("available_events", "available_filter_functions", "README", *_PROBE_CONTROL_FILES)
_TRACE_ARRAY_FILES = (
    "available_tracers",
    "buffer_size_kb",
    "buffer_total_size_kb",
    "current_tracer",
    "error_log",
    "set_event",
    "set_event_pid",
    "trace",
    "trace_clock",
    "trace_marker",
    "trace_options",
    "trace_pipe",
    "tracing_on",
)
_WRITE_ONLY_FILES = frozenset({"trace_marker"})
_EVENT_FILES = ("enable", "filter", "format", "id", "trigger")
_TRACE_STACK = 4  # enum trace_type: TRACE_STACK, as "UNKNOWN TYPE 4" shows it
_TRIGGER_HELP = "# Available triggers:\n# traceon traceoff stacktrace enable_event disable_event\n"
# The event trigger commands in the order a trigger file lists them (registration order), each with the line of
# the README's "trigger" section that says the kernel has it (None: always there).
_TRIGGER_COMMANDS: tuple[tuple[str, Optional[str]], ...] = (
    ("traceon", None),
    ("traceoff", None),
    ("snapshot", "snapshot"),
    ("stacktrace", "stacktrace"),
    ("enable_event", None),
    ("disable_event", None),
    ("enable_hist", "hist (see below)"),
    ("disable_hist", "hist (see below)"),
    ("hist", "hist (see below)"),
)
_SYSTEM_FILTER_HELP = (
    "### global filter ###\n"
    "# Use this to set filters for multiple events.\n"
    "# Only events with the given fields will be affected.\n"
    "# If no events are modified, an error message will be displayed here\n"
)
_BAD_SUBSYSTEM_FILTER = 13  # FILT_ERR_BAD_SUBSYS_FILTER
_ERROR_LOG_MAX = 8  # TRACING_LOG_ERRS_MAX
_BUFFER_PAGE_DATA = 4080  # BUF_PAGE_SIZE: a 4 KiB sub-buffer minus its header
_DEFAULT_BUFFER_PAGES = 354  # 1410 KiB per CPU, what a 6.x kernel shows once the buffer is expanded
_NAME_MAX = 255  # bytes of one path component (the VFS answers ENAMETOOLONG beyond)
_PATH_MAX = 4096  # bytes of a whole path, its NUL included
_MAX_BUFFER_KB = 1 << 24  # larger resizes fail with ENOMEM (the allocation would)
_TRACE_MARKER_MAX_SIZE = 4096
_PID_MAX_LIMIT = 4 * 1024 * 1024
_FIRST_EVENT_TYPE = 21  # the lowest ID the event type IDA hands out above ftrace's own types
_UPROBE_LOAD_BASE = 0x0000_5555_5555_4000  # a typical PIE load address, for __probe_ip defaults
_KERNEL_TEXT_BASE = 0xFFFF_FFFF_8100_0000
_FAKE_SYMBOL_SIZE = 0x100  # every snapshot symbol gets this size in the fake kallsyms

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


class FakeOSError(OSError):
    """What a failing tracefs system call raises: ``errno`` as the kernel returns it, ``filename`` the path."""

    def __init__(self, code: int, path: str, detail: str = "") -> None:
        message = os.strerror(code) + (f" ({detail})" if detail else "")
        super().__init__(code, message, path)

    @property
    def errno_name(self) -> str:
        """The symbolic errno: ``"EBUSY"``."""
        return errno.errorcode.get(self.errno or 0, str(self.errno))


class FakeUnsupportedError(FakeOSError):
    """A command the fake does not model (eprobe, fprobe, tprobe, synthetic event): ENOSYS, never a kernel errno."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(errno.ENOSYS, path, detail)


def _errno_code(name: str) -> int:
    code = getattr(errno, name, None)
    return code if isinstance(code, int) else errno.EINVAL


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


class _EventDefinition:
    """A registered event: a snapshot tracepoint (format text kept verbatim) or a probe event."""

    def __init__(
        self,
        system: str,
        name: str,
        event_id: int,
        serial: int,
        *,
        format_text: Optional[str] = None,
        probes: Optional[list[ProbeCommand]] = None,
    ) -> None:
        self.system = system
        self.name = name
        self.event_id = event_id
        self.serial = serial  # registration order
        self.probes: list[ProbeCommand] = probes or []
        self._format_text = format_text
        self._layout: Optional[EventLayout] = None
        self._parsed: Optional[EventFormat] = None
        self.open_references = 0

    @property
    def key(self) -> str:
        return f"{self.system}/{self.name}"

    @property
    def primary(self) -> Optional[ProbeCommand]:
        return self.probes[0] if self.probes else None

    @property
    def format_text(self) -> str:
        if self._format_text is None:
            primary = self.primary
            assert primary is not None
            self._format_text = format_file_text(
                self.name, self.event_id, probe_fields(primary), probe_print_fmt(primary)
            )
        return self._format_text

    @property
    def layout(self) -> EventLayout:
        if self._layout is None:
            primary = self.primary
            if primary is not None:
                fields = probe_fields(primary)
                self._layout = EventLayout(self.system, self.name, primary.kind, primary.is_return, fields)
            else:
                self._parsed, fields = fields_of_format(self.format_text, self.system)
                self._layout = EventLayout(self.system, self.name, "tracepoint", False, fields)
        return self._layout

    def filter_fields(self) -> list[FilterField]:
        return [FilterField(f.name, f.is_string, f.size, f.signed, f.c_type) for f in self.layout.fields]


@dataclass
class _EventFile:
    """One event's files in one trace array."""

    enabled: bool = False
    was_enabled: bool = False
    active_filter: Optional[CompiledFilter] = None
    filter_text: Optional[str] = None  # what the filter file shows; None: "none"
    stacktrace: bool = False  # a "stacktrace" trigger is set (the only trigger the fake models)
    stack_filter: Optional[CompiledFilter] = None  # its "if ..." filter
    stack_filter_text: str = ""


@dataclass
class _CpuBuffer:
    records: deque[EventRecord] = field(default_factory=deque)
    used_bytes: int = 0
    overrun: int = 0
    unreported_lost: int = 0

    def reset(self) -> None:
        self.records.clear()
        self.used_bytes = 0
        self.overrun = 0
        self.unreported_lost = 0


class _TraceArray:
    """The top level or one instance: its buffers, options, event files, pid filter and error_log."""

    def __init__(self, name: str, created_serial: int, cpus: int) -> None:
        self.name = name
        self.created_serial = created_serial
        self.files: dict[str, _EventFile] = {}
        self.error_log: deque[str] = deque(maxlen=_ERROR_LOG_MAX)
        self.options = {option: default for option, default in _CORE_OPTIONS}
        if name:
            for option in _INSTANCE_DEFAULTS_OFF:
                self.options[option] = False
        for option in _EXTRA_OPTION_FILES:
            self.options.setdefault(option, False)
        self.tracing_on = True
        self.buffer_pages = _DEFAULT_BUFFER_PAGES
        self.buffers = [_CpuBuffer() for _ in range(cpus)]
        self.pids: set[int] = set()
        self.tgids: dict[int, int] = {}
        self.open_references = 0

    def file(self, key: str) -> _EventFile:
        event_file = self.files.get(key)
        if event_file is None:
            event_file = self.files[key] = _EventFile()
        return event_file

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


def _record_size(layout: EventLayout, values: Mapping[str, RecordValue]) -> int:
    """Bytes a record takes in the ring buffer: 4-byte header, the fixed part and string data, 4-aligned."""
    fixed = 8 + sum(f.size for f in layout.fields)
    dynamic = sum(len(str(v)) + 1 for v in values.values() if isinstance(v, str))
    return 4 + ((fixed + dynamic + 3) & ~3)


# --------------------------------------------------------------------------------------------------------------
# The file system
# --------------------------------------------------------------------------------------------------------------


class FakeTracefs:
    """An in-memory tracefs imitating ``snapshot``'s kernel (see the module docstring).

    ``clock`` returns seconds since boot (the trace clock and error_log timestamps); ``buffer_events_per_cpu``
    bounds each per-CPU buffer by a number of records instead of ``buffer_size_kb`` bytes (small values make
    overwrites easy to test).  ``file_exists`` answers for uprobe paths like the grammar's callback (default:
    this machine's file system).
    """

    def __init__(
        self,
        snapshot: KernelSnapshot,
        *,
        cpus: int = 2,
        clock: Optional[Callable[[], float]] = None,
        buffer_events_per_cpu: Optional[int] = None,
        file_exists: Optional[Callable[[str], Optional[str]]] = None,
    ) -> None:
        if cpus < 1:
            raise ValueError("a tracefs needs at least one CPU")
        self.snapshot = snapshot
        self.cpus = cpus
        self._clock = clock or time.monotonic
        self._buffer_events_per_cpu = buffer_events_per_cpu
        self._file_exists = file_exists
        self._dialect = KernelDialect(snapshot.release, snapshot.arch)
        self._events: dict[str, _EventDefinition] = {}
        self._systems: dict[str, dict[str, _EventDefinition]] = {}
        self._probe_order: list[tuple[_EventDefinition, ProbeCommand]] = []  # dyn_event_list order
        self._serial = 0
        id_pattern = re.compile(r"^ID: (\d+)$", re.MULTILINE)
        ranked: list[tuple[int, str, str]] = []
        for key, text in snapshot.events.items():
            match = id_pattern.search(text)
            ranked.append((int(match.group(1)) if match else 0, key, text))
        for event_id, key, text in sorted(ranked):
            system, _, name = key.partition("/")
            self._serial += 1
            self._add_event(_EventDefinition(system, name, event_id, self._serial, format_text=text))
        self._top = _TraceArray("", self._serial, cpus)
        self._instances: dict[str, _TraceArray] = {}
        self._symbol_addresses: Optional[dict[str, int]] = None
        self._kernel_text: Optional[KernelText] = None
        self._trigger_help = _trigger_help(snapshot.readme)

    # --- public API -------------------------------------------------------------------------------------------

    def read(self, path: str) -> str:
        """The whole content of a file, as one ``cat`` would see it."""
        array, rest = self._resolve(path)
        if self._directory_entries(array, rest) is not None:
            raise FakeOSError(errno.EISDIR, path)
        return self._read_file(path, array, rest)

    def write(self, path: str, data: str, *, append: bool = True) -> int:
        """One ``write(2)`` of ``data``; ``append=False`` opens with O_TRUNC.  Returns the bytes consumed."""
        array, rest = self._resolve(path)
        if self._directory_entries(array, rest) is not None:
            raise FakeOSError(errno.EISDIR, path)
        if not self._is_file(array, rest):
            raise FakeOSError(errno.ENOENT, path)
        return self._write_file(path, array, rest, data, append)

    def mkdir(self, path: str) -> None:
        parts = self._split(path)
        if len(parts) == 2 and parts[0] == "instances":
            if parts[1] in self._instances:
                raise FakeOSError(errno.EEXIST, path)
            self._instances[parts[1]] = _TraceArray(parts[1], self._serial, self.cpus)
            return
        if self.exists(path):
            raise FakeOSError(errno.EEXIST, path)
        parent = "/".join(parts[:-1])
        if not self.exists(parent) or not self._is_directory(parent):
            raise FakeOSError(errno.ENOENT, path)
        raise FakeOSError(errno.EPERM, path)

    def rmdir(self, path: str) -> None:
        parts = self._split(path)
        if not self.exists(path):
            raise FakeOSError(errno.ENOENT, path)
        if not self._is_directory(path):
            raise FakeOSError(errno.ENOTDIR, path)
        if len(parts) != 2 or parts[0] != "instances":
            raise FakeOSError(errno.EPERM, path)
        array = self._instances[parts[1]]
        if array.open_references:
            raise FakeOSError(errno.EBUSY, path)
        del self._instances[parts[1]]  # its event files go with it, enabled or not

    def exists(self, path: str) -> bool:
        try:
            array, rest = self._resolve(path)
        except FakeOSError:
            return False
        return self._directory_entries(array, rest) is not None or self._is_file(array, rest)

    def listdir(self, path: str) -> list[str]:
        array, rest = self._resolve(path)
        entries = self._directory_entries(array, rest)
        if entries is None:
            raise FakeOSError(errno.ENOTDIR if self._is_file(array, rest) else errno.ENOENT, path)
        return sorted(entries)

    @contextmanager
    def hold_open(self, path: str) -> Iterator[None]:
        """Keep ``path`` open (like a reader with an open descriptor): its instance cannot be removed (EBUSY)
        and, for an event's files, neither can the event."""
        array, rest = self._resolve(path)
        if not self.exists(path):
            raise FakeOSError(errno.ENOENT, path)
        event = self._events.get("/".join(rest[1:3])) if len(rest) >= 4 and rest[0] == "events" else None
        array.open_references += 1
        if event is not None:
            event.open_references += 1
        try:
            yield
        finally:
            array.open_references -= 1
            if event is not None:
                event.open_references -= 1

    def emit(
        self,
        event: str,
        fields: Mapping[str, FieldInput],
        *,
        pid: int,
        comm: str,
        cpu: int = 0,
        timestamp: Optional[float] = None,
        tgid: Optional[int] = None,
        irq_flags: int = 0,
        preempt_count: int = 0,
        stack: Sequence[str] = (),
    ) -> int:
        """The event ``group/name`` fires in task ``pid``/``comm`` on ``cpu``; returns how many buffers kept it.

        Missing fields read as 0 (numbers) or a faulted fetch (probe strings; ``""`` for tracepoints); a probe's
        ``$comm`` argument defaults to ``comm`` and immediates to their value.  Probe events get ``__probe_ip``
        (``__probe_func``/``__probe_ret_ip``) from the fake kallsyms or a PIE load base unless given; kprobe
        addresses may be given as ``"sym+0x10"``.  ``sched/sched_process_fork``/``exit`` also drive the
        ``event-fork`` pid inheritance, recorded or not.
        """
        definition = self._events.get(event.replace(":", "/", 1))
        if definition is None:
            raise KeyError(f"no event {event!r} in this tracefs")
        if not 0 <= cpu < self.cpus:
            raise ValueError(f"cpu {cpu} is not one of the {self.cpus} CPUs")
        when = self._clock() if timestamp is None else timestamp
        values = self._record_values(definition, fields, comm)
        layout = definition.layout
        filter_values: dict[str, Union[int, str]] = {
            key: ("" if value is None else value) for key, value in values.items() if not isinstance(value, tuple)
        }
        filter_values.update(
            {
                "common_type": definition.event_id,
                "common_flags": irq_flags,
                "common_preempt_count": preempt_count,
                "common_pid": pid,
                CURRENT_CPU_KEY: cpu,
                CURRENT_COMM_KEY: comm,
            }
        )
        record = EventRecord(layout, pid, comm, cpu, when, values, irq_flags, preempt_count)
        recorded = 0
        for array in self._arrays():
            event_file = array.files.get(definition.key)
            if event_file is None or not event_file.enabled or not array.tracing_on:
                continue
            if array.pids and pid not in array.pids:
                continue
            if event_file.active_filter is not None and not event_file.active_filter.matches(filter_values):
                continue
            if self._store(array, record, tgid if tgid is not None else pid):
                recorded += 1
                stacked = event_file.stacktrace and (
                    event_file.stack_filter is None or event_file.stack_filter.matches(filter_values)
                )
                if stacked:  # the trigger's entry follows the event in the same CPU's buffer
                    entry = dataclasses.replace(record, values={}, stack=tuple(stack))
                    self._store(array, entry, tgid if tgid is not None else pid)
        self._follow_forks(definition.key, values)
        return recorded

    # --- paths ------------------------------------------------------------------------------------------------

    @staticmethod
    def _split(path: str) -> list[str]:
        """The components of ``path``; ENAMETOOLONG, as the VFS answers, for a component longer than NAME_MAX
        or a path of PATH_MAX bytes or more."""
        if len(path.encode("utf-8", "surrogatepass")) >= _PATH_MAX:
            raise FakeOSError(errno.ENAMETOOLONG, path)
        parts = [part for part in path.strip("/").split("/") if part and part != "."]
        if any(len(part.encode("utf-8", "surrogatepass")) > _NAME_MAX for part in parts):
            raise FakeOSError(errno.ENAMETOOLONG, path)
        return parts

    def _resolve(self, path: str) -> tuple[_TraceArray, list[str]]:
        parts = self._split(path)
        if len(parts) >= 2 and parts[0] == "instances":
            array = self._instances.get(parts[1])
            if array is None:
                raise FakeOSError(errno.ENOENT, path)
            return array, parts[2:]
        return self._top, parts

    def _is_directory(self, path: str) -> bool:
        try:
            array, rest = self._resolve(path)
        except FakeOSError:
            return False
        return self._directory_entries(array, rest) is not None

    def _has_control(self, name: str) -> bool:
        feature = {"kprobe_events": "kprobes", "uprobe_events": "uprobes", "dynamic_events": "dynamic_events"}
        return feature[name] in self.snapshot.features

    def _directory_entries(self, array: _TraceArray, rest: list[str]) -> Optional[list[str]]:
        top = array is self._top
        if not rest:
            entries = ["events", "options", "per_cpu", *_TRACE_ARRAY_FILES]
            if top:
                entries += ["instances", "available_events", "available_filter_functions", "README"]
                entries += [name for name in _PROBE_CONTROL_FILES if self._has_control(name)]
            return entries
        if rest == ["instances"] and top:
            return list(self._instances)
        if rest == ["options"]:
            return array.option_files()
        if rest == ["per_cpu"]:
            return [f"cpu{index}" for index in range(self.cpus)]
        if rest[0] != "events":
            return None
        if len(rest) == 1:
            return [*self._systems, "enable", "header_event", "header_page"]
        system = self._systems.get(rest[1])
        if system is None:
            return None
        if len(rest) == 2:
            return [*system, "enable", "filter"]
        if len(rest) == 3 and rest[2] in system:
            return list(_EVENT_FILES)
        return None

    def _is_file(self, array: _TraceArray, rest: list[str]) -> bool:
        top = array is self._top
        if len(rest) == 1:
            name = rest[0]
            if name in _PROBE_CONTROL_FILES:
                return top and self._has_control(name)
            return name in _TRACE_ARRAY_FILES or (top and name in _TOP_LEVEL_ONLY_FILES)
        if len(rest) == 2 and rest[0] == "options":
            return rest[1] in array.option_files()
        if rest[:1] != ["events"]:
            return False
        if len(rest) == 2:
            return rest[1] in ("enable", "header_event", "header_page")
        system = self._systems.get(rest[1])
        if system is None:
            return False
        if len(rest) == 3:
            return rest[2] in ("enable", "filter")
        return len(rest) == 4 and rest[2] in system and rest[3] in _EVENT_FILES

    def _arrays(self) -> list[_TraceArray]:
        return [self._top, *self._instances.values()]

    # --- events -----------------------------------------------------------------------------------------------

    def _add_event(self, definition: _EventDefinition) -> None:
        self._events[definition.key] = definition
        self._systems.setdefault(definition.system, {})[definition.name] = definition

    def _drop_event(self, definition: _EventDefinition) -> None:
        del self._events[definition.key]
        system = self._systems[definition.system]
        del system[definition.name]
        if not system:
            del self._systems[definition.system]
        for array in self._arrays():
            event_file = array.files.pop(definition.key, None)
            if event_file is not None and event_file.was_enabled:
                array.reset_buffers()  # event_remove() set clear_trace; the release resets the buffer

    def _ordered_events(self, array: _TraceArray) -> list[_EventDefinition]:
        """tr->events order: events added after the array was created first (newest first), then the rest."""
        events = sorted(self._events.values(), key=lambda definition: definition.serial)
        newer = [e for e in events if e.serial > array.created_serial]
        older = [e for e in events if e.serial <= array.created_serial]
        return [*reversed(newer), *older]

    def _next_event_id(self) -> int:
        used = {definition.event_id for definition in self._events.values()}
        candidate = min(used | {_FIRST_EVENT_TYPE}) if used else _FIRST_EVENT_TYPE
        while candidate in used:
            candidate += 1
        return candidate

    # --- kallsyms ---------------------------------------------------------------------------------------------

    def _text(self) -> KernelText:
        """The snapshot's kallsyms layout, or, for a snapshot taken without addresses, a made-up one: every text
        symbol, sorted by name, _FAKE_SYMBOL_SIZE bytes apart (what rendering and ``.function`` filters use)."""
        if self._kernel_text is None:
            text = self.snapshot.text
            if text is None:
                names = sorted(self.snapshot.symbols)
                pairs = [(_KERNEL_TEXT_BASE + index * _FAKE_SYMBOL_SIZE, name) for index, name in enumerate(names)]
                pairs.append((_KERNEL_TEXT_BASE + len(names) * _FAKE_SYMBOL_SIZE, "_etext"))
                text = KernelText(pairs)
            self._kernel_text = text
        return self._kernel_text

    def _symbols(self) -> dict[str, int]:
        if self._symbol_addresses is None:
            text = self._text()
            self._symbol_addresses = {}
            for start, name in zip(text.starts, text.names):
                self._symbol_addresses.setdefault(name, start)
        return self._symbol_addresses

    def symbol_address(self, name: str) -> int:
        """The fake kallsyms address of a snapshot symbol (KeyError if the snapshot does not have it)."""
        return self._symbols()[name]

    def _symbolize(self, address: int, with_offset: bool) -> Optional[str]:
        found = self._text().symbol_at(address)
        if found is None:
            return None
        name, start, end = found
        if not with_offset:
            return name
        return f"{name}+0x{address - start:x}/0x{end - start:x}"

    def _address_value(self, value: FieldInput) -> int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            symbol, _, offset = value.partition("+")
            return self._symbols().get(symbol, 0) + (int(offset, 0) if offset else 0)
        return 0

    # --- emit helpers -----------------------------------------------------------------------------------------

    def _record_values(
        self, definition: _EventDefinition, given: Mapping[str, FieldInput], comm: str
    ) -> dict[str, RecordValue]:
        layout = definition.layout
        primary = definition.primary
        defaults: dict[str, FieldInput] = {}
        if primary is not None:
            if primary.kind == "kprobe":
                entry = self._symbols().get(primary.symbol or "", primary.address or 0) + (
                    primary.offset if primary.symbol else 0
                )
            else:
                entry = _UPROBE_LOAD_BASE + primary.offset
            if primary.is_return:
                defaults["__probe_func"] = entry
                defaults["__probe_ret_ip"] = 0
            else:
                defaults["__probe_ip"] = entry
            for arg in primary.args:
                if arg.text in ("$comm", "$COMM"):
                    defaults[arg.name] = comm
                elif arg.text.startswith('\\"'):
                    defaults[arg.name] = arg.text[2:].removesuffix('"')
                elif arg.text.startswith("\\"):
                    with suppress(ValueError):  # only plain numbers have a value to default to
                        defaults[arg.name] = int(arg.text[1:], 0)
        values: dict[str, RecordValue] = {}
        for event_field in layout.fields:
            value = given.get(event_field.name, defaults.get(event_field.name))
            if event_field.name.startswith("__probe_") and primary is not None and primary.kind == "kprobe":
                value = self._address_value(value)
            values[event_field.name] = self._stored_value(event_field, value)
        return values

    @staticmethod
    def _stored_value(event_field: EventField, value: FieldInput) -> RecordValue:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        if value is None:
            return (
                None
                if event_field.is_string and event_field.fetch_type is not None
                else ("" if event_field.is_string else 0)
            )
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, (int, str)):
            return value
        raise TypeError(f"field {event_field.name}: {type(value).__name__} is not an int, str or sequence")

    def _store(self, array: _TraceArray, record: EventRecord, tgid: int) -> bool:
        buffer = array.buffers[record.cpu]
        size = _record_size(record.layout, record.values)
        capacity = array.buffer_pages * _BUFFER_PAGE_DATA
        limit = self._buffer_events_per_cpu

        def full() -> bool:
            if limit is not None:
                return len(buffer.records) >= limit
            return buffer.used_bytes + size > capacity

        if full() and not array.options["overwrite"]:
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
        if array.options["record-tgid"]:
            array.tgids[record.pid] = tgid
        return True

    def _follow_forks(self, key: str, values: Mapping[str, RecordValue]) -> None:
        """The event-fork hooks on sched_process_fork/exit: children inherit, exiting tasks leave the pid list."""
        for array in self._arrays():
            if not array.options["event-fork"] or not array.pids:
                continue
            if key == "sched/sched_process_fork":
                parent, child = values.get("parent_pid"), values.get("child_pid")
                if isinstance(parent, int) and isinstance(child, int) and parent in array.pids:
                    array.pids.add(child)
            elif key == "sched/sched_process_exit":
                exiting = values.get("pid")
                if isinstance(exiting, int):
                    array.pids.discard(exiting)

    # --- reads ------------------------------------------------------------------------------------------------

    def _read_file(self, path: str, array: _TraceArray, rest: list[str]) -> str:
        if not self._is_file(array, rest):
            raise FakeOSError(errno.ENOENT, path)
        if rest[0] == "events":
            return self._read_event_file(array, rest)
        if rest[0] == "options":
            return f"{int(array.options.get(rest[1], False))}\n"
        name = rest[0]
        if name in _WRITE_ONLY_FILES:
            raise FakeOSError(errno.EINVAL, path)
        if name in _PROBE_CONTROL_FILES:
            kinds = {"kprobe_events": ("kprobe",), "uprobe_events": ("uprobe",)}.get(name, ("kprobe", "uprobe"))
            return "".join(command.listing() + "\n" for _, command in self._probe_order if command.kind in kinds)
        readers: dict[str, Callable[[], str]] = {
            "available_events": lambda: "".join(f"{e.system}:{e.name}\n" for e in self._ordered_events(array)),
            "README": lambda: self.snapshot.readme,
            # The fake kallsyms order (by name); the kernel lists ftrace-able functions in address order.
            "available_filter_functions": lambda: "".join(f"{name}\n" for name in self._symbols()),
            "available_tracers": lambda: "nop\n",
            "current_tracer": lambda: "nop\n",
            "trace_clock": lambda: "[local] global counter uptime perf mono mono_raw boot tai x86-tsc\n",
            "buffer_size_kb": lambda: f"{array.buffer_pages * _BUFFER_PAGE_DATA >> 10}\n",
            "buffer_total_size_kb": lambda: f"{array.buffer_pages * _BUFFER_PAGE_DATA * self.cpus >> 10}\n",
            "tracing_on": lambda: f"{int(array.tracing_on)}\n",
            "error_log": lambda: "".join(array.error_log),
            "trace_options": lambda: self._trace_options_text(array),
            "set_event": lambda: "".join(
                f"{e.system}:{e.name}\n"
                for e in self._ordered_events(array)
                if array.files.get(e.key, _EventFile()).enabled
            ),
            "set_event_pid": lambda: "".join(f"{pid}\n" for pid in sorted(array.pids)),
            "trace": lambda: self._trace_text(array),
            "trace_pipe": lambda: self._consume(array),
        }
        return readers[name]()

    def _trace_options_text(self, array: _TraceArray) -> str:
        lines = [("" if array.options[name] else "no") + name for name, _ in _CORE_OPTIONS]
        return "\n".join(lines) + "\n"

    def _read_event_file(self, array: _TraceArray, rest: list[str]) -> str:
        if len(rest) == 2:
            if rest[1] == "enable":
                return self._enable_summary(array, list(self._events.values()))
            return ""  # header_event / header_page: ring-buffer internals, not modelled
        system = self._systems[rest[1]]
        if len(rest) == 3:
            if rest[2] == "enable":
                return self._enable_summary(array, list(system.values()))
            return _SYSTEM_FILTER_HELP
        definition = system[rest[2]]
        event_file = array.files.get(definition.key, _EventFile())
        readers: dict[str, Callable[[], str]] = {
            "enable": lambda: "1\n" if event_file.enabled else "0\n",
            "filter": lambda: event_file.filter_text if event_file.filter_text is not None else "none\n",
            "format": lambda: definition.format_text,
            "id": lambda: f"{definition.event_id}\n",
            "trigger": lambda: (
                f"stacktrace:unlimited{' if ' + event_file.stack_filter_text if event_file.stack_filter_text else ''}\n"
                if event_file.stacktrace
                else self._trigger_help
            ),
        }
        return readers[rest[3]]()

    @staticmethod
    def _enable_summary(array: _TraceArray, events: list[_EventDefinition]) -> str:
        states = {array.files.get(e.key, _EventFile()).enabled for e in events}
        if not states:
            return "?\n"
        return "X\n" if len(states) == 2 else ("1\n" if True in states else "0\n")

    def _merged_records(self, array: _TraceArray) -> list[EventRecord]:
        records = [record for buffer in array.buffers for record in buffer.records]
        return sorted(records, key=lambda record: (record.timestamp, record.cpu))

    def _render(self, array: _TraceArray, record: EventRecord) -> str:
        options = array.options
        if record.stack is None:
            body = render_body(record, fields_option=options["fields"], symbolize=self._symbolize)
        elif options["fields"]:
            body = f"UNKNOWN TYPE {_TRACE_STACK}"  # print_event_fields() knows no stack entries
        else:
            body = "<stack trace>" + "".join(f"\n => {frame}" for frame in record.stack)
        if not options["context-info"]:
            return body
        context = render_context(
            record,
            irq_info=options["irq-info"],
            tgid=array.tgids.get(record.pid),
            record_tgid=options["record-tgid"],
        )
        return context + body

    def _trace_text(self, array: _TraceArray) -> str:
        entries = sum(len(buffer.records) for buffer in array.buffers)
        written = entries + sum(buffer.overrun for buffer in array.buffers)
        header = render_header(
            tracer="nop",
            entries=entries,
            written=written,
            cpus=self.cpus,
            context_info=array.options["context-info"],
            irq_info=array.options["irq-info"],
            record_tgid=array.options["record-tgid"],
        )
        return header + "".join(self._render(array, record) + "\n" for record in self._merged_records(array))

    def _consume(self, array: _TraceArray) -> str:
        lines: list[str] = []
        for record in self._merged_records(array):
            buffer = array.buffers[record.cpu]
            if buffer.unreported_lost:
                lines.append(render_lost_events(record.cpu, buffer.unreported_lost))
                buffer.unreported_lost = 0
            lines.append(self._render(array, record))
        for buffer in array.buffers:
            buffer.records.clear()
            buffer.used_bytes = 0
        return "".join(line + "\n" for line in lines)

    # --- writes -----------------------------------------------------------------------------------------------

    def _write_file(self, path: str, array: _TraceArray, rest: list[str], data: str, append: bool) -> int:
        size = len(data.encode("utf-8", "surrogateescape"))
        try:
            if rest[0] == "events":
                return self._write_event_file(path, array, rest, data, size)
            if rest[0] == "options":
                self._set_option(path, array, rest[1], self._boolean(data))
                return size
            if rest[0] in _PROBE_CONTROL_FILES:
                self._write_probe_control(path, rest[0], data, append)
                return size
            writer = self._FILE_WRITERS.get(rest[0])
            if writer is not None:
                return writer(self, path, array, data, append, size)
        except FakeOSError as exc:
            if exc.filename != path:
                raise FakeOSError(exc.errno or errno.EINVAL, path) from None
            raise
        except KstrtoxError as exc:
            raise FakeOSError(_errno_code(exc.errno), path) from None
        raise FakeOSError(errno.EINVAL, path)  # a file without a write operation

    # One writer per file of a trace array: (path, array, data, append, size of data in bytes) -> bytes taken.

    def _write_set_event_file(self, path: str, array: _TraceArray, data: str, append: bool, size: int) -> int:
        if not append:
            self._set_events(array, None, None, None, False, path, must_match=False)
        return self._write_set_event(path, array, data)

    def _write_set_event_pid(self, path: str, array: _TraceArray, data: str, append: bool, size: int) -> int:
        if not append:
            array.pids.clear()
        self._write_pids(array, data)
        return size

    def _write_trace(self, path: str, array: _TraceArray, data: str, append: bool, size: int) -> int:
        if not append:
            array.reset_buffers()
        return size

    def _write_error_log(self, path: str, array: _TraceArray, data: str, append: bool, size: int) -> int:
        if not append:
            array.error_log.clear()
        return size

    def _write_trace_marker(self, path: str, array: _TraceArray, data: str, append: bool, size: int) -> int:
        return self._write_marker(path, array, data)

    def _write_trace_options(self, path: str, array: _TraceArray, data: str, append: bool, size: int) -> int:
        self._write_trace_option(path, array, data)
        return size

    def _write_tracing_on(self, path: str, array: _TraceArray, data: str, append: bool, size: int) -> int:
        array.tracing_on = kstrtoul_from_user(data) != 0
        return size

    def _write_buffer_size_kb(self, path: str, array: _TraceArray, data: str, append: bool, size: int) -> int:
        kilobytes = kstrtoul_from_user(data)
        if not kilobytes:
            raise FakeOSError(errno.EINVAL, path)
        if kilobytes > _MAX_BUFFER_KB:
            raise FakeOSError(errno.ENOMEM, path)
        array.buffer_pages = max(2, -(-(kilobytes << 10) // _BUFFER_PAGE_DATA))
        return size

    def _write_current_tracer(self, path: str, array: _TraceArray, data: str, append: bool, size: int) -> int:
        if data.strip(KERNEL_SPACE) != "nop":
            raise FakeOSError(errno.EINVAL, path)
        return size

    _FILE_WRITERS: Mapping[str, Callable[[FakeTracefs, str, _TraceArray, str, bool, int], int]] = {
        "set_event": _write_set_event_file,
        "set_event_pid": _write_set_event_pid,
        "trace": _write_trace,
        "error_log": _write_error_log,
        "trace_marker": _write_trace_marker,
        "trace_options": _write_trace_options,
        "tracing_on": _write_tracing_on,
        "buffer_size_kb": _write_buffer_size_kb,
        "current_tracer": _write_current_tracer,
    }

    @staticmethod
    def _boolean(data: str) -> bool:
        value = kstrtoul_from_user(data)
        if value not in (0, 1):
            raise FakeOSError(errno.EINVAL, "")
        return value == 1

    def _set_option(self, path: str, array: _TraceArray, name: str, value: bool) -> None:
        if name == "test_nop_refuse" and value:
            raise FakeOSError(errno.EINVAL, path)  # the nop tracer refuses it, by design (selftest hook)
        array.options[name] = value

    def _write_trace_option(self, path: str, array: _TraceArray, data: str) -> None:
        text = data[:63].strip(KERNEL_SPACE)  # trace_options_write() copies at most 63 bytes, then strstrip()
        negate = text.startswith("no")
        name = text[2:] if negate else text
        if name not in dict(_CORE_OPTIONS):
            raise FakeOSError(errno.EINVAL, path)
        self._set_option(path, array, name, not negate)

    def _write_marker(self, path: str, array: _TraceArray, data: str) -> int:
        if not array.options["markers"]:
            raise FakeOSError(errno.EINVAL, path)
        if not array.tracing_on:
            raise FakeOSError(errno.EBADF, path)  # the ring buffer is off: "as if not open for write"
        raw = data.encode("utf-8", "surrogateescape")[:_TRACE_MARKER_MAX_SIZE]
        text = raw.decode("utf-8", "surrogateescape")
        if not text.endswith("\n"):
            text += "\n"
        layout = EventLayout("ftrace", "print", "marker", False, (EventField("buf", "char[]", 16, 0, False),))
        # The writer is this process (like a real write(2)); preempt_count 1 as tracing_mark_write() records it.
        record = EventRecord(layout, os.getpid(), _current_comm(), 0, self._clock(), {"buf": text}, 0, 1)
        self._store(array, record, os.getpid())
        return len(raw)

    def _write_pids(self, array: _TraceArray, data: str) -> None:
        """trace_pid_write(): every whitespace-separated number; nothing changes if one is bad."""
        pids = set(array.pids)
        for word in re.split(f"[{KERNEL_SPACE}]+", data):
            if not word:
                continue
            pid = kstrtoul_from_user(word, 0)
            if pid >= _PID_MAX_LIMIT:
                raise FakeOSError(errno.EINVAL, "")
            pids.add(pid)
        array.pids = pids

    def _write_set_event(self, path: str, array: _TraceArray, data: str) -> int:
        """ftrace_event_write(): one word (trace_get_user) per write; returns the bytes it consumed."""
        raw = to_kernel_bytes(data)
        index = 0
        while index < len(raw) and raw[index] in KERNEL_SPACE:
            index += 1
        start = index
        while index < len(raw) and raw[index] not in KERNEL_SPACE:
            index += 1
        word = from_kernel_bytes(raw[start:index])
        if index < len(raw):
            index += 1  # the whitespace that ended the word is consumed too
        consumed = len(raw[:index])
        if not word:
            return consumed
        enable = not word.startswith("!")
        word = word if enable else word[1:]
        match: Optional[str] = word
        system: Optional[str] = None
        event: Optional[str] = None
        if ":" in word:
            system, _, event = word.partition(":")
            match = None
            system = None if system in ("", "*") else system
            event = None if event in ("", "*") else event
        self._set_events(array, match, system, event, enable, path, must_match=True)
        return consumed

    def _set_events(
        self,
        array: _TraceArray,
        match: Optional[str],
        system: Optional[str],
        event: Optional[str],
        enable: bool,
        path: str,
        *,
        must_match: bool,
    ) -> None:
        """__ftrace_set_clr_event_nolock(): EINVAL when nothing matched."""
        matched = False
        for definition in self._events.values():
            if match is not None and match not in (definition.name, definition.system):
                continue
            if system is not None and system != definition.system:
                continue
            if event is not None and event != definition.name:
                continue
            matched = True
            self._enable(array, definition, enable)
        if must_match and not matched:
            raise FakeOSError(errno.EINVAL, path)

    @staticmethod
    def _enable(array: _TraceArray, definition: _EventDefinition, enable: bool) -> None:
        event_file = array.file(definition.key)
        event_file.enabled = enable
        event_file.was_enabled = event_file.was_enabled or enable

    def _write_event_file(self, path: str, array: _TraceArray, rest: list[str], data: str, size: int) -> int:
        if len(rest) == 2:
            if rest[1] != "enable":
                raise FakeOSError(errno.EINVAL, path)
            enable = self._boolean(data)
            self._set_events(array, None, None, None, enable, path, must_match=True)
            return size
        if len(rest) == 3:
            if rest[2] == "enable":
                enable = self._boolean(data)
                self._set_events(array, None, rest[1], None, enable, path, must_match=True)
            else:
                self._write_system_filter(path, array, rest[1], data, size)
            return size
        definition = self._systems[rest[1]][rest[2]]
        if rest[3] == "enable":
            self._enable(array, definition, self._boolean(data))
            return size
        if rest[3] == "filter":
            self._write_event_filter(path, array, definition, data, size)
            return size
        if rest[3] == "trigger":
            self._write_trigger(path, array, definition, data)
            return size
        raise FakeOSError(errno.EINVAL, path)  # format, id

    def _write_trigger(self, path: str, array: _TraceArray, definition: _EventDefinition, data: str) -> None:
        """The ``stacktrace`` trigger (event_trigger_parse): ``stacktrace[:N] [if FILTER]`` sets it (EEXIST when
        set), ``!stacktrace`` clears it (ENOENT when not set). Other triggers are not modelled (EINVAL)."""
        text = data.strip()
        if not text:
            return
        command, _, rest = text.partition(" ")
        remove = command.startswith("!")
        name = command.lstrip("!").split(":", 1)[0]
        if name != "stacktrace":
            raise FakeOSError(errno.EINVAL, path)
        event_file = array.file(definition.key)
        if remove:
            if not event_file.stacktrace:
                raise FakeOSError(errno.ENOENT, path)
            event_file.stacktrace, event_file.stack_filter, event_file.stack_filter_text = False, None, ""
            return
        if event_file.stacktrace:
            raise FakeOSError(errno.EEXIST, path)
        compiled: Optional[CompiledFilter] = None
        rest = rest.strip()
        if rest:
            if not rest.startswith("if "):
                raise FakeOSError(errno.EINVAL, path)
            try:
                compiled = self._compile_filter(rest[3:], definition)
            except FilterError as exc:
                self._log_filter_error(array, exc.error_log_entry(rest[3:]))
                raise FakeOSError(_errno_code(exc.errno), path) from None
        event_file.stacktrace, event_file.stack_filter = True, compiled
        event_file.stack_filter_text = compiled.filter_file_text().strip() if compiled is not None else ""

    def _compile_filter(self, expression: str, definition: _EventDefinition) -> Optional[CompiledFilter]:
        return compile_filter(
            expression,
            definition.filter_fields(),
            nr_cpu_ids=self.cpus,
            kernel_functions=self._text(),
            trailing_operator_is_error=self.snapshot.answer("filter_trailing_operator") == "rejected",
        )

    def _log_filter_error(self, array: _TraceArray, text: str) -> None:
        array.error_log.append(self._timestamp_prefix() + text)

    def _timestamp_prefix(self) -> str:
        micros = max(0, round(self._clock() * 1_000_000))
        seconds, micros = divmod(micros, 1_000_000)
        return f"[{seconds:5d}.{micros:06d}] "

    def _write_event_filter(
        self, path: str, array: _TraceArray, definition: _EventDefinition, data: str, size: int
    ) -> None:
        if size >= FILTER_WRITE_LIMIT:
            raise FakeOSError(errno.EINVAL, path)
        event_file = array.file(definition.key)
        try:
            compiled = self._compile_filter(data, definition)
        except FilterError as exc:
            # The failed filter replaces the old one, disabled, and the file shows the error (apply_event_filter).
            event_file.active_filter = None
            event_file.filter_text = exc.filter_file_text(data)
            self._log_filter_error(array, exc.error_log_entry(data))
            raise FakeOSError(_errno_code(exc.errno), path) from None
        event_file.active_filter = compiled
        event_file.filter_text = None if compiled is None else compiled.filter_file_text()

    def _write_system_filter(self, path: str, array: _TraceArray, system: str, data: str, size: int) -> None:
        """apply_subsystem_event_filter(): each event of the system takes the filter or, if it cannot, gets the
        "Couldn't find or set field" error (logged once per event).  The write itself succeeds either way
        (process_system_preds() only fails for a system without events) and the system's file keeps showing
        its help text."""
        if size >= FILTER_WRITE_LIMIT:
            raise FakeOSError(errno.EINVAL, path)
        events = list(self._systems[system].values())
        if normalize_filter_text(data).strip(KERNEL_SPACE) == "0":
            for definition in events:
                event_file = array.file(definition.key)
                event_file.active_filter, event_file.filter_text = None, None
            return
        subsystem_error = FilterError(_BAD_SUBSYSTEM_FILTER, 0, "EINVAL")
        for definition in events:
            event_file = array.file(definition.key)
            try:
                compiled = self._compile_filter(data, definition)
            except FilterError:
                event_file.active_filter = None
                event_file.filter_text = subsystem_error.filter_file_text(data)
                self._log_filter_error(array, subsystem_error.error_log_entry(data))
                continue
            event_file.active_filter = compiled
            event_file.filter_text = None if compiled is None else compiled.filter_file_text()

    # --- probe control files ----------------------------------------------------------------------------------

    def _write_probe_control(self, path: str, control: str, data: str, append: bool) -> None:
        kinds = {"kprobe_events": ("kprobe",), "uprobe_events": ("uprobe",)}.get(control, ("kprobe", "uprobe"))
        if not append:
            self._release_all(path, kinds)
        too_long = False
        try:
            commands = split_commands(data)
        except LineTooLongError as exc:
            commands, too_long = exc.preceding, True
        for line in commands:
            self._run_probe_command(path, control, line)
        if too_long:
            raise FakeOSError(errno.EINVAL, path)

    def _release_all(self, path: str, kinds: tuple[str, ...]) -> None:
        """dyn_events_release_all(): EBUSY (and nothing removed) if any probe of these kinds is enabled."""
        targets = [(d, c) for d, c in self._probe_order if c.kind in kinds]
        if any(self._is_enabled(definition) for definition, _ in targets):
            raise FakeOSError(errno.EBUSY, path)
        for definition, command in targets:
            self._unlink_probe(definition, command)

    def _is_enabled(self, definition: _EventDefinition) -> bool:
        return any(array.files.get(definition.key, _EventFile()).enabled for array in self._arrays())

    def _run_probe_command(self, path: str, control: str, line: str) -> None:
        parse_control = control
        # Without CONFIG_KPROBE_EVENTS only the uprobe parser is registered for creation.
        if (
            control == "dynamic_events"
            and "kprobes" not in self.snapshot.features
            and not line.lstrip(KERNEL_SPACE).startswith(("-", "!"))
        ):
            parse_control = "uprobe_events"
        try:
            parsed = parse_command(
                line,
                control=parse_control,  # type: ignore[arg-type]
                dialect=self._dialect,
                symbol_exists=self._symbol_count,
                **({"file_exists": self._file_exists} if self._file_exists is not None else {}),
            )
        except UnsupportedCommand as exc:
            raise FakeUnsupportedError(path, str(exc)) from None
        except ProbeSyntaxError as exc:
            if exc.logged:
                self._top.error_log.append(exc.error_log_entry(self._clock()))
            raise FakeOSError(_errno_code(exc.errno), path) from None
        if parsed is None:
            return
        if isinstance(parsed, RemovalCommand):
            kinds = {"kprobe_events": ("kprobe",), "uprobe_events": ("uprobe",)}.get(control, ("kprobe", "uprobe"))
            self._remove_probes(path, parsed, kinds)
            return
        self._register_probe(path, line, parsed, self._registration_error(parsed))

    def _registration_error(self, command: ProbeCommand) -> Optional[tuple[str, str]]:
        """(error code, errno name) with which register_kprobe() refuses ``command``; None if it accepts it.

        Checked against the Debian 6.1 guests (``tests/fake/test_kprobe_differential.py``):

        * a blacklisted function: EINVAL, FAIL_REG_PROBE;
        * x86_64 (no IBT in 6.1): every function kprobes may probe at all is ftrace-traceable (without
          CONFIG_KPROBE_EVENTS_ON_NOTRACE a notrace function is refused), so it starts with the 5-byte
          ``__fentry__`` call: offsets 1-4 are inside it (can_probe(): EILSEQ, BAD_INSN_BNDRY).  Later offsets
          cannot be checked without the function's code and are accepted;
        * arm64: an offset that is not a multiple of 4 (arch_prepare_kprobe(): EINVAL), and offset 4, the
          ``bl ftrace_caller`` site of the patchable function entry (check_ftrace_location() without
          CONFIG_KPROBES_ON_FTRACE: EINVAL), both FAIL_REG_PROBE.
        """
        if command.kind != "kprobe" or command.symbol is None:
            return None
        if self.snapshot.is_blacklisted(command.symbol):
            return "FAIL_REG_PROBE", "EINVAL"
        arch = self._dialect.canonical_arch
        if arch == "x86_64" and not self._dialect.modern and 1 <= command.offset <= 4:
            return "BAD_INSN_BNDRY", "EILSEQ"
        if arch == "arm64" and (command.offset % 4 or command.offset == 4):
            return "FAIL_REG_PROBE", "EINVAL"
        return None

    def _symbol_count(self, symbol: str) -> int:
        name = symbol.split(":", 1)[1] if ":" in symbol else symbol
        if name in self.snapshot.duplicate_symbols:
            return 2
        return 1 if self.snapshot.has_symbol(name) else 0

    def _log_probe_error(
        self, path: str, command: ProbeCommand, line: str, code: str, index: int, errno_name: str = "EEXIST"
    ) -> FakeOSError:
        """trace_probe_log_err() at argv[index] (past the end: one after the command), then ``errno_name``."""
        argv = argv_split(to_kernel_bytes(line))
        subsystem: Literal["trace_kprobe", "trace_uprobe"] = (
            "trace_kprobe" if command.kind == "kprobe" else "trace_uprobe"
        )
        joined = " ".join(argv)
        position = len(joined) + 1 if index >= len(argv) else sum(len(word) + 1 for word in argv[:index])
        error = ProbeSyntaxError(
            code,
            self._dialect.message(code),
            errno_name,
            position,
            from_kernel_bytes(joined),
            subsystem,
            True,
        )
        self._top.error_log.append(error.error_log_entry(self._clock()))
        return FakeOSError(_errno_code(error.errno), path)

    def _register_probe(self, path: str, line: str, command: ProbeCommand, refused: Optional[tuple[str, str]]) -> None:
        key = f"{command.group}/{command.event}"
        existing = self._events.get(key)
        if existing is not None:
            primary = existing.primary
            if primary is None or primary.kind != command.kind:
                raise self._log_probe_error(path, command, line, "EVENT_EXIST", 0)
            if primary.is_return != command.is_return:
                raise self._log_probe_error(path, command, line, "DIFF_PROBE_TYPE", 0)
            differing = self._first_different_argument(command, primary)
            if differing:
                raise self._log_probe_error(path, command, line, "DIFF_ARG_TYPE", differing + 1)
            if any(self._same_probe(command, other) for other in existing.probes):
                raise self._log_probe_error(path, command, line, "SAME_PROBE", 0)
            if refused is not None:
                raise self._log_probe_error(path, command, line, refused[0], 1, refused[1])
            existing.probes.append(command)
            self._probe_order.append((existing, command))
            return
        if refused is not None:
            raise self._log_probe_error(path, command, line, refused[0], 1, refused[1])
        self._serial += 1
        event_id = self._next_event_id()
        definition = _EventDefinition(command.group, command.event, event_id, self._serial, probes=[command])
        self._add_event(definition)
        self._probe_order.append((definition, command))

    @staticmethod
    def _argument_type(type_text: str) -> str:
        """The fetch type an argument is stored as (a bitfield compares as its container type)."""
        base, bracket, count = type_text.partition("[")
        if base.startswith("b") and "/" in base:
            base = f"u{int(base.rsplit('/', 1)[1], 0)}"
        return base + bracket + count

    def _first_different_argument(self, new: ProbeCommand, old: ProbeCommand) -> int:
        """trace_probe_compare_arg_type(): 1-based index of the first different argument, 0 if all agree."""
        if len(new.args) != len(old.args):
            return min(len(new.args), len(old.args)) + 1
        for index, (a, b) in enumerate(zip(new.args, old.args)):
            if a.name != b.name or self._argument_type(a.type) != self._argument_type(b.type):
                return index + 1
        return 0

    @staticmethod
    def _same_probe(new: ProbeCommand, old: ProbeCommand) -> bool:
        """has_same_kprobe/has_same_uprobe: same probe point and the same argument texts."""
        if new.kind == "uprobe":
            same_point = _same_file(new.path or "", old.path or "") and new.offset == old.offset
        else:
            same_point = (new.symbol, new.address, new.offset) == (old.symbol, old.address, old.offset)
        return same_point and all(a.text == b.text for a, b in zip(new.args, old.args))

    def _remove_probes(self, path: str, removal: RemovalCommand, kinds: tuple[str, ...]) -> None:
        """dyn_event_release(): ENOENT unless something matched; stops at the first busy probe."""
        result = errno.ENOENT
        for definition, command in list(self._probe_order):
            if command.kind not in kinds:
                continue
            if removal.event and removal.event != definition.name:
                continue
            if removal.group is not None and removal.group != definition.system:
                continue
            tokens = command.listing().split(" ")[1:]
            if list(removal.match_args) != tokens[: len(removal.match_args)] or len(removal.match_args) > len(tokens):
                continue
            siblings = len(definition.probes) > 1
            busy = self._is_enabled(definition) or definition.open_references > 0
            if busy and (command.kind == "kprobe" or not siblings):
                result = errno.EBUSY
                break
            self._unlink_probe(definition, command)
            result = 0
        if result:
            raise FakeOSError(result, path)

    def _unlink_probe(self, definition: _EventDefinition, command: ProbeCommand) -> None:
        self._probe_order = [(d, c) for d, c in self._probe_order if c is not command]
        definition.probes = [probe for probe in definition.probes if probe is not command]
        if not definition.probes:
            self._drop_event(definition)


def _trigger_help(readme: str) -> str:
    """What a ``trigger`` file shows: the trigger commands the README's event "trigger" section lists."""
    start = readme.find("      trigger\t\t- If set")
    if start < 0:
        return _TRIGGER_HELP  # no README: the commands of a kernel without snapshot and hist triggers
    end = readme.find("example:", start)
    section = {line.strip() for line in readme[start : end if end >= 0 else len(readme)].splitlines()}
    names = [name for name, needs in _TRIGGER_COMMANDS if needs is None or needs in section]
    return "# Available triggers:\n# " + " ".join(names) + "\n"


def _current_comm() -> str:
    try:
        with open("/proc/self/comm") as comm:
            return comm.read().strip()[:15]
    except OSError:
        return "python3"


def _same_file(first: str, second: str) -> bool:
    """d_real_inode() equality: the same file, however it was named."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return os.path.normpath(first) == os.path.normpath(second)
