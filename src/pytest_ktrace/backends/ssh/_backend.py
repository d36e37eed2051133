"""The SSH backend: a board's tracefs over one paramiko transport, one exec channel per batch.

Each :meth:`SshBackend.apply`, :meth:`~SshBackend.run` and :meth:`~SshBackend.describe` is ONE round trip: one
exec channel running ``sh -s`` (``sudo -n sh -s`` with ``sudo=True``) whose script, rendered by
:mod:`._shell`, arrives on the channel's stdin. The target needs nothing but a POSIX sh and busybox-level tools.

Connection details are resolved the way ``ssh`` resolves them: ``~/.ssh/config`` (and ``/etc/ssh/ssh_config``),
or the file given as ``ssh_config`` alone (like ``ssh -F``), with ``HostName``, ``User``, ``Port``,
``IdentityFile``, ``IdentitiesOnly``, ``UserKnownHostsFile``, ``GlobalKnownHostsFile``, ``HostKeyAlias``,
``HashKnownHosts``, ``StrictHostKeyChecking accept-new``, ``ProxyJump`` (a direct-tcpip channel of the jump
host's transport) and ``ProxyCommand``.
Authentication: ssh-agent keys (unless ``IdentitiesOnly yes``), then the identity files, then a password only
from the ``KTRACE_SSH_PASSWORD`` environment variable. Host keys are checked against the user and system
known_hosts files: an unknown key is refused unless ``accept_new_host_key`` (then it is saved), and a changed
key is always refused with the file and line to remove.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import errno as errno_mod
import getpass
import hashlib
import os
import re
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import paramiko
from paramiko.hostkeys import HostKeyEntry

from ..._errors import (
    CommandTimeout,
    ConnectionLost,
    DiskFull,
    KtraceError,
    TargetDiskFull,
    TargetError,
    TracefsUnavailable,
    hide_for_ktrace_errors,
)
from ..._files import append_atomic
from .. import _shell
from .._base import Op, OpResult, RunResult, TargetInfo, TraceStream
from .._features import FEATURE_FILES, MOUNT_HINT, features_from

__all__ = ["PASSWORD_ENV", "SshBackend", "SshTraceStream", "parse_target"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

PASSWORD_ENV = "KTRACE_SSH_PASSWORD"
_DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_dsa")
_USER_KNOWN_HOSTS = "~/.ssh/known_hosts ~/.ssh/known_hosts2"
_GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
_MAX_JUMPS = 8
_Sock = Union[socket.socket, paramiko.Channel, paramiko.ProxyCommand]


def parse_target(target: str) -> tuple[Optional[str], str, Optional[int]]:
    """``[user@]host[:port]`` (``host`` may be an ssh_config alias or a ``[v6::addr]``) -> (user, host, port)."""
    user: Optional[str] = None
    rest = target.strip()
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    port: Optional[int] = None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":") and tail[1:]:
            port = int(tail[1:])
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        port = int(port_text) if port_text else None
    else:
        host = rest
    if not host:
        raise TargetError(f"no host in SSH target {target!r}", host=target, cause="bad target")
    return user or None, host, port


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _expand(path: str, user: str, host: str) -> Path:
    home = str(Path.home())
    expanded = path.replace("%d", home).replace("%u", getpass.getuser()).replace("%h", host)
    expanded = expanded.replace("%r", user).replace("%%", "%")
    return Path(os.path.expanduser(expanded))


def _paths(value: str) -> list[str]:
    """A known-hosts file list. paramiko has already removed the quotes of a single quoted value, so an
    unquoted value is split only when every word looks like a path of its own (``/...``, ``~...``, ``%d...``)."""
    if '"' in value or "'" in value:
        return shlex.split(value)
    words = value.split()
    if len(words) > 1 and all(w.startswith(("/", "~", "%")) for w in words):
        return words
    return [value.strip()] if value.strip() else []


@dataclass
class _Resolved:
    """One host as ssh would connect to it, after ssh_config."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: list[Path]
    identities_explicit: bool
    identities_only: bool
    user_known_hosts: list[Path]
    global_known_hosts: list[Path]
    host_key_alias: Optional[str]
    hash_known_hosts: bool
    accept_new: bool  # StrictHostKeyChecking accept-new (or no): a new key is accepted, a changed one never
    proxy_jump: list[str]
    proxy_command: Optional[str]

    @property
    def where(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_name(self) -> str:
        """The name its key is filed under in known_hosts (``[host]:port`` for a port other than 22)."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


@dataclass
class _KnownEntry:
    file: Path
    lineno: int
    key: paramiko.PKey
    revoked: bool = False


@dataclass
class _Exec:
    stdout: bytes
    stderr: bytes
    status: int
    timed_out: bool = False


@dataclass
class _Conn:
    transport: paramiko.Transport
    jumps: list[paramiko.Transport] = field(default_factory=list)

    def close(self) -> None:
        for t in (self.transport, *reversed(self.jumps)):
            with contextlib.suppress(Exception):  # a transport already gone has nothing left to release
                t.close()


def _glob(pattern: str) -> re.Pattern[str]:
    """An ssh host pattern: only ``*`` and ``?`` are special (``[host]:port`` is literal)."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.compile("".join(parts))


def _host_matches(name: str, patterns: Sequence[str]) -> bool:
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pat = pattern[1:] if negated else pattern
        if pat.startswith("|1|"):
            hit = paramiko.HostKeys.hash_host(name, pat) == pat
        else:
            hit = _glob(pat).fullmatch(name.lower()) is not None
        if hit and negated:
            return False
        matched |= hit
    return matched


def _key_family(name: str) -> str:
    return "ssh-rsa" if name in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512") else name


_STREAM_CHUNK = 1 << 20  # at most this much per SshTraceStream.read


class SshTraceStream:
    """``trace_pipe`` of a remote instance, streamed by ``dd`` on a dedicated exec channel of the backend's
    transport. :meth:`close` ends exactly that ``dd`` (by the pid it printed) through another channel."""

    def __init__(self, backend: SshBackend, chan: paramiko.Channel, pid: int, path: str, early: bytes) -> None:
        self._backend = backend
        self._chan: Optional[paramiko.Channel] = chan
        self.pid = pid
        self.path = path
        self._early = early
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")

    def read(self, timeout: float) -> str:
        chan = self._chan
        if chan is None:
            raise KtraceError(f"stream {self.path} on {self._backend.name} is closed")
        data = bytearray(self._early)
        self._early = b""
        try:
            if not data:
                chan.settimeout(max(timeout, 0.001))
                try:
                    first = chan.recv(65536)
                except socket.timeout:
                    return ""
                if not first:
                    raise self._ended()
                data += first
            while len(data) < _STREAM_CHUNK and chan.recv_ready():
                more = chan.recv(65536)
                if not more:
                    break
                data += more
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._backend._lost(f"streaming {self.path}", str(exc) or type(exc).__name__) from None
        return self._decoder.decode(bytes(data))

    def _ended(self) -> KtraceError:
        chan = self._chan
        if chan is not None and not chan.get_transport().is_active():
            return self._backend._lost(f"streaming {self.path}", "the SSH transport closed")
        status = chan.exit_status if chan is not None and chan.status_event.wait(1.0) else -1
        return KtraceError(
            f"the trace_pipe reader (dd, pid {self.pid}) on {self._backend.name} ended unexpectedly "
            f"(exit status {status}) while streaming {self.path}"
        )

    def close(self) -> None:
        chan, self._chan = self._chan, None
        if chan is None:
            return
        try:
            # a status of -1 is paramiko's for "the channel died with the transport": dd may well still run
            if not (chan.exit_status_ready() and chan.exit_status != -1):
                self._backend._end_readers([(self.pid, self.path)])  # checked gone, or raises
                if chan.get_transport().is_active():
                    chan.status_event.wait(5.0)  # let the channel see dd's exit before closing it
        finally:
            chan.close()


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
    ) -> None:
        self.target = target
        self._user, self._host, self._port = parse_target(target)
        self._ssh_config = Path(ssh_config).expanduser() if ssh_config else None
        self.sudo = sudo
        self.accept_new_host_key = accept_new_host_key
        self._candidates: tuple[str, ...] = (tracefs,) if tracefs else _shell.DEFAULT_TRACEFS
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.deferred_ops: list[Op] = []
        self.deferred_results: list[OpResult] = []
        self._conn: Optional[_Conn] = None
        self._info: Optional[TargetInfo] = None
        self._round_trips = 0
        self._accepted: dict[str, paramiko.PKey] = {}
        self._lock = threading.RLock()
        self._flushing = False
        self._resolved: Optional[_Resolved] = None
        # stream readers (pid, path) that could not be ended (connection dropped): ended first on reconnect
        self.stale_readers: list[tuple[int, str]] = []

    # --- Backend protocol ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._host

    @property
    def round_trips(self) -> int:
        return self._round_trips

    @property
    def local_port(self) -> Optional[int]:
        """The client-side TCP port of the live connection (to find the sshd process serving it)."""
        conn = self._conn
        if conn is None or not conn.transport.is_active():
            return None
        sock = conn.transport.sock
        if isinstance(sock, socket.socket):
            return int(sock.getsockname()[1])
        return None

    def describe(self) -> TargetInfo:
        with self._lock:
            if self._info is not None:
                return self._info
            nonce = _shell.new_nonce()
            paths = list(FEATURE_FILES.values())
            script = _shell.render_describe(nonce, paths, self._candidates)
            ex = self._call(script, what="describe")
            out = _shell.parse_describe(ex.stdout, nonce)
            self._check_started(out.started, ex, "describe")
            if out.tracefs is None:
                raise self._tracefs_error(out.problem)
            if not out.complete:
                raise self._lost("describe", "the script ended early")
            self._candidates = (out.tracefs,)
            user = out.user or out.uid
            if not out.readable or not out.writable:
                missing = "read" if not out.readable else "write"
                raise TracefsUnavailable(
                    f"tracefs at {out.tracefs} on {self._host} is not {missing}able as user {user}: "
                    f"{missing} permission is missing (probe control files need root); connect as root or "
                    "pass --ktrace-sudo (sudo -n, needs NOPASSWD)",
                    host=self._host,
                    cause=f"no {missing} permission",
                )
            present = {p: p in out.present for p in paths}
            self._info = TargetInfo(
                name=self._host,
                backend="ssh",
                release=out.release,
                arch=out.arch,
                tracefs=out.tracefs,
                features=features_from(present, out.readme),
            )
            return self._info

    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        with self._lock:
            ops = list(ops)
            self._ensure()
            return self._apply_now(ops, stop_on_error=stop_on_error)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: Optional[float] = None,
        pid_files: Sequence[str] = (),
        stdin: Optional[str] = None,
        after: Sequence[Op] = (),
    ) -> RunResult:
        """Run ``argv`` on the target (``timeout=None`` means ``command_timeout``)."""
        with self._lock:
            argv = tuple(argv)
            limit = self.command_timeout if timeout is None else timeout
            nonce = _shell.new_nonce()
            try:
                script = _shell.render_run(
                    argv, nonce, pid_files=pid_files, stdin=stdin, candidates=self._candidates, after=after
                )
            except ValueError as exc:
                raise TargetError(
                    f"cannot run {list(argv)!r} on {self._host}: {exc}",
                    host=self._host,
                    command=" ".join(argv),
                    cause=str(exc),
                ) from None

            end = b"\n" + nonce.encode() + b" END\n"

            def finished(out: bytes) -> bool:
                return end in out

            started = time.monotonic()
            ex = self._call(script, what=f"run {list(argv)!r}", timeout=limit, done=finished)
            out = _shell.parse_run(ex.stdout, nonce, after)
            duration = time.monotonic() - started
            command = shlex.join(argv)
            if ex.timed_out:
                victim = out.pid or out.child
                if victim:
                    self._kill(victim)
                raise CommandTimeout(
                    f"command {command!r} did not finish within {limit} s on {self._host}"
                    + (f"; killed its process group (pid {victim})" if victim else ""),
                    host=self._host,
                    command=command,
                    timeout=limit,
                )
            self._check_started(out.started, ex, f"run {command!r}")
            if out.problem is not None:
                raise self._tracefs_error(out.problem)
            if out.stdin_error is not None:
                raise self._stdin_error(command, *out.stdin_error)
            if out.pid_file_error is not None:
                path, error = out.pid_file_error
                name, text = _shell.errno_from_text(error)
                raise TargetError(
                    f"could not write the pid of {command!r} to {path} on {self._host}: "
                    f"{text or error.strip()}" + (f" ({name})" if name else "") + "; the command was not run",
                    host=self._host,
                    command=command,
                    cause=name or "pid file write failed",
                )
            if not out.complete or out.returncode is None:
                raise self._lost(f"run {command!r}", "the command's shell ended without a status")
            return RunResult(
                argv=argv,
                returncode=out.returncode,
                stdout=_shell.decode(out.stdout),
                stderr=_shell.decode(ex.stderr),
                pid=out.pid or out.child or 0,
                duration_s=duration,
                after=tuple(out.after),
            )

    def open_stream(self, path: str) -> TraceStream:
        """Stream ``path`` (e.g. ``instances/X/trace_pipe``): a dedicated exec channel runs ``dd`` on it (see
        :func:`._shell.render_stream`); nothing else on the target is needed (busybox works)."""
        with self._lock:
            root = self.describe().tracefs
            full = f"{root.rstrip('/')}/{path.lstrip('/')}"
            command = ("sudo -n " if self.sudo else "") + "sh -c " + _shell.quote(_shell.render_stream(full))
            conn = self._ensure()
            what = f"opening the stream of {path}"
            try:
                chan = conn.transport.open_session(timeout=self.connect_timeout)
                self._round_trips += 1
                chan.exec_command(command)
                chan.shutdown_write()
                chan.settimeout(self.connect_timeout)
                head = b""
                deadline = time.monotonic() + self.connect_timeout
                while b"\n" not in head and time.monotonic() < deadline:
                    try:
                        piece = chan.recv(4096)
                    except socket.timeout:
                        break
                    if not piece:
                        break
                    head += piece
            except (paramiko.SSHException, EOFError, OSError) as exc:
                self._drop()
                raise self._lost(what, str(exc) or type(exc).__name__) from None
            line, _, early = head.partition(b"\n")
            if not line.strip().isdigit():
                status = chan.exit_status if chan.status_event.wait(1.0) else -1
                stderr = chan.recv_stderr(4096).decode("utf-8", "replace").strip() if chan.recv_stderr_ready() else ""
                chan.close()
                reason = "it is missing or not readable" if status == 98 else (stderr or f"exit status {status}")
                raise KtraceError(f"cannot stream {full} on {self._host}: {reason}")
            return SshTraceStream(self, chan, int(line.strip()), full, early)

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

    def _end_readers(self, readers: Sequence[tuple[int, str]]) -> None:
        """End stream readers on a second channel (TERM, then KILL if one is still there); remembered for the
        next connection when the target is unreachable."""
        with self._lock:
            try:
                for signal in ("TERM", "KILL"):
                    script = _shell.render_stream_kill(readers, signal=signal)
                    ex = self._call(script, what="ending the stream reader", timeout=self.connect_timeout)
                    alive = {int(w) for w in ex.stdout.decode(errors="replace").split() if w.isdigit()}
                    readers = [reader for reader in readers if reader[0] in alive]
                    if not readers:
                        return
            except ConnectionLost:
                self.stale_readers.extend(r for r in readers if r not in self.stale_readers)
                raise
            raise KtraceError(
                f"stream reader(s) {', '.join(str(pid) for pid, _ in readers)} on {self._host} survived SIGKILL"
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
                    self._ensure()
            self._drop()

    def __enter__(self) -> SshBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- batches ------------------------------------------------------------------------------------------

    def _apply_now(self, ops: list[Op], *, stop_on_error: bool) -> list[OpResult]:
        if not ops:
            return []
        nonce = _shell.new_nonce()
        try:
            script = _shell.render_batch(ops, nonce, candidates=self._candidates, stop_on_error=stop_on_error)
        except ValueError as exc:
            raise TargetError(
                f"cannot send these operations to {self._host}: {exc}", host=self._host, cause=str(exc)
            ) from None

        def finished(out: bytes) -> bool:
            return (b"\n" + nonce.encode() + b" END\n") in out

        ex = self._call(script, what=f"a batch of {len(ops)} tracefs operations", done=finished)
        if ex.timed_out:
            raise CommandTimeout(
                f"a batch of {len(ops)} tracefs operations did not finish within {self.command_timeout} s "
                f"on {self._host}",
                host=self._host,
                command=f"apply({len(ops)} ops)",
                timeout=self.command_timeout,
            )
        out = _shell.parse_batch(ops, ex.stdout, nonce)
        self._check_started(out.started, ex, "apply")
        if out.tracefs is None:
            raise self._tracefs_error(out.problem)
        self._candidates = (out.tracefs,)
        if not out.complete:
            raise self._lost(
                f"a batch of {len(ops)} tracefs operations", f"the script ended after {len(out.results)} of them"
            )
        return out.results

    def _flush_deferred(self) -> None:
        if not (self.deferred_ops or self.stale_readers) or self._flushing:
            return
        self._flushing = True
        try:
            if self.stale_readers:
                # a reader left running keeps its instance busy: end it before the deferred rmdir
                readers = list(self.stale_readers)
                self._call(_shell.render_stream_kill(readers), what="ending stale stream readers")
                del self.stale_readers[: len(readers)]
            ops = list(self.deferred_ops)
            self.deferred_results = self._apply_now(ops, stop_on_error=False)
            del self.deferred_ops[: len(ops)]
        finally:
            self._flushing = False

    def _kill(self, pid: int) -> None:
        """Kill the timed-out command's process group on a second channel (one more round trip)."""
        # if the connection is gone too, the CommandTimeout being raised still says what matters
        with contextlib.suppress(KtraceError):
            self._call(_shell.render_kill(pid), what=f"kill {pid}", timeout=self.connect_timeout)

    # --- channels -----------------------------------------------------------------------------------------

    def _command(self) -> str:
        return "sudo -n sh -s" if self.sudo else "sh -s"

    def _call(
        self,
        script: str,
        *,
        what: str,
        timeout: Optional[float] = None,
        done: Optional[Callable[[bytes], bool]] = None,
    ) -> _Exec:
        """Run ``script`` on one exec channel (one round trip), reconnecting first if the transport is gone."""
        conn = self._ensure()
        try:
            chan = conn.transport.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError):
            # The transport died between calls without us noticing: nothing was sent yet, so reconnect once.
            self._drop()
            conn = self._ensure()
            try:
                chan = conn.transport.open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                self._drop()
                raise self._lost(what, f"cannot open a channel: {exc}") from None
        self._round_trips += 1
        try:
            return self._exchange(conn, chan, script.encode("utf-8", "surrogateescape"), what, timeout, done)
        finally:
            chan.close()

    def _exchange(
        self,
        conn: _Conn,
        chan: paramiko.Channel,
        data: bytes,
        what: str,
        timeout: Optional[float],
        done: Optional[Callable[[bytes], bool]],
    ) -> _Exec:
        limit = self.command_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        out = bytearray()
        err = bytearray()
        pending = memoryview(data)
        try:
            chan.settimeout(max(limit, 1.0))
            chan.exec_command(self._command())
            while True:
                if pending and chan.send_ready():
                    sent = chan.send(bytes(pending[:32768]))
                    pending = pending[sent:]
                    if not pending:
                        chan.shutdown_write()
                while chan.recv_ready():
                    chunk = chan.recv(65536)
                    if not chunk:
                        break
                    out += chunk
                while chan.recv_stderr_ready():
                    chunk = chan.recv_stderr(65536)
                    if not chunk:
                        break
                    err += chunk
                if chan.eof_received or chan.closed:
                    break
                if done is not None and chan.exit_status_ready() and done(bytes(out)):
                    break  # finished; something the command left running still holds its stdout
                if not conn.transport.is_active():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return _Exec(bytes(out), bytes(err), -1, timed_out=True)
                select.select([chan], [], [], 0.005 if pending else min(remaining, 1.0))
            # EOF: drain what is buffered, then the exit status normally follows at once
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            chan.status_event.wait(max(0.0, min(deadline - time.monotonic(), 5.0)))
        except (socket.timeout, TimeoutError):
            return _Exec(bytes(out), bytes(err), -1, timed_out=True)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._drop()
            raise self._lost(what, str(exc) or type(exc).__name__) from None
        status = chan.exit_status if chan.status_event.is_set() else -1
        if not conn.transport.is_active() and not (done is not None and done(bytes(out))):
            self._drop()
            raise self._lost(what, "the SSH transport closed")
        return _Exec(bytes(out), bytes(err), status)

    def _check_started(self, started: bool, ex: _Exec, what: str) -> None:
        if started:
            return
        stderr = _shell.decode(ex.stderr).strip()
        user = self._resolved.user if self._resolved else "?"
        if self.sudo and _shell.sudo_needs_password(stderr):
            raise TargetError(
                f"sudo on {self._host} wants a password for user {user} ({stderr.splitlines()[-1]}): "
                f"configure NOPASSWD for {user} (e.g. '{user} ALL=(ALL) NOPASSWD: ALL' in /etc/sudoers.d/), "
                "or connect as root without --ktrace-sudo",
                host=self._host,
                command=self._command(),
                cause="sudo needs a password",
            )
        raise TargetError(
            f"the shell on {self._host} did not run the {what} script (`{self._command()}` exited "
            f"{ex.status}): {stderr[-500:] or 'no error output'}",
            host=self._host,
            command=self._command(),
            cause=stderr.splitlines()[-1] if stderr else f"exit status {ex.status}",
        )

    def _tracefs_error(self, problem: Optional[_shell.TracefsProblem]) -> TargetError:
        looked = ", ".join(self._candidates)
        if problem is not None and problem.reason == "noaccess":
            return TracefsUnavailable(
                f"tracefs on {self._host} is not accessible as user {problem.user}: {problem.path} is not "
                "readable/searchable (permission denied; tracefs is root-only by default): connect as root, "
                "or pass --ktrace-sudo (sudo -n, needs NOPASSWD)",
                host=self._host,
                cause="permission denied",
            )
        return TracefsUnavailable(
            f"tracefs is not mounted on {self._host} (looked in {looked}); mount it on the target with: {MOUNT_HINT}",
            host=self._host,
            cause="tracefs not mounted",
        )

    def _stdin_error(self, command: str, path: str, error: str) -> TargetError:
        """The command's stdin could not be put into its file on the target (the script removed what it had
        written of it): a full disk is a :class:`TargetDiskFull`."""
        name, text = _shell.errno_from_text(error)
        detail = (text or error.strip() or "no error output") + (f" ({name})" if name else "")
        message = (
            f"could not write the stdin of {command!r} to {path} on {self._host}: {detail}; "
            "no part of that file is left on the target and the command was not run"
        )
        if name in ("ENOSPC", "EDQUOT"):
            where = path.rsplit("/", 1)[0] or "/"
            return TargetDiskFull(
                message + f". The filesystem of {where} on {self._host} is full: free space there (or set TMPDIR "
                "on the target to a directory that has some); only commands given stdin need it",
                host=self._host,
                path=path,
                command=command,
                cause=name,
            )
        return TargetError(message, host=self._host, command=command, cause=name or "cannot write the stdin file")

    def _lost(self, what: str, cause: str) -> ConnectionLost:
        return ConnectionLost(
            f"the SSH connection to {self._host} dropped during {what}: {cause}; the next call reconnects "
            "(operations of this call may or may not have been applied)",
            host=self._host,
            cause=cause,
        )

    # --- connection -----------------------------------------------------------------------------------------

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _ensure(self) -> _Conn:
        """The live connection, (re)connecting if needed; deferred teardown runs first after connecting."""
        conn = self._conn
        if conn is None or not conn.transport.is_active():
            self._drop()
            conn = self._connect()
            self._conn = conn
        if (self.deferred_ops or self.stale_readers) and not self._flushing:
            try:
                self._flush_deferred()
            except ConnectionLost:
                raise
            except KtraceError:
                pass  # e.g. tracefs went away: the ops stay deferred and this call reports its own error
        return conn

    def _load_config(self) -> paramiko.SSHConfig:
        config = paramiko.SSHConfig()
        if self._ssh_config is not None:
            files = [self._ssh_config]
        else:
            files = [Path("~/.ssh/config").expanduser(), Path("/etc/ssh/ssh_config")]
        for path in files:
            try:
                with open(path, encoding="utf-8") as handle:
                    config.parse(handle)
            except FileNotFoundError:
                if path == self._ssh_config:
                    raise TargetError(
                        f"ssh config {path} does not exist", host=self._host, cause="missing ssh config"
                    ) from None
            except (OSError, paramiko.SSHException) as exc:
                raise TargetError(
                    f"cannot read ssh config {path}: {exc}", host=self._host, cause="bad ssh config"
                ) from None
        return config

    def _resolve(self, alias: str, user: Optional[str] = None, port: Optional[int] = None) -> _Resolved:
        try:
            options = self._load_config().lookup(alias)
        except Exception as exc:  # paramiko raises several kinds for a config it cannot evaluate
            raise TargetError(
                f"cannot resolve {alias!r} through ssh config: {exc}", host=alias, cause="bad ssh config"
            ) from None
        hostname = options.get("hostname", alias)
        login = user or options.get("user") or getpass.getuser()
        try:
            port_no = port or int(options.get("port", 22))
        except ValueError:
            raise TargetError(f"bad Port in ssh config for {alias!r}", host=alias, cause="bad ssh config") from None
        raw_ids: Union[str, list[str], None] = options.get("identityfile")  # a list when configured
        ids = raw_ids if isinstance(raw_ids, list) else ([raw_ids] if raw_ids else [])
        explicit = bool(ids)
        if not ids:
            ids = [f"~/.ssh/{name}" for name in _DEFAULT_IDENTITIES]
        jump = options.get("proxyjump", "")
        return _Resolved(
            alias=alias,
            hostname=hostname,
            port=port_no,
            user=login,
            identity_files=[_expand(p, login, hostname) for p in ids],
            identities_explicit=explicit,
            identities_only=options.get("identitiesonly", "no").lower() == "yes",
            user_known_hosts=[
                _expand(p, login, hostname) for p in _paths(options.get("userknownhostsfile", _USER_KNOWN_HOSTS))
            ],
            global_known_hosts=[
                _expand(p, login, hostname) for p in _paths(options.get("globalknownhostsfile", _GLOBAL_KNOWN_HOSTS))
            ],
            host_key_alias=options.get("hostkeyalias"),
            hash_known_hosts=options.get("hashknownhosts", "no").lower() == "yes",
            accept_new=options.get("stricthostkeychecking", "ask").lower() in ("accept-new", "no", "off"),
            proxy_jump=[] if jump.lower() in ("", "none") else [h.strip() for h in jump.split(",") if h.strip()],
            proxy_command=None
            if options.get("proxycommand", "none").lower() == "none"
            else options.get("proxycommand"),
        )

    def _connect(self) -> _Conn:
        res = self._resolve(self._host, self._user, self._port)
        self._resolved = res
        jumps: list[paramiko.Transport] = []
        try:
            transport = self._connect_to(res, jumps, 0)
        except BaseException:
            for t in reversed(jumps):
                t.close()
            raise
        return _Conn(transport, jumps)

    def _connect_to(self, res: _Resolved, jumps: list[paramiko.Transport], depth: int) -> paramiko.Transport:
        if depth > _MAX_JUMPS:
            raise TargetError(
                f"ProxyJump chain to {self._host} is longer than {_MAX_JUMPS} hops (a loop?)",
                host=self._host,
                cause="proxy jump loop",
            )
        sock: _Sock
        if res.proxy_jump:
            via: Optional[paramiko.Transport] = None
            for hop in res.proxy_jump:
                hop_user, hop_host, hop_port = parse_target(hop)
                hop_res = self._resolve(hop_host, hop_user, hop_port)
                if via is None:
                    via = self._connect_to(hop_res, jumps, depth + 1)
                else:
                    via = self._handshake(hop_res, self._channel_to(via, hop_res, hop))
                jumps.append(via)
            assert via is not None
            sock = self._channel_to(via, res, res.proxy_jump[-1])
        elif res.proxy_command:
            try:
                sock = paramiko.ProxyCommand(res.proxy_command)
            except (OSError, paramiko.SSHException) as exc:
                raise TargetError(
                    f"ProxyCommand for {self._host} failed to start: {exc}",
                    host=self._host,
                    cause="proxy command failed",
                ) from None
        else:
            sock = self._tcp(res)
        return self._handshake(res, sock)

    def _tcp(self, res: _Resolved) -> socket.socket:
        where = f"{res.hostname}:{res.port}"
        label = self._host if res.alias == self._host else res.alias
        try:
            sock = socket.create_connection((res.hostname, res.port), timeout=self.connect_timeout)
            # small scripts then EOF: without this, Nagle holds the EOF back for a delayed ACK (~40 ms a call)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except socket.gaierror as exc:
            raise TargetError(
                f"cannot resolve host name {res.hostname!r} of {label} (DNS failure: {exc.strerror})",
                host=self._host,
                cause="DNS failure",
            ) from None
        except ConnectionRefusedError:
            raise TargetError(
                f"connection refused by {label} at {where}: no SSH server listens on that port",
                host=self._host,
                cause="connection refused",
            ) from None
        except (socket.timeout, TimeoutError):
            raise TargetError(
                f"connecting to {label} at {where} timed out after {self.connect_timeout} s",
                host=self._host,
                cause="timeout",
            ) from None
        except OSError as exc:
            raise TargetError(
                f"cannot connect to {label} at {where}: {exc.strerror or exc}",
                host=self._host,
                cause=exc.strerror or str(exc),
            ) from None

    def _channel_to(self, via: paramiko.Transport, res: _Resolved, hop: str) -> paramiko.Channel:
        try:
            return via.open_channel(
                "direct-tcpip", (res.hostname, res.port), ("127.0.0.1", 0), timeout=self.connect_timeout
            )
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TargetError(
                f"jump host {hop} could not connect to {res.hostname}:{res.port} for {self._host}: {exc}",
                host=self._host,
                cause="proxy jump failed",
            ) from None

    def _handshake(self, res: _Resolved, sock: _Sock) -> paramiko.Transport:
        label = res.alias
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = self.connect_timeout
            transport.handshake_timeout = self.connect_timeout
            transport.auth_timeout = self.connect_timeout
            known = self._known_entries(res)
            self._prefer_key_types(transport, known)
            started = time.monotonic()
            try:
                # returns quietly when the timeout passes first: the key fetch below then fails
                transport.start_client(timeout=self.connect_timeout)
                server_key = transport.get_remote_server_key()
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if time.monotonic() - started >= self.connect_timeout * 0.9:
                    raise TargetError(
                        f"SSH handshake with {label} ({res.hostname}:{res.port}) timed out after "
                        f"{self.connect_timeout} s (no SSH server answering?)",
                        host=self._host,
                        cause="timeout",
                    ) from None
                raise TargetError(
                    f"SSH handshake with {label} ({res.hostname}:{res.port}) failed: {exc}",
                    host=self._host,
                    cause="SSH handshake failed",
                ) from None
            self._check_host_key(res, server_key, known)
            self._authenticate(res, transport)
            transport.set_keepalive(15)
            return transport
        except BaseException:
            transport.close()
            raise

    # --- host keys --------------------------------------------------------------------------------------------

    def _known_entries(self, res: _Resolved) -> list[_KnownEntry]:
        name = res.known_name
        entries: list[_KnownEntry] = []
        for path in (*res.user_known_hosts, *res.global_known_hosts):
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            for lineno, line in enumerate(lines, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                revoked = False
                if text.startswith("@"):
                    marker, _, text = text.partition(" ")
                    if marker != "@revoked":
                        continue  # @cert-authority: certificates are not used here
                    revoked = True
                try:
                    entry = HostKeyEntry.from_line(text, lineno)
                except Exception:  # an unreadable line in known_hosts is skipped, as ssh does
                    continue
                if entry is None or not _host_matches(name, entry.hostnames):
                    continue
                entries.append(_KnownEntry(path, lineno, entry.key, revoked))
        accepted = self._accepted.get(name)
        if accepted is not None:
            entries.append(_KnownEntry(Path("(accepted this session)"), 0, accepted))
        return entries

    @staticmethod
    def _prefer_key_types(transport: paramiko.Transport, known: Sequence[_KnownEntry]) -> None:
        """Ask for a key type known_hosts has first, as ssh does, so a known host is not seen as changed."""
        families = {_key_family(e.key.get_name()) for e in known if not e.revoked}
        if not families:
            return
        options = transport.get_security_options()
        offered = list(options.key_types)
        first = [k for k in offered if _key_family(k) in families]
        if first:
            options.key_types = tuple(first + [k for k in offered if k not in first])

    def _check_host_key(self, res: _Resolved, key: paramiko.PKey, known: Sequence[_KnownEntry]) -> None:
        name = res.known_name
        fp = _fingerprint(key)
        kind = key.get_name()
        for entry in known:
            if entry.revoked and entry.key.asbytes() == key.asbytes():
                raise TargetError(
                    f"host key of {name} ({kind} {fp}) is marked @revoked in {entry.file}:{entry.lineno}; "
                    "refusing to connect",
                    host=self._host,
                    cause="host key revoked",
                )
        good = [e for e in known if not e.revoked]
        if any(_key_family(e.key.get_name()) == _key_family(kind) and e.key.asbytes() == key.asbytes() for e in good):
            return
        same_type = [e for e in good if _key_family(e.key.get_name()) == _key_family(kind)]
        if same_type:
            where = ", ".join(f"{e.file}:{e.lineno}" for e in same_type)
            first = same_type[0]
            raise TargetError(
                f"HOST KEY CHANGED for {name} ({res.alias}): it now offers {kind} {fp}, which differs from "
                f"the key recorded at {where}. This may be a reinstalled board or an attack. If the change is "
                f"expected, remove line {first.lineno} of {first.file} (ssh-keygen -R '{name}' -f "
                f"{first.file}) and connect again; refusing to connect",
                host=self._host,
                cause="host key changed",
            )
        files = ", ".join(str(p) for p in res.user_known_hosts + res.global_known_hosts)
        if not (self.accept_new_host_key or res.accept_new):
            other = (
                f" (known_hosts has only other key types for it: {', '.join(sorted({e.key.get_name() for e in good}))})"
                if good
                else ""
            )
            raise TargetError(
                f"host key of {name} ({res.alias}) is unknown: {kind} {fp} is not in {files}{other}. "
                f"Check and record it by connecting once by hand (ssh -p {res.port} {res.user}@{res.hostname}), "
                "or pass --ktrace-accept-new-host-key to accept and save it",
                host=self._host,
                cause="host key unknown",
            )
        self._accepted[name] = key
        self._save_host_key(res, key)

    def _save_host_key(self, res: _Resolved, key: paramiko.PKey) -> None:
        if not res.user_known_hosts or str(res.user_known_hosts[0]) in ("/dev/null", "none"):
            return
        path = res.user_known_hosts[0]
        name = res.known_name
        host_field = paramiko.HostKeys.hash_host(name) if res.hash_known_hosts else name
        line = f"{host_field} {key.get_name()} {key.get_base64()}\n".encode()
        try:
            with open(path, "rb") as check:
                if check.seek(0, os.SEEK_END) > 0:
                    check.seek(-1, os.SEEK_END)
                    if check.read(1) != b"\n":
                        line = b"\n" + line
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TargetError(
                f"accepted the new host key of {name} but cannot save it to {path}: {exc}",
                host=self._host,
                cause="cannot save host key",
            ) from None
        try:
            # one O_APPEND write, cut off again if it fails part-way: known_hosts never ends in half a key
            append_atomic(path, line, what=f"the new host key of {name} to")
        except DiskFull:
            raise
        except KtraceError as exc:
            raise TargetError(str(exc), host=self._host, cause="cannot save host key") from None

    # --- authentication ---------------------------------------------------------------------------------------

    def _authenticate(self, res: _Resolved, transport: paramiko.Transport) -> None:
        tried: list[str] = []
        if not res.identities_only:
            try:
                agent_keys = paramiko.Agent().get_keys()
            except (paramiko.SSHException, OSError):
                agent_keys = ()
            for agent_key in agent_keys:
                if self._try_key(res, transport, agent_key, tried, f"agent key {_fingerprint(agent_key)}"):
                    return
        for path in res.identity_files:
            if not path.exists():
                if res.identities_explicit:
                    tried.append(f"{path} (missing)")
                continue
            try:
                key = paramiko.PKey.from_path(path)
            except paramiko.PasswordRequiredException:
                tried.append(f"{path} (has a passphrase: load it into ssh-agent)")
                continue
            except (paramiko.SSHException, OSError, ValueError) as exc:
                tried.append(f"{path} (unreadable: {exc})")
                continue
            if self._try_key(res, transport, key, tried, f"{path} ({key.get_name()} {_fingerprint(key)})"):
                return
        password = os.environ.get(PASSWORD_ENV)
        if password:
            try:
                transport.auth_password(res.user, password)
            except paramiko.AuthenticationException:
                pass
            except paramiko.SSHException as exc:
                raise self._lost(f"authentication to {res.alias}", str(exc)) from None
            tried.append(f"password from ${PASSWORD_ENV}")
            if transport.is_authenticated():
                return
        raise TargetError(
            f"authentication failed for user {res.user!r} at {res.alias} ({res.hostname}:{res.port}); tried: "
            f"{'; '.join(tried) or 'no key (no agent, no identity file)'}. Add the public key to the user's "
            f"authorized_keys, set IdentityFile in ssh config, or set ${PASSWORD_ENV}",
            host=self._host,
            cause="authentication failed",
        )

    def _try_key(
        self, res: _Resolved, transport: paramiko.Transport, key: paramiko.PKey, tried: list[str], label: str
    ) -> bool:
        try:
            transport.auth_publickey(res.user, key)
        except paramiko.BadAuthenticationType as exc:
            tried.append(f"{label} (server allows only {', '.join(exc.allowed_types)})")
            return False
        except paramiko.AuthenticationException:
            tried.append(label)
            return False
        except paramiko.SSHException as exc:
            raise self._lost(f"authentication to {res.alias}", str(exc)) from None
        return transport.is_authenticated()
