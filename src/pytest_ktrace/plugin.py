"""pytest entry point (``pytest11``): options, ini keys, markers, the fixtures (``ktrace_config`` -> ``ktrace_target``
-> ``ktrace``, see ``_fixtures``), and the hooks that hand reports to ``report/``.

Loading this module costs next to nothing: what tracing needs (sessions, parsers, BTF, reports, backends) is
imported when the first test uses it, and no target is reached before then. A run with no ktrace test, or
``--collect-only``/``--fixtures``/``--help``, connects to nothing and boots nothing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Generator, Optional

import pytest

from . import hookspecs
from ._choices import (
    FLAMEGRAPH_MODES,
    KERNEL_LOG_POLICIES,
    LABGRID_DEFAULT_PORT,
    LABGRID_DEFAULT_TIMEOUT_S,
    LOST_POLICIES,
    RECORD_MODES,
    SCOPES,
    VM_ARCHES,
)
from ._markers import REQUIRES, REQUIRES_HELP, SETTINGS, SETTINGS_HELP

if TYPE_CHECKING:
    from ._fixtures import Target
    from ._session import TraceSession
    from ._targets import RunState, TargetSpec
    from .report._hooks import TargetSummary
    from .report._section import RunReport, TestFiles  # noqa: F401  (named in a string: a StashKey type)


def _hide_for_ktrace_errors(excinfo: Any) -> bool:
    """pytest shows the test line, not our internals, for a KtraceError (see ``_errors.hide_for_ktrace_errors``);
    none can have been raised before ``_errors`` was imported, so this does not import it."""
    errors = sys.modules.get(f"{__package__}._errors")
    return errors is not None and bool(errors.hide_for_ktrace_errors(excinfo))


__tracebackhide__ = _hide_for_ktrace_errors

_FILES_KEY = pytest.StashKey["TestFiles"]()  # --ktrace-report: every process writes the files of its tests
_MARKER_ERROR_KEY = pytest.StashKey[str]()  # a test whose marker arguments are wrong fails alone, at setup
_JSON_KEY = pytest.StashKey[bool]()  # --ktrace-json: every process adds each test's entry to its teardown report
_VM_KERNEL_KEY = pytest.StashKey[str]()  # --ktrace-vm-kernel: what the header says of the user's kernel


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


# Every option's dest, also its ini key: a run that sets none of them runs on the defaults, which need no checking.
_OPTION_DESTS: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ktrace", "kernel tracing (pytest-ktrace)")

    def option(name: str, help: str, ini_type: Optional[str] = None, **kwargs: Any) -> None:
        dest = name.replace("-", "_")
        if dest not in _OPTION_DESTS:
            _OPTION_DESTS.append(dest)
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
    option(
        "ktrace-vm-kernel",
        "boot this kernel in the qemu guest instead of Debian's: an x86 bzImage, an arm64 Image or Image.gz, or an "
        "ELF vmlinux; the guest's arch is the kernel's own",
        metavar="PATH",
    )
    option(
        "ktrace-vm-modules",
        "the modules of that kernel: DIR of `make modules_install INSTALL_MOD_PATH=DIR` (DIR/lib/modules/<release>)",
        metavar="DIR",
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
        "ktrace-ssh-identity",
        "a private key for SSH targets, tried before the agent's and ssh_config's (like ssh -i)",
        metavar="FILE",
    )
    option(
        "ktrace-labgrid",
        "the labgrid coordinator to reserve places from "
        f"(default port {LABGRID_DEFAULT_PORT}; default: $LG_COORDINATOR)",
        metavar="HOST[:PORT]",
    )
    option(
        "ktrace-labgrid-tags",
        "each test reserves, acquires and releases a labgrid place with these tags, reached over SSH through its "
        "NetworkService",
        metavar="K=V[,K=V...]",
    )
    option("ktrace-labgrid-place", "each test reserves the labgrid place of this name", metavar="NAME")
    option(
        "ktrace-labgrid-timeout",
        f"how long a test waits for a labgrid place to be free (default {LABGRID_DEFAULT_TIMEOUT_S:g})",
        metavar="SECONDS",
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
        "ktrace-kernel-log",
        "a WARNING, BUG, Oops, KASAN/UBSAN/KFENCE, lockdep, RCU stall or hung task printed while a test runs: "
        "fail the test (fail, the default), warn, or do not capture the kernel log (off)",
        metavar="POLICY",
        choices=KERNEL_LOG_POLICIES,
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
        "ktrace-fresh-probes",
        "each test defines, arms and removes its own probes in an instance of its own, instead of taking back the "
        "ones earlier tests of the run left armed (and filtered off) in the run's instance",
        "bool",
        **flag,
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
    parser.addini(
        "ktrace_kernel_log_allow",
        "kernel splats any test may print (one regular expression per line, searched in the splat's lines)",
        type="linelist",
        default=[],
    )
    parser.addini("ktrace_cassette_dir", "directory of cassettes, next to each test module", default="cassettes")


def _settings_given(config: pytest.Config) -> bool:
    """Whether the command line or the ini file sets any ktrace option (else the run is on the defaults)."""
    return any(config.getoption(dest, default=None) is not None or config.getini(dest) for dest in _OPTION_DESTS)


def _run_state(config: pytest.Config) -> RunState:
    """The run's state (``_targets.RunState`` in ``config.stash``), made when a test first needs a target, with
    the built-in backends registered then: a run with no ktrace test imports neither."""
    from ._identity import RunIdentity
    from ._targets import RunState, state_key
    from .backends import _builtin as builtin

    state = config.stash.get(state_key(), None)
    if state is None:
        if not config.pluginmanager.has_plugin("ktrace-builtin-backends"):
            config.pluginmanager.register(builtin, "ktrace-builtin-backends")
        state = config.stash[state_key()] = RunState(RunIdentity.current())
    return state


def _existing_run_state(config: pytest.Config) -> Optional[RunState]:
    """The run's state if a test made it (without importing ``_targets`` when none did)."""
    targets = sys.modules.get(f"{__package__}._targets")
    return None if targets is None else config.stash.get(targets.state_key(), None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", SETTINGS_HELP)
    config.addinivalue_line("markers", REQUIRES_HELP)
    controller = not hasattr(config, "workerinput")
    if controller:
        config.pluginmanager.register(_TargetSummaryWhenTraced(), "ktrace-summary")
    if not _settings_given(config):
        return  # the defaults: nothing to check, no report to write
    from ._targets import clean_after, resolve_target

    # The command line and ini values, checked once for the whole run: a bad value is one usage error (exit 4),
    # also with -q (which skips pytest_report_header), not an error in every test.
    settings = resolve_target(config)
    clean_after(config)
    if settings.labgrid is not None:
        from ._labgrid._client import labgrid_missing

        missing = labgrid_missing()
        if missing:
            raise pytest.UsageError(f"pytest-ktrace: {settings.labgrid.label}: {missing}")
    if settings.target.vm_kernel and not hasattr(config, "workerinput"):
        config.stash[_VM_KERNEL_KEY] = _check_vm_kernel(settings.target)
    if (config.getoption("ktrace_flamegraph", default=None) or config.getini("ktrace_flamegraph")) not in (
        None,
        "",
        *FLAMEGRAPH_MODES,
    ):
        from .report._flamegraphs import flamegraph_mode

        flamegraph_mode(config)  # raises the usage error
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
                from .report._hooks import ReportIndexHooks

                config.pluginmanager.register(ReportIndexHooks(RunReport(report_dir)), "ktrace-report")


class _TargetSummaryWhenTraced:
    """The terminal summary of the targets the tests reached (``report._hooks.TargetSummary``), made from the first
    report of a ktrace test: a run without one imports no report module."""

    def __init__(self) -> None:
        self.summary: Optional[TargetSummary] = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.summary is None:
            if not any(name == "ktrace_target" for name, _ in report.user_properties):
                return
            from .report._hooks import TargetSummary

            self.summary = TargetSummary()
        self.summary.pytest_runtest_logreport(report)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.summary is not None:
            self.summary.pytest_terminal_summary(terminalreporter)


def _check_vm_kernel(target: TargetSpec) -> str:
    """A user's kernel from the command line or ini, checked before any test runs (a kernel the guest cannot
    run is a usage error); a line on it for the header."""
    from pathlib import Path

    from ._errors import GuestKernelError
    from .guests import describe_user_kernel

    assert target.vm_kernel is not None
    modules = Path(target.vm_modules) if target.vm_modules else None
    try:
        return describe_user_kernel(Path(target.vm_kernel), modules, arch=target.vm)
    except GuestKernelError as exc:
        raise pytest.UsageError(f"pytest-ktrace: {exc}") from None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: workers write into the directory the controller resolved and checked."""
    files = node.config.stash.get(_FILES_KEY, None)
    if files is not None:
        from .report._section import WORKER_INPUT_KEY

        node.workerinput[WORKER_INPUT_KEY] = str(files.root)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    state = _existing_run_state(session.config)
    failures = state.retire_parked() if state is not None else []
    if failures:
        # found after the tests that caused them passed: the run fails, naming them
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        head = "pytest-ktrace found problems after these tests ended (their parked probes, their teardown):"
        text = head + "\n  " + "\n  ".join(failures)
        if reporter is not None:
            reporter.write_line(text, red=True)
        else:
            print(text, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    state = _existing_run_state(config)
    if state is not None:
        state.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _check_backend_is_known(config, items)
    for item in items:
        try:
            for marker in item.iter_markers(SETTINGS):
                from ._targets import validate_marker

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
    if not any("ktrace" in getattr(item, "fixturenames", ()) for item in items):
        return
    from ._targets import resolve_target
    from .backends import _builtin as builtin

    name = resolve_target(config).target.backend
    if name in builtin.NAMES:
        return
    _run_state(config)  # the built-in backends registered, to tell them from a plugin's
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

        _run_state(item.config)
        check_before_setup(item)  # before the test's fixtures (see requirements.py)


# What the header says of a run on the defaults (this machine's tracefs), without resolving them.
_DEFAULT_HEADER = "ktrace: backend local, target local: reached when a test first needs it"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What the run will trace, without reaching it: targets are connected (and guests booted) by the first test
    that needs them; the terminal summary says what was found."""
    if not _settings_given(config):
        return [_DEFAULT_HEADER]
    from dataclasses import replace

    from ._targets import resolve_target

    settings = resolve_target(config)
    targets = [replace(settings.target, host=board) for board in settings.boards] or [settings.target]
    lines: list[str] = []
    if settings.labgrid is not None:
        targets = []
        lines.append(
            f"ktrace: backend ssh, target a {settings.labgrid.label}: each test reserves and acquires one, "
            "released after it"
        )
    for target in targets:
        if target.backend == "fake" and not target.snapshot:
            lines.append(
                "ktrace: backend fake: each test replays its cassette on the snapshot of the kernel it was recorded "
                "on (cassettes/_targets/, else a shipped snapshot of that arch and version)"
            )
        else:
            lines.append(f"ktrace: backend {target.backend}, target {target.label}: reached when a test first needs it")
    if _VM_KERNEL_KEY in config.stash:
        lines.append(f"ktrace: {config.stash[_VM_KERNEL_KEY]}")
    return lines


@pytest.fixture
def ktrace_config() -> dict[str, Any]:
    """Settings for the tests that see this fixture: the keys of ``@pytest.mark.ktrace`` (``host``, ``vm``,
    ``backend``, ``snapshot``, ``scope``, ...). Empty by default; override it in a directory's conftest.py to point
    that directory at another target. A test's own marker wins over it; it wins over the command line and ini."""
    return {}


@pytest.fixture
def ktrace_target(request: pytest.FixtureRequest, ktrace_config: dict[str, Any]) -> Generator[Target, None, None]:
    """The target this test traces: settings resolved, board leased, backend reached, requirements checked,
    recorded or replayed through its cassette. ``.backend`` is the backend, ``.settings`` what it was resolved from."""
    from ._fixtures import open_target

    _run_state(request.config)
    with open_target(request, ktrace_config) as target:
        yield target


@pytest.fixture
def ktrace(request: pytest.FixtureRequest, ktrace_target: Target) -> Generator[TraceSession, None, None]:
    """Probes for this test: ``ktrace.kprobe/kretprobe/uprobe/uretprobe/tracepoint``, ``ktrace.run``,
    ``wait_for``, ``assert_order``, ``assert_latency``, aggregates ``count_by`` and ``latency_histogram``
    (``stream=True``: events streamed from trace_pipe). Everything it creates is removed after the test."""
    from ._fixtures import open_session

    with open_session(request, ktrace_target) as session:
        yield session


def _session_of(item: pytest.Item) -> Optional[TraceSession]:
    """The test's TraceSession, if it has one: ``_fixtures`` keeps it in the item's stash, and until a test used
    the ``ktrace`` fixture (importing ``_fixtures``) no test has one."""
    fixtures = sys.modules.get(f"{__package__}._fixtures")
    return None if fixtures is None else item.stash.get(fixtures.SESSION_KEY, None)


@pytest.hookimpl(trylast=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """After the test's body: a kernel splat in what the test read fails it (``--ktrace-kernel-log``)."""
    session = _session_of(item)
    if session is not None:
        session.check_kernel_log()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    session, files = _session_of(item), item.config.stash.get(_FILES_KEY, None)
    json_wanted = item.config.stash.get(_JSON_KEY, False) and "ktrace" in getattr(item, "fixturenames", ())
    if session is None and files is None and not json_wanted:
        return  # not a ktrace test, and no --ktrace-report or --ktrace-json to list it in
    from .report._hooks import after_report

    after_report(item, outcome.get_result(), session, files, json_wanted=json_wanted)
