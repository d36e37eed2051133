"""``@pytest.mark.ktrace_requires(...)``: what a test needs of its target, checked before it runs.

::

    @pytest.mark.ktrace_requires(kprobes=True, btf=True, arch="arm64", kernel=">=6.1,<6.13",
                                 symbols=["__setup_irq"], events=["irq:irq_handler_entry"])

A test whose target cannot meet every need is skipped, and the skip reason lists every unmet need (``-rs`` shows
it); a need that cannot be checked (a file the target does not let us read) counts as unmet and says why, so
nothing is skipped, or run, on a guess. The marker's arguments are checked at collection (a usage error names the
test).

When and where (one policy for every test): ``pytest_runtest_setup``, before any fixture runs, against the target
the test resolves to (its ``ktrace`` marker, the command line, the ini file), whether or not it uses the ``ktrace``
fixture; the backend comes from, and stays in, the run state (``RunState.backend_for``). The one exception is a test
of a board pool (``--ktrace-host=a,b``) that uses the fixture: it is checked in the fixture, against the board it
leased, before its session exists. A pool test without the fixture is checked against the pool's first board.

What is known of a target is gathered once per target per run (cached in ``config.stash``), lazily and in at most
one round trip per group:

* free, from ``backend.describe()``: kprobes/uprobes (their control files), kernel release, arch;
* one ``run(["sh", "-c", ...])`` whose ``after`` ops read ``available_events``: BTF (``/sys/kernel/btf/vmlinux``)
  and the few kernel config options that say *why* something is missing (``/proc/config.gz`` or
  ``/boot/config-$(uname -r)``); fetched when a test names ``btf``/``events`` or a probe kind is missing;
* the kernel's text symbols and the kprobe blacklist, added to that same script when a test names ``symbols``:
  ``/proc/kallsyms`` (what kprobes resolve names against: notrace functions are probeable too, but absent from
  ``available_filter_functions``, which is only the fallback when kallsyms is unreadable) and debugfs
  ``kprobes/blacklist`` when readable.

The fake backend runs nothing: its facts come from its :class:`~pytest_ktrace.snapshots._snapshot.KernelSnapshot`.
"""

from __future__ import annotations

import difflib
import operator
import re
import secrets
import shlex
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import pytest

from ._arch import normalize_arch
from ._errors import KtraceError, MissingTool, TargetError, TracefsUnavailable, hide_for_ktrace_errors
from ._fixtures import config_overridden, marker_settings
from ._markers import REQUIRES, REQUIRES_HELP
from ._targets import TargetSpec, resolve_target, state_key
from .backends._base import Backend, Imitating, Read, TargetInfo
from .backends._shell import marked_sections
from .recording._cassette import cassette_path
from .recording._kernels import replay_snapshot
from .report._provenance import record_target
from .snapshots._snapshot import KernelSnapshot, parse_blacklist

__all__ = [
    "KEYS",
    "MARKER",
    "MARKER_HELP",
    "Requirements",
    "TargetFacts",
    "VersionSpec",
    "check_before_setup",
    "check_item",
    "release_version",
    "unmet",
    "validate_marker",
]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

MARKER = REQUIRES
MARKER_HELP = REQUIRES_HELP
_BOOL_KEYS = ("kprobes", "uprobes", "btf")
KEYS = frozenset({*_BOOL_KEYS, "arch", "kernel", "symbols", "events"})
_USAGE = "kprobes=True, uprobes=True, btf=True, arch='arm64', kernel='>=6.1', symbols=[...], events=[...]"

_EVENT = re.compile(r"(?P<system>[A-Za-z0-9_.-]+)[:/](?P<event>[A-Za-z0-9_.-]+)")
_SYMBOL = re.compile(r"(?:[A-Za-z0-9_-]+:)?[A-Za-z_.$][A-Za-z0-9_.$]*")
_ARCH = re.compile(r"[A-Za-z0-9_-]+")

