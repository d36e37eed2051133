"""Commands in the background on an SSH target: each on an exec channel of its own, which runs the script of
:func:`.._shell.render_spawn` (its shell prints the command's pid, writes the pid files and execs it under
``setsid``, then waits for it and prints its status) and stays open while the command runs; a thread drains it, so
the command never blocks on its output.

:class:`SpawnedCommands` starts them and ends them through another channel (:func:`.._shell.render_spawn_kill`):
SIGTERM to the command's process group, SIGKILL to what is left after a grace, and only while a process of that
group carries the command's marker or is its still unreaped leader. A command that could not be ended because the
connection dropped is remembered in ``stale`` and ended first on the next connection.
"""

from __future__ import annotations

import select
import shlex
import threading
import time
from collections.abc import Sequence
from typing import Optional, Union

import paramiko

from ..._errors import CommandTimeout, ConnectionLost, KtraceError, TargetError, hide_for_ktrace_errors
from .. import _shell
from .._base import RunResult
from ._batches import ShellBatches
from ._channel import ChannelOutput, ScriptChannel
from ._config import SshOptions
from ._connection import TRANSPORT_ERRORS, SshConnection

__all__ = ["SpawnedCommands", "SshBackgroundCommand"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_RECV_CHUNK = 65536
_TAIL_S = 0.2  # after the closing frame: what is still on its way (stderr travels apart from stdout)
_REAP_S = 10.0  # after the kill: how long its script may take to report the status


class SpawnedCommands:
    """Starts background commands on the target and ends them."""

    def __init__(
        self,
        connection: SshConnection,
        channel: ScriptChannel,
        batches: ShellBatches,
        options: SshOptions,
        lock: threading.RLock,
        *,
        host: str,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._batches = batches
        self._options = options
        self._lock = lock  # the backend's
        self.host = host
        # (process group, nonce) of commands that could not be ended (connection dropped): ended on reconnect
        self.stale: list[tuple[int, str]] = []

    def start(
        self, argv: tuple[str, ...], *, pid_files: Sequence[str], stdin: Optional[Union[str, bytes]]
    ) -> SshBackgroundCommand:
        command = shlex.join(argv)
        nonce = _shell.new_nonce()
        try:
            script = _shell.render_spawn(
                argv, nonce, pid_files=pid_files, stdin=stdin, candidates=self._batches.candidates
            )
        except ValueError as exc:
            raise TargetError(
                f"cannot spawn {list(argv)!r} on {self.host}: {exc}", host=self.host, command=command, cause=str(exc)
            ) from None
        what = f"spawn {list(argv)!r}"
        transport, chan = self._channel.open(what)
        try:
            chan.settimeout(self._options.connect_timeout)
            chan.exec_command(self._options.shell)
            chan.sendall(script.encode("utf-8", "surrogateescape"))
            chan.shutdown_write()
        except TRANSPORT_ERRORS as exc:
            chan.close()
            self._connection.drop()
            raise self._connection.lost(what, str(exc) or type(exc).__name__) from None
        spawned = SshBackgroundCommand(self, transport, chan, argv, nonce)
        spawned.started(self._options.command_timeout, command)
        return spawned

    def check_start(self, out: _shell.RunOutput, ex: ChannelOutput, argv: tuple[str, ...]) -> None:
        """Raise what the reply says went wrong before the command ran."""
        command = shlex.join(argv)
        self._batches.check_start(out, ex, command, what="spawn")
        if out.no_setsid:
            raise TargetError(
                f"cannot spawn {list(argv)!r} on {self.host}: it has no setsid, which gives a background command a "
                "session (a process group) of its own, so that it and its children can be ended together; install "
                "it there (util-linux, or busybox's applet)",
                host=self.host,
                command=command,
                cause="no setsid",
            )
        if out.not_found:
            raise TargetError(
                f"spawn(): cannot start {list(argv)!r} on {self.host}: no such command (or not executable there)",
                host=self.host,
                command=command,
                cause="command not found",
            )

    def end(self, pgid: int, nonce: str, *, grace: float, leader_unreaped: bool) -> tuple[bool, bool]:
        """Signal what is left of the group (one round trip); (whether it signalled it, whether SIGKILL was
        needed). Remembered for the next connection when the target is unreachable."""
        script = _shell.render_spawn_kill(pgid, nonce, grace=grace, leader_unreaped=leader_unreaped)
        with self._lock:
            try:
                ex = self._channel.call(
                    script, what=f"ending process group {pgid}", timeout=grace + self._options.connect_timeout + 10
                )
            except ConnectionLost:
                if (pgid, nonce) not in self.stale:
                    self.stale.append((pgid, nonce))
                raise
        said = ex.stdout.decode(errors="replace").split()
        if "ALIVE" in said:
            raise KtraceError(f"process group {pgid} on {self.host} survived SIGKILL")
        if ex.timed_out or ex.status != 0:
            raise KtraceError(
                f"could not end process group {pgid} on {self.host}: "
                + ("the script timed out" if ex.timed_out else f"exit status {ex.status}")
                + (f" ({ex.stderr.decode(errors='replace').strip()[-300:]})" if ex.stderr.strip() else "")
            )
        return "TERM" in said, "KILL" in said

    def lost(self, what: str, cause: str) -> ConnectionLost:
        return self._connection.lost(what, cause)

    def end_stale(self) -> None:
        """End the commands a dropped connection left running (one round trip each; none if there are none)."""
        while self.stale:
            pgid, nonce = self.stale[0]
            self._channel.call(
                _shell.render_spawn_kill(pgid, nonce, grace=1.0, leader_unreaped=False), what="ending stale commands"
            )
            del self.stale[0]


class SshBackgroundCommand:
    """A command running in the background on the SSH target (see the module docstring)."""

    def __init__(
        self,
        commands: SpawnedCommands,
        transport: paramiko.Transport,
        chan: paramiko.Channel,
        argv: tuple[str, ...],
        nonce: str,
    ) -> None:
        self._commands = commands
        self._transport = transport
        self._chan = chan
        self.argv = argv
        self._nonce = nonce
        self._closing = b"\n" + nonce.encode() + b" END\n"
        self._data_lock = threading.Lock()
        self._out = bytearray()
        self._err = bytearray()
        self._status = -1
        self._lost = ""  # why the channel ended without the closing frame
        self._pid = 0
        self._started_at = time.monotonic()
        self._ended_at = 0.0
        self._killed = False
        self._reaped: Optional[RunResult] = None
        self._launched = threading.Event()  # the pid is known, or the script ended before the command ran
        self._done = threading.Event()  # the script reported the end of the command, or the channel ended
        threading.Thread(target=self._pump, name=f"ktrace-spawn-{argv[0]}", daemon=True).start()

    # --- the channel -----------------------------------------------------------------------------------------

    def _pump(self) -> None:
        chan = self._chan
        tail_until = 0.0
        try:
            while True:
                self._receive()
                if not tail_until and self._closing in self._out:
                    tail_until = time.monotonic() + _TAIL_S
                    self._ended_at = time.monotonic()
                if chan.eof_received or chan.closed or (tail_until and time.monotonic() >= tail_until):
                    self._receive()
                    break
                if not self._transport.is_active():
                    self._lost = "the SSH transport closed"
                    break
                select.select([chan], [], [], 0.05 if tail_until else 0.5)
        except TRANSPORT_ERRORS as exc:
            self._lost = str(exc) or type(exc).__name__
        finally:
            if not self._ended_at:
                self._ended_at = time.monotonic()
            if chan.status_event.is_set():
                self._status = chan.exit_status
            self._launched.set()
            self._done.set()

    def _receive(self) -> None:
        chan = self._chan
        while chan.recv_ready():
            chunk = chan.recv(_RECV_CHUNK)
            if not chunk:
                break
            with self._data_lock:
                self._out += chunk
        while chan.recv_stderr_ready():
            chunk = chan.recv_stderr(_RECV_CHUNK)
            if not chunk:
                break
            with self._data_lock:
                self._err += chunk
        if not self._launched.is_set() and self._reply().pid is not None:
            self._launched.set()

    def _reply(self) -> _shell.RunOutput:
        with self._data_lock:
            out = bytes(self._out)
        return _shell.parse_run(out, self._nonce)

    def started(self, timeout: float, command: str) -> None:
        """Wait until the command runs (its pid is known); raise what went wrong instead, and leave nothing."""
        host = self._commands.host
        if not self._launched.wait(timeout):
            self._abandon()
            raise CommandTimeout(
                f"spawned command {command!r} did not start within {timeout} s on {host}; what it had started was "
                "ended",
                host=host,
                command=command,
                timeout=timeout,
            )
        out = self._reply()
        if out.pid is None:
            self._done.wait(_TAIL_S + 1.0)
            with self._data_lock:
                ex = ChannelOutput(bytes(self._out), bytes(self._err), self._status)
            self._chan.close()
            self._commands.check_start(out, ex, self.argv)
            if self._lost:
                raise self._commands.lost(f"spawn {command!r}", self._lost)
            raise TargetError(
                f"spawn(): {command!r} on {host}: the script ended before the command ran "
                f"({_shell.decode(ex.stderr).strip()[-300:] or 'no error output'})",
                host=host,
                command=command,
                cause="spawn script ended early",
            )
        self._pid = out.pid

    def _abandon(self) -> None:
        """The start went wrong half way: end whatever of it runs, found by its marker."""
        self._chan.close()
        out = self._reply()
        pid = out.pid or out.child
        if pid:
            self._commands.end(pid, self._nonce, grace=0.0, leader_unreaped=out.returncode is None)

    # --- BackgroundCommand ------------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def killed(self) -> bool:
        return self._killed

    def _result(self, *, unknown_ok: bool = False) -> RunResult:
        """Its result as its script reported it; without that report (the connection dropped with it) a
        :class:`ConnectionLost`, or status -1 when ``unknown_ok``."""
        out = self._reply()
        if out.returncode is None and not unknown_ok:
            raise self._commands.lost(
                f"spawned command {shlex.join(self.argv)!r}", self._lost or "its script ended without its status"
            )
        with self._data_lock:
            stderr = bytes(self._err)
        return RunResult(
            argv=self.argv,
            returncode=out.returncode if out.returncode is not None else -1,
            stdout=_shell.decode(out.stdout),
            stderr=_shell.decode(stderr),
            pid=self._pid,
            duration_s=self._ended_at - self._started_at,
        )

    def poll(self) -> Optional[RunResult]:
        if self._reaped is not None:
            return self._reaped
        return self._result() if self._done.is_set() else None

    def wait(self, timeout: Optional[float]) -> Optional[RunResult]:
        if self._reaped is not None:
            return self._reaped
        return self._result() if self._done.wait(timeout) else None

    def output(self) -> tuple[str, str]:
        with self._data_lock:
            stderr = bytes(self._err)
        return _shell.decode(self._reply().stdout), _shell.decode(stderr)

    def kill(self, grace: float) -> RunResult:
        if self._reaped is not None:
            return self._reaped
        ended = self._done.is_set() and self._reply().returncode is not None
        try:
            signalled, _ = self._commands.end(self._pid, self._nonce, grace=grace, leader_unreaped=not ended)
            self._killed = signalled and not ended
            self._done.wait(_REAP_S)  # its script reaps it and reports its status
            # ended either way; a status that went with a dropped connection is unknown (-1)
            self._reaped = self._result(unknown_ok=True)
        finally:
            self._chan.close()
        return self._reaped
