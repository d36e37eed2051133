"""The dynamic events of a fake tracefs: kprobe and uprobe events written to the probe control files.

:class:`DynamicEvents` is the kernel's ``dyn_event_list``: it runs the commands written to ``kprobe_events``,
``uprobe_events`` and ``dynamic_events`` (parsed by :mod:`._grammar`), applies the checks that depend on what
exists (an event name in use, a probe of another type or with other arguments, the same probe twice, removal of
a busy event) and registration (the kprobe blacklist and instruction boundaries), and lists the probes back.
"""

from __future__ import annotations

import errno
import os
from dataclasses import replace
from typing import Literal, Optional

from ._events import EventDefinition, EventTable
from ._grammar import (
    LineTooLongError,
    ProbeCommand,
    ProbeSyntaxError,
    RemovalCommand,
    UnsupportedCommand,
    parse_command,
    split_commands,
)
from ._kernel import FakeKernel
from ._kernel_lib import KERNEL_SPACE, argv_split, from_kernel_bytes, to_kernel_bytes
from ._syscall_errors import FakeOSError, FakeUnsupportedError, errno_code
from ._trace_arrays import TraceArrays

__all__ = ["PROBE_CONTROL_FILES", "DynamicEvents"]

PROBE_CONTROL_FILES = ("kprobe_events", "uprobe_events", "dynamic_events")
_FEATURE_OF_CONTROL = {"kprobe_events": "kprobes", "uprobe_events": "uprobes", "dynamic_events": "dynamic_events"}


def _kinds_of(control: str) -> tuple[str, ...]:
    """The probe kinds a control file lists and releases: its own, or both for ``dynamic_events``."""
    return {"kprobe_events": ("kprobe",), "uprobe_events": ("uprobe",)}.get(control, ("kprobe", "uprobe"))


