"""Target snapshots: what an in-memory fake tracefs needs to imitate one real target.

A :class:`KernelSnapshot` is a snapshot of a kernel as tracing sees it: ``uname`` release and machine, the tracefs
features, the kernel text symbols from ``/proc/kallsyms``, the kprobe blacklist, every event's ``format`` file
and the tracefs README. :func:`snapshot` takes one from any :class:`~pytest_ktrace.backends._base.Backend` in
three round trips (``describe()``; one ``run()`` whose ``after`` ops read ``available_events`` and README; one
``apply()`` reading every ``format``), so it works the same on this machine and on a busybox board over SSH.

Snapshots are stored as gzip-compressed, deterministic JSON (``NAME.json.gz``); a few ship with the package
(:func:`shipped_snapshots`, :func:`load_snapshot`).
"""

from __future__ import annotations

import gzip
import io
import json
import re
import secrets
import shlex
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

from .._errors import KtraceError
from .._files import write_atomic
from .._identity import RunIdentity
from ..backends._base import Backend, Mkdir, OpResult, Read, Rmdir, Write
from ..backends._features import readme_features
from ..backends._shell import marked_sections
from ._kallsyms import TEXT_TYPES, KernelText
from ._kallsyms import parse_kallsyms as parse_kernel_text

__all__ = [
    "ANSWERS",
    "FORMAT_VERSION",
    "KernelSnapshot",
    "kernel_version",
    "load_snapshot",
    "parse_available_events",
    "parse_blacklist",
    "parse_dynamic_events",
    "parse_kallsyms",
    "shipped_snapshots",
    "snapshot",
]

FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1: no text layout, no measured answers
_SUFFIX = ".json.gz"
_DEBUGFS = "/sys/kernel/debug"
_BLACKLIST = f"{_DEBUGFS}/kprobes/blacklist"
# Files read in the same round trip as the snapshot command (missing_ok: older kernels lack some).
_AFTER_READS = ("available_events", "README", "dynamic_events", "kprobe_events", "uprobe_events")
_RUN_TIMEOUT_S = 600.0

# Questions whose answer differs between builds of one kernel version, asked of the kernel at snapshot time:
# question -> (the answer of every kernel checked so far, what is asked). Snapshots without an answer use the first.
ANSWERS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "filter_trailing_operator": (
            "rejected",
            "a filter ending in an operator ('common_pid == 0 &&') is rejected with 'Meaningless filter "
            "expression' (rejected) or taken as if the operator were not there (accepted)",
        ),
    }
)
_TRAILING_OPERATOR_PROBE = "common_pid == 0 &&"