# --------------------------------------------------------------------------------------------- version specs

_OPS: Mapping[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CLAUSE = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)\s*")
_RELEASE = re.compile(r"\d+(?:\.\d+)*")


@dataclass(frozen=True)
class VersionSpec:
    """``">=6.1,<6.13"``: every clause must hold. Each compares the release's leading numbers at the clause's own
    precision: ``==6.1`` and ``<=6.1`` include 6.1.57, ``>6.1`` means 6.2 or later, ``<6.9`` excludes 6.9.1."""

    text: str
    clauses: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def parse(cls, text: str) -> VersionSpec:
        """Raises ``ValueError`` saying what a spec looks like."""
        clauses = []
        for part in text.split(","):
            match = _CLAUSE.fullmatch(part)
            if match is None:
                raise ValueError(
                    f"bad version spec {text!r}: each comma-separated clause is an operator (>=, >, <=, <, ==, !=) "
                    "and a version of dot-separated numbers, e.g. '>=6.1' or '>=6.1,<6.13'"
                )
            clauses.append((match.group(1), tuple(int(n) for n in match.group(2).split("."))))
        return cls(",".join(f"{op}{'.'.join(map(str, want))}" for op, want in clauses), tuple(clauses))

    def allows(self, version: Sequence[int]) -> bool:
        have = tuple(version)
        for op, want in self.clauses:
            padded = (have + (0,) * len(want))[: len(want)]
            if not _OPS[op](padded, want):
                return False
        return True

    def __str__(self) -> str:
        return self.text


def release_version(release: str) -> Optional[tuple[int, ...]]:
    """The leading numbers of a kernel release: ``"6.1.0-57-amd64"`` -> ``(6, 1, 0)``; None if it has none."""
    match = _RELEASE.match(release.strip())
    return tuple(int(n) for n in match.group(0).split(".")) if match else None


# ------------------------------------------------------------------------------------------------ the marker


@dataclass(frozen=True)
class Requirements:
    """The merged ``ktrace_requires`` markers of one test: for kprobes/uprobes/btf/arch/kernel the closest marker
    wins (a function's over its class's over its module's, so ``kprobes=False`` lifts a class-wide need);
    ``symbols`` and ``events`` add up."""

    kprobes: bool = False
    uprobes: bool = False
    btf: bool = False
    arch: tuple[str, ...] = ()  # any of these (kernel spelling: arm64, x86_64)
    kernel: Optional[VersionSpec] = None
    symbols: tuple[str, ...] = ()
    events: tuple[str, ...] = ()  # "system:event"

    @classmethod
    def of(cls, item: pytest.Item) -> Optional[Requirements]:
        """None when the test has no ``ktrace_requires`` marker."""
        markers = list(item.iter_markers(MARKER))
        if not markers:
            return None
        scalars: dict[str, Any] = {}
        symbols: list[str] = []
        events: list[str] = []
        for marker in reversed(markers):  # farthest first, so the closest one wins
            values = _parse(dict(marker.kwargs), tuple(marker.args), f"{item.nodeid}: @pytest.mark.{MARKER}")
            symbols += [s for s in values.pop("symbols", ()) if s not in symbols]
            events += [e for e in values.pop("events", ()) if e not in events]
            scalars.update(values)
        return cls(**scalars, symbols=tuple(symbols), events=tuple(events))


def validate_marker(nodeid: str, kwargs: dict[str, Any], args: tuple[Any, ...]) -> None:
    """Refuse, at collection, a ``ktrace_requires`` marker with unknown arguments, wrong types or a bad version
    spec (a usage error naming the test and the argument)."""
    _parse(kwargs, args, f"{nodeid}: @pytest.mark.{MARKER}")


