"""Record a test's conversation with a real target, and replay it on the fake backend.

A cassette is one JSON file per test (``cassettes/<module>/<test>.json`` next to the test module, as
pytest-recording does for HTTP). It holds, in order, what the test did and what the kernel answered:

- ``arm``: the tracefs writes that defined, filtered and enabled probes (normalised: the run's group, instance and
  event names become ``<group>``, ``<instance>``, ``<event:N>``, so re-recordings diff cleanly);
- ``run``: a command with its exit status, output, and the trace lines it produced;
- ``collect``: trace lines that appeared while the test waited (``wait_for``) or re-read the trace.

Beside them, ``btf`` holds what the target's BTF answered for the test's named fetch arguments (``irq="irq"``,
``name="new->name:string"``) and typed return values, so the replay resolves the same names without the kernel's
BTF (:mod:`pytest_ktrace.btf._names`).

Recording wraps any real backend (:class:`RecordingBackend`). Replay (:class:`Player`, driven by the fake backend)
checks every arm batch and every command against the recording, so a test whose probes or commands changed fails
with "cassette is stale: re-record on hardware" instead of passing on old data; it feeds the recorded events into
the fake tracefs, where the test's own filters, parser and assertions meet them again.
"""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

from .._errors import KtraceError, hide_for_ktrace_errors
from .._files import write_atomic
from .._targets import RECORD_MODES
from ..backends._base import (
    Backend,
    FileFetching,
    Mkdir,
    Op,
    OpResult,
    Read,
    RunResult,
    SharedFilesystem,
    TargetInfo,
    TraceStream,
    Write,
)

__all__ = [
    "CASSETTE_VERSION",
    "RECORD_MODES",
    "Cassette",
    "Player",
    "RecordingBackend",
    "Replaying",
    "StaleCassette",
    "Tape",
    "cassette_path",
    "cassette_root",
    "replay_snapshot",
    "snapshot_of",
    "target_snapshot_ref",
]

__tracebackhide__ = hide_for_ktrace_errors

CASSETTE_VERSION = 1
_DEFINITION = re.compile(r"^(?P<head>[pr]\d*):(?P<group>[^/\s]+)/(?P<event>\S+)(?P<rest>.*)$", re.S)
_PYTEST_TMP = re.compile(r"/tmp/pytest-of-[^/]+/pytest-\d+/")
_EVENT_MARK = re.compile(r"<event:(\d+)>")


@runtime_checkable
class Replaying(Protocol):
    """A backend that replays cassettes (the fake): it is handed each test's player, or None between tests."""

    @property
    def player(self) -> Optional[Player]: ...

    def play(self, player: Optional[Player]) -> None: ...


class StaleCassette(KtraceError):
    """The test no longer does what its cassette recorded."""


StaleCassette.__module__ = "pytest_ktrace"  # the name users catch and read in tracebacks


def cassette_path(test_file: Path, test_name: str, directory: str = "cassettes") -> Path:
    """``<dir of the test module>/cassettes/<module stem>/<test name>.json`` (parametrize ids made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", test_name).strip("_") or "test"
    return test_file.parent / directory / test_file.stem / f"{safe}.json"


@dataclass
class Cassette:
    test: str
    target: dict[str, Any]
    formats: dict[str, str] = field(default_factory=dict)  # "<group>/<event:N>" or "system/event" -> format
    interactions: list[dict[str, Any]] = field(default_factory=list)
    recorded_at: str = ""
    version: int = CASSETTE_VERSION
    # function -> what its BTF said: "returns" (fetch type, "" for void), "at entry"/"at return": expression ->
    # resolved fetcharg or {"error": class, "message": ...} (see pytest_ktrace.btf._names)
    btf: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write the cassette atomically (temporary file, fsync, rename): a failed write, e.g. a full disk
        (:class:`~pytest_ktrace._errors.DiskFull`), leaves the previous cassette or none, never a truncated one."""
        body = {
            "version": self.version,
            "test": self.test,
            "recorded_at": self.recorded_at,
            "target": self.target,
            "interactions": self.interactions,
            "formats": dict(sorted(self.formats.items())),
        }
        if self.btf:
            body["btf"] = dict(sorted(self.btf.items()))
        text = json.dumps(body, indent=1, ensure_ascii=False) + "\n"
        write_atomic(path, text.encode("utf-8", "surrogateescape"), what="cassette")

    @classmethod
    def load(cls, path: Path) -> Cassette:
        try:
            body = json.loads(path.read_bytes().decode("utf-8", "surrogateescape"))
        except (OSError, ValueError) as exc:
            raise KtraceError(f"cassette {path} cannot be read: {exc}") from None
        if not isinstance(body, dict) or body.get("version") != CASSETTE_VERSION:
            raise StaleCassette(
                f"cassette {path} has format version {body.get('version') if isinstance(body, dict) else '?'}, "
                f"this pytest-ktrace reads version {CASSETTE_VERSION}: re-record on hardware"
            )
        return cls(
            test=str(body.get("test", "")),
            target=dict(body.get("target", {})),
            formats={str(k): str(v) for k, v in dict(body.get("formats", {})).items()},
            interactions=list(body.get("interactions", [])),
            recorded_at=str(body.get("recorded_at", "")),
            btf=dict(body["btf"]) if isinstance(body.get("btf"), dict) else {},
        )


