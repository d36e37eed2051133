"""The backend's work as POSIX sh scripts, one round trip each: :meth:`ShellBatches.describe`, a batch of tracefs
operations (:meth:`~ShellBatches.apply`), a command (:meth:`~ShellBatches.run`) and the kill of a timed-out one.
Each script is rendered by :mod:`.._shell` with a fresh nonce, run by a :class:`~._channel.ScriptChannel`, and
its framed reply parsed back; what the reply says went wrong (the shell did not start, sudo wants a password,
tracefs is missing or not accessible, a stdin or pid file could not be written, the script ended early) becomes
an error naming the host. The tracefs mount point found by the first script is the only one tried afterwards.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from typing import Optional, Sequence, Union

from ..._errors import (
    CommandTimeout,
    KtraceError,
    TargetDiskFull,
    TargetError,
    TracefsUnavailable,
    hide_for_ktrace_errors,
)
from .. import _shell
from .._base import Op, OpResult, RunResult, TargetInfo
from .._features import FEATURE_FILES, MOUNT_HINT, features_from
from ._channel import ChannelOutput, ScriptChannel
from ._config import SshOptions
from ._connection import SshConnection

__all__ = ["ShellBatches"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals


def _closing_frame(nonce: str) -> bytes:
    return b"\n" + nonce.encode() + b" END\n"


class ShellBatches:
    """Describe, apply and run on the target through its shell."""

    def __init__(
        self,
        channel: ScriptChannel,
        connection: SshConnection,
        options: SshOptions,
        *,
        host: str,
        tracefs: Optional[str],
    ) -> None:
        self._channel = channel
        self._connection = connection
        self._options = options
        self._host = host
        self._candidates: tuple[str, ...] = (tracefs,) if tracefs else _shell.DEFAULT_TRACEFS
        self._info: Optional[TargetInfo] = None

    def describe(self) -> TargetInfo:
        if self._info is not None:
            return self._info
        nonce = _shell.new_nonce()
        paths = list(FEATURE_FILES.values())
        script = _shell.render_describe(nonce, paths, self._candidates)
        ex = self._channel.call(script, what="describe")
        out = _shell.parse_describe(ex.stdout, nonce)
        self._check_started(out.started, ex, "describe")
        if out.tracefs is None:
            raise self._tracefs_error(out.problem)
        if not out.complete:
            raise self._connection.lost("describe", "the script ended early")
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

    def apply(self, ops: list[Op], *, stop_on_error: bool) -> list[OpResult]:
        if not ops:
            return []
        nonce = _shell.new_nonce()
        try:
            script = _shell.render_batch(ops, nonce, candidates=self._candidates, stop_on_error=stop_on_error)
        except ValueError as exc:
            raise TargetError(
                f"cannot send these operations to {self._host}: {exc}", host=self._host, cause=str(exc)
            ) from None
        end = _closing_frame(nonce)
        what = f"a batch of {len(ops)} tracefs operations"
        ex = self._channel.call(script, what=what, done=lambda out: end in out)
        if ex.timed_out:
            raise CommandTimeout(
                f"{what} did not finish within {self._options.command_timeout} s on {self._host}",
                host=self._host,
                command=f"apply({len(ops)} ops)",
                timeout=self._options.command_timeout,
            )
        out = _shell.parse_batch(ops, ex.stdout, nonce)
        self._check_started(out.started, ex, "apply")
        if out.tracefs is None:
            raise self._tracefs_error(out.problem)
        self._candidates = (out.tracefs,)
        if not out.complete:
            raise self._connection.lost(what, f"the script ended after {len(out.results)} of them")
        return out.results

    def run(
        self,
        argv: tuple[str, ...],
        *,
        timeout: Optional[float],
        pid_files: Sequence[str],
        stdin: Optional[Union[str, bytes]],
        after: Sequence[Op],
        before: Sequence[Op] = (),
        settle: Sequence[Op] = (),
        unchanged: Sequence[tuple[str, str]] = (),
    ) -> RunResult:
        limit = self._options.command_timeout if timeout is None else timeout
        nonce = _shell.new_nonce()
        try:
            script = _shell.render_run(
                argv,
                nonce,
                pid_files=pid_files,
                stdin=stdin,
                candidates=self._candidates,
                after=after,
                before=before,
                settle=settle,
                unchanged=unchanged,
            )
        except ValueError as exc:
            raise TargetError(
                f"cannot run {list(argv)!r} on {self._host}: {exc}",
                host=self._host,
                command=" ".join(argv),
                cause=str(exc),
            ) from None
        end = _closing_frame(nonce)
        started = time.monotonic()
        ex = self._channel.call(script, what=f"run {list(argv)!r}", timeout=limit, done=lambda out: end in out)
        out = _shell.parse_run(ex.stdout, nonce, after, before, settle)
        duration = time.monotonic() - started
        command = shlex.join(argv)
        if ex.timed_out:
            raise self._timed_out(command, limit, out.pid or out.child)
        if out.changed:  # a file changed since it was last read: nothing was applied or run
            self._check_started(out.started, ex, f"run {command!r}")
            changed = tuple(unchanged[index][0] for index in out.changed)
            return RunResult(argv, -1, "", "", 0, duration, changed=changed)
        if before and (len(out.before) < len(before) or not out.before[-1].ok):
            # the command never ran: the arming batch stopped at its first failure
            self._check_started(out.started, ex, f"run {command!r}")
            if out.problem is not None:
                raise self._tracefs_error(out.problem)
            if not out.complete:
                raise self._connection.lost(f"run {command!r}", f"the script ended after {len(out.before)} operations")
            return RunResult(argv, -1, "", "", 0, duration, before=tuple(out.before), settled=tuple(out.settled))
        returncode = self._check_run(out, ex, command)
        return RunResult(
            argv=argv,
            returncode=returncode,
            stdout=_shell.decode(out.stdout),
            stderr=_shell.decode(ex.stderr),
            pid=out.pid or out.child or 0,
            duration_s=duration,
            after=tuple(out.after),
            before=tuple(out.before),
            settled=tuple(out.settled),
        )

    def kill(self, pid: int) -> None:
        """Kill the timed-out command's process group on a second channel (one more round trip)."""
        # if the connection is gone too, the CommandTimeout being raised still says what matters
        with contextlib.suppress(KtraceError):
            self._channel.call(_shell.render_kill(pid), what=f"kill {pid}", timeout=self._options.connect_timeout)

    # --- what a reply says went wrong -----------------------------------------------------------------------

    def _timed_out(self, command: str, limit: float, victim: Optional[int]) -> CommandTimeout:
        if victim:
            self.kill(victim)
        return CommandTimeout(
            f"command {command!r} did not finish within {limit} s on {self._host}"
            + (f"; killed its process group (pid {victim})" if victim else ""),
            host=self._host,
            command=command,
            timeout=limit,
        )

    @property
    def candidates(self) -> tuple[str, ...]:
        """Where tracefs may be mounted on the target (only where the first script found it, once it has run)."""
        return self._candidates

    def _check_run(self, out: _shell.RunOutput, ex: ChannelOutput, command: str) -> int:
        """The command's exit status, or the error its reply shows."""
        self.check_start(out, ex, command, what="run")
        if not out.complete or out.returncode is None:
            raise self._connection.lost(f"run {command!r}", "the command's shell ended without a status")
        return out.returncode

    def check_start(self, out: _shell.RunOutput, ex: ChannelOutput, command: str, *, what: str) -> None:
        """Raise the error the reply of a ``run`` or ``spawn`` script shows before its command ran, if any."""
        self._check_started(out.started, ex, f"{what} {command!r}")
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

    def _check_started(self, started: bool, ex: ChannelOutput, what: str) -> None:
        if started:
            return
        stderr = _shell.decode(ex.stderr).strip()
        endpoint = self._connection.endpoint
        user = endpoint.user if endpoint else "?"
        shell = self._options.shell
        if self._options.sudo and _shell.sudo_needs_password(stderr):
            raise TargetError(
                f"sudo on {self._host} wants a password for user {user} ({stderr.splitlines()[-1]}): "
                f"configure NOPASSWD for {user} (e.g. '{user} ALL=(ALL) NOPASSWD: ALL' in /etc/sudoers.d/), "
                "or connect as root without --ktrace-sudo",
                host=self._host,
                command=shell,
                cause="sudo needs a password",
            )
        raise TargetError(
            f"the shell on {self._host} did not run the {what} script (`{shell}` exited "
            f"{ex.status}): {stderr[-500:] or 'no error output'}",
            host=self._host,
            command=shell,
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
