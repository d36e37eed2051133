"""pytest entry point (``pytest11``): options, ini keys, markers, the ``ktrace`` fixture, header and summary.

Loading this module costs next to nothing: what tracing needs (sessions, parsers, BTF, reports, backends) is
imported when the first test uses it, and no target is reached before then. A run with no ktrace test, or
``--collect-only``/``--fixtures``/``--help``, connects to nothing and boots nothing.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generator, Optional

import pytest

from . import hookspecs
from ._errors import KtraceError, MissingTool, TracefsUnavailable, hide_for_ktrace_errors
from ._identity import RunIdentity
from ._markers import REQUIRES, REQUIRES_HELP, SETTINGS, SETTINGS_HELP
from ._targets import (
    FLAMEGRAPH_MODES,
    LOST_POLICIES,
    RECORD_MODES,
    SCOPES,
    VM_ARCHES,
    RunState,
    clean_after,
    record_mode,
    resolve_target,
    should_record,
    state_key,
    validate_marker,
)
from .backends import _builtin as builtin

if TYPE_CHECKING:
    from ._session import TraceSession
    from .report._section import RunReport, TestFiles  # noqa: F401  (named in a string: a StashKey type)

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_SESSION_KEY = pytest.StashKey["TraceSession"]()
_FILES_KEY = pytest.StashKey["TestFiles"]()  # --ktrace-report: every process writes the files of its tests
_MARKER_ERROR_KEY = pytest.StashKey[str]()  # a test whose marker arguments are wrong fails alone, at setup
_JSON_KEY = pytest.StashKey[bool]()  # --ktrace-json: every process adds each test's entry to its teardown report


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

    flag: dict[str, Any] = {"action": "store_const", "const": True}
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
    option("ktrace-sudo", "on the SSH target, write tracefs through 'sudo -n'", "bool", **flag)
    option("ktrace-ssh-config", "ssh_config file to resolve hosts with (default: ~/.ssh/config)", metavar="FILE")
    option(
        "ktrace-accept-new-host-key",
        "accept and remember an unknown SSH host key (a changed key is always refused)",
        "bool",
        **flag,
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
        **flag,
    )
    option(
        "ktrace-keep-events",
        "stream mode: events kept per probe (default 100000); counts and aggregates stay exact",
        metavar="N",
    )
    option(
        "ktrace-strict",
        "an unmet @pytest.mark.ktrace_requires fails the test instead of skipping it (CI on boards)",
        "bool",
        **flag,
    )
    option(
        "ktrace-clean-after",
        "remove probes of other runs whose owner record on the target has had no heartbeat for this long "
        "(default 6h; e.g. 30m); see also `pytest-ktrace clean`",
        metavar="DURATION",
    )
    option(
        "ktrace-snapshot",
        "kernel snapshot the fake backend imitates: a shipped name or a file (default: each cassette's own)",
        metavar="NAME",
    )
    option(
        "ktrace-record",
        "record each test's probes, commands and trace into its cassette (real targets); "
        "same as --ktrace-record-mode=rewrite",
        "bool",
        **flag,
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
    option(
        "ktrace-json",
        "write FILE: per ktrace test its target, probe definitions, event counts, lost events and outcome (JSON)",
        metavar="FILE",
    )
    parser.addini("ktrace_cassette_dir", "directory of cassettes, next to each test module", default="cassettes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", SETTINGS_HELP)
    config.addinivalue_line("markers", REQUIRES_HELP)
    config.stash[state_key()] = RunState(RunIdentity.current())
    if not config.pluginmanager.has_plugin("ktrace-builtin-backends"):
        config.pluginmanager.register(builtin, "ktrace-builtin-backends")
    # The command line and ini values, checked once for the whole run: a bad value is one usage error (exit 4),
    # also with -q (which skips pytest_report_header), not an error in every test.
    resolve_target(config)
    clean_after(config)
    if (config.getoption("ktrace_flamegraph", default=None) or config.getini("ktrace_flamegraph")) not in (
        None,
        "",
        *FLAMEGRAPH_MODES,
    ):
        from .report._flamegraphs import flamegraph_mode

        flamegraph_mode(config)  # raises the usage error
    controller = not hasattr(config, "workerinput")
    if controller:
        config.pluginmanager.register(_Summary(), "ktrace-summary")
    json_path = config.getoption("ktrace_json", default=None) or config.getini("ktrace_json")
    if json_path:
        config.stash[_JSON_KEY] = True
        if controller:
            from .report._ci_outputs import JsonReport

            base = config.invocation_params.dir if config.getoption("ktrace_json", default=None) else config.rootpath
            config.pluginmanager.register(JsonReport(base / str(json_path)), "ktrace-json")
    if config.getoption("ktrace_report", default=None) is not None or config.getini("ktrace_report"):
        from .report._section import RunReport, TestFiles, resolve_report_dir

        report_dir = resolve_report_dir(config)
        if report_dir is not None:
            config.stash[_FILES_KEY] = TestFiles(report_dir)
            if controller:  # an xdist worker only writes its tests' files
                config.pluginmanager.register(_ReportHooks(RunReport(report_dir)), "ktrace-report")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: workers write into the directory the controller resolved and checked."""
    files = node.config.stash.get(_FILES_KEY, None)
    if files is not None:
        from .report._section import WORKER_INPUT_KEY

        node.workerinput[WORKER_INPUT_KEY] = str(files.root)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(state_key(), None)
    if state is not None:
        state.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _check_backend_is_known(config, items)
    for item in items:
        try:
            for marker in item.iter_markers(SETTINGS):
                validate_marker(item.nodeid, dict(marker.kwargs), tuple(marker.args))
            if item.get_closest_marker(REQUIRES) is not None:
                from ._requirements import validate_marker as validate_requires

                for marker in item.iter_markers(REQUIRES):
                    validate_requires(item.nodeid, dict(marker.kwargs), tuple(marker.args))
        except pytest.UsageError as exc:
            item.stash[_MARKER_ERROR_KEY] = str(exc)


