"""Probe definitions and their kernel command lines.

A :class:`ProbeSpec` is what a test asked for, already adapted to its target (registers, offsets). Rendering it
gives the exact line written to ``kprobe_events``/``uprobe_events``; nothing here talks to a target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional

from ._errors import KtraceError, hide_for_ktrace_errors

__all__ = [
    "DYNAMIC_KINDS",
    "RETURN_KINDS",
    "ProbeKind",
    "ProbeSpec",
    "event_name_for",
]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

ProbeKind = Literal["kprobe", "kretprobe", "uprobe", "uretprobe", "tracepoint"]

DYNAMIC_KINDS: frozenset[str] = frozenset({"kprobe", "kretprobe", "uprobe", "uretprobe"})
RETURN_KINDS: frozenset[str] = frozenset({"kretprobe", "uretprobe"})

_EVENT_PREFIX = {"kprobe": "p", "kretprobe": "r", "uprobe": "u", "uretprobe": "ur"}
MAX_EVENT_NAME = 63  # MAX_EVENT_NAME_LEN (64) includes the NUL


def event_name_for(kind: str, what: str, serial: int) -> str:
    """A readable, kernel-legal, unique-per-group event name such as ``p___setup_irq_3``."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", what.rsplit("/", 1)[-1])
    suffix = f"_{serial}"
    prefix = _EVENT_PREFIX.get(kind, "t") + "_"
    return prefix + stem[: MAX_EVENT_NAME - len(prefix) - len(suffix)] + suffix


@dataclass(frozen=True)
class ProbeSpec:
    """One probe, ready to render. ``location`` is the kernel's place syntax (``sym[+offs]`` or ``PATH:0xOFFS``)."""

    kind: ProbeKind
    group: str
    event: str
    location: str
    fetchargs: tuple[tuple[str, str], ...] = ()
    filter: Optional[str] = None
    maxactive: Optional[int] = None
    display: str = ""  # what the user named: "__setup_irq", "/bin/prog:setup_thing", "sched:sched_switch"
    where: str = ""  # file:line of the definition in the test
    stacktrace: bool = False  # a "stacktrace" trigger records the kernel call stack of each hit

    @property
    def is_dynamic(self) -> bool:
        return self.kind in DYNAMIC_KINDS

    @property
    def is_return(self) -> bool:
        return self.kind in RETURN_KINDS

    @property
    def control_file(self) -> str:
        return "kprobe_events" if self.kind in ("kprobe", "kretprobe") else "uprobe_events"

    @property
    def event_dir(self) -> str:
        """Path of the event below ``events/``: ``group/event``."""
        return f"{self.group}/{self.event}"

    def render(self) -> str:
        """The line for the control file, e.g. ``p:ktrace_ab_12/p_sym_1 sym irq=%di:u32``."""
        if not self.is_dynamic:
            raise KtraceError(f"a tracepoint ({self.display}) has no probe command")
        letter = "r" if self.is_return else "p"
        if self.maxactive is not None:
            letter += str(self.maxactive)
        args = "".join(f" {name}={text}" for name, text in self.fetchargs)
        return f"{letter}:{self.group}/{self.event} {self.location}{args}"

    @property
    def return_field(self) -> Optional[str]:
        """Name of the field that records ``$retval`` (return probes), if any."""
        for name, text in self.fetchargs:
            if text.startswith("$retval"):
                return name
        return None

    def removal(self) -> str:
        return f"-:{self.group}/{self.event}"
