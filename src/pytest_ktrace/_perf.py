"""perf on the target: ``perf stat`` counts and ``perf record -g`` profiles of the commands a test runs.

Both work by wrapping each ``ktrace.run(...)`` inside the block in a small POSIX sh script, so they need no
background process, no file on the target and no extra round trip, and whatever a backend can ``run`` (this
machine, SSH, a replayed cassette) can count and profile. The script:

- says ``MARK missing`` and exits 127 when there is no ``perf`` on the target;
- runs ``perf stat -x, --log-fd 3`` (or ``perf record -g -o - | perf script -i -``) around ``sh -c`` that
  appends its own pid to the session's pid files (scope="run" then follows the command, not perf) and says
  ``MARK pid N`` before it execs the command, whose stdout/stderr stay its own;
- appends ``MARK rc N`` and ``MARK stat`` / ``MARK prof`` plus perf's output to stderr at the end.

:func:`unwrap` takes those lines back out, so the caller sees the command's own output, pid and exit status.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import html
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional, Sequence

from .backends._base import RunResult

__all__ = [
    "MARK",
    "PerfOutput",
    "PerfStat",
    "Profile",
    "StatValue",
    "collapse_stacks",
    "flamegraph_svg",
    "parse_stat",
    "unwrap",
    "wrap_record",
    "wrap_stat",
]

# Constant (not random) so a replayed cassette matches the recorded command line; nothing prints this.
MARK = "@@ktrace-perf-3f9c1e@@"

_PID_FILES = r"""kt_c=$1; shift
while [ "$kt_c" -gt 0 ]; do
  kt_e=$(printf '%s' "$$" | dd of="$1" bs=32 oflag=append conv=notrunc 2>&1 >/dev/null) || {
    printf '\n%s pidfile %s: %s\n' "$kt_m" "$1" "$kt_e" >&2; exit 125; }
  shift; kt_c=$((kt_c - 1))
done
printf '\n%s pid %s\n' "$kt_m" "$$" >&2
"""

# $0 mark, $1 events, $2 "a" for system-wide, $3 pid-file count, pid files..., command...
_STAT = (
    r"""kt_m=$0; kt_ev=$1; kt_sw=$2; shift 2
