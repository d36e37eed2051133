"""Hostile and malformed input at every public entry point.

Every public entry point fed arbitrary text, unicode, control characters, huge strings or wrong types answers
with a clear error of the plugin's own vocabulary, never an internal traceback. Everything runs on the fake
backend (an in-memory tracefs imitating a Debian 6.1 arm64 kernel) or, for LocalBackend.apply, on a stand-in
directory under tmp_path, so nothing touches a kernel. The whole file runs in ~20 s; ``KTRACE_HOSTILE_SCALE=20``
multiplies the hypothesis budgets for a deeper run.

The rule every check applies (:func:`check_error`):

* allowed: :class:`KtraceError` (and subclasses) and ``pytest.UsageError``, each with a non-empty message;
* allowed for the assertion helpers (``ProbeView.assert_*``, ``assert_order``, ``assert_latency``, ``wait_for``):
  ``AssertionError`` with a non-empty message;
* allowed only at the public call boundary: ``TypeError`` whose innermost traceback frame is in the API
  layer (a top-level module of ``pytest_ktrace``: session.py, assertions.py, parse.py, probes.py, ...; not
  the ``fake/`` or ``backends/`` internals, not the standard library) *and* whose message names the offending
  parameter (``symbol``, ``filter``, ``argv``, ...) or what was wrong with it. A TypeError such as ``expected
  string or bytes-like object, got 'NoneType'`` from ``re.match`` names nothing and fails, and so does
  ``field irq: float is not an int, str or sequence`` raised by the fake's tracefs;
* anything else (IndexError, KeyError, AttributeError, UnicodeError, ValueError, OSError, a TypeError from
  inside, a hang) is a bug. Exceptions raised by the user's own objects (an ``__eq__`` that raises) are the
  user's and are not tested here.

Bugs in ``src/`` are written as failing tests marked ``xfail(strict=True, reason="BUG: ...")``: when a fix lands,
the strict xfail turns into a failure so the marker is removed with the fix.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
import os
import re
import textwrap
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import pytest_ktrace
from pytest_ktrace import ANY, KtraceError, ProbeView
from pytest_ktrace._formats import FormatCatalog, parse_format
from pytest_ktrace._identity import RunIdentity
from pytest_ktrace._parse import ParsedTrace, TraceParser
from pytest_ktrace._session import TraceSession
from pytest_ktrace.backends._base import Mkdir, Op, OpResult, Read, Rmdir, Write
from pytest_ktrace.fake._backend import FakeBackend
from pytest_ktrace.snapshots._snapshot import load_snapshot

pytest_plugins = ["pytester"]

SNAPSHOT = "debian-6.1-arm64"
_PACKAGE = str(Path(pytest_ktrace.__file__).resolve().parent)
_SERIALS = itertools.count(1)
_IDENTITY = RunIdentity.current()
_INTERNAL_FRAME = re.compile(r"pytest_ktrace[/\\][\w/\\]+\.py:\d+")

# KTRACE_HOSTILE_SCALE=20 multiplies every example budget, for a deeper fuzzing run than the < 60 s default.
_SCALE = max(1, int(os.environ.get("KTRACE_HOSTILE_SCALE", "1")))


def budget(examples: int) -> settings:
    return settings(max_examples=examples * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


FAST = budget(60)
MEDIUM = budget(150)


# ------------------------------------------------------------------------------------------------------------
# the rule
# ------------------------------------------------------------------------------------------------------------


def _formatted(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _at_boundary(exc: BaseException, boundary: Sequence[str]) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    where = Path(frames[-1].filename).resolve()
    if where.parent == Path(_PACKAGE):
        return True  # the API layer: session.py, assertions.py, parse.py, probes.py, ...
    return any(str(where).endswith(str(Path(_PACKAGE, name))) for name in boundary)


def check_error(
    exc: BaseException, *, names: Sequence[str] = (), assertion: bool = False, boundary: Sequence[str] = ()
) -> None:
    """Accept ``exc`` under the module's rule, else fail showing its whole traceback. ``boundary``: more files
    (relative to the package) that count as the public call boundary, e.g. ``fake/backend.py`` for apply()."""
    if isinstance(exc, (KtraceError, pytest.UsageError)):
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return
    if assertion and isinstance(exc, AssertionError):
        assert str(exc).strip(), "AssertionError without a message"
        return
    named = any(name in str(exc) for name in names)
    if isinstance(exc, TypeError) and named and _at_boundary(exc, boundary):
        return
    pytest.fail(f"internal error instead of a clear one: {type(exc).__name__}: {exc}\n{_formatted(exc)}")


def clean(call: Callable[[], Any], *, names: Sequence[str] = (), assertion: bool = False) -> Any:
    """``call()``'s result, or None when it raised an error the rule allows."""
    try:
        return call()
    except Exception as exc:
        check_error(exc, names=names, assertion=assertion)
        return None


def test_the_rule_itself_rejects_internal_errors() -> None:
    """The checker must be able to fail: a KeyError, or a TypeError from inside re, is not accepted."""
    with pytest.raises(pytest.fail.Exception, match="KeyError"):
        clean(lambda: {}["x"])
    with pytest.raises(pytest.fail.Exception, match="TypeError"):
        clean(lambda: re.match("x", None), names=("symbol",))  # type: ignore[call-overload]
    fake = new_backend()
    with pytest.raises(pytest.fail.Exception, match="TypeError"):  # names the field, but from fake/tracefs.py
        clean(lambda: fake.tracefs.emit("sched/sched_switch", {"prev_pid": 1.5}, pid=1, comm="x"), names=("prev_pid",))
    clean(lambda: (_ for _ in ()).throw(KtraceError("clear")))
    clean(lambda: (_ for _ in ()).throw(AssertionError("clear")), assertion=True)
    with pytest.raises(pytest.fail.Exception):
        clean(lambda: (_ for _ in ()).throw(AssertionError("clear")))  # not an assertion helper


# ------------------------------------------------------------------------------------------------------------
# the fake target
# ------------------------------------------------------------------------------------------------------------

_SHIPPED = load_snapshot(SNAPSHOT)
_BACKEND: Optional[FakeBackend] = None


def new_backend() -> FakeBackend:
    return FakeBackend(_SHIPPED)


def shared_backend() -> FakeBackend:
    global _BACKEND
    if _BACKEND is None:
        _BACKEND = new_backend()
    return _BACKEND


class Recording:
    """A backend proxy that remembers every operation the session sends."""

    def __init__(self, backend: FakeBackend) -> None:
        self._backend = backend
        self.ops: list[Op] = []

    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        self.ops.extend(ops)
        return self._backend.apply(ops, stop_on_error=stop_on_error)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def _leftovers(backend: FakeBackend) -> list[str]:
    found = [f"instance {name}" for name in backend.tracefs.listdir("instances")]
    for control in ("kprobe_events", "uprobe_events"):
        found += [f"{control}: {line}" for line in backend.tracefs.read(control).splitlines() if line.strip()]
    return found