def _check_backend_is_known(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A backend name nobody implements is one usage error for the run, if a test would need it. Asked after
    collection, when every conftest.py that could implement ``pytest_ktrace_make_backend`` is loaded."""
    name = resolve_target(config).target.backend
    if name in builtin.NAMES or not any("ktrace" in getattr(item, "fixturenames", ()) for item in items):
        return
    implementations = config.pluginmanager.hook.pytest_ktrace_make_backend.get_hookimpls()
    if all(implementation.plugin is builtin for implementation in implementations):
        raise pytest.UsageError(
            f"pytest-ktrace: no backend called {name!r} (built in: {', '.join(builtin.NAMES)}; "
            "a plugin or conftest.py can add one with the pytest_ktrace_make_backend hook)"
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    problem = item.stash.get(_MARKER_ERROR_KEY, None)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    if item.get_closest_marker(REQUIRES) is not None:
        from ._requirements import check_before_setup

        check_before_setup(item)  # before the test's fixtures (see requirements.py)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What the run will trace, without reaching it: targets are connected (and guests booted) by the first test
    that needs them; the terminal summary says what was found."""
    settings = resolve_target(config)
    targets = [replace(settings.target, host=board) for board in settings.boards] or [settings.target]
    lines: list[str] = []
    for target in targets:
        if target.backend == "fake" and not target.snapshot:
            lines.append(
                "ktrace: backend fake: each test replays its cassette on the snapshot of the kernel it was recorded "
                "on (cassettes/_targets/, else a shipped snapshot of that arch and version)"
            )
        else:
            lines.append(f"ktrace: backend {target.backend}, target {target.label}: reached when a test first needs it")
    return lines


def _marker_kwargs(node: pytest.Item) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    # closest marker last so it wins (function over class over module)
    for marker in reversed(list(node.iter_markers(SETTINGS))):
        merged.update(marker.kwargs)
    return merged


@pytest.fixture
def ktrace(request: pytest.FixtureRequest) -> Generator[TraceSession, None, None]:
    """Probes for this test: ``ktrace.kprobe/kretprobe/uprobe/uretprobe/tracepoint``, ``ktrace.run``,
    ``wait_for``, ``assert_order``, ``assert_latency``, aggregates ``count_by`` and ``latency_histogram``
    (``stream=True``: events streamed from trace_pipe). Everything it creates is removed after the test."""
    from ._boards import lease_board
    from ._requirements import check_item
    from ._session import TraceSession
    from .recording._cassette import Tape, cassette_path, replay_snapshot
    from .report._provenance import record_session

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
        if settings.target.backend == "fake" and not settings.target.snapshot and cassette.exists():
            settings = replace(settings, target=replace(settings.target, snapshot=replay_snapshot(cassette)))
        backend = state.backend_for(config, settings.target)
        state.keep_alive(backend)
        check_item(request.node, settings.target, backend, strict=settings.strict)  # if not checked before setup
        tape = Tape(
            backend,
            request.node.nodeid,
            cassette,
            record=record,
            rewrite=record_mode(config) == "rewrite",
            snapshotted=state.target_snapshots,
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
    config = item.config
    session, files = item.stash.get(_SESSION_KEY, None), config.stash.get(_FILES_KEY, None)
    json_wanted = config.stash.get(_JSON_KEY, False) and "ktrace" in getattr(item, "fixturenames", ())
    if session is None and files is None and not json_wanted:
        return  # not a ktrace test, and no --ktrace-report or --ktrace-json to list it in
    from .report._flamegraphs import after_call as write_flamegraphs_after
    from .report._section import annotate

    report = outcome.get_result()
    html_wanted = session is not None and bool(config.getoption("htmlpath", default=None))
    write_flamegraphs_after(item, report, session, files.root if files is not None else None)
    captured = annotate(item, report, session, files, keep=json_wanted or html_wanted)
    if html_wanted and report.when == "call" and captured is not None:
        from .report._ci_outputs import html_extras

        html_extras(report, captured)
    if json_wanted and report.when == "teardown":
        from .report._ci_outputs import JSON_ATTR, test_entry

        setattr(report, JSON_ATTR, test_entry(session, captured))


class _Summary:
    """The terminal summary: each target the tests reached (from their reports' properties, which travel from
    xdist workers) and how many of its tests it could not run for unmet ``ktrace_requires``."""

    def __init__(self) -> None:
        self.targets: dict[str, tuple[str, str, str, str]] = {}  # name -> (backend, kernel, arch, features)
        self.tests: Counter[str] = Counter()
        self.unmet: Counter[str] = Counter()
        self.unmet_failed: Counter[str] = Counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "ktrace_target" not in props:
            return
        name = str(props["ktrace_target"])
        if report.when == "setup" and "ktrace_unmet" in props:
            (self.unmet if report.skipped else self.unmet_failed)[name] += 1
        elif report.when == "teardown":
            backend, kernel, arch = (
                str(props.get(key) or "?") for key in ("ktrace_backend", "ktrace_kernel", "ktrace_arch")
            )
            features = str(props.get("ktrace_features", "")).replace(",", ", ") or "none"
            self.targets.setdefault(name, (backend, kernel, arch, features))
            self.tests[name] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for name, (backend, kernel, arch, features) in sorted(self.targets.items()):
            line = f"ktrace: {name} (backend {backend}): Linux {kernel} {arch}; features {features}; "
            line += f"{self.tests[name]} test(s)"
            if self.unmet[name]:
                line += f", {self.unmet[name]} skipped for unmet ktrace_requires (--ktrace-strict fails them)"
            if self.unmet_failed[name]:
                line += f", {self.unmet_failed[name]} failed for unmet ktrace_requires (--ktrace-strict)"
            terminalreporter.write_line(line)


class _ReportHooks:
    """``--ktrace-report`` on the controller (or the only process): the reports of every phase of every test
    (under xdist the workers' reports, deserialized), and the index written once at the end."""

    def __init__(self, run_report: RunReport) -> None:
        self.run_report = run_report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.run_report.add(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        from . import __version__

        self.run_report.write(__version__)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.run_report.written is not None:
            terminalreporter.write_line(f"ktrace report: {self.run_report.written}")
