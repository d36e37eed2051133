"""Owner records: which run made a ``ktrace_*`` group on a target, told by the target itself.

Names alone (:mod:`pytest_ktrace._identity`) prove ownership only to the controller that made them: a CI job in an
ephemeral container has a new machine id every time, so a killed job leaves probes that no later run recognises.
Each run therefore writes, on the target, one small file per group it uses::

    /run/pytest-ktrace/<group>.json      (/tmp/pytest-ktrace/ when /run is not writable)

holding the controller's host name and machine tag, the pytest pid, the start time and the target's boot id. The
file's modification time is the run's heartbeat: the run touches it as its tests start (at most once a minute) and
deletes it at its end. A group is a *provable leftover* when its record's heartbeat is older than a threshold, or
the target rebooted since (boot id), and nothing else: a name without a record is never touched.

All of it is one POSIX ``sh`` script per operation, so it runs on busybox boards over SSH as on this machine.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional, Sequence

from ._errors import KtraceError
from ._identity import OWNED_NAME, RunIdentity, stale_owner
from .backends._base import Backend, Read, Rmdir, Write

__all__ = [
    "HEARTBEAT_S",
    "Leftovers",
    "OwnerRecord",
    "claim",
    "find_leftovers",
    "heartbeat",
    "parse_duration",
    "release",
    "remove_leftovers",
]

HEARTBEAT_S = 60.0  # a run refreshes its record at most this often
_DIRS = ("/run/pytest-ktrace", "/tmp/pytest-ktrace")
_GROUP = re.compile(r"^ktrace_[0-9a-f]{6}_\d+_[0-9a-f]{4}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

# $1: the group. The record is the JSON on stdin, then the boot id on a line of its own.
_CLAIM = (
    'd=/run/pytest-ktrace; if ! mkdir -p "$d" 2>/dev/null || [ ! -w "$d" ]; then d=/tmp/pytest-ktrace; '
    'mkdir -p "$d" || exit 1; fi\n'
    '{ cat; echo; cat /proc/sys/kernel/random/boot_id 2>/dev/null; } > "$d/$1.json.tmp" && '
    'mv -f "$d/$1.json.tmp" "$d/$1.json"\n'
)
_TOUCH = 'for d in /run/pytest-ktrace /tmp/pytest-ktrace; do [ -f "$d/$1.json" ] && touch "$d/$1.json"; done; exit 0\n'
_RELEASE = 'for d in /run/pytest-ktrace /tmp/pytest-ktrace; do rm -f "$d/$1.json"; done; exit 0\n'
# One line per record: "record<TAB>path<TAB>age in seconds<TAB>the record's JSON<TAB>its boot id", then the boot.
_LIST = (
    "now=$(date +%s)\n"
    'for d in /run/pytest-ktrace /tmp/pytest-ktrace; do for f in "$d"/ktrace_*.json; do\n'
    '  [ -f "$f" ] || continue\n'
    '  m=$(stat -c %Y "$f" 2>/dev/null || date -r "$f" +%s)\n'
    '  printf "record\\t%s\\t%s\\t%s\\t%s\\n" "$f" "$((now - m))" "$(head -n 1 "$f")" "$(sed -n 3p "$f")"\n'
    "done; done\n"
    'printf "boot\\t%s\\n" "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"\n'
)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``6h``, ``2d`` -> seconds. ValueError names what is wrong."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (a number with s, m, h or d, e.g. 30m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _sh(backend: Backend, script: str, *args: str, stdin: Optional[str] = None) -> str:
    result = backend.run(["sh", "-c", script, "sh", *args], timeout=60, stdin=stdin)
    if result.returncode != 0:
        raise KtraceError(f"owner records on {backend.name}: the shell exited {result.returncode}: {result.stderr}")
    return result.stdout


def claim(backend: Backend, identity: RunIdentity) -> None:
    """Write this run's record for its group (a failure is the caller's to report or ignore)."""
    record = {
        "group": identity.group,
        "controller": socket.gethostname(),
        "machine": identity.tag,
        "pid": identity.pid,
        "started": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
    _sh(backend, _CLAIM, identity.group, stdin=json.dumps(record, sort_keys=True) + "\n")


def heartbeat(backend: Backend, identity: RunIdentity) -> None:
    _sh(backend, _TOUCH, identity.group)


def release(backend: Backend, identity: RunIdentity) -> None:
    _sh(backend, _RELEASE, identity.group)


@dataclass(frozen=True)
class OwnerRecord:
    group: str
    path: str
    age_s: int  # seconds since the run's last heartbeat, by the target's clock
    controller: str
    machine: str
    pid: int
    started: str
    rebooted: bool  # the target booted again since the record was written: the run's objects died with it

    def describe(self) -> str:
        when = "before the target's last reboot" if self.rebooted else f"heartbeat {self.age_s}s ago"
        run = f"run {self.pid} on {self.controller} (machine {self.machine})"
        return f"{self.group}: {run}, started {self.started}, {when}"


@dataclass(frozen=True)
class Leftovers:
    """What :func:`find_leftovers` saw on a target."""

    stale: tuple[OwnerRecord, ...]  # provable leftovers: removable
    live: tuple[OwnerRecord, ...]  # records with a recent heartbeat: a run that may still be going
    instances: dict[str, tuple[str, ...]]  # group -> its instances on the target (stale and live groups)
    events: dict[str, tuple[tuple[str, str], ...]]  # group -> (control file, "group/event") of its probes
    unowned_instances: tuple[str, ...]  # ktrace_* instances without a record: never touched by a record
    unowned_events: tuple[tuple[str, str], ...]  # (control file, "group/event") without a record, likewise

    @property
    def unowned(self) -> tuple[str, ...]:
        return tuple(sorted({*self.unowned_instances, *(name for _, name in self.unowned_events)}))


def _records(backend: Backend) -> tuple[list[OwnerRecord], str]:
    lines = [line.split("\t") for line in _sh(backend, _LIST).splitlines()]
    boot = next((fields[1].strip() for fields in lines if fields[0] == "boot" and len(fields) == 2), "")
    records: list[OwnerRecord] = []
    for fields in lines:
        if fields[0] == "record" and len(fields) == 5:
            try:
                data = json.loads(fields[3])
                group = str(data["group"])
                if not _GROUP.match(group):
                    continue
                records.append(
                    OwnerRecord(
                        group=group,
                        path=fields[1],
                        age_s=int(fields[2]),
                        controller=str(data.get("controller", "?")),
                        machine=str(data.get("machine", "?")),
                        pid=int(data.get("pid", 0)),
                        started=str(data.get("started", "?")),
                        rebooted=bool(fields[4].strip()) and fields[4].strip() != boot,
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue  # not one of ours, or cut short: never act on it
    return records, boot


def _group_of(name: str) -> Optional[str]:
    match = OWNED_NAME.match(name)
    if not match:
        return None
    return f"ktrace_{match.group('tag')}_{match.group('pid')}_{match.group('run')}"


def find_leftovers(
    backend: Backend, older_than_s: float, *, me: Optional[RunIdentity] = None, records: bool = True
) -> Leftovers:
    """The owner records on ``backend``'s target, split into stale and live, with the tracefs objects of each
    group and the unowned names. A record is stale when its heartbeat is older than ``older_than_s``, when it was
    written before the target's last reboot, or (given ``me``, this run) when it names a dead pid of this
    machine; this run's own record is never stale. ``records=False``: a target that runs no shell (the fake)
    has none; only its tracefs objects are listed."""
    info = backend.describe()
    records_found = _records(backend)[0] if records else []
    return _sorted_out(backend, info.tracefs, info.features, records_found, older_than_s, me)


def _sorted_out(
    backend: Backend,
    tracefs: str,
    features: frozenset[str],
    records: list[OwnerRecord],
    older_than_s: float,
    me: Optional[RunIdentity],
) -> Leftovers:
    owners = {record.group: record for record in records}
    listing = backend.run(["ls", "-1", f"{tracefs}/instances"], timeout=30)
    instances: dict[str, list[str]] = {}
    unowned_instances: list[str] = []
    for name in listing.stdout.split():
        group = _group_of(name)
        if group is None:
            continue
        if group in owners:
            instances.setdefault(group, []).append(name)
        else:
            unowned_instances.append(name)
    controls = [name for name in ("uprobe_events", "kprobe_events") if name.split("_")[0] + "s" in features]
    unowned_events: list[tuple[str, str]] = []
    events: dict[str, list[tuple[str, str]]] = {}
    for control, result in zip(controls, backend.apply([Read(name, missing_ok=True) for name in controls])):
        for line in result.data.splitlines():
            head = line.split(" ", 1)[0]
            if ":" not in head or "/" not in head:
                continue
            group_event = head.split(":", 1)[1]
            group = group_event.split("/", 1)[0]
            if not _GROUP.match(group):
                continue
            if group in owners:
                events.setdefault(group, []).append((control, group_event))
            else:
                unowned_events.append((control, group_event))
    stale = tuple(
        record
        for record in records
        if (me is None or record.group != me.group)
        and (
            record.rebooted
            or record.age_s > older_than_s
            or (me is not None and stale_owner(record.group, me) is not None)
        )
    )
    live = tuple(r for r in records if r not in stale)
    return Leftovers(
        stale=stale,
        live=live,
        instances={group: tuple(names) for group, names in instances.items()},
        events={group: tuple(found) for group, found in events.items()},
        unowned_instances=tuple(unowned_instances),
        unowned_events=tuple(unowned_events),
    )


def remove_leftovers(backend: Backend, leftovers: Leftovers) -> list[str]:
    """Remove the instances and probes of the stale groups, then their records; what was removed, by name.
    Instances go first: dropping one disables what it enabled, so the probes can then go without EBUSY."""
    groups = [record.group for record in leftovers.stale]
    ops: list[Rmdir | Write] = [
        Rmdir(f"instances/{name}") for group in groups for name in leftovers.instances.get(group, ())
    ]
    ops += [Write(control, f"-:{name}") for group in groups for control, name in leftovers.events.get(group, ())]
    removed = [
        (f"instance {r.op.path.split('/', 1)[1]}" if isinstance(r.op, Rmdir) else f"event {r.op.data[2:]}")
        for r in (backend.apply(ops) if ops else [])
        if r.ok and isinstance(r.op, (Rmdir, Write))
    ]
    still_there = set(_objects_left(backend, groups))
    for record in leftovers.stale:
        if record.group not in still_there:  # a record outlives its objects only while they could not be removed
            _sh(backend, 'rm -f "$1"', record.path)
            removed.append(f"record {record.path}")
    return removed


def _objects_left(backend: Backend, groups: Sequence[str]) -> list[str]:
    info = backend.describe()
    listing = backend.run(["ls", "-1", f"{info.tracefs}/instances"], timeout=30)
    left = [_group_of(name) or "" for name in listing.stdout.split()]
    controls = [name for name in ("uprobe_events", "kprobe_events") if name.split("_")[0] + "s" in info.features]
    for result in backend.apply([Read(name, missing_ok=True) for name in controls]):
        left += [line.split(" ", 1)[0].split(":", 1)[-1].split("/", 1)[0] for line in result.data.splitlines()]
    return [group for group in left if group in groups]