@contextlib.contextmanager
def fresh_session(backend: Optional[Any] = None) -> Iterator[TraceSession]:
    """A TraceSession on the shared fake; on exit it must tear down cleanly and leave nothing behind."""
    target = backend if backend is not None else shared_backend()
    session = TraceSession(target, _IDENTITY, next(_SERIALS))
    try:
        yield session
    finally:
        report = session.teardown()
        assert not report, f"teardown after hostile input failed: {report.failures}"
        real = target._backend if isinstance(target, Recording) else target
        assert not _leftovers(real), f"hostile input left state behind: {_leftovers(real)}"


def define_and_arm(session: TraceSession, factory: Callable[[], ProbeView], *, names: Sequence[str] = ()) -> None:
    """Factory call, then arm() and a look at the events: each step succeeds or raises an allowed error."""
    view = clean(factory, names=names)
    if view is None:
        return
    assert isinstance(view, ProbeView)
    armed = clean(lambda: (session.arm(), True)[1])
    if armed:
        assert isinstance(clean(lambda: view.call_count), (int, type(None)))


# ------------------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------------------

_SPECIAL = [
    "",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\x00",
    "\x7f",
    "\x85",
    "\xa0",
    "\u2028",
    "\ufeff",
    "\udcff",
    "..",
    "../..",
    "/",
    "-:x",
    "p:a/b vfs_read",
    "vfs_read\n",
    "vfs_read x=%x0",
    "$arg1",
    "$retval",
    "%",
    "(",
    ")",
    "\\",
    '"',
    "'",
    "+0(+0(",
    ":string",
    "0x",
    "-1",
    "99999999999999999999999",
    "*",
    "!",
    "&&",
    "==",
    "~",
    "\x1b[31m",
    "é",
    "\u2603",
    "\U0001f600",
]
# Lone surrogates only from U+DC80..U+DCFF: what surrogateescape makes of undecodable bytes (the plugin reads
# tracefs that way), so they stand for raw bytes. Other lone surrogates cannot be encoded at all: see
# test_unencodable_text_is_refused_before_it_is_written.
_WEIRD_CHARS = st.one_of(
    st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Co"]),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF, categories=["Cs"]),
)
_HUGE = st.builds(
    operator.mul, st.sampled_from(["a", "é", "\u2603", "%x0", "(", "\\", " ", "\n", "9"]), st.integers(500, 70_000)
)

hostile_text = st.one_of(
    st.text(max_size=30),
    st.text(_WEIRD_CHARS, max_size=12),
    st.text(st.characters(max_codepoint=0x7F), max_size=30),
    st.sampled_from(_SPECIAL),
    _HUGE,
)

_FETCH_TOKENS = [
    "%x0",
    "%x1",
    "%di",
    "%ax",
    "%pc",
    "$arg1",
    "$arg0",
    "$arg9",
    "$argx",
    "$retval",
    "$stack",
    "$stack0",
    "$stack99",
    "$comm",
    "$current",
    "@vfs_read",
    "@0x10",
    "+0(",
    "-8(",
    "+0x10(",
    ")",
    "(",
    ":u32",
    ":s64",
    ":x8",
    ":string",
    ":ustring",
    ":symbol",
    ":b4@0/32",
    ":b0@0/8",
    ":u8[4]",
    ":string[2]",
    "[",
    "]",
    "\\",
    '"',
    "=",
    "+",
    "-",
    ":",
    "$",
    "@",
    "%",
    "0",
    "0x",
    "99999999999999999999999",
    '"abc"',
    ":char",
    ":x64",
    "->",
]
fetcharg_text = st.one_of(st.lists(st.sampled_from(_FETCH_TOKENS), min_size=1, max_size=8).map("".join), hostile_text)

_FILTER_TOKENS = [
    "irq",
    "name",
    "prev_pid",
    "next_comm",
    "common_pid",
    "CPU",
    "COMM",
    "comm",
    "nope",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&",
    "~",
    "&&",
    "||",
    "!",
    "(",
    ")",
    "1",
    "-1",
    "0x10",
    "077",
    "9" * 30,
    '"a*"',
    '"*b"',
    '"[a-"',
    '"?"',
    "'x'",
    '"',
    "\\",
    '"\\""',
    '"\udcff"',
    '"\u2603"',
    "1.5",
]
filter_text = st.one_of(
    st.none(),
    st.lists(st.sampled_from(_FILTER_TOKENS), max_size=10).map(" ".join),
    st.lists(st.sampled_from(_FILTER_TOKENS), max_size=10).map("".join),
    hostile_text,
)

symbol_text = st.one_of(
    hostile_text,
    st.from_regex(r"[A-Za-z_.$][A-Za-z0-9_.$]{0,24}(\+(0x[0-9a-fA-F]{1,20}|[0-9]{1,25}))?", fullmatch=True),
    st.sampled_from(["vfs_read", "__setup_irq", "vfs_read+4", "vfs_read+0x10", "_text", "0x1234", "mod:sym"]),
)

_RESERVED_KWARGS = {"self", "symbol", "path", "location", "filter", "maxactive", "name", "args"}
fetchargs = st.dictionaries(
    st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), hostile_text).filter(
        lambda key: key not in _RESERVED_KWARGS
    ),
    fetcharg_text,
    max_size=4,
)
positional = st.lists(fetcharg_text, max_size=3)


class Opaque:
    """An object of no type the plugin knows."""

    def __repr__(self) -> str:
        return "<Opaque>"


def _raises(value: object) -> bool:
    raise RuntimeError("a predicate that blows up")


# ------------------------------------------------------------------------------------------------------------
# probe factories: hostile text
# ------------------------------------------------------------------------------------------------------------


@MEDIUM
@given(
    kind=st.sampled_from(["kprobe", "kretprobe"]),
    symbol=symbol_text,
    args=positional,
    named=fetchargs,
    filter=filter_text,
    maxactive=st.one_of(st.none(), st.integers(-(2**70), 2**70), st.integers(-2, 5000)),
)
def test_kernel_probe_factories_with_hostile_text(
    kind: str, symbol: str, args: list[str], named: dict[str, str], filter: Optional[str], maxactive: Optional[int]
) -> None:
    with fresh_session() as session:
        extra: dict[str, Any] = {"maxactive": maxactive} if kind == "kretprobe" else {}
        factory = getattr(session, kind)
        define_and_arm(session, lambda: factory(symbol, *args, filter=filter, **extra, **named))


_EXISTING = ["/bin/true", "/etc/passwd", "/", "/dev/null", "/etc", "/nonexistent/x", "/bin/true:0x10", "/tmp/a b"]


@FAST
@given(
    kind=st.sampled_from(["uprobe", "uretprobe"]),
    path=st.one_of(st.sampled_from(_EXISTING), hostile_text, hostile_text.map(lambda text: "/" + text)),
    location=st.one_of(st.integers(-(2**70), 2**70), hostile_text, st.sampled_from(["main", "_start", "_init"])),
    named=fetchargs,
    filter=filter_text,
)
def test_user_probe_factories_with_hostile_text(
    kind: str, path: str, location: Any, named: dict[str, str], filter: Optional[str]
) -> None:
    with fresh_session() as session:
        factory = getattr(session, kind)
        define_and_arm(session, lambda: factory(path, location, filter=filter, **named))


_TRACEPOINTS = ["sched:sched_switch", "sched:sched_process_exec", "irq:irq_handler_entry", "raw_syscalls:sys_enter"]


