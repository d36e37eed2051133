"""Record a test's conversation with a real target, and replay it on the fake backend.

A cassette is one JSON file per test (``cassettes/<module>/<test>.json`` next to the test module, as
pytest-recording does for HTTP). It holds, in order, what the test did and what the kernel answered:

- ``arm``: the tracefs writes that defined, filtered and enabled probes (normalised: the run's group, instance and
  event names become ``<group>``, ``<instance>``, ``<event:N>``, so re-recordings diff cleanly);
- ``run``: a command with its exit status, output, and the trace lines it produced; the kernel's taint after it;
  and the kernel modules it loaded (their functions and event formats) or unloaded
  (:mod:`pytest_ktrace.recording._module_changes`);
- ``spawn`` and ``spawn_end``: a command started in the background, and its end when the test first saw it
  (status, output, whether it was killed, how often it was seen running before; see :mod:`._spawns`);
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

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .._errors import KtraceError, hide_for_ktrace_errors
from .._files import write_atomic
from ..backends._base import (
    Mkdir,
    Op,
    Write,
)

__all__ = [
    "CASSETTE_VERSION",
    "Cassette",
    "CassetteNames",
    "StaleCassette",
    "cassette_path",
    "cassette_root",
    "describe_op",
    "is_arm_batch",
    "is_kernel_log_op",
    "pushed",
    "stored_stdin",
    "trace_lines",
]

__tracebackhide__ = hide_for_ktrace_errors

CASSETTE_VERSION = 1
_DEFINITION = re.compile(r"^(?P<head>[pr]\d*):(?P<group>[^/\s]+)/(?P<event>\S+)(?P<rest>.*)$", re.S)
_PYTEST_TMP = re.compile(r"/tmp/pytest-of-[^/]+/pytest-\d+/")
_EVENT_MARK = re.compile(r"<event:(\d+)>")


class StaleCassette(KtraceError):
    """The test no longer does what its cassette recorded."""


StaleCassette.__module__ = "pytest_ktrace"  # the name users catch and read in tracebacks


def cassette_root(cassette: Path) -> Path:
    """``<dir of the test module>/cassettes`` for ``cassettes/<module>/<test>.json``."""
    return cassette.parent.parent


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


class CassetteNames:
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


def is_arm_batch(ops: Sequence[Op]) -> bool:
    for op in ops:
        if isinstance(op, Mkdir):
            return True
        if isinstance(op, Write) and (
            (op.path.endswith("_events") and not op.data.startswith("-:"))
            or (op.path.endswith("/enable") and op.data.strip() == "1")
            or (op.path.endswith("/trigger") and not op.data.startswith("!"))  # a hist trigger set after arming
        ):
            return True
    return False


def is_kernel_log_op(op: Op) -> bool:
    """The plugin's own capture of the kernel log (``printk:console`` in the test's instance): not something the
    test did, so cassettes neither record it nor check it (cassettes recorded before it existed still replay)."""
    return "/events/printk/console/" in op.path


def describe_op(op: Op, names: CassetteNames) -> list[str]:
    if isinstance(op, Write):
        return ["write", names.normalize(op.path), names.normalize(op.data)]
    return [type(op).__name__.lower(), names.normalize(op.path)]


def stored_stdin(stdin: Optional[Union[str, bytes]]) -> Any:
    """A command's stdin as a cassette stores it: text as it is, bytes as ``{"base64": ...}``."""
    if isinstance(stdin, bytes):
        return {"base64": base64.b64encode(stdin).decode("ascii")}
    return stdin


def pushed(data: bytes, path: str, mode: int) -> dict[str, Any]:
    """What a cassette keeps of a file put on the target: enough to tell a different file, not its bytes."""
    return {"path": path, "mode": f"{mode:o}", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def trace_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]
