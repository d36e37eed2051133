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
    "check_encodable",
    "check_fetchargs",
    "check_text",
    "event_name_for",
]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

ProbeKind = Literal["kprobe", "kretprobe", "uprobe", "uretprobe", "tracepoint"]

DYNAMIC_KINDS: frozenset[str] = frozenset({"kprobe", "kretprobe", "uprobe", "uretprobe"})
RETURN_KINDS: frozenset[str] = frozenset({"kretprobe", "uretprobe"})

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch(): "$" would accept a trailing newline
_RESERVED_FIELDS = frozenset({"__probe_ip", "__probe_ret_ip", "__probe_func"})
_EVENT_PREFIX = {"kprobe": "p", "kretprobe": "r", "uprobe": "u", "uretprobe": "ur"}
MAX_EVENT_NAME = 63  # MAX_EVENT_NAME_LEN (64) includes the NUL


def event_name_for(kind: str, what: str, serial: int) -> str:
    """A readable, kernel-legal, unique-per-group event name such as ``p___setup_irq_3``."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", what.rsplit("/", 1)[-1])
    suffix = f"_{serial}"
    prefix = _EVENT_PREFIX.get(kind, "t") + "_"
    return prefix + stem[: MAX_EVENT_NAME - len(prefix) - len(suffix)] + suffix


def check_fetchargs(fetchargs: dict[str, str]) -> None:
    """Refuse what would change the *shape* of the kernel command (the kernel itself judges the rest and
    answers with its own error_log line): names that are not identifiers, whitespace or control characters."""
    for name, text in fetchargs.items():
        if not isinstance(name, str) or not _IDENT.fullmatch(name):
            raise KtraceError(
                f"fetcharg name {name!r} is not a C identifier: the kernel names the event field after it"
            )
        if name.startswith("common_") or name in _RESERVED_FIELDS:
            raise KtraceError(f"fetcharg name {name!r} is reserved by the kernel for its own event fields")
        if not isinstance(text, str) or not text:
            raise KtraceError(f"fetcharg {name}= needs a non-empty string in kernel syntax, got {text!r}")
        if any(ch.isspace() or ord(ch) < 0x20 for ch in text):
            raise KtraceError(
                f"fetcharg {name}={text!r} contains whitespace or control characters: the kernel splits probe "
                "commands on whitespace, so this would become a different command"
            )
        check_encodable(f"fetcharg {name}=", text)


def check_encodable(what: str, text: str) -> None:
    """What is written to tracefs is UTF-8, with U+DC80..U+DCFF standing for raw bytes (surrogateescape, as
    tracefs is read); any other lone surrogate cannot be written at all."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise KtraceError(
            f"{what} {text!r} holds {text[exc.start]!r} at {exc.start}, a lone surrogate that cannot be encoded "
            "(only U+DC80..U+DCFF, surrogateescape'd bytes, can)"
        ) from None


def check_text(what: str, text: str) -> None:
    """Filters and paths travel as one line: a newline would start another command."""
    if not isinstance(text, str):
        raise KtraceError(f"{what} must be a str, got {type(text).__name__} {text!r}")
    check_encodable(what, text)
    if "\n" in text or "\r" in text or "\0" in text:
        raise KtraceError(f"{what} {text!r} contains a newline or NUL: it must be a single line")


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