@MEDIUM
@given(
    name=st.one_of(
        st.sampled_from(_TRACEPOINTS),
        hostile_text,
        st.from_regex(r"[A-Za-z0-9_.-]{1,8}:[A-Za-z0-9_.-]{1,12}", fullmatch=True),
    ),
    filter=filter_text,
)
def test_tracepoint_with_hostile_name_and_filter(name: str, filter: Optional[str]) -> None:
    with fresh_session() as session:
        define_and_arm(session, lambda: session.tracepoint(name, filter=filter))


@FAST
@given(name=st.sampled_from(_TRACEPOINTS), filter=filter_text)
def test_tracepoint_filter_reaches_the_fake_kernel_and_is_judged_there(name: str, filter: Optional[str]) -> None:
    """A filter the factory lets through is written to the fake's filter file: the fake's filter grammar
    (fake/filters.py) must answer with ProbeRejected or accept it, and a filter that was accepted must not
    break injecting an event."""
    with fresh_session() as session:
        view = clean(lambda: session.tracepoint(name, filter=filter))
        if view is None:
            return
        if clean(lambda: (session.arm(), True)[1]):
            clean(lambda: session.inject(view))
            assert isinstance(view.call_count, int)


# ------------------------------------------------------------------------------------------------------------
# probe factories: wrong types
# ------------------------------------------------------------------------------------------------------------

_WRONG: dict[str, Any] = {
    "None": None,
    "bytes": b"vfs_read",
    "int": 7,
    "float": 2.5,
    "bool": True,
    "list": ["vfs_read"],
    "dict": {"a": 1},
    "object": Opaque(),
}


# entry -> (call taking (session, value), wrong kinds that are legal there, kinds that hit the (fixed) bool-as-int
#           bug, kinds that hit the (fixed) deep-TypeError bug ("*": all the others), parameter names an allowed
#           TypeError must name)
_ENTRIES: dict[str, tuple[Callable[[TraceSession, Any], Any], set[str], set[str], Any, tuple[str, ...]]] = {
    "kprobe.symbol": (lambda s, v: s.kprobe(v), set(), set(), "*", ("symbol",)),
    "kretprobe.symbol": (lambda s, v: s.kretprobe(v), set(), set(), "*", ("symbol",)),
    "kprobe.filter": (lambda s, v: s.kprobe("vfs_read", filter=v), {"None"}, set(), "*", ("filter",)),
    "kretprobe.filter": (lambda s, v: s.kretprobe("vfs_read", filter=v), {"None"}, set(), "*", ("filter",)),
    "kretprobe.maxactive": (lambda s, v: s.kretprobe("vfs_read", maxactive=v), {"None", "int"}, {"bool"}, set(), ()),
    "kprobe.fetcharg": (lambda s, v: s.kprobe("vfs_read", x=v), set(), set(), set(), ()),
    "kprobe.positional": (lambda s, v: s.kprobe("vfs_read", v), set(), set(), set(), ()),
    "uprobe.fetcharg": (lambda s, v: s.uprobe("/bin/true", 0, x=v), set(), set(), set(), ()),
    "uprobe.path": (lambda s, v: s.uprobe(v, 0), set(), set(), "*", ("path",)),
    "uretprobe.path": (lambda s, v: s.uretprobe(v, 0), set(), set(), "*", ("path",)),
    "uprobe.location": (
        lambda s, v: s.uprobe("/bin/true", v),
        {"int"},
        {"bool"},
        {"None", "float", "list", "dict", "object"},
        ("location",),
    ),
    "uretprobe.location": (
        lambda s, v: s.uretprobe("/bin/true", v),
        {"int"},
        {"bool"},
        {"None", "float", "list", "dict", "object"},
        ("location",),
    ),
    "uprobe.filter": (lambda s, v: s.uprobe("/bin/true", 0, filter=v), {"None"}, set(), "*", ("filter",)),
    "tracepoint.name": (lambda s, v: s.tracepoint(v), set(), set(), "*", ("name", "tracepoint")),
    "tracepoint.filter": (lambda s, v: s.tracepoint("sched:sched_switch", filter=v), {"None"}, set(), "*", ("filter",)),
    # argv: a list is the legal form; a dict iterates to its keys (a command the fake cannot run: KtraceError)
    "run.argv": (
        lambda s, v: s.run(v),
        {"list"},
        set(),
        {"None", "bytes", "int", "float", "bool", "object"},
        ("argv",),
    ),
    # an argv element: bytes are a legal os.fspath() value
    "run.argv[0]": (lambda s, v: s.run([v]), {"bytes"}, set(), "*", ("argv",)),
}


def _wrong_type_params() -> Iterator[Any]:
    for entry, (_, legal, *_unused) in _ENTRIES.items():
        for kind in _WRONG:
            if kind in legal:
                continue
            yield pytest.param(entry, kind, id=f"{entry}-{kind}")


@pytest.mark.parametrize(("entry", "kind"), list(_wrong_type_params()))
def test_wrong_types_at_every_factory(entry: str, kind: str) -> None:
    """A wrong type is refused by the factory (or run()) itself: KtraceError, or a TypeError at the boundary
    naming the parameter. Legal-looking results count as failures for values that cannot be right."""
    call, _, _, _, names = _ENTRIES[entry]
    value = _WRONG[kind]
    with fresh_session() as session:
        try:
            view = call(session, value)
            if isinstance(view, ProbeView):
                session.arm()
        except Exception as exc:
            check_error(exc, names=names)
        else:
            pytest.fail(f"{entry}={value!r} was accepted (and armed) instead of being refused")


# ------------------------------------------------------------------------------------------------------------
# what reaches the kernel stays one command, inside our own directories
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.kprobe("vfs_read\n"), id="kprobe"),
        pytest.param(lambda s: s.kretprobe("vfs_read\n"), id="kretprobe"),
        pytest.param(lambda s: s.kprobe("vfs_read+0x4\n", x="%x0"), id="kprobe-offset-fetcharg"),
        pytest.param(lambda s: s.tracepoint("sched:sched_switch\n"), id="tracepoint"),
    ],
)
def test_trailing_newline_is_refused_by_the_factory(call: Callable[[TraceSession], Any]) -> None:
    with fresh_session() as session, pytest.raises(KtraceError, match=r"(?i)newline|single line|must be"):
        call(session)


@MEDIUM
@example(kind="kprobe", symbol="vfs_read\n", named={"x": "%x0"}, filter=None)
@example(kind="kretprobe", symbol="vfs_read\n", named={}, filter=None)
@given(kind=st.sampled_from(["kprobe", "kretprobe"]), symbol=symbol_text, named=fetchargs, filter=filter_text)
def test_every_write_is_a_single_line(kind: str, symbol: str, named: dict[str, str], filter: Optional[str]) -> None:
    """Whatever the factories were given, each write the session sends is one line (a newline would make the
    kernel run a second command built from the user's text)."""
    recording = Recording(shared_backend())
    with fresh_session(recording) as session:
        define_and_arm(session, lambda: getattr(session, kind)(symbol, filter=filter, **named))
    for op in recording.ops:
        if isinstance(op, Write):
            assert not any(ch in op.data for ch in "\n\r\0"), f"multi-line write to {op.path}: {op.data!r}"


