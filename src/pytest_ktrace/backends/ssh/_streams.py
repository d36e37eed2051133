"""Streaming a remote ``trace_pipe``: :class:`StreamReaders` starts ``dd`` on a dedicated exec channel of the
connection (see :func:`.._shell.render_stream`; busybox is enough), which prints its pid first, and ends such
readers by pid through another channel, TERM then KILL. A reader that could not be ended because the connection
dropped is remembered in ``stale_readers`` and ended first on the next connection: it would keep its instance
busy. :class:`SshTraceStream` is the consuming reader handed to the caller.
"""

from __future__ import annotations

import codecs
import socket
import threading
import time
from typing import Optional, Sequence

import paramiko

from ..._errors import ConnectionLost, KtraceError, hide_for_ktrace_errors
from .. import _shell
from ._channel import ScriptChannel
from ._config import SshOptions
from ._connection import TRANSPORT_ERRORS, SshConnection

__all__ = ["SshTraceStream", "StreamReaders"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_STREAM_CHUNK = 1 << 20  # at most this much per SshTraceStream.read
_RECV_CHUNK = 65536


class StreamReaders:
    """Opens streams and ends their remote ``dd`` readers."""

    def __init__(
        self,
        connection: SshConnection,
        channel: ScriptChannel,
        options: SshOptions,
        lock: threading.RLock,
        *,
        host: str,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._options = options
        self._lock = lock  # the backend's: a stream is closed from the thread that reads it
        self.host = host
        # readers (pid, path) that could not be ended (connection dropped): ended first on reconnect
        self.stale_readers: list[tuple[int, str]] = []

    def open(self, full: str, path: str) -> SshTraceStream:
        """Stream ``full`` (the absolute path of ``path``, which names it in messages)."""
        command = ("sudo -n " if self._options.sudo else "") + "sh -c " + _shell.quote(_shell.render_stream(full))
        transport = self._connection.transport()
        timeout = self._options.connect_timeout
        try:
            chan = self._connection.open_session(transport)
            chan.exec_command(command)
            chan.shutdown_write()
            chan.settimeout(timeout)
            head = _first_line(chan, time.monotonic() + timeout)
        except TRANSPORT_ERRORS as exc:
            self._connection.drop()
            raise self._connection.lost(f"opening the stream of {path}", str(exc) or type(exc).__name__) from None
        line, _, early = head.partition(b"\n")
        if not line.strip().isdigit():
            status = chan.exit_status if chan.status_event.wait(1.0) else -1
            stderr = chan.recv_stderr(4096).decode("utf-8", "replace").strip() if chan.recv_stderr_ready() else ""
            chan.close()
            reason = "it is missing or not readable" if status == 98 else (stderr or f"exit status {status}")
            raise KtraceError(f"cannot stream {full} on {self.host}: {reason}")
        return SshTraceStream(self, chan, int(line.strip()), full, early)

    def end(self, readers: Sequence[tuple[int, str]]) -> None:
        """End stream readers on a second channel (TERM, then KILL if one is still there); remembered for the
        next connection when the target is unreachable."""
        with self._lock:
            try:
                for signal in ("TERM", "KILL"):
                    script = _shell.render_stream_kill(readers, signal=signal)
                    ex = self._channel.call(
                        script, what="ending the stream reader", timeout=self._options.connect_timeout
                    )
                    alive = {int(w) for w in ex.stdout.decode(errors="replace").split() if w.isdigit()}
                    readers = [reader for reader in readers if reader[0] in alive]
                    if not readers:
                        return
            except ConnectionLost:
                self.stale_readers.extend(r for r in readers if r not in self.stale_readers)
                raise
            raise KtraceError(
                f"stream reader(s) {', '.join(str(pid) for pid, _ in readers)} on {self.host} survived SIGKILL"
            )

    def end_stale(self) -> None:
        """End the readers left running by a dropped connection (one round trip; none if there are none)."""
        if not self.stale_readers:
            return
        readers = list(self.stale_readers)
        self._channel.call(_shell.render_stream_kill(readers), what="ending stale stream readers")
        del self.stale_readers[: len(readers)]

    def lost(self, what: str, cause: str) -> ConnectionLost:
        return self._connection.lost(what, cause)


def _first_line(chan: paramiko.Channel, deadline: float) -> bytes:
    """What the reader printed until its first newline (its pid), or until it stopped or the deadline passed."""
    head = b""
    while b"\n" not in head and time.monotonic() < deadline:
        try:
            piece = chan.recv(4096)
        except socket.timeout:
            break
        if not piece:
            break
        head += piece
    return head


class SshTraceStream:
    """``trace_pipe`` of a remote instance, streamed by ``dd`` on a dedicated exec channel of the backend's
    transport. :meth:`close` ends exactly that ``dd`` (by the pid it printed) through another channel."""

    def __init__(self, readers: StreamReaders, chan: paramiko.Channel, pid: int, path: str, early: bytes) -> None:
        self._readers = readers
        self._chan: Optional[paramiko.Channel] = chan
        self.pid = pid
        self.path = path
        self._early = early
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")

    def read(self, timeout: float) -> str:
        chan = self._chan
        if chan is None:
            raise KtraceError(f"stream {self.path} on {self._readers.host} is closed")
        data = bytearray(self._early)
        self._early = b""
        try:
            if not data:
                chan.settimeout(max(timeout, 0.001))
                try:
                    first = chan.recv(_RECV_CHUNK)
                except socket.timeout:
                    return ""
                if not first:
                    raise self._ended()
                data += first
            while len(data) < _STREAM_CHUNK and chan.recv_ready():
                more = chan.recv(_RECV_CHUNK)
                if not more:
                    break
                data += more
        except TRANSPORT_ERRORS as exc:
            raise self._readers.lost(f"streaming {self.path}", str(exc) or type(exc).__name__) from None
        return self._decoder.decode(bytes(data))

    def _ended(self) -> KtraceError:
        chan = self._chan
        if chan is not None and not chan.get_transport().is_active():
            return self._readers.lost(f"streaming {self.path}", "the SSH transport closed")
        status = chan.exit_status if chan is not None and chan.status_event.wait(1.0) else -1
        return KtraceError(
            f"the trace_pipe reader (dd, pid {self.pid}) on {self._readers.host} ended unexpectedly "
            f"(exit status {status}) while streaming {self.path}"
        )

    def close(self) -> None:
        chan, self._chan = self._chan, None
        if chan is None:
            return
        try:
            # a status of -1 is paramiko's for "the channel died with the transport": dd may well still run
            if not (chan.exit_status_ready() and chan.exit_status != -1):
                self._readers.end([(self.pid, self.path)])  # checked gone, or raises
                if chan.get_transport().is_active():
                    chan.status_event.wait(5.0)  # let the channel see dd's exit before closing it
        finally:
            chan.close()
