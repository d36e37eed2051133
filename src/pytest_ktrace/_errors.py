"""One exception family: every failure the plugin raises is a :class:`KtraceError` carrying its context."""

from __future__ import annotations

from typing import Any, Optional

__all__ = [
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
    "hide_for_ktrace_errors",
]


class KtraceError(Exception):
    """Base of every pytest-ktrace error."""


def hide_for_ktrace_errors(excinfo: Any) -> bool:
    """Set as a module's ``__tracebackhide__``: pytest then leaves that module's frames out of the traceback of
    a KtraceError (whose message carries the context), but shows them for any other exception (a bug of ours)."""
    return isinstance(getattr(excinfo, "value", None), KtraceError)


class ProbeRejected(KtraceError):
    """The kernel refused a probe, filter or control write; quotes its ``error_log`` entry with the caret."""

    def __init__(
        self,
        message: str,
        *,
        command: str = "",
        path: str = "",
        errno_name: str = "",
        kernel_log: str = "",
        where: str = "",
    ) -> None:
        self.command = command
        self.path = path
        self.errno_name = errno_name
        self.kernel_log = kernel_log
        self.where = where
        parts = [message]
        if command:
            parts.append(f"  wrote: {command!r} to {path}" + (f" ({errno_name})" if errno_name else ""))
        if kernel_log:
            parts.append("  kernel error_log:")
            parts.extend("    " + line for line in kernel_log.rstrip("\n").splitlines())
        if where:
            parts.append(f"  probe defined at {where}")
        super().__init__("\n".join(parts))


class UnknownSymbol(ProbeRejected):
    """The symbol to probe does not exist in the kernel or the binary."""


class UnsupportedFetchArg(KtraceError):
    """A fetch argument the target kernel or architecture cannot provide."""


class HistUnavailable(KtraceError):
    """The target has no hist triggers (``ktrace.hist()``): its kernel was built without
    ``CONFIG_HIST_TRIGGERS=y``, so its events have no ``hist`` file. ``target`` names it; ``option`` is the config
    option it lacks."""

    def __init__(self, message: str, *, target: str = "", option: str = "CONFIG_HIST_TRIGGERS") -> None:
        self.target = target
        self.option = option
        super().__init__(message)


class MissingBinary(KtraceError):
    """The file a uprobe should attach to does not exist on the target."""


class MissingTool(KtraceError):
    """A host tool (qemu, gcc, ...) the requested feature needs is not installed."""


class GuestKernelError(KtraceError):
    """A kernel given to boot in the qemu guest (``--ktrace-vm-kernel``) cannot serve as one: not a kernel of a
    guest architecture, a modules tree of another release, or a config without what the guest needs.
    ``kernel`` is the file; ``missing`` the config options it lacks (all of them), ``config`` where they were read."""

    def __init__(self, message: str, *, kernel: str = "", missing: tuple[str, ...] = (), config: str = "") -> None:
        self.kernel = kernel
        self.missing = missing
        self.config = config
        super().__init__(message)


class TargetError(KtraceError):
    """The target could not be reached or refused an operation; names the host and the cause."""

    def __init__(self, message: str, *, host: str = "", command: str = "", cause: str = "") -> None:
        self.host = host
        self.command = command
        self.cause = cause
        super().__init__(message)


class TracefsUnavailable(TargetError):
    """tracefs is not mounted, or not accessible with the current privileges."""


class ConnectionLost(TargetError):
    """The connection to the target dropped while a test was using it."""


class CommandTimeout(TargetError):
    """A command on the target did not finish in time."""

    def __init__(self, message: str, *, host: str = "", command: str = "", timeout: Optional[float] = None) -> None:
        self.timeout = timeout
        super().__init__(message, host=host, command=command, cause="timeout")


class WaitTimeout(CommandTimeout):
    """A spawned command did not end within ``wait(timeout=...)``; unlike a ``run()`` timeout it is left running
    (``kill()`` ends it, and so does the test's teardown). ``pid`` is its pid on the target."""

    def __init__(
        self, message: str, *, host: str = "", command: str = "", timeout: Optional[float] = None, pid: int = 0
    ) -> None:
        self.pid = pid
        super().__init__(message, host=host, command=command, timeout=timeout)


