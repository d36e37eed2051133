"""Why the kernel refused to arm a probe, in its own words: the ``error_log`` line with its caret for a rejected
definition, the filter's own error text, close matches for an unknown symbol or tracepoint."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import NoReturn, Optional

from ._errors import KtraceError, ProbeRejected, UnknownSymbol, hide_for_ktrace_errors
from ._probes import ProbeSpec
from .backends._base import Backend, Mkdir, Op, OpResult, Read, Write

__all__ = ["explain_arm_failure"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals


def explain_arm_failure(backend: Backend, failed: OpResult, pending: Sequence[ProbeSpec]) -> NoReturn:
    """Raise the error that says why ``failed`` (the last result of an arming batch) failed."""
    op = failed.op
    spec = _spec_for_op(op, pending)
    where = spec.where if spec else ""
    what = f"{spec.kind} {spec.display}" if spec else op.path
    if isinstance(op, Write) and op.path.endswith("_events"):
        log = _error_log_entry(backend, "error_log", op.data)
        message = log.splitlines()[0].split(" error: ", 1)[-1] if log else failed.error
        cls = ProbeRejected
        if spec and ("Invalid probed address or symbol" in message or "Failed to find" in message):
            cls = UnknownSymbol
            message = _unknown_symbol_hint(backend, spec, message)
        raise cls(
            f"the kernel rejected {what}: {message}",
            command=op.data,
            path=op.path,
            errno_name=failed.errno_name,
            kernel_log=log,
            where=where,
        )
    if isinstance(op, Write) and op.path.endswith("/filter"):
        detail = backend.apply([Read(op.path, missing_ok=True)])[0].data
        raise ProbeRejected(
            f"the kernel rejected the filter of {what} ({failed.errno_name} {failed.error})",
            command=op.data,
            path=op.path,
            errno_name=failed.errno_name,
            kernel_log=detail,
            where=where,
        )
    target = backend.describe().name
    enabling = isinstance(op, Write) and op.path.endswith("/enable")
    if enabling and failed.errno_name == "ENOENT" and spec and spec.kind == "tracepoint":
        available = backend.apply([Read("available_events")])[0].data.split()
        close = difflib.get_close_matches(spec.display, available, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownSymbol(f"unknown tracepoint {spec.display}: {target} has no such event{hint}", where=where)
    if isinstance(op, Mkdir) and failed.errno_name in ("ENOENT", "EACCES", "EPERM"):
        raise KtraceError(
            f"cannot create tracing instance {op.path} on {target}: {failed.error}; this needs "
            "root (or CAP_SYS_ADMIN) and a kernel with tracefs instances"
        )
    raise ProbeRejected(
        f"arming {what} failed: {failed.errno_name} {failed.error}",
        command=op.data if isinstance(op, Write) else "",
        path=op.path,
        errno_name=failed.errno_name,
        where=where,
    )


def _spec_for_op(op: Op, pending: Sequence[ProbeSpec]) -> Optional[ProbeSpec]:
    for spec in pending:
        if isinstance(op, Write) and spec.is_dynamic and op.data == spec.render():
            return spec
        if f"/events/{spec.event_dir}/" in op.path or op.path.startswith(f"events/{spec.event_dir}/"):
            return spec
    return None


def _error_log_entry(backend: Backend, log_path: str, command: str) -> str:
    """Our entry in the kernel's error_log: the last one whose Command line is exactly our command."""
    text = backend.apply([Read(log_path, missing_ok=True)])[0].data
    lines = text.splitlines()
    wanted = "  Command: " + " ".join(command.split())
    for index in range(len(lines) - 1, 0, -1):
        if lines[index] == wanted and index + 1 < len(lines):
            return "\n".join(lines[index - 1 : index + 2])
    return ""


def _unknown_symbol_hint(backend: Backend, spec: ProbeSpec, message: str) -> str:
    if spec.kind not in ("kprobe", "kretprobe"):
        return message
    symbol = spec.location.split("+", 1)[0]
    text = backend.apply([Read("available_filter_functions", missing_ok=True)])[0].data
    names = {line.split()[0] for line in text.splitlines() if line.strip()}
    close = difflib.get_close_matches(symbol, names, n=3)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    if names and symbol not in names:
        return f"unknown symbol {symbol!r} ({message}){hint}"
    return message