@FAST
@example(name="sched:..")
@example(name="..:sched_switch")
@given(name=st.from_regex(r"[A-Za-z0-9_.-]{1,8}:[A-Za-z0-9_.-]{1,12}", fullmatch=True))
def test_tracepoint_paths_stay_inside_the_event_directory(name: str) -> None:
    recording = Recording(shared_backend())
    with fresh_session(recording) as session:
        define_and_arm(session, lambda: session.tracepoint(name, filter="common_pid == 1"))
    for op in recording.ops:
        parts = op.path.split("/")
        assert "." not in parts and ".." not in parts, f"{type(op).__name__} {op.path!r} for tracepoint {name!r}"


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.kprobe("vfs_read", filter="\ud800"), id="kprobe-filter"),
        pytest.param(lambda s: s.kprobe("vfs_read", x="\ud800"), id="kprobe-fetcharg"),
        pytest.param(lambda s: s.kretprobe("vfs_read", r="$retval\udbff"), id="kretprobe-fetcharg"),
        pytest.param(lambda s: s.tracepoint("sched:sched_switch", filter='prev_comm == "\ud800"'), id="tp-filter"),
        pytest.param(lambda s: s.uprobe("/tmp/\ud800", 0), id="uprobe-path"),
        pytest.param(lambda s: s.uprobe("/bin/true", 0, filter="\udfff"), id="uprobe-filter"),
    ],
)
def test_unencodable_text_is_refused_before_it_is_written(call: Callable[[TraceSession], Any]) -> None:
    recording = Recording(shared_backend())
    with fresh_session(recording) as session:
        with pytest.raises(KtraceError, match="lone surrogate") as refused:
            call(session)
            session.arm()
        check_error(refused.value)
    # refused on this side: nothing of the text reached tracefs (not written and then rejected by the kernel)
    assert not [
        op for op in recording.ops if _unencodable(op.path) or (isinstance(op, Write) and _unencodable(op.data))
    ]


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return True
    return False


# ------------------------------------------------------------------------------------------------------------
# the fake's tracefs: FakeBackend.apply
# ------------------------------------------------------------------------------------------------------------

_FILES = [
    "kprobe_events",
    "uprobe_events",
    "dynamic_events",
    "trace",
    "trace_marker",
    "set_event",
    "set_event_pid",
    "tracing_on",
    "buffer_size_kb",
    "events/sched/sched_switch/filter",
    "events/sched/sched_switch/enable",
    "events/sched/filter",
    "events/enable",
    "options/fields",
    "current_tracer",
    "trace_options",
    "instances/x/trace",
    "instances",
    "error_log",
    "events/sched/sched_switch/trigger",
    "available_filter_functions",
    "per_cpu/cpu0/stats",
    "events/sched/sched_switch/format",
    "instances/x/events/sched/sched_switch/filter",
    "instances/x/set_event_pid",
    "instances/x/buffer_size_kb",
    "README",
    "events",
    "instances/x",
]
_COMMANDS = [
    "1",
    "0",
    "-1",
    "",
    "\n",
    "p:a/b vfs_read",
    "r999999:a/b vfs_read",
    "p:a/b vfs_read x=+0(%x0):string",
    "-:a/b",
    "u:a/b /bin/true:0x0",
    "e:a/b sched.sched_switch",
    "f:a/b vfs_read",
    "t:a/b sched_switch",
    "prev_pid == 1",
    'prev_comm ~ "*"',
    "hist:keys=pid",
    "s:a/b u64 x",
    "!sched:sched_switch",
    "sched:*",
    "0x10",
    "99999999999999999999",
    "p:a/b vfs_read\x00x",
    "\udcff",
    "-:*",
    "p:" + "g" * 70 + "/e vfs_read",
]
tracefs_path = st.one_of(
    st.sampled_from(_FILES),
    hostile_text,
    st.sampled_from(_FILES).map(lambda name: "/" + name + "/"),
    st.sampled_from(_FILES).map(lambda name: "../" + name),
    st.sampled_from(_FILES).map(lambda name: name + "\x00"),
    st.sampled_from(_FILES).map(lambda name: name.replace("/", "//")),
)
tracefs_data = st.one_of(
    hostile_text, st.sampled_from(_COMMANDS), st.binary(max_size=40).map(lambda raw: raw.decode("latin-1"))
)
tracefs_op = st.one_of(
    st.builds(Write, tracefs_path, tracefs_data, st.booleans()),
    st.builds(Read, tracefs_path, st.booleans()),
    st.builds(Mkdir, tracefs_path),
    st.builds(Rmdir, tracefs_path),
)


@budget(300)
@given(ops=st.lists(tracefs_op, max_size=6), stop_on_error=st.booleans())
def test_fake_apply_answers_hostile_ops_with_errno(ops: list[Op], stop_on_error: bool) -> None:
    backend = new_backend()
    try:
        results = backend.apply(ops, stop_on_error=stop_on_error)
    except Exception as exc:
        pytest.fail(f"FakeBackend.apply raised instead of answering with an errno: {exc!r}\n{_formatted(exc)}")
    assert len(results) <= len(ops)
    if not stop_on_error:
        assert len(results) == len(ops)
    for op, result in zip(ops, results):
        assert isinstance(result, OpResult) and result.op == op
        if not result.ok:
            assert re.fullmatch(r"E[A-Z0-9]+", result.errno_name), result
            assert result.error
    if stop_on_error and results and len(results) < len(ops):
        assert not results[-1].ok  # a batch stops only at a failure


@pytest.mark.parametrize(
    "op",
    [
        Write(None, "1"),
        Write("tracing_on", None),
        Write("tracing_on", b"1"),
        Write("tracing_on", 1),  # type: ignore
        Read(None),
        Read(b"trace"),
        Mkdir(None),
        Rmdir(None),
    ],  # type: ignore[arg-type]
    ids=[
        "write-path-None",
        "write-data-None",
        "write-data-bytes",
        "write-data-int",
        "read-None",
        "read-bytes",
        "mkdir-None",
        "rmdir-None",
    ],
)
def test_fake_apply_with_wrong_typed_ops(op: Op) -> None:
    backend = new_backend()
    try:
        results = backend.apply([op])
    except Exception as exc:
        check_error(exc, names=("path", "data", "op"), boundary=("fake/backend.py",))
    else:
        assert not results[0].ok and results[0].errno_name.startswith("E")


def test_fake_refuses_instance_names_longer_than_name_max() -> None:
    backend = new_backend()
    result = backend.apply([Mkdir("instances/" + "x" * 300)])[0]
    assert not result.ok and result.errno_name == "ENAMETOOLONG"


@pytest.mark.parametrize(
    "op",
    [Write("trace_marker", "\udcff"), Write("trace_marker", "caf\udce9"), Read("a\x00b"), Write("a\x00b", "1")],
    ids=["surrogateescape-data", "latin1-byte-data", "nul-read", "nul-write"],
)
def test_local_backend_apply_with_hostile_text(tmp_path: Path, op: Op) -> None:
    """On a stand-in tracefs directory (no kernel involved): same contract as the fake, an OpResult per op."""
    from pytest_ktrace.backends._local import LocalBackend

    (tmp_path / "available_events").write_text("")
    (tmp_path / "trace_marker").write_text("")
    try:
        results = LocalBackend(str(tmp_path)).apply([op])
    except Exception as exc:
        check_error(exc, names=("path", "data"), boundary=("backends/local.py",))
    else:
        assert len(results) == 1 and (results[0].ok or results[0].errno_name.startswith("E"))


