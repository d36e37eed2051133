"""The kernel a cassette replays on: the snapshot of its recording kernel, written beside the cassettes
(``_targets/``), else a shipped snapshot of the same arch and kernel version, else a failure that says how to
take it."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Optional

from .._errors import hide_for_ktrace_errors
from ._cassette import Cassette, StaleCassette, cassette_root

__all__ = ["TARGETS_DIR", "replay_snapshot", "snapshot_of", "target_snapshot_ref"]

__tracebackhide__ = hide_for_ktrace_errors


TARGETS_DIR = "_targets"


def target_snapshot_ref(release: str, arch: str) -> str:
    """Where a cassette's kernel snapshot lives, relative to the cassette root: ``_targets/<release>-<arch>.json.gz``
    (one per kernel build, shared by every cassette recorded on it)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{release}-{arch}").strip("._") or "target"
    return f"{TARGETS_DIR}/{safe}.json.gz"


@functools.cache
def _shipped_names() -> tuple[str, ...]:
    from ..snapshots._snapshot import shipped_snapshots

    return tuple(shipped_snapshots())  # package data: listed once per process


@functools.cache
def _shipped_kernel(name: str) -> tuple[tuple[int, int], str, frozenset[str]]:
    """(version, arch, features) of a shipped snapshot, read when first asked (a replay loads the one it matches,
    not every shipped snapshot: each is megabytes of JSON)."""
    from ..snapshots._snapshot import load_snapshot

    snapshot = load_snapshot(name)
    return snapshot.version, snapshot.arch, snapshot.features


def snapshot_of(cassette: Cassette) -> Optional[str]:
    """A shipped snapshot that can stand in for the kernel a cassette was recorded on: the same arch and kernel
    version (major.minor), with every tracefs feature the recording target had. Never matched by build string:
    a user's board runs its own build."""
    from ..snapshots._snapshot import kernel_version

    target = cassette.target
    version = kernel_version(str(target.get("release", "")))
    needed = frozenset(target.get("features", ()))
    for name in _shipped_names():
        shipped_version, arch, features = _shipped_kernel(name)
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
