"""``ktrace.spawn()``'s handle: a command that runs in the background on the target while the test goes on.

The command leads a session of its own on the target (``setsid``), so that it and every child it starts can be
ended together, by its process group, and nothing else: by :meth:`SpawnedProcess.kill`, or by the test's teardown
before anything of the test is disabled, removed or unloaded.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any, Callable, Optional

from ._checks import check_seconds
from ._errors import WaitTimeout, hide_for_ktrace_errors
from .backends._base import BackgroundCommand, RunResult

__all__ = ["KILL_GRACE_S", "SpawnedProcess"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

KILL_GRACE_S = 1.0  # SIGTERM, then this long for the process group to go before SIGKILL


class SpawnedProcess:
    """A command started in the background on the target by :meth:`TraceSession.spawn`, with every probe armed.

    It runs until it ends, :meth:`kill` ends it, or the test does: teardown sends its process group SIGTERM, then
    SIGKILL after a short grace, and reaps it, before the test's probes and events are disabled and before any
    module it loaded is unloaded. Events it causes are part of the test's trace like any others; after
    :meth:`wait` (or :meth:`kill`) the next read of the trace holds them all. As a context manager it is killed
    at the end of the ``with`` block."""

    def __init__(
        self,
        command: BackgroundCommand,
        argv: Sequence[str],
        *,
        target: str,
        timeout: Optional[float],
        ended: Callable[[], None],
        grace: float = KILL_GRACE_S,
    ) -> None:
        self._command = command
        self._argv = tuple(argv)
        self._target = target
        self._timeout = timeout
        self._ended = ended
        self._grace = grace
        self._result: Optional[RunResult] = None
        self._finished = False  # killed and reaped: nothing of its process group is left

    @property
    def pid(self) -> int:
        """Its pid on the target (also the id of its session and process group)."""
        return self._command.pid

    @property
    def argv(self) -> tuple[str, ...]:
        """The command, as it was started."""
        return self._argv

    @property
    def returncode(self) -> Optional[int]:
        """Its exit status once it has ended (as :meth:`TraceSession.run` reports one on this target), ``None``
        while it runs."""
        result = self._result if self._result is not None else self._note(self._command.poll())
        return None if result is None else result.returncode

    @property
    def stdout(self) -> str:
        """What it wrote to its standard output: so far while it runs, all of it once it has ended."""
        return self._result.stdout if self._result is not None else self._command.output()[0]

    @property
    def stderr(self) -> str:
        """What it wrote to its standard error: so far while it runs, all of it once it has ended."""
        return self._result.stderr if self._result is not None else self._command.output()[1]

    @property
    def _known_ended(self) -> bool:
        """Whether it is known to have ended, without a look at the target (:attr:`returncode` looks)."""
        return self._result is not None

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for it to end and return its exit status. ``timeout`` in seconds (default: the run timeout,
        ``--ktrace-timeout``); when it passes, :class:`~pytest_ktrace.WaitTimeout` is raised and the command is
        left running."""
        __tracebackhide__ = True
        check_seconds("wait() timeout", timeout, optional=True)
        limit = self._timeout if timeout is None else timeout
        if self._result is None:
            self._note(self._command.wait(limit))
        if self._result is None:
            command = shlex.join(self._argv)
            raise WaitTimeout(
                f"spawned command {command!r} (pid {self.pid}) is still running on {self._target} after {limit} s; "
                "it is left running: kill() ends it, and so does the test's teardown",
                host=self._target,
                command=command,
                timeout=limit,
                pid=self.pid,
            )
        return self._result.returncode

    def kill(self) -> int:
        """End it and its children (its process group: SIGTERM, then SIGKILL after a short grace), reap it, and
        return its exit status. Calling it again, or after it ended, only sweeps what is left of its group once
        and returns the same status."""
        __tracebackhide__ = True
        if not self._finished:
            self._finished = True  # a kill that fails is not retried: teardown reports it once
            result = self._command.kill(self._grace)
            self._note(result)
        assert self._result is not None
        return self._result.returncode

    def _note(self, result: Optional[RunResult]) -> Optional[RunResult]:
        if result is not None and self._result is None:
            self._result = result
            self._ended()
        return result

    def __enter__(self) -> SpawnedProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()

    def __repr__(self) -> str:
        state = "running" if self._result is None else f"ended with status {self._result.returncode}"
        return f"<SpawnedProcess pid {self.pid} {list(self._argv)!r} on {self._target}: {state}>"