# ------------------------------------------------------------------------------------------------------------
# run() on the fake
# ------------------------------------------------------------------------------------------------------------


@FAST
@given(argv=st.one_of(hostile_text, st.lists(hostile_text, max_size=4)), stdin=st.one_of(st.none(), hostile_text))
def test_run_with_odd_argv_on_the_fake_is_a_ktrace_error(argv: Any, stdin: Optional[str]) -> None:
    words = [argv] if isinstance(argv, str) else argv
    assume(words[:2] != ["ls", "-1"])  # the one command the fake answers itself (below)
    with fresh_session() as session, pytest.raises(KtraceError, match="fake backend cannot run"):
        session.run(argv, stdin=stdin, timeout=1)


@pytest.mark.parametrize("where", ["/sys/kernel/tracing/nope", "/sys/kernel/tracing/trace"])
def test_run_ls_of_a_missing_tracefs_path_on_the_fake(where: str) -> None:
    with fresh_session() as session:
        try:
            result = session.run(["ls", "-1", where])
        except Exception as exc:
            check_error(exc)
        else:
            assert result.returncode != 0


@pytest.mark.parametrize("where", ["x", "/", "/etc"])
def test_run_ls_outside_tracefs_on_the_fake(where: str) -> None:
    with fresh_session() as session, pytest.raises(KtraceError):
        session.run(["ls", "-1", where])


# ------------------------------------------------------------------------------------------------------------
# parsers
# ------------------------------------------------------------------------------------------------------------

_SAMPLE_KEYS = sorted(_SHIPPED.events)[:40]
_CATALOG = FormatCatalog([parse_format(_SHIPPED.events[key], key.split("/", 1)[0]) for key in _SAMPLE_KEYS])
_SAMPLE_LINES = _SHIPPED.events[_SAMPLE_KEYS[0]].split("\n")

_field_line = st.builds(
    "\tfield:{};\toffset:{};\tsize:{};\tsigned:{};".format,
    hostile_text,
    st.text("0123456789-x ", max_size=25),
    st.text("0123456789- ", max_size=25),
    st.text("01-2", max_size=3),
)
format_text = st.one_of(
    hostile_text,
    st.lists(
        st.one_of(
            st.sampled_from(_SAMPLE_LINES),
            hostile_text,
            _field_line,
            st.sampled_from(
                [
                    "name: x",
                    "ID: 1",
                    "ID: 99999999999999999999999",
                    "format:",
                    'print fmt: ""',
                    "name:",
                    "ID:",
                    "ID: -1",
                    "ID: \u0661\u0662",
                    "name: a b",
                    "field:;",
                    "print fmt:",
                ]
            ),
        ),
        max_size=16,
    ).map("\n".join),
)


@budget(400)
@given(text=format_text, system=st.one_of(st.sampled_from(["sched", "ktrace_x"]), hostile_text))
def test_parse_format_with_garbage(text: str, system: str) -> None:
    fmt = clean(lambda: parse_format(text, system))
    if fmt is None:
        return
    # a format that parsed must also be usable by the trace parser
    parsed = clean(lambda: TraceParser(FormatCatalog([fmt])).parse(f"  x-1 [000] ..... 1.0: {fmt.name}: a=1\n"))
    assert isinstance(parsed, ParsedTrace)


@pytest.mark.parametrize("value", [None, b"name: x\n", 7, ["name: x"], Opaque()], ids=repr)
def test_parse_format_with_wrong_types(value: Any) -> None:
    with pytest.raises(KtraceError, match="expected text"):
        parse_format(value, "sched")


# Kernel trace lines are at most a page or two (trace_seq); huge whitespace lines are a separate test below.
line_text = st.one_of(
    st.text(max_size=60),
    st.text(_WEIRD_CHARS, max_size=12),
    st.sampled_from(_SPECIAL),
    st.builds(operator.mul, st.sampled_from(["a", "é", "-", "(", "\\", "=", " a", "x-1 "]), st.integers(100, 3000)),
)

_header = st.builds(
    "{}-{} [{}] d.... {}: {}:{}".format,
    st.one_of(st.text(max_size=10), st.sampled_from(["", " ", "a-b", "x" * 300])),
    st.integers(-5, 2**70),
    st.integers(0, 2**70),
    st.sampled_from(["1.5", "0", "99999999999999999999.9", "1e5", "1.0", "nan", "-1.0"]),
    st.sampled_from([key.split("/", 1)[1] for key in _SAMPLE_KEYS] + ["tracing_mark_write", "x", ""]),
    st.one_of(
        line_text,
        st.lists(
            st.sampled_from(
                ["a=1", "b=0x10 (16)", 'c="x"', "(fault)", "=", "<OVERFLOW>", "(0x1:abc)", "'c'(99)", "ff,00"]
            ),
            max_size=6,
        ).map(" ".join),
    ),
)
trace_text = st.lists(
    st.one_of(
        _header,
        line_text,
        st.sampled_from(
            [
                "CPU:0 [LOST 5 EVENTS]",
                "CPU:9999999999999999999 [LOST 99999999999999999 EVENTS]",
                "CPU:1 [LOST EVENTS]",
                "# tracer: nop",
                "##### CPU 2 buffer started ####",
                "CPU:",
                "# entries-in-buffer/entries-written: 5/9   #P:2",
            ]
        ),
    ),
    max_size=25,
).map("\n".join)


@budget(400)
@given(text=st.one_of(trace_text, line_text))
def test_trace_parser_with_garbage(text: str) -> None:
    parsed = clean(lambda: TraceParser(_CATALOG).parse(text))
    assert isinstance(parsed, ParsedTrace), "TraceParser.parse promises never to raise on odd text"
    # the lazily decoded result is the line-by-line reference's, counts and per-event selections included
    reference = TraceParser(_CATALOG)._parse_slow(text)
    assert parsed.unparsed == reference.unparsed and parsed.lost == reference.lost
    assert parsed.event_counts() == reference.event_counts()
    for system, name in reference.event_counts():
        assert parsed.of(system, name) == reference.of(system, name)
    assert parsed == reference
    for event in parsed.events:
        assert isinstance(event.pid, int) and isinstance(event.cpu, int) and isinstance(event.timestamp, float)
        assert all(isinstance(value, (int, str)) for value in event.fields.values())
    assert all(isinstance(count, int) and count >= 0 for count in parsed.lost.values())


# How the parse time of such lines grows with their length: benchmarks/bench_hostile.py (linear, 4x the line 4x
# the time; a quadratic parse of 60 000 characters took seconds).
@pytest.mark.parametrize("line", ["a" * 60_000, "-" * 60_000, "x-1 " * 15_000, "(" * 60_000], ids=lambda t: t[:4])
def test_trace_parser_keeps_a_huge_line_whole(line: str) -> None:
    parsed = TraceParser(_CATALOG).parse(line)
    assert parsed.unparsed == [line] and not parsed.events


@pytest.mark.parametrize("blank", [" ", "\u3000"], ids=repr)
def test_trace_parser_finds_no_event_in_huge_blank_lines(blank: str) -> None:
    parsed = TraceParser(_CATALOG).parse(blank * 16_000)
    assert not parsed.events and not parsed.lost


