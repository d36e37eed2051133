"""The one contract every backend satisfies.

A backend knows nothing about probes or tests: it applies batches of tracefs file operations (paths relative to
the tracefs root) and runs commands on the target. Batching is the unit of cost: a remote backend turns one
``apply`` call into one round trip, so callers put everything they can into one batch.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

if TYPE_CHECKING:
    from .._formats import EventFormat
    from ..snapshots._snapshot import KernelSnapshot

__all__ = [
    "Backend",
    "BackgroundCommand",
    "FileFetching",
    "FilePushing",
    "Imitating",
    "Injecting",
    "Mkdir",
    "Op",
    "OpResult",
    "PreparingRuns",
    "Read",
    "Remove",
    "Rmdir",
    "RunResult",
    "SharedFilesystem",
    "Spawning",
    "Streaming",
    "TargetInfo",
    "TraceStream",
    "Write",
    "capable",
]


@dataclass(frozen=True)
class Write:
    """Write ``data`` to a tracefs file. ``append`` opens with O_APPEND: never O_TRUNC on probe lists."""

    path: str
    data: str
    append: bool = True


@dataclass(frozen=True)
class Read:
    """Read a whole tracefs file (``missing_ok``: an absent file reads as an empty success). A path is relative
    to tracefs; an absolute one names a file outside it the plugin reads with a batch (``/proc/sys/kernel/tainted``),
    which every backend answers (the fake from its model, ENOENT for the rest)."""

    path: str
    missing_ok: bool = False


@dataclass(frozen=True)
class Mkdir:
    """Create a directory below tracefs (an instance: ``instances/NAME``)."""

    path: str


@dataclass(frozen=True)
class Rmdir:
    """Remove a directory below tracefs (an instance)."""

    path: str


@dataclass(frozen=True)
class Remove:
    """Remove a file the plugin put on the target (an absolute path outside tracefs, e.g. a pushed module)."""

    path: str


Op = Union[Write, Read, Mkdir, Rmdir, Remove]


@dataclass(frozen=True)
class OpResult:
    """Outcome of one operation: ``errno_name`` is e.g. ``"EINVAL"`` and ``error`` the strerror text."""

    op: Op
    ok: bool
    data: str = ""
    errno_name: str = ""
    error: str = ""


@dataclass(frozen=True)
class RunResult:
    """A finished command on the target."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    pid: int
    duration_s: float
    after: tuple[OpResult, ...] = ()  # results of the ops applied right after the command (same round trip)
    before: tuple[OpResult, ...] = ()  # PreparingRuns: results of the ops applied before it (same round trip)
    settled: tuple[OpResult, ...] = ()  # PreparingRuns: results of the ops applied first, whatever their results
    changed: tuple[str, ...] = ()  # PreparingRuns: files not as ``unchanged`` said (then nothing was applied or run)

    def check(self) -> RunResult:
        """Raise ``AssertionError`` unless the command exited 0 (like ``CompletedProcess.check_returncode``)."""
        __tracebackhide__ = True
        if self.returncode != 0:
            raise AssertionError(
                f"command {list(self.argv)} exited {self.returncode}\n"
                f"stdout: {self.stdout[-2000:]!r}\nstderr: {self.stderr[-2000:]!r}"
            )
        return self


@dataclass(frozen=True)
class TargetInfo:
    """What a target is: shown in the report header and used to adapt probes (arch registers, ``$argN``)."""

    name: str
    backend: str
    release: str
    arch: str
    tracefs: str
    features: frozenset[str] = field(default_factory=frozenset)

    def has(self, feature: str) -> bool:
        return feature in self.features

    def summary(self) -> str:
        feats = ", ".join(sorted(self.features)) or "none"
        return f"{self.backend} {self.name}: Linux {self.release} {self.arch}, tracefs {self.tracefs}; {feats}"