class _Names:
    """The run-specific names of one test (instance, group, probe events), learned from its operations, and
    their stable placeholders."""

    def __init__(self) -> None:
        self.instance = ""
        self.group = ""
        self.events: list[str] = []

    def learn(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if isinstance(op, Mkdir) and op.path.startswith("instances/") and not self.instance:
                self.instance = op.path.split("/", 1)[1]
            elif isinstance(op, Write) and op.path.endswith("_events"):
                match = _DEFINITION.match(op.data)
                if match:
                    self.group = self.group or match.group("group")
                    if match.group("event") not in self.events:
                        self.events.append(match.group("event"))

    def normalize(self, text: str) -> str:
        # longest first, so "ktrace_x_1_ab_3" (instance) wins over "ktrace_x_1_ab" (group)
        if self.instance:
            text = text.replace(self.instance, "<instance>")
        if self.group:
            text = text.replace(self.group, "<group>")
        for index, event in sorted(enumerate(self.events, 1), key=lambda pair: -len(pair[1])):
            text = re.sub(rf"\b{re.escape(event)}\b", f"<event:{index}>", text)
        return _PYTEST_TMP.sub("<tmp>/", text)

    def restore(self, text: str) -> str:
        text = text.replace("<instance>", self.instance).replace("<group>", self.group)

        def event(match: re.Match[str]) -> str:
            index = int(match.group(1))
            if index > len(self.events):
                raise StaleCassette(f"cassette refers to probe {index}, the test defines {len(self.events)}")
            return self.events[index - 1]

        return _EVENT_MARK.sub(event, text)


def _is_arm_batch(ops: Sequence[Op]) -> bool:
    for op in ops:
        if isinstance(op, Mkdir):
            return True
        if isinstance(op, Write) and (
            (op.path.endswith("_events") and not op.data.startswith("-:"))
            or (op.path.endswith("/enable") and op.data.strip() == "1")
        ):
            return True
    return False


def _describe_op(op: Op, names: _Names) -> list[str]:
    if isinstance(op, Write):
        return ["write", names.normalize(op.path), names.normalize(op.data)]
    return [type(op).__name__.lower(), names.normalize(op.path)]


def _trace_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


class RecordingBackend:
    """A real backend that also writes down what one test did and saw. Everything passes through unchanged."""

    def __init__(self, inner: Backend, test: str) -> None:
        self.inner = inner
        self.names = _Names()
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
        lines = _trace_lines(text)
        # when the ring buffer wrapped or was cleared, keep everything that is there now
        new = lines[len(self._seen) :] if lines[: len(self._seen)] == self._seen else lines
        self._seen = lines
        return [self.names.normalize(line) for line in new]

    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        ops = list(ops)
        arming = _is_arm_batch(ops)
        if arming:
            self.names.learn(ops)
        results = self.inner.apply(ops, stop_on_error=stop_on_error)
        if arming:
            self.cassette.interactions.append(
                {"kind": "arm", "ops": [_describe_op(op, self.names) for op in ops if not isinstance(op, Read)]}
            )
        for result in results:
            op = result.op
            if isinstance(op, Read) and result.ok and op.path.endswith("/format"):
                key = self.names.normalize(op.path[len("events/") : -len("/format")])
                self.cassette.formats[key] = self.names.normalize(result.data)
            elif isinstance(op, Read) and result.ok and op.path.endswith("/trace") and not arming:
                delta = self._delta(result.data)
                if delta:
                    self.cassette.interactions.append({"kind": "collect", "trace": delta})
        return results

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: Optional[float] = None,
        pid_files: Sequence[str] = (),
        stdin: Optional[str] = None,
        after: Sequence[Op] = (),
    ) -> RunResult:
        result = self.inner.run(argv, timeout=timeout, pid_files=pid_files, stdin=stdin, after=after)
        trace = next((r.data for r in result.after if r.ok and r.op.path.endswith("/trace")), None)
        self.cassette.interactions.append(
            {
                "kind": "run",
                "argv": [self.names.normalize(arg) for arg in argv],
                "stdin": stdin,
                "returncode": result.returncode,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "pid": result.pid,
                "duration_s": round(result.duration_s, 6),
                "trace": self._delta(trace) if trace is not None else [],
            }
        )
        return result

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

    def defer(self, ops: Sequence[Op]) -> None:
        self.inner.defer(ops)

    def close(self) -> None:
        """The wrapped backend belongs to the run, not to this test."""

    def save(self, path: Path) -> None:
        self.cassette.save(path)