@pytest.mark.parametrize("value", [None, b"x-1 [000] 1.0: a: b", 7, ["line"]], ids=repr)
def test_trace_parser_parse_with_wrong_types(value: Any) -> None:
    with pytest.raises(KtraceError, match="must be str"):
        TraceParser(_CATALOG).parse(value)


@pytest.mark.parametrize("value", [None, b"x-1 [000] 1.0: a: b", 7], ids=repr)
def test_trace_parser_parse_line_with_wrong_types(value: Any) -> None:
    try:
        TraceParser(_CATALOG).parse_line(value)
    except Exception as exc:
        check_error(exc, names=("line",))
    else:
        pytest.fail(f"parse_line({value!r}) returned instead of refusing the type")


# ------------------------------------------------------------------------------------------------------------
# ProbeView assertion helpers
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def observed() -> Iterator[tuple[TraceSession, ProbeView, ProbeView, ProbeView]]:
    """One armed session: __setup_irq entry (irq=16, name='rtc-pl031') and return (ret=0), on one task, and a
    tracepoint that saw nothing."""
    backend = new_backend()
    session = TraceSession(backend, _IDENTITY, next(_SERIALS))
    entry = session.kprobe("__setup_irq", irq="%x0:u32", name="+0(+80(%x2)):string")
    done = session.kretprobe("__setup_irq")
    quiet = session.tracepoint("sched:sched_switch")
    session.inject(entry, pid=4242, irq=16, name="rtc-pl031")
    session.inject(done, pid=4242, ret=0)
    yield session, entry, done, quiet
    assert not session.teardown()


matcher = st.one_of(
    st.integers(-(2**70), 2**70),
    hostile_text.filter(lambda text: len(text) < 200),
    st.none(),
    st.just(ANY),
    st.sampled_from([_raises, lambda value: True, lambda value: False, int, str, len, bool]),
    st.binary(max_size=8),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=3),
    st.builds(Opaque),
)
expectations = st.dictionaries(
    st.one_of(
        st.sampled_from(["irq", "name", "ret", "__probe_ip", "nope", "pid", "comm", "cpu"]),
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
    ).filter(lambda key: key != "self"),
    matcher,
    max_size=4,
)
_WITH_HELPERS = ["assert_called_with", "assert_called_once_with", "assert_any_call", "assert_all_calls"]


@MEDIUM
@given(helper=st.sampled_from(_WITH_HELPERS), which=st.sampled_from([0, 1, 2]), expected=expectations)
def test_field_assertions_with_odd_expectations(
    observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView], helper: str, which: int, expected: dict[str, Any]
) -> None:
    view = observed[1 + which]
    try:
        getattr(view, helper)(**expected)
    except Exception as exc:
        check_error(exc, assertion=True)
        if isinstance(exc, AssertionError):
            assert view.name in str(exc)
        return
    # it passed: then every expectation really holds for the events it looked at
    assert view.events, f"{helper} passed on {view.name}, which has no events"
    for key, want in expected.items():
        assert want is not _raises, f"{helper} passed with a predicate that raises for {key}"
        assert key in view.events[-1].named(), f"{helper} passed though the event has no {key!r}"


@MEDIUM
@given(which=st.sampled_from([0, 1, 2]), criteria=expectations, count=st.integers(-3, 3))
def test_where_and_counts_with_odd_criteria(
    observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView], which: int, criteria: dict[str, Any], count: int
) -> None:
    view = observed[1 + which].where(**criteria)
    seen = clean(lambda: view.call_count, assertion=True)
    assert isinstance(seen, int)
    for check in (
        view.assert_called,
        view.assert_not_called,
        view.assert_called_once,
        lambda: view.assert_call_count(count),
    ):
        clean(check, assertion=True)


@MEDIUM
@given(value=matcher, helper=st.sampled_from(["assert_returned", "assert_any_return"]))
def test_return_assertions_with_odd_values(
    observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView], value: Any, helper: str
) -> None:
    _, entry, done, quiet = observed
    clean(lambda: getattr(done, helper)(value), assertion=True)
    # on probes that record no return value: a TypeError raised by ProbeView itself that says why
    for view in (entry, quiet):
        with pytest.raises(TypeError, match="return assertions need a kretprobe/uretprobe") as info:
            getattr(view, helper)(value)
        check_error(info.value, names=("return assertions",))


def test_matcher_semantics(observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView]) -> None:
    """ANY matches, a raising predicate does not (and is no crash), a missing field is named."""
    _, entry, done, _ = observed
    entry.assert_called_once_with(irq=ANY, name=ANY)
    done.assert_returned(ANY)
    with pytest.raises(AssertionError, match="expected call not found"):
        entry.assert_called_with(irq=_raises)
    with pytest.raises(AssertionError, match="nope: no such field"):
        entry.assert_called_with(nope=1)
    with pytest.raises(AssertionError, match="nope: no such field"):
        entry.assert_any_call(nope=ANY)
    with pytest.raises(AssertionError, match="never returned"):
        done.assert_any_return(_raises)
    assert entry.where(irq=_raises).call_count == 0
    assert entry.where(nope=ANY).call_count == 0  # a missing field matches nothing, as in assert_any_call


def test_assert_call_count_with_a_string_says_what_is_wrong(
    observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView],
) -> None:
    _, entry, _, _ = observed
    with pytest.raises((TypeError, KtraceError, AssertionError)) as info:
        entry.assert_call_count("1")  # type: ignore[arg-type]
    assert "count" in str(info.value) or "'1'" in str(info.value), str(info.value)


# ------------------------------------------------------------------------------------------------------------
# assert_order / assert_latency / wait_for
# ------------------------------------------------------------------------------------------------------------


def test_assert_order_and_latency_with_empty_views(
    observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView],
) -> None:
    session, entry, done, quiet = observed
    session.assert_order()  # nothing to order: vacuously true
    session.assert_order(entry)
    with pytest.raises(AssertionError, match="sched:sched_switch has no events"):
        session.assert_order(entry, quiet)
    with pytest.raises(AssertionError, match="no __setup_irq -> sched:sched_switch pair"):
        session.assert_latency(entry, quiet)
    with pytest.raises(AssertionError, match="pair"):
        session.assert_latency(quiet, quiet)
    with pytest.raises(AssertionError, match="out of bounds"):
        session.assert_latency(entry, done, max_us=-1)
    (duration,) = session.assert_latency(entry, done, min_us=0, max_us=math.inf)
    assert duration >= 0


@FAST
@given(
    max_us=st.one_of(st.none(), st.floats(allow_nan=False), st.integers()),
    min_us=st.one_of(st.none(), st.floats(allow_nan=False), st.integers()),
)
def test_assert_latency_with_odd_numeric_bounds(
    observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView], max_us: Any, min_us: Any
) -> None:
    session, entry, done, _ = observed
    (duration,) = session.assert_latency(entry, done)
    violated = (max_us is not None and duration > max_us) or (min_us is not None and duration < min_us)
    try:
        assert session.assert_latency(entry, done, max_us=max_us, min_us=min_us) == [duration]
    except AssertionError as exc:
        assert violated, f"latency {duration} us within max_us={max_us} min_us={min_us}, yet: {exc}"
        assert "out of bounds" in str(exc)
    else:
        assert not violated, f"latency {duration} us passed max_us={max_us} min_us={min_us}"