@dataclass(frozen=True)
class KernelSnapshot:
    """One target as the fake needs it (see the module docstring). ``blacklist`` None means it was not readable
    (no debugfs, no kprobes, no permission); an empty set means the kernel blacklists nothing."""

    name: str
    release: str
    arch: str  # uname -m
    features: frozenset[str]
    readme: str
    symbols: frozenset[str]  # kernel (and loaded module) text symbols, types T/t, without the [module] suffix
    duplicate_symbols: frozenset[str]  # text symbol names that appear more than once in kallsyms
    blacklist: Optional[frozenset[str]]  # function names in debugfs kprobes/blacklist; None = unknown
    events: Mapping[str, str] = field(hash=False)  # "system/event" -> exact text of events/system/event/format
    created: str = ""  # ISO 8601 time of the snapshot (UTC)
    source: str = ""  # where it came from, e.g. "ssh ktrace-vm-arm64"
    # where each text symbol starts (for ``field.function`` filters); None when the snapshot could not read
    # the addresses (kallsyms read without root shows zeros)
    text: Optional[KernelText] = field(default=None, hash=False, compare=False)
    # how this kernel answered questions its version does not settle, asked at snapshot time (see ANSWERS)
    answers: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Accept any iterables/mappings but always hold immutable, hashable values.
        # what its README says counts too: a snapshot taken before a feature was detected still has it
        object.__setattr__(self, "features", frozenset(self.features) | readme_features(self.readme))
        object.__setattr__(self, "symbols", frozenset(self.symbols))
        object.__setattr__(self, "duplicate_symbols", frozenset(self.duplicate_symbols))
        if self.blacklist is not None:
            object.__setattr__(self, "blacklist", frozenset(self.blacklist))
        object.__setattr__(self, "events", MappingProxyType(dict(sorted(self.events.items()))))
        object.__setattr__(self, "answers", MappingProxyType(dict(sorted(self.answers.items()))))

    def answer(self, question: str) -> str:
        """The measured answer to ``question`` (a key of :data:`ANSWERS`), or what every kernel we checked says."""
        return self.answers.get(question, ANSWERS[question][0])

    @property
    def version(self) -> tuple[int, int]:
        """(major, minor) of the kernel release, e.g. (6, 1) for ``6.1.0-57-arm64``; (0, 0) if unreadable."""
        return kernel_version(self.release)

    def has_symbol(self, name: str) -> bool:
        """Whether ``name`` is a text symbol of the target's kernel (or of a module loaded at snapshot time)."""
        return name in self.symbols

    def is_blacklisted(self, name: str) -> bool:
        """Whether the kprobe blacklist lists ``name`` (False when the blacklist is unknown)."""
        return self.blacklist is not None and name in self.blacklist

    def has_event(self, event: str) -> bool:
        """``event`` as ``system/event`` or ``system:event``."""
        return event.replace(":", "/", 1) in self.events

    def summary(self) -> str:
        blacklist = "unknown" if self.blacklist is None else str(len(self.blacklist))
        return (
            f"{self.name}: Linux {self.release} {self.arch}; {len(self.symbols)} symbols "
            f"({len(self.duplicate_symbols)} duplicated), {len(self.events)} events, blacklist {blacklist}; "
            f"from {self.source or 'unknown'} at {self.created or 'unknown'}"
        )

    # --- storage ------------------------------------------------------------------------------------------

    def _symbols_are_the_text(self) -> bool:
        if self.text is None:
            return False
        return (self.symbols, self.duplicate_symbols) == _names_and_duplicates(self.text.names)

    def to_json(self) -> dict[str, Any]:
        derived = self._symbols_are_the_text()  # with the text layout, its names are the symbols: stored once
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "release": self.release,
            "arch": self.arch,
            "created": self.created,
            "source": self.source,
            "features": sorted(self.features),
            "readme": self.readme,
            "symbols": None if derived else sorted(self.symbols),
            "duplicate_symbols": None if derived else sorted(self.duplicate_symbols),
            "blacklist": None if self.blacklist is None else sorted(self.blacklist),
            "events": dict(sorted(self.events.items())),
            "answers": dict(sorted(self.answers.items())),
            "text": None if self.text is None else self.text.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = "snapshot") -> KernelSnapshot:
        version = data.get("format")
        if version not in _READABLE_VERSIONS:
            raise KtraceError(
                f"{where}: snapshot format {version!r} is not supported (this pytest-ktrace reads "
                f"{', '.join(map(str, _READABLE_VERSIONS))})"
            )
        try:
            blacklist = data["blacklist"]
            text = None if data.get("text") is None else KernelText.from_json(data["text"])
            if data["symbols"] is None and text is not None:
                symbols, duplicates = _names_and_duplicates(text.names)
            else:
                symbols, duplicates = frozenset(data["symbols"]), frozenset(data["duplicate_symbols"])
            return cls(
                name=str(data["name"]),
                release=str(data["release"]),
                arch=str(data["arch"]),
                features=frozenset(data["features"]),
                readme=str(data["readme"]),
                symbols=symbols,
                duplicate_symbols=duplicates,
                blacklist=None if blacklist is None else frozenset(blacklist),
                events={str(k): str(v) for k, v in dict(data["events"]).items()},
                created=str(data.get("created", "")),
                source=str(data.get("source", "")),
                text=text,
                answers={str(k): str(v) for k, v in dict(data.get("answers", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KtraceError(f"{where}: not a valid snapshot ({type(exc).__name__}: {exc})") from None

    def dumps(self) -> bytes:
        """The gzip-compressed JSON of :meth:`save`: the same snapshot always gives the same bytes."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        buffer = io.BytesIO()
        # mtime=0 and no file name in the header: byte-for-byte reproducible.
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
            gz.write(text.encode("utf-8", "surrogateescape"))
        return buffer.getvalue()

    def save(self, path: Path) -> None:
        """Write the snapshot to ``path`` (conventionally ``NAME.json.gz``), replacing it atomically (a full disk
        leaves the previous file whole and raises :class:`~pytest_ktrace._errors.DiskFull`)."""
        path = Path(path)
        if not path.parent.is_dir():  # a mistyped -o must not create directories
            raise KtraceError(f"cannot write snapshot {path}: its directory {path.parent} does not exist")
        write_atomic(path, self.dumps(), what="snapshot")

    @classmethod
    def load(cls, path: Path) -> KernelSnapshot:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise KtraceError(f"cannot read snapshot {path}: {exc.strerror or exc}") from None
        try:
            text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            data = json.loads(text.decode("utf-8", "surrogateescape"))
        except (OSError, EOFError, ValueError) as exc:
            raise KtraceError(f"{path} is not a snapshot (gzip-compressed JSON): {exc}") from None
        if not isinstance(data, dict):
            raise KtraceError(f"{path} is not a snapshot: its JSON is not an object")
        return cls.from_json(data, where=str(path))


# --- parsing what the target printed -------------------------------------------------------------------------


def parse_kallsyms(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """``/proc/kallsyms`` -> (text symbol names, names that occur more than once). Lines are
    ``ADDR TYPE NAME`` or ``ADDR TYPE NAME\\t[module]``; only types T and t (text) count."""
    names = [parts[2] for parts in map(str.split, text.splitlines()) if len(parts) >= 3 and parts[1] in TEXT_TYPES]
    return _names_and_duplicates(names)


def _names_and_duplicates(names: Sequence[str]) -> tuple[frozenset[str], frozenset[str]]:
    seen = frozenset(names)
    if len(seen) == len(names):
        return seen, frozenset()
    return seen, frozenset(name for name, count in Counter(names).items() if count > 1)


def kernel_version(release: str) -> tuple[int, int]:
    """``6.1.0-57-amd64`` -> (6, 1); (0, 0) when the release does not start with two numbers."""
    match = re.match(r"^(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def parse_blacklist(text: str) -> frozenset[str]:
    """debugfs ``kprobes/blacklist`` -> function names. Lines are ``0xSTART-0xEND\\tNAME`` (maybe with a
    ``[module]`` column); 6.x also lists whole sections as ``[__kprobes_text]`` style names, kept as given."""
    names: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "-" in parts[0]:
            names.add(parts[1])
    return frozenset(names)


def parse_available_events(text: str) -> list[str]:
    """``available_events`` (``system:event`` lines) -> sorted ``system/event`` names."""
    out = set()
    for line in text.splitlines():
        system, sep, event = line.strip().partition(":")
        if sep and system and event:
            out.add(f"{system}/{event}")
    return sorted(out)


_DYN_EVENT = re.compile(r"^[a-z]+:(?:(?P<group>[^\s/]+)/)?(?P<event>[^\s/]+)")


def parse_dynamic_events(text: str) -> set[str]:
    """``dynamic_events``/``kprobe_events``/``uprobe_events`` -> ``group/event`` of the probes someone defined
    (they are the target's current state, not its kernel: a snapshot leaves them out)."""
    out = set()
    for line in text.splitlines():
        match = _DYN_EVENT.match(line.strip())
        if match and match.group("group"):
            out.add(f"{match.group('group')}/{match.group('event')}")
    return out


def _snapshot_script(nonce: str, mount_debugfs: bool) -> str:
    """POSIX sh for busybox targets: uname, kallsyms and the blacklist, each after a marker line."""
    mark = f"@@ktrace-{nonce}"
    mount = (
        # Only an empty (unmounted) debugfs directory, only when asked, and unmounted again afterwards.
        f'if [ ! -e {_BLACKLIST} ] && [ -d {_DEBUGFS} ] && [ -z "$(ls -A {_DEBUGFS} 2>/dev/null)" ]; then\n'
        f"  mount -t debugfs none {_DEBUGFS} 2>/dev/null && kt_mounted=1\n"
        "fi\n"
        if mount_debugfs
        else ""
    )
    return (
        "kt_mounted=\n"
        f"echo '{mark} uname'\n"
        "uname -r\nuname -m\n"
        f"echo '{mark} kallsyms'\n"
        "cat /proc/kallsyms\n"
        f"echo '{mark} kallsyms-status' $?\n"
        f"{mount}"
        f"echo '{mark} blacklist'\n"
        f"cat {_BLACKLIST} 2>/dev/null\n"
        f"kt_rc=$?\n"
        f"echo '{mark} blacklist-status' $kt_rc\n"
        f'if [ -n "$kt_mounted" ]; then umount {_DEBUGFS} 2>/dev/null; fi\n'
        "exit 0\n"
    )


def _status(sections: Mapping[str, str], key: str) -> Optional[int]:
    """``kallsyms-status 0`` puts its value on the marker line itself: ``{key}-status N``."""
    for label in sections:
        if label.startswith(f"{key}-status "):
            try:
                return int(label.split()[1])
            except ValueError:
                return None
    return None


def _source(backend: Backend, backend_kind: str) -> str:
    name = backend.name
    return backend_kind if name == backend_kind else f"{backend_kind} {name}"


def _data(result: OpResult) -> str:
    return result.data if result.ok else ""


def snapshot(backend: Backend, name: str, *, mount_debugfs: bool = False) -> KernelSnapshot:
    """Take a :class:`KernelSnapshot` of ``backend``'s target, named ``name``, in three round trips.

    ``mount_debugfs`` lets the snapshot mount debugfs at /sys/kernel/debug (only when that directory is empty,
    and unmounted again) to read the kprobe blacklist: meant for disposable guests, off by default. Reading
    /proc/kallsyms and the blacklist needs root on the target (``SshBackend(sudo=True)`` or root login).
    """
    info = backend.describe()
    nonce = secrets.token_hex(8)
    after = [Read(path, missing_ok=True) for path in _AFTER_READS]
    result = backend.run(["sh", "-c", _snapshot_script(nonce, mount_debugfs)], timeout=_RUN_TIMEOUT_S, after=after)
    sections = marked_sections(result.stdout, nonce)
    if result.returncode != 0 or "blacklist" not in sections:
        raise KtraceError(
            f"snapshot of {backend.name}: the snapshot shell exited {result.returncode} "
            f"without finishing; stderr: {result.stderr.strip()[-500:]!r}"
        )
    uname = sections.get("uname", "").split()
    release = uname[0] if len(uname) >= 1 else info.release
    arch = uname[1] if len(uname) >= 2 else info.arch
    if _status(sections, "kallsyms") not in (0, None):
        raise KtraceError(f"snapshot of {backend.name}: cannot read /proc/kallsyms: {result.stderr.strip()!r}")
    symbols, duplicates = parse_kallsyms(sections.get("kallsyms", ""))
    if not symbols:
        raise KtraceError(f"snapshot of {backend.name}: /proc/kallsyms lists no text symbols (CONFIG_KALLSYMS=n?)")
    blacklist = parse_blacklist(sections["blacklist"]) if _status(sections, "blacklist") == 0 else None

    by_path = {r.op.path: r for r in result.after}
    available = by_path.get("available_events")
    if available is None or not available.ok:
        error = available.error if available is not None else "not read (the command's after ops did not run)"
        raise KtraceError(f"snapshot of {backend.name}: cannot read {info.tracefs}/available_events: {error}")
    readme = _data(by_path["README"]) if "README" in by_path else ""
    defined: set[str] = set()
    for path in ("dynamic_events", "kprobe_events", "uprobe_events"):
        if path in by_path:
            defined |= parse_dynamic_events(_data(by_path[path]))
    names = [e for e in parse_available_events(available.data) if e not in defined]

    events: dict[str, str] = {}
    questions = _questions(info.features, names)
    if names:
        reads: Sequence[Read] = [Read(f"events/{event}/format") for event in names]
        results = backend.apply([*reads, *questions])
        for event, res in zip(names, results):
            if res.ok:
                events[event] = res.data
        answers = _answers(results[len(reads) :])
    if names and not events:
        raise KtraceError(f"snapshot of {backend.name}: no event format file was readable under {info.tracefs}")
    kernel_text = parse_kernel_text(sections.get("kallsyms", ""))

    return KernelSnapshot(
        name=name,
        release=release,
        arch=arch,
        features=info.features,
        readme=readme,
        symbols=symbols,
        duplicate_symbols=duplicates,
        blacklist=blacklist,
        events=events,
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        source=_source(backend, info.backend),
        text=kernel_text if kernel_text.span_of_name(kernel_text.names[0]) is not None else None,
        answers=answers if names else {},
    )


def _questions(features: frozenset[str], events: Sequence[str]) -> list[Mkdir | Write | Rmdir]:
    """How :data:`ANSWERS` are asked: in a scratch instance of ours, removed in the same batch (named like a
    test's instance, so a crash leaves nothing that the next run would not recognise and remove)."""
    if "instances" not in features or not events:
        return []
    event = "sched/sched_process_exec" if "sched/sched_process_exec" in events else events[0]
    instance = f"instances/{RunIdentity.current().instance(0)}"
    return [Mkdir(instance), Write(f"{instance}/events/{event}/filter", _TRAILING_OPERATOR_PROBE), Rmdir(instance)]


def _answers(results: Sequence[OpResult]) -> dict[str, str]:
    if len(results) != 3 or not results[0].ok:
        return {}
    trailing = results[1]
    if not (trailing.ok or trailing.errno_name == "EINVAL"):
        return {}
    return {"filter_trailing_operator": "accepted" if trailing.ok else "rejected"}


# --- shipped snapshots ---------------------------------------------------------------------------------------


def _data_dir() -> Path:
    return Path(str(resources.files("pytest_ktrace.snapshots") / "data"))


def shipped_snapshots() -> dict[str, Path]:
    """Shipped snapshot name -> its file (``pytest_ktrace/snapshots/data/NAME.json.gz``), sorted by name."""
    directory = _data_dir()
    if not directory.is_dir():
        return {}
    found = {p.name[: -len(_SUFFIX)]: p for p in directory.iterdir() if p.name.endswith(_SUFFIX) and p.is_file()}
    return dict(sorted(found.items()))


# Loaded snapshots, by file and its state when read: a snapshot is immutable, so every fake backend of a process
# (each test's, in the fake's own tests) shares one instead of decompressing and indexing 2-4 MB of JSON again.
_LOADED: dict[tuple[str, int, int, int], KernelSnapshot] = {}
_LOADED_MAX = 8
_LOADING = threading.Lock()


def _load_shared(path: Path) -> KernelSnapshot:
    """``KernelSnapshot.load(path)``, read once per process while the file stays the same (size, mtime, inode)."""
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except OSError:
        return KernelSnapshot.load(path)  # it says why it cannot be read
    with _LOADING:
        loaded = _LOADED.get(key)
        if loaded is None:
            loaded = KernelSnapshot.load(path)
            if len(_LOADED) >= _LOADED_MAX:
                del _LOADED[next(iter(_LOADED))]
            _LOADED[key] = loaded
        return loaded


def load_snapshot(name_or_path: str) -> KernelSnapshot:
    """A shipped snapshot by name (see :func:`shipped_snapshots`) or a snapshot file by path. Loaded once per
    process and file: the same (immutable) snapshot comes back while the file does not change."""
    shipped = shipped_snapshots()
    if name_or_path in shipped:
        return _load_shared(shipped[name_or_path])
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _load_shared(path)
    names = ", ".join(shipped) or "none"
    raise KtraceError(
        f"unknown snapshot {shlex.quote(name_or_path)}: not a shipped snapshot (shipped: {names}) and no such file"
    )
