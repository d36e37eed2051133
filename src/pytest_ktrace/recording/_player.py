"""Replay: a cassette played back, step by step, to the fake backend, which checks every arm batch and command
against it (a test that changed is stale) and feeds the recorded trace lines to its tracefs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union, runtime_checkable

from .._errors import hide_for_ktrace_errors
from ..backends._base import Op, Read
from ._cassette import Cassette, CassetteNames, StaleCassette, describe_op, is_kernel_log_op, pushed, stored_stdin

__all__ = ["Player", "Replaying"]

__tracebackhide__ = hide_for_ktrace_errors


@runtime_checkable
class Replaying(Protocol):
    """A backend that replays cassettes (the fake): it is handed each test's player, or None between tests."""

    @property
    def player(self) -> Optional[Player]: ...

    def play(self, player: Optional[Player]) -> None: ...


class Player:
    """Replays one cassette on the fake backend: checks the test against it and feeds it the recorded events."""

    def __init__(self, cassette: Cassette, path: Path) -> None:
        self.cassette = cassette
        self.path = path
        self.names = CassetteNames()
        self.position = 0

    def stale(self, why: str) -> StaleCassette:
        return StaleCassette(f"cassette is stale: re-record on hardware ({self.path}): {why}")

    def _next(self, kind: str, what: str) -> dict[str, Any]:
        if self.position >= len(self.cassette.interactions):
            raise self.stale(f"the test now does more than was recorded: {what}")
        step = self.cassette.interactions[self.position]
        if step.get("kind") != kind:
            raise self.stale(f"step {self.position + 1} recorded a {step.get('kind')}, the test now does {what}")
        self.position += 1
        return step

    def check_arm(self, ops: Sequence[Op]) -> None:
        self.names.learn(ops)
        now = [describe_op(op, self.names) for op in ops if not isinstance(op, Read) and not is_kernel_log_op(op)]
        step = self._next("arm", "an arm batch")
        if step.get("ops") != now:
            recorded = {tuple(op) for op in step.get("ops", [])}
            changed = [" ".join(op) for op in now if tuple(op) not in recorded]
            gone = [" ".join(op) for op in step.get("ops", []) if op not in now]
            raise self.stale(
                "the probes changed since the recording"
                + (f"; now: {changed[:3]}" if changed else "")
                + (f"; recorded: {gone[:3]}" if gone else "")
            )

    def next_run(self, argv: Sequence[str], stdin: Optional[Union[str, bytes]], *, kind: str = "run") -> dict[str, Any]:
        """The recorded command (``kind`` ``run``, or ``spawn`` for one started in the background) that comes now;
        stale unless the same command with the same stdin."""
        shown = [self.names.normalize(arg) for arg in argv]
        step = self._next(kind, f"{kind} {shown}")
        if step.get("argv") != shown:
            raise self.stale(f"the command changed: recorded {step.get('argv')}, now {shown}")
        if step.get("stdin") != stored_stdin(stdin):
            raise self.stale(f"the stdin of {shown} changed since the recording")
        return step

    def spawn_end(self, spawn: int) -> dict[str, Any]:
        """The recorded end of the ``spawn``-th command started in the background, wherever it comes (not
        consumed): ``running`` says how often the test saw it still running before."""
        for step in self.cassette.interactions[self.position :]:
            if step.get("kind") == "spawn_end" and step.get("spawn") == spawn:
                return step
        raise self.stale(f"the recording has no end of background command {spawn} where the test now looks at it")

    def spawn_ended(self, spawn: int, argv: Sequence[str]) -> dict[str, Any]:
        """The recorded end of the ``spawn``-th background command, which must come now."""
        shown = [self.names.normalize(arg) for arg in argv]
        step = self._next("spawn_end", f"the end of {shown}")
        if step.get("spawn") != spawn:
            raise self.stale(f"step {self.position} recorded the end of another background command than {shown}")
        return step

    def check_push(self, data: bytes, path: str, mode: int) -> None:
        now = pushed(data, self.names.normalize(path), mode)
        step = self._next("push", f"push {now['path']}")
        if {key: step.get(key) for key in now} != now:
            raise self.stale(f"the file pushed changed: recorded {step.get('path')} {step.get('sha256')}, now {now}")

    def pending_collect(self) -> Optional[dict[str, Any]]:
        """The next step if it is a recorded collect (events that arrived while the test waited)."""
        if self.position < len(self.cassette.interactions):
            step = self.cassette.interactions[self.position]
            if step.get("kind") == "collect":
                self.position += 1
                return step
        return None

    def pending_hist(self) -> dict[str, str]:
        """The hist files a recorded read between commands saw (a sync point's), if that read comes next."""
        if self.position < len(self.cassette.interactions):
            step = self.cassette.interactions[self.position]
            if step.get("kind") == "hist":
                self.position += 1
                return self.recorded_hist(step)
        return {}

    def recorded_hist(self, step: dict[str, Any]) -> dict[str, str]:
        """The hist files read with ``step`` (a command's, or a read's), by tracefs path."""
        return {self.names.restore(path): self.names.restore(text) for path, text in step.get("hist", {}).items()}

    def recorded_lines(self, step: dict[str, Any]) -> list[str]:
        return [self.names.restore(line) for line in step.get("trace", [])]

    def modules_loaded(self, step: dict[str, Any]) -> list[tuple[str, list[str], dict[str, str]]]:
        """The modules that came during a recorded command: (name, functions, events with their format texts)."""
        loaded = step.get("modules", {}).get("loaded", {})
        return [
            (
                name,
                list(module.get("functions", [])),
                {key: self.names.restore(text) for key, text in module.get("events", {}).items()},
            )
            for name, module in loaded.items()
        ]

    def modules_unloaded(self, step: dict[str, Any]) -> list[str]:
        """The modules that went during a recorded command."""
        return list(step.get("modules", {}).get("unloaded", []))

    def recorded_format(self, group_event: str) -> Optional[str]:
        key = self.names.normalize(group_event)
        text = self.cassette.formats.get(key)
        return self.names.restore(text) if text is not None else None

    def finish(self) -> None:
        left = [step.get("kind") for step in self.cassette.interactions[self.position :]]
        # a trailing collect is what the failure report read after the last command: nothing the test did
        while left and left[-1] == "collect":
            left.pop()
        if left:
            raise self.stale(f"the test now stops before the recorded end ({len(left)} more step(s): {left})")