command -v perf >/dev/null 2>&1 || { printf '\n%s missing\n' "$kt_m" >&2; exit 127; }
exec 4>&1
kt_out=$(perf stat ${kt_sw:+-a} -x, --log-fd 3 -e "$kt_ev" -- sh -c 'kt_m=$0
"""
    + _PID_FILES.replace("'", "'\\''")
    + r"""exec "$@" 3>&- 4>&-' "$kt_m" "$@" 3>&1 1>&4 4>&-)
kt_rc=$?
printf '\n%s rc %s\n%s stat\n%s\n' "$kt_m" "$kt_rc" "$kt_m" "$kt_out" >&2
exit "$kt_rc"
"""
)

# $0 mark, $1 frequency, $2 "a" for system-wide, $3 pid-file count, pid files..., command...
_RECORD = (
    r"""kt_m=$0; kt_fr=$1; kt_sw=$2; shift 2
command -v perf >/dev/null 2>&1 || { printf '\n%s missing\n' "$kt_m" >&2; exit 127; }
exec 4>&1
kt_out=$( { perf record -q -g ${kt_sw:+-a} -F "$kt_fr" --no-buildid -N -o - -- sh -c 'kt_m=$0
"""
    + _PID_FILES.replace("'", "'\\''")
    + r"""exec "$@" 1>&4 4>&-' "$kt_m" "$@"
  printf '\n%s rc %s\n' "$kt_m" "$?" >&2; } | perf script -i - 2>/dev/null )
printf '\n%s prof\n%s\n' "$kt_m" "$kt_out" >&2
exit 0
"""
)


def wrap_stat(argv: Sequence[str], events: Sequence[str], *, system_wide: bool, pid_files: Sequence[str]) -> list[str]:
    """``argv`` under ``perf stat``; ``pid_files`` are absolute tracefs paths that get the command's pid."""
    return ["sh", "-c", _STAT, MARK, ",".join(events), "a" if system_wide else "", str(len(pid_files)),
            *pid_files, *argv]  # fmt: skip


def wrap_record(argv: Sequence[str], *, frequency: int, system_wide: bool, pid_files: Sequence[str]) -> list[str]:
    """``argv`` under ``perf record -g``, its samples printed by ``perf script`` on the target."""
    return ["sh", "-c", _RECORD, MARK, str(frequency), "a" if system_wide else "", str(len(pid_files)),
            *pid_files, *argv]  # fmt: skip


@dataclass(frozen=True)
class PerfOutput:
    """What the wrapper said: ``missing`` (no perf), the command's ``pid`` and exit status, perf's text."""

    missing: bool
    pid: Optional[int]
    returncode: Optional[int]
    kind: str  # "stat", "prof" or "" when perf never got to print
    text: str
    pid_file_error: str = ""


_LINE = re.compile(r"\n?" + re.escape(MARK) + r" (missing|pid \d+|rc \d+|pidfile [^\n]*|stat|prof)\n")


def unwrap(result: RunResult) -> tuple[RunResult, PerfOutput]:
    """Split the wrapper's lines out of ``result.stderr``: the command's own result, and perf's output."""
    stderr = result.stderr
    missing = False
    pid: Optional[int] = None
    rc: Optional[int] = None
    kind = ""
    text = ""
    pid_error = ""
    kept: list[str] = []
    pos = 0
    for m in _LINE.finditer(stderr):
        kept.append(stderr[pos : m.start()])
        pos = m.end()
        what = m.group(1)
        if what == "missing":
            missing = True
        elif what.startswith("pid "):
            pid = int(what[4:])
        elif what.startswith("rc "):
            rc = int(what[3:])
        elif what.startswith("pidfile "):
            pid_error = what[8:]
        else:
            kind = what
            text = stderr[m.end() :]
            pos = len(stderr)
            break
    kept.append(stderr[pos:])
    own = "".join(kept)
    if text.endswith("\n"):
        text = text[:-1]
    returncode = result.returncode if rc is None else rc
    command = dataclasses.replace(
        result,
        returncode=returncode,
        stderr=own,
        pid=pid if pid is not None else result.pid,
    )
    return command, PerfOutput(missing, pid, rc, kind, text, pid_error)


# ------------------------------------------------------------------------------------------------ perf stat


@dataclass(frozen=True)
class StatValue:
    """One counter from ``perf stat -x,``: ``value`` is None when perf could not count it (``status`` then
    says why: ``<not supported>`` or ``<not counted>``); ``running`` is the share of time it was counted."""

    event: str
    value: Optional[float]
    unit: str
    status: str = ""
    running: float = 100.0

    @property
    def supported(self) -> bool:
        return self.status != "<not supported>"


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def parse_stat(text: str) -> dict[str, StatValue]:
    """``perf stat -x,`` output: ``value,unit,event,run-time,running%,metric,metric-unit`` per line (comments
    and blank lines skipped). A counter given several times (one line per CPU with ``-A``) is summed."""
    values: dict[str, StatValue] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(",")
        if len(parts) < 3:
            continue
        raw, unit, event = parts[0], parts[1], parts[2]
        running = _number(parts[4]) if len(parts) > 4 else None
        value = _number(raw)
        status = "" if value is not None else raw.strip()
        seen = values.get(event)
        if seen is not None and seen.value is not None and value is not None:
            value += seen.value
        values[event] = StatValue(event, value, unit, status, 100.0 if running is None else running)
    return values


# ------------------------------------------------------------------------------------------------ profiles

_SAMPLE_HEAD = re.compile(r"^(?P<comm>\S.*?)\s+(?P<pid>\d+)(?:/\d+)?\s+(?:\[\d+\]\s+)?[\d.]+:")
_FRAME = re.compile(r"^\s+[0-9a-fA-F]+\s+(?P<sym>.+?)\s+\((?P<dso>[^()]*)\)\s*$")
_OFFSET = re.compile(r"\+0x[0-9a-fA-F]+$")


def _frame_name(sym: str, dso: str) -> str:
    sym = _OFFSET.sub("", sym)
    if sym == "[unknown]" and dso and dso != "[unknown]":
        return f"[{dso.rsplit('/', 1)[-1]}]"
    return sym


def collapse_stacks(script: str) -> Counter[tuple[str, ...]]:
    """``perf script`` output (with call chains) folded into stacks, root first and the command's name as
    the root frame, counted: what ``stackcollapse-perf`` computes, as tuples instead of ``a;b;c`` lines."""
    folded: Counter[tuple[str, ...]] = Counter()
    comm: Optional[str] = None
    frames: list[str] = []

    def flush() -> None:
        if comm is not None:
            stack = (comm, *reversed(frames))
            folded[stack] += 1

    for line in script.splitlines():
        if not line.strip():
            flush()
            comm, frames = None, []
            continue
        if line[0] not in " \t":
            flush()
            head = _SAMPLE_HEAD.match(line)
            comm, frames = (head.group("comm") if head else line.split()[0]), []
            continue
        frame = _FRAME.match(line)
        if frame is not None and comm is not None:
            frames.append(_frame_name(frame.group("sym"), frame.group("dso")))
    flush()
    return folded


@dataclass
class _Node:
    name: str
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(folded: Mapping[tuple[str, ...], int]) -> _Node:
    root = _Node("all")
    for stack, count in folded.items():
        node = root
        node.count += count
        for name in stack:
            node = node.children.setdefault(name, _Node(name))
            node.count += count
    return root


def _colour(name: str) -> str:
    # warm flame colours, stable per function name so two graphs of the same code look alike
    digest = hashlib.blake2s(name.encode(), digest_size=3).digest()
    return f"rgb({205 + digest[0] % 50},{digest[1] % 180},{digest[2] % 55})"


def flamegraph_svg(folded: Mapping[tuple[str, ...], int], *, title: str = "Flame graph", width: int = 1200) -> str:
    """A self-contained SVG flame graph (root at the bottom, width proportional to samples, a tooltip per
    frame with its sample count and share). Frames narrower than a pixel are left out, as flamegraph.pl does."""
    root = _tree(folded)
    frame_h, pad_top, pad_bottom = 16, 34, 10
    rows: list[tuple[int, float, float, _Node]] = []  # depth, x, width, node

    def depth_of(node: _Node) -> int:
        return 1 + max((depth_of(c) for c in node.children.values()), default=0)

    total = root.count or 1
    scale = (width - 20) / total

    def place(node: _Node, depth: int, x: float) -> None:
        w = node.count * scale
        if w < 1.0:
            return
        rows.append((depth, x, w, node))
        for child in sorted(node.children.values(), key=lambda c: c.name):
            place(child, depth + 1, x)
            x += child.count * scale

    place(root, 0, 10.0)
    depth = depth_of(root)
    height = pad_top + depth * frame_h + pad_bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Verdana, sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fdf6e9"/>',
        f'<text x="{width / 2:.0f}" y="22" text-anchor="middle" font-size="16">{html.escape(title)}</text>',
    ]
    for level, x, w, node in rows:
        y = height - pad_bottom - (level + 1) * frame_h
        share = 100.0 * node.count / total
        label = html.escape(node.name)
        tip = f"{label} ({node.count} sample{'s' if node.count != 1 else ''}, {share:.2f}%)"
        fill = "#e0e0e0" if level == 0 else _colour(node.name)
        out.append(
            f'<g class="frame"><title>{tip}</title><rect x="{x:.2f}" y="{y}" width="{w:.2f}" '
            f'height="{frame_h - 1}" rx="2" fill="{fill}"/>'
        )
        chars = int((w - 6) / 7)
        if chars >= 3:
            text = node.name if len(node.name) <= chars else node.name[: chars - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + frame_h - 4}">{html.escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def inclusive_counts(folded: Mapping[tuple[str, ...], int]) -> Counter[str]:
    """Samples in which each function appears anywhere on the stack (counted once per sample)."""
    counts: Counter[str] = Counter()
    for stack, count in folded.items():
        for name in set(stack[1:]):
            counts[name] += count
    return counts


