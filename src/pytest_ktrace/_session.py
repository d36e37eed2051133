"""The ``ktrace`` fixture object: a facade over the parts of one test's tracing.

:class:`TraceSession` holds what the test defined and delegates the work: building probe definitions
(:mod:`._probe_builder`), arming them in one batch (:mod:`._arming`), reading the trace (:mod:`._collection`) or
streaming it (:mod:`._streaming`), aggregates (:mod:`._aggregates`), perf blocks (:mod:`._perf_blocks`), and the
teardown ledger that undoes exactly what this test created (:mod:`._teardown`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union, cast

from ._aggregates import DEFAULT_BUCKETS_US, Aggregate, AggregateSet, CountBy, Histogram, LatencyHistogram
from ._arch import normalize_arch
from ._arming import ArmPlan, InstanceState, disable_op, plan_arm
from ._assertions import Observation, ProbeView, assert_latency, assert_order
from ._checks import check_int, check_seconds, check_text, command_argv, type_name
from ._collection import TraceCollector
from ._errors import ConnectionLost, KtraceError, TargetError, hide_for_ktrace_errors
from ._events import Event
from ._formats import FormatCatalog, parse_format
from ._held import HeldProbes
from ._hist import HistTriggers
from ._hist_table import HistResult
from ._identity import RunIdentity
from ._kernel_log import CONSOLE_EVENT, TAINT_READ, KernelLog, LogLine, lines_of
from ._matchers import ANY
from ._modules import (
    LoadedModule,
    ModuleLoadError,
    check_module_name,
    load_failure,
    module_name,
    module_params,
)
from ._parse import ParsedTrace
from ._perf import PerfStat, Profile, UnsupportedPolicy
from ._perf_blocks import PerfBlocks
from ._probe_builder import ProbeBuilder
from ._probes import ProbeSpec
from ._rejections import explain_arm_failure
from ._spawned import SpawnedProcess
from ._streaming import DEFAULT_KEEP, StreamMode
from ._target_files import ElfCopies
from ._teardown import TeardownLedger, TeardownReport
from ._warm import ParkedProbes
from .backends._base import (
    Backend,
    FilePushing,
    Injecting,
    Op,
    OpResult,
    PreparingRuns,
    Read,
    Remove,
    Rmdir,
    RunResult,
    Spawning,
    TargetInfo,
    Write,
    capable,
)
from .btf._names import forget_module
from .report._artifacts import Artifact, make_artifact

__all__ = ["Scope", "TeardownReport", "TraceSession"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

Scope = Literal["all", "run"]
_CONSOLE = ProbeSpec("tracepoint", *CONSOLE_EVENT, "", display="printk:console")
_NOTHING_RAN = (
    "nothing ran since the probes were armed: trigger the code with ktrace.run(...), "
    "or wait for asynchronous events with ktrace.wait_for(...)"
)


def _allow_patterns(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise KtraceError(f"ktrace_kernel_log_allow: {pattern!r} is not a regular expression: {exc}") from None
    return tuple(compiled)


@dataclass
class _Arming:
    """One arming batch: its operations, and the probes and definitions it arms (``fresh``: not taken back); the
    session's state once it is sent (:meth:`TraceSession._commit_arming`)."""

    ops: list[Op]
    pending: list[_Defined]
    specs: list[ProbeSpec]
    fresh: list[ProbeSpec]
    plan: ArmPlan
    first: bool


@dataclass
class _Defined:
    view: ProbeView
    requested: ProbeSpec  # as the test defined it, before it took back a parked event
    armed: bool = False

    @property
    def spec(self) -> ProbeSpec:
        return self.view.spec