class DiskFull(KtraceError):
    """A file could not be written because its filesystem is full (ENOSPC, or EDQUOT: a quota is used up).

    ``path`` is the file; nothing half-written of it is left behind (a previous version stays as it was)."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(message)


class TargetDiskFull(TargetError, DiskFull):
    """A file on the target could not be written: its filesystem is full. Names the host and the path."""

    def __init__(
        self, message: str, *, host: str = "", path: str = "", command: str = "", cause: str = "ENOSPC"
    ) -> None:
        super().__init__(message, host=host, command=command, cause=cause)
        self.path = path


class LabgridError(KtraceError):
    """A labgrid coordinator could not give a test its place. ``coordinator`` is its ``host:port``."""

    def __init__(self, message: str, *, coordinator: str = "") -> None:
        self.coordinator = coordinator
        super().__init__(message)


class CoordinatorUnreachable(LabgridError):
    """The coordinator did not answer (refused, unknown name, no answer in time, or it went away); ``cause`` is
    what gRPC said."""

    def __init__(self, message: str, *, coordinator: str = "", cause: str = "") -> None:
        self.cause = cause
        super().__init__(message, coordinator=coordinator)


class NoMatchingPlace(LabgridError):
    """No place of the coordinator has the tags (or the name) asked for. ``wanted`` is what was asked (``tags
    K=V,...`` or ``name PLACE``); ``places`` maps every place that exists to its tags (``K=V,...``)."""

    def __init__(
        self, message: str, *, coordinator: str = "", wanted: str = "", places: Optional[dict[str, str]] = None
    ) -> None:
        self.wanted = wanted
        self.places = dict(places or {})
        super().__init__(message, coordinator=coordinator)


class ReservationTimeout(LabgridError):
    """No matching place was allocated to the test's reservation within ``timeout`` seconds; ``holders`` maps each
    matching place to whoever held it (``host/user``, or the reservation it was allocated to)."""

    def __init__(
        self,
        message: str,
        *,
        coordinator: str = "",
        wanted: str = "",
        timeout: float = 0.0,
        holders: Optional[dict[str, str]] = None,
    ) -> None:
        self.wanted = wanted
        self.timeout = timeout
        self.holders = dict(holders or {})
        super().__init__(message, coordinator=coordinator)


class PlaceAcquiredElsewhere(LabgridError):
    """The place allocated to the test's reservation was acquired by another client (``holder``) before the test
    could acquire it."""

    def __init__(self, message: str, *, coordinator: str = "", place: str = "", holder: str = "") -> None:
        self.place = place
        self.holder = holder
        super().__init__(message, coordinator=coordinator)


class PlaceWithoutNetworkService(LabgridError):
    """The place has no ``NetworkService`` resource to reach it over SSH; ``resources`` lists what it has
    (``exporter/group/class/name``)."""

    def __init__(
        self, message: str, *, coordinator: str = "", place: str = "", resources: tuple[str, ...] = ()
    ) -> None:
        self.place = place
        self.resources = resources
        super().__init__(message, coordinator=coordinator)


# Users catch these as ``pytest_ktrace.<Name>``: that is also the name their tracebacks show.
for _public in (
    KtraceError,
    ProbeRejected,
    UnknownSymbol,
    UnsupportedFetchArg,
    HistUnavailable,
    MissingBinary,
    MissingTool,
    GuestKernelError,
    TargetError,
    TracefsUnavailable,
    ConnectionLost,
    CommandTimeout,
    WaitTimeout,
    DiskFull,
    TargetDiskFull,
    LabgridError,
    CoordinatorUnreachable,
    NoMatchingPlace,
    ReservationTimeout,
    PlaceAcquiredElsewhere,
    PlaceWithoutNetworkService,
):
    _public.__module__ = "pytest_ktrace"