def self_counts(folded: Mapping[tuple[str, ...], int]) -> Counter[str]:
    """Samples in which each function was the one running (the leaf)."""
    counts: Counter[str] = Counter()
    for stack, count in folded.items():
        if len(stack) > 1:
            counts[stack[-1]] += count
    return counts


# ------------------------------------------------------------------------------------------------ test API

UnsupportedPolicy = Literal["skip", "fail", "ignore"]


def _where(target: str) -> str:
    return f"on {target}" if target else ""


class PerfStat:
    """Counts of ``ktrace.perf_stat(...)``: summed over every command the block ran. ``stat["cycles"]`` is the
    count, ``stat.values`` the raw :class:`StatValue` per event, ``stat.unsupported`` what perf could not
    count on this target (event -> ``<not supported>``/``<not counted>``)."""

    def __init__(self, events: Sequence[str], *, system_wide: bool, target: str) -> None:
        self.events = tuple(events)
        self.system_wide = system_wide
        self.target = target
        self.runs = 0
        self.values: dict[str, StatValue] = {}

    def add(self, values: Mapping[str, StatValue]) -> None:
        self.runs += 1
        for event, value in values.items():
            seen = self.values.get(event)
            if seen is not None and seen.value is not None and value.value is not None:
                value = dataclasses.replace(value, value=seen.value + value.value)
            self.values[event] = value

    @property
    def unsupported(self) -> dict[str, str]:
        return {e: v.status for e, v in self.values.items() if v.value is None}

    def _value(self, event: str) -> StatValue:
        __tracebackhide__ = True
        if event not in self.values:
            known = ", ".join(self.values) or "none (no command ran inside the block)"
            raise KeyError(f"perf stat did not count {event!r}; counted: {known}")
        return self.values[event]

    def __getitem__(self, event: str) -> float:
        __tracebackhide__ = True
        value = self._value(event)
        if value.value is None:
            raise AssertionError(f"perf stat {_where(self.target)}: {event} is {value.status}, it has no count")
        return value.value

    def __contains__(self, event: object) -> bool:
        return event in self.values

    def assert_count(
        self,
        event: str,
        *,
        exactly: Optional[float] = None,
        at_least: Optional[float] = None,
        at_most: Optional[float] = None,
    ) -> None:
        """Fail unless the count of ``event`` is ``exactly`` / ``at_least`` / ``at_most`` the given numbers."""
        __tracebackhide__ = True
        if exactly is None and at_least is None and at_most is None:
            raise TypeError("assert_count() needs exactly=, at_least= or at_most=")
        count = self[event]
        unit = self.values[event].unit
        shown = f"{count:g}{' ' + unit if unit else ''}"
        if exactly is not None and count != exactly:
            raise AssertionError(f"perf stat: {event} counted {shown} (expected exactly {exactly:g})\n{self}")
        if at_least is not None and count < at_least:
            raise AssertionError(f"perf stat: {event} counted {shown} (expected at least {at_least:g})\n{self}")
        if at_most is not None and count > at_most:
            raise AssertionError(f"perf stat: {event} counted {shown} (expected at most {at_most:g})\n{self}")

    def __str__(self) -> str:
        scope = "system-wide" if self.system_wide else "per command"
        lines = [f"perf stat {_where(self.target)} ({scope}, {self.runs} command{'s' if self.runs != 1 else ''}):"]
        for event, value in self.values.items():
            shown = value.status if value.value is None else f"{value.value:g} {value.unit}".rstrip()
            scaled = (
                f"  (counted {value.running:.0f}% of the time)"
                if value.value is not None and value.running < 100
                else ""
            )
            lines.append(f"  {event:<32} {shown}{scaled}")
        return "\n".join(lines)


