"""Probes kept armed between the tests of one run on one target, so the kernel's teardown cost is paid once.

What the kernel charges (``benchmarks/bench_teardown_kernel.py``): disabling an enabled probe event waits for an
RCU grace period (~50 ms per uprobe event on 6.18, serialised kernel-wide: threads do not overlap it), removing an
instance another ~45 ms, while defining a probe, writing an event's filter, clearing a buffer or reading the trace
cost well under that. A test that disables and removes what it armed pays the waits on its own critical path.

So a run keeps one instance of its own on each target it holds for itself, and the probe events its tests armed
there stay armed when a test ends: each is *parked* behind a filter no event passes (``common_pid < 0``), and the
next test that defines the same probe (same kind, place, fetch arguments, and for a uprobe the same file, by size,
mtime and inode) takes it back by writing its own filter. Each test clears the instance's buffer when it first
arms, so it sees its own events only. What no test took back is retired (disabled, then removed by name) when
more than :data:`PARKED_MAX` are parked, and all of it at the end of the run, Ctrl-C included; a killed run's
instance and group carry its name (``ktrace_<tag>_<pid>_<run>``) and are removed by the next run as any leftover.

Over a connection where each round trip costs (SSH), a test's teardown, once it is only tracefs operations (its
last look at the trace and the kernel's taint, and its events' parking filters), is not sent when the test ends: it
travels first in the next test's first round trip on the target (before that test clears the buffer), or at the end
of the run. What it finds (a kernel splat printed after the test's last read, an operation the kernel refused) fails
the run, naming the test, as a failure to retire does.

Tests that change the instance itself (``scope="run"``'s pid filter, a buffer size, stream mode's reader) keep an
instance of their own, as do boards leased per test and recording runs (a cassette holds one test whole).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from ._arming import InstanceState, disable_op
from ._errors import ConnectionLost
from ._probes import ProbeSpec
from .backends._base import Backend, Op, OpResult, Rmdir, Write

__all__ = ["PARKED_MAX", "PARKING_FILTER", "ParkedProbes", "RetireFailure", "ReuseKey", "reuse_key"]

PARKED_MAX = 32  # parked events kept beyond this are retired, oldest first: each costs its traced code a hit
PARKING_FILTER = "common_pid < 0"  # no task has a negative pid: the event fires, nothing is recorded

ReuseKey = tuple[str, ...]


def reuse_key(spec: ProbeSpec, file_identity: str = "") -> Optional[ReuseKey]:
    """What makes two definitions the same kernel event (the name and filter aside), or None for one that is never
    reused (stack traces change the instance's options; a module's probe goes with its module)."""
    if spec.stacktrace:
        return None
    if not spec.is_dynamic:
        return ("tracepoint", spec.group, spec.event)
    if spec.kind in ("kprobe", "kretprobe") and ":" in spec.location:
        return None
    args = tuple(f"{name}={text}" for name, text in spec.fetchargs)
    return (spec.kind, spec.location, str(spec.maxactive), file_identity, *args)


@dataclass
class _Parked:
    spec: ProbeSpec
    key: ReuseKey
    owner: str  # the test that armed it (reported if retiring it fails)
    busy: bool = True
    last_used: int = 0


@dataclass
class _DeferredTeardown:
    owner: str
    ops: list[Op]
    judge: Callable[[Sequence[OpResult]], list[str]]  # the results of ``ops`` -> what is wrong


@dataclass(frozen=True)
class RetireFailure:
    owner: str
    problem: str

    def __str__(self) -> str:
        return f"{self.owner}: {self.problem}"


class ParkedProbes:
    """One run's instance on one target and the probe events parked in it (the run's undo ledger for them)."""

    def __init__(self, backend: Backend, instance_name: Callable[[], str], *, parked_max: int = PARKED_MAX) -> None:
        self.backend = backend
        self._new_name = instance_name
        self.parked_max = parked_max
        self.instance = instance_name()
        self.state = InstanceState()
        self.console_on = False  # printk:console enabled in the instance (the kernel log)
        self._entries: list[_Parked] = []
        self._clock = 0
        self._spoiled = False
        self.failures: list[RetireFailure] = []
        self._orphans: list[_Parked] = []  # entries of abandoned instances
        self._orphan_instances: list[str] = []
        self._deferred: list[_DeferredTeardown] = []

    @property
    def instance_path(self) -> str:
        return f"instances/{self.instance}"

    # ------------------------------------------------------------------ a test's use
    def take(self, key: Optional[ReuseKey]) -> Optional[ProbeSpec]:
        """A parked event made for ``key``, now busy for the asking test; None if there is none."""
        if key is None or self._spoiled:
            return None
        for entry in self._entries:
            if not entry.busy and entry.key == key:
                entry.busy = True
                return entry.spec
        return None

    def give_back(self, spec: ProbeSpec) -> None:
        """A parked event :meth:`take` handed out is not used after all (nothing was sent for it)."""
        for entry in self._entries:
            if entry.spec.event_dir == spec.event_dir:
                entry.busy = False

    def adopt(self, spec: ProbeSpec, key: ReuseKey, owner: str) -> None:
        """An event the asking test defined and enabled here: parked, not removed, when the test ends."""
        self._entries.append(_Parked(spec, key, owner))

    def instance_created(self, state: InstanceState) -> None:
        self.state = state

    def spoil(self) -> None:
        """The instance's options were changed for one test: it and everything in it go when that test ends."""
        self._spoiled = True

    def parking_ops(self, specs: Sequence[ProbeSpec]) -> list[Op]:
        """What parks ``specs`` (events of this instance): each one's filter set to pass nothing."""
        return [Write(f"{self.instance_path}/events/{spec.event_dir}/filter", PARKING_FILTER, False) for spec in specs]

    @property
    def spoiled(self) -> bool:
        return self._spoiled

    @staticmethod
    def is_parking_op(op: Op) -> bool:
        return isinstance(op, Write) and op.data == PARKING_FILTER and op.path.endswith("/filter")

    def defer_teardown(self, owner: str, ops: Sequence[Op], judge: Callable[[Sequence[OpResult]], list[str]]) -> None:
        """A test's teardown batch, sent first with the next batch that takes :meth:`deferred_ops` (or at the end
        of the run); ``judge`` gets its results and returns what is wrong, reported against ``owner``."""
        self._deferred.append(_DeferredTeardown(owner, list(ops), judge))

    def deferred_ops(self) -> list[Op]:
        return [op for teardown in self._deferred for op in teardown.ops]

    def settle(self, results: Sequence[OpResult]) -> None:
        """The results of :meth:`deferred_ops` as applied, in order; teardowns the batch did not reach stay
        deferred."""
        done = 0
        while self._deferred and done + len(self._deferred[0].ops) <= len(results):
            teardown = self._deferred.pop(0)
            try:
                problems = teardown.judge(results[done : done + len(teardown.ops)])
            except ConnectionLost as exc:
                problems = [f"{self.backend.name} unreachable while judging its teardown: {exc}"]
            self.failures.extend(RetireFailure(teardown.owner, problem) for problem in problems)
            done += len(teardown.ops)

    def flush(self) -> None:
        """Deferred teardowns applied now, in a batch of their own."""
        ops = self.deferred_ops()
        if not ops:
            return
        try:
            results = self.backend.apply(ops)
        except ConnectionLost as exc:
            owners = ", ".join(teardown.owner for teardown in self._deferred)
            self._deferred.clear()
            self.failures.append(RetireFailure(owners, f"{self.backend.name} unreachable at teardown: {exc}"))
            return
        self.settle(results)

    def release(self, specs: Sequence[ProbeSpec], *, gone: Sequence[str] = ()) -> None:
        """The test that held ``specs`` ended (they are parked; those in ``gone`` were found removed by someone
        else); retire what is beyond the limit, or everything if the instance was spoiled."""
        self._clock += 1
        held = {spec.event_dir for spec in specs}
        self._entries = [entry for entry in self._entries if entry.spec.event_dir not in gone]
        for entry in self._entries:
            if entry.spec.event_dir in held:
                entry.busy = False
                entry.last_used = self._clock
        if self._spoiled:
            self._retire_all(fresh=True)
            return
        idle = sorted((e for e in self._entries if not e.busy), key=lambda e: e.last_used)
        surplus = idle[: max(0, len(idle) - self.parked_max)]
        if surplus:
            self._retire(surplus, instance=False)

    def abandon(self) -> None:
        """The instance or events in it were removed behind our back: start over with a new instance; what may be
        left of the old one is retired with the rest at :meth:`close`."""
        self._orphans.extend(self._entries)
        self._entries = []
        if self.state.planned:
            self._orphan_instances.append(self.instance)
        self.state = InstanceState()
        self.console_on = False
        self._spoiled = False
        self.instance = self._new_name()

    # ------------------------------------------------------------------ the end
    def close(self) -> list[RetireFailure]:
        """End of the run: every event disabled and removed, the instance removed. Returns what failed, each
        named by the test that armed it (or the run, for the instance)."""
        self.flush()
        self._retire_all(fresh=False)
        self._retire_orphans()
        failures, self.failures = self.failures, []
        return failures

    def _retire_all(self, *, fresh: bool) -> None:
        self._retire(list(self._entries), instance=True)
        self.state = InstanceState()
        self.console_on = False
        self._spoiled = False
        if fresh:
            self.instance = self._new_name()

    def _retire_orphans(self) -> None:
        """What an abandoned instance may have left: each instance and event removed if it is still there."""
        ops: list[Op] = [Rmdir(f"instances/{name}") for name in self._orphan_instances]
        owners: dict[Op, str] = {}
        for entry in self._orphans:
            if entry.spec.is_dynamic:
                removal = Write(entry.spec.control_file, entry.spec.removal())
                owners[removal] = entry.owner
                ops.append(removal)
        self._orphans, self._orphan_instances = [], []
        if ops:
            with contextlib.suppress(ConnectionLost):
                self._judge(self.backend.apply(ops), owners)

    def _retire(self, entries: list[_Parked], *, instance: bool) -> None:
        if not entries and not (instance and self.state.planned):
            return
        self.flush()  # a parked event's last parking filter is written before it is disabled
        owners: dict[Op, str] = {}
        for entry in entries:
            owners[disable_op(self.instance_path, entry.spec)] = entry.owner
        disables = list(owners)
        if instance and self.console_on:
            disables.append(Write(f"{self.instance_path}/events/printk/console/enable", "0", append=False))
        removals = []
        for entry in entries:
            if entry.spec.is_dynamic:
                removal = Write(entry.spec.control_file, entry.spec.removal())
                owners[removal] = entry.owner
                removals.append(removal)
        rmdir = [Rmdir(self.instance_path)] if instance and self.state.planned else []
        for entry in entries:
            self._entries.remove(entry)
        try:
            results = self.backend.apply([*disables, *rmdir, *removals])
        except ConnectionLost as exc:
            self.failures.append(RetireFailure("this run", f"{self.backend.name} unreachable while retiring: {exc}"))
            return
        self._judge(results, owners)

    def _judge(self, results: Sequence[OpResult], owners: dict[Op, str]) -> None:
        for result in results:
            if result.ok or result.errno_name == "ENOENT":
                continue  # ENOENT: its definition never got that far, or the instance took it along
            problem = f"{type(result.op).__name__} {result.op.path}: {result.errno_name} {result.error}".rstrip()
            self.failures.append(RetireFailure(owners.get(result.op, "this run"), problem))
