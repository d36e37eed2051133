"""``ktrace.inject()``: synthetic events of a probe on the fake backend, typed and checked against the probe's
format like kernel data, so a test can drive its assertions without a kernel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from .._checks import check_encodable, check_int, type_name
from .._errors import KtraceError, hide_for_ktrace_errors
from .._events import task_key
from .._formats import EventFormat, FieldFormat

if TYPE_CHECKING:
    from ._backend import FakeBackend

__all__ = ["inject_events"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

Value = Union[int, str]


def inject_events(
    backend: FakeBackend,
    event_dir: str,
    fmt: EventFormat,
    *,
    name: str,
    count: int,
    timestamp: Optional[float],
    stack: Sequence[str],
    values: Mapping[str, Value],
) -> int:
    """Emit ``count`` events of ``event_dir`` (``group/event``) named ``name`` in messages; returns how many were
    recorded (the instance's filters still apply)."""
    check_int("inject count", count, 0)
    if timestamp is not None and (
        isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or not 0 <= timestamp < 2**32
    ):
        raise KtraceError(f"inject timestamp= must be seconds of the trace clock (>= 0), got {timestamp!r}")
    if (
        isinstance(stack, str)
        or not isinstance(stack, Sequence)
        or not all(isinstance(frame, str) and frame.strip() and "\n" not in frame for frame in stack)
    ):
        raise KtraceError(f"inject stack= must be a list of function names (innermost first), got {stack!r}")
    known = {f.name: f for f in fmt.fields if not f.name.startswith("__probe_")}
    task, fields = _split(name, known, values)
    pid, comm, cpu = task.get("pid"), task.get("comm", "ktrace-inject"), task.get("cpu", 0)
    if pid is not None:
        check_int("inject task_pid", pid, 0, 2**31 - 1)
    if not isinstance(comm, str):
        raise KtraceError(f"inject task_comm must be a str, got {type_name(comm)} {comm!r}")
    check_encodable("inject task_comm", comm)
    check_int("inject task_cpu", cpu, 0)
    for field_name, value in fields.items():
        _check_value(f"{name}.{field_name}", known[field_name], value)
    extra: dict[str, Any] = {"stack": tuple(stack)} if stack else {}
    if timestamp is not None:
        extra["timestamp"] = float(timestamp)
    task_pid = None if pid is None else int(pid)
    recorded = 0
    for _ in range(count):
        recorded += int(backend.inject(event_dir, fields, pid=task_pid, comm=comm, cpu=int(cpu), **extra) > 0)
    return recorded


def _split(
    name: str, known: Mapping[str, FieldFormat], values: Mapping[str, Value]
) -> tuple[dict[str, Value], dict[str, Value]]:
    """``values`` by the naming rule of :data:`~pytest_ktrace._events.TASK_KEYS`: (the task, the fields)."""
    task: dict[str, Value] = {}
    fields: dict[str, Value] = {}
    for key, value in values.items():
        attribute = task_key(key, known)
        if attribute:
            task[attribute] = value
        elif key in known:
            fields[key] = value
        else:
            names = ", ".join(known) or "none"
            raise KtraceError(
                f"{name} has no field {key!r} (its fields: {names}; the task: task_pid, task_comm, task_cpu)"
            )
    return task, fields


def _check_value(what: str, wanted: FieldFormat, value: object) -> None:
    if wanted.is_string:
        good = isinstance(value, str)
    elif wanted.is_array and isinstance(value, (list, tuple)):
        good = all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    else:
        good = isinstance(value, int) and not isinstance(value, bool)
    if not good:
        kind = "a string" if wanted.is_string else "an integer"
        raise KtraceError(f"{what} is {kind} ({wanted.ctype}), got {type_name(value)} {value!r}")
    if isinstance(value, str):
        check_encodable(what, value)
