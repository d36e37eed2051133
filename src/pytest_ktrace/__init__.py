"""pytest-ktrace: kprobes, uprobes and tracepoints as pytest fixtures, with mock-style assertions.

The names below are imported on first use (PEP 562), so that loading the pytest plugin costs a run that traces
nothing next to nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str
    from ._assertions import ProbeView
    from ._errors import (
        CommandTimeout,
        ConnectionLost,
        CoordinatorUnreachable,
        DiskFull,
        GuestKernelError,
        HistUnavailable,
        KtraceError,
        LabgridError,
        MissingBinary,
        MissingTool,
        NoMatchingPlace,
        PlaceAcquiredElsewhere,
        PlaceWithoutNetworkService,
        ProbeRejected,
        ReservationTimeout,
        TargetDiskFull,
        TargetError,
        TracefsUnavailable,
        UnknownSymbol,
        UnsupportedFetchArg,
        WaitTimeout,
    )
    from ._events import Event
    from ._kernel_log import KernelLog
    from ._matchers import ANY
    from ._modules import LoadedModule, ModuleLoadError
    from ._session import TraceSession
    from ._spawned import SpawnedProcess
    from ._targets import TargetSpec
    from .backends import (
        Backend,
        FileFetching,
        Imitating,
        Injecting,
        RunResult,
        SharedFilesystem,
        Streaming,
        TargetInfo,
        TraceStream,
    )
    from .btf import (
        BadMemberAccess,
        BtfError,
        BtfFormatError,
        BtfUnavailable,
        FetchargError,
        FetchargSyntaxError,
        FetchargTooLong,
        FetchargTypeError,
        FetchargUnsupported,
        UnknownFunction,
        UnknownMember,
        UnknownParameter,
        UnknownType,
    )
    from .recording._cassette import StaleCassette

_ERRORS = (
    "CommandTimeout",
    "ConnectionLost",
    "CoordinatorUnreachable",
    "DiskFull",
    "GuestKernelError",
    "HistUnavailable",
    "KtraceError",
    "LabgridError",
    "MissingBinary",
    "MissingTool",
    "NoMatchingPlace",
    "PlaceAcquiredElsewhere",
    "PlaceWithoutNetworkService",
    "ProbeRejected",
    "ReservationTimeout",
    "TargetDiskFull",
    "TargetError",
    "TracefsUnavailable",
    "UnknownSymbol",
    "UnsupportedFetchArg",
    "WaitTimeout",
)
_BTF_ERRORS = (
    "BadMemberAccess",
    "BtfError",
    "BtfFormatError",
    "BtfUnavailable",
    "FetchargError",
    "FetchargSyntaxError",
    "FetchargTooLong",
    "FetchargTypeError",
    "FetchargUnsupported",
    "UnknownFunction",
    "UnknownMember",
    "UnknownParameter",
    "UnknownType",
)
_BACKEND_NAMES = (
    "Backend",
    "FileFetching",
    "Imitating",
    "Injecting",
    "RunResult",
    "SharedFilesystem",
    "Streaming",
    "TargetInfo",
    "TraceStream",
)

# Where each name is defined, imported on first use.
_LAZY = {
    "ANY": "._matchers",
    "Event": "._events",
    "KernelLog": "._kernel_log",
    "LoadedModule": "._modules",
    "ModuleLoadError": "._modules",
    "ProbeView": "._assertions",
    "SpawnedProcess": "._spawned",
    "StaleCassette": ".recording._cassette",
    "TargetSpec": "._targets",
    "TraceSession": "._session",
    **{name: "._errors" for name in _ERRORS},
    **{name: ".btf._errors" for name in _BTF_ERRORS},
    **{name: ".backends._base" for name in _BACKEND_NAMES},
}

__all__ = [
    "ANY",
    "Backend",
    "BadMemberAccess",
    "BtfError",
    "BtfFormatError",
    "BtfUnavailable",
    "CommandTimeout",
    "ConnectionLost",
    "CoordinatorUnreachable",
    "DiskFull",
    "Event",
    "FetchargError",
    "FetchargSyntaxError",
    "FetchargTooLong",
    "FetchargTypeError",
    "FetchargUnsupported",
    "FileFetching",
    "GuestKernelError",
    "HistUnavailable",
    "Imitating",
    "Injecting",
    "KernelLog",
    "KtraceError",
    "LabgridError",
    "LoadedModule",
    "MissingBinary",
    "MissingTool",
    "ModuleLoadError",
    "NoMatchingPlace",
    "PlaceAcquiredElsewhere",
    "PlaceWithoutNetworkService",
    "ProbeRejected",
    "ProbeView",
    "ReservationTimeout",
    "RunResult",
    "SharedFilesystem",
    "SpawnedProcess",
    "StaleCassette",
    "Streaming",
    "TargetDiskFull",
    "TargetError",
    "TargetInfo",
    "TargetSpec",
    "TraceSession",
    "TraceStream",
    "TracefsUnavailable",
    "UnknownFunction",
    "UnknownMember",
    "UnknownParameter",
    "UnknownSymbol",
    "UnknownType",
    "UnsupportedFetchArg",
    "WaitTimeout",
]


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
