"""pytest-ktrace: kprobes, uprobes and tracepoints as pytest fixtures, with mock-style assertions.

The names below are imported on first use (PEP 562), so that loading the pytest plugin costs a run that traces
nothing next to nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    __version__: str
    from .assertions import ProbeView
    from .backends.base import Backend, RunResult, TargetInfo
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


_LAZY = {
    "ANY": ".matchers",
    "Backend": ".backends.base",
    "Event": ".events",
    "ProbeView": ".assertions",
    "RunResult": ".backends.base",
    "TargetInfo": ".backends.base",
    "TargetSpec": ".targets",
    "TraceSession": ".session",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-ktrace")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # one version source, the package metadata, read when asked
        globals()[name] = value = _version()
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