class Player:
    """Replays one cassette on the fake backend: checks the test against it and feeds it the recorded events."""

    def __init__(self, cassette: Cassette, path: Path) -> None:
        self.cassette = cassette
        self.path = path
        self.names = _Names()
        self.position = 0

    def _stale(self, why: str) -> StaleCassette:
        return StaleCassette(f"cassette is stale: re-record on hardware ({self.path}): {why}")

    def _next(self, kind: str, what: str) -> dict[str, Any]:
        if self.position >= len(self.cassette.interactions):
            raise self._stale(f"the test now does more than was recorded: {what}")
        step = self.cassette.interactions[self.position]
        if step.get("kind") != kind:
            raise self._stale(f"step {self.position + 1} recorded a {step.get('kind')}, the test now does {what}")
        self.position += 1
        return step

    def check_arm(self, ops: Sequence[Op]) -> None:
        self.names.learn(ops)
        now = [_describe_op(op, self.names) for op in ops if not isinstance(op, Read)]
        step = self._next("arm", "an arm batch")
        if step.get("ops") != now:
            recorded = {tuple(op) for op in step.get("ops", [])}
            changed = [" ".join(op) for op in now if tuple(op) not in recorded]
            gone = [" ".join(op) for op in step.get("ops", []) if op not in now]
            raise self._stale(
                "the probes changed since the recording"
                + (f"; now: {changed[:3]}" if changed else "")
                + (f"; recorded: {gone[:3]}" if gone else "")
            )

    def next_run(self, argv: Sequence[str], stdin: Optional[str]) -> dict[str, Any]:
        shown = [self.names.normalize(arg) for arg in argv]
        step = self._next("run", f"run {shown}")
        if step.get("argv") != shown or step.get("stdin") != stdin:
            raise self._stale(f"the command changed: recorded {step.get('argv')}, now {shown}")
        return step

    def pending_collect(self) -> Optional[dict[str, Any]]:
        """The next step if it is a recorded collect (events that arrived while the test waited)."""
        if self.position < len(self.cassette.interactions):
            step = self.cassette.interactions[self.position]
            if step.get("kind") == "collect":
                self.position += 1
                return step
        return None

    def recorded_lines(self, step: dict[str, Any]) -> list[str]:
        return [self.names.restore(line) for line in step.get("trace", [])]

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
            raise self._stale(f"the test now stops before the recorded end ({len(left)} more step(s): {left})")


TARGETS_DIR = "_targets"


def target_snapshot_ref(release: str, arch: str) -> str:
    """Where a cassette's kernel snapshot lives, relative to the cassette root: ``_targets/<release>-<arch>.json.gz``
    (one per kernel build, shared by every cassette recorded on it)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{release}-{arch}").strip("._") or "target"
    return f"{TARGETS_DIR}/{safe}.json.gz"


def cassette_root(cassette: Path) -> Path:
    """``<dir of the test module>/cassettes`` for ``cassettes/<module>/<test>.json``."""
    return cassette.parent.parent


@functools.cache
def _shipped_kernels() -> tuple[tuple[str, tuple[int, int], str, frozenset[str]], ...]:
    """(name, version, arch, features) of each shipped snapshot; read once per process (they are package data)."""
    from ..snapshots._snapshot import load_snapshot, shipped_snapshots

    shipped = []
    for name in shipped_snapshots():
        snapshot = load_snapshot(name)
        shipped.append((name, snapshot.version, snapshot.arch, snapshot.features))
    return tuple(shipped)


def snapshot_of(cassette: Cassette) -> Optional[str]:
    """A shipped snapshot that can stand in for the kernel a cassette was recorded on: the same arch and kernel
    version (major.minor), with every tracefs feature the recording target had. Never matched by build string:
    a user's board runs its own build."""
    from ..snapshots._snapshot import kernel_version

    target = cassette.target
    version = kernel_version(str(target.get("release", "")))
    needed = frozenset(target.get("features", ()))
    for name, shipped_version, arch, features in _shipped_kernels():
        if version == shipped_version and arch == target.get("arch") and needed <= features:
            return name
    return None


