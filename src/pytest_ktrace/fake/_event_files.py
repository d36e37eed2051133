"""The ``events/`` directory and ``set_event`` of a trace array: enabling events, their filters and triggers.

:class:`EventFiles` reads and writes the per-event state an array keeps (:class:`~._trace_arrays.EventFile`):
``enable`` at the event, system and top level, ``filter`` (compiled by :mod:`._filters`; a system's filter is
applied to each of its events), the ``stacktrace`` trigger, hist triggers and the ``hist`` file (:mod:`._hist`,
where the kernel has them), and the ``set_event``/``available_events`` lists. An event a hist trigger holds is in
soft mode: enabled for the lists and summaries, ``enable`` shows ``0*``/``1*``, its hits reach the trigger only.
"""

from __future__ import annotations

import errno
from typing import Callable, Optional

from ._events import EventDefinition, EventTable
from ._filters import FILTER_WRITE_LIMIT, CompiledFilter, FilterError, normalize_filter_text
from ._hist import HistTables
from ._kernel import FakeKernel
from ._kernel_lib import KERNEL_SPACE, from_kernel_bytes, isspace, to_kernel_bytes
from ._syscall_errors import FakeOSError, errno_code
from ._trace_arrays import EventFile, TraceArray, parse_switch

__all__ = ["EventFiles"]

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


def _trigger_help(readme: str) -> str:
    """What a ``trigger`` file shows: the trigger commands the README's event "trigger" section lists."""
    start = readme.find("      trigger\t\t- If set")
    if start < 0:
        return _TRIGGER_HELP  # no README: the commands of a kernel without snapshot and hist triggers
    end = readme.find("example:", start)
    section = {line.strip() for line in readme[start : end if end >= 0 else len(readme)].splitlines()}
    names = [name for name, needs in _TRIGGER_COMMANDS if needs is None or needs in section]
    return "# Available triggers:\n# " + " ".join(names) + "\n"


def _enable_summary(array: TraceArray, events: list[EventDefinition], hists: HistTables) -> str:
    """A system's or the top ``enable`` file: 1 or 0 when all events agree, X when they differ, ? without any (an
    event in soft mode counts as enabled: EVENT_FILE_FL_ENABLED is set)."""
    states = {array.is_enabled(e.key) or hists.soft_enabled(array, e.key) for e in events}
    if not states:
        return "?\n"
    return "X\n" if len(states) == 2 else ("1\n" if True in states else "0\n")