@pytest.fixture
def endless_wait_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """wait_for's polling sleep, failing the test once it has slept more than a second in all (instead of hanging
    the suite when a timeout never expires); sleeps for real otherwise, so its own errors stay as they are. The
    sleeps asked for are added up, not the clock read: a slow machine polls as many times."""
    import pytest_ktrace._session as session_module

    real_sleep = time.sleep
    slept = 0.0

    def sleep(seconds: float) -> None:
        nonlocal slept
        slept += seconds
        if slept > 1.0:
            pytest.fail("wait_for still polling after 1 s of sleeps with a timeout far shorter: it never times out")
        real_sleep(seconds)

    monkeypatch.setattr(session_module.time, "sleep", sleep)


@pytest.mark.parametrize("value", [None, "__setup_irq", 7, Opaque()], ids=repr)
@pytest.mark.parametrize("call", ["assert_order", "assert_latency", "wait_for", "inject"])
def test_view_arguments_that_are_not_views(
    observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView], call: str, value: Any
) -> None:
    session, entry, _, _ = observed
    calls: dict[str, Callable[[], Any]] = {
        "assert_order": lambda: session.assert_order(entry, value),
        "assert_latency": lambda: session.assert_latency(entry, value),
        "wait_for": lambda: session.wait_for(value, timeout=0),
        "inject": lambda: session.inject(value),
    }
    with pytest.raises(Exception) as info:
        calls[call]()
    check_error(info.value, names=("ProbeView", "probe", "view"))


@pytest.mark.parametrize(
    "bounds",
    [{"max_us": "abc"}, {"min_us": "abc"}, {"max_us": Opaque()}, {"max_us": math.nan}, {"min_us": math.nan}],
    ids=repr,
)
def test_assert_latency_with_bounds_that_are_not_numbers(
    observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView], bounds: dict[str, Any]
) -> None:
    session, entry, done, _ = observed
    with pytest.raises(Exception) as info:
        session.assert_latency(entry, done, **bounds)
    check_error(info.value, names=("max_us", "min_us"))


def test_assert_order_with_a_view_of_another_session() -> None:
    backend = new_backend()
    mine = TraceSession(backend, _IDENTITY, next(_SERIALS))
    other = TraceSession(backend, _IDENTITY, next(_SERIALS))
    try:
        own = mine.kprobe("__setup_irq")
        foreign = other.kprobe("vfs_read")
        mine.inject(own, pid=7)  # first
        other.inject(foreign, pid=7)  # later
        with pytest.raises((KtraceError, AssertionError)):
            mine.assert_order(foreign, own)
    finally:
        other.teardown()
        mine.teardown()


@pytest.mark.parametrize(
    "kwargs",
    [{"count": "x"}, {"count": None}, {"timeout": None}, {"timeout": "x"}, {"poll_s": "x"}, {"poll_s": -1}],
    ids=repr,
)
def test_wait_for_with_odd_arguments(
    observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView], kwargs: dict[str, Any], endless_wait_guard: None
) -> None:
    session, entry, _, _ = observed
    arguments = {"count": 5, "timeout": 0.02, "poll_s": 0.01, **kwargs}
    with pytest.raises(Exception) as info:
        session.wait_for(entry, **arguments)
    check_error(info.value, names=tuple(kwargs), assertion=False)


def test_wait_for_with_a_nan_timeout_does_not_hang(
    observed: tuple[TraceSession, ProbeView, ProbeView, ProbeView], endless_wait_guard: None
) -> None:
    session, entry, _, _ = observed
    try:
        session.wait_for(entry, 5, timeout=math.nan, poll_s=0.001)
    except Exception as exc:
        check_error(exc, names=("timeout",), assertion=True)


# ------------------------------------------------------------------------------------------------------------
# inject (fake backend)
# ------------------------------------------------------------------------------------------------------------

field_value = st.one_of(
    st.integers(-(2**80), 2**80), hostile_text.filter(lambda text: len(text) < 5000), st.binary(max_size=8)
)


@MEDIUM
@given(
    fields=st.dictionaries(
        st.one_of(st.sampled_from(["irq", "name", "__probe_ip", "common_pid"]), hostile_text).filter(
            lambda key: key not in {"self", "probe", "count", "pid", "comm", "cpu"}
        ),
        field_value,
        max_size=3,
    ),
    pid=st.one_of(st.none(), st.integers(-(2**40), 2**40)),
    comm=hostile_text,
    cpu=st.sampled_from([0, 1]),
    count=st.integers(-2, 3),
)
def test_inject_with_hostile_fields(
    fields: dict[str, Any], pid: Optional[int], comm: str, cpu: int, count: int
) -> None:
    with fresh_session() as session:
        view = session.kprobe("__setup_irq", irq="%x0:u32", name="+0(+80(%x2)):string")
        recorded = clean(lambda: session.inject(view, count, pid=pid, comm=comm, cpu=cpu, **fields))
        assert recorded is None or 0 <= recorded <= max(count, 0)
        # whatever was injected, the trace still reads and parses
        events = clean(lambda: view.events)
        assert isinstance(events, list)


@pytest.mark.parametrize(
    "kwargs",
    [{"count": "x"}, {"cpu": 99}, {"cpu": -1}, {"cpu": "0"}, {"irq": 1.5}, {"pid": "x"}, {"comm": None}],
    ids=repr,
)
def test_inject_with_wrong_typed_arguments(kwargs: dict[str, Any]) -> None:
    with fresh_session() as session:
        view = session.kprobe("__setup_irq", irq="%x0:u32", name="+0(+80(%x2)):string")
        try:
            session.inject(view, **kwargs)
        except Exception as exc:
            check_error(exc, names=tuple(kwargs))
        # accepted or refused: the trace must still be readable
        try:
            view.call_count  # noqa: B018
        except Exception as exc:
            check_error(exc)


# ------------------------------------------------------------------------------------------------------------
# a session used after teardown
# ------------------------------------------------------------------------------------------------------------


def test_inject_after_teardown() -> None:
    backend = new_backend()
    session = TraceSession(backend, _IDENTITY, next(_SERIALS))
    view = session.kprobe("__setup_irq")
    session.arm()
    session.teardown()
    with pytest.raises(Exception) as info:
        session.inject(view)
    check_error(info.value)


def test_probes_defined_after_teardown_are_refused_not_leaked() -> None:
    backend = new_backend()
    session = TraceSession(backend, _IDENTITY, next(_SERIALS))
    session.teardown()
    try:
        session.kprobe("vfs_read")
        session.arm()
    except KtraceError:
        pass
    session.teardown()
    assert not _leftovers(backend), f"left behind after teardown: {_leftovers(backend)}"


# ------------------------------------------------------------------------------------------------------------
# markers and command-line options through pytester
# ------------------------------------------------------------------------------------------------------------

FAKE_ARGS = ("-p", "no:cacheprovider", "--ktrace-backend=fake", f"--ktrace-snapshot={SNAPSHOT}")


