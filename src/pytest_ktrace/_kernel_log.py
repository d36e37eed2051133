"""The kernel log of one test, and the splats in it.

Every line the kernel prints while a test runs arrives as a ``printk:console`` event in the test's own tracing
instance: it is enabled with the test's probes and read with the trace the test reads anyway (the trace that
``ktrace.run()`` brings back, and the teardown batch), so capturing the log costs no round trip of its own. A
``/dev/kmsg`` reader would cost one per look and sees lines of the whole boot; the event sees exactly the lines
printed while the test's instance was tracing, each with the task that printed it.

A *splat* is a report the kernel prints when something went wrong: a ``WARNING``, a ``BUG``, an Oops, a KASAN,
UBSAN or KFENCE report, a lockdep report, an RCU stall, a hung task or a panic. A test during which the kernel
printed one fails (``--ktrace-kernel-log=fail``, the default), even if every assertion passed, unless the test
said it expects it (:meth:`KernelLog.expect`) or the run allows it (ini ``ktrace_kernel_log_allow``).

On a shared kernel another process's splat lands in every instance that is tracing at that moment: a test is
blamed for what the kernel printed while it ran, which is the honest answer to "was the kernel healthy during
this test?", whoever caused it. The line's task (``comm-pid``) says who printed it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import pytest

from ._errors import KtraceError, hide_for_ktrace_errors
from ._events import Event
from .backends._base import OpResult, Read

__all__ = [
    "CONSOLE_EVENT",
    "KERNEL_LOG_POLICIES",
    "TAINT_READ",
    "KernelLog",
    "LogLine",
    "Splat",
    "find_splats",
    "taint_letters",
]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

CONSOLE_EVENT = ("printk", "console")
# read with the first batch, with each command's trace and at teardown: a taint that changed during the test
TAINT_READ = Read("/proc/sys/kernel/tainted", missing_ok=True)
KERNEL_LOG_POLICIES: tuple[str, ...] = ("fail", "warn", "off")

# (kind, where the report starts): the first pattern that matches a line names the splat. More specific patterns
# come first: a KASAN report starts with "BUG: KASAN:", a lockdep report with "WARNING: possible ...".
_SPLAT_STARTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("KASAN", r"^(?:BUG|WARNING): KASAN: "),
        ("KFENCE", r"^BUG: KFENCE: "),
        ("UBSAN", r"^UBSAN: "),
        (
            "lockdep",
            r"^WARNING: (?:possible (?:circular|recursive) locking|inconsistent lock state|suspicious RCU usage"
            r"|possible irq lock inversion|bad unlock balance|held lock freed|lock held when returning)",
        ),
        ("WARNING", r"^WARNING: "),
        ("BUG", r"^(?:kernel )?BUG(?: at |: )"),
        ("Oops", r"^(?:Oops|Internal error: Oops|general protection fault|Unable to handle kernel )"),
        ("RCU stall", r"^rcu: INFO: rcu_\w+ (?:self-)?detected stalls?|^INFO: rcu_\w+ (?:self-)?detected stalls?"),
        ("hung task", r"^INFO: task \S+ blocked for more than \d+ seconds"),
        ("panic", r"^Kernel panic - not syncing"),
    )
)
_IMPLIED_TAINT = {"WARNING": 1 << 9, "lockdep": 1 << 9}  # W, as __warn() sets it
_SPLAT_END = re.compile(r"^---\[ end (?:trace|Kernel panic)")
# " virtio_net", " ktbar_mod(OE+)" (6.1 prints the fragments without their blank)
_MODULE_FRAGMENT = re.compile(r"^ ?[A-Za-z0-9_]+(?:\([A-Z]*[+-]?\))?$")
_CUT_HERE = "------------[ cut here ]------------"
_SPLAT_LINES = 12  # shown per splat: enough for the location, the modules, the taint and the top of the stack

# /proc/sys/kernel/tainted bits, as kernel/panic.c's taint_flags names them
_TAINT_LETTERS = "PFSRMBUDAWCIOELKXTNJ"
_TAINT_MEANING = {
    "P": "proprietary module",
    "F": "module force-loaded",
    "S": "kernel running on an out-of-spec system",
    "R": "module force-unloaded",
    "M": "machine check",
    "B": "bad page",
    "U": "taint requested by user space",
    "D": "kernel died (an Oops or BUG)",
    "A": "ACPI table overridden",
    "W": "a WARNING was issued",
    "C": "staging driver loaded",
    "I": "firmware bug worked around",
    "O": "out-of-tree module loaded",
    "E": "unsigned module loaded",
    "L": "soft lockup",
    "K": "kernel live-patched",
    "X": "auxiliary taint",
    "T": "built with struct randomization",
    "N": "in-kernel test run",
    "J": "fwctl's mutating debug interface used",
}


def taint_letters(mask: int) -> str:
    """The letters the kernel prints for a taint mask (``4096 | 8192`` -> ``"OE"``); ``G`` for none."""
    letters = "".join(letter for bit, letter in enumerate(_TAINT_LETTERS) if mask & (1 << bit))
    return letters or "G"


@dataclass(frozen=True)
class LogLine:
    """One line the kernel printed: when, by which task, what."""

    timestamp: float
    comm: str
    pid: int
    text: str

    def __str__(self) -> str:
        return f"{self.timestamp:.6f} {self.comm}-{self.pid}: {self.text}"


@dataclass(frozen=True)
class Splat:
    """A kernel report of something gone wrong: its kind (``WARNING``, ``BUG``, ``KASAN``, ...) and its first
    lines (continuation fragments joined)."""

    kind: str
    lines: tuple[LogLine, ...]
    start: int = 0  # the line that says what it is (a WARN's own message comes before it)

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    @property
    def headline(self) -> str:
        return self.lines[self.start].text


def lines_of(events: Iterable[Event]) -> list[LogLine]:
    """The log lines of ``printk:console`` events. The module list of a report is printed one KERN_CONT fragment
    per event (``" ktbar_mod(OE+)"``): those fragments are joined to their ``Modules linked in:`` line."""
    lines: list[LogLine] = []
    open_list: dict[int, int] = {}  # pid -> index of its "Modules linked in:" line still collecting fragments
    for event in events:
        # "buf": the whole text of an event whose format the parser did not know
        text = str(event.fields.get("msg", event.fields.get("buf", ""))).rstrip("\n")
        if not text.strip():
            continue  # the kernel also emits the bare end of a line as an event of its own
        at = open_list.get(event.pid)
        if at is not None and _MODULE_FRAGMENT.match(text):
            line = lines[at]
            joined = line.text + (text if text.startswith(" ") else " " + text)
            lines[at] = LogLine(line.timestamp, line.comm, line.pid, joined)
            continue
        open_list.pop(event.pid, None)
        if text.startswith("Modules linked in:"):
            open_list[event.pid] = len(lines)
        lines.append(LogLine(event.timestamp, event.comm, event.pid, text))
    return lines


def find_splats(lines: Sequence[LogLine]) -> list[Splat]:
    """Every splat in ``lines``, each with the lines its task printed next (up to the report's end marker)."""
    splats: list[Splat] = []
    index = 0
    while index < len(lines):
        kind = _kind_of(lines[index].text)
        if kind is None:
            index += 1
            continue
        start = lines[index]
        body = [start]
        following = index + 1
        while following < len(lines) and len(body) < _SPLAT_LINES:
            line = lines[following]
            following += 1
            if line.pid != start.pid:
                continue
            if _kind_of(line.text) is not None and not _SPLAT_END.match(line.text):
                following -= 1  # the next report starts here
                break
            body.append(line)
            if _SPLAT_END.match(line.text):
                break
        before = _message_before(lines, index)
        splats.append(Splat(kind, tuple([*before, *body]), start=len(before)))
        index = max(following, index + 1)
    return splats


def _message_before(lines: Sequence[LogLine], index: int) -> list[LogLine]:
    """A WARN's message, printed by its task between the ``cut here`` line and the ``WARNING:`` line."""
    pid = lines[index].pid
    mine = [at for at in range(max(0, index - 8), index) if lines[at].pid == pid]
    cut = next((at for at in reversed(mine) if lines[at].text.strip() == _CUT_HERE), None)
    return [] if cut is None else [lines[at] for at in mine if at > cut]


def _kind_of(text: str) -> Optional[str]:
    stripped = text.lstrip()
    for kind, pattern in _SPLAT_STARTS:
        if pattern.match(stripped):
            return kind
    return None


@dataclass
class _Expectation:
    pattern: re.Pattern[str]
    seen: int = 0


@dataclass
class KernelLog:
    """``ktrace.kernel_log``: the lines the kernel printed during this test, and what the test expects of them.

    ``policy`` is ``fail`` (an unexpected splat fails the test), ``warn`` (it is a warning) or ``off`` (the log is
    not captured); ``allowed`` are patterns (ini ``ktrace_kernel_log_allow``) of splats every test may print."""

    policy: str = "fail"
    allowed: tuple[re.Pattern[str], ...] = ()
    captured: bool = False  # the target has the printk:console event and the policy is not "off"
    source: Optional[Callable[[], Iterable[Event]]] = None  # the console events as of now (may read the trace)
    _lines: list[LogLine] = field(default_factory=list)
    _expected: list[_Expectation] = field(default_factory=list)
    _reported: int = 0  # splats already reported (the call phase, then teardown the rest)
    taint_start: Optional[int] = None  # /proc/sys/kernel/tainted when the test started tracing
    taint_now: Optional[int] = None  # ... as last read
    _taint_expected: int = 0  # taint bits the test expects to appear
    _taint_reported: int = 0

    def __post_init__(self) -> None:
        if self.policy not in KERNEL_LOG_POLICIES:
            raise KtraceError(f"kernel_log={self.policy!r} must be one of {', '.join(KERNEL_LOG_POLICIES)}")

    # ----------------------------------------------------------------------------------------------- reading
    @property
    def lines(self) -> list[LogLine]:
        """Every line printed while the test's instance traced, in order, up to now."""
        return list(self._refreshed())

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self._refreshed())

    @property
    def splats(self) -> list[Splat]:
        return find_splats(self._refreshed())

    def _refreshed(self) -> list[LogLine]:
        if self.captured and self.source is not None:
            self.update(self.source())
        return self._lines

    def update(self, events: Iterable[Event]) -> None:
        """The session's latest view of the trace (its console events)."""
        self._lines = lines_of(events)

    # ------------------------------------------------------------------------------------------- expecting
    def expect(self, pattern: Union[str, re.Pattern[str]]) -> None:
        """This test provokes a splat matching ``pattern`` (searched in the splat's lines) on purpose: such a
        splat does not fail it, and the test fails if none is printed."""
        self._check_captured("expect()")
        try:
            compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        except re.error as exc:
            raise KtraceError(f"kernel_log.expect({pattern!r}): not a regular expression: {exc}") from None
        if not isinstance(compiled, re.Pattern):
            raise KtraceError(f"kernel_log.expect() takes a regular expression, got {pattern!r}")
        self._expected.append(_Expectation(compiled))

    def assert_printed(self, pattern: Union[str, re.Pattern[str]]) -> LogLine:
        """A line matching ``pattern`` was printed; returns the first one."""
        __tracebackhide__ = True
        self._check_captured("assert_printed()")
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        lines = self._refreshed()
        for line in lines:
            if compiled.search(line.text):
                return line
        shown = "\n".join(f"    {line}" for line in lines[-10:]) or "    (none)"
        raise AssertionError(f"the kernel printed no line matching {compiled.pattern!r}; its last lines:\n{shown}")

    def assert_not_printed(self, pattern: Union[str, re.Pattern[str]]) -> None:
        __tracebackhide__ = True
        self._check_captured("assert_not_printed()")
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        found = [line for line in self._refreshed() if compiled.search(line.text)]
        if found:
            shown = "\n".join(f"    {line}" for line in found[:5])
            raise AssertionError(f"the kernel printed {len(found)} line(s) matching {compiled.pattern!r}:\n{shown}")

    def expect_taint(self, letters: str) -> None:
        """This test taints the kernel on purpose (e.g. ``"OE"`` for loading an unsigned out-of-tree module):
        those letters appearing do not fail it."""
        self._check_captured("expect_taint()")
        unknown = sorted(set(letters) - set(_TAINT_LETTERS))
        if not isinstance(letters, str) or unknown:
            raise KtraceError(f"kernel_log.expect_taint({letters!r}): taint letters are {_TAINT_LETTERS}")
        for letter in letters:
            self._taint_expected |= 1 << _TAINT_LETTERS.index(letter)

    def note_taint(self, result: OpResult) -> None:
        """A read of ``/proc/sys/kernel/tainted`` (the first is the test's starting point)."""
        text = result.data.strip() if result.ok else ""
        if not text.isdigit():
            return  # not readable on this target: no taint check
        if self.taint_start is None:
            self.taint_start = int(text)
        self.taint_now = int(text)

    def _check_captured(self, what: str) -> None:
        if not self.captured:
            why = (
                "--ktrace-kernel-log=off"
                if self.policy == "off"
                else "the target has no printk:console event (CONFIG_TRACING without printk tracepoints?)"
            )
            raise KtraceError(f"kernel_log.{what}: the kernel log is not captured in this test ({why})")

    # ------------------------------------------------------------------------------------------- verdict
    def problems(self, *, final: bool) -> list[str]:
        """What is wrong with the log so far: unexpected splats not yet reported, and (``final``) expectations
        no splat met. Each problem is reported once."""
        if not self.captured:
            return []
        splats = find_splats(self._lines)  # what was read: a verdict never reads the trace itself
        fresh = splats[self._reported :]
        self._reported = len(splats)
        problems: list[str] = []
        for splat in fresh:
            if self._allowed(splat):
                # a WARNING the test expects taints the kernel W: that taint is expected with it
                self._taint_expected |= _IMPLIED_TAINT.get(splat.kind, 0)
                continue
            shown = "\n".join(f"    {line}" for line in splat.lines)
            problems.append(f"the kernel printed a {splat.kind} during this test:\n{shown}")
        problems.extend(self._taint_problems())
        if final:
            for expectation in self._expected:
                if not expectation.seen:
                    problems.append(
                        f"kernel_log.expect({expectation.pattern.pattern!r}): the kernel printed no such splat"
                    )
        return problems

    def _taint_problems(self) -> list[str]:
        if self.taint_start is None or self.taint_now is None:
            return []
        new = self.taint_now & ~self.taint_start & ~self._taint_expected & ~self._taint_reported
        if not new:
            return []
        self._taint_reported |= new
        meaning = ", ".join(f"{letter}: {_TAINT_MEANING.get(letter, '?')}" for letter in taint_letters(new))
        return [
            f"the kernel's taint changed during this test: {taint_letters(self.taint_start)} -> "
            f"{taint_letters(self.taint_now)} ({meaning})"
        ]

    def _allowed(self, splat: Splat) -> bool:
        for expectation in self._expected:
            if expectation.pattern.search(splat.text):
                expectation.seen += 1
                return True
        return any(pattern.search(splat.text) for pattern in self.allowed)

    def verdict(self, *, final: bool, when: str) -> None:
        """Fail (policy ``fail``) or warn (``warn``) for :meth:`problems`."""
        __tracebackhide__ = True
        problems = self.problems(final=final)
        if not problems or self.policy == "off":
            return
        message = f"pytest-ktrace ({when}): " + "\n".join(problems)
        if self.policy == "warn":
            warnings.warn(pytest.PytestWarning(message), stacklevel=2)
            return
        pytest.fail(message, pytrace=False)