def _names(key: str, value: Any, where: str, pattern: re.Pattern[str], what: str, example: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise pytest.UsageError(
            f"{where}({key}={value!r}): {key} must be a list of names, e.g. {key}=[{example!r}], "
            f"got {type(value).__name__}"
        )
    names = []
    for name in sorted(value) if isinstance(value, (set, frozenset)) else value:
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise pytest.UsageError(f"{where}({key}=...): {name!r} is not {what}, e.g. {example!r}")
        names.append(name)
    if not names:
        raise pytest.UsageError(f"{where}({key}=[]): name at least one, or leave {key} out")
    return tuple(names)


def _arches(arch: Any, where: str) -> tuple[str, ...]:
    arches = (arch,) if isinstance(arch, str) else arch
    if not isinstance(arches, (list, tuple)) or not arches:
        raise pytest.UsageError(
            f"{where}(arch={arch!r}): arch must be a name such as 'arm64' or 'x86_64', or a list of them"
        )
    for name in arches:
        if not isinstance(name, str) or not _ARCH.fullmatch(name):
            raise pytest.UsageError(f"{where}(arch={arch!r}): {name!r} is not an arch name such as 'arm64'")
    return tuple(dict.fromkeys(normalize_arch(name) for name in arches))


def _kernel_spec(spec: Any, where: str) -> VersionSpec:
    if not isinstance(spec, str):
        raise pytest.UsageError(
            f"{where}(kernel={spec!r}): kernel must be a version spec string such as '>=6.1' or '>=6.1,<6.13'"
        )
    try:
        return VersionSpec.parse(spec)
    except ValueError as exc:
        raise pytest.UsageError(f"{where}(kernel={spec!r}): {exc}") from None


def _parse(kwargs: dict[str, Any], args: tuple[Any, ...], where: str) -> dict[str, Any]:
    if args:
        raise pytest.UsageError(f"{where} takes keyword arguments only: {_USAGE}")
    if not kwargs:
        raise pytest.UsageError(f"{where}() names no requirement; use some of: {_USAGE}")
    unknown = sorted(set(kwargs) - KEYS)
    if unknown:
        raise pytest.UsageError(
            f"{where} got unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}"
        )
    values: dict[str, Any] = {}
    for key in _BOOL_KEYS:
        if key in kwargs:
            if not isinstance(kwargs[key], bool):
                raise pytest.UsageError(
                    f"{where}({key}={kwargs[key]!r}): {key} must be True or False, got {type(kwargs[key]).__name__}"
                )
            values[key] = kwargs[key]
    if "arch" in kwargs:
        values["arch"] = _arches(kwargs["arch"], where)
    if "kernel" in kwargs:
        values["kernel"] = _kernel_spec(kwargs["kernel"], where)
    if "symbols" in kwargs:
        values["symbols"] = _names(
            "symbols", kwargs["symbols"], where, _SYMBOL, "a kernel symbol ([module:]name)", "__setup_irq"
        )
    if "events" in kwargs:
        events = _names("events", kwargs["events"], where, _EVENT, "an event 'system:event'", "irq:irq_handler_entry")
        values["events"] = tuple(dict.fromkeys(e.replace("/", ":", 1) for e in events))
    return values


# -------------------------------------------------------------------------------------------- target facts

# Kernel config options that say why a capability is missing (grep'd on the target; `[= ]` ends the name).
_CONFIG_KEYS = ("KPROBES", "KPROBE_EVENTS", "UPROBES", "UPROBE_EVENTS", "DEBUG_INFO_BTF", "KALLSYMS", "TRACING")
_CONFIG_LINE = re.compile(r"^(?:# )?CONFIG_([A-Z0-9_]+)(?:=(\S+)| is not set)")
_BTF_PATH = "/sys/kernel/btf/vmlinux"
_BLACKLIST = "/sys/kernel/debug/kprobes/blacklist"
_DETECT_TIMEOUT_S = 300.0


@dataclass
class TargetFacts:
    """What one target offers, as far as it was asked (None: not known, and ``*_note`` says why)."""

    info: TargetInfo
    base_loaded: bool = False  # config, BTF, events
    config: Optional[dict[str, bool]] = None  # option (without CONFIG_) -> on (=y/=m)
    config_source: str = ""
    btf: Optional[bool] = None
    btf_note: str = ""
    events: Optional[frozenset[str]] = None  # "system:event"
    events_note: str = ""
    symbols_loaded: bool = False
    symbols: Optional[frozenset[str]] = None  # text symbols, also as "module:name"
    symbols_source: str = ""
    symbols_note: str = ""
    blacklist: Optional[frozenset[str]] = None  # None: unreadable
    round_trips: int = 0  # detection round trips spent on this target (tests check the "once" promise)
    _suggest: Optional[list[str]] = field(default=None, repr=False)

    def suggestions(self) -> list[str]:
        """Symbol names worth suggesting: no ``__pfx_`` padding, no ``.cold``/``.isra`` compiler parts."""
        if self._suggest is None:
            self._suggest = sorted(
                s for s in self.symbols or () if not s.startswith("__pfx_") and ":" not in s and "." not in s
            )
        return self._suggest


def _from_snapshot(facts: TargetFacts, snapshot: KernelSnapshot) -> None:
    """The fake backend: everything its snapshot recorded (it runs no commands)."""
    facts.base_loaded = facts.symbols_loaded = True
    facts.config, facts.config_source = None, f"the snapshot {snapshot.name} records no kernel config"
    if "btf" in snapshot.features:  # BTF fetch args in the README need the kernel's BTF
        facts.btf = True
    else:
        facts.btf_note = f"the snapshot {snapshot.name} does not record whether {_BTF_PATH} exists"
    facts.events = frozenset(event.replace("/", ":", 1) for event in snapshot.events)
    facts.symbols = frozenset(snapshot.symbols)
    facts.symbols_source = f"the kallsyms of snapshot {snapshot.name}"
    facts.blacklist = snapshot.blacklist


def _script(nonce: str, tracefs: str, *, base: bool, symbols: bool) -> str:
    """POSIX sh (busybox too): each section after a marker line; ``-ok`` markers say a section is complete."""
    mark = f"@@ktrace-{nonce}"
    lines = [f"m='{mark}'"]
    if base:
        pattern = "^(# )?CONFIG_(" + "|".join(_CONFIG_KEYS) + ")[= ]"
        lines += [
            'echo; echo "$m btf"',
            f"if [ -r {_BTF_PATH} ]; then echo present; elif [ -e {_BTF_PATH} ]; then echo unreadable; "
            "else echo missing; fi",
            'echo; echo "$m config"',
            'kt_boot="/boot/config-$(uname -r)"',
            "if [ -r /proc/config.gz ]; then echo /proc/config.gz; "
            f"gzip -dc /proc/config.gz 2>/dev/null | grep -E '{pattern}'; "
            f'elif [ -r "$kt_boot" ]; then echo "$kt_boot"; grep -E \'{pattern}\' "$kt_boot"; fi',
        ]
    if symbols:
        functions = shlex.quote(f"{tracefs.rstrip('/')}/available_filter_functions")
        lines += [
            'echo; echo "$m kallsyms"',
            "if [ -r /proc/kallsyms ] && sed -n 's/^[0-9a-fA-F]* [Tt] //p' /proc/kallsyms 2>/dev/null; then "
            'echo; echo "$m kallsyms-ok"; '
            f'else echo; echo "$m functions"; cat {functions} 2>/dev/null && {{ echo; echo "$m functions-ok"; }}; fi',
            'echo; echo "$m blacklist"',
            f'cat {_BLACKLIST} 2>/dev/null && {{ echo; echo "$m blacklist-ok"; }}',
        ]
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def _symbol_names(text: str) -> frozenset[str]:
    """``name`` / ``name\\t[module]`` lines (sed'd kallsyms, available_filter_functions) -> names and
    ``module:name``."""
    names: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) >= 3 and len(parts[1]) == 1:  # an unfiltered kallsyms line: ADDR TYPE NAME [module]
            if parts[1] not in "Tt":
                continue
            parts = parts[2:]
        names.add(parts[0])
        if len(parts) > 1 and parts[1].startswith("[") and parts[1].endswith("]"):
            names.add(f"{parts[1][1:-1]}:{parts[0]}")
    return frozenset(names)