class Profile:
    """Call stacks sampled by ``ktrace.profile()`` (``perf record -g``), folded: ``folded`` maps a stack (root
    first, the command's name as its root frame) to its sample count."""

    def __init__(self, *, frequency: int, system_wide: bool, target: str, label: str = "") -> None:
        self.frequency = frequency
        self.system_wide = system_wide
        self.target = target
        self.label = label
        self.runs = 0
        self.folded: Counter[tuple[str, ...]] = Counter()
        self.svg_path: Optional[str] = None  # set when the plugin wrote the flame graph

    def add(self, script: str) -> None:
        self.runs += 1
        self.folded.update(collapse_stacks(script))

    @property
    def samples(self) -> int:
        return sum(self.folded.values())

    def share(self, function: str) -> float:
        """The fraction (0..1) of samples with ``function`` anywhere on the stack."""
        total = self.samples
        return inclusive_counts(self.folded)[function] / total if total else 0.0

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` functions that were running (leaf frames) in the most samples."""
        return self_counts(self.folded).most_common(n)

    def assert_in_profile(self, function: str, *, min_share: float = 0.0) -> None:
        """Fail unless ``function`` is on the stack of more than ``min_share`` (0..1) of the samples."""
        __tracebackhide__ = True
        if not 0.0 <= min_share < 1.0:
            raise ValueError(f"min_share must be in [0, 1), got {min_share!r}")
        share = self.share(function)
        if self.samples and share > min_share:
            return
        hot = ", ".join(f"{name} ({count})" for name, count in self.top(8)) or "no samples"
        near = sorted(inclusive_counts(self.folded), key=lambda name: _similarity(name, function))[:5]
        raise AssertionError(
            f"{function} is on the stack in {share:.1%} of {self.samples} samples "
            f"(expected more than {min_share:.1%}) {_where(self.target)}\n"
            f"  hottest functions: {hot}\n"
            f"  closest names seen: {', '.join(near) or 'none'}"
        )

    def svg(self, title: str = "") -> str:
        return flamegraph_svg(self.folded, title=title or self.label or "pytest-ktrace profile")

    def folded_text(self) -> str:
        """``a;b;c count`` lines, as stackcollapse-perf writes them (for flamegraph.pl and other tools)."""
        return "".join(f"{';'.join(stack)} {count}\n" for stack, count in sorted(self.folded.items()))


def _similarity(name: str, wanted: str) -> float:
    return -difflib.SequenceMatcher(None, name, wanted).ratio()