def _suite(pytester: pytest.Pytester, marker: str = "", body: str = 'ktrace.kprobe("vfs_read").assert_not_called()'):
    decorator = f"@pytest.mark.ktrace({marker})\n" if marker else ""
    pytester.makepyfile(
        test_hostile=f"import pytest\n\n{decorator}def test_it(ktrace):\n" + textwrap.indent(body, "    ") + "\n"
    )


def _clear(result: pytest.RunResult, *, argument: str, test: Optional[str] = "test_it") -> str:
    """A usage error (exit 4) or a failing/erroring test; naming the argument (and the test); no INTERNALERROR
    and, when it is a test failure, no frame of the plugin's own code."""
    output = "\n".join(result.outlines + result.errlines)
    assert "INTERNALERROR" not in output, output
    assert result.ret in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.TESTS_FAILED), f"exit {result.ret}\n{output}"
    assert argument in output, f"{argument!r} not named:\n{output}"
    if test:
        assert test in output, f"test {test!r} not named:\n{output}"
    if result.ret == pytest.ExitCode.TESTS_FAILED:
        assert not _INTERNAL_FRAME.search(output), f"the plugin's own frames are shown:\n{output}"
    return output


@pytest.mark.parametrize(
    ("marker", "argument"),
    [
        ("scope=object()", "scope"),
        ("scope=[]", "scope"),
        ("scope='everything'", "scope"),
        ("vm=object()", "vm"),
        ("vm='sparc'", "vm"),
        ("bogus=1", "bogus"),
        ("bogus=1, other=2", "other"),
        ("'positional'", "keyword arguments only"),
        ("**{'not an identifier': 1}", "not an identifier"),
    ],
)
def test_marker_arguments_refused_at_collection(pytester: pytest.Pytester, marker: str, argument: str) -> None:
    _suite(pytester, marker)
    result = pytester.runpytest(*FAKE_ARGS)
    _clear(result, argument=argument, test="test_hostile.py::test_it")
    result.assert_outcomes(errors=1)  # an error of that test, checked at collection, not an abort of the run


@pytest.mark.parametrize(
    ("marker", "argument"),
    [
        ("timeout='abc'", "timeout"),
        ("timeout=object()", "timeout"),
        ("buffer_kb='x'", "buffer_kb"),
        ("buffer_kb=[1]", "buffer_kb"),
        ("buffer_kb='1e3'", "buffer_kb"),
        ("sudo='maybe'", "sudo"),
        ("backend='nosuch'", "nosuch"),
    ],
)
def test_marker_values_of_the_wrong_type(pytester: pytest.Pytester, marker: str, argument: str) -> None:
    _suite(pytester, marker)
    _clear(pytester.runpytest(*FAKE_ARGS), argument=argument)


@pytest.mark.parametrize(
    ("marker", "argument"),
    [
        ("buffer_kb=-1", "buffer_kb"),
        ("buffer_kb=10**30", "buffer_kb"),
        ("buffer_kb=1.5", "buffer_kb"),
        ("timeout=-5", "timeout"),
        ("timeout=float('nan')", "timeout"),
    ],
)
def test_marker_values_out_of_range(pytester: pytest.Pytester, marker: str, argument: str) -> None:
    _suite(pytester, marker)
    _clear(pytester.runpytest(*FAKE_ARGS), argument=argument)


@pytest.mark.parametrize(
    ("option", "argument"),
    [
        ("--ktrace-timeout=abc", "--ktrace-timeout"),
        ("--ktrace-buffer-kb=x", "--ktrace-buffer-kb"),
        ("--ktrace-scope=everything", "--ktrace-scope"),
        ("--ktrace-vm=sparc", "--ktrace-vm"),
        ("--ktrace-record-mode=bogus", "--ktrace-record-mode"),
        ("--ktrace-sudo=1", "--ktrace-sudo"),
    ],
)
def test_bad_command_line_options_are_usage_errors(pytester: pytest.Pytester, option: str, argument: str) -> None:
    _suite(pytester)
    result = pytester.runpytest(*FAKE_ARGS, option)
    _clear(result, argument=argument, test=None)
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize(
    ("option", "argument"),
    [("--ktrace-timeout=abc", "--ktrace-timeout"), ("--ktrace-buffer-kb=x", "--ktrace-buffer-kb")],
)
def test_bad_command_line_options_with_quiet_output(pytester: pytest.Pytester, option: str, argument: str) -> None:
    _suite(pytester)
    result = pytester.runpytest(*FAKE_ARGS, option, "-q")
    _clear(result, argument=argument, test=None)
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize("quiet", [(), ("-q",)], ids=["normal", "quiet"])
@pytest.mark.parametrize("snapshot", ["nonexistent", "/etc/passwd", "", "\x01"])
def test_bad_snapshot_is_a_clear_failure(pytester: pytest.Pytester, snapshot: str, quiet: tuple[str, ...]) -> None:
    _suite(pytester)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--ktrace-backend=fake", f"--ktrace-snapshot={snapshot}", *quiet
    )
    _clear(result, argument="snapshot")
    assert "passed" not in result.outlines[-1]


@pytest.mark.parametrize(
    ("option", "argument"),
    [
        ("--ktrace-buffer-kb=-1", "--ktrace-buffer-kb"),
        ("--ktrace-timeout=-1", "--ktrace-timeout"),
        ("--ktrace-timeout=nan", "--ktrace-timeout"),
    ],
)
def test_command_line_values_out_of_range(pytester: pytest.Pytester, option: str, argument: str) -> None:
    _suite(pytester)
    _clear(pytester.runpytest(*FAKE_ARGS, option), argument=argument, test=None)


def test_kernel_rejection_through_arm_hides_the_plugin_frames(pytester: pytest.Pytester) -> None:
    """Control for the next test: a KtraceError raised by ktrace.arm() shows the test line, not our code."""
    _suite(pytester, body='ktrace.kprobe("no_such_function_xyz")\nktrace.arm()')
    result = pytester.runpytest(*FAKE_ARGS)
    output = _clear(result, argument="no_such_function_xyz")
    assert "UnknownSymbol" in output


def test_kernel_rejection_through_a_probe_view_hides_the_plugin_frames(pytester: pytest.Pytester) -> None:
    _suite(pytester, body='ktrace.kprobe("no_such_function_xyz").assert_not_called()')
    _clear(pytester.runpytest(*FAKE_ARGS), argument="no_such_function_xyz")


@pytest.mark.parametrize(
    "body",
    [
        "ktrace.kprobe(None)",
        "ktrace.tracepoint(b'sched:sched_switch')",
        "ktrace.kprobe('vfs_read', filter=5)",
        "ktrace.uprobe(None, 0)",
        "ktrace.run(None)",
    ],
)
def test_wrong_types_in_a_real_test_read_well(pytester: pytest.Pytester, body: str) -> None:
    """The same wrong types as test_wrong_types_at_every_factory, as a user sees them: the failure must not
    point into the plugin."""
    _suite(pytester, body=body)
    output = _clear(pytester.runpytest(*FAKE_ARGS), argument="test_it")
    named = re.search(r"^E\s+TypeError: .*\b(symbol|name|filter|path|argv)\b", output, re.M)
    public = re.search(r"^E\s+pytest_ktrace\.[A-Z]\w+: ", output, re.M)  # an error users catch by its public name
    assert public or named, f"not one of the plugin's errors:\n{output}"