def _parse_config(text: str) -> tuple[Optional[dict[str, bool]], str]:
    lines = text.splitlines()
    source = lines[0].strip() if lines else ""
    options: dict[str, bool] = {}
    for line in lines[1:]:
        match = _CONFIG_LINE.match(line.strip())
        if match:
            options[match.group(1)] = match.group(2) in ("y", "m")
    if not source or "TRACING" not in options:  # no config file, or it could not be read through
        return None, "the kernel config is not readable (no /proc/config.gz or /boot/config-RELEASE)"
    return {key: options.get(key, False) for key in _CONFIG_KEYS}, source


def _detect(facts: TargetFacts, backend: Backend, *, base: bool, symbols: bool) -> None:
    """Fill in the groups asked for (and every base fact with them), in one round trip."""
    base = base or not facts.base_loaded  # the small facts come along with any detection round trip
    nonce = secrets.token_hex(8)
    after = [Read("available_events", missing_ok=True)] if base else []
    script = _script(nonce, facts.info.tracefs, base=base, symbols=symbols)
    facts.round_trips += 1
    try:
        result = backend.run(["sh", "-c", script], timeout=_DETECT_TIMEOUT_S, after=after)
    except KtraceError as exc:
        why = f"the detection script could not run on {facts.info.name}: {exc}"
        facts.btf_note = facts.btf_note or why
        facts.config_source = facts.config_source or why
        facts.symbols_note = why
        if base and facts.events is None:
            try:  # a backend that runs nothing may still read tracefs
                facts.round_trips += 1
                [fallback] = backend.apply(after)
                if fallback.ok and fallback.data:
                    facts.events = _event_names(fallback.data)
            except KtraceError as read_exc:
                facts.events_note = f"available_events not readable: {read_exc}"
            if facts.events is None and not facts.events_note:
                facts.events_note = why
        if not isinstance(exc, TargetError):  # a refusal is final; a lost connection is asked again next test
            facts.base_loaded = facts.base_loaded or base
            facts.symbols_loaded = facts.symbols_loaded or symbols
        return
    sections = marked_sections(result.stdout, nonce)
    if base:
        state = sections.get("btf", "").strip()
        facts.btf = {"present": True, "missing": False}.get(state)
        facts.btf_note = (
            f"{_BTF_PATH} exists but is not readable" if state == "unreadable" else "its presence was not reported"
        )
        facts.config, facts.config_source = _parse_config(sections.get("config", ""))
        read = result.after[0] if result.after else None
        if read is not None and read.ok and read.data:
            facts.events = _event_names(read.data)
        else:
            facts.events_note = f"{facts.info.tracefs}/available_events is not readable" + (
                f" ({read.errno_name} {read.error})" if read is not None and read.error else ""
            )
        facts.base_loaded = result.returncode == 0 and "config" in sections
    if symbols:
        if "kallsyms-ok" in sections:
            facts.symbols, facts.symbols_source = _symbol_names(sections.get("kallsyms", "")), "/proc/kallsyms"
        elif "functions-ok" in sections:
            facts.symbols = _symbol_names(sections.get("functions", ""))
            facts.symbols_source = "available_filter_functions"
        if not facts.symbols:
            facts.symbols = None
            facts.symbols_note = (
                f"neither /proc/kallsyms nor {facts.info.tracefs}/available_filter_functions lists any function "
                f"(exit status {result.returncode}{', ' + result.stderr.strip()[-200:] if result.stderr else ''})"
            )
        facts.blacklist = parse_blacklist(sections.get("blacklist", "")) if "blacklist-ok" in sections else None
        facts.symbols_loaded = facts.symbols is not None


