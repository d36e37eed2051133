"""``ktrace.hist()``: counts made in the kernel by a hist trigger, which sees every hit of its event whatever the
rate (no ring buffer between the event and the count).

Three modules: :mod:`._hist_spec` (the trigger as the test asked for it, rendered as the kernel's line),
:mod:`._hist_table` (the ``hist`` file read and typed: :class:`HistResult`), and this one: :class:`HistTriggers`
does the work for the session (arming, reading, teardown), and :func:`kernel_count_key` says whether
``count_by()`` can count a field in the kernel.

What the kernel does that shapes this (checked on the Debian 6.1 guests, v6.1 and v6.12 sources):

* a hist trigger soft-enables its event: it counts whether or not the event is enabled, whatever ``tracing_on``
  says (trace_event_buffer_lock_reserve() falls back to a temporary buffer for triggers), and before the event's own
  filter is tested: the probe's filter is therefore folded into the trigger's (``if ...``). ``set_event_pid``
  applies;
* ``!hist:...`` removes only a trigger that matches (keys, values, sort and filter); one that matches nothing is
  no error, so the removal is the very line that was written. An event with a trigger cannot be removed
  (``-:group/event`` is EBUSY): the removal joins teardown's first stage;
* a table holds ``size`` entries (a power of two in 128..131072); hits of a new key once it is full are
  ``Dropped``: never lost silently here, :attr:`HistResult.dropped` says how many;
* keys and sums are printed as unsigned 64-bit numbers: a signed field's ``-2`` shows as 18446744073709551614 and
  is read back as ``-2`` from the format's ``signed:1``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Union

import pytest

from ._aggregates import Counted
from ._errors import HistUnavailable, KtraceError, ProbeRejected, hide_for_ktrace_errors
from ._events import TASK_KEYS
from ._formats import EventFormat
from ._hist_spec import COUNT_SIZE, MAX_SIZE, HistSpec, hist_spec
from ._hist_table import HistResult, decode, parse_hist
from .backends._base import Backend, Op, OpResult, Read, Write

__all__ = [
    "HistTriggers",
    "kernel_count_key",
]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

# ------------------------------------------------------------------------------------------------------ count_by
_CONVERSION = re.compile(r"%%|%[-+ #0]*\d*(?:\.\d+)?(?:hh|h|ll|l|L|z|j|t)?[a-zA-Z]")
_INT_CONVERSION = re.compile(r"%[-+ #0]*\d*(?:hh|h|ll|l|L|z|j|t)?[diu]")


def _printed_as_number(fmt: EventFormat, name: str) -> bool:
    """Whether the trace prints ``name`` as the number it holds (so its parsed event value is that number): a
    probe's integer argument unless it is printed as a symbol (``%pS``); a tracepoint's field printed by a decimal
    conversion of ``REC->name`` itself (not through __print_symbolic() and the like)."""
    text = fmt.print_fmt
    if fmt.is_probe:
        return not re.search(rf"\b{re.escape(name)}=%p", text)
    quoted, _, arguments = text.partition('",')
    match = re.search(rf"\b{re.escape(name)}=%", quoted)
    if match is None:
        return False
    position = len([c for c in _CONVERSION.findall(quoted[: match.end() - 1]) if c != "%%"])
    conversion = _CONVERSION.match(quoted, match.end() - 1)
    listed = _top_level_split(arguments)
    if conversion is None or position >= len(listed):
        return False
    argument = re.sub(r"^\([^()]*\)\s*", "", listed[position].strip())  # a cast
    return argument == f"REC->{name}" and _INT_CONVERSION.fullmatch(conversion.group()) is not None


def _top_level_split(text: str) -> list[str]:
    """A print fmt's arguments, split at the commas between them (not those inside a call)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def kernel_count_key(fmt: EventFormat, name: str) -> tuple[str, str]:
    """The hist key that counts ``count_by(probe, name)`` in the kernel, giving the values the probe's events hold
    (:data:`~pytest_ktrace._events.TASK_KEYS`), or ``""`` and why the events must be counted instead."""
    own = fmt.field(name) if not name.startswith("common_") else None
    if name == "task_pid" or (name == "pid" and own is None):
        return "common_pid", ""
    if name == "task_cpu" or (name == "cpu" and own is None):
        return "common_cpu", ""
    if name in TASK_KEYS or (name == "comm" and own is None):
        return "", (
            "the kernel names a task once, by its comm at the first hit (.execname), so hits after an exec "
            "would count under the old name"
        )
    if own is None:
        return "", ""  # no such field: count_by says so
    if own.is_string and not own.is_pointer_string:
        if fmt.is_probe or _printed_as_string(fmt, name):
            return name, ""
        return "", f"the trace does not print {name} as the string it holds"
    if own.is_integer and not own.is_array and _printed_as_number(fmt, name):
        return name, ""
    return "", f"the trace prints {name} ({own.ctype}) otherwise than as the number the kernel would count"


