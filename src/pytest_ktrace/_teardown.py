"""The teardown ledger: everything a test creates on its target is written here *before* it is created, and
:meth:`TeardownLedger.undo` takes it all back in the one order the kernel accepts.

Resources join by stage. Stages run in order, because the kernel refuses the later ones while the earlier ones
still hold: readers of the instance stop first (an open ``trace_pipe`` makes ``rmdir`` EBUSY), enables and
triggers are turned off (a dynamic event in use cannot be removed: EBUSY), the instance goes, the dynamic
events are removed, each by name (``-:group/event``, never by truncating a control file), and last the files the
test put on the target. The stages travel to the target as one batch; a target that is unreachable gets them as
deferred work, applied first thing on its next connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from ._errors import ConnectionLost
from ._modules import UNLOAD_SCRIPT
from .backends._base import Backend, Op, OpResult, Read, Write
from .backends._features import MOUNT_HINT

__all__ = ["STAGES", "Stage", "TeardownLedger", "TeardownReport"]

Stage = Literal["disable", "instance", "remove", "files"]
STAGES: tuple[Stage, ...] = ("disable", "instance", "remove", "files")


@dataclass
class TeardownReport:
    """What teardown could not undo; empty when the kernel is back as it was."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth a warning, not a failure
    inspected: list[str] = field(default_factory=list)  # what the last look (read_first) found wrong
    deferred: str = ""  # why teardown was handed to the backend for its next connection
    failed_commands: list[str] = field(default_factory=list)  # those of the failures a command on the target said
    vanished: list[str] = field(default_factory=list)  # events (group/event) gone before teardown reached them

    def __bool__(self) -> bool:
        return bool(self.failures)

    @property
    def replayable(self) -> bool:
        """Whether a cassette holds everything that failed: a command's answer is recorded and replayed, a tracefs
        operation the kernel refused at teardown is not (the fake would undo it without a word)."""
        return len(self.failures) == len(self.failed_commands)


def _event_of(op: Op) -> str:
    """The event (``group/event``) an undo operation is about: a removal's, or the event whose file it writes."""
    if not isinstance(op, Write):
        return ""
    if op.data.startswith("-:"):
        return op.data[2:]
    parts = op.path.split("/")
    if len(parts) >= 4 and parts[-4] == "events" and parts[-1] in ("enable", "filter", "trigger"):
        return f"{parts[-3]}/{parts[-2]}"
    return ""


