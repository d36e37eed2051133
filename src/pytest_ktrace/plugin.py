"""pytest entry point (``pytest11``): options, ini keys, the marker, the ``ktrace`` fixture, header, report."""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from typing import Any, Generator, Optional

import pytest

from . import __version__, hookspecs
from .backends import builtin
from .boards import lease_board
from .errors import KtraceError, MissingTool, TracefsUnavailable, hide_for_ktrace_errors
from .fake.cassette import RECORD_MODES, Tape, cassette_path, replay_profile
from .flamegraphs import MODES as FLAMEGRAPH_MODES
from .flamegraphs import after_call as write_flamegraphs_after
from .flamegraphs import flamegraph_mode
from .identity import RunIdentity
from .provenance import record_session
from .report import WORKER_INPUT_KEY, RunReport, TestFiles, annotate, resolve_report_dir
from .requirements import MARKER as REQUIRES_MARKER
from .requirements import MARKER_HELP as REQUIRES_HELP
from .requirements import check_before_setup, check_item
from .requirements import validate_marker as validate_requires
from .session import TraceSession
from .targets import (
    LOST_POLICIES,
    SCOPES,
    VM_ARCHES,
    RunState,
    record_mode,
    resolve_target,
    should_record,
    state_key,
    validate_marker,
)

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_SESSION_KEY = pytest.StashKey[TraceSession]()
_FILES_KEY = pytest.StashKey[TestFiles]()  # --ktrace-report: every process writes the files of its tests


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ktrace", "kernel tracing (pytest-ktrace)")

    def option(name: str, help: str, ini_type: Optional[str] = None, **kwargs: Any) -> None:
        dest = name.replace("-", "_")
        group.addoption(f"--{name}", dest=dest, default=None, help=help, **kwargs)
        if ini_type == "bool":
            parser.addini(dest, help, type="bool", default=False)
        else:
            parser.addini(dest, help, default="")

    option(
        "ktrace-backend",
        "where to trace: local (this machine's tracefs), ssh, vm, or a plugin's backend",
        metavar="NAME",
    )
    option("ktrace-host", "trace a remote target over SSH: [user@]host[:port] or a ~/.ssh/config alias", metavar="HOST")
    option(
        "ktrace-vm",
        f"boot a disposable qemu guest and trace it: {' or '.join(VM_ARCHES)}",
        metavar="ARCH",
        choices=VM_ARCHES,
    )
    option("ktrace-tracefs", "tracefs mount point on the target (default: /sys/kernel/tracing)", metavar="PATH")
    option(
        "ktrace-sudo", "on the SSH target, write tracefs through 'sudo -n'", "bool", action="store_const", const=True
    )
    option("ktrace-ssh-config", "ssh_config file to resolve hosts with (default: ~/.ssh/config)", metavar="FILE")
    option(
        "ktrace-accept-new-host-key",
        "accept and remember an unknown SSH host key (a changed key is always refused)",
        "bool",
        action="store_const",
        const=True,
    )
    option(
        "ktrace-scope",
        "record events of every task (all) or only of commands started by ktrace.run (run)",
        metavar="SCOPE",
        choices=SCOPES,
    )
    option("ktrace-timeout", "default timeout of ktrace.run in seconds (default 60)", metavar="SECONDS")
    option("ktrace-buffer-kb", "per-CPU ring buffer size of each test's tracing instance", metavar="KB")
    option(
        "ktrace-lost",
        "when the kernel lost events: fail count assertions (fail, the default) or only warn (warn)",
        metavar="POLICY",
        choices=LOST_POLICIES,
    )
    option(
        "ktrace-stream",
        "stream each test's events from trace_pipe into bounded memory (long, busy tests)",
        "bool",
        action="store_const",
        const=True,
    )
    option(
        "ktrace-keep-events",
        "stream mode: events kept per probe (default 100000); counts and aggregates stay exact",
        metavar="N",
    )
    option("ktrace-profile", "target profile the fake backend imitates: a shipped name or a file", metavar="NAME")
    option(
        "ktrace-record",
        "record each test's probes, commands and trace into its cassette (real targets); "
        "same as --ktrace-record-mode=rewrite",
        "bool",
        action="store_const",
        const=True,
    )
    option(
        "ktrace-record-mode",
        "cassettes on real targets, as in pytest-recording: none (never write, the default), once (record tests "
        "that have no cassette yet), rewrite (record every test again)",
        metavar="MODE",
        choices=RECORD_MODES,
    )
    option(
        "ktrace-report",
        "write each ktrace test's trace, timeline and attached files under DIR, and an HTML summary DIR/index.html",
        metavar="DIR",
    )
    option(
        "ktrace-flamegraph",
        "write the flame graphs of ktrace.profile() blocks (SVG + folded stacks, next to --ktrace-report or in "
        ".ktrace/flamegraphs): failed (the default: tests that failed), all, or none",
        metavar="WHEN",
        choices=FLAMEGRAPH_MODES,
    )
    parser.addini("ktrace_cassette_dir", "directory of cassettes, next to each test module", default="cassettes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ktrace(host=, vm=, backend=, profile=, tracefs=, sudo=, scope=, timeout=, buffer_kb=, lost=, stream=, "
        "keep=): per-test settings; they override the command line and the ini file",
    )
    config.addinivalue_line("markers", REQUIRES_HELP)
    config.stash[state_key()] = RunState(RunIdentity.current())
    if not config.pluginmanager.has_plugin("ktrace-builtin-backends"):
        config.pluginmanager.register(builtin, "ktrace-builtin-backends")
    # The command line and ini values, checked once for the whole run: a bad value is one usage error (exit 4),
    # also with -q (which skips pytest_report_header), not an error in every test.
    resolve_target(config)
    flamegraph_mode(config)
    report_dir = resolve_report_dir(config)
    if report_dir is not None:
        config.stash[_FILES_KEY] = TestFiles(report_dir)
        if not hasattr(config, "workerinput"):  # an xdist worker only writes its tests' files
            config.pluginmanager.register(_ReportHooks(RunReport(report_dir)), "ktrace-report")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: workers write into the directory the controller resolved and checked."""
    files = node.config.stash.get(_FILES_KEY, None)
    if files is not None:
        node.workerinput[WORKER_INPUT_KEY] = str(files.root)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(state_key(), None)
    if state is not None:
        state.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker in item.iter_markers("ktrace"):
            validate_marker(item.nodeid, dict(marker.kwargs), tuple(marker.args))
        for marker in item.iter_markers(REQUIRES_MARKER):
            validate_requires(item.nodeid, dict(marker.kwargs), tuple(marker.args))


def pytest_runtest_setup(item: pytest.Item) -> None:
    check_before_setup(item)  # @pytest.mark.ktrace_requires, before the test's fixtures (see requirements.py)


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = resolve_target(config)
    state = config.stash[state_key()]
    targets = [replace(settings.target, host=board) for board in settings.boards] or [settings.target]
    lines: list[str] = []
    for target in targets:
        if target.backend == "fake" and not target.profile:
            lines.append(
                "ktrace: backend fake: each test replays its cassette on the profile of the kernel it was recorded "
                "on (cassettes/_targets/, else a shipped profile of that arch and version)"
            )
            continue
        try:
            info = state.backend_for(config, target).describe()
        except KtraceError as exc:
            lines.append(f"ktrace: backend {target.label}: unavailable: {exc}")
            continue
        lines.append(
            f"ktrace: backend {target.backend}, target {info.name}: Linux {info.release} {info.arch}, "
            f"tracefs {info.tracefs}"
        )
        lines.append(f"ktrace: features: {', '.join(sorted(info.features)) or 'none'}")
    return lines


def _marker_kwargs(node: pytest.Item) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    # closest marker last so it wins (function over class over module)
    for marker in reversed(list(node.iter_markers("ktrace"))):
        merged.update(marker.kwargs)
    return merged


@pytest.fixture
def ktrace(request: pytest.FixtureRequest) -> Generator[TraceSession, None, None]:
    """Probes for this test: ``ktrace.kprobe/kretprobe/uprobe/uretprobe/tracepoint``, ``ktrace.run``,
    ``wait_for``, ``assert_order``, ``assert_latency``, aggregates ``count_by`` and ``latency_histogram``
    (``stream=True``: events streamed from trace_pipe). Everything it creates is removed after the test."""
    config = request.config
    state: RunState = config.stash[state_key()]
    try:
        settings = resolve_target(config, _marker_kwargs(request.node))
    except pytest.UsageError as exc:
        pytest.fail(f"{request.node.nodeid}: {exc}", pytrace=False)
    cassette = cassette_path(request.node.path, request.node.name, config.getini("ktrace_cassette_dir") or "cassettes")
    record = should_record(config, cassette, replaying=settings.target.backend == "fake")
    lease = None
    if settings.boards:
        # One test per board at a time, across every xdist worker of this machine.
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
        lease = lease_board(settings.boards, timeout=3600, start=worker)
        request.addfinalizer(lease.release)
        settings = replace(settings, target=replace(settings.target, host=lease.host))
    try:
        if settings.target.backend == "fake" and not settings.target.profile and cassette.exists():
            settings = replace(settings, target=replace(settings.target, profile=replay_profile(cassette)))
        backend = state.backend_for(config, settings.target)
        check_item(request.node, settings.target, backend)  # ktrace_requires, if not checked before setup
        tape = Tape(
            backend,
            request.node.nodeid,
            cassette,
            record=record,
            rewrite=record_mode(config) == "rewrite",
            snapshotted=state.target_profiles,
        )
    except pytest.UsageError as exc:  # e.g. @pytest.mark.ktrace(backend="nosuch")
        pytest.fail(f"{request.node.nodeid}: {exc}", pytrace=False)
    except MissingTool as exc:
        pytest.skip(f"pytest-ktrace: {exc}")
    except TracefsUnavailable as exc:
        pytest.fail(f"pytest-ktrace: {exc}", pytrace=False)
    except KtraceError as exc:
        pytest.fail(f"pytest-ktrace: target {settings.target.label} unavailable: {exc}", pytrace=False)
    session = TraceSession(
        tape.backend,
        state.identity,
        state.next_serial(),
        scope="run" if settings.scope == "run" else "all",
        run_timeout=settings.timeout,
        buffer_kb=settings.buffer_kb,
        elf_cache=state.elf_copies,
        lost_policy=settings.lost,
        stream=settings.stream,
        keep_events=settings.keep,
    )
    request.node.stash[_SESSION_KEY] = session
    state.live.add(session)
    try:
        yield session
    finally:
        record_session(request.node, settings.target, session)  # JUnit XML properties
        state.live.discard(session)
        report = session.teardown()
        for note in report.notes:
            warnings.warn(pytest.PytestWarning(f"pytest-ktrace: {note}"), stacklevel=1)
        if report.deferred:
            warnings.warn(
                pytest.PytestWarning(
                    f"pytest-ktrace: {settings.target.label} was unreachable at teardown ({report.deferred}); "
                    f"{session.instance} and its probes are removed as soon as the connection is back"
                ),
                stacklevel=1,
            )
        if report:
            pytest.fail(
                "pytest-ktrace could not undo everything this test created on "
                f"{settings.target.label}:\n  " + "\n  ".join(report.failures),
                pytrace=False,
            )
        try:
            tape.finish()
        except KtraceError as exc:
            pytest.fail(str(exc), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report, session, files = (
        outcome.get_result(),
        item.stash.get(_SESSION_KEY, None),
        item.config.stash.get(_FILES_KEY, None),
    )
    write_flamegraphs_after(item, report, session, files.root if files is not None else None)
    annotate(item, report, session, files)


class _ReportHooks:
    """``--ktrace-report`` on the controller (or the only process): the reports of every phase of every test
    (under xdist the workers' reports, deserialized), and the index written once at the end."""

    def __init__(self, run_report: RunReport) -> None:
        self.run_report = run_report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.run_report.add(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        self.run_report.write(__version__)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.run_report.written is not None:
            terminalreporter.write_line(f"ktrace report: {self.run_report.written}")
