"""This machine's record of the labgrid reservations and places its pytest processes hold.

labgrid never releases an acquired place by itself: a run killed while holding one leaves it acquired (and its
reservation with it) until someone releases it. So each reservation a test creates is written down here, with
the process that made it (pid, its start time, the boot), before the place is acquired, and removed once the
place is released and the reservation cancelled. A later run on this machine that finds a record whose process
is gone releases that place, only if it is still acquired by the record's owner for the record's reservation,
and cancels the reservation (:func:`~._places.recover`).

The records are JSON files under ``$KTRACE_LOCK_DIR/labgrid`` (default ``~/.cache/pytest-ktrace/locks/labgrid``),
one per reservation; a lock file there serialises recoveries of concurrent processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from .._boards import lock_dir

__all__ = ["HoldingRecord", "HoldingRecords", "boot_id", "process_started"]

_FORGET_AFTER_S = 30 * 86400.0  # a dead run's record of a coordinator nobody used since is dropped


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def process_started(pid: int) -> Optional[int]:
    """When ``pid`` started (clock ticks since boot), or None if there is no such process: with the boot id it
    tells a process from a later one that got the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class HoldingRecord:
    coordinator: str
    token: str
    owner: str  # host/user, as the coordinator names the holder
    pid: int
    started: Optional[int]
    boot: str
    written: float
    place: Optional[str] = None  # once a place is allocated

    @classmethod
    def mine(cls, coordinator: str, token: str, owner: str) -> HoldingRecord:
        pid = os.getpid()
        return cls(coordinator, token, owner, pid, process_started(pid), boot_id(), time.time())

    @property
    def alive(self) -> bool:
        """Whether the process that wrote it still runs (same boot, same pid, same start time)."""
        return self.boot == boot_id() and self.started is not None and process_started(self.pid) == self.started


class HoldingRecords:
    """The records in ``directory`` (default: see the module docstring)."""

    def __init__(self, directory: Optional[Path] = None) -> None:
        self.directory = directory if directory is not None else lock_dir() / "labgrid"

    def _path(self, coordinator: str, token: str) -> Path:
        prefix = hashlib.sha1(coordinator.encode()).hexdigest()[:10]
        return self.directory / f"{prefix}-{token}.json"

    def write(self, record: HoldingRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(record.coordinator, record.token)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, path)

    def with_place(self, record: HoldingRecord, place: str) -> HoldingRecord:
        updated = replace(record, place=place)
        self.write(updated)
        return updated

    def remove(self, record: HoldingRecord) -> None:
        self._path(record.coordinator, record.token).unlink(missing_ok=True)

    def dead(self, coordinator: str) -> list[HoldingRecord]:
        """The records of ``coordinator`` whose process is gone; records of other coordinators that are long
        dead are dropped on the way."""
        found: list[HoldingRecord] = []
        for path in sorted(self.directory.glob("*.json")):
            record = _read(path)
            if record is None or record.alive:
                continue
            if record.coordinator == coordinator:
                found.append(record)
            elif time.time() - record.written > _FORGET_AFTER_S:
                path.unlink(missing_ok=True)
        return found

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held while a process recovers dead records: two processes never release the same place twice."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path) -> Optional[HoldingRecord]:
    try:
        data = json.loads(path.read_text())
        return HoldingRecord(**data)
    except (OSError, ValueError, TypeError):
        return None  # being written (written to a temporary name first) or not ours
