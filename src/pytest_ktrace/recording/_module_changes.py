"""What a recorded command did to the kernel's modules, written down so that the fake can do the same on replay.

A command that loads a module (``insmod``, ``modprobe``, or the test's teardown ``rmmod``) changes what tracefs
offers: the module's functions can be probed and its trace events exist while it is loaded. The recorder reads
``/proc/modules`` with each command's trace (the same round trip). When a module came, it reads the module's
symbols from ``/proc/kallsyms`` and the format files of the events that appeared in ``available_events`` since
before the command; that costs a few round trips, only while recording and only when a module came.

A module's events are the new events whose name it defines a trace event call for (``event_<name>`` among its
symbols, what ``TRACE_EVENT()`` and ``DEFINE_EVENT()`` make); with one new module they are all its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from ..backends._base import Backend, Read

__all__ = ["MODULES_READ", "ModuleArrival", "loads_modules", "module_names", "read_arrivals"]

MODULES_READ = Read("/proc/modules", missing_ok=True)
_LOADERS = frozenset({"insmod", "modprobe"})
_FUNCTION_TYPES = frozenset("tTwW")


@dataclass(frozen=True)
class ModuleArrival:
    """A module that came during a command: its functions and its events (``system/event`` -> format text)."""

    name: str
    functions: tuple[str, ...]
    events: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"functions": list(self.functions), "events": dict(self.events)}


def module_names(proc_modules: str) -> frozenset[str]:
    """The names of the modules listed in a ``/proc/modules`` text."""
    return frozenset(line.split(None, 1)[0] for line in proc_modules.splitlines() if line.strip())


def loads_modules(argv: Sequence[str]) -> bool:
    """Whether ``argv`` runs a module loader (then the recorder looks at the events before it runs)."""
    return bool(argv) and os.path.basename(argv[0]) in _LOADERS


def _symbols_by_module(kallsyms: str) -> dict[str, list[tuple[str, str]]]:
    """``/proc/kallsyms`` lines of modules -> module name -> [(symbol type, name)]."""
    found: dict[str, list[tuple[str, str]]] = {}
    for line in kallsyms.splitlines():
        words = line.split()
        if len(words) == 4 and words[3].startswith("[") and words[3].endswith("]"):
            found.setdefault(words[3][1:-1], []).append((words[1], words[2]))
    return found


def _owner(event: str, symbols: Mapping[str, set[str]], names: Sequence[str]) -> str:
    _, _, name = event.partition("/")
    owners = [module for module in names if f"event_{name}" in symbols[module]]
    return owners[0] if owners else names[0]


def read_arrivals(
    backend: Backend, names: Iterable[str], events_before: Optional[frozenset[str]]
) -> list[ModuleArrival]:
    """Read what the modules ``names`` brought: their functions, and their events when the events before the
    command are known (``events_before``, lines of ``available_events``)."""
    names = sorted(names)
    pattern = "[[:space:]]\\[(" + "|".join(re.escape(name) for name in names) + ")\\]$"
    listed = backend.run(["grep", "-E", pattern, "/proc/kallsyms"])
    by_module = _symbols_by_module(listed.stdout)
    symbols = {name: {symbol for _, symbol in by_module.get(name, [])} for name in names}
    events: dict[str, dict[str, str]] = {name: {} for name in names}
    if events_before is not None:
        now = backend.apply([Read("available_events")])[0]
        new = sorted(set(now.data.splitlines()) - events_before) if now.ok else []
        keys = [line.replace(":", "/", 1) for line in new if ":" in line]
        formats = backend.apply([Read(f"events/{key}/format") for key in keys]) if keys else []
        for key, result in zip(keys, formats):
            if result.ok:
                events[_owner(key, symbols, names)][key] = result.data
    return [
        ModuleArrival(
            name,
            tuple(sorted({symbol for kind, symbol in by_module.get(name, []) if kind in _FUNCTION_TYPES})),
            events[name],
        )
        for name in names
    ]
