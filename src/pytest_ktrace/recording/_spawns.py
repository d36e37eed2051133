"""Commands in the background on a cassette: recorded as a ``spawn`` step when they start and a ``spawn_end`` step
when the test first sees them ended (by a look at it, a wait, or a kill), and replayed at the same points.

A ``spawn_end`` step carries the command's status and output, ``how`` it ended (``exited`` by itself, or
``killed``) and ``running``: how often the test looked at it and saw it still running before. The replay answers
the same looks the same way, so a test that loops until its command has ended, or checks that it still runs,
reaches the same verdict as on the recording target; the events it caused come with the trace reads (``collect``
steps) like any others.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional

from .._errors import hide_for_ktrace_errors
from ..backends._base import BackgroundCommand, RunResult
from ._player import Player

__all__ = ["RecordedSpawn", "ReplayedSpawn"]

__tracebackhide__ = hide_for_ktrace_errors


class RecordedSpawn:
    """A real background command whose end is written down, with the looks that saw it still running."""

    def __init__(self, inner: BackgroundCommand, spawn: int, record: Callable[[dict[str, Any]], None]) -> None:
        self._inner = inner
        self._spawn = spawn
        self._record = record
        self._running = 0
        self._recorded = False

    @property
    def pid(self) -> int:
        return self._inner.pid

    @property
    def killed(self) -> bool:
        return self._inner.killed

    def poll(self) -> Optional[RunResult]:
        return self._seen(self._inner.poll(), "exited")

    def wait(self, timeout: Optional[float]) -> Optional[RunResult]:
        return self._seen(self._inner.wait(timeout), "exited")

    def output(self) -> tuple[str, str]:
        return self._inner.output()

    def kill(self, grace: float) -> RunResult:
        result = self._inner.kill(grace)
        self._seen(result, "killed" if self._inner.killed else "exited")
        return result

    def _seen(self, result: Optional[RunResult], how: str) -> Optional[RunResult]:
        if self._recorded:
            return result
        if result is None:
            self._running += 1
            return None
        self._recorded = True
        self._record(
            {
                "kind": "spawn_end",
                "spawn": self._spawn,
                "how": how,
                "running": self._running,
                "returncode": result.returncode,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "duration_s": round(result.duration_s, 6),
            }
        )
        return result


class ReplayedSpawn:
    """A background command of a cassette, on the fake: it runs until the test has seen it running as often as
    in the recording, then ends as it did there (its ``spawn_end`` must then be the next step)."""

    def __init__(self, player: Player, step: dict[str, Any], argv: Sequence[str], lock: threading.RLock) -> None:
        self._player = player
        self._spawn = int(step.get("spawn", 0))
        self._pid = int(step.get("pid") or 0)
        self._argv = tuple(argv)
        self._lock = lock
        self._running = 0
        self._killed = False
        self._result: Optional[RunResult] = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def killed(self) -> bool:
        return self._killed

    def poll(self) -> Optional[RunResult]:
        with self._lock:
            if self._result is None:
                if self._running < int(self._player.spawn_end(self._spawn).get("running", 0)):
                    self._running += 1
                    return None
                self._end()
            return self._result

    def wait(self, timeout: Optional[float]) -> Optional[RunResult]:
        return self.poll()  # the recording's wait ended here, or timed out here: no time passes on the fake

    def output(self) -> tuple[str, str]:
        result = self._result
        return (result.stdout, result.stderr) if result is not None else ("", "")

    def kill(self, grace: float) -> RunResult:
        with self._lock:
            if self._result is None:
                self._end()
            assert self._result is not None
            return self._result

    def _end(self) -> None:
        step = self._player.spawn_ended(self._spawn, self._argv)
        self._killed = step.get("how") == "killed"
        self._result = RunResult(
            argv=self._argv,
            returncode=int(step.get("returncode", 0)),
            stdout=str(step.get("stdout", "")),
            stderr=str(step.get("stderr", "")),
            pid=self._pid,
            duration_s=float(step.get("duration_s", 0.0)),
        )
