"""One test's share of the run's parked probes (:mod:`._warm`): the events it took back from earlier tests, the
ones it will park when its batch has armed them, and the entries of its teardown ledger that change from
"disable and remove" to "park"."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Callable

from ._arming import disable_op
from ._probes import ProbeSpec
from ._teardown import TeardownLedger, TeardownReport
from ._warm import ParkedProbes, ReuseKey, reuse_key
from .backends._base import Write

__all__ = ["HeldProbes"]


class HeldProbes:
    """What one test holds of ``parked``; ``identity(path)`` is a uprobe file's identity (a uprobe holds the inode
    it was defined on, so a rebuilt file is another probe)."""

    def __init__(
        self, parked: ParkedProbes, ledger: TeardownLedger, owner: str, identity: Callable[[str], str]
    ) -> None:
        self.parked = parked
        self._ledger = ledger
        self._owner = owner
        self._identity = identity
        self._to_park: dict[int, ReuseKey] = {}  # id(spec) of a probe to park once armed -> what it is
        self._held: list[ProbeSpec] = []  # parked events this test holds (taken back or adopted)
        self._taken: set[str] = set()  # event dirs of those taken back: armed already, only their filter is written
        self._released = False

    def take_back(self, spec: ProbeSpec) -> ProbeSpec:
        """The definition under the name of an event parked by an earlier test, if one is the same probe; else
        ``spec``, noted to be parked once armed."""
        identity = self._identity(spec.location.rsplit(":", 1)[0]) if spec.kind in ("uprobe", "uretprobe") else ""
        key = reuse_key(spec, identity)
        if key is None:
            return spec
        taken = self.parked.take(key)
        if taken is None:
            self._to_park[id(spec)] = key
            return spec
        spec = replace(spec, group=taken.group, event=taken.event)
        self._held.append(spec)
        self._taken.add(spec.event_dir)
        self._ledger.join("disable", self.parked.parking_ops([spec]))
        return spec

    def give_back(self, spec: ProbeSpec) -> None:
        """Undo :meth:`take_back` for ``spec`` (nothing was sent for it yet)."""
        self._to_park.pop(id(spec), None)
        if spec.event_dir not in self._taken:
            return
        self._taken.discard(spec.event_dir)
        self._held.remove(spec)
        for op in self.parked.parking_ops([spec]):
            self._ledger.forget("disable", op)
        self.parked.give_back(spec)

    def taken(self, spec: ProbeSpec) -> bool:
        """Whether ``spec`` is an event taken back: armed already, only its filter is written."""
        return spec.event_dir in self._taken

    def park(self, armed: list[ProbeSpec], instance_path: str) -> None:
        """The batch armed ``armed``: what can be parked moves from this test's ledger to the run's instance."""
        for spec in armed:
            key = self._to_park.pop(id(spec), None)
            if key is None:
                continue
            self._ledger.forget("disable", disable_op(instance_path, spec))
            if spec.is_dynamic:
                self._ledger.forget("remove", Write(spec.control_file, spec.removal()))
            self._ledger.join("disable", self.parked.parking_ops([spec]))
            self.parked.adopt(spec, key, self._owner)
            self._held.append(spec)

    def lose(self) -> None:
        """The run's instance was removed behind our back: this test holds nothing any more."""
        self._held.clear()

    def release(self, gone: list[str]) -> None:
        """The test ended: what it held is parked for later tests (``gone``: events found removed)."""
        if not self._released:
            self._released = True
            self.parked.release(self._held, gone=gone)

    def defer_teardown(self, *, warn: bool) -> bool:
        """Hand the test's teardown to the run's instance when it is only the last look and parking filters: it
        travels with the next batch on the target (:meth:`ParkedProbes.deferred_ops`). What it finds is reported
        against this test (``warn``: the kernel log's problems as warnings). False when it must run now."""
        if self.parked.spoiled or not all(self.parked.is_parking_op(op) for op in self._ledger.ops()):
            return False
        handed = self._ledger.hand_over()
        if handed is None:
            return False
        ops, verdict = handed
        self.parked.defer_teardown(self._owner, ops, lambda results: self._problems(verdict(results), warn=warn))
        return True

    def _problems(self, report: TeardownReport, *, warn: bool) -> list[str]:
        problems = list(report.failures)
        if report.inspected and warn:
            warnings.warn(f"pytest-ktrace: after {self._owner} ended: " + "\n".join(report.inspected), stacklevel=1)
        else:
            problems.extend(f"after the test's last look: {problem}" for problem in report.inspected)
        return problems