class TraceSession:
    """One test's view of one target. Probes are defined by the factories, armed together in one batch at the
    first :meth:`run`, :meth:`arm`, :meth:`wait_for` or event access, and removed by :meth:`teardown`."""

    ANY = ANY

    def __init__(
        self,
        backend: Backend,
        identity: RunIdentity,
        serial: int,
        *,
        scope: Scope = "all",
        run_timeout: Optional[float] = 60.0,
        buffer_kb: Optional[int] = None,
        elf_cache: Optional[dict[str, tuple[str, Path]]] = None,
        lost_policy: str = "fail",
        stream: bool = False,
        keep_events: int = DEFAULT_KEEP,
        sync_stall_s: float = 30.0,
        kernel_log: str = "fail",
        kernel_log_allow: Sequence[str] = (),
        parked: Optional[ParkedProbes] = None,
        owner: str = "",
    ) -> None:
        if keep_events < 1:
            raise KtraceError(f"keep_events={keep_events!r}: at least 1 event per probe must be kept")
        self.backend = backend
        self.identity = identity
        self._name = identity.instance(serial)  # this test's own name: its events' and files' names derive from it
        # with ``parked``, the test traces in the run's instance, where probes stay armed from test to test
        self._parked = parked
        self._owner = owner or self._name
        self.instance = parked.instance if parked is not None else self._name
        self.scope: Scope = scope
        self.run_timeout = run_timeout
        self.buffer_kb = buffer_kb
        self.lost_policy = lost_policy
        self.stream = stream
        self.keep_events = keep_events
        self.sync_stall_s = sync_stall_s
        self.ledger = TeardownLedger(backend)
        self._catalog = FormatCatalog()
        self._aggregates = AggregateSet(self._catalog)
        # a remote file's check for change travels with the test's first command where the backend can carry it
        files = ElfCopies(backend, elf_cache, timeout=run_timeout, check_later=capable(backend, PreparingRuns))
        self._files = files
        self._builder = ProbeBuilder(backend, identity, self._name, files, stream=stream)
        self._collector = TraceCollector(backend, self.instance_path, self._catalog, self._aggregates, files)
        self._stream_mode: Optional[StreamMode] = None
        if stream:
            self._stream_mode = StreamMode(
                backend, self.instance, self._catalog, self._aggregates, keep=keep_events, stall_s=sync_stall_s
            )
            self.ledger.stop_first(self._stream_mode.stop)  # an open trace_pipe makes rmdir EBUSY
        self._perf = PerfBlocks(lambda: self.target)
        self._probes: list[_Defined] = []
        self._instance = parked.state if parked is not None else InstanceState()
        self._armed_once = False
        self._held = HeldProbes(parked, self.ledger, self._owner, files.identity) if parked is not None else None
        self._dirty = True  # the trace may hold events the last collection has not seen
        self._runs: list[RunResult] = []
        self._spawned: list[SpawnedProcess] = []  # every command spawn() started, in order
        self._spawn_ends_read: set[int] = set()  # ids of those whose end a trace read already followed
        self._tracing_started = scope == "all"
        self._artifacts: list[Artifact] = []
        self._pushed: list[str] = []  # files push() put on the target, in order
        self._loading: Optional[tuple[str, Optional[Path]]] = None  # the module load_module() loads, its .ko
        self._loaded: list[str] = []  # modules this test loaded
        self._log = KernelLog(kernel_log, allowed=_allow_patterns(kernel_log_allow))
        self._log.source = lambda: self._current().of(*CONSOLE_EVENT)
        self._hists = HistTriggers(  # ktrace.hist() and count_by() in the kernel (see _hist)
            backend,
            instance=lambda: self.instance_path,
            ledger=self.ledger,
            formats=self._catalog.get,
            stale=lambda: self._dirty or self._spawns_unread(),
            arm=self.arm,
            closed=lambda: self.ledger.done,
            lost_policy=lost_policy,
        )

    # ------------------------------------------------------------------ target
    @property
    def target(self) -> TargetInfo:
        """What the target is: name, kernel release, arch, tracefs path, features."""
        return self.backend.describe()

    @property
    def arch(self) -> str:
        """The target's arch as the plugin names it (``x86_64``, ``arm64``, ``riscv``)."""
        return normalize_arch(self.target.arch)

    @property
    def armed(self) -> bool:
        """Whether this test armed anything yet (so there is a trace of it to show)."""
        return self._armed_once

    @property
    def instance_path(self) -> str:
        return f"instances/{self.instance}"

    def describe_target(self) -> str:
        return self.target.summary()

    # --------------------------------------------------------------- factories
    def kprobe(
        self, symbol: str, *args: str, filter: Optional[str] = None, stacktrace: bool = False, **fetchargs: str
    ) -> ProbeView:
        """A kprobe on ``[module:]symbol[+offset]``; fetchargs in kernel syntax (``irq="%x0:u32"``, ``"$arg1"``)
        or C names resolved from the target's BTF (``irq="irq"``, ``name="new->name:string"``).
        ``stacktrace=True`` records the kernel call stack of every hit (``event.stack``)."""
        self._check_open("kprobe()")
        spec = self._builder.kernel_probe("kprobe", symbol, args, fetchargs, filter=filter, stacktrace=stacktrace)
        return self._register(spec)

    def kretprobe(
        self,
        symbol: str,
        *args: str,
        filter: Optional[str] = None,
        maxactive: Optional[int] = None,
        stacktrace: bool = False,
        **fetchargs: str,
    ) -> ProbeView:
        """A return probe on ``symbol``; records ``ret=$retval`` typed from BTF (``:s32`` without BTF) unless a
        fetcharg uses ``$retval``."""
        self._check_open("kretprobe()")
        spec = self._builder.kernel_probe(
            "kretprobe", symbol, args, fetchargs, filter=filter, maxactive=maxactive, stacktrace=stacktrace
        )
        return self._register(spec)

    def uprobe(
        self,
        path: str,
        location: Union[str, int],
        *args: str,
        filter: Optional[str] = None,
        stacktrace: bool = False,
        **fetchargs: str,
    ) -> ProbeView:
        """A uprobe on ``path`` at a symbol name or file offset (int)."""
        self._check_open("uprobe()")
        spec = self._builder.user_probe("uprobe", path, location, args, fetchargs, filter=filter, stacktrace=stacktrace)
        return self._register(spec)

    def uretprobe(
        self,
        path: str,
        location: Union[str, int],
        *args: str,
        filter: Optional[str] = None,
        stacktrace: bool = False,
        **fetchargs: str,
    ) -> ProbeView:
        """A uretprobe; records ``ret=$retval:s32`` unless a fetcharg uses ``$retval``."""
        self._check_open("uretprobe()")
        spec = self._builder.user_probe(
            "uretprobe", path, location, args, fetchargs, filter=filter, stacktrace=stacktrace
        )
        return self._register(spec)

    def tracepoint(self, name: str, *, filter: Optional[str] = None, stacktrace: bool = False) -> ProbeView:
        """An existing kernel event ``system:event``, enabled in this test's instance only; ``stacktrace=True``
        records the kernel call stack of every hit (``event.stack``)."""
        self._check_open("tracepoint()")
        return self._register(self._builder.tracepoint(name, filter=filter, stacktrace=stacktrace))

    def _register(self, requested: ProbeSpec) -> ProbeView:
        spec = self._held.take_back(requested) if self._held is not None else requested
        view = ProbeView(spec, lambda: self._observe(view.spec))
        self._probes.append(_Defined(view, requested))
        self._dirty = True
        return view

    def _check_open(self, what: str) -> None:
        """After teardown nothing may be created any more: it would never be removed."""
        if self.ledger.done:
            raise KtraceError(
                f"{what}: the ktrace session of this test was torn down; it can no longer define, arm, run or "
                "inject (anything created now would be left in the kernel)"
            )

    def _view_of(self, probe: ProbeView, what: str) -> ProbeView:
        if not isinstance(probe, ProbeView) or not any(p.spec is probe.spec for p in self._probes):
            raise KtraceError(f"{what} takes a probe made by this test's ktrace fixture, got {probe!r}")
        return probe

    @property
    def _stacked(self) -> set[tuple[str, str]]:
        return {(p.spec.group, p.spec.event) for p in self._probes if p.spec.stacktrace}

    # ------------------------------------------------------------------ arming
    def arm(self) -> None:
        """Define, filter and enable every probe not yet armed, in one batch."""
        self._check_open("arm()")
        self._redefine_changed(self._files.check_now())  # this batch cannot carry the files' check
        arming = self._prepare_arming()
        if arming is not None:
            self._commit_arming(arming)
        if arming is None:
            if self._stream_mode is not None and self._stream_mode.pump is None:
                self._start_stream()  # the first attempt failed: say why again, never run unsynchronised
            return
        if self._parked is not None:
            self._parked.flush()  # an earlier test's teardown, before this test clears the run's instance
        pump = self._stream_mode.pump if self._stream_mode is not None else None
        with pump.gate if pump is not None else contextlib.nullcontext():
            # a running pump parses nothing until the new probes' formats are known (else their first events
            # would be parsed untyped and missed)
            if pump is not None:
                for spec in arming.specs:
                    pump.add_probe((spec.group, spec.event))
            results = self.backend.apply(arming.ops, stop_on_error=True)
            self._armed(arming, results)
        self._after_arming(arming, results)
        if self._stream_mode is not None and self._stream_mode.pump is None:
            self._start_stream()

    def _prepare_arming(self) -> Optional[_Arming]:
        """The batch that arms every probe not yet armed; None when there is nothing to do. The session records it
        (:meth:`_commit_arming`) before the batch is applied, or once the target has said it applied it."""
        pending = self._completed([probe for probe in self._probes if not probe.armed])
        specs = [probe.spec for probe in pending]
        first = not self._armed_once
        if first and self._log.policy != "off" and self.target.has("printk_console"):
            self._log.captured = True
            if self._parked is None or not self._parked.console_on:
                specs.append(_CONSOLE)  # the kernel log, read with the trace (see _kernel_log)
        if not first and not pending and not self._hists.pending:
            return None
        held = self._held
        taken = [spec for spec in specs if held is not None and held.taken(spec)]
        fresh = [spec for spec in specs if held is None or not held.taken(spec)]
        plan = plan_arm(
            fresh,
            instance=self.instance_path,
            state=self._instance,
            features=self.target.features,
            stacks=self._stacked,
            known_formats=self._catalog,
            buffer_kb=self.buffer_kb,
            scope=self.scope,
        )
        self._add_parked_ops(plan.ops, taken, first=first)
        if first and self._log.captured:
            if _CONSOLE not in specs:  # enabled in the run's instance by an earlier test: its format is read here
                plan.ops.append(Read(f"events/{_CONSOLE.event_dir}/format"))
            plan.ops.append(TAINT_READ)  # the kernel's taint when the test starts
        plan.ops.extend(self._hists.arm_ops())  # once the probes exist; their removal joins teardown first
        return _Arming(plan.ops, pending, specs, fresh, plan, first)

    def _commit_arming(self, arming: _Arming) -> None:
        """The batch is (being) applied: its undo joins the ledger, so teardown undoes it even if it died half way."""
        plan = arming.plan
        if arming.first and self._log.captured:
            self.ledger.read_first(Read(f"{self.instance_path}/trace"), self._last_look)
            self.ledger.read_first(TAINT_READ, self._last_taint)
        self.ledger.join("disable", plan.disables)
        if plan.state.planned and not self._instance.planned:
            if self._parked is None:
                self.ledger.join("instance", [Rmdir(self.instance_path)])
            else:
                self._parked.instance_created(plan.state)
        self.ledger.join("remove", plan.removals)
        self._note_instance_change(plan.state)
        self._instance = plan.state
        self._armed_once = True

    def _redefine_changed(self, paths: Sequence[str]) -> None:
        """Files the target says changed since this test's copy was made: the probes on them not armed yet are
        placed again from the file as it is now, and no longer take back an event parked on the old file."""
        if not paths:
            return
        for probe in self._probes:
            requested = probe.requested
            on_file = requested.kind in ("uprobe", "uretprobe") and requested.location.rsplit(":", 1)[0] in paths
            if probe.armed or not on_file:
                continue
            probe.requested = self._builder.relocate(requested)
            if self._held is not None:
                self._held.give_back(probe.view.spec)
                probe.view.spec = self._held.take_back(probe.requested)
            else:
                probe.view.spec = probe.requested

    def _armed(self, arming: _Arming, results: Sequence[OpResult]) -> None:
        for probe in arming.pending:
            probe.armed = True
        self._dirty = True
        self._learn(results)

    def _after_arming(self, arming: _Arming, results: Sequence[OpResult]) -> None:
        """Raise the kernel's own explanation of a batch that stopped; else park what can be."""
        if len(results) < len(arming.ops) or (results and not results[-1].ok):
            failed = results[-1] if results else OpResult(arming.ops[0], ok=False, error="not applied")
            self._check_parked_still_there(failed)
            explain_arm_failure(self.backend, failed, arming.specs)
        self._park_armed(arming.fresh)
        self._aggregates.check_fields()

    def _add_parked_ops(self, ops: list[Op], taken: list[ProbeSpec], *, first: bool) -> None:
        """Probes taken back from the run's instance get their own filter (and their format read); a test's first
        batch there clears what earlier tests recorded, so it sees its own events only."""
        ops.extend(
            Write(f"{self.instance_path}/events/{spec.event_dir}/filter", spec.filter or "0", append=False)
            for spec in taken
        )
        ops.extend(Read(f"events/{spec.event_dir}/format") for spec in taken if spec.display not in self._catalog)
        if first and self._parked is not None and self._instance.planned:
            ops.insert(0, Write(f"{self.instance_path}/trace", "", append=False))

    def _check_parked_still_there(self, failed: OpResult) -> None:
        """An arming batch that found the run's instance or a parked event gone: someone removed it since the
        previous test. The run starts a new instance with the next test; this one cannot arm."""
        parked = self._parked
        if parked is None or failed.errno_name != "ENOENT" or not failed.op.path.startswith(self.instance_path + "/"):
            return
        gone = parked.instance
        parked.abandon()
        if self._held is not None:
            self._held.lose()
        raise TargetError(
            f"arming failed: {failed.op.path} is gone (ENOENT): the run's instance {gone} or a probe parked in "
            f"it was removed by someone else after the previous test; the next test starts a new instance",
            host=self.backend.name,
            command=f"{type(failed.op).__name__} {failed.op.path}",
            cause="ENOENT",
        )

    def _note_instance_change(self, state: InstanceState) -> None:
        """A test that changes the run's instance options (call stacks change them) spoils it for the tests after
        it: the instance and its parked events go when the test ends."""
        if self._parked is not None and (self._stacked or (self._instance.planned and state != self._instance)):
            self._parked.spoil()

    def _park_armed(self, armed: list[ProbeSpec]) -> None:
        """The batch armed everything: hand what can be parked from this test's ledger to the run's instance."""
        if self._held is None:
            return
        if _CONSOLE in armed:  # the kernel log stays captured in the run's instance
            self._held.parked.console_on = True
            self.ledger.forget("disable", disable_op(self.instance_path, _CONSOLE))
        self._held.park([spec for spec in armed if spec is not _CONSOLE], self.instance_path)

    def _completed(self, pending: list[_Defined]) -> list[_Defined]:
        """The probes to arm, their names resolved if they waited for a module's BTF (a probe on ``mod:func``
        defined before the module was loaded); one whose module another load_module() precedes stays back."""
        ready = []
        for probe in pending:
            spec = self._builder.complete(probe.spec, self._loading)
            if spec is not None:
                probe.view.spec = spec
                ready.append(probe)
        return ready

    def _learn(self, results: Sequence[OpResult]) -> None:
        """What an arming batch tells: the formats of the new events, the definitions the kernel accepted."""
        for result in results:
            if result.ok and isinstance(result.op, Read) and result.op.path.endswith("/format"):
                self._catalog.add(parse_format(result.data, result.op.path.split("/")[1]))
            elif result.ok and isinstance(result.op, Write) and result.op.path.endswith("_events"):
                self.ledger.created(result.op.data.split(" ", 1)[0].split(":", 1)[1])
            elif result.op == TAINT_READ:
                self._log.note_taint(result)
        self._hists.take(results)  # hist triggers set or refused, tables read

    def _start_stream(self) -> None:
        assert self._stream_mode is not None
        keys = [(probe.spec.group, probe.spec.event) for probe in self._probes]
        self._stream_mode.start([*keys, CONSOLE_EVENT] if self._log.captured else keys)

    # -------------------------------------------------------------- running
    def run(
        self,
        argv: Union[str, Sequence[str]],
        *,
        timeout: Optional[float] = None,
        stdin: Optional[Union[str, bytes]] = None,
        check: bool = False,
    ) -> RunResult:
        """Run a command on the target with every probe armed; returns its exit status and output. ``stdin``
        (text or bytes) is its standard input."""
        __tracebackhide__ = True
        self._check_open("run()")
        words = command_argv(argv)
        check_seconds("run() timeout", timeout, optional=True, zero_ok=False)
        if stdin is not None and not isinstance(stdin, (str, bytes)):
            raise KtraceError(f"run() stdin must be a str, bytes or None, got {type_name(stdin)}")
        # the arming batch travels with the command where the backend can (one round trip)
        arming = None
        if capable(self.backend, PreparingRuns) and self._stream_mode is None:
            arming = self._prepare_arming()
            if arming is None:
                self._redefine_changed(self._files.check_now())  # nothing to arm: nothing rode on the files
        else:
            self.arm()
        pid_files = self._pid_files()
        # the trace comes back with the command (stream mode: a sync marker is written): no extra round trip
        stream = self._stream_mode
        after: list[Op] = [stream.marker_op() if stream is not None else Read(f"{self.instance_path}/trace")]
        if self._log.captured:
            after.append(TAINT_READ)
        after.extend(self._hists.read_ops())
        words, pid_files = self._perf.wrap(words, pid_files)
        ended = [process for process in self._spawned if process._known_ended]
        limit = self.run_timeout if timeout is None else timeout
        if arming is not None:
            result = self._run_armed(arming, words, timeout=limit, pid_files=pid_files, stdin=stdin, after=after)
        else:
            result = self.backend.run(words, timeout=limit, pid_files=pid_files, stdin=stdin, after=after)
        result = self._perf.unwrap(result)
        self._tracing_started = True
        self._runs.append(result)
        collected = result.after[0] if result.after else None
        self._learn(result.after[1:])
        if stream is not None:
            stream.synced(collected)
            self._dirty = False
            self._note_spawns_read(ended)
        elif collected is not None and collected.ok:
            self._collector.take(collected.data)
            self._dirty = False
            self._note_spawns_read(ended)
        else:
            self._dirty = True
        if check:
            result.check()
        return result

    def _run_armed(
        self,
        arming: _Arming,
        words: list[str],
        *,
        timeout: Optional[float],
        pid_files: list[str],
        stdin: Optional[Union[str, bytes]],
        after: list[Op],
    ) -> RunResult:
        """The command, with the arming batch before it in one round trip (a :class:`PreparingRuns` backend), the
        run's deferred teardowns before that, and first of all the check that the uprobes' files are unchanged."""
        preparing = cast(PreparingRuns, self.backend)  # arming is prepared only for such a backend
        for attempt in itertools.count(1):
            # an earlier test's teardown travels first, before this test clears the run's instance
            settle = self._parked.deferred_ops() if self._parked is not None else []
            try:
                result = preparing.run_prepared(
                    arming.ops,
                    words,
                    timeout=timeout,
                    pid_files=pid_files,
                    stdin=stdin,
                    after=after,
                    settle=settle,
                    unchanged=self._files.unverified(),
                )
            except BaseException:
                self._commit_arming(arming)
                self._armed(arming, [])  # never armed twice: the ledger undoes whatever of it was applied
                raise
            if not result.changed:
                break
            if attempt == 3:
                raise TargetError(
                    f"{', '.join(result.changed)} changed on {self.backend.name} between each reading of it "
                    "and the command that arms its uprobes, three times: is something rebuilding it?",
                    host=self.backend.name,
                    command=" ".join(words),
                    cause="file changing",
                )
            # a file changed since an earlier test copied it: nothing was applied; place its probes again
            self._files.forget(result.changed)
            self._redefine_changed(result.changed)
            again = self._prepare_arming()
            assert again is not None  # nothing was armed: the first arming is still to come
            arming = again
        self._files.verified()
        self._commit_arming(arming)
        if self._parked is not None:
            self._parked.settle(result.settled)
        self._armed(arming, result.before)
        self._after_arming(arming, result.before)
        return result

    def _pid_files(self) -> list[str]:
        """Where a command's pid goes before it execs: with ``scope="run"`` the instance traces that pid (and,
        through event-fork, its children) only."""
        pid_files: list[str] = []
        if self.scope == "run":
            pid_files.append(f"{self.instance_path}/set_event_pid")
            if not self._tracing_started:
                # A pid is a non-zero number, so appending it to tracing_on turns the instance on after the
                # pid filter is in place, with no extra round trip.
                pid_files.append(f"{self.instance_path}/tracing_on")
        return pid_files

    def spawn(self, argv: Union[str, Sequence[str]], *, stdin: Optional[Union[str, bytes]] = None) -> SpawnedProcess:
        """Start a command in the background on the target with every probe armed, and return at once with its
        :class:`~pytest_ktrace.SpawnedProcess` (``pid``, ``wait()``, ``kill()``, ``returncode``, ``stdout``,
        ``stderr``). ``stdin`` (text or bytes) is its standard input. It leads a session of its own, so it and
        its children are ended together, by its process group: by ``kill()``, or by the test's teardown before
        anything else. With ``scope="run"`` it and its children are traced like a :meth:`run` command."""
        __tracebackhide__ = True
        self._check_open("spawn()")
        words = command_argv(argv, "spawn()")
        if not words:
            raise KtraceError("spawn() needs a command: argv is empty")
        if stdin is not None and not isinstance(stdin, (str, bytes)):
            raise KtraceError(f"spawn() stdin must be a str, bytes or None, got {type_name(stdin)}")
        backend = self.backend
        if not isinstance(backend, Spawning):
            raise KtraceError(
                f"spawn() needs a backend that can start commands in the background (the Spawning capability), "
                f"and {backend.name} ({type(backend).__name__}) has none; ktrace.run() runs a command to its end"
            )
        self.arm()
        if not self._spawned:
            self.ledger.stop_first(self._end_spawned)  # a process may hold the probes, the instance or a module
        command = backend.spawn(words, pid_files=self._pid_files(), stdin=stdin)
        self._tracing_started = True
        self._dirty = True
        process = SpawnedProcess(
            command, words, target=self.target.name, timeout=self.run_timeout, ended=self._spawn_ended
        )
        self._spawned.append(process)
        return process

    def _spawn_ended(self) -> None:
        self._dirty = True  # what it did last may not have been read yet

    def _spawns_unread(self) -> bool:
        """Whether a spawned command may have added events since the last read: it runs, or it ended after it."""
        return any(id(process) not in self._spawn_ends_read for process in self._spawned)

    def _note_spawns_read(self, ended: Sequence[SpawnedProcess]) -> None:
        self._spawn_ends_read.update(id(process) for process in ended)

    def _end_spawned(self) -> list[str]:
        """Teardown, before anything else: every spawned command still there is ended and reaped."""
        problems = []
        for process in self._spawned:
            try:
                process.kill()
            except ConnectionLost:
                raise
            except KtraceError as exc:
                problems.append(f"spawned command {list(process.argv)!r} (pid {process.pid}): {exc}")
        return problems

    def push(self, local: Union[str, os.PathLike[str]], remote: Optional[str] = None, *, mode: int = 0o644) -> str:
        """Put the local file ``local`` on the target (binary-safe, one transfer) and return its path there:
        ``remote``, or a name of this test's in ``/tmp``. It is removed after the test; an existing file is never
        replaced."""
        self._check_open("push()")
        if not isinstance(self.backend, FilePushing):
            raise KtraceError(
                f"push() needs a backend that can put files on its target (the FilePushing capability), and "
                f"{self.backend.name} ({type(self.backend).__name__}) has none"
            )
        if not isinstance(local, (str, os.PathLike)):
            raise KtraceError(f"push() local must be a path, got {type_name(local)} {local!r}")
        try:
            data = Path(local).read_bytes()
        except OSError as exc:
            raise KtraceError(f"push(): cannot read {os.fspath(local)}: {exc.strerror or exc}") from None
        if remote is None:
            remote = f"/tmp/{self.instance}-{len(self._pushed) + 1}-{Path(local).name}"
        check_text("push() remote", remote)
        if not remote.startswith("/"):
            raise KtraceError(f"push() remote {remote!r} must be an absolute path on the target")
        check_int("push() mode", mode, 0, 0o7777)
        self.arm()  # as run() does: the probes see what the file is used for, and the cassette knows the names
        self.ledger.join("files", [Remove(remote)])  # before the file exists: a push that dies half way is undone
        try:
            self.backend.push_file(data, remote, mode)
        except FileExistsError:
            self.ledger.forget("files", Remove(remote))  # not ours: never removed
            raise KtraceError(f"push(): {remote} already exists on {self.target.name}; it is left alone") from None
        self._pushed.append(remote)
        return remote

    def load_module(self, module: Union[str, os.PathLike[str]], **params: object) -> LoadedModule:
        """Load a kernel module into the target for this test: a local ``.ko`` file is pushed and loaded with
        ``insmod``, a bare name with ``modprobe``; ``params`` are its module parameters (ints, bools, strings,
        lists). Probes defined before the load see its ``module_init``. After the test its probes and events go
        first, then the module is unloaded, then its file. A module already loaded is never unloaded by the test.
        A load that fails raises :class:`ModuleLoadError` with the kernel's own lines of that load."""
        self._check_open("load_module()")
        words = module_params(params)
        local = Path(module) if isinstance(module, (str, os.PathLike)) and Path(module).is_file() else None
        if local is not None:
            name = module_name(local.read_bytes(), local.name)
        elif isinstance(module, str) and not module.endswith(".ko") and "/" not in module:
            name = check_module_name(module)
        else:
            raise KtraceError(f"load_module(): {module!r} is not a file here (a .ko to push) nor a module name")
        self._loading = (name, local)  # probes waiting for this module's BTF take it from the .ko (see arm())
        try:
            return self._load(name, local, words, params)
        finally:
            self._loading = None
            forget_module(self.backend, name)  # loaded (or half loaded) since its BTF was last read

    def _load(self, name: str, local: Optional[Path], words: list[str], params: dict[str, object]) -> LoadedModule:
        self.arm()
        loaded = self.backend.apply([Read(f"/sys/module/{name}/initstate", missing_ok=True)])[0]
        if loaded.ok and loaded.data.strip():
            if local is not None:
                raise ModuleLoadError(
                    f"load_module({local.name}): {name} is already loaded on {self.target.name}, not by this test; "
                    "unload it first (the test never unloads what it did not load)",
                    module=name,
                    errno_name="EEXIST",
                )
            return LoadedModule(name, dict(params), None, ours=False)
        path = self.push(local, mode=0o644) if local is not None else None
        if local is not None and self._log.captured:
            self._log.expect_taint("OE")  # an out-of-tree module, unsigned or signed with a key of its own
        argv = ["insmod", path, *words] if path is not None else ["modprobe", name, *words]
        self.ledger.unload(name)  # before the load: a load that half happens is still undone
        self._loaded.append(name)
        result = self.run(argv)
        if result.returncode != 0:
            self.ledger.keep_loaded(name)
            log = [line.text for line in self.kernel_log_lines(self._current()) if line.pid == result.pid]
            raise load_failure(name, argv, result.stderr, result.returncode, log)
        return LoadedModule(name, dict(params), path, ours=True)

    @property
    def runs(self) -> list[RunResult]:
        """Every command :meth:`run` ran in this test, in order."""
        return list(self._runs)

    # ------------------------------------------------------------------ perf
    @contextlib.contextmanager
    def perf_stat(
        self,
        events: Sequence[str] = ("task-clock", "context-switches", "cpu-migrations", "page-faults"),
        *,
        system_wide: bool = False,
        unsupported: UnsupportedPolicy = "skip",
    ) -> Iterator[PerfStat]:
        """Count ``events`` with ``perf stat`` on the target for every ``ktrace.run(...)`` inside the block
        (``system_wide``: everything on the target while those commands run, ``perf stat -a``). An event perf
        cannot count there (``<not supported>``, e.g. hardware counters in a VM) skips the test with the
        reason, fails it (``unsupported="fail"``), or is left out of the counts (``"ignore"``). No perf on the
        target: the test is skipped, naming the target."""
        __tracebackhide__ = True
        self._check_open("perf_stat()")
        with self._perf.stat(events, system_wide=system_wide, unsupported=unsupported) as stat:
            yield stat

    @contextlib.contextmanager
    def profile(self, *, frequency: int = 999, system_wide: bool = False, label: str = "") -> Iterator[Profile]:
        """Sample call stacks with ``perf record -g`` (``frequency`` Hz) on the target for every
        ``ktrace.run(...)`` inside the block; the result is folded on the target's own symbols. With
        ``--ktrace-flamegraph`` the plugin writes it as an SVG flame graph next to the report."""
        __tracebackhide__ = True
        self._check_open("profile()")
        with self._perf.profile(frequency=frequency, system_wide=system_wide, label=label) as prof:
            yield prof

    @property
    def profiles(self) -> list[Profile]:
        """The finished ``profile()`` blocks of this test, in order."""
        return self._perf.profiles

    # ------------------------------------------------------------ collecting
    def collect(self) -> ParsedTrace:
        """Read and parse this test's trace now (later accesses reuse it until the next run/arm/wait)."""
        ended = [process for process in self._spawned if process._known_ended]
        stream = self._stream_mode
        if stream is not None:
            self._sync_stream(stream)
            self._note_spawns_read(ended)
            return stream.snapshot()
        self.arm()
        parsed = self._collector.collect()
        self._dirty = False
        self._note_spawns_read(ended)
        return parsed

    def _sync_stream(self, stream: StreamMode) -> None:
        self.arm()
        if self._tracing_started:
            stream.sync()
        # else scope="run" before the first run: tracing is off, nothing can arrive
        self._dirty = False

    def _current(self) -> ParsedTrace:
        stale = self._dirty or self._spawns_unread()
        stream = self._stream_mode
        if stream is not None:
            return self.collect() if stale or stream.pump is None else stream.snapshot()
        parsed = self._collector.parsed
        return self.collect() if stale or parsed is None else parsed

    def _observe(self, spec: ProbeSpec) -> Observation:
        hints = () if self._runs or self._spawned else (_NOTHING_RAN,)
        stream = self._stream_mode
        if stream is not None:
            if self._dirty or self._spawns_unread() or stream.pump is None:
                ended = [process for process in self._spawned if process._known_ended]
                self._sync_stream(stream)
                self._note_spawns_read(ended)
            return stream.observation((spec.group, spec.event), lost_policy=self.lost_policy, hints=hints)
        parsed = self._current()
        stacked = (spec.group, spec.event) in self._stacked
        events = self._collector.events_of(spec, parsed, stacked=stacked)
        return Observation(events, dict(parsed.lost), hints if not events else (), self.lost_policy)

    @property
    def events(self) -> list[Event]:
        """Every event of this test, in trace order (the kernel log is :attr:`kernel_log`, not events, unless the
        test asked for ``printk:console`` itself)."""
        events = self._current().events
        if not self._log.captured or any(probe.spec.display == _CONSOLE.display for probe in self._probes):
            return list(events)
        return [event for event in events if (event.system, event.name) != CONSOLE_EVENT]

    # ------------------------------------------------------------ kernel log
    @property
    def kernel_log(self) -> KernelLog:
        """The lines the kernel printed while this test traced (``printk:console`` in its instance), its splats,
        and ``expect()`` for a splat the test provokes on purpose."""
        if not self.ledger.done:
            self.arm()  # the log is captured from the first arming on: it knows then whether the target has it
        return self._log

    def kernel_log_lines(self, parsed: ParsedTrace) -> list[LogLine]:
        """The kernel log in ``parsed`` (a trace this test already read), for reports."""
        return lines_of(parsed.of(*CONSOLE_EVENT)) if self._log.captured else []

    def check_kernel_log(self) -> None:
        """After the test's body: fail (or warn) for a splat in what the test already read, without reading."""
        __tracebackhide__ = True
        if not self._log.captured:
            return
        stream = self._stream_mode
        if stream is not None:
            parsed = stream.snapshot() if stream.pump is not None else None
        else:
            parsed = self._collector.parsed
        if parsed is not None:
            self._log.update(parsed.of(*CONSOLE_EVENT))
        self._log.verdict(final=True, when="after the test")

    def _last_taint(self, result: OpResult) -> list[str]:
        self._log.note_taint(result)
        return self._log.problems(final=False)

    def _last_look(self, result: OpResult) -> list[str]:
        """The teardown batch's read of the trace: splats printed after the test's last look."""
        if self._stream_mode is not None or not result.ok:
            return []
        self._log.update(self._collector.take(result.data).of(*CONSOLE_EVENT))
        return self._log.problems(final=False)

    @property
    def trace_text(self) -> str:
        """The raw trace as last collected (what the failure report section shows); in stream mode the last
        lines that streamed past."""
        if self._stream_mode is not None and self._stream_mode.pump is not None:
            return self._stream_mode.raw_tail()
        return self._collector.text

    # ------------------------------------------------------------ aggregates
    def hist(
        self,
        probe: ProbeView,
        keys: Union[str, Sequence[str]],
        values: Union[str, Sequence[str]] = (),
        *,
        filter: Optional[str] = None,
        sort: Union[str, Sequence[str], None] = None,
        size: Optional[int] = None,
    ) -> HistResult:
        """Count ``probe``'s hits in the kernel with a hist trigger, by ``keys`` (1 to 3 fields, with the kernel's
        modifiers: ``common_pid.execname``, ``addr.sym``, ``len.log2``, ...), summing ``values`` (up to 2), over
        the hits that pass ``filter`` (and the probe's own filter); ``size`` entries (a power of two, 128 to
        131072, default 2048). No hit is lost whatever the rate: the table is read with each ``run()``, and the
        hits that found it full are ``dropped``. Targets without hist triggers raise
        :class:`~pytest_ktrace.HistUnavailable`."""
        self._check_open("hist()")
        view = self._view_of(probe, "hist")
        return self._hists.hist(view, keys, values, filter=filter, sort=sort, size=size, scope=self.scope)

    def count_by(self, probe: ProbeView, field: str) -> Counter[Any]:
        """A live :class:`collections.Counter` of ``field``'s values over every event of ``probe`` (a ``where()``
        view counts only its events; the task is ``task_pid``/``task_comm``/``task_cpu``, or ``pid``/``comm``/
        ``cpu`` for an event without such a field). Updated after each ``run()``,
        ``collect()`` and ``wait_for()``; in stream mode it sees every streamed event and keeps none (register
        it before the first ``run()``). Where the target has hist triggers the kernel counts (``.source ==
        "kernel"``: every hit, whatever the rate); else, or when the kernel cannot count what was asked, the
        probe's events are counted here (``.source == "stream"``, ``.why`` says why)."""
        view = self._view_of(probe, "count_by")
        what = f"count_by({view.name}, {field!r})"
        self._check_open(what)
        counted = self._hists.count_by(view, field, ran=bool(self._runs or self._spawned), scope=self.scope)
        if counted.source == "kernel":
            self._add_aggregate(self._hists, what)  # its tables are read at each sync point
            return counted
        aggregate = CountBy(view, field, counted)
        self._add_aggregate(aggregate, what)
        return aggregate.counter

    def latency_histogram(
        self, entry: ProbeView, exit: ProbeView, *, buckets_us: Sequence[float] = DEFAULT_BUCKETS_US
    ) -> Histogram:
        """Durations from each ``exit`` event back to the latest open ``entry`` event of the same task (recursion
        nests, as in :meth:`assert_latency`), counted into ``buckets_us`` (upper bounds, plus an overflow
        bucket). Live like :meth:`count_by`; ``histogram.assert_below(max_us, quantile=0.99)`` checks it.
        Always paired here from the streamed events (``.source == "stream"``, ``.why`` says why)."""
        aggregate = LatencyHistogram(
            self._view_of(entry, "latency_histogram"), self._view_of(exit, "latency_histogram"), buckets_us
        )
        self._add_aggregate(aggregate, f"latency_histogram({entry.name}, {exit.name})")
        return aggregate.histogram

    def _add_aggregate(self, aggregate: Aggregate, what: str) -> None:
        self._check_open(what)
        if self.stream and self._runs:
            raise KtraceError(
                f"{what} must be registered before the first ktrace.run() in stream mode: streamed events are "
                "counted as they pass and only the last --ktrace-keep-events of each probe are kept, so the "
                "events of earlier runs cannot be fed to it. Create the aggregate right after the probes."
            )
        self._aggregates.add(aggregate)
        pump = self._stream_mode.pump if self._stream_mode is not None else None
        if pump is not None:
            pump.register(aggregate)
        elif not self.stream and self._collector.parsed is not None:
            self._aggregates.feed_trace(self._collector.parsed, [aggregate])

    # ----------------------------------------------------------- the fake only
    def inject(
        self,
        probe: ProbeView,
        count: int = 1,
        *,
        timestamp: Optional[float] = None,
        stack: Sequence[str] = (),
        **values: Union[int, str],
    ) -> int:
        """Emit ``count`` synthetic events of ``probe`` (fake backend only), typed and checked against the probe's
        format like kernel data; returns how many were recorded (filters still apply).

        ``values`` name what the events hold by the rule of :data:`~pytest_ktrace._events.TASK_KEYS`: the
        event's fields by name, the task as ``task_pid``/``task_comm``/``task_cpu`` (``pid``/``comm``/``cpu``
        where the event has no such field). ``timestamp``: the trace clock of the events, in seconds (default:
        the fake's clock), so latency tests are exact. ``stack``: the kernel call stack (innermost first) a
        ``stacktrace=True`` probe records with each."""
        self._check_open("inject()")
        if not capable(self.backend, Injecting):
            raise KtraceError(
                f"ktrace.inject needs the fake backend (--ktrace-backend=fake); {self.backend.name} is a real target"
            )
        probe = self._view_of(probe, "inject")
        check_int("inject count", count, 0)
        self.arm()
        spec = probe.spec
        fmt = self._catalog.get(f"{spec.group}:{spec.event}")
        if fmt is None:
            raise KtraceError(f"no format known for {spec.event_dir}: was the probe armed?")
        recorded = cast(Injecting, self.backend).inject_probe(
            spec.event_dir, fmt, name=probe.name, count=count, timestamp=timestamp, stack=stack, values=values
        )
        self._dirty = True
        return recorded

    # ------------------------------------------------------------- waiting
    def wait_for(
        self, probe: ProbeView, count: int = 1, *, timeout: float = 10.0, poll_s: float = 0.05, **fields: Any
    ) -> list[Event]:
        """Wait until ``probe`` has at least ``count`` events (matching ``fields``); return them."""
        __tracebackhide__ = True
        self._check_open("wait_for()")
        probe = self._view_of(probe, "wait_for")
        check_int("wait_for count", count, 0)
        check_seconds("wait_for timeout", timeout)
        check_seconds("wait_for poll_s", poll_s)
        view = probe.where(**fields) if fields else probe
        deadline = time.monotonic() + timeout
        while True:
            self._dirty = True
            seen = view.events
            have = view.call_count if self.stream and not view._criteria else len(seen)
            if have >= count:
                return seen
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"wait_for({probe.name}, count={count}): only {have} matching event(s) after "
                    f"{timeout} s" + (f" (where {fields})" if fields else "")
                )
            time.sleep(poll_s)

    # ---------------------------------------------------------- assertions
    def assert_order(self, *probes: ProbeView) -> None:
        """The first event of each probe occurs in the given order."""
        __tracebackhide__ = True
        probes = tuple(self._view_of(probe, "assert_order") for probe in probes)
        order = {id(event): index for index, event in enumerate(self._current().events)}
        assert_order(probes, position=lambda event: order.get(id(event), -1))

    def assert_latency(
        self, entry: ProbeView, exit: ProbeView, *, max_us: Optional[float] = None, min_us: Optional[float] = None
    ) -> list[float]:
        """Pair entry/exit events per task and check every duration; returns the durations (us)."""
        __tracebackhide__ = True
        entry = self._view_of(entry, "assert_latency")
        exit = self._view_of(exit, "assert_latency")
        order = {id(event): index for index, event in enumerate(self._current().events)}
        return assert_latency(entry, exit, max_us=max_us, min_us=min_us, position=lambda e: order.get(id(e), -1))

    # -------------------------------------------------------------- teardown
    def teardown_ops(self) -> list[Op]:
        """Undo everything planned, in the safe order: disable (else EBUSY), drop the instance, remove events."""
        return self.ledger.ops()

    def teardown(self) -> TeardownReport:
        report = TeardownReport()
        try:
            held = self._held
            # over a backend where round trips cost, a teardown of parking filters and the last look only
            # travels with the next test's first batch on the target (see _warm)
            warn = self._log.policy == "warn"
            if held is None or not capable(self.backend, PreparingRuns) or not held.defer_teardown(warn=warn):
                report = self.ledger.undo()
            return report
        finally:
            if self._held is not None:
                self._held.release(report.vanished)
            for name in self._loaded:
                forget_module(self.backend, name)  # unloaded: its BTF is read again when it is back

    def __repr__(self) -> str:
        armed = sum(1 for probe in self._probes if probe.armed)
        state = "torn down" if self.ledger.done else f"{armed} of {len(self._probes)} probe(s) armed"
        return f"<TraceSession {self.instance} on {self.backend.name}: {state}>"

    # ------------------------------------------------------------- reporting
    @property
    def probes(self) -> list[ProbeView]:
        """Every probe this test defined, in definition order (``.spec`` is its definition)."""
        return [probe.view for probe in self._probes]

    def attach(self, label: str, path: Union[str, os.PathLike[str]]) -> None:
        """Attach a file (a flame graph, a capture) to this test's report: listed in the failure report section,
        copied and linked by ``--ktrace-report``. It may be written after this call, until the test ends."""
        self._artifacts.append(make_artifact(label, path))

    @property
    def artifacts(self) -> list[Artifact]:
        """What :meth:`attach` was given, in order."""
        return list(self._artifacts)
