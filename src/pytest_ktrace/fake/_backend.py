"""``--ktrace-backend=fake``: the backend contract over an in-memory tracefs that imitates a target snapshot.

Probe definitions, filters and enables go through the same grammar and errors as the snapshotted kernel. Commands do
not run: a test either replays its cassette (recorded on hardware with ``--ktrace-record``), whose events are fed
into the fake tracefs at the moment their command "runs", or emits synthetic events with ``ktrace.inject``.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import functools
import os
import re
import threading
import time
from typing import Callable, Mapping, Optional, Sequence, Union

from .._errors import KtraceError, hide_for_ktrace_errors
from .._events import Event
from .._formats import EventFormat, FormatCatalog, parse_format
from .._parse import TraceParser
from .._splitters import HEADER_RE
from .._stacks import stack_key, stacks_by_event
from ..backends._base import Mkdir, Op, OpResult, Read, Remove, Rmdir, RunResult, TargetInfo, TraceStream, Write
from ..recording._cassette import StaleCassette, is_arm_batch
from ..recording._player import Player
from ..recording._spawns import ReplayedSpawn
from ..snapshots._snapshot import KernelSnapshot
from ._inject import inject_events
from ._tracefs import FakeOSError, FakeTracefs

__all__ = ["FakeBackend"]

__tracebackhide__ = hide_for_ktrace_errors

_ROOT = "/sys/kernel/tracing"
_LINE_BY_LINE_MAX = 64  # recorded trace lines decoded one by one, below the whole-text parser's break-even


def _refused(op: Op) -> Optional[OpResult]:
    """What a kernel would answer to arguments no system call can carry: a path or data that is no text
    (EFAULT, a bad buffer), or text that cannot be encoded (a lone surrogate outside U+DC80..U+DCFF)."""
    path = getattr(op, "path", None)
    data = op.data if isinstance(op, Write) else ""
    if type(path) is str and type(data) is str and path.isascii() and data.isascii():
        return None  # what the plugin sends: nothing to check further
    for text in (path, data):
        if not isinstance(text, str):
            return OpResult(op, ok=False, errno_name="EFAULT", error=os.strerror(errno_mod.EFAULT))
        try:
            text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return OpResult(op, ok=False, errno_name="EINVAL", error=os.strerror(errno_mod.EINVAL))
    return None


def _recorded_events(parser: TraceParser, lines: Sequence[str], text: str) -> Sequence[Event]:
    """The events of recorded trace ``lines`` (joined: ``text``), as ``parser.parse(text).events`` has them.

    A command's few events are decoded one line each, as the reference parser does (a line that is no event is
    left out, as there): the whole-text decoder compiles a pattern per event name first, which pays off over
    thousands of lines, not over the handful a test's command leaves. Lines that continue an event (a string
    with a newline, a stack) or report lost events take the whole-text parser."""
    if len(lines) <= _LINE_BY_LINE_MAX and all(map(HEADER_RE.fullmatch, lines)):
        return [event for event in map(parser.parse_line, lines) if event is not None]
    return parser.parse(text).events


def _failure(op: Op, exc: OSError) -> OpResult:
    code = exc.errno or errno_mod.EIO
    return OpResult(op, ok=False, errno_name=errno_mod.errorcode.get(code, str(code)), error=os.strerror(code))


class FakeTraceStream:
    """A reader of the fake ``trace_pipe``: each read consumes everything available (as the fake tracefs models
    it). While open, the instance is busy (its ``rmdir`` fails with EBUSY), as on a kernel."""

    def __init__(self, backend: FakeBackend, path: str) -> None:
        self._backend = backend
        self.path = path
        self._held: Optional[contextlib.ExitStack] = contextlib.ExitStack()
        with backend._lock:
            try:
                self._held.enter_context(backend.tracefs.hold_open(path))
            except (FakeOSError, OSError) as exc:
                code = exc.errno or errno_mod.EIO
                raise KtraceError(
                    f"cannot open {path} for streaming: {errno_mod.errorcode.get(code, code)} {os.strerror(code)}"
                ) from None

    def read(self, timeout: float) -> str:
        if self._held is None:
            raise KtraceError(f"stream {self.path} is closed")
        with self._backend._lock:
            try:
                text = self._backend.tracefs.read(self.path)
            except (FakeOSError, OSError) as exc:
                raise KtraceError(f"reading {self.path} failed: {exc}") from None
        if not text:
            time.sleep(min(timeout, 0.002))
        return text

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with self._backend._lock:
                held.close()


class FakeBackend:
    """A target that exists only in memory, shaped like ``snapshot``'s kernel. Thread-safe (one lock): a stream
    reader may consume ``trace_pipe`` while the test emits events."""

    files_are_local = True  # uprobe binaries are resolved on this machine

    def __init__(self, snapshot: KernelSnapshot, *, cpus: int = 2) -> None:
        self.snapshot = snapshot
        self.tracefs = FakeTracefs(snapshot, cpus=cpus)
        self.taint = 0  # /proc/sys/kernel/tainted of the imitated kernel
        self.files: dict[str, tuple[bytes, int]] = {}  # what push_file put on the target: path -> (data, mode)
        self.player: Optional[Player] = None
        self._round_trips = 0
        self._next_pid = 40000
        self._followed: list[str] = []  # the pid files of this test's background commands (scope="run")
        self._replayed_hist: dict[str, str] = {}  # hist files as the recording read them, for the reads now
        self._lock = threading.RLock()
        self._info: Optional[tuple[KernelSnapshot, TargetInfo]] = None

    @property
    def name(self) -> str:
        return "fake"

    @property
    def round_trips(self) -> int:
        return self._round_trips

    def describe(self) -> TargetInfo:
        snapshot = self.snapshot
        if self._info is None or self._info[0] is not snapshot:  # the session asks several times per test
            info = TargetInfo(
                name=f"fake:{snapshot.name}",
                backend="fake",
                release=snapshot.release,
                arch=snapshot.arch,
                tracefs=_ROOT,
                # snapshots list the features their files show; the kernel log event is in every snapshot's events
                features=frozenset(snapshot.features)
                | ({"printk_console"} if snapshot.has_event("printk:console") else set()),
            )
            self._info = (snapshot, info)
        return self._info[1]

    # ---------------------------------------------------------------- replay
    def play(self, player: Optional[Player]) -> None:
        """Replay ``player``'s cassette in the next test (``None``: no cassette)."""
        self.player = player
        self._followed = []

    def _feed(self, lines: Sequence[str], pid_files: Sequence[str] = ()) -> None:
        """Put recorded trace lines into the fake tracefs as the events they were."""
        if not lines or self.player is None:
            return
        catalog = FormatCatalog()
        for key in self.player.cassette.formats:
            try:
                restored_key = self.player.names.restore(key)
            except StaleCassette:
                continue  # a probe the test defines later (after loading a module): none of its events are here
            text = self.player.recorded_format(restored_key)
            if text is not None:
                catalog.add(parse_format(text, restored_key.split("/", 1)[0]))
        text = "\n".join(lines) + "\n"
        events = [event for event in _recorded_events(TraceParser(catalog), lines, text) if event.system]
        stacks = stacks_by_event(text).kernel  # the stacktrace trigger's entries: replayed with their events
        # The kernel followed the recorded command's children (event-fork); admit the same tasks here.
        for path in pid_files:
            if path.endswith("set_event_pid"):
                for pid in sorted({event.pid for event in events}):
                    self.tracefs.write(path, str(pid), append=True)
        for event in events:
            fields = {k: v for k, v in event.fields.items() if not k.startswith("__probe_")}
            self.tracefs.emit(
                f"{event.system}/{event.name}",
                fields,
                pid=event.pid,
                comm=event.comm,
                cpu=event.cpu,
                timestamp=event.timestamp,
                stack=stacks.get(stack_key(event), ()),
            )

    # --------------------------------------------------------------- contract
    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        with self._lock:
            return self._apply_batch(ops, stop_on_error=stop_on_error)

    def _apply_batch(self, ops: Sequence[Op], *, stop_on_error: bool) -> list[OpResult]:
        self._round_trips += 1
        ops = list(ops)
        if self.player is not None:
            if is_arm_batch(ops):
                self.player.check_arm(ops)
            elif any(isinstance(op, Read) and op.path.endswith("/trace") for op in ops):
                step = self.player.pending_collect()
                if step is not None:
                    # events of background commands come with trace reads; the kernel followed them and their
                    # children (event-fork) as it follows a command's
                    self._feed(self.player.recorded_lines(step), self._followed)
            if any(isinstance(op, Read) and op.path.endswith("/hist") for op in ops):
                self._replayed_hist = self.player.pending_hist()
        return self._apply(ops, stop_on_error=stop_on_error)

    def _remove(self, op: Remove) -> OpResult:
        if self.files.pop(op.path, None) is None:
            return OpResult(op, ok=False, errno_name="ENOENT", error=os.strerror(errno_mod.ENOENT))
        return OpResult(op, ok=True)

    def _read_outside_tracefs(self, op: Read) -> OpResult:
        """The files outside tracefs the plugin reads: the kernel's taint (``taint``, a mask the tests may set) and
        whether a module is loaded (``/sys/module/NAME/initstate``)."""
        if op.path == "/proc/sys/kernel/tainted":
            return OpResult(op, ok=True, data=f"{self.taint}\n")
        module = re.fullmatch(r"/sys/module/([^/]+)/initstate", op.path)
        if module is not None and module.group(1) in self.tracefs.modules.loaded:
            return OpResult(op, ok=True, data="live\n")
        if op.missing_ok:
            return OpResult(op, ok=True)
        return OpResult(op, ok=False, errno_name="ENOENT", error=os.strerror(errno_mod.ENOENT))

    def _apply(self, ops: Sequence[Op], *, stop_on_error: bool) -> list[OpResult]:
        results: list[OpResult] = []
        for op in ops:
            refused = _refused(op) if isinstance(op, (Write, Read, Mkdir, Rmdir, Remove)) else None
            if refused is not None:
                results.append(refused)
                if stop_on_error:
                    break
                continue
            try:
                if isinstance(op, Write):
                    self.tracefs.write(op.path, op.data, append=op.append)
                    result = OpResult(op, ok=True)
                elif isinstance(op, Remove):
                    result = self._remove(op)
                elif isinstance(op, Read) and op.path.startswith("/"):
                    result = self._read_outside_tracefs(op)
                elif isinstance(op, Read) and op.path in self._replayed_hist:
                    result = OpResult(op, ok=True, data=self._replayed_hist.pop(op.path))
                elif isinstance(op, Read):
                    if op.missing_ok and not self.tracefs.exists(op.path):
                        result = OpResult(op, ok=True)
                    else:
                        result = OpResult(op, ok=True, data=self.tracefs.read(op.path))
                elif isinstance(op, Mkdir):
                    self.tracefs.mkdir(op.path)
                    result = OpResult(op, ok=True)
                elif isinstance(op, Rmdir):
                    self.tracefs.rmdir(op.path)
                    result = OpResult(op, ok=True)
                else:  # pragma: no cover - guarded by the Op union
                    raise TypeError(f"not a tracefs operation: {op!r}")
            except (FakeOSError, OSError) as exc:
                result = _failure(op, exc)
            results.append(result)
            if stop_on_error and not result.ok:
                break
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
        with self._lock:
            return self._run(argv, pid_files=pid_files, stdin=stdin, after=after)

    def _run(
        self, argv: Sequence[str], *, pid_files: Sequence[str], stdin: Optional[Union[str, bytes]], after: Sequence[Op]
    ) -> RunResult:
        self._round_trips += 1
        if self.player is None:
            if self._is_tracefs_listing(argv):
                # listing a tracefs directory (stale-leftover scan) is answered by the fake itself
                where = argv[2]
                try:
                    entries = self.tracefs.listdir(where[len(_ROOT) + 1 :])
                except FakeOSError as exc:
                    if exc.errno != errno_mod.ENOTDIR:
                        message = f"ls: cannot access '{where}': {os.strerror(exc.errno or errno_mod.ENOENT)}\n"
                        return RunResult(tuple(argv), 2, "", message, 0, 0.0)
                    # `ls -1 FILE` prints the file's name: the fake answers directory listings only
                else:
                    return RunResult(tuple(argv), 0, "\n".join(entries) + "\n", "", 0, 0.0)
            raise KtraceError(
                f"the fake backend cannot run {list(argv)}: record this test on a real target with "
                "--ktrace-record (its cassette is then replayed here), or emit events with ktrace.inject(...)"
            )
        step = self.player.next_run(argv, stdin)
        pid = int(step.get("pid") or 0)
        for path in pid_files:
            self.tracefs.write(path, str(pid or 1), append=True)
        for name, functions, events in self.player.modules_loaded(step):
            self._module_change(argv, name, functools.partial(self.tracefs.modules.load, name, functions, events))
        self._feed(self.player.recorded_lines(step), pid_files)
        self._replayed_hist = self.player.recorded_hist(step)
        for name in self.player.modules_unloaded(step):
            self._module_change(argv, name, functools.partial(self.tracefs.modules.unload, name))
        if "taint" in step:
            self.taint = int(step["taint"])
        return RunResult(
            argv=tuple(argv),
            returncode=int(step.get("returncode", 0)),
            stdout=str(step.get("stdout", "")),
            stderr=str(step.get("stderr", "")),
            pid=pid,
            duration_s=float(step.get("duration_s", 0.0)),
            after=tuple(self._apply(after, stop_on_error=False)),
        )

    def _module_change(self, argv: Sequence[str], name: str, change: Callable[[], None]) -> None:
        """Load or unload a module as the recorded command did; a fake tracefs that cannot follow (an event of
        the module still enabled here, a module loaded twice) means the test no longer does what was recorded."""
        try:
            change()
        except FakeOSError as exc:
            assert self.player is not None
            raise self.player.stale(
                f"{list(argv)} changed module {name} in the recording, which the fake kernel refuses now: "
                f"{errno_mod.errorcode.get(exc.errno or 0, exc.errno)} ({os.strerror(exc.errno or 0)})"
            ) from None

    @staticmethod
    def _is_tracefs_listing(argv: Sequence[str]) -> bool:
        if len(argv) != 3 or list(argv[:2]) != ["ls", "-1"] or not isinstance(argv[2], str):
            return False
        where = argv[2].rstrip("/") or "/"
        return where == _ROOT or where.startswith(_ROOT + "/")

    def inject(
        self,
        event: str,
        fields: Mapping[str, Union[int, str]],
        *,
        pid: Optional[int] = None,
        comm: str = "ktrace-inject",
        cpu: int = 0,
        timestamp: Optional[float] = None,
        stack: Sequence[str] = (),
    ) -> int:
        """Emit one synthetic event ``group/name``; returns how many buffers recorded it (0: not enabled or
        filtered out, as on a kernel). ``stack`` is what a ``stacktrace`` trigger on the event records."""
        with self._lock:
            if pid is None:
                self._next_pid += 1
                pid = self._next_pid
            if not self.tracefs.exists(f"events/{event.replace(':', '/', 1)}"):
                raise KtraceError(f"cannot inject {event}: the fake tracefs has no such event (was it removed?)")
            cpus = self.tracefs.cpus
            if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < cpus:
                raise KtraceError(f"inject cpu={cpu!r}: the fake target has CPUs 0..{cpus - 1}")
            return int(
                self.tracefs.emit(event, fields, pid=pid, comm=comm, cpu=cpu, timestamp=timestamp, stack=tuple(stack))
            )

    def inject_probe(
        self,
        event_dir: str,
        fmt: EventFormat,
        *,
        name: str,
        count: int,
        timestamp: Optional[float],
        stack: Sequence[str],
        values: Mapping[str, Union[int, str]],
    ) -> int:
        """``ktrace.inject()``: ``count`` events of a probe, the values checked against its format."""
        return inject_events(
            self, event_dir, fmt, name=name, count=count, timestamp=timestamp, stack=stack, values=values
        )

    def push_file(self, data: bytes, path: str, mode: int) -> None:
        """Files put on the fake target are kept in memory (``files``), and checked against the cassette."""
        with self._lock:
            if path in self.files:
                raise FileExistsError(errno_mod.EEXIST, os.strerror(errno_mod.EEXIST), path)
            if self.player is not None:
                self.player.check_push(data, path, mode)
            self.files[path] = (bytes(data), mode)

    def spawn(
        self, argv: Sequence[str], *, pid_files: Sequence[str] = (), stdin: Optional[Union[str, bytes]] = None
    ) -> ReplayedSpawn:
        """A background command of the cassette (see :mod:`..recording._spawns`): started, and ended where the
        recording saw it end; without a cassette nothing can run here."""
        with self._lock:
            self._round_trips += 1
            if self.player is None:
                raise KtraceError(
                    f"the fake backend cannot spawn {list(argv)}: record this test on a real target with "
                    "--ktrace-record (its cassette is then replayed here), or emit events with ktrace.inject(...)"
                )
            step = self.player.next_run(argv, stdin, kind="spawn")
            pid = int(step.get("pid") or 0)
            for path in pid_files:
                self.tracefs.write(path, str(pid or 1), append=True)
            self._followed.extend(path for path in pid_files if path not in self._followed)
            return ReplayedSpawn(self.player, step, argv, self._lock)

    def open_stream(self, path: str) -> TraceStream:
        return FakeTraceStream(self, path)

    def fetch_file(self, path: str) -> bytes:
        """The fake target has tracefs only: no other file (no ``/sys/kernel/btf``) can be read from it."""
        raise KtraceError(
            f"the fake backend has no file {path!r}: it imitates tracefs only (no kernel BTF, no binaries); "
            "record the test on a real target with --ktrace-record and replay its cassette here"
        )

    def defer(self, ops: Sequence[Op]) -> None:
        with self._lock:
            self._apply(ops, stop_on_error=False)

    def close(self) -> None:
        """Nothing to release: the fake tracefs lives as long as the run."""
