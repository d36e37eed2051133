"""Recording: a real backend wrapped so that everything one test did and saw is written down, unchanged on
the way through."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .._errors import KtraceError, hide_for_ktrace_errors
from .._kernel_log import TAINT_READ
from ..backends._base import (
    Backend,
    FileFetching,
    FilePushing,
    Op,
    OpResult,
    Read,
    RunResult,
    SharedFilesystem,
    Spawning,
    TargetInfo,
    TraceStream,
)
from ._cassette import (
    Cassette,
    CassetteNames,
    describe_op,
    is_arm_batch,
    is_kernel_log_op,
    pushed,
    stored_stdin,
    trace_lines,
)
from ._module_changes import MODULES_READ, loads_modules, module_names, read_arrivals
from ._spawns import RecordedSpawn

__all__ = ["RecordingBackend"]

__tracebackhide__ = hide_for_ktrace_errors


def _checked(op: Op) -> bool:
    """Whether replay checks ``op`` of an arm batch: what the test defined, not reads or the kernel log."""
    return not isinstance(op, Read) and not is_kernel_log_op(op)


class RecordingBackend:
    """A real backend that also writes down what one test did and saw. Everything passes through unchanged."""

    def __init__(self, inner: Backend, test: str) -> None:
        self.inner = inner
        self.names = CassetteNames()
        info = inner.describe()
        self.cassette = Cassette(
            test=test,
            target={
                "name": info.name,
                "backend": info.backend,
                "release": info.release,
                "arch": info.arch,
                "features": sorted(info.features),
            },
            recorded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self._seen: list[str] = []
        self._spawns = 0  # commands started in the background so far
        self._modules: Optional[frozenset[str]] = None  # loaded modules after the last command, once known

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def round_trips(self) -> int:
        return self.inner.round_trips

    @property
    def files_are_local(self) -> bool:
        return isinstance(self.inner, SharedFilesystem) and self.inner.files_are_local

    def describe(self) -> TargetInfo:
        return self.inner.describe()

    def _delta(self, text: str) -> list[str]:
        lines = trace_lines(text)
        # when the ring buffer wrapped or was cleared, keep everything that is there now
        new = lines[len(self._seen) :] if lines[: len(self._seen)] == self._seen else lines
        self._seen = lines
        return [self.names.normalize(line) for line in new]

    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        ops = list(ops)
        arming = is_arm_batch(ops)
        if arming:
            self.names.learn(ops)
        results = self.inner.apply(ops, stop_on_error=stop_on_error)
        if arming:
            self.cassette.interactions.append(
                {"kind": "arm", "ops": [describe_op(op, self.names) for op in ops if _checked(op)]}
            )
        hist: dict[str, str] = {}
        for result in results:
            op = result.op
            if isinstance(op, Read) and result.ok and op.path.endswith("/hist"):
                hist[self.names.normalize(op.path)] = self.names.normalize(result.data)  # replayed as it was read
            elif isinstance(op, Read) and result.ok and op.path.endswith("/format"):
                key = self.names.normalize(op.path[len("events/") : -len("/format")])
                self.cassette.formats[key] = self.names.normalize(result.data)
            elif isinstance(op, Read) and result.ok and op.path.endswith("/trace") and not arming:
                delta = self._delta(result.data)
                if delta:
                    self.cassette.interactions.append({"kind": "collect", "trace": delta})
        if hist:
            self.cassette.interactions.append({"kind": "hist", "hist": hist})
        return results

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: Optional[float] = None,
        pid_files: Sequence[str] = (),
        stdin: Optional[Union[str, bytes]] = None,
        after: Sequence[Op] = (),
    ) -> RunResult:
        if self._modules is None:
            self._modules = module_names(self.inner.apply([MODULES_READ])[0].data)
        events_before = None
        if loads_modules(argv):
            listed = self.inner.apply([Read("available_events")])[0]
            events_before = frozenset(listed.data.splitlines()) if listed.ok else None
        # the module list travels with the command; the test sees its own results only
        result = self.inner.run(argv, timeout=timeout, pid_files=pid_files, stdin=stdin, after=[*after, MODULES_READ])
        modules_now = module_names(result.after[-1].data) if result.after and result.after[-1].ok else self._modules
        result = dataclasses.replace(result, after=result.after[: len(after)])
        trace = next((r.data for r in result.after if r.ok and r.op.path.endswith("/trace")), None)
        step: dict[str, Any] = {
            "kind": "run",
            "argv": [self.names.normalize(arg) for arg in argv],
            "stdin": stored_stdin(stdin),
            "returncode": result.returncode,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "pid": result.pid,
            "duration_s": round(result.duration_s, 6),
            "trace": self._delta(trace) if trace is not None else [],
        }
        hist = {
            self.names.normalize(r.op.path): self.names.normalize(r.data)
            for r in result.after
            if r.ok and isinstance(r.op, Read) and r.op.path.endswith("/hist")
        }
        if hist:
            step["hist"] = hist  # the kernel's tables: replayed as read, not recomputed from the trace
        taint = next((r.data.strip() for r in result.after if r.ok and r.op == TAINT_READ), None)
        if taint:
            step["taint"] = int(taint)
        changes = self._module_changes(modules_now, events_before)
        if changes:
            step["modules"] = changes
        self.cassette.interactions.append(step)
        return result

    def _module_changes(self, now: frozenset[str], events_before: Optional[frozenset[str]]) -> dict[str, Any]:
        assert self._modules is not None
        came, gone = now - self._modules, self._modules - now
        self._modules = now
        changes: dict[str, Any] = {}
        if came:
            arrivals = read_arrivals(self.inner, came, events_before)
            changes["loaded"] = {
                arrival.name: {
                    "functions": list(arrival.functions),
                    "events": {key: self.names.normalize(text) for key, text in arrival.events.items()},
                }
                for arrival in arrivals
            }
        if gone:
            changes["unloaded"] = sorted(gone)
        return changes

    def spawn(
        self, argv: Sequence[str], *, pid_files: Sequence[str] = (), stdin: Optional[Union[str, bytes]] = None
    ) -> RecordedSpawn:
        """Passed through; its start is recorded now, its end when the test first sees it (see :mod:`._spawns`)."""
        if not isinstance(self.inner, Spawning):
            raise KtraceError(
                f"spawn() needs a backend that can start commands in the background (the Spawning capability), "
                f"and {self.inner.name} ({type(self.inner).__name__}) has none"
            )
        command = self.inner.spawn(argv, pid_files=pid_files, stdin=stdin)
        self._spawns += 1
        self.cassette.interactions.append(
            {
                "kind": "spawn",
                "spawn": self._spawns,
                "argv": [self.names.normalize(arg) for arg in argv],
                "stdin": stored_stdin(stdin),
                "pid": command.pid,
            }
        )
        return RecordedSpawn(command, self._spawns, self.cassette.interactions.append)

    def open_stream(self, path: str) -> TraceStream:
        raise KtraceError(
            "a cassette records the trace read with each command, so a recorded test (--ktrace-record) cannot "
            "stream trace_pipe: record it without stream=True / --ktrace-stream"
        )

    def fetch_file(self, path: str) -> bytes:
        """Passed through unrecorded (the BTF a test's names need is recorded as resolutions, see
        :mod:`pytest_ktrace.btf._names`)."""
        if isinstance(self.inner, FileFetching):
            return self.inner.fetch_file(path)
        result = self.inner.run(["cat", "--", path])
        if result.returncode != 0:
            raise OSError(f"cannot read {path} on {self.inner.name}: {result.stderr.strip()}")
        return result.stdout.encode("utf-8", "surrogateescape")

    def push_file(self, data: bytes, path: str, mode: int) -> None:
        """Passed through, and recorded as what was pushed (path, mode, size, digest), not the bytes."""
        if not isinstance(self.inner, FilePushing):
            raise KtraceError(f"{self.inner.name} cannot take files: its backend has no FilePushing capability")
        self.inner.push_file(data, path, mode)
        self.cassette.interactions.append({"kind": "push", **pushed(data, self.names.normalize(path), mode)})

    def defer(self, ops: Sequence[Op]) -> None:
        self.inner.defer(ops)

    def close(self) -> None:
        """The wrapped backend belongs to the run, not to this test."""

    def save(self, path: Path) -> None:
        self.cassette.save(path)
