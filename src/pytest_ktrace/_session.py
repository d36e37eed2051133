"""The ``ktrace`` fixture object: probe factories, running commands, collecting the trace, and the teardown
ledger that undoes exactly what this test created."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import math
import os
import posixpath
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence, Union

import pytest

from . import _elf as elf
from ._arch import normalize_arch, rewrite_argn
from ._arming import InstanceState, plan_arm
from ._assertions import Observation, ProbeView, assert_latency, assert_order
from ._errors import (
    ConnectionLost,
    KtraceError,
    MissingBinary,
    ProbeRejected,
    TargetError,
    TracefsUnavailable,
    UnknownSymbol,
    UnsupportedFetchArg,
    hide_for_ktrace_errors,
)
from ._events import TASK_KEYS, Event, task_key
from ._files import write_private_temp
from ._identity import RunIdentity
from ._matchers import ANY
from ._parse import FormatCatalog, ParsedTrace, TraceParser, parse_format
from ._perf import PerfStat, Profile, UnsupportedPolicy, parse_stat, unwrap, wrap_record, wrap_stat
from ._probes import ProbeKind, ProbeSpec, check_encodable, check_fetchargs, check_text, event_name_for
from ._stacks import TraceStacks, stack_key, stacks_by_event, symbolize_user, with_stacks
from ._streaming import (
    DEFAULT_BUCKETS_US,
    DEFAULT_KEEP,
    SYNC_PREFIX,
    Aggregate,
    CountBy,
    Histogram,
    LatencyHistogram,
    StreamPump,
)
from .backends._base import (
    Backend,
    Injecting,
    Mkdir,
    Op,
    OpResult,
    Read,
    Rmdir,
    RunResult,
    SharedFilesystem,
    Streaming,
    TargetInfo,
    TraceStream,
    Write,
)
from .backends._features import MOUNT_HINT
from .btf._names import kernel_fetchargs
from .report._artifacts import Artifact, make_artifact

__all__ = ["Scope", "TeardownReport", "TraceSession"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

Scope = Literal["all", "run"]
# fullmatch() only: "$" would also match before a trailing newline (a second kernel command)
_TRACEPOINT = re.compile(r"(?P<system>[A-Za-z0-9_.-]+):(?P<event>[A-Za-z0-9_.-]+)")
_KSYM = re.compile(
    r"(?:(?P<mod>[A-Za-z0-9_-]+):)?(?P<sym>[A-Za-z_.$][A-Za-z0-9_.$]*)(?:\+(?P<off>0x[0-9a-fA-F]+|[0-9]+))?"
)
_DEFAULT_RETURN = "$retval:s32"
_CALLER_FIELD = "__probe_caller"
_CALLER_AT_ENTRY = {"x86_64": "$stack0:x64", "arm64": "%x30:x64"}  # return address at a function's first byte
_ENTRIES = re.compile(r"^# entries-in-buffer/entries-written: (\d+)/(\d+)\s+#P:(\d+)", re.M)
_OVERRUN = re.compile(r"^overrun: (\d+)", re.M)


def _overwritten(trace: str) -> int:
    """Events the ring buffer overwrote, from the `trace` header (written minus still in the buffer)."""
    match = _ENTRIES.search(trace)
    return max(0, int(match.group(2)) - int(match.group(1))) if match else 0


def _cpu_count(trace: str) -> int:
    match = _ENTRIES.search(trace)
    return int(match.group(3)) if match else 1


def _type_name(value: object) -> str:
    return type(value).__name__


def _check_seconds(what: str, value: object, *, optional: bool = False, zero_ok: bool = True) -> None:
    """A duration in seconds: a real number (not bool, not NaN), >= 0 (or > 0)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KtraceError(f"{what}={value!r} must be a number of seconds, got {_type_name(value)}")
    if (isinstance(value, float) and math.isnan(value)) or value < 0 or (value == 0 and not zero_ok):
        raise KtraceError(f"{what}={value!r} must be a number of seconds {'>= 0' if zero_ok else '> 0'}")


