"""The kernel modules of a fake tracefs: what appears when a module is loaded and goes when it is unloaded.

:class:`ModuleTable` is the part of the kernel's module list that tracefs sees: a module's functions join the
kallsyms that kprobes look names up in, and its trace events join ``events/`` of every trace array
(``trace_module_add_events()``). Unloading takes both away again (``trace_module_remove_events()``): an event
still enabled is disabled and removed with it (enabling an event through tracefs takes no reference on its
module, so it does not stop ``rmmod``; checked on the 6.1 guests), and one that was ever enabled in a trace array
resets that array's buffer, as removing a dynamic event does. Kprobes on the module's functions stay defined
across an unload (the kernel marks them gone and registers them again when the module comes back).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterable, Mapping

from ._events import EventDefinition, EventTable
from ._kernel import FakeKernel
from ._syscall_errors import FakeOSError
from ._trace_arrays import TraceArrays

__all__ = ["ModuleTable"]

_ID_LINE = re.compile(r"^ID: \d+$", re.MULTILINE)


class ModuleTable:
    """Loaded modules with their functions and events, over the kernel, the event table and the trace arrays."""

    def __init__(
        self, kernel: FakeKernel, events: EventTable, arrays: TraceArrays, came: Callable[[], None] = lambda: None
    ) -> None:
        self._kernel = kernel
        self._events = events
        self._arrays = arrays
        self._came = came  # the kernel's module notifier: what registers once a module is there
        self._events_of: dict[str, list[EventDefinition]] = {}

    @property
    def loaded(self) -> list[str]:
        return list(self._kernel.modules)

    def load(self, name: str, functions: Iterable[str], events: Mapping[str, str]) -> None:
        """Module ``name`` comes, with its text symbols and its trace events (``system/event`` -> the format file
        text it has on the kernel; the event gets an ID of this tracefs). EEXIST if it is loaded, or if one of its
        events exists already (nothing is added then)."""
        if name in self._kernel.modules:
            raise FakeOSError(errno.EEXIST, name)
        if any(key in self._events.events for key in events):
            raise FakeOSError(errno.EEXIST, name)
        self._kernel.modules[name] = frozenset(functions)
        added = []
        for key, text in events.items():
            system, _, event = key.partition("/")
            event_id = self._events.next_event_id()
            definition = EventDefinition(
                system, event, event_id, self._events.next_serial(), format_text=_ID_LINE.sub(f"ID: {event_id}", text)
            )
            self._events.add(definition)
            added.append(definition)
        self._events_of[name] = added
        self._came()

    def unload(self, name: str) -> None:
        """Module ``name`` goes, with its events, enabled or not (ENOENT if it is not loaded)."""
        if name not in self._kernel.modules:
            raise FakeOSError(errno.ENOENT, name)
        for definition in self._events_of[name]:
            self._events.remove(definition)
            for array in self._arrays.all():
                event_file = array.files.pop(definition.key, None)
                if event_file is not None and event_file.was_enabled:
                    array.reset_buffers()
        del self._events_of[name]
        del self._kernel.modules[name]
