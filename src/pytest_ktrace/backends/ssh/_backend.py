"""The SSH backend: a board's tracefs over one paramiko transport, one exec channel per batch.

Each :meth:`SshBackend.apply`, :meth:`~SshBackend.run` and :meth:`~SshBackend.describe` is ONE round trip: one
exec channel running ``sh -s`` (``sudo -n sh -s`` with ``sudo=True``) whose script, rendered by
:mod:`.._shell`, arrives on the channel's stdin. The target needs nothing but a POSIX sh and busybox-level tools.

:class:`SshBackend` is the facade that implements the backend contract; the work is done by its parts:
:mod:`._config` (the target and ``ssh_config``: ``HostName``, ``User``, ``Port``, ``IdentityFile``,
``IdentitiesOnly``, ``UserKnownHostsFile``, ``GlobalKnownHostsFile``, ``HostKeyAlias``, ``HashKnownHosts``,
``StrictHostKeyChecking accept-new``, ``ProxyJump``, ``ProxyCommand``), :mod:`._hostkeys` (unknown keys refused
unless ``accept_new_host_key``, changed keys always refused), :mod:`._auth` (the ``identity`` key, agent,
identity files, the target's ``password`` or ``KTRACE_SSH_PASSWORD``), :mod:`._connection` (dialing through
jump hosts, reconnecting), :mod:`._channel` (one round trip), :mod:`._batches` (the scripts and their replies),
:mod:`._streams` (``trace_pipe`` readers) and :mod:`._spawns` (commands in the background).
Teardown that could not run because the connection dropped is kept here and applied first once connected again.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import threading
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from ..._errors import ConnectionLost, KtraceError, TargetDiskFull, TargetError, hide_for_ktrace_errors
from .. import _shell
from .._base import Op, OpResult, RunResult, TargetInfo, TraceStream
from ._batches import ShellBatches
from ._channel import ScriptChannel
from ._config import EndpointResolver, SshOptions, parse_target
from ._connection import Dialer, SshConnection
from ._hostkeys import HostKeyChecker
from ._spawns import SpawnedCommands, SshBackgroundCommand
from ._streams import StreamReaders

__all__ = ["SshBackend"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals


# Creates the file first (set -C: an existing one is left alone), then fills it; a failed fill removes it.
_PUSH_SCRIPT = (
    'set -C; : >"$1" || exit 3; cat >>"$1" || { rm -f "$1"; exit 4; }; chmod "$2" "$1" || { rm -f "$1"; exit 5; }'
)


class SshBackend:
    """A target reached over SSH; satisfies :class:`pytest_ktrace.backends._base.Backend`.

    ``deferred_ops`` are teardown operations that could not run because the connection dropped (see
    :meth:`defer`): they are applied, as one batch, before anything else once the backend is connected again.
    """

    def __init__(
        self,
        target: str,
        *,
        ssh_config: Optional[Path] = None,
        sudo: bool = False,
        accept_new_host_key: bool = False,
        tracefs: Optional[str] = None,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
        identity: Optional[Path] = None,
        password: Optional[str] = None,
    ) -> None:
        self.target = target
        user, self._host, port = parse_target(target)
        self._options = SshOptions(
            sudo=sudo,
            accept_new_host_key=accept_new_host_key,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            identity=Path(identity).expanduser() if identity else None,
            password=password,
        )
        self.deferred_ops: list[Op] = []
        self.deferred_results: list[OpResult] = []
        self._flushing = False
        self._lock = threading.RLock()
        host = self._host
        resolver = EndpointResolver(Path(ssh_config).expanduser() if ssh_config else None, host=host)
        dialer = Dialer(resolver, HostKeyChecker(self._options, host=host), self._options, host=host)
        self._connection = SshConnection(
            dialer, resolver, self._options, host=host, user=user, port=port, before_use=self._settle_deferred
        )
        channel = ScriptChannel(self._connection, self._options)
        self._batches = ShellBatches(channel, self._connection, self._options, host=host, tracefs=tracefs)
        self._streams = StreamReaders(self._connection, channel, self._options, self._lock, host=host)
        self._spawns = SpawnedCommands(self._connection, channel, self._batches, self._options, self._lock, host=host)

    # --- options (shared with the parts: a change applies from the next call on) ------------------------------

    @property
    def sudo(self) -> bool:
        return self._options.sudo

    @sudo.setter
    def sudo(self, value: bool) -> None:
        self._options.sudo = value

    @property
    def accept_new_host_key(self) -> bool:
        return self._options.accept_new_host_key

    @accept_new_host_key.setter
    def accept_new_host_key(self, value: bool) -> None:
        self._options.accept_new_host_key = value

    @property
    def connect_timeout(self) -> float:
        return self._options.connect_timeout

    @connect_timeout.setter
    def connect_timeout(self, value: float) -> None:
        self._options.connect_timeout = value

    @property
    def command_timeout(self) -> float:
        return self._options.command_timeout

    @command_timeout.setter
    def command_timeout(self, value: float) -> None:
        self._options.command_timeout = value

    @property
    def stale_readers(self) -> list[tuple[int, str]]:
        """Stream readers (pid, path) that could not be ended (connection dropped): ended first on reconnect."""
        return self._streams.stale_readers

    # --- Backend protocol ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._host

    @property
    def round_trips(self) -> int:
        return self._connection.round_trips

    @property
    def local_port(self) -> Optional[int]:
        """The client-side TCP port of the live connection (to find the sshd process serving it)."""
        return self._connection.local_port

    def describe(self) -> TargetInfo:
        with self._lock:
            return self._batches.describe()

    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        with self._lock:
            ops = list(ops)
            self._connection.transport()
            return self._batches.apply(ops, stop_on_error=stop_on_error)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: Optional[float] = None,
        pid_files: Sequence[str] = (),
        stdin: Optional[Union[str, bytes]] = None,
        after: Sequence[Op] = (),
    ) -> RunResult:
        """Run ``argv`` on the target (``timeout=None`` means ``command_timeout``)."""
        with self._lock:
            return self._batches.run(tuple(argv), timeout=timeout, pid_files=pid_files, stdin=stdin, after=after)

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
        """``settle``, ``before``, then the command, in one script: one round trip (see :class:`PreparingRuns`)."""
        with self._lock:
            self._connection.transport()
            return self._batches.run(
                tuple(argv),
                timeout=timeout,
                pid_files=pid_files,
                stdin=stdin,
                after=after,
                before=list(before),
                settle=list(settle),
                unchanged=list((unchanged or {}).items()),
            )

    def spawn(
        self, argv: Sequence[str], *, pid_files: Sequence[str] = (), stdin: Optional[Union[str, bytes]] = None
    ) -> SshBackgroundCommand:
        """Start ``argv`` in the background on the target, on an exec channel of its own (see :mod:`._spawns`;
        the target needs ``setsid``)."""
        with self._lock:
            self._connection.transport()  # connected (and what a dropped connection left behind settled) first
            return self._spawns.start(tuple(argv), pid_files=pid_files, stdin=stdin)

    @property
    def stale_commands(self) -> list[tuple[int, str]]:
        """Background commands (process group, marker) that could not be ended (connection dropped): ended
        first on reconnect."""
        return self._spawns.stale

    def open_stream(self, path: str) -> TraceStream:
        """Stream ``path`` (e.g. ``instances/X/trace_pipe``): a dedicated exec channel runs ``dd`` on it (see
        :func:`.._shell.render_stream`); nothing else on the target is needed (busybox works)."""
        with self._lock:
            root = self.describe().tracefs
            return self._streams.open(f"{root.rstrip('/')}/{path.lstrip('/')}", path)

    def fetch_file(self, path: str) -> bytes:
        """The bytes of ``path`` (absolute) on the target, read with ``cat`` in one round trip (byte-exact: the
        command's output is framed, never decoded lossily); :class:`OSError` with the target's errno if it
        cannot be read."""
        if not isinstance(path, str) or not path.startswith("/") or "\n" in path or "\0" in path:
            raise KtraceError(f"fetch_file path {path!r} must be an absolute path on one line")
        result = self.run(["cat", "--", path])
        if result.returncode != 0:
            name, text = _shell.errno_from_text(result.stderr)
            code = getattr(errno_mod, name, errno_mod.EIO) if name else errno_mod.EIO
            raise OSError(code, text or result.stderr.strip() or f"cat exited {result.returncode}", path)
        return result.stdout.encode("utf-8", "surrogateescape")

    def push_file(self, data: bytes, path: str, mode: int) -> None:
        """Create ``path`` on the target with ``data``: one round trip, the bytes travelling as the stdin of a
        ``cat`` (binary-safe), an existing file never replaced (``set -C``), a partial one removed."""
        if not isinstance(path, str) or not path.startswith("/") or "\n" in path or "\0" in path:
            raise KtraceError(f"push path {path!r} must be an absolute path on one line")
        result = self.run(["sh", "-c", _PUSH_SCRIPT, "ktrace-push", path, f"{mode:o}"], stdin=data)
        if result.returncode == 0:
            return
        name, text = _shell.errno_from_text(result.stderr)
        if name == "EEXIST":
            raise FileExistsError(errno_mod.EEXIST, text, path)
        if name in ("ENOSPC", "EDQUOT"):
            raise TargetDiskFull(f"cannot put {path} on {self.name}: {text}", host=self.name, path=path)
        raise TargetError(
            f"cannot put {path} on {self.name}: {text or result.stderr.strip() or f'exit status {result.returncode}'}",
            host=self.name,
            command=f"push {path}",
            cause=name or "push failed",
        )

    def defer(self, ops: Sequence[Op]) -> None:
        """Queue teardown ``ops`` that could not run (the connection dropped): they run before the next call."""
        with self._lock:
            self.deferred_ops.extend(ops)

    def close(self) -> None:
        """Apply what is still deferred (best effort), then close the transport(s)."""
        with self._lock:
            if self.deferred_ops:
                with contextlib.suppress(KtraceError):  # what failed stays in deferred_ops, for the caller
                    self._connection.transport()
            self._connection.drop()

    def __enter__(self) -> SshBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- deferred teardown ------------------------------------------------------------------------------------

    def _settle_deferred(self) -> None:
        """Before the connection is used: end stale stream readers, then apply the deferred teardown. Runs inside
        every use of the connection, so it must not run inside itself."""
        if not (self.deferred_ops or self.stale_readers or self.stale_commands) or self._flushing:
            return
        self._flushing = True
        try:
            # a reader left running keeps its instance busy, a command may hold a module: end them before the
            # deferred rmdir
            self._streams.end_stale()
            self._spawns.end_stale()
            ops = list(self.deferred_ops)
            self.deferred_results = self._batches.apply(ops, stop_on_error=False)
            del self.deferred_ops[: len(ops)]
        except ConnectionLost:
            raise
        except KtraceError:
            pass  # e.g. tracefs went away: the ops stay deferred and this call reports its own error
        finally:
            self._flushing = False