def replay_snapshot(path: Path) -> str:
    """The snapshot a cassette replays on: the snapshot of its recording kernel written beside the cassettes,
    else a shipped snapshot of the same arch and kernel version. Raises :class:`StaleCassette` saying how to get
    one when there is neither."""
    cassette = Cassette.load(path)
    target = cassette.target
    release, arch = str(target.get("release", "?")), str(target.get("arch", "?"))
    # cassettes recorded before the snapshot rename name it "profile"
    ref = str(target.get("snapshot") or target.get("profile") or target_snapshot_ref(release, arch))
    snapshot_file = cassette_root(path) / ref
    if snapshot_file.is_file():
        return str(snapshot_file)
    shipped = snapshot_of(cassette)
    if shipped is not None:
        return shipped
    where = f"{target.get('backend', '?')} {target.get('name', '?')}"
    how = (
        "pytest-ktrace snapshot --name target"
        + (f" --host {target.get('name')}" if target.get("backend") == "ssh" else "")
        + f" -o {snapshot_file}"
    )
    raise StaleCassette(
        f"cassette {path} was recorded on Linux {release} {arch} ({where}); replaying it needs that kernel's "
        f"snapshot, written beside the cassettes when they are recorded, and {snapshot_file} is missing "
        f"(no shipped snapshot is of that arch and version either). Take it from the target with: {how}"
    )


class Tape:
    """One test's cassette handling: record on a real backend, replay on the fake, nothing otherwise.

    Recording also makes sure the cassette root holds a snapshot of the recording kernel (``_targets/``), so the
    cassettes replay anywhere with nothing else: taken once per run and kernel (``snapshotted`` is the run's
    memory of which files it wrote), kept when it exists unless ``rewrite``."""

    def __init__(
        self,
        backend: Backend,
        test_id: str,
        path: Path,
        *,
        record: bool,
        rewrite: bool = False,
        snapshotted: Optional[set[Path]] = None,
    ) -> None:
        self.path = path
        self.recorder: Optional[RecordingBackend] = None
        self.player: Optional[Player] = None
        self._real = backend
        self._rewrite = rewrite
        self._snapshotted = snapshotted if snapshotted is not None else set()
        self._fake = backend if isinstance(backend, Replaying) else None
        self.backend: Backend = backend
        if self._fake is not None:
            self.player = Player(Cassette.load(path), path) if path.exists() else None
            self._fake.play(self.player)
        elif record:
            self.recorder = RecordingBackend(backend, test_id)
            self.backend = self.recorder
            target = self.recorder.cassette.target
            target["snapshot"] = target_snapshot_ref(str(target["release"]), str(target["arch"]))

    def _save_target_snapshot(self) -> None:
        """The recording kernel's snapshot beside the cassettes, once per run and kernel; taken after the test's
        teardown, so nothing of the test is in it."""
        from ..snapshots._snapshot import snapshot

        assert self.recorder is not None
        ref = str(self.recorder.cassette.target["snapshot"])
        destination = cassette_root(self.path) / ref
        if destination in self._snapshotted or (destination.exists() and not self._rewrite):
            return
        taken = snapshot(self._real, destination.name[: -len(".json.gz")])
        destination.parent.mkdir(parents=True, exist_ok=True)
        taken.save(destination)
        self._snapshotted.add(destination)

    def finish(self) -> None:
        """After the test's teardown: write the recording, or check that the replay went all the way."""
        if self.recorder is not None:
            self.recorder.save(self.path)
            self._save_target_snapshot()
        if self._fake is not None:
            self._fake.play(None)
            if self.player is not None:
                self.player.finish()