@runtime_checkable
class TraceStream(Protocol):
    """A consuming reader of one tracefs file (an instance's ``trace_pipe``), opened by
    :meth:`Backend.open_stream`. Used by one thread at a time."""

    def read(self, timeout: float) -> str:
        """Whatever arrived since the last read, possibly ``""``; never blocks longer than ``timeout`` seconds.
        Raises a :class:`~pytest_ktrace._errors.KtraceError` when the reader ended or the target is gone."""
        ...

    def close(self) -> None:
        """Stop reading and release the file (a remote reader process is ended); idempotent."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A place with a tracefs: this machine, a board over SSH, or the in-memory fake. What every backend must do;
    what only some can do is a capability below, checked with ``isinstance``."""

    @property
    def name(self) -> str:
        """Human name of the target (``local``, a host name, ``fake``)."""
        ...

    @property
    def round_trips(self) -> int:
        """How many batches/commands crossed to the target so far (0 cost for local counts the same)."""
        ...

    def describe(self) -> TargetInfo:
        """Kernel release, arch, tracefs path and features; cached after the first call."""
        ...

    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        """Apply ``ops`` in order as one batch. With ``stop_on_error`` the first failure ends the batch
        (its result is the last one returned); otherwise every op is attempted."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: Optional[float] = None,
        pid_files: Sequence[str] = (),
        stdin: Optional[Union[str, bytes]] = None,
        after: Sequence[Op] = (),
    ) -> RunResult:
        """Run ``argv`` on the target. Before it execs, the child's pid is appended to each tracefs file in
        ``pid_files`` (e.g. an instance's ``set_event_pid``), so tracing can follow exactly that process. When
        it has ended, ``after`` is applied (all ops attempted) in the same round trip: ``RunResult.after``."""
        ...

    def defer(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` (teardown that could not run because the target was unreachable) before anything else
        on the next successful connection. A backend that cannot lose its target applies them at once."""
        ...

    def close(self) -> None:
        """Release connections; the backend may be reopened by the next call."""
        ...


# --- capabilities: what some backends can do besides the contract ------------------------------------------------


@runtime_checkable
class Streaming(Protocol):
    """Consuming reads of a tracefs file: needed by stream mode (``stream=True``, ``--ktrace-stream``)."""

    def open_stream(self, path: str) -> TraceStream:
        """Open ``path`` (relative to the tracefs root, e.g. ``instances/X/trace_pipe``) for consuming reads.
        While the stream is open the instance is busy (its ``rmdir`` is EBUSY): close it before removing it."""
        ...


@runtime_checkable
class FileFetching(Protocol):
    """Reading any file of the target in one transfer (the kernel's BTF, a uprobe's binary). Without it, files
    are read with ``cat`` through :meth:`Backend.run`."""

    def fetch_file(self, path: str) -> bytes:
        """The bytes of the file at the absolute ``path`` on the target (not tracefs-relative). Raises
        :class:`OSError` (``FileNotFoundError`` when it does not exist) or a
        :class:`~pytest_ktrace._errors.KtraceError` when the target is unreachable."""
        ...


@runtime_checkable
class FilePushing(Protocol):
    """Putting a file on the target in one transfer, binary-safe (``ktrace.push()``, ``ktrace.load_module()``)."""

    def push_file(self, data: bytes, path: str, mode: int) -> None:
        """Create the file at the absolute ``path`` on the target with ``data`` and permission bits ``mode``.
        An existing file is never replaced: that raises :class:`FileExistsError`; a target that cannot take the
        file raises a :class:`~pytest_ktrace._errors.KtraceError` naming it (a full disk:
        :class:`~pytest_ktrace._errors.TargetDiskFull`)."""
        ...


@runtime_checkable
class BackgroundCommand(Protocol):
    """A command :meth:`Spawning.spawn` started on the target, leading a session and process group of its own
    that holds it and its children. Used by one thread at a time."""

    @property
    def pid(self) -> int:
        """Its process id on the target (also its session and process group id)."""
        ...

    @property
    def killed(self) -> bool:
        """Whether :meth:`kill` ended it (it was still running then)."""
        ...

    def poll(self) -> Optional[RunResult]:
        """Its result once it has ended (``RunResult.after`` is empty), else ``None``; never blocks."""
        ...

    def wait(self, timeout: Optional[float]) -> Optional[RunResult]:
        """Wait up to ``timeout`` seconds (``None``: until it ends) for it to end: its result, or ``None`` when it
        still runs. Its output is complete once the result is there."""
        ...

    def output(self) -> tuple[str, str]:
        """Its standard output and error so far (complete once it has ended)."""
        ...

    def kill(self, grace: float) -> RunResult:
        """End what is left of its process group: SIGTERM, then SIGKILL to what is still there after ``grace``
        seconds; it is reaped and its result returned. Nothing outside that group is signalled. Idempotent; a
        group member that survives SIGKILL raises a :class:`~pytest_ktrace._errors.KtraceError` naming it."""
        ...


@runtime_checkable
class Spawning(Protocol):
    """Starting commands in the background on the target (``ktrace.spawn()``)."""

    def spawn(
        self, argv: Sequence[str], *, pid_files: Sequence[str] = (), stdin: Optional[Union[str, bytes]] = None
    ) -> BackgroundCommand:
        """Start ``argv`` in a new session (its own process group), with ``stdin`` as its standard input (else
        nothing), and return once it runs. Before it execs, its pid is appended to each tracefs file in
        ``pid_files``, as :meth:`Backend.run` does. A command that cannot be started (no such program, a pid file
        that refuses the pid) raises a :class:`~pytest_ktrace._errors.TargetError` naming it and the target, and
        nothing of it is left running."""
        ...


@runtime_checkable
class PreparingRuns(Protocol):
    """Tracefs operations applied right before a command, in the command's own round trip (a test's arming
    travels with its first ``run()``)."""

    def run_prepared(
        self,
        before: Sequence[Op],
        argv: Sequence[str],
        *,
        timeout: Optional[float] = None,
        pid_files: Sequence[str] = (),
        stdin: Optional[Union[str, bytes]] = None,
        after: Sequence[Op] = (),
        settle: Sequence[Op] = (),
        unchanged: Optional[Mapping[str, str]] = None,
    ) -> RunResult:
        """Apply ``settle`` in order whatever their results (an earlier test's deferred teardown), then ``before``
        in order, stopping at the first failure, then, only if every one of them succeeded, :meth:`Backend.run`
        the command with ``after``. ``RunResult.settled`` and ``RunResult.before`` hold their results (fewer of
        ``before``'s after a failure, and then the command did not run: ``returncode`` -1, no ``after``).
        First of all, each file of ``unchanged`` (path -> ``"size mtime inode"``, as ``stat -L -c '%s %Y %i'``
        prints it) must still be so: if one is not, nothing is applied or run and ``RunResult.changed`` names
        the files that changed."""
        ...


@runtime_checkable
class SharedFilesystem(Protocol):
    """The target's files may be this machine's: when ``files_are_local`` is true, uprobe binaries and the
    kernel's BTF are read in place instead of fetched."""

    @property
    def files_are_local(self) -> bool: ...


@runtime_checkable
class Injecting(Protocol):
    """Synthetic events (the fake backend): needed by ``ktrace.inject``."""

    def inject_probe(
        self,
        event_dir: str,
        fmt: EventFormat,
        *,
        name: str,
        count: int,
        timestamp: Optional[float],
        stack: Sequence[str],
        values: Mapping[str, Union[int, str]],
    ) -> int:
        """Emit ``count`` events of the probe ``event_dir`` (``group/event``, whose format is ``fmt``; ``name``
        is how messages call it): ``values`` name its fields and the task (``task_pid``, ``task_comm``,
        ``task_cpu``), checked like kernel data. Returns how many were recorded (filters still apply)."""
        ...


@runtime_checkable
class Imitating(Protocol):
    """A backend that imitates a kernel from a snapshot (the fake): what the target offers is read from it."""

    @property
    def snapshot(self) -> KernelSnapshot: ...


_BY_CLASS: set[tuple[type, type]] = set()  # (backend class, capability): every instance of the class has it
# the capabilities a backend was found to have that its class alone does not give (data members set on the backend)
_BY_BACKEND: weakref.WeakKeyDictionary[object, set[type]] = weakref.WeakKeyDictionary()
# the capabilities of methods only that a backend was found to lack (a backend's methods do not come and go)
_LACKING: weakref.WeakKeyDictionary[object, set[type]] = weakref.WeakKeyDictionary()


def _methods_only(capability: type) -> bool:
    try:
        issubclass(object, capability)
    except TypeError:  # a Protocol with data members: only an instance can say
        return False
    return True


def capable(backend: object, capability: type) -> bool:
    """``isinstance(backend, capability)`` for a capability Protocol, remembered once it is true: per backend class
    when the class itself has it (it defines the capability's methods), else per backend (a backend keeps what it
    has). Before Python 3.12 every such isinstance() lists the Protocol's members again (10 to 40 us), and a test
    asks several times. A backend found without a capability of methods only is remembered so too; one without a
    capability with data members is asked each time (its data may come later)."""
    cls = type(backend)
    if (cls, capability) in _BY_CLASS:
        return True
    try:
        known = _BY_BACKEND.get(backend)
        lacking = _LACKING.get(backend)
    except TypeError:  # not hashable: asked each time
        known = lacking = None
    if known is not None and capability in known:
        return True
    if lacking is not None and capability in lacking:
        return False
    if not isinstance(backend, capability):
        if _methods_only(capability):
            with contextlib.suppress(TypeError):  # no weak reference to it: asked each time
                _LACKING.setdefault(backend, set()).add(capability)
        return False
    try:
        if issubclass(cls, capability):
            _BY_CLASS.add((cls, capability))
            return True
    except TypeError:  # a capability with data members: the backend answers, not its class
        pass
    with contextlib.suppress(TypeError):  # no weak reference to it: asked each time
        _BY_BACKEND.setdefault(backend, set()).add(capability)
    return True
