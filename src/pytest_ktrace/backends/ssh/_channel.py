"""One round trip: a script sent on the stdin of ``sh -s`` (``sudo -n sh -s`` with sudo) over one exec channel of
the connection, and its stdout, stderr and exit status collected until EOF, or until the script's closing frame
has arrived (something the command left running may hold stdout open), or the deadline. A channel that cannot be
opened is retried once on a fresh connection (nothing was sent yet); a failure after that is a dropped connection.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass
from typing import Callable, Optional

import paramiko

from ..._errors import hide_for_ktrace_errors
from ._config import SshOptions
from ._connection import TRANSPORT_ERRORS, SshConnection

__all__ = ["ChannelOutput", "ScriptChannel"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_SEND_CHUNK = 32768
_RECV_CHUNK = 65536


@dataclass
class ChannelOutput:
    """What came back from one script: ``status`` is -1 when no exit status arrived."""

    stdout: bytes
    stderr: bytes
    status: int
    timed_out: bool = False


class _Pump:
    """The bytes moving on one channel: the script going out, its stdout and stderr coming in."""

    def __init__(self, chan: paramiko.Channel, data: bytes) -> None:
        self.chan = chan
        self.pending = memoryview(data)
        self.out = bytearray()
        self.err = bytearray()

    def send_some(self) -> None:
        if self.pending and self.chan.send_ready():
            sent = self.chan.send(bytes(self.pending[:_SEND_CHUNK]))
            self.pending = self.pending[sent:]
            if not self.pending:
                self.chan.shutdown_write()

    def receive_ready(self) -> None:
        while self.chan.recv_ready():
            chunk = self.chan.recv(_RECV_CHUNK)
            if not chunk:
                break
            self.out += chunk
        while self.chan.recv_stderr_ready():
            chunk = self.chan.recv_stderr(_RECV_CHUNK)
            if not chunk:
                break
            self.err += chunk

    def drain(self) -> None:
        """After EOF: what is still buffered."""
        while self.chan.recv_ready():
            self.out += self.chan.recv(_RECV_CHUNK)
        while self.chan.recv_stderr_ready():
            self.err += self.chan.recv_stderr(_RECV_CHUNK)

    def output(self, status: int, *, timed_out: bool = False) -> ChannelOutput:
        return ChannelOutput(bytes(self.out), bytes(self.err), status, timed_out=timed_out)


class ScriptChannel:
    """Runs scripts on the target, one exec channel (one round trip) each."""

    def __init__(self, connection: SshConnection, options: SshOptions) -> None:
        self._connection = connection
        self._options = options

    def call(
        self,
        script: str,
        *,
        what: str,
        timeout: Optional[float] = None,
        done: Optional[Callable[[bytes], bool]] = None,
    ) -> ChannelOutput:
        """Run ``script`` (``timeout=None`` means ``command_timeout``); ``done(stdout)`` says the script has
        written all it will, so the exit status need not wait for EOF."""
        transport, chan = self._open(what)
        try:
            return self._exchange(transport, chan, script.encode("utf-8", "surrogateescape"), what, timeout, done)
        finally:
            chan.close()

    def open(self, what: str) -> tuple[paramiko.Transport, paramiko.Channel]:
        """A fresh exec channel of the connection (one retry on a fresh connection, as :meth:`call` does)."""
        return self._open(what)

    def _open(self, what: str) -> tuple[paramiko.Transport, paramiko.Channel]:
        transport = self._connection.transport()
        try:
            return transport, self._connection.open_session(transport)
        except TRANSPORT_ERRORS:
            # The transport died between calls without us noticing: nothing was sent yet, so reconnect once.
            self._connection.drop()
            transport = self._connection.transport()
            try:
                return transport, self._connection.open_session(transport)
            except TRANSPORT_ERRORS as exc:
                self._connection.drop()
                raise self._connection.lost(what, f"cannot open a channel: {exc}") from None

    def _exchange(
        self,
        transport: paramiko.Transport,
        chan: paramiko.Channel,
        data: bytes,
        what: str,
        timeout: Optional[float],
        done: Optional[Callable[[bytes], bool]],
    ) -> ChannelOutput:
        limit = self._options.command_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        pump = _Pump(chan, data)
        try:
            chan.settimeout(max(limit, 1.0))
            chan.exec_command(self._options.shell)
            if not self._pump_until_finished(pump, transport, deadline, done):
                return pump.output(-1, timed_out=True)
            # EOF: drain what is buffered, then the exit status normally follows at once
            pump.drain()
            chan.status_event.wait(max(0.0, min(deadline - time.monotonic(), 5.0)))
        except (socket.timeout, TimeoutError):
            return pump.output(-1, timed_out=True)
        except TRANSPORT_ERRORS as exc:
            self._connection.drop()
            raise self._connection.lost(what, str(exc) or type(exc).__name__) from None
        status = chan.exit_status if chan.status_event.is_set() else -1
        if not transport.is_active() and not (done is not None and done(bytes(pump.out))):
            self._connection.drop()
            raise self._connection.lost(what, "the SSH transport closed")
        return pump.output(status)

    @staticmethod
    def _pump_until_finished(
        pump: _Pump, transport: paramiko.Transport, deadline: float, done: Optional[Callable[[bytes], bool]]
    ) -> bool:
        """Move bytes until EOF, ``done``, or a dead transport (True), or until the deadline passes (False)."""
        chan = pump.chan
        while True:
            pump.send_some()
            pump.receive_ready()
            if chan.eof_received or chan.closed:
                return True
            if done is not None and chan.exit_status_ready() and done(bytes(pump.out)):
                return True  # finished; something the command left running still holds its stdout
            if not transport.is_active():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            select.select([chan], [], [], 0.005 if pump.pending else min(remaining, 1.0))