def _check_int(what: str, value: object, minimum: int, maximum: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise KtraceError(f"{what}={value!r} must be an int, got {_type_name(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise KtraceError(f"{what}={value!r} must be an int {bound}")


def _definition_site() -> str:
    """file:line of the test code that called a factory (first frame outside this package)."""
    here = os.path.dirname(__file__)
    for frame in inspect.stack()[2:]:
        if not frame.filename.startswith(here):
            return f"{frame.filename}:{frame.lineno}"
    return ""


@dataclass
class _Armed:
    spec: ProbeSpec
    view: ProbeView
    armed: bool = False


@dataclass
class TeardownReport:
    """What teardown could not undo; empty when the kernel is back as it was."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth a warning, not a failure
    deferred: str = ""  # why teardown was handed to the backend for its next connection

    def __bool__(self) -> bool:
        return bool(self.failures)


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
    ) -> None:
        self.backend = backend
        self.identity = identity
        self.instance = identity.instance(serial)
        self.scope: Scope = scope
        self.run_timeout = run_timeout
        self.buffer_kb = buffer_kb
        self.lost_policy = lost_policy
        self._probes: list[_Armed] = []
        self._serial = 0
        self._instance_planned = False
        self._disable_ops: list[Op] = []
        self._removal_ops: list[Op] = []
        self._catalog = FormatCatalog()
        self._parsed: Optional[ParsedTrace] = None
        self._dirty = True
        self._raw_trace = ""
        self._runs: list[RunResult] = []
        # path -> (identity "size mtime inode", local copy): owned by the run, so copies outlive this test
        self._elf_cache: dict[str, tuple[str, Path]] = {} if elf_cache is None else elf_cache
        self._elf_checked: set[str] = set()
        self._tracing_started = scope == "all"
        self._torn_down = False
        self._created: set[str] = set()  # group/event of every probe the kernel accepted
        if keep_events < 1:
            raise KtraceError(f"keep_events={keep_events!r}: at least 1 event per probe must be kept")
        self.stream = stream
        self.keep_events = keep_events
        self.sync_stall_s = sync_stall_s
        self._pump: Optional[StreamPump] = None
        self._perf: Optional[Union[PerfStat, Profile]] = None  # the perf block run() wraps commands for
        self.profiles: list[Profile] = []
        self._stacks: set[tuple[str, str]] = set()  # (group, event) of probes with stacktrace=True
        self._stack_cache: Optional[tuple[str, TraceStacks]] = None
        self._fields_on = False  # the instance prints events with options/fields
        self._user_stacks_on = False  # options/userstacktrace is set in the instance
        self._trace_stream: Optional[TraceStream] = None
        self._markers = 0  # sync markers written to trace_marker (and so, eventually, streamed)
        self._aggregates: list[Aggregate] = []
        self._unchecked: list[Aggregate] = []  # aggregates whose field awaits the probe's format
        self._artifacts: list[Artifact] = []

    # ------------------------------------------------------------------ target
    @property
    def target(self) -> TargetInfo:
        return self.backend.describe()

    @property
    def instance_path(self) -> str:
        return f"instances/{self.instance}"

    # --------------------------------------------------------------- factories
    def kprobe(
        self, symbol: str, *args: str, filter: Optional[str] = None, stacktrace: bool = False, **fetchargs: str
    ) -> ProbeView:
        """A kprobe on ``[module:]symbol[+offset]``; fetchargs in kernel syntax (``irq="%x0:u32"``, ``"$arg1"``)
        or C names resolved from the target's BTF (``irq="irq"``, ``name="new->name:string"``, see names.py).
        ``stacktrace=True`` records the kernel call stack of every hit (``event.stack``)."""
        return self._with_stack(self._kernel_probe("kprobe", symbol, args, fetchargs, filter, None), stacktrace)

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
        return self._with_stack(self._kernel_probe("kretprobe", symbol, args, fetchargs, filter, maxactive), stacktrace)

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
        return self._with_stack(self._user_probe("uprobe", path, location, args, fetchargs, filter), stacktrace)

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
        return self._with_stack(self._user_probe("uretprobe", path, location, args, fetchargs, filter), stacktrace)

    def tracepoint(self, name: str, *, filter: Optional[str] = None, stacktrace: bool = False) -> ProbeView:
        """An existing kernel event ``system:event``, enabled in this test's instance only; ``stacktrace=True``
        records the kernel call stack of every hit (``event.stack``)."""
        return self._with_stack(self._tracepoint(name, filter), stacktrace)

    def _with_stack(self, view: ProbeView, stacktrace: object) -> ProbeView:
        if not isinstance(stacktrace, bool):
            raise KtraceError(f"stacktrace= must be True or False, got {_type_name(stacktrace)} {stacktrace!r}")
        if stacktrace:
            if self.stream:
                raise KtraceError(
                    f"{view.name}: stacktrace=True is not available in stream mode (stack entries are not "
                    "streamed); turn streaming off for this test"
                )
            self._stacks.add((view.spec.group, view.spec.event))
            extra: tuple[tuple[str, str], ...] = ()
            caller = _CALLER_AT_ENTRY.get(self.arch)
            if view.spec.kind == "uprobe" and caller is not None:
                # at a function's entry the frame-pointer walk skips the direct caller, whose return address is
                # still in the link register / on top of the stack: fetch it with the event
                extra = ((_CALLER_FIELD, caller),)
            view.spec = dataclasses.replace(view.spec, stacktrace=True, fetchargs=view.spec.fetchargs + extra)
            for probe in self._probes:
                if probe.view is view:
                    probe.spec = view.spec
        return view

    def _tracepoint(self, name: str, filter: Optional[str]) -> ProbeView:
        """An existing kernel event ``system:event``, enabled in this test's instance only."""
        self._check_open("tracepoint()")
        if not isinstance(name, str):
            raise KtraceError(f"tracepoint name must be a str 'system:event', got {_type_name(name)} {name!r}")
        match = _TRACEPOINT.fullmatch(name)
        if not match or any(part in (".", "..") for part in match.group("system", "event")):
            raise KtraceError(
                f"tracepoint {name!r} must be 'system:event' on a single line, e.g. 'sched:sched_process_exec'"
            )
        if filter is not None:
            check_text("filter", filter)
        spec = ProbeSpec(
            kind="tracepoint",
            group=match.group("system"),
            event=match.group("event"),
            location="",
            filter=filter,
            display=name,
            where=_definition_site(),
        )
        return self._register(spec)

    # ------------------------------------------------------------- spec build
    def _named_args(self, args: Sequence[str], fetchargs: dict[str, str]) -> dict[str, str]:
        named: dict[str, str] = {}
        for index, text in enumerate(args, start=1):
            named[f"arg{index}"] = text
        for key, text in fetchargs.items():
            if key in named:
                raise KtraceError(f"fetcharg {key!r} given twice")
            named[key] = text
        check_fetchargs(named)
        return named

    def _adapt(
        self, kind: ProbeKind, named: dict[str, str], default_return: Optional[str] = _DEFAULT_RETURN
    ) -> dict[str, str]:
        """Make fetchargs runnable on this target: ``$argN`` becomes a register where the kernel lacks it."""
        info = self.target
        is_user = kind in ("uprobe", "uretprobe")
        is_return = kind in ("kretprobe", "uretprobe")
        if is_return and default_return and not any(text.startswith("$retval") for text in named.values()):
            named = {"ret": default_return, **named} if "ret" not in named else named
        adapted: dict[str, str] = {}
        for key, text in named.items():
            if "$arg" in text and not text.startswith("$args"):
                if is_return and not (not is_user and info.has("argN_on_return")):
                    raise UnsupportedFetchArg(
                        f"{key}={text}: $argN on a return probe needs a kernel that saves entry arguments "
                        f"(kprobes on Linux 6.9+); {info.name} runs {info.release}. Record it with an entry probe."
                    )
                if is_user:
                    text = rewrite_argn(text, info.arch, why="uprobes do not support $argN")
                elif not info.has("argN"):
                    text = rewrite_argn(text, info.arch, why=f"the kernel of {info.name} has no $argN")
            adapted[key] = text
        return adapted

    def _kernel_probe(
        self,
        kind: ProbeKind,
        symbol: str,
        args: Sequence[str],
        fetchargs: dict[str, str],
        filter: Optional[str],
        maxactive: Optional[int],
    ) -> ProbeView:
        self._check_open(f"{kind}()")
        if not isinstance(symbol, str):
            raise KtraceError(f"{kind} symbol must be a str, got {_type_name(symbol)} {symbol!r}")
        match = _KSYM.fullmatch(symbol)
        if not match:
            raise KtraceError(
                f"{kind} target {symbol!r} must be a kernel symbol on a single line, optionally +offset (e.g. "
                "'__setup_irq', 'vfs_read+0x10')"
            )
        if kind == "kretprobe" and match.group("off"):
            raise KtraceError(f"kretprobe {symbol!r}: a return probe attaches to a function entry, not an offset")
        if filter is not None:
            check_text("filter", filter)
        if maxactive is not None and (
            isinstance(maxactive, bool) or not (isinstance(maxactive, int) and 0 < maxactive <= 4096)
        ):
            raise KtraceError(f"maxactive={maxactive!r} must be an int in 1..4096")
        # names (irq="irq", name="new->name:string") resolved from the target's BTF, the return value typed by it
        named, default_return = kernel_fetchargs(
            self.backend, kind, symbol, self._named_args(args, fetchargs), default_return=_DEFAULT_RETURN
        )
        named = self._adapt(kind, named, default_return)
        spec = ProbeSpec(
            kind=kind,
            group=self.identity.group,
            event=event_name_for(kind, match.group("sym"), self._serial_event()),
            location=symbol,
            fetchargs=tuple(named.items()),
            filter=filter,
            maxactive=maxactive,
            display=match.group("sym"),
            where=_definition_site(),
        )
        return self._register(spec)

    def _user_probe(
        self,
        kind: ProbeKind,
        path: str,
        location: Union[str, int],
        args: Sequence[str],
        fetchargs: dict[str, str],
        filter: Optional[str],
    ) -> ProbeView:
        self._check_open(f"{kind}()")
        if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
            raise KtraceError(f"{kind} path must be a str (or a str path-like), got {_type_name(path)} {path!r}")
        path = os.fspath(path)
        check_text("uprobe path", path)
        if any(ch.isspace() for ch in path) or not path.startswith("/"):
            raise KtraceError(f"uprobe path {path!r} must be absolute and free of whitespace (the kernel splits on it)")
        if filter is not None:
            check_text("filter", filter)
        if isinstance(location, bool) or not isinstance(location, (int, str)):
            raise KtraceError(
                f"{kind} location must be a symbol name (str) or a file offset (int), got "
                f"{_type_name(location)} {location!r}"
            )
        if isinstance(location, int) and not 0 <= location < 2**64:
            raise KtraceError(f"{kind} location {location!r}: a file offset must be in 0..2**64-1")
        if isinstance(location, int):
            offset, display = location, f"{os.path.basename(path)}+{location:#x}"
        else:
            offset, display = elf.symbol_file_offset(self._local_copy(path), location), location
        named = self._adapt(kind, self._named_args(args, fetchargs))
        spec = ProbeSpec(
            kind=kind,
            group=self.identity.group,
            event=event_name_for(kind, display, self._serial_event()),
            location=f"{path}:{offset:#x}",
            fetchargs=tuple(named.items()),
            filter=filter,
            display=display,
            where=_definition_site(),
        )
        return self._register(spec)

    def _serial_event(self) -> int:
        # Unique within the run's group across tests: instance serial + per-test counter.
        self._serial += 1
        return int(self.instance.rsplit("_", 1)[1]) * 1000 + self._serial

    def _local_copy(self, path: str) -> Path:
        """A local path to the target's ELF file (itself on a local backend), to read symbols from. Remote copies
        are shared by the whole run and re-fetched only when the file's size, mtime or inode changed."""
        if isinstance(self.backend, SharedFilesystem) and self.backend.files_are_local:
            if not os.path.exists(path):
                raise MissingBinary(f"uprobe target {path} does not exist on {self.backend.name}")
            return Path(path)
        cached = self._elf_cache.get(path)
        if path in self._elf_checked and cached is not None:
            return cached[1]  # already checked in this test
        stat = self.backend.run(["stat", "-L", "-c", "%s %Y %i", "--", path], timeout=self.run_timeout)
        if stat.returncode != 0 and "No such file" in stat.stderr:
            raise MissingBinary(f"uprobe target {path} does not exist on {self.backend.name}")
        identity = stat.stdout.strip() if stat.returncode == 0 else ""
        self._elf_checked.add(path)
        if cached is not None and identity and cached[0] == identity and cached[1].exists():
            return cached[1]
        result = self.backend.run(["cat", "--", path], timeout=self.run_timeout)
        if result.returncode != 0:
            raise MissingBinary(f"uprobe target {path} cannot be read on {self.backend.name}: {result.stderr.strip()}")
        copy = write_private_temp(
            result.stdout.encode("utf-8", "surrogateescape"),
            prefix="ktrace-elf-",
            what=f"the local copy of {self.backend.name}:{path} at",
        )
        if cached is not None:
            cached[1].unlink(missing_ok=True)
        self._elf_cache[path] = (identity, copy)
        return copy

    def _check_open(self, what: str) -> None:
        """After teardown nothing may be created any more: it would never be removed."""
        if self._torn_down:
            raise KtraceError(
                f"{what}: the ktrace session of this test was torn down; it can no longer define, arm, run or "
                "inject (anything created now would be left in the kernel)"
            )

    def _register(self, spec: ProbeSpec) -> ProbeView:
        self._check_open(f"{spec.kind} {spec.display}")
        view = ProbeView(spec, lambda: self._observe(spec))
        self._probes.append(_Armed(spec, view))
        self._dirty = True
        return view

    # ------------------------------------------------------------------ arming
    def arm(self) -> None:
        """Define, filter and enable every probe not yet armed, in one batch."""
        self._check_open("arm()")
        pending = [probe for probe in self._probes if not probe.armed]
        if self._instance_planned and not pending:
            if self.stream and self._pump is None:
                self._start_stream()  # the first attempt failed: say why again, never run unsynchronised
            return
        plan = plan_arm(
            [probe.spec for probe in pending],
            instance=self.instance_path,
            state=InstanceState(self._instance_planned, self._fields_on, self._user_stacks_on),
            features=self.target.features,
            stacks=self._stacks,
            known_formats=self._catalog,
            buffer_kb=self.buffer_kb,
            scope=self.scope,
        )
        # Recorded before the batch runs: teardown undoes it even if the batch dies half way.
        self._instance_planned, self._fields_on, self._user_stacks_on = (
            plan.state.planned,
            plan.state.fields_on,
            plan.state.user_stacks_on,
        )
        self._removal_ops.extend(plan.removals)
        self._disable_ops.extend(plan.disables)
        ops = plan.ops
        pump = self._pump
        with pump.gate if pump is not None else contextlib.nullcontext():
            # a running pump parses nothing until the new probes' formats are known (else their first events
            # would be parsed untyped and missed)
            if pump is not None:
                for probe in pending:
                    pump.add_probe((probe.spec.group, probe.spec.event))
            results = self.backend.apply(ops, stop_on_error=True)
            for probe in pending:
                probe.armed = True
            self._dirty = True
            failed = results[-1] if results and not results[-1].ok else None
            for result in results:
                if result.ok and isinstance(result.op, Read) and result.op.path.endswith("/format"):
                    system = result.op.path.split("/")[1]
                    self._catalog.add(parse_format(result.data, system))
                elif result.ok and isinstance(result.op, Write) and result.op.path.endswith("_events"):
                    self._created.add(result.op.data.split(" ", 1)[0].split(":", 1)[1])
        if failed is not None:
            self._explain_failure(failed, pending)
        self._check_aggregate_fields()
        if self.stream and self._pump is None:
            self._start_stream()

    # ------------------------------------------------------------- streaming
    def _start_stream(self) -> None:
        """Open the instance's trace_pipe and start the pump (stream mode, right after the first arm)."""
        if not isinstance(self.backend, Streaming):
            raise KtraceError(
                f"stream mode needs a backend that can stream trace_pipe (the Streaming capability, open_stream()), "
                f"and {self.backend.name} ({type(self.backend).__name__}) has none; run this test without "
                "stream=True / --ktrace-stream"
            )
        self._trace_stream = self.backend.open_stream(f"{self.instance_path}/trace_pipe")
        pump = StreamPump(self._trace_stream, self._catalog, keep=self.keep_events, name=f"ktrace-pump-{self.instance}")
        for probe in self._probes:
            pump.add_probe((probe.spec.group, probe.spec.event))
        for aggregate in self._aggregates:
            pump.register(aggregate)
        self._pump = pump
        pump.start()

    def _describe_stream(self) -> str:
        return f"instance {self.instance} on {self.target.name}"

    def _sync(self, write: Optional[OpResult]) -> None:
        """After a marker write (its result): wait until the pump has streamed up to it, then publish."""
        pump = self._pump
        assert pump is not None
        if write is not None:
            if not write.ok:
                raise KtraceError(
                    f"writing the sync marker to {write.op.path} failed ({write.errno_name} {write.error}); "
                    f"the stream of {self.instance} cannot be synchronised"
                )
            self._markers += 1
        pump.wait(self._markers, stall_s=self.sync_stall_s, describe=self._describe_stream)
        pump.publish(self._aggregates)
        self._dirty = False

    def _marker_op(self) -> Write:
        return Write(f"{self.instance_path}/trace_marker", f"{SYNC_PREFIX}{self._markers + 1}")

    def _stop_stream(self) -> list[str]:
        """Stop the pump (joined) and close the stream, before anything is disabled or removed."""
        problems: list[str] = []
        pump, stream = self._pump, self._trace_stream
        self._trace_stream = None
        if pump is not None and not pump.stop(timeout=10.0):
            problems.append(f"the stream reader thread of {self.instance} did not stop within 10 s")
        if stream is not None:
            try:
                stream.close()
            except ConnectionLost:
                raise
            except KtraceError as exc:
                problems.append(f"closing the trace_pipe stream of {self.instance}: {exc}")
        if pump is not None and pump.alive and not pump.stop(timeout=5.0):
            problems.append(f"the stream reader thread of {self.instance} is still alive after the stream closed")
        return problems

    # ------------------------------------------------------------ aggregates
    def _view_of(self, probe: ProbeView, what: str) -> ProbeView:
        if not isinstance(probe, ProbeView) or not any(p.spec is probe.spec for p in self._probes):
            raise KtraceError(f"{what} takes a probe made by this test's ktrace fixture, got {probe!r}")
        return probe

    def _add_aggregate(self, aggregate: Aggregate, what: str) -> None:
        self._check_open(what)
        if self.stream and self._runs:
            raise KtraceError(
                f"{what} must be registered before the first ktrace.run() in stream mode: streamed events are "
                "counted as they pass and only the last --ktrace-keep-events of each probe are kept, so the "
                "events of earlier runs cannot be fed to it. Create the aggregate right after the probes."
            )
        self._aggregates.append(aggregate)
        self._unchecked.append(aggregate)
        self._check_aggregate_fields()
        if self._pump is not None:
            self._pump.register(aggregate)
        elif not self.stream and self._parsed is not None:
            self._feed_aggregates(self._parsed, [aggregate])

    def _check_aggregate_fields(self) -> None:
        for aggregate in list(self._unchecked):
            if not isinstance(aggregate, CountBy):
                self._unchecked.remove(aggregate)
                continue
            spec = aggregate.view.spec
            fmt = self._catalog.get(f"{spec.group}:{spec.event}")
            if fmt is None:
                continue  # checked when the probe is armed
            self._unchecked.remove(aggregate)
            names = [f.name for f in fmt.fields if not f.name.startswith(("common_", "__probe_"))]
            known = (*names, *TASK_KEYS, "pid", "comm", "cpu")
            if aggregate.field not in known and not aggregate.field.startswith("__probe_"):
                self._aggregates.remove(aggregate)
                raise KtraceError(
                    f"count_by({aggregate.view.name}, {aggregate.field!r}): the probe has no such field "
                    f"(its fields: {', '.join(names) or 'none'}; the task: task_pid, task_comm, task_cpu)"
                )

    def count_by(self, probe: ProbeView, field: str) -> Counter[Any]:
        """A live :class:`collections.Counter` of ``field``'s values over every event of ``probe`` (a ``where()``
        view counts only its events; the task is ``task_pid``/``task_comm``/``task_cpu``, or ``pid``/``comm``/
        ``cpu`` for an event without such a field). Updated after each ``run()``,
        ``collect()`` and ``wait_for()``; in stream mode it sees every streamed event and keeps none (register
        it before the first ``run()``)."""
        view = self._view_of(probe, "count_by")
        aggregate = CountBy(view, field)
        self._add_aggregate(aggregate, f"count_by({view.name}, {field!r})")
        return aggregate.counter

    def latency_histogram(
        self, entry: ProbeView, exit: ProbeView, *, buckets_us: Sequence[float] = DEFAULT_BUCKETS_US
    ) -> Histogram:
        """Durations from each ``exit`` event back to the latest open ``entry`` event of the same task (recursion
        nests, as in :meth:`assert_latency`), counted into ``buckets_us`` (upper bounds, plus an overflow
        bucket). Live like :meth:`count_by`; ``histogram.assert_below(max_us, quantile=0.99)`` checks it."""
        aggregate = LatencyHistogram(
            self._view_of(entry, "latency_histogram"), self._view_of(exit, "latency_histogram"), buckets_us
        )
        self._add_aggregate(aggregate, f"latency_histogram({entry.name}, {exit.name})")
        return aggregate.histogram

    def _feed_aggregates(self, parsed: ParsedTrace, aggregates: Sequence[Aggregate]) -> None:
        """Trace mode: aggregates are recomputed from the whole trace at each collection."""
        if not aggregates:
            return
        by_key: dict[tuple[str, str], list[Aggregate]] = {}
        for aggregate in aggregates:
            aggregate.reset()
            for key in aggregate.keys:
                by_key.setdefault(key, []).append(aggregate)
        for event in parsed.select(by_key):  # decodes the events of these probes only
            key = (event.system, event.name)
            for aggregate in by_key[key]:
                aggregate.feed(key, event)
        for aggregate in aggregates:
            aggregate.publish()

    def _explain_failure(self, failed: OpResult, pending: list[_Armed]) -> None:
        op = failed.op
        spec = self._spec_for_op(op, pending)
        where = spec.where if spec else ""
        what = f"{spec.kind} {spec.display}" if spec else op.path
        if isinstance(op, Write) and op.path.endswith("_events"):
            log = self._error_log_entry("error_log", op.data)
            message = log.splitlines()[0].split(" error: ", 1)[-1] if log else failed.error
            cls = ProbeRejected
            if spec and ("Invalid probed address or symbol" in message or "Failed to find" in message):
                cls = UnknownSymbol
                message = self._unknown_symbol_hint(spec, message)
            raise cls(
                f"the kernel rejected {what}: {message}",
                command=op.data,
                path=op.path,
                errno_name=failed.errno_name,
                kernel_log=log,
                where=where,
            )
        if isinstance(op, Write) and op.path.endswith("/filter"):
            detail = self.backend.apply([Read(op.path, missing_ok=True)])[0].data
            raise ProbeRejected(
                f"the kernel rejected the filter of {what} ({failed.errno_name} {failed.error})",
                command=op.data,
                path=op.path,
                errno_name=failed.errno_name,
                kernel_log=detail,
                where=where,
            )
        enabling = isinstance(op, Write) and op.path.endswith("/enable")
        if enabling and failed.errno_name == "ENOENT" and spec and spec.kind == "tracepoint":
            available = self.backend.apply([Read("available_events")])[0].data.split()
            close = difflib.get_close_matches(spec.display, available, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownSymbol(
                f"unknown tracepoint {spec.display}: {self.target.name} has no such event{hint}", where=where
            )
        if isinstance(op, Mkdir) and failed.errno_name in ("ENOENT", "EACCES", "EPERM"):
            raise KtraceError(
                f"cannot create tracing instance {op.path} on {self.target.name}: {failed.error}; this needs "
                "root (or CAP_SYS_ADMIN) and a kernel with tracefs instances"
            )
        raise ProbeRejected(
            f"arming {what} failed: {failed.errno_name} {failed.error}",
            command=getattr(op, "data", ""),
            path=op.path,
            errno_name=failed.errno_name,
            where=where,
        )

    def _spec_for_op(self, op: Op, pending: list[_Armed]) -> Optional[ProbeSpec]:
        for probe in pending:
            spec = probe.spec
            if isinstance(op, Write) and (op.data == spec.render() if spec.is_dynamic else False):
                return spec
            if f"/events/{spec.event_dir}/" in op.path or op.path.startswith(f"events/{spec.event_dir}/"):
                return spec
        return None

    def _error_log_entry(self, log_path: str, command: str) -> str:
        """Our entry in the kernel's error_log: the last one whose Command line is exactly our command."""
        text = self.backend.apply([Read(log_path, missing_ok=True)])[0].data
        lines = text.splitlines()
        wanted = "  Command: " + " ".join(command.split())
        for index in range(len(lines) - 1, 0, -1):
            if lines[index] == wanted and index + 1 < len(lines):
                return "\n".join(lines[index - 1 : index + 2])
        return ""

    def _unknown_symbol_hint(self, spec: ProbeSpec, message: str) -> str:
        if spec.kind not in ("kprobe", "kretprobe"):
            return message
        symbol = spec.location.split("+", 1)[0]
        text = self.backend.apply([Read("available_filter_functions", missing_ok=True)])[0].data
        names = {line.split()[0] for line in text.splitlines() if line.strip()}
        close = difflib.get_close_matches(symbol, names, n=3)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        if names and symbol not in names:
            return f"unknown symbol {symbol!r} ({message}){hint}"
        return message

    # -------------------------------------------------------------- running
    def run(
        self,
        argv: Union[str, Sequence[str]],
        *,
        timeout: Optional[float] = None,
        stdin: Optional[str] = None,
        check: bool = False,
    ) -> RunResult:
        """Run a command on the target with every probe armed; returns its exit status and output."""
        __tracebackhide__ = True
        self._check_open("run()")
        if isinstance(argv, (str, os.PathLike)):
            argv = [argv]
        elif isinstance(argv, (bytes, bytearray)) or not isinstance(argv, Sequence):
            raise KtraceError(
                f"run() argv must be a str or a sequence (list, tuple) of str, got {_type_name(argv)} {argv!r}"
            )
        words: list[str] = []
        for index, part in enumerate(argv):
            if not isinstance(part, (str, bytes, os.PathLike)):
                raise KtraceError(
                    f"run() argv[{index}] must be a str (or bytes, a path-like), got {_type_name(part)} {part!r}"
                )
            words.append(os.fspath(part))
        argv = words
        _check_seconds("run() timeout", timeout, optional=True, zero_ok=False)
        if stdin is not None and not isinstance(stdin, str):
            raise KtraceError(f"run() stdin must be a str or None, got {_type_name(stdin)}")
        self.arm()
        pid_files: list[str] = []
        if self.scope == "run":
            pid_files.append(f"{self.instance_path}/set_event_pid")
            if not self._tracing_started:
                # A pid is a non-zero number, so appending it to tracing_on turns the instance on after the
                # pid filter is in place, with no extra round trip.
                pid_files.append(f"{self.instance_path}/tracing_on")
        # the trace comes back with the command (stream mode: a sync marker is written): no extra round trip
        after: Op = self._marker_op() if self.stream else Read(f"{self.instance_path}/trace")
        perf = self._perf
        if perf is not None:
            # the wrapper hands the pid files to the command itself, so scope="run" follows it, not perf
            inside = [posixpath.join(self.target.tracefs, path) for path in pid_files]
            if isinstance(perf, PerfStat):
                argv = wrap_stat(argv, perf.events, system_wide=perf.system_wide, pid_files=inside)
            else:
                argv = wrap_record(argv, frequency=perf.frequency, system_wide=perf.system_wide, pid_files=inside)
            pid_files = []
        result = self.backend.run(
            argv,
            timeout=self.run_timeout if timeout is None else timeout,
            pid_files=pid_files,
            stdin=stdin,
            after=[after],
        )
        if perf is not None:
            result = self._perf_result(perf, result)
        self._tracing_started = True
        self._runs.append(result)
        collected = result.after[0] if result.after else None
        if self.stream:
            self._sync(collected)
        elif collected is not None and collected.ok:
            self._take_trace(collected.data)
        else:
            self._dirty = True
        if check:
            result.check()
        return result

    @property
    def runs(self) -> list[RunResult]:
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
        stat = PerfStat(events, system_wide=bool(system_wide), target=self.target.name)
        with self._perf_block(stat, "perf_stat()"):
            yield stat
        self._check_perf_ran(stat, "perf_stat()")
        missing = stat.unsupported
        if missing and unsupported != "ignore":
            what = ", ".join(f"{event} is {status}" for event, status in missing.items())
            message = f"perf stat on {self.target.name} ({self.target.release} {self.target.arch}): {what}"
            if unsupported == "skip":
                pytest.skip(message)
            raise AssertionError(message)

    @contextlib.contextmanager
    def profile(self, *, frequency: int = 999, system_wide: bool = False, label: str = "") -> Iterator[Profile]:
        """Sample call stacks with ``perf record -g`` (``frequency`` Hz) on the target for every
        ``ktrace.run(...)`` inside the block; the result is folded on the target's own symbols. With
        ``--ktrace-flamegraph`` the plugin writes it as an SVG flame graph next to the report."""
        __tracebackhide__ = True
        self._check_open("profile()")
        _check_int("profile() frequency", frequency, 1, 100_000)
        prof = Profile(frequency=frequency, system_wide=bool(system_wide), target=self.target.name, label=label)
        with self._perf_block(prof, "profile()"):
            yield prof
        self._check_perf_ran(prof, "profile()")
        self.profiles.append(prof)

    @contextlib.contextmanager
    def _perf_block(self, block: Union[PerfStat, Profile], what: str) -> Iterator[None]:
        if self._perf is not None:
            raise KtraceError(f"{what} inside another perf_stat()/profile() block: one perf block at a time")
        self._perf = block
        try:
            yield
        finally:
            self._perf = None

    def _check_perf_ran(self, block: Union[PerfStat, Profile], what: str) -> None:
        if not block.runs:
            raise KtraceError(
                f"{what} block ran no command: perf measures the commands started with ktrace.run(...) inside it"
            )

    def _perf_result(self, block: Union[PerfStat, Profile], result: RunResult) -> RunResult:
        command, output = unwrap(result)
        tool = "perf stat" if isinstance(block, PerfStat) else "perf record"
        if output.missing:
            pytest.skip(
                f"perf is not installed on {self.target.name}: {tool} needs it on the target "
                "(Debian/Ubuntu: apt install linux-perf; Fedora: dnf install perf)"
            )
        if output.pid_file_error:
            raise TargetError(
                f"could not hand the pid of {list(command.argv)} to the trace filter on {self.target.name}: "
                f"{output.pid_file_error}",
                host=self.target.name,
                cause="pid file refused",
            )
        if isinstance(block, PerfStat):
            values = parse_stat(output.text)
            if not values:
                raise KtraceError(
                    f"perf stat on {self.target.name} counted nothing (exit status {command.returncode}): "
                    f"{command.stderr.strip()[-1500:] or 'no error output'}"
                )
            block.add(values)
        else:
            if output.returncode is None:
                raise KtraceError(
                    f"perf record on {self.target.name} did not run the command: "
                    f"{command.stderr.strip()[-1500:] or 'no error output'}"
                )
            block.add(output.text)
        return command

    # ------------------------------------------------------------ collecting
    def collect(self) -> ParsedTrace:
        """Read and parse this test's trace now (later accesses reuse it until the next run/arm/wait)."""
        self.arm()
        if self.stream:
            return self._collect_stream()
        result, mounted = self.backend.apply([Read(f"{self.instance_path}/trace"), Read("tracing_on")])
        if not mounted.ok:
            raise TracefsUnavailable(
                f"tracefs is no longer mounted at {self.target.tracefs} on {self.target.name} (unmounted during "
                f"the test?); mount it again with: {MOUNT_HINT}",
                host=self.target.name,
                cause="tracefs not mounted",
            )
        if not result.ok:
            raise KtraceError(f"reading {self.instance_path}/trace failed: {result.errno_name} {result.error}")
        return self._take_trace(result.data)

    def _collect_stream(self) -> ParsedTrace:
        self._sync_stream()
        return self._stream_snapshot()

    def _sync_stream(self) -> None:
        """Write a sync marker and wait until it has streamed past (everything before it is dispatched)."""
        if self._tracing_started:
            marker, mounted = self.backend.apply([self._marker_op(), Read("tracing_on")])
            if not mounted.ok:
                raise TracefsUnavailable(
                    f"tracefs is no longer mounted at {self.target.tracefs} on {self.target.name} (unmounted "
                    f"during the test?); mount it again with: {MOUNT_HINT}",
                    host=self.target.name,
                    cause="tracefs not mounted",
                )
            self._sync(marker)
        else:
            self._dirty = False  # scope="run" before the first run: tracing is off, nothing can arrive

    def _stream_snapshot(self) -> ParsedTrace:
        pump = self._pump
        assert pump is not None
        return ParsedTrace(events=pump.ordered(), lost=dict(pump.lost_copy()))

    def _take_trace(self, text: str) -> ParsedTrace:
        self._raw_trace = text
        parsed = TraceParser(self._catalog).parse(text)
        overwritten = _overwritten(text)
        if overwritten and not parsed.lost:
            # `trace` shows no LOST line when the ring buffer overwrote old events; its header and the
            # per-CPU stats tell how many went, and where.
            parsed.lost.update(self._overruns(_cpu_count(text)) or {-1: overwritten})
        self._parsed = parsed
        self._dirty = False
        self._feed_aggregates(parsed, self._aggregates)
        return parsed

    def _overruns(self, cpus: int) -> dict[int, int]:
        stats = self.backend.apply(
            [Read(f"{self.instance_path}/per_cpu/cpu{cpu}/stats", missing_ok=True) for cpu in range(cpus)]
        )
        found: dict[int, int] = {}
        for cpu, result in enumerate(stats):
            match = _OVERRUN.search(result.data)
            if match and int(match.group(1)):
                found[cpu] = int(match.group(1))
        return found

    def _current(self) -> ParsedTrace:
        if self.stream:
            if self._dirty or self._pump is None:
                return self.collect()
            return self._stream_snapshot()
        if self._dirty or self._parsed is None:
            return self.collect()
        return self._parsed

    def _stacks_of_trace(self) -> TraceStacks:
        text = self._raw_trace
        cached = self._stack_cache
        if cached is None or cached[0] is not text:
            cached = self._stack_cache = (text, stacks_by_event(text))
        return cached[1]

    def _with_user_stacks(self, spec: ProbeSpec, events: list[Event]) -> list[Event]:
        """User stacks (``options/userstacktrace``) of a uprobe's hits, named from the probed binary's symbols;
        the probe's own address in each hit gives that process's load bias."""
        stacks = self._stacks_of_trace().user
        path, _, offset_text = spec.location.rpartition(":")
        functions = elf.list_function_symbols(self._local_copy(path))
        anchor_field = "__probe_func" if spec.is_return else "__probe_ip"
        out: list[Event] = []
        for event in events:
            frames = stacks.get(stack_key(event))
            anchor = event.fields.get(anchor_field)
            if not frames or not isinstance(anchor, int):
                out.append(event)
                continue
            caller = event.fields.get(_CALLER_FIELD)
            if isinstance(caller, int):  # never on the walked stack (recursion repeats the same address)
                frames = (frames[0], caller, *frames[1:])
            named = symbolize_user(
                frames, anchor_address=anchor, anchor_offset=int(offset_text, 16), functions=functions
            )
            out.append(dataclasses.replace(event, stack=named))
        return out

    def _observe(self, spec: ProbeSpec) -> Observation:
        if self.stream:
            return self._observe_stream(spec)
        parsed = self._current()
        events = parsed.of(spec.group, spec.event)  # decodes this probe's events only
        if (spec.group, spec.event) in self._stacks:
            if spec.kind in ("uprobe", "uretprobe"):
                events = self._with_user_stacks(spec, list(events))
            else:
                events = with_stacks(events, self._stacks_of_trace().kernel)
        hints: list[str] = []
        if not events and not self._runs:
            hints.append(
                "nothing ran since the probes were armed: trigger the code with ktrace.run(...), "
                "or wait for asynchronous events with ktrace.wait_for(...)"
            )
        return Observation(events, dict(parsed.lost), hints, self.lost_policy)

    def _observe_stream(self, spec: ProbeSpec) -> Observation:
        if self._dirty or self._pump is None:
            self.arm()
            self._sync_stream()
        pump = self._pump
        assert pump is not None
        events, count = pump.snapshot((spec.group, spec.event))
        hints: list[str] = []
        if not count and not self._runs:
            hints.append(
                "nothing ran since the probes were armed: trigger the code with ktrace.run(...), "
                "or wait for asynchronous events with ktrace.wait_for(...)"
            )
        return Observation(
            events,
            dict(pump.lost_copy()),
            hints,
            self.lost_policy,
            total=count,
            evicted=count - len(events),
            keep=self.keep_events,
        )

    @property
    def events(self) -> list[Event]:
        """Every event of this test, in trace order."""
        return list(self._current().events)

    @property
    def trace_text(self) -> str:
        """The raw trace as last collected (what the failure report section shows); in stream mode the last
        lines that streamed past."""
        if self._pump is not None:
            pump = self._pump
            with pump.lock:
                tail = list(pump.raw_tail)
                total = pump.lines
            return f"# streamed from trace_pipe: the last {len(tail)} of {total} lines\n" + "\n".join(tail) + "\n"
        return self._raw_trace

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
        if not isinstance(self.backend, Injecting):
            raise KtraceError(
                f"ktrace.inject needs the fake backend (--ktrace-backend=fake); {self.backend.name} is a real target"
            )
        emit = self.backend.inject
        probe = self._view_of(probe, "inject")
        _check_int("inject count", count, 0)
        if timestamp is not None and (
            isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or not 0 <= timestamp < 2**32
        ):
            raise KtraceError(f"inject timestamp= must be seconds of the trace clock (>= 0), got {timestamp!r}")
        if (
            isinstance(stack, str)
            or not isinstance(stack, Sequence)
            or not all(isinstance(frame, str) and frame.strip() and "\n" not in frame for frame in stack)
        ):
            raise KtraceError(f"inject stack= must be a list of function names (innermost first), got {stack!r}")
        self.arm()
        fmt = self._catalog.get(f"{probe.spec.group}:{probe.spec.event}")
        if fmt is None:
            raise KtraceError(f"no format known for {probe.spec.event_dir}: was the probe armed?")
        known = {f.name: f for f in fmt.fields if not f.name.startswith("__probe_")}
        task: dict[str, Union[int, str]] = {}
        fields: dict[str, Union[int, str]] = {}
        for name, value in values.items():
            attribute = task_key(name, known)
            if attribute:
                task[attribute] = value
            elif name in known:
                fields[name] = value
            else:
                names = ", ".join(known) or "none"
                raise KtraceError(
                    f"{probe.name} has no field {name!r} (its fields: {names}; the task: task_pid, task_comm, task_cpu)"
                )
        pid, comm, cpu = task.get("pid"), task.get("comm", "ktrace-inject"), task.get("cpu", 0)
        if pid is not None:
            _check_int("inject task_pid", pid, 0, 2**31 - 1)
        if not isinstance(comm, str):
            raise KtraceError(f"inject task_comm must be a str, got {_type_name(comm)} {comm!r}")
        check_encodable("inject task_comm", comm)
        _check_int("inject task_cpu", cpu, 0)
        for name, value in fields.items():
            wanted = known[name]
            if wanted.is_string:
                good = isinstance(value, str)
            elif wanted.is_array and isinstance(value, (list, tuple)):
                good = all(isinstance(item, int) and not isinstance(item, bool) for item in value)
            else:
                good = isinstance(value, int) and not isinstance(value, bool)
            if not good:
                kind = "a string" if wanted.is_string else "an integer"
                raise KtraceError(f"{probe.name}.{name} is {kind} ({wanted.ctype}), got {_type_name(value)} {value!r}")
            if isinstance(value, str):
                check_encodable(f"{probe.name}.{name}", value)
        extra: dict[str, Any] = {"stack": tuple(stack)} if stack else {}
        if timestamp is not None:
            extra["timestamp"] = float(timestamp)
        recorded = 0
        for _ in range(count):
            task_pid = None if pid is None else int(pid)  # checked above: an int
            recorded += int(emit(probe.spec.event_dir, fields, pid=task_pid, comm=comm, cpu=int(cpu), **extra) > 0)
        self._dirty = True
        return recorded

    def wait_for(
        self, probe: ProbeView, count: int = 1, *, timeout: float = 10.0, poll_s: float = 0.05, **fields: Any
    ) -> list[Event]:
        """Wait until ``probe`` has at least ``count`` events (matching ``fields``); return them."""
        __tracebackhide__ = True
        self._check_open("wait_for()")
        probe = self._view_of(probe, "wait_for")
        _check_int("wait_for count", count, 0)
        _check_seconds("wait_for timeout", timeout)
        _check_seconds("wait_for poll_s", poll_s)
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
        ops: list[Op] = list(self._disable_ops)
        if self._instance_planned:
            ops.append(Rmdir(self.instance_path))
        ops.extend(self._removal_ops)
        return ops

    def teardown(self) -> TeardownReport:
        report = TeardownReport()
        if self._torn_down:
            return report
        self._torn_down = True
        try:
            # reading trace_pipe keeps the instance busy (rmdir EBUSY): the reader goes first, always
            report.failures.extend(self._stop_stream())
        except ConnectionLost as exc:
            self.backend.defer(self.teardown_ops())
            report.deferred = str(exc)
            return report
        ops = self.teardown_ops()
        if not ops:
            return report
        try:
            results = self.backend.apply(ops)
        except ConnectionLost as exc:
            # The target is unreachable now: the backend undoes this test first thing after it reconnects.
            self.backend.defer(ops)
            report.deferred = str(exc)
            return report
        vanished = False
        for result in results:
            if result.errno_name == "ENOENT":
                vanished = True
                removed = result.op.data[2:] if isinstance(result.op, Write) and result.op.data.startswith("-:") else ""
                if removed in self._created:
                    report.notes.append(f"probe {removed} was removed by someone else while the test ran")
                continue  # otherwise: the batch that should have created it never got that far
            if result.ok:
                continue
            report.failures.append(
                f"{type(result.op).__name__} {result.op.path}: {result.errno_name} {result.error}"
                + (f" ({result.op.data!r})" if isinstance(result.op, Write) else "")
            )
        if vanished and not self.backend.apply([Read("tracing_on")])[0].ok:
            report.failures.insert(
                0,
                f"tracefs is no longer mounted at {self.target.tracefs} on {self.target.name}, so this test's "
                f"instance and probes are still in the kernel: mount it again ({MOUNT_HINT}); the next "
                "pytest-ktrace run removes them",
            )
            report.notes.clear()
        return report

    def describe_target(self) -> str:
        return self.target.summary()

    def __repr__(self) -> str:
        armed = sum(1 for probe in self._probes if probe.armed)
        state = "torn down" if self._torn_down else f"{armed} of {len(self._probes)} probe(s) armed"
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

    @property
    def arch(self) -> str:
        return normalize_arch(self.target.arch)
