"""An in-memory ``/sys/kernel/tracing``, faithful at the file level.

:class:`FakeTracefs` answers the same reads, writes, ``mkdir`` and ``rmdir`` calls a real tracefs does, with the
same text and the same errno (as :class:`FakeOSError`).  It imitates one target described by a
:class:`~pytest_ktrace.snapshots._snapshot.KernelSnapshot` (its tracepoints' format files, kernel symbols, kprobe
blacklist, README, features).  Events are produced by :meth:`emit`.

It wires these parts together:

* :mod:`._paths`: the file tree, and which part answers each path;
* :mod:`._trace_arrays`: the top level and the instances, with their ring buffers and options;
* :mod:`._event_files`: the ``events/`` files of each trace array (enable, filter, trigger) and ``set_event``;
* :mod:`._dynevents`: the probe events defined through ``kprobe_events``/``uprobe_events``/``dynamic_events``;
* :mod:`._events`: every event the tracefs knows, with its ID and format;
* :mod:`._modules`: the loaded kernel modules, whose functions and events come and go with them;
* :mod:`._kernel`: what they share about the imitated kernel (CPUs, clock, kallsyms);
* :mod:`._records`: the field values an emitted event records.

Probe commands are parsed by :mod:`._grammar`, filters by :mod:`._filters`, format files are laid out by
:mod:`._formats` and trace lines printed by :mod:`._render`.

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
  or hit the ftrace call site (see :mod:`._dynevents`; checked against the Debian 6.1 guests by
  ``tests/fake/test_kprobe_differential.py``).  ``trigger`` files list the trigger commands the snapshot's README
  names (snapshot and hist triggers only where the kernel has them).
* ``trace`` does not show ``CPU:N [LOST M EVENTS]`` for events overwritten before the read: the kernel only
  reports losses on the consuming ``trace_pipe`` (a ``trace`` iterator reports them only when the writer
  overtakes it mid-read, which cannot happen here).  ``entries-written`` counts the overwritten ones.
* listings of ``available_events``/``set_event`` follow the trace array's event list: events that existed when
  the array was created in ID order, events added later in front, newest first.
* with the ``fields`` option a ``trace_marker`` record prints ``UNKNOWN TYPE 5`` (see :mod:`._render`).

Not modelled: tracers other than ``nop``, triggers other than ``stacktrace`` (writes of others fail with EINVAL),
``header_page``/``header_event`` contents, ``per_cpu`` files, the ``events/ftrace`` system, eprobes/fprobes/synthetic
events (refused with :class:`FakeUnsupportedError`), perf users of events, page-granular ring-buffer overwrite (one
record at a time here), blocking reads of ``trace_pipe`` (it returns what is there).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable, Mapping, Optional, Sequence, Union

from ..snapshots._snapshot import KernelSnapshot
from ._dynevents import DynamicEvents
from ._event_files import EventFiles
from ._events import EventTable
from ._filters import CURRENT_COMM_KEY, CURRENT_CPU_KEY
from ._kernel import FakeKernel
from ._modules import ModuleTable
from ._paths import PathRouter
from ._records import FieldInput, record_values
from ._render import EventRecord
from ._syscall_errors import FakeOSError, FakeUnsupportedError
from ._trace_arrays import TraceArrays

__all__ = ["FakeOSError", "FakeTracefs", "FakeUnsupportedError", "FieldInput"]


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
        self._kernel = FakeKernel(snapshot, cpus, clock or time.monotonic, buffer_events_per_cpu, file_exists)
        self._events = EventTable(snapshot)
        self._arrays = TraceArrays(self._kernel, self._events.serial)
        dynamic = DynamicEvents(self._kernel, self._events, self._arrays)
        event_files = EventFiles(self._kernel, self._events)
        self._hists = event_files.hists  # hist triggers count each hit, enabled or not (see _hist)
        self._paths = PathRouter(self._kernel, self._events, self._arrays, event_files, dynamic)
        self.modules = ModuleTable(self._kernel, self._events, self._arrays, dynamic.modules_changed)

    def read(self, path: str) -> str:
        """The whole content of a file, as one ``cat`` would see it."""
        return self._paths.read(path)

    def write(self, path: str, data: str, *, append: bool = True) -> int:
        """One ``write(2)`` of ``data``; ``append=False`` opens with O_TRUNC.  Returns the bytes consumed."""
        return self._paths.write(path, data, append)

    def mkdir(self, path: str) -> None:
        self._paths.mkdir(path)

    def rmdir(self, path: str) -> None:
        self._paths.rmdir(path)

    def exists(self, path: str) -> bool:
        return self._paths.exists(path)

    def listdir(self, path: str) -> list[str]:
        return self._paths.listdir(path)

    @contextmanager
    def hold_open(self, path: str) -> Iterator[None]:
        """Keep ``path`` open (like a reader with an open descriptor): its instance cannot be removed (EBUSY)
        and, for an event's files, neither can the event."""
        array, _ = self._paths.resolve(path)
        if not self._paths.exists(path):
            raise FakeOSError(errno.ENOENT, path)
        event = self._paths.event_at(path)
        array.open_references += 1
        if event is not None:
            event.open_references += 1
        try:
            yield
        finally:
            array.open_references -= 1
            if event is not None:
                event.open_references -= 1

    def symbol_address(self, name: str) -> int:
        """The fake kallsyms address of a snapshot symbol (KeyError if the snapshot does not have it)."""
        return self._kernel.symbol_addresses()[name]

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
        definition = self._events.events.get(event.replace(":", "/", 1))
        if definition is None:
            raise KeyError(f"no event {event!r} in this tracefs")
        if not 0 <= cpu < self.cpus:
            raise ValueError(f"cpu {cpu} is not one of the {self.cpus} CPUs")
        when = self._kernel.clock() if timestamp is None else timestamp
        values = record_values(definition, fields, comm, self._kernel)
        # What the event's filters see: its fields, the common ones and the CPU and comm pseudo fields.
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
        record = EventRecord(definition.layout, pid, comm, cpu, when, values, irq_flags, preempt_count)
        recorded = 0
        for array in self._arrays.all():
            self._hists.hit(
                array, definition.key, values, filter_values, pid=pid, comm=comm, cpu=cpu, timestamp=when, stack=stack
            )
            if array.record_event(definition.key, record, filter_values, pid if tgid is None else tgid, stack):
                recorded += 1
        for array in self._arrays.all():
            array.follow_fork(definition.key, values)
        return recorded