class TeardownLedger:
    """One test's undo ledger on one target (the shape of pytest's ``MonkeyPatch``: record, then ``undo()``)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._stages: dict[Stage, list[Op]] = {stage: [] for stage in STAGES}
        self._stoppers: list[Callable[[], list[str]]] = []
        self._looks: list[tuple[Read, Callable[[OpResult], list[str]]]] = []
        self._unloads: list[str] = []  # modules the test loaded, in load order
        self._created: set[str] = set()
        self.done = False

    def join(self, stage: Stage, ops: Iterable[Op]) -> None:
        """Record what undoes a resource, before the resource is created."""
        self._stages[stage].extend(ops)

    def forget(self, stage: Stage, op: Op) -> None:
        """``op`` no longer undoes anything of ours (what it would remove turned out not to be ours)."""
        self._stages[stage].remove(op)

    def stop_first(self, stop: Callable[[], list[str]]) -> None:
        """Something on this side that holds the target's objects (a stream reader): stopped before any
        tracefs stage; returns the problems it met. It may raise :class:`ConnectionLost`."""
        self._stoppers.append(stop)

    def unload(self, module: str) -> None:
        """A module the test is about to load: unloaded after the tracefs stages, before the files."""
        self._unloads.append(module)

    def keep_loaded(self, module: str) -> None:
        """The module did not load (or was not ours to load): nothing to unload."""
        self._unloads.remove(module)

    def read_first(self, op: Read, look: Callable[[OpResult], list[str]]) -> None:
        """A last look before anything is undone (the trace, for what the kernel printed since the test's last
        read), in the same batch as the undo: ``look`` gets the result and returns what it found wrong."""
        self._looks.append((op, look))

    def created(self, event: str) -> None:
        """A dynamic event (``group/event``) the kernel accepted: if it is gone at teardown, someone else
        removed it, which is worth a note."""
        self._created.add(event)

    def ops(self) -> list[Op]:
        """Every tracefs operation that undoes this test, in the kernel's order."""
        return [op for stage in STAGES for op in self._stages[stage]]

    def hand_over(self) -> Optional[tuple[list[Op], Callable[[Sequence[OpResult]], TeardownReport]]]:
        """For an undo that is tracefs operations only (no reader to stop, no module to unload): the batch, last
        looks first, and what judges its results, for a caller that sends it later with other work (a run's next
        test's first round trip); the ledger is then done. None when :meth:`undo` must do it now."""
        if self.done or self._stoppers or self._unloads:
            return None
        self.done = True
        return [*(op for op, _ in self._looks), *self.ops()], self._verdict

    def undo(self) -> TeardownReport:
        report = TeardownReport()
        if self.done:
            return report
        self.done = True
        try:
            for stop in self._stoppers:
                report.failures.extend(stop())
        except ConnectionLost as exc:
            return self._defer(report, exc)
        # with modules to unload, their files go after them, in a batch of their own
        files = self._stages["files"] if self._unloads else []
        ops = [op for op in self.ops() if op not in files]
        if not ops and not self._unloads and not self._looks:
            return report
        looks = [op for op, _ in self._looks]
        try:
            results = self.backend.apply([*looks, *ops]) if ops or looks else []
            self._verdict(results, report)
            if self._unloads:
                self._unload(report)
                self._judge(self.backend.apply(files), report)
        except ConnectionLost as exc:
            return self._defer(report, exc)
        return report

    def _verdict(self, results: Sequence[OpResult], report: Optional[TeardownReport] = None) -> TeardownReport:
        """What the results of the undo batch (last looks first) say, added to ``report``."""
        report = TeardownReport() if report is None else report
        for (_, look), result in zip(self._looks, results):
            report.inspected.extend(look(result))
        self._judge(results[len(self._looks) :], report)
        return report

    def _judge(self, results: Sequence[OpResult], report: TeardownReport) -> None:
        """What the results of an undo batch say: failures, notes, or a tracefs that is no longer mounted."""
        vanished = False
        for result in results:
            if result.errno_name == "ENOENT":
                vanished = True
                removed = _event_of(result.op)
                if removed:
                    report.vanished.append(removed)
                note = f"probe {removed} was removed by someone else while the test ran"
                if removed in self._created and note not in report.notes:
                    report.notes.append(note)
                continue  # otherwise: the batch that should have created it never got that far
            if not result.ok:
                report.failures.append(
                    f"{type(result.op).__name__} {result.op.path}: {result.errno_name} {result.error}"
                    + (f" ({result.op.data!r})" if isinstance(result.op, Write) else "")
                )
        if vanished and not self.backend.apply([Read("tracing_on")])[0].ok:
            info = self.backend.describe()
            report.failures.insert(
                0,
                f"tracefs is no longer mounted at {info.tracefs} on {info.name}, so this test's instance and "
                f"probes are still in the kernel: mount it again ({MOUNT_HINT}); the next pytest-ktrace run "
                "removes them",
            )
            report.notes.clear()

    def _unload(self, report: TeardownReport) -> None:
        """rmmod the test's modules, the last loaded first; one that stays is a failure naming its holders."""
        names = list(reversed(self._unloads))
        result = self.backend.run(["sh", "-c", UNLOAD_SCRIPT, "ktrace-unload", *names])
        if result.returncode != 0:
            said = " ".join((result.stdout + result.stderr).split()) or f"exit status {result.returncode}"
            report.failures.append(f"rmmod {' '.join(names)}: {said}")
            report.failed_commands.append(report.failures[-1])

    def _defer(self, report: TeardownReport, lost: ConnectionLost) -> TeardownReport:
        # The target is unreachable now: the backend undoes this test first thing after it reconnects.
        self.backend.defer(self.ops())
        report.deferred = str(lost)
        return report