def _event_names(text: str) -> frozenset[str]:
    return frozenset(line.strip() for line in text.splitlines() if ":" in line)


_FACTS = pytest.StashKey[dict[TargetSpec, TargetFacts]]()


def facts_for(config: pytest.Config, target: TargetSpec, backend: Backend, requirements: Requirements) -> TargetFacts:
    """The facts ``requirements`` need about ``target``: cached for the run, each missing group fetched once."""
    cache = config.stash.setdefault(_FACTS, {})
    facts = cache.get(target)
    if facts is None:
        facts = cache[target] = TargetFacts(backend.describe())
        if isinstance(backend, Imitating):
            _from_snapshot(facts, backend.snapshot)
    info = facts.info
    base = bool(
        requirements.btf
        or requirements.events
        or (requirements.kprobes and not info.has("kprobes"))
        or (requirements.uprobes and not info.has("uprobes"))
    )
    symbols = bool(requirements.symbols)
    if (base and not facts.base_loaded) or (symbols and not facts.symbols_loaded):
        _detect(facts, backend, base=base and not facts.base_loaded, symbols=symbols and not facts.symbols_loaded)
    return facts


# ----------------------------------------------------------------------------------------------- judging


def _close(name: str, candidates: Iterable[str]) -> str:
    pool = [c for c in candidates if abs(len(c) - len(name)) <= max(3, len(name) // 3)]
    close = difflib.get_close_matches(name, pool, n=3)
    return f" (close matches: {', '.join(close)})" if close else ""


def _missing_probe_kind(facts: TargetFacts, kind: str) -> str:
    control = f"{kind}_events"
    why = f"{control} missing"
    if facts.config is not None:
        base, events = kind.upper() + "S", kind.upper() + "_EVENTS"
        off = [f"CONFIG_{option} off" for option in (base, events) if not facts.config.get(option)]
        why += f": {off[0]}" if off else f" although CONFIG_{base} and CONFIG_{events} are on"
    return f"no {kind}s ({why})"


def unmet(requirements: Requirements, facts: TargetFacts) -> list[str]:
    """Every need ``facts``' target does not meet (or that cannot be checked), each with why; empty: all met."""
    info = facts.info
    reasons: list[str] = []
    for kind in ("kprobe", "uprobe"):
        if getattr(requirements, f"{kind}s") and not info.has(f"{kind}s"):
            reasons.append(_missing_probe_kind(facts, kind))
    if requirements.btf and not facts.btf:
        if facts.btf is False:
            off = facts.config is not None and not facts.config.get("DEBUG_INFO_BTF")
            reasons.append(f"no BTF ({_BTF_PATH} missing{': CONFIG_DEBUG_INFO_BTF off' if off else ''})")
        else:
            reasons.append(f"BTF unknown ({facts.btf_note})")
    arch = normalize_arch(info.arch)
    if requirements.arch and arch not in requirements.arch:
        reasons.append(f"arch is {arch} (needs {' or '.join(requirements.arch)})")
    if requirements.kernel is not None:
        version = release_version(info.release)
        if version is None:
            reasons.append(f"kernel release {info.release!r} has no version number (needs {requirements.kernel})")
        elif not requirements.kernel.allows(version):
            reasons.append(f"kernel is {info.release} (needs {requirements.kernel})")
    return reasons + _unmet_events(requirements, facts) + _unmet_symbols(requirements, facts)


def _unmet_events(requirements: Requirements, facts: TargetFacts) -> list[str]:
    if not requirements.events:
        return []
    if facts.events is None:
        return [f"cannot list events ({facts.events_note})"]
    return [
        f"no event {event}{_close(event, facts.events)}" for event in requirements.events if event not in facts.events
    ]


def _unmet_symbols(requirements: Requirements, facts: TargetFacts) -> list[str]:
    if not requirements.symbols:
        return []
    if facts.symbols is None:
        return [f"cannot list kernel symbols ({facts.symbols_note})"]
    reasons: list[str] = []
    for symbol in requirements.symbols:
        if symbol not in facts.symbols:
            reasons.append(f"no symbol {symbol} in {facts.symbols_source}{_close(symbol, facts.suggestions())}")
        elif facts.blacklist is not None and symbol.rsplit(":", 1)[-1] in facts.blacklist:
            reasons.append(f"{symbol} is blacklisted for kprobes")
    return reasons


def skip_reason(info: TargetInfo, reasons: Sequence[str]) -> str:
    return (
        f"pytest-ktrace: {info.name} (Linux {info.release} {normalize_arch(info.arch)}) cannot run this test: "
        + ", ".join(reasons)
    )


# ------------------------------------------------------------------------------------------------ wiring

_CHECKED = pytest.StashKey[TargetSpec]()


UNMET_PROPERTY = "ktrace_unmet"  # user property of a test its target could not run: the target's name


def check_item(item: pytest.Item, target: TargetSpec, backend: Backend, *, strict: bool = False) -> None:
    """Skip ``item`` (reason: every unmet need) unless ``target`` meets its ``ktrace_requires``; ``strict`` fails
    it instead, so a target that lost a capability cannot turn a run green by skipping. Records the target in
    the test's JUnit properties. Once per test and target; a test without the marker passes untouched."""
    if item.stash.get(_CHECKED, None) == target:
        return
    requirements = Requirements.of(item)
    if requirements is None:
        return
    item.stash[_CHECKED] = target
    facts = facts_for(item.config, target, backend, requirements)
    record_target(item, target, facts.info)
    reasons = unmet(requirements, facts)
    if reasons:
        item.user_properties.append((UNMET_PROPERTY, facts.info.name))
        if strict:
            pytest.fail(f"{skip_reason(facts.info, reasons)} (--ktrace-strict: unmet needs fail)", pytrace=False)
        # reported at the test's line (as skipif does), not at this one
        raise pytest.skip.Exception(skip_reason(facts.info, reasons), _use_item_location=True)


def check_before_setup(item: pytest.Item) -> None:
    """``pytest_runtest_setup``: check a marked test before its fixtures run (see the module docstring). Problems
    reaching the target are left to the ``ktrace`` fixture when the test uses it (it reports them as it always
    does); a test without the fixture gets the same outcome here."""
    if item.get_closest_marker(MARKER) is None:
        return
    config = item.config
    uses_fixture = "ktrace" in getattr(item, "fixturenames", ())
    if uses_fixture and config_overridden(item):
        return  # the target comes from a ktrace_config fixture, known only at setup: the fixture checks it
    try:
        settings = resolve_target(config, marker_settings(item))
        target = settings.target
        if settings.boards:
            if uses_fixture:
                return  # checked by the fixture, against the board it leases
            target = replace(target, host=settings.boards[0])
        if target.backend == "fake" and not target.snapshot:
            cassette = cassette_path(item.path, item.name, config.getini("ktrace_cassette_dir") or "cassettes")
            if cassette.exists():
                target = replace(target, snapshot=replay_snapshot(cassette))
        backend = config.stash[state_key()].backend_for(config, target)
    except (pytest.UsageError, KtraceError) as exc:
        problem: Optional[BaseException] = exc
    else:
        problem = None
    if problem is None:
        check_item(item, target, backend, strict=settings.strict)
    elif not uses_fixture:  # as the fixture reports it
        if isinstance(problem, MissingTool):
            raise pytest.skip.Exception(f"pytest-ktrace: {problem}", _use_item_location=True)
        if isinstance(problem, pytest.UsageError):
            pytest.fail(f"{item.nodeid}: {problem}", pytrace=False)
        if isinstance(problem, TracefsUnavailable):
            pytest.fail(f"pytest-ktrace: {problem}", pytrace=False)
        pytest.fail(f"pytest-ktrace: cannot check the requirements of this test: {problem}", pytrace=False)
