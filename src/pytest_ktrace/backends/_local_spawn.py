"""Background commands on this machine (the local backend's ``spawn``).

The command starts in a new session (``start_new_session``), so its pid is also its process group id. Its exit
is watched with ``waitid(WNOWAIT)``, which leaves it a zombie: its pid, and so its process group id, cannot be
reused by anyone while we may still signal that group. It is reaped only after the last signal, by
:meth:`LocalBackgroundCommand.kill`. Its output is drained by threads as it comes, so a chatty command never
blocks on a full pipe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Optional, Union

from .._errors import KtraceError, TargetError, hide_for_ktrace_errors
from ._base import RunResult

__all__ = ["LocalBackgroundCommand", "group_members", "pid_announcer"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_DRAIN_S = 2.0  # after it ended: how long a child that still holds its stdout may delay the end of its output
_GONE_S = 5.0  # after SIGKILL: how long the group may take to be gone
_POLL_S = 0.01


def pid_announcer(targets: Sequence[str]) -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` writing the child's pid to each of ``targets`` (tracefs pid files), or None for none.

    It runs in the child between fork and exec, so tracing follows exactly that process from its start.
    """
    if not targets:
        return None

    def announce_pid() -> None:
        for target in targets:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)

    return announce_pid


def group_members(pgid: int) -> list[int]:
    """The live processes (not zombies) of process group ``pgid`` on this machine, from ``/proc``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after its last ")"
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


class _Drain(threading.Thread):
    """Reads one pipe to its end."""

    def __init__(self, pipe: IO[bytes], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._pipe = pipe
        self._lock = threading.Lock()
        self._data = bytearray()

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while True:
                chunk = self._pipe.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    break
                with self._lock:
                    self._data += chunk

    def text(self) -> str:
        with self._lock:
            return bytes(self._data).decode(errors="surrogateescape")  # byte-exact, like run()


class LocalBackgroundCommand:
    """A command running on this machine in a session of its own (see the module docstring)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        announce: Optional[Sequence[str]] = None,
        stdin: Optional[Union[str, bytes]] = None,
    ) -> None:
        self.argv = tuple(argv)
        targets = list(announce or ())

        self._started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=pid_announcer(targets),
                start_new_session=True,
            )
        except OSError as exc:
            raise TargetError(
                f"spawn(): cannot start {list(argv)!r} on local: {exc.strerror or exc}",
                host="local",
                command=" ".join(argv),
                cause=exc.strerror or type(exc).__name__,
            ) from None
        except subprocess.SubprocessError:
            raise TargetError(
                f"spawn(): could not write the pid of {list(argv)!r} to {', '.join(targets)} on local; "
                "the command was not run",
                host="local",
                command=" ".join(argv),
                cause="pid file write failed",
            ) from None
        self._killed = False
        self._reaped: Optional[RunResult] = None
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._out = _Drain(self._proc.stdout, f"ktrace-spawn-{self.pid}-stdout")
        self._err = _Drain(self._proc.stderr, f"ktrace-spawn-{self.pid}-stderr")
        self._out.start()
        self._err.start()
        self._exit = threading.Event()
        self._status: Optional[int] = None
        self._ended_at = 0.0
        threading.Thread(target=self._watch, name=f"ktrace-spawn-{self.pid}-exit", daemon=True).start()
        if stdin is not None:
            data = stdin.encode("utf-8", "surrogateescape") if isinstance(stdin, str) else stdin
            threading.Thread(
                target=self._feed, args=(data,), name=f"ktrace-spawn-{self.pid}-stdin", daemon=True
            ).start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def killed(self) -> bool:
        return self._killed

    def _feed(self, data: bytes) -> None:
        pipe = self._proc.stdin
        assert pipe is not None
        with contextlib.suppress(OSError):  # it may end, or close its stdin, before reading it all
            pipe.write(data)
        with contextlib.suppress(OSError):
            pipe.close()

    def _watch(self) -> None:
        """Learn its exit status without reaping it (WNOWAIT): its pid stays its own until kill() reaps it."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # reaped by someone else: nothing more can be learnt
            info = None
        if info is not None:
            exited = info.si_code == os.CLD_EXITED
            self._status = info.si_status if exited else -info.si_status  # as subprocess reports a signal
        self._ended_at = time.monotonic()
        self._exit.set()

    def _result(self, drain: float) -> RunResult:
        for reader in (self._out, self._err):
            reader.join(drain)
        return RunResult(
            argv=self.argv,
            returncode=self._status if self._status is not None else -1,
            stdout=self._out.text(),
            stderr=self._err.text(),
            pid=self.pid,
            duration_s=self._ended_at - self._started,
        )

    def poll(self) -> Optional[RunResult]:
        if self._reaped is not None:
            return self._reaped
        return self._result(_DRAIN_S) if self._exit.is_set() else None

    def wait(self, timeout: Optional[float]) -> Optional[RunResult]:
        if self._reaped is not None:
            return self._reaped
        return self._result(_DRAIN_S) if self._exit.wait(timeout) else None

    def output(self) -> tuple[str, str]:
        return self._out.text(), self._err.text()

    def kill(self, grace: float) -> RunResult:
        if self._reaped is not None:
            return self._reaped
        try:
            self._end_group(grace)
        finally:
            # Every signal is sent: reap it now (only now may its pid, and so its group id, be reused).
            self._exit.wait(_GONE_S)
            with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                self._proc.wait(_GONE_S)
            self._reaped = self._result(_DRAIN_S)
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()  # a reader still blocked on it (a child outside the group holds it) ends
        return self._reaped

    def _end_group(self, grace: float) -> None:
        """SIGTERM to the group, SIGKILL to what is left after ``grace``; raises if something survives."""
        pgid = self.pid  # its own session: the group id is its pid, held by its unreaped zombie at the least
        if not self._signal(pgid, signal.SIGTERM):
            return
        if self._gone(pgid, grace):
            return
        self._signal(pgid, signal.SIGKILL)
        if not self._gone(pgid, _GONE_S):
            raise KtraceError(
                f"process(es) {group_members(pgid)} of spawned command {list(self.argv)!r} (process group {pgid}) "
                f"on local survived SIGKILL for {_GONE_S} s"
            )

    def _signal(self, pgid: int, sig: signal.Signals) -> bool:
        """Signal the group if it has live members; whether it had. Ending it here counts as killed."""
        if not group_members(pgid):
            return False
        if not self._exit.is_set():
            self._killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        return True

    @staticmethod
    def _gone(pgid: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while group_members(pgid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True