def _same_file(first: str, second: str) -> bool:
    """d_real_inode() equality: the same file, however it was named."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return os.path.normpath(first) == os.path.normpath(second)


def _argument_type(type_text: str) -> str:
    """The fetch type an argument is stored as (a bitfield compares as its container type)."""
    base, bracket, count = type_text.partition("[")
    if base.startswith("b") and "/" in base:
        base = f"u{int(base.rsplit('/', 1)[1], 0)}"
    return base + bracket + count


def _first_different_argument(new: ProbeCommand, old: ProbeCommand) -> int:
    """trace_probe_compare_arg_type(): 1-based index of the first different argument, 0 if all agree."""
    if len(new.args) != len(old.args):
        return min(len(new.args), len(old.args)) + 1
    for index, (a, b) in enumerate(zip(new.args, old.args)):
        if a.name != b.name or _argument_type(a.type) != _argument_type(b.type):
            return index + 1
    return 0


def _same_probe(new: ProbeCommand, old: ProbeCommand) -> bool:
    """has_same_kprobe/has_same_uprobe: same probe point and the same argument texts."""
    if new.kind == "uprobe":
        same_point = _same_file(new.path or "", old.path or "") and new.offset == old.offset
    else:
        same_point = (new.symbol, new.address, new.offset) == (old.symbol, old.address, old.offset)
    return same_point and all(a.text == b.text for a, b in zip(new.args, old.args))


class DynamicEvents:
    """The probe events over ``table``, their state in ``arrays`` (enabled events are busy) and their errors in
    the top array's error_log."""

    def __init__(self, kernel: FakeKernel, table: EventTable, arrays: TraceArrays) -> None:
        self._kernel = kernel
        self._table = table
        self._arrays = arrays
        self._probe_order: list[tuple[EventDefinition, ProbeCommand]] = []  # dyn_event_list order

    def _as_registered(self, command: ProbeCommand) -> ProbeCommand:
        """register_kretprobe() gives a kretprobe that has no maxactive max(10, 2 * possible CPUs), which the
        listing shows from then on (``r10:``); one waiting for its module registers when the module comes."""
        if command.kind != "kprobe" or not command.is_return or command.maxactive:
            return command
        if command.symbol is not None and self._kernel.symbol_count(command.symbol) < 0:
            return command
        return replace(command, maxactive=max(10, 2 * self._kernel.cpus))

    def modules_changed(self) -> None:
        """trace_kprobe_module_callback(): the probes waiting for a module that came register now."""
        for index, (definition, command) in enumerate(self._probe_order):
            registered = self._as_registered(command)
            if registered is not command:
                self._probe_order[index] = (definition, registered)
                definition.probes = [registered if probe is command else probe for probe in definition.probes]

    def has_control(self, control: str) -> bool:
        """Whether the kernel has the control file (its config option is on)."""
        return _FEATURE_OF_CONTROL[control] in self._kernel.snapshot.features

    def listing(self, control: str) -> str:
        """What the control file shows: one line per probe of its kinds, oldest first."""
        kinds = _kinds_of(control)
        return "".join(command.listing() + "\n" for _, command in self._probe_order if command.kind in kinds)

    def write(self, path: str, control: str, data: str, append: bool) -> None:
        """One write(2) to a control file: its commands run one by one (those before a failing one stay done).
        Opening with O_TRUNC first releases every probe the file lists."""
        if not append:
            self._release_all(path, _kinds_of(control))
        too_long = False
        try:
            commands = split_commands(data)
        except LineTooLongError as exc:
            commands, too_long = exc.preceding, True
        for line in commands:
            self._run_command(path, control, line)
        if too_long:
            raise FakeOSError(errno.EINVAL, path)

    # --- commands ---------------------------------------------------------------------------------------------

    def _release_all(self, path: str, kinds: tuple[str, ...]) -> None:
        """dyn_events_release_all(): EBUSY (and nothing removed) if any probe of these kinds is enabled."""
        targets = [(d, c) for d, c in self._probe_order if c.kind in kinds]
        if any(self._is_enabled(definition) for definition, _ in targets):
            raise FakeOSError(errno.EBUSY, path)
        for definition, command in targets:
            self._unlink_probe(definition, command)

    def _is_enabled(self, definition: EventDefinition) -> bool:
        return any(array.is_enabled(definition.key) for array in self._arrays.all())

    def _run_command(self, path: str, control: str, line: str) -> None:
        parse_control = control
        # Without CONFIG_KPROBE_EVENTS only the uprobe parser is registered for creation.
        if (
            control == "dynamic_events"
            and "kprobes" not in self._kernel.snapshot.features
            and not line.lstrip(KERNEL_SPACE).startswith(("-", "!"))
        ):
            parse_control = "uprobe_events"
        file_exists = self._kernel.file_exists
        try:
            parsed = parse_command(
                line,
                control=parse_control,  # type: ignore[arg-type]
                dialect=self._kernel.dialect,
                symbol_exists=self._kernel.symbol_count,
                **({"file_exists": file_exists} if file_exists is not None else {}),
            )
        except UnsupportedCommand as exc:
            raise FakeUnsupportedError(path, str(exc)) from None
        except ProbeSyntaxError as exc:
            if exc.logged:
                self._arrays.top.error_log.append(exc.error_log_entry(self._kernel.clock()))
            raise FakeOSError(errno_code(exc.errno), path) from None
        if parsed is None:
            return
        if isinstance(parsed, RemovalCommand):
            self._remove_probes(path, parsed, _kinds_of(control))
            return
        self._register_probe(path, line, parsed, self._registration_error(parsed))

    def _registration_error(self, command: ProbeCommand) -> Optional[tuple[str, str]]:
        """(error code, errno name) with which register_kprobe() refuses ``command``; None if it accepts it.

        Checked against the Debian 6.1 guests (``tests/fake/test_kprobe_differential.py``):

        * ``MOD:SYMBOL`` of a loaded module without that function: ENOENT, BAD_PROBE_ADDR (a module that is not
          loaded: accepted, the kernel registers the probe when the module comes);
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
        if self._kernel.module_symbol_missing(command.symbol):
            return "BAD_PROBE_ADDR", "ENOENT"  # v6.1: MOD:SYMBOL of a loaded module is looked up here
        if self._kernel.snapshot.is_blacklisted(command.symbol):
            return "FAIL_REG_PROBE", "EINVAL"
        dialect = self._kernel.dialect
        arch = dialect.canonical_arch
        if arch == "x86_64" and not dialect.modern and 1 <= command.offset <= 4:
            return "BAD_INSN_BNDRY", "EILSEQ"
        if arch == "arm64" and (command.offset % 4 or command.offset == 4):
            return "FAIL_REG_PROBE", "EINVAL"
        return None

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
            self._kernel.dialect.message(code),
            errno_name,
            position,
            from_kernel_bytes(joined),
            subsystem,
            True,
        )
        self._arrays.top.error_log.append(error.error_log_entry(self._kernel.clock()))
        return FakeOSError(errno_code(error.errno), path)

    def _register_probe(self, path: str, line: str, command: ProbeCommand, refused: Optional[tuple[str, str]]) -> None:
        existing = self._table.events.get(f"{command.group}/{command.event}")
        if existing is not None:
            self._add_sibling(path, line, command, refused, existing)
            return
        if refused is not None:
            raise self._log_probe_error(path, command, line, refused[0], 1, refused[1])
        command = self._as_registered(command)
        event_id = self._table.next_event_id()
        serial = self._table.next_serial()
        definition = EventDefinition(command.group, command.event, event_id, serial, probes=[command])
        self._table.add(definition)
        self._probe_order.append((definition, command))

    def _add_sibling(
        self,
        path: str,
        line: str,
        command: ProbeCommand,
        refused: Optional[tuple[str, str]],
        existing: EventDefinition,
    ) -> None:
        """append_trace_kprobe/append_trace_uprobe: another probe for an existing event, which must agree with it."""
        primary = existing.primary
        if primary is None or primary.kind != command.kind:
            raise self._log_probe_error(path, command, line, "EVENT_EXIST", 0)
        if primary.is_return != command.is_return:
            raise self._log_probe_error(path, command, line, "DIFF_PROBE_TYPE", 0)
        differing = _first_different_argument(command, primary)
        if differing:
            raise self._log_probe_error(path, command, line, "DIFF_ARG_TYPE", differing + 1)
        if any(_same_probe(command, other) for other in existing.probes):
            raise self._log_probe_error(path, command, line, "SAME_PROBE", 0)
        if refused is not None:
            raise self._log_probe_error(path, command, line, refused[0], 1, refused[1])
        command = self._as_registered(command)
        existing.probes.append(command)
        self._probe_order.append((existing, command))

    def _remove_probes(self, path: str, removal: RemovalCommand, kinds: tuple[str, ...]) -> None:
        """dyn_event_release(): ENOENT unless something matched; stops at the first busy probe."""
        result = errno.ENOENT
        for definition, command in list(self._probe_order):
            if command.kind not in kinds or not self._matches(removal, definition, command):
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

    @staticmethod
    def _matches(removal: RemovalCommand, definition: EventDefinition, command: ProbeCommand) -> bool:
        """Whether ``-:[GROUP/]EVENT [ARGS]`` names this probe: its event (all of the group's for an empty
        name) and, when given, the first words of its definition."""
        if removal.event and removal.event != definition.name:
            return False
        if removal.group is not None and removal.group != definition.system:
            return False
        tokens = command.listing().split(" ")[1:]
        return list(removal.match_args) == tokens[: len(removal.match_args)] and len(removal.match_args) <= len(tokens)

    def _unlink_probe(self, definition: EventDefinition, command: ProbeCommand) -> None:
        self._probe_order = [(d, c) for d, c in self._probe_order if c is not command]
        definition.probes = [probe for probe in definition.probes if probe is not command]
        if not definition.probes:
            self._drop_event(definition)

    def _drop_event(self, definition: EventDefinition) -> None:
        """The event's last probe is gone: the event goes, with its files in every trace array."""
        self._table.remove(definition)
        for array in self._arrays.all():
            event_file = array.files.pop(definition.key, None)
            if event_file is not None and event_file.was_enabled:
                array.reset_buffers()  # event_remove() set clear_trace; the release resets the buffer
