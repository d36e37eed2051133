"""The local backend: this machine's tracefs, through plain file operations."""

from __future__ import annotations

import codecs
import contextlib
import errno as errno_mod
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from .._errors import CommandTimeout, KtraceError, TargetDiskFull, TracefsUnavailable, hide_for_ktrace_errors
from ._base import Mkdir, Op, OpResult, Read, Remove, Rmdir, RunResult, TargetInfo, TraceStream, Write
from ._features import FEATURE_FILES, MOUNT_HINT, features_from
from ._local_spawn import LocalBackgroundCommand, pid_announcer

__all__ = ["LocalBackend", "LocalTraceStream", "find_tracefs"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def _tracefs_mounts() -> list[str]:
    try:
        with open("/proc/self/mounts") as mounts:
            return [line.split()[1] for line in mounts if line.split()[2:3] == ["tracefs"]]
    except OSError:
        return []


def find_tracefs(explicit: Optional[str] = None) -> str:
    """Where tracefs is mounted, or a :class:`TracefsUnavailable` that says how to mount it (or which
    permission is missing)."""
    candidates = (explicit,) if explicit else _CANDIDATES
    for candidate in candidates:
        if candidate and os.path.exists(os.path.join(candidate, "available_events")):
            return candidate
    mounted = _tracefs_mounts()
    for candidate in candidates:
        if candidate and candidate.rstrip("/") in mounted:
            raise TracefsUnavailable(
                f"tracefs is mounted at {candidate} but uid {os.getuid()} may not read it (it is mode 0700, "
                "root only): run pytest as root, or test a remote target with --ktrace-host and --ktrace-sudo",
                host="local",
                cause="permission denied",
            )
    where = explicit or _CANDIDATES[0]
    raise TracefsUnavailable(
        f"tracefs is not mounted at {where} on this machine; mount it with: {MOUNT_HINT}"
        + (" (or pass --ktrace-tracefs=PATH)" if not explicit else ""),
        host="local",
        cause="tracefs not mounted",
    )


def _errno_result(op: Op, exc: OSError) -> OpResult:
    code = exc.errno or 0
    return OpResult(op, ok=False, errno_name=errno_mod.errorcode.get(code, str(code)), error=os.strerror(code))


_STREAM_READ = 65536  # one read(2); trace_pipe returns at most a couple of pages per call anyway
_STREAM_CHUNK = 1 << 20  # at most this much per TraceStream.read, so the consumer parses as it goes


class LocalTraceStream:
    """A consuming, non-blocking reader of a local tracefs file (``trace_pipe``): ``O_RDONLY|O_NONBLOCK`` and
    ``poll(2)`` with the caller's timeout, so :meth:`read` never blocks longer than that."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd: Optional[int] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            code = exc.errno or 0
            raise KtraceError(
                f"cannot open {path} for streaming: {errno_mod.errorcode.get(code, code)} {os.strerror(code)}"
            ) from None
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")

    def read(self, timeout: float) -> str:
        fd = self._fd
        if fd is None:
            raise KtraceError(f"stream {self.path} is closed")
        chunks: list[bytes] = []
        size = 0
        waited = False
        while size < _STREAM_CHUNK:
            try:
                data = os.read(fd, _STREAM_READ)
            except BlockingIOError:
                if chunks or waited:
                    break
                self._poll.poll(max(0, int(timeout * 1000)))
                waited = True
                continue
            except OSError as exc:
                code = exc.errno or 0
                raise KtraceError(
                    f"reading {self.path} failed: {errno_mod.errorcode.get(code, code)} {os.strerror(code)}"
                ) from None
            if not data:  # EOF: trace_pipe ends once tracing is off after a read; nothing more will come now
                if not chunks and not waited:
                    time.sleep(timeout)
                break
            chunks.append(data)
            size += len(data)
        return self._decoder.decode(b"".join(chunks)) if chunks else ""

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                self._poll.unregister(fd)
            os.close(fd)


class LocalBackend:
    """Tracefs of the machine pytest runs on."""

    files_are_local = True  # uprobe binaries are read directly, not fetched

    def __init__(self, tracefs: Optional[str] = None) -> None:
        self._explicit = tracefs
        self._root: Optional[str] = None
        self._info: Optional[TargetInfo] = None
        self._round_trips = 0

    @property
    def name(self) -> str:
        return "local"

    @property
    def round_trips(self) -> int:
        return self._round_trips

    @property
    def root(self) -> str:
        if self._root is None:
            self._root = find_tracefs(self._explicit)
        return self._root

    def describe(self) -> TargetInfo:
        if self._info is None:
            root = self.root
            if not os.access(os.path.join(root, "available_events"), os.R_OK) or not os.access(
                os.path.join(root, "instances"), os.W_OK
            ):
                raise TracefsUnavailable(
                    f"tracefs at {root} is mounted but uid {os.getuid()} may not write to it (instances/ needs "
                    "write permission, probe control files need root or CAP_SYS_ADMIN): run pytest as root, "
                    "or test a remote target with --ktrace-host and --ktrace-sudo",
                    host="local",
                    cause="permission denied",
                )
            present = {path: os.path.exists(os.path.join(root, path)) for path in FEATURE_FILES.values()}
            try:
                readme = Path(root, "README").read_text(errors="replace")
            except OSError:
                readme = ""
            uname = os.uname()
            self._info = TargetInfo(
                name="local",
                backend="local",
                release=uname.release,
                arch=uname.machine,
                tracefs=root,
                features=features_from(present, readme),
            )
        return self._info

    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        self._round_trips += 1
        results: list[OpResult] = []
        for op in ops:
            result = self._apply_one(op)
            results.append(result)
            if stop_on_error and not result.ok:
                break
        return results

    def _apply_one(self, op: Op) -> OpResult:
        path = os.path.join(self.root, op.path)
        try:
            if isinstance(op, Write):
                flags = os.O_WRONLY | (os.O_APPEND if op.append else os.O_TRUNC)
                fd = os.open(path, flags)
                try:
                    # One write(): the kernel parses each write as a unit, so a command must never be split.
                    os.write(fd, op.data.encode("utf-8", "surrogateescape"))
                finally:
                    os.close(fd)
                return OpResult(op, ok=True)
            if isinstance(op, Read):
                try:
                    with open(path, "rb") as handle:
                        return OpResult(op, ok=True, data=handle.read().decode(errors="surrogateescape"))
                except FileNotFoundError:
                    if op.missing_ok:
                        return OpResult(op, ok=True)
                    raise
            if isinstance(op, Mkdir):
                os.mkdir(path)
                return OpResult(op, ok=True)
            if isinstance(op, Rmdir):
                os.rmdir(path)
                return OpResult(op, ok=True)
            if isinstance(op, Remove):
                os.unlink(op.path)
                return OpResult(op, ok=True)
        except OSError as exc:
            return _errno_result(op, exc)
        except ValueError:
            # a NUL in the path ("embedded null byte"), or text no surrogateescape can encode: no system call
            # can carry it
            return OpResult(op, ok=False, errno_name="EINVAL", error=os.strerror(errno_mod.EINVAL))
        raise TypeError(f"not a tracefs operation: {op!r}")

    def push_file(self, data: bytes, path: str, mode: int) -> None:
        """Create ``path`` with ``data`` (never replacing a file: O_EXCL); a full disk removes the part written."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            if exc.errno in (errno_mod.ENOSPC, errno_mod.EDQUOT):
                raise TargetDiskFull(
                    f"cannot put {path} on {self.name}: {os.strerror(exc.errno)}", host=self.name, path=path
                ) from None
            raise
        os.close(fd)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: Optional[float] = None,
        pid_files: Sequence[str] = (),
        stdin: Optional[Union[str, bytes]] = None,
        after: Sequence[Op] = (),
    ) -> RunResult:
        self._round_trips += 1
        targets = [os.path.join(self.root, path) for path in pid_files]

        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=pid_announcer(targets),
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            return RunResult(tuple(argv), 127, "", f"{argv[0]}: {exc.strerror}\n", 0, 0.0)
        except PermissionError as exc:
            return RunResult(tuple(argv), 126, "", f"{argv[0]}: {exc.strerror}\n", 0, 0.0)
        try:
            out, err = proc.communicate(
                input=stdin.encode("utf-8", "surrogateescape") if isinstance(stdin, str) else stdin, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            # The child leads its own session: end its whole process group, and nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise CommandTimeout(
                f"command {list(argv)} did not finish within {timeout} s on local; it was killed",
                host="local",
                command=" ".join(argv),
                timeout=timeout,
            ) from None
        return RunResult(
            argv=tuple(argv),
            returncode=proc.returncode,
            stdout=out.decode(errors="surrogateescape"),  # byte-exact, like the SSH backend
            stderr=err.decode(errors="surrogateescape"),
            pid=proc.pid,
            duration_s=time.monotonic() - started,
            after=tuple(self._apply_one(op) for op in after),
        )

    def spawn(
        self, argv: Sequence[str], *, pid_files: Sequence[str] = (), stdin: Optional[Union[str, bytes]] = None
    ) -> LocalBackgroundCommand:
        """Start ``argv`` in a new session on this machine (see :mod:`._local_spawn`)."""
        self._round_trips += 1
        return LocalBackgroundCommand(argv, announce=[os.path.join(self.root, path) for path in pid_files], stdin=stdin)

    def open_stream(self, path: str) -> TraceStream:
        """``path`` (e.g. ``instances/X/trace_pipe``) opened for non-blocking consuming reads."""
        return LocalTraceStream(os.path.join(self.root, path))

    def fetch_file(self, path: str) -> bytes:
        """The bytes of ``path`` (absolute, on this machine); :class:`OSError` if it cannot be read."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise KtraceError(f"fetch_file path {path!r} must be an absolute path")
        with open(path, "rb") as handle:
            return handle.read()

    def defer(self, ops: Sequence[Op]) -> None:
        self.apply(ops)

    def close(self) -> None:
        """Nothing to release locally."""
