"""pytest-ktrace: kprobes, uprobes and tracepoints as pytest fixtures, with mock-style assertions."""

from __future__ import annotations

from .assertions import ProbeView
from .backends.base import Backend, RunResult, TargetInfo
from .errors import (
    CommandTimeout,
    ConnectionLost,
    DiskFull,
    KtraceError,
    MissingBinary,
    MissingTool,
    ProbeRejected,
    TargetDiskFull,
    TargetError,
    TracefsUnavailable,
    UnknownSymbol,
    UnsupportedFetchArg,
)
from .events import Event
from .matchers import ANY
from .session import TraceSession
from .targets import TargetSpec

__all__ = [
    "ANY",
    "Backend",
    "CommandTimeout",
    "ConnectionLost",
    "DiskFull",
    "Event",
    "KtraceError",
    "MissingBinary",
    "MissingTool",
    "ProbeRejected",
    "ProbeView",
    "RunResult",
    "TargetDiskFull",
    "TargetError",
    "TargetInfo",
    "TargetSpec",
    "TraceSession",
    "TracefsUnavailable",
    "UnknownSymbol",
    "UnsupportedFetchArg",
]

__version__ = "0.1.0"