def _printed_as_string(fmt: EventFormat, name: str) -> bool:
    quoted = fmt.print_fmt.partition('",')[0]
    return re.search(rf"\b{re.escape(name)}=%s", quoted) is not None


# ----------------------------------------------------------------------------------------------- for the session
@dataclass(eq=False)
class _Trigger:
    result: HistResult
    view: Any  # the ProbeView it counts
    event_dir: str = ""  # group/event, fixed when armed
    armed: bool = False
    removal: Optional[Write] = None  # what teardown writes, once joined
    listeners: list[Callable[[HistResult], None]] = field(default_factory=list)


class HistTriggers:
    """The hist triggers of one test: arming ops folded into the session's arming batch, their removal in the
    teardown ledger's first stage (written before the batch runs), reads with each ``run()``.

    ``instance`` gives the instance's tracefs path; ``formats`` an event's format (``"group:event"``), once known;
    ``stale`` whether something may have changed on the target since the last read; ``arm`` arms what is pending
    (the session's ``arm()``); ``closed`` whether the test was torn down (nothing is read after that)."""

    def __init__(
        self,
        backend: Backend,
        *,
        instance: Callable[[], str],
        ledger: Any,
        formats: Callable[[str], Optional[EventFormat]],
        stale: Callable[[], bool],
        arm: Callable[[], None],
        closed: Callable[[], bool],
        lost_policy: str = "fail",
    ) -> None:
        self.backend = backend
        self._instance = instance
        self._ledger = ledger
        self._formats = formats
        self._stale = stale
        self._arm = arm
        self._closed = closed
        self._lost_policy = lost_policy
        self._triggers: list[_Trigger] = []
        self._fresh = False  # the last read came with a run(): publish() need not read again

    # --- as an aggregate of the session: read at its sync points (see publish) ---------------------------------
    keys: tuple[tuple[str, str], ...] = ()  # it reads no events

    def feed(self, key: tuple[str, str], event: Any) -> None:
        """Nothing: the kernel counted."""

    def reset(self) -> None:
        """Nothing: the kernel's tables are not recomputed from the trace."""

    # --- defining ---------------------------------------------------------------------------------------------
    def check_target(self, what: str) -> None:
        """:class:`HistUnavailable` unless the target has hist triggers."""
        info = self.backend.describe()
        if not info.has("hist"):
            raise HistUnavailable(
                f"{what}: {info.name} has no hist triggers: its tracefs README does not offer the hist trigger "
                "and its events have no hist file (a kernel built without CONFIG_HIST_TRIGGERS=y); "
                "ktrace.count_by() counts the streamed events there instead",
                target=info.name,
            )

    def hist(
        self,
        view: Any,
        keys: Union[str, Sequence[str]],
        values: Union[str, Sequence[str]] = (),
        *,
        filter: Optional[str] = None,
        sort: Union[str, Sequence[str], None] = None,
        size: Optional[int] = None,
        scope: str = "all",
    ) -> HistResult:
        """``ktrace.hist()``: the checks, then :meth:`add`."""
        what = f"hist({view.name})"
        self.check_target(what)
        if view._criteria:
            raise KtraceError(
                f"{what}: a where() view's criteria are Python matchers the kernel cannot evaluate: give the probe "
                "itself and the condition as filter= (the kernel's filter syntax)"
            )
        if scope == "run":
            raise KtraceError(
                f"{what}: with scope='run' nothing is traced before a command's pid is in set_event_pid, but a hist "
                "trigger counts from the moment it is set, every task's hits included; use scope='all' with "
                "filter= (common_pid, comm) for the tasks to count"
            )
        spec = hist_spec(keys, values, filter=filter, sort=sort, size=size, probe_filter=view.spec.filter)
        return self.add(view, spec, any_size=size is None)

    def count_by(self, view: Any, name: str, *, ran: bool, scope: str) -> Counted:
        """``count_by(probe, name)``: a :class:`Counted` the kernel fills (``source == "kernel"``) when it can;
        else an empty one for the session's streamed count (``source == "stream"``, ``why`` says why)."""
        info = self.backend.describe()
        why = ""
        if not info.has("hist"):
            why = f"{info.name} has no hist triggers (CONFIG_HIST_TRIGGERS)"
        elif view._criteria:
            why = "a where() view's criteria are Python matchers the kernel cannot evaluate"
        elif scope == "run":
            why = "with scope='run' the kernel would count every task's hits before the first command"
        elif ran:
            why = "registered after a command ran: the kernel counts from when its trigger is set, the trace has more"
        if why:
            return _streamed(why)
        group, event = view.spec.group, view.spec.event
        if self._formats(f"{group}:{event}") is None:
            self._arm()  # the field's type decides (and count_by names a field the probe has)
        fmt = self._formats(f"{group}:{event}")
        key, why = kernel_count_key(fmt, name) if fmt is not None else ("", "")
        if not key:
            return _streamed(why)
        result = self.add(view, hist_spec(key, size=COUNT_SIZE, probe_filter=view.spec.filter), any_size=True)
        counted = Counted()
        counted.source = "kernel"
        label = f"count_by({view.name}, {name!r})"

        def follow(result: HistResult) -> None:
            data = result._data
            counted.clear()
            counted.update({entry_key: entry.hitcount for entry_key, entry in data.entries.items()})
            if data.dropped > counted.dropped:
                warnings.warn(
                    pytest.PytestWarning(
                        f"{label}: the kernel's table ({result.spec.size} values) was full, so {data.dropped} "
                        f"events of values it had no room for are not counted (counter.dropped); "
                        f"ktrace.hist({view.name}, keys=[{key!r}], size=...) can hold up to {MAX_SIZE}"
                    ),
                    stacklevel=2,
                )
            counted.dropped = data.dropped

        self.listen(result, follow)
        self._arm()  # the trigger is set now: it counts what the stream would have seen from here
        return counted

    def add(self, view: Any, spec: HistSpec, *, any_size: bool = False) -> HistResult:
        """The result of ``spec`` on ``view``'s probe. The kernel keeps one trigger per keys, values, sort and filter
        whatever their sizes (another is EEXIST): asked again, it is the same result (of the size first asked, when
        ``any_size``)."""
        for trigger in self._triggers:
            if trigger.view.spec is not view.spec or replace(trigger.result.spec, size=spec.size) != spec:
                continue
            if trigger.result.spec.size == spec.size or any_size:
                return trigger.result
            raise KtraceError(
                f"hist({view.name}): the kernel keeps one table per keys, values, sort and filter, and this one was "
                f"asked with size={trigger.result.spec.size} already (count_by() asks for {COUNT_SIZE})"
            )
        result = HistResult(spec, view.name, self, self._lost_policy)
        self._triggers.append(_Trigger(result, view))
        return result

    def listen(self, result: HistResult, listener: Callable[[HistResult], None]) -> None:
        """``listener`` is called after each read of ``result`` (count_by's counter follows it)."""
        for trigger in self._triggers:
            if trigger.result is result:
                trigger.listeners.append(listener)

    @property
    def pending(self) -> bool:
        return any(not trigger.armed for trigger in self._triggers)

    # --- arming -----------------------------------------------------------------------------------------------
    def _trigger_file(self, trigger: _Trigger) -> str:
        return f"{self._instance()}/events/{trigger.event_dir}/trigger"

    def arm_ops(self) -> list[Op]:
        """The writes that set the pending triggers, for the end of an arming batch (after the probes exist).
        Their removal joins teardown first: a batch that dies half way is still undone."""
        ops: list[Op] = []
        for trigger in self._triggers:
            if trigger.armed:
                continue
            trigger.event_dir = trigger.view.spec.event_dir
            path = self._trigger_file(trigger)
            removal = Write(path, trigger.result.spec.removal)
            if trigger.removal != removal:
                if trigger.removal is not None:
                    self._ledger.forget("disable", trigger.removal)
                self._ledger.join("disable", [removal])
                trigger.removal = removal
            ops.append(Write(path, trigger.result.spec.command))
        return ops

    def read_ops(self) -> list[Op]:
        """One read of the ``hist`` file of each event with an armed trigger."""
        events = dict.fromkeys(trigger.event_dir for trigger in self._triggers if trigger.armed)
        return [Read(f"{self._instance()}/events/{event_dir}/hist") for event_dir in events]

    def take(self, results: Sequence[OpResult]) -> None:
        """What a batch (an arming batch, a run's reads) says about the triggers: set or refused, and the tables."""
        read = False
        for result in results:
            op = result.op
            if isinstance(op, Write) and op.path.endswith("/trigger"):
                for trigger in self._triggers:
                    if not trigger.armed and op.path == self._trigger_file(trigger):
                        if op.data != trigger.result.spec.command:
                            continue
                        if not result.ok:
                            self._refused(trigger, result)
                        trigger.armed = True
            elif isinstance(op, Read) and op.path.endswith("/hist") and result.ok:
                self._publish(op.path, result.data)
                read = True
        if read:
            self._fresh = True

    def _refused(self, trigger: _Trigger, result: OpResult) -> None:
        __tracebackhide__ = True
        self._triggers.remove(trigger)
        if trigger.removal is not None:
            self._ledger.forget("disable", trigger.removal)  # the kernel refuses it too: nothing to remove
        command = trigger.result.spec.command
        log = _error_log_entry(self.backend, f"{self._instance()}/error_log", command)
        said = log.splitlines()[0].split(" error: ", 1)[-1] if log else f"{result.errno_name} {result.error}"
        hint = ""
        if not log and trigger.result.spec.filter:
            hint = " (the kernel logs nothing for a trigger's filter: check the filter's fields and syntax)"
        raise ProbeRejected(
            f"the kernel rejected hist({trigger.result.probe}): {said}{hint}",
            command=command,
            path=result.op.path,
            errno_name=result.errno_name,
            kernel_log=log,
            where=getattr(trigger.view.spec, "where", ""),
        )

    # --- reading ----------------------------------------------------------------------------------------------
    def _publish(self, path: str, text: str) -> None:
        tables = parse_hist(text)
        for trigger in self._triggers:
            if not trigger.armed or not path.endswith(f"/events/{trigger.event_dir}/hist"):
                continue
            spec = trigger.result.spec
            table = next((table for table in tables if spec.matches(table.info)), None)
            if table is None:
                raise KtraceError(
                    f"hist({trigger.result.probe}): the event's hist file has no table of {spec.command!r} "
                    "(was the trigger removed behind the test's back?)"
                )
            group, _, event = trigger.event_dir.partition("/")
            trigger.result._update(decode(spec, table, self._formats(f"{group}:{event}")))
            for listener in trigger.listeners:
                listener(trigger.result)

    def refresh(self, *, arm: bool = True) -> None:
        """Read every table now (one batch), the pending triggers armed first unless ``arm`` is False."""
        if self._closed():
            return
        if arm:
            self._arm()
        ops = self.read_ops()
        if not ops:
            return
        results = self.backend.apply(ops)
        for result in results:
            if not result.ok:
                raise KtraceError(f"reading {result.op.path} failed: {result.errno_name} {result.error}")
        self.take(results)

    def sync(self, result: HistResult, *, force: bool = False) -> None:
        """Before ``result`` is looked at: read when it never was, or when the target may have changed."""
        if self._closed():
            return
        if force or not result._read or self._stale() or self.pending:
            self.refresh()

    def publish(self) -> None:
        """A sync point of the session's aggregates: the tables are read unless a ``run()`` just brought them."""
        if self._fresh:
            self._fresh = False
            return
        if any(trigger.listeners for trigger in self._triggers):
            self.refresh(arm=False)  # a sync point may hold the stream's lock: arming waits for the next arm()
        self._fresh = False


def _streamed(why: str) -> Counted:
    counted = Counted()
    counted.why = why
    return counted


def _error_log_entry(backend: Backend, path: str, command: str) -> str:
    """The instance's error_log entry for ``command``: the last whose ``Command:`` line is it, with its caret."""
    lines = backend.apply([Read(path, missing_ok=True)])[0].data.splitlines()
    wanted = "  Command: " + command
    for index in range(len(lines) - 1, 0, -1):
        if lines[index] == wanted and index + 1 < len(lines):
            return "\n".join(lines[index - 1 : index + 2])
    return ""
