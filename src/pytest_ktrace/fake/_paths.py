"""The file tree of a fake tracefs: which part answers a read, write, ``mkdir`` or ``rmdir`` of a path.

:class:`PathRouter` knows the layout (the top level, ``instances/NAME``, ``options/``, ``per_cpu/``,
``events/SYSTEM/EVENT/``), answers directory listings and the VFS errors (ENOENT, EISDIR, ENOTDIR, ENAMETOOLONG,
EPERM), and hands each file to its part: the trace array, its event files or the dynamic events.
"""

from __future__ import annotations

import errno
from typing import Callable, Optional

from ._dynevents import PROBE_CONTROL_FILES, DynamicEvents
from ._event_files import EventFiles
from ._events import EventDefinition, EventTable
from ._kernel import FakeKernel
from ._kernel_lib import KstrtoxError
from ._syscall_errors import FakeOSError, errno_code
from ._trace_arrays import TraceArray, TraceArrays, parse_switch

__all__ = ["PathRouter"]

_TOP_LEVEL_ONLY_FILES = ("available_events", "available_filter_functions", "README", *PROBE_CONTROL_FILES)
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
_NAME_MAX = 255  # bytes of one path component (the VFS answers ENAMETOOLONG beyond)
_PATH_MAX = 4096  # bytes of a whole path, its NUL included


def split_path(path: str) -> list[str]:
    """The components of ``path``; ENAMETOOLONG, as the VFS answers, for a component longer than NAME_MAX or a
    path of PATH_MAX bytes or more."""
    if path.isascii():  # what the plugin sends: a character is a byte, and no part is longer than the path
        if len(path) >= _PATH_MAX:
            raise FakeOSError(errno.ENAMETOOLONG, path)
        parts = [part for part in path.strip("/").split("/") if part and part != "."]
        if len(path) > _NAME_MAX and any(len(part) > _NAME_MAX for part in parts):
            raise FakeOSError(errno.ENAMETOOLONG, path)
        return parts
    if len(path.encode("utf-8", "surrogatepass")) >= _PATH_MAX:
        raise FakeOSError(errno.ENAMETOOLONG, path)
    parts = [part for part in path.strip("/").split("/") if part and part != "."]
    if any(len(part.encode("utf-8", "surrogatepass")) > _NAME_MAX for part in parts):
        raise FakeOSError(errno.ENAMETOOLONG, path)
    return parts


