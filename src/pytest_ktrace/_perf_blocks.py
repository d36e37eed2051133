"""``ktrace.perf_stat()`` and ``ktrace.profile()`` blocks: while one is open, every ``ktrace.run(...)`` command is
wrapped in ``perf stat`` / ``perf record -g`` on the target, and its output is unwrapped into the block."""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator, Sequence
from typing import Callable, Optional, Union

import pytest

from ._checks import check_int
from ._errors import KtraceError, TargetError, hide_for_ktrace_errors
from ._perf import PerfStat, Profile, UnsupportedPolicy, parse_stat, unwrap, wrap_record, wrap_stat
from .backends._base import RunResult, TargetInfo

__all__ = ["PerfBlocks"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_Block = Union[PerfStat, Profile]


class PerfBlocks:
    """The perf blocks of one test: at most one open at a time; the finished profiles are kept for the report."""

    def __init__(self, target: Callable[[], TargetInfo]) -> None:
        self._target = target
        self.active: Optional[_Block] = None
        self.profiles: list[Profile] = []

    @contextlib.contextmanager
    def stat(self, events: Sequence[str], *, system_wide: bool, unsupported: UnsupportedPolicy) -> Iterator[PerfStat]:
        if isinstance(events, str) or not isinstance(events, Sequence) or not events:
            raise KtraceError(f"perf_stat() events must be a non-empty list of perf event names, got {events!r}")
        for event in events:
            if not isinstance(event, str) or not event.strip() or any(c in event for c in ",\n\0 "):
                raise KtraceError(
                    f"perf_stat() event {event!r} is not one perf event name (no commas, blanks or newlines; "
                    "give each event as its own list item)"
                )
        if unsupported not in ("skip", "fail", "ignore"):
            raise KtraceError(f"perf_stat() unsupported= must be 'skip', 'fail' or 'ignore', got {unsupported!r}")
        target = self._target()
        stat = PerfStat(events, system_wide=bool(system_wide), target=target.name)
        with self._open(stat, "perf_stat()"):
            yield stat
        missing = stat.unsupported
        if missing and unsupported != "ignore":
            what = ", ".join(f"{event} is {status}" for event, status in missing.items())
            message = f"perf stat on {target.name} ({target.release} {target.arch}): {what}"
            if unsupported == "skip":
                pytest.skip(message)
            raise AssertionError(message)

    @contextlib.contextmanager
    def profile(self, *, frequency: int, system_wide: bool, label: str) -> Iterator[Profile]:
        check_int("profile() frequency", frequency, 1, 100_000)
        prof = Profile(frequency=frequency, system_wide=bool(system_wide), target=self._target().name, label=label)
        with self._open(prof, "profile()"):
            yield prof
        self.profiles.append(prof)

    @contextlib.contextmanager
    def _open(self, block: _Block, what: str) -> Iterator[None]:
        if self.active is not None:
            raise KtraceError(f"{what} inside another perf_stat()/profile() block: one perf block at a time")
        self.active = block
        try:
            yield
        finally:
            self.active = None
        if not block.runs:
            raise KtraceError(
                f"{what} block ran no command: perf measures the commands started with ktrace.run(...) inside it"
            )

    def wrap(self, argv: list[str], pid_files: list[str]) -> tuple[list[str], list[str]]:
        """The command to run instead of ``argv``, and the pid files the backend still has to write (none: the
        wrapper hands the pid files to the command itself, so ``scope="run"`` follows it, not perf)."""
        block = self.active
        if block is None:
            return argv, pid_files
        inside = [posixpath.join(self._target().tracefs, path) for path in pid_files]
        if isinstance(block, PerfStat):
            return wrap_stat(argv, block.events, system_wide=block.system_wide, pid_files=inside), []
        return wrap_record(argv, frequency=block.frequency, system_wide=block.system_wide, pid_files=inside), []

    def unwrap(self, result: RunResult) -> RunResult:
        """The command's own result; perf's output goes into the open block."""
        block = self.active
        if block is None:
            return result
        target = self._target().name
        command, output = unwrap(result)
        tool = "perf stat" if isinstance(block, PerfStat) else "perf record"
        if output.missing:
            pytest.skip(
                f"perf is not installed on {target}: {tool} needs it on the target "
                "(Debian/Ubuntu: apt install linux-perf; Fedora: dnf install perf)"
            )
        if output.pid_file_error:
            raise TargetError(
                f"could not hand the pid of {list(command.argv)} to the trace filter on {target}: "
                f"{output.pid_file_error}",
                host=target,
                cause="pid file refused",
            )
        if isinstance(block, PerfStat):
            values = parse_stat(output.text)
            if not values:
                raise KtraceError(
                    f"perf stat on {target} counted nothing (exit status {command.returncode}): "
                    f"{command.stderr.strip()[-1500:] or 'no error output'}"
                )
            block.add(values)
        elif output.returncode is None:
            raise KtraceError(
                f"perf record on {target} did not run the command: "
                f"{command.stderr.strip()[-1500:] or 'no error output'}"
            )
        else:
            block.add(output.text)
        return command
