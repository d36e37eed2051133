"""The teardown ledger: stages undone in the kernel's order, whatever went wrong on the way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import pytest

from pytest_ktrace._errors import ConnectionLost
from pytest_ktrace._teardown import TeardownLedger
from pytest_ktrace.backends._base import Mkdir, Op, OpResult, Read, Rmdir, RunResult, TargetInfo, Write

INSTANCE = "instances/ktrace_abcdef_1_beef_1"
DISABLE = Write(f"{INSTANCE}/events/g/p_a_1/enable", "0", append=False)
RMDIR = Rmdir(INSTANCE)
REMOVE = Write("kprobe_events", "-:g/p_a_1")


class _Target:
    """Records what reaches the target; answers each op with the errno it is given (default: success)."""

    name = "stub"

    def __init__(self, errors: Optional[dict[str, str]] = None, *, lost: bool = False, mounted: bool = True) -> None:
        self.errors = errors or {}
        self.lost = lost
        self.mounted = mounted
        self.applied: list[list[Op]] = []
        self.deferred: list[Op] = []

    def describe(self) -> TargetInfo:
        return TargetInfo("stub", "stub", "6.1.0", "x86_64", "/sys/kernel/tracing")

    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        if self.lost:
            raise ConnectionLost("stub: connection reset", host="stub", cause="reset")
        self.applied.append(list(ops))
        results = []
        for op in ops:
            errno_name = self.errors.get(op.path if not isinstance(op, Write) else f"{op.path} {op.data}", "")
            if isinstance(op, Read) and op.path == "tracing_on" and not self.mounted:
                errno_name = "ENOENT"
            results.append(OpResult(op, ok=not errno_name, errno_name=errno_name, error=errno_name.lower()))
        return results

    def run(self, argv: Sequence[str], **_: object) -> RunResult:
        self.applied.append([Write("(command)", " ".join(argv[4:]))])  # the modules, in order with the batches
        said = self.errors.get("rmmod", "")
        return RunResult(tuple(argv), 1 if said else 0, said, "", 1, 0.0)

    def defer(self, ops: Sequence[Op]) -> None:
        self.deferred.extend(ops)

    def close(self) -> None:
        pass


def _ledger(target: _Target) -> TeardownLedger:
    ledger = TeardownLedger(target)  # type: ignore[arg-type]  # the stub implements what the ledger calls
    ledger.join("remove", [REMOVE])  # joined out of order on purpose: the stage decides, not the order of joins
    ledger.join("instance", [RMDIR])
    ledger.join("disable", [DISABLE])
    return ledger


def test_stages_are_undone_in_the_kernels_order_in_one_batch() -> None:
    target = _Target()
    stopped: list[str] = []
    ledger = _ledger(target)

    def stop() -> list[str]:
        stopped.append("stream")
        return []

    ledger.stop_first(stop)
    report = ledger.undo()
    assert not report and report.notes == [] and stopped == ["stream"]
    assert target.applied == [[DISABLE, RMDIR, REMOVE]]


def test_undo_runs_once() -> None:
    target = _Target()
    ledger = _ledger(target)
    ledger.undo()
    assert not ledger.undo() and len(target.applied) == 1 and ledger.done


def test_an_event_someone_else_removed_is_a_note_not_a_failure() -> None:
    target = _Target({f"kprobe_events {REMOVE.data}": "ENOENT"})
    ledger = _ledger(target)
    ledger.created("g/p_a_1")
    report = ledger.undo()
    assert not report
    assert report.notes == ["probe g/p_a_1 was removed by someone else while the test ran"]


def test_an_event_never_created_is_silent() -> None:
    target = _Target({f"kprobe_events {REMOVE.data}": "ENOENT"})
    report = _ledger(target).undo()  # the arming batch died before the definition: nothing to say
    assert not report and report.notes == []


def test_a_refused_undo_fails_naming_the_operation() -> None:
    target = _Target({RMDIR.path: "EBUSY"})
    report = _ledger(target).undo()
    assert report.failures == [f"Rmdir {INSTANCE}: EBUSY ebusy"]


def test_unmounted_tracefs_is_said_first() -> None:
    target = _Target({RMDIR.path: "ENOENT"}, mounted=False)
    report = _ledger(target).undo()
    assert report.failures and report.failures[0].startswith("tracefs is no longer mounted at /sys/kernel/tracing")


@pytest.mark.parametrize("where", ["batch", "stopper"])
def test_an_unreachable_target_gets_the_whole_undo_deferred(where: str) -> None:
    target = _Target(lost=where == "batch")
    ledger = _ledger(target)
    if where == "stopper":

        def lose() -> list[str]:
            raise ConnectionLost("stub: gone", host="stub", cause="reset")

        ledger.stop_first(lose)
    report = ledger.undo()
    assert not report and report.deferred
    assert target.deferred == [DISABLE, RMDIR, REMOVE] and target.applied == []


def test_ops_lists_the_stages_in_order_without_applying() -> None:
    target = _Target()
    ledger = _ledger(target)
    ledger.join("instance", [Mkdir("unused")])  # any op can join a stage
    assert ledger.ops() == [DISABLE, RMDIR, Mkdir("unused"), REMOVE] and target.applied == []


def test_modules_are_unloaded_after_the_tracefs_stages_and_before_their_files() -> None:
    from pytest_ktrace.backends._base import Remove

    target = _Target()
    ledger = _ledger(target)
    ledger.join("files", [Remove("/tmp/ktbar.ko")])
    ledger.unload("ktbar")
    ledger.unload("ktbar_helper")
    assert not ledger.undo()
    assert target.applied == [
        [DISABLE, RMDIR, REMOVE],
        [Write("(command)", "ktbar_helper ktbar")],  # the last loaded first
        [Remove("/tmp/ktbar.ko")],
    ]


def test_a_module_that_stays_is_a_failure_naming_its_holders() -> None:
    target = _Target({"rmmod": "rmmod: ERROR: Module ktbar is in use\nholders of ktbar: other; refcnt 1\n"})
    ledger = _ledger(target)
    ledger.unload("ktbar")
    report = ledger.undo()
    assert report.failures == ["rmmod ktbar: rmmod: ERROR: Module ktbar is in use holders of ktbar: other; refcnt 1"]
    assert report.replayable  # the command's answer is in the cassette: the replay fails the same way


def test_a_refused_tracefs_undo_cannot_be_replayed_even_beside_a_failed_unload() -> None:
    target = _Target({RMDIR.path: "EBUSY", "rmmod": "rmmod: ERROR: Module ktbar is in use\n"})
    ledger = _ledger(target)
    ledger.unload("ktbar")
    report = ledger.undo()
    assert len(report.failures) == 2 and not report.replayable


def test_a_module_that_did_not_load_is_not_unloaded() -> None:
    target = _Target()
    ledger = _ledger(target)
    ledger.unload("ktbar")
    ledger.keep_loaded("ktbar")
    ledger.undo()
    assert target.applied == [[DISABLE, RMDIR, REMOVE]]