class PathRouter:
    """The paths of one fake tracefs, relative to its mount point, over its parts."""

    def __init__(
        self,
        kernel: FakeKernel,
        table: EventTable,
        arrays: TraceArrays,
        event_files: EventFiles,
        dynamic_events: DynamicEvents,
    ) -> None:
        self._kernel = kernel
        self._table = table
        self._arrays = arrays
        self._event_files = event_files
        self._dynamic_events = dynamic_events
        # CONFIG_HIST_TRIGGERS gives every event a hist file
        self._event_file_names = (*_EVENT_FILES, "hist") if event_files.hist_supported else _EVENT_FILES
        # Files whose content is not the trace array's alone.
        self._shared_readers: dict[str, Callable[[TraceArray], str]] = {
            "available_events": event_files.available_events,
            "set_event": event_files.set_event_listing,
            "README": lambda array: kernel.snapshot.readme,
            # The fake kallsyms order (by name); the kernel lists ftrace-able functions in address order.
            "available_filter_functions": lambda array: "".join(f"{name}\n" for name in kernel.symbol_addresses()),
        }

    # --- the tree ---------------------------------------------------------------------------------------------

    def resolve(self, path: str) -> tuple[TraceArray, list[str]]:
        """The trace array ``path`` is in and the components below it (ENOENT for an unknown instance)."""
        parts = split_path(path)
        if len(parts) >= 2 and parts[0] == "instances":
            array = self._arrays.instances.get(parts[1])
            if array is None:
                raise FakeOSError(errno.ENOENT, path)
            return array, parts[2:]
        return self._arrays.top, parts

    def exists(self, path: str) -> bool:
        try:
            array, rest = self.resolve(path)
        except FakeOSError:
            return False
        return self._directory_entries(array, rest) is not None or self._is_file(array, rest)

    def listdir(self, path: str) -> list[str]:
        array, rest = self.resolve(path)
        entries = self._directory_entries(array, rest)
        if entries is None:
            raise FakeOSError(errno.ENOTDIR if self._is_file(array, rest) else errno.ENOENT, path)
        return sorted(entries)

    def event_at(self, path: str) -> Optional[EventDefinition]:
        """The event whose directory holds ``path`` (``events/SYSTEM/EVENT/FILE``), if it is one of its files."""
        _, rest = self.resolve(path)
        return self._table.events.get("/".join(rest[1:3])) if len(rest) >= 4 and rest[0] == "events" else None

    def _is_directory(self, path: str) -> bool:
        try:
            array, rest = self.resolve(path)
        except FakeOSError:
            return False
        return self._directory_entries(array, rest) is not None

    def _directory_entries(self, array: TraceArray, rest: list[str]) -> Optional[list[str]]:
        top = array is self._arrays.top
        if not rest:
            entries = ["events", "options", "per_cpu", *_TRACE_ARRAY_FILES]
            if top:
                entries += ["instances", "available_events", "available_filter_functions", "README"]
                entries += [name for name in PROBE_CONTROL_FILES if self._dynamic_events.has_control(name)]
            return entries
        if rest == ["instances"] and top:
            return list(self._arrays.instances)
        if rest == ["options"]:
            return array.option_files()
        if rest == ["per_cpu"]:
            return [f"cpu{index}" for index in range(self._kernel.cpus)]
        if rest[0] != "events":
            return None
        systems = self._table.systems
        if len(rest) == 1:
            return [*systems, "enable", "header_event", "header_page"]
        system = systems.get(rest[1])
        if system is None:
            return None
        if len(rest) == 2:
            return [*system, "enable", "filter"]
        if len(rest) == 3 and rest[2] in system:
            return list(self._event_file_names)
        return None

    def _is_file(self, array: TraceArray, rest: list[str]) -> bool:
        top = array is self._arrays.top
        if len(rest) == 1:
            name = rest[0]
            if name in PROBE_CONTROL_FILES:
                return top and self._dynamic_events.has_control(name)
            return name in _TRACE_ARRAY_FILES or (top and name in _TOP_LEVEL_ONLY_FILES)
        if len(rest) == 2 and rest[0] == "options":
            return rest[1] in array.option_files()
        if rest[:1] != ["events"]:
            return False
        if len(rest) == 2:
            return rest[1] in ("enable", "header_event", "header_page")
        system = self._table.systems.get(rest[1])
        if system is None:
            return False
        if len(rest) == 3:
            return rest[2] in ("enable", "filter")
        return len(rest) == 4 and rest[2] in system and rest[3] in self._event_file_names

    # --- directories ------------------------------------------------------------------------------------------

    def mkdir(self, path: str) -> None:
        """Only ``instances/NAME`` can be made: a new trace array."""
        parts = split_path(path)
        if len(parts) == 2 and parts[0] == "instances":
            if parts[1] in self._arrays.instances:
                raise FakeOSError(errno.EEXIST, path)
            self._arrays.create(parts[1], self._table.serial)
            return
        if self.exists(path):
            raise FakeOSError(errno.EEXIST, path)
        parent = "/".join(parts[:-1])
        if not self.exists(parent) or not self._is_directory(parent):
            raise FakeOSError(errno.ENOENT, path)
        raise FakeOSError(errno.EPERM, path)

    def rmdir(self, path: str) -> None:
        """Only ``instances/NAME`` can be removed, and not while one of its files is held open (EBUSY)."""
        parts = split_path(path)
        if not self.exists(path):
            raise FakeOSError(errno.ENOENT, path)
        if not self._is_directory(path):
            raise FakeOSError(errno.ENOTDIR, path)
        if len(parts) != 2 or parts[0] != "instances":
            raise FakeOSError(errno.EPERM, path)
        if self._arrays.instances[parts[1]].open_references:
            raise FakeOSError(errno.EBUSY, path)
        self._event_files.hists.clear(self._arrays.instances[parts[1]], self._table.events)
        self._arrays.remove(parts[1])

    # --- files ------------------------------------------------------------------------------------------------

    def read(self, path: str) -> str:
        array, rest = self.resolve(path)
        if self._directory_entries(array, rest) is not None:
            raise FakeOSError(errno.EISDIR, path)
        if not self._is_file(array, rest):
            raise FakeOSError(errno.ENOENT, path)
        if rest[0] == "events":
            return self._event_files.read(array, rest)
        if rest[0] == "options":
            return array.read_option(rest[1])
        name = rest[0]
        if name in _WRITE_ONLY_FILES:
            raise FakeOSError(errno.EINVAL, path)
        if name in PROBE_CONTROL_FILES:
            return self._dynamic_events.listing(name)
        shared = self._shared_readers.get(name)
        return shared(array) if shared is not None else array.read_file(name)

    def write(self, path: str, data: str, append: bool) -> int:
        """One write(2); every failure is reported on ``path``."""
        array, rest = self.resolve(path)
        if self._directory_entries(array, rest) is not None:
            raise FakeOSError(errno.EISDIR, path)
        if not self._is_file(array, rest):
            raise FakeOSError(errno.ENOENT, path)
        size = len(data.encode("utf-8", "surrogateescape"))
        try:
            return self._write_file(path, array, rest, data, append, size)
        except FakeOSError as exc:
            if exc.filename != path:
                raise FakeOSError(exc.errno or errno.EINVAL, path) from None
            raise
        except KstrtoxError as exc:
            raise FakeOSError(errno_code(exc.errno), path) from None

    def _write_file(self, path: str, array: TraceArray, rest: list[str], data: str, append: bool, size: int) -> int:
        if rest[0] == "events":
            return self._event_files.write(path, array, rest, data, size)
        if rest[0] == "options":
            array.set_option(path, rest[1], parse_switch(data))
            return size
        if rest[0] in PROBE_CONTROL_FILES:
            self._dynamic_events.write(path, rest[0], data, append)
            return size
        if rest[0] == "set_event":
            return self._event_files.write_set_event(path, array, data, append)
        return array.write_file(path, rest[0], data, append, size)