class EventFiles:
    """The event files of every trace array over one :class:`EventTable`."""

    def __init__(self, kernel: FakeKernel, table: EventTable) -> None:
        self._kernel = kernel
        self._table = table
        self._trigger_help = _trigger_help(kernel.snapshot.readme)
        self.hist_supported = "hist" in kernel.snapshot.features
        self.hists = HistTables(kernel)

    # --- lists ------------------------------------------------------------------------------------------------

    def available_events(self, array: TraceArray) -> str:
        return "".join(f"{e.system}:{e.name}\n" for e in self._table.ordered_for(array.created_serial))

    def set_event_listing(self, array: TraceArray) -> str:
        events = self._table.ordered_for(array.created_serial)
        hists = self.hists
        return "".join(
            f"{e.system}:{e.name}\n" for e in events if array.is_enabled(e.key) or hists.soft_enabled(array, e.key)
        )

    # --- reads ------------------------------------------------------------------------------------------------

    def read(self, array: TraceArray, rest: list[str]) -> str:
        """The file ``events/...`` named by ``rest`` (``["events", system, event, file]`` or shorter)."""
        if len(rest) == 2:
            if rest[1] == "enable":
                return _enable_summary(array, list(self._table.events.values()), self.hists)
            return ""  # header_event / header_page: ring-buffer internals, not modelled
        system = self._table.systems[rest[1]]
        if len(rest) == 3:
            if rest[2] == "enable":
                return _enable_summary(array, list(system.values()), self.hists)
            return _SYSTEM_FILTER_HELP
        definition = system[rest[2]]
        event_file = array.files.get(definition.key, EventFile())
        soft = "*" if self.hists.soft_enabled(array, definition.key) else ""
        readers: dict[str, Callable[[], str]] = {
            "enable": lambda: ("1" if event_file.enabled else "0") + soft + "\n",
            "filter": lambda: event_file.filter_text if event_file.filter_text is not None else "none\n",
            "format": lambda: definition.format_text,
            "id": lambda: f"{definition.event_id}\n",
            "trigger": lambda: self._trigger_text(array, definition, event_file),
            "hist": lambda: self.hists.read(array, definition),
        }
        return readers[rest[3]]()

    def _trigger_text(self, array: TraceArray, definition: EventDefinition, event_file: EventFile) -> str:
        """The triggers in the kernel's list order: a stacktrace trigger is added at its head, hist ones at its
        tail."""
        lines = self.hists.trigger_lines(array, definition.key)
        if event_file.stacktrace:
            condition = f" if {event_file.stack_filter_text}" if event_file.stack_filter_text else ""
            lines.insert(0, f"stacktrace:unlimited{condition}\n")
        return "".join(lines) if lines else self._trigger_help

    # --- enabling ---------------------------------------------------------------------------------------------

    def write_set_event(self, path: str, array: TraceArray, data: str, append: bool) -> int:
        """ftrace_event_write(): one word (trace_get_user) per write; returns the bytes it consumed.  Opening with
        O_TRUNC disables every event first."""
        if not append:
            self._set_events(array, None, None, None, False, path, must_match=False)
        raw = to_kernel_bytes(data)
        index = 0
        while index < len(raw) and isspace(raw[index]):
            index += 1
        start = index
        while index < len(raw) and not isspace(raw[index]):
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
        array: TraceArray,
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
        for definition in self._table.events.values():
            if match is not None and match not in (definition.name, definition.system):
                continue
            if system is not None and system != definition.system:
                continue
            if event is not None and event != definition.name:
                continue
            matched = True
            _enable(array, definition, enable)
        if must_match and not matched:
            raise FakeOSError(errno.EINVAL, path)

    # --- writes -----------------------------------------------------------------------------------------------

    def write(self, path: str, array: TraceArray, rest: list[str], data: str, size: int) -> int:
        """One write(2) of ``data`` (``size`` bytes) to ``events/...``; returns the bytes taken."""
        if len(rest) == 2:
            if rest[1] != "enable":
                raise FakeOSError(errno.EINVAL, path)
            self._set_events(array, None, None, None, parse_switch(data), path, must_match=True)
            return size
        if len(rest) == 3:
            if rest[2] == "enable":
                self._set_events(array, None, rest[1], None, parse_switch(data), path, must_match=True)
            else:
                self._write_system_filter(path, array, rest[1], data, size)
            return size
        definition = self._table.systems[rest[1]][rest[2]]
        if rest[3] == "enable":
            _enable(array, definition, parse_switch(data))
            return size
        if rest[3] == "filter":
            self._write_event_filter(path, array, definition, data, size)
            return size
        if rest[3] == "trigger":
            self._write_trigger(path, array, definition, data)
            return size
        raise FakeOSError(errno.EINVAL, path)  # format, id

    def _write_trigger(self, path: str, array: TraceArray, definition: EventDefinition, data: str) -> None:
        """The ``stacktrace`` trigger (event_trigger_parse): ``stacktrace[:N] [if FILTER]`` sets it (EEXIST when
        set), ``!stacktrace`` clears it (ENOENT when not set); hist triggers where the kernel has them
        (:mod:`._hist`). Other triggers are not modelled (EINVAL)."""
        text = data.strip()
        if not text:
            return
        command, _, rest = text.partition(" ")
        remove = command.startswith("!")
        name = command.lstrip("!").split(":", 1)[0]
        if name == "hist" and self.hist_supported:
            self.hists.write(path, array, definition, text)
            return
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
                compiled = self._kernel.compile_filter(rest[3:], definition.filter_fields())
            except FilterError as exc:
                self._log_filter_error(array, exc.error_log_entry(rest[3:]))
                raise FakeOSError(errno_code(exc.errno), path) from None
        event_file.stacktrace, event_file.stack_filter = True, compiled
        event_file.stack_filter_text = compiled.filter_file_text().strip() if compiled is not None else ""

    def _log_filter_error(self, array: TraceArray, text: str) -> None:
        array.error_log.append(self._kernel.timestamp_prefix() + text)

    def _write_event_filter(
        self, path: str, array: TraceArray, definition: EventDefinition, data: str, size: int
    ) -> None:
        if size >= FILTER_WRITE_LIMIT:
            raise FakeOSError(errno.EINVAL, path)
        event_file = array.file(definition.key)
        try:
            compiled = self._kernel.compile_filter(data, definition.filter_fields())
        except FilterError as exc:
            # The failed filter replaces the old one, disabled, and the file shows the error (apply_event_filter).
            event_file.active_filter = None
            event_file.filter_text = exc.filter_file_text(data)
            self._log_filter_error(array, exc.error_log_entry(data))
            raise FakeOSError(errno_code(exc.errno), path) from None
        event_file.active_filter = compiled
        event_file.filter_text = None if compiled is None else compiled.filter_file_text()

    def _write_system_filter(self, path: str, array: TraceArray, system: str, data: str, size: int) -> None:
        """apply_subsystem_event_filter(): each event of the system takes the filter or, if it cannot, gets the
        "Couldn't find or set field" error (logged once per event).  The write itself succeeds either way
        (process_system_preds() only fails for a system without events) and the system's file keeps showing
        its help text."""
        if size >= FILTER_WRITE_LIMIT:
            raise FakeOSError(errno.EINVAL, path)
        events = list(self._table.systems[system].values())
        if normalize_filter_text(data).strip(KERNEL_SPACE) == "0":
            for definition in events:
                event_file = array.file(definition.key)
                event_file.active_filter, event_file.filter_text = None, None
            return
        subsystem_error = FilterError(_BAD_SUBSYSTEM_FILTER, 0, "EINVAL")
        for definition in events:
            event_file = array.file(definition.key)
            try:
                compiled = self._kernel.compile_filter(data, definition.filter_fields())
            except FilterError:
                event_file.active_filter = None
                event_file.filter_text = subsystem_error.filter_file_text(data)
                self._log_filter_error(array, subsystem_error.error_log_entry(data))
                continue
            event_file.active_filter = compiled
            event_file.filter_text = None if compiled is None else compiled.filter_file_text()


def _enable(array: TraceArray, definition: EventDefinition, enable: bool) -> None:
    event_file = array.file(definition.key)
    event_file.enabled = enable
    event_file.was_enabled = event_file.was_enabled or enable
