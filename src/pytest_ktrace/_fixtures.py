"""What the fixtures do, layer by layer (declared in ``plugin.py``):

``ktrace_config``  a dict of settings, the ``@pytest.mark.ktrace`` keys; ``{}`` unless a conftest.py overrides it
   |
``ktrace_target``  :func:`open_target`: settings resolved (marker > ``ktrace_config`` > command line > ini), a
   |               board leased from a pool or a labgrid place reserved and acquired, the backend reached,
   |               ``ktrace_requires`` checked, the cassette tape put around the backend; after the test the
   |               cassette is written and the board handed back (the place released, its reservation cancelled)
``ktrace``         :func:`open_session`: the test's :class:`~._session.TraceSession` on that target; after the
                   test it undoes everything the test created and fails the test if it could not
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

from ._errors import KtraceError, MissingTool, TracefsUnavailable
from ._markers import SETTINGS
from ._targets import RunState, TestSettings, resolve_target, state_key, validate_marker
from .recording._modes import record_mode, should_record

if TYPE_CHECKING:
    from ._labgrid._places import Holding
    from ._session import TraceSession
    from .backends._base import Backend
    from .recording._tape import Tape

__all__ = ["SESSION_KEY", "Target", "config_overridden", "marker_settings", "open_session", "open_target"]

SESSION_KEY = pytest.StashKey["TraceSession"]()  # the report hooks find a test's session here
_TARGET_KEYS = frozenset({"host", "vm", "vm_kernel", "vm_modules", "labgrid_tags", "labgrid_place"})


@dataclass
class Target:
    """The target one test traces: ``backend`` (wrapped by the cassette tape when recording or replaying),
    the settings it was resolved from, and a label for messages."""

    backend: Backend
    settings: TestSettings
    tape: Tape
    finalizers: list[Callable[[], None]] = field(default_factory=list)
    undone: bool = True  # False when teardown failed in a way a cassette cannot hold: none is written

    @property
    def label(self) -> str:
        return self.settings.target.label


def marker_settings(node: pytest.Item) -> dict[str, Any]:
    """The ``@pytest.mark.ktrace`` arguments of a test, the closest marker winning (function, class, module)."""
    merged: dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers(SETTINGS))):
        merged.update(marker.kwargs)
    return merged


def config_overridden(item: pytest.Item) -> bool:
    """Whether a conftest.py or module overrides ``ktrace_config`` for this test (its settings are then known
    only when the fixture runs)."""
    info = getattr(item, "_fixtureinfo", None)  # pytest's own per-item record of the fixtures it resolved
    if info is None:
        return False
    definitions: Sequence[Any] = info.name2fixturedefs.get("ktrace_config", ())
    return bool(definitions) and getattr(definitions[-1].func, "__module__", "") != "pytest_ktrace.plugin"


def _settings(request: pytest.FixtureRequest, config_values: Mapping[str, Any]) -> TestSettings:
    nodeid = request.node.nodeid
    if not isinstance(config_values, Mapping):
        pytest.fail(f"{nodeid}: the ktrace_config fixture must return a dict, got {config_values!r}", pytrace=False)
    try:
        validate_marker(nodeid, dict(config_values), (), source="ktrace_config")
    except pytest.UsageError as exc:
        pytest.fail(str(exc), pytrace=False)
    marker = marker_settings(request.node)
    if _TARGET_KEYS & marker.keys():  # the marker's target replaces the directory's, whatever kind it is
        config_values = {key: value for key, value in config_values.items() if key not in _TARGET_KEYS}
    try:
        return resolve_target(request.config, {**config_values, **marker})
    except pytest.UsageError as exc:
        pytest.fail(f"{nodeid}: {exc}", pytrace=False)


@contextlib.contextmanager
def open_target(request: pytest.FixtureRequest, config_values: Mapping[str, Any]) -> Iterator[Target]:
    from ._boards import lease_board
    from .recording._cassette import cassette_path

    config = request.config
    state: RunState = config.stash[state_key()]
    settings = _settings(request, config_values)
    cassette = cassette_path(request.node.path, request.node.name, config.getini("ktrace_cassette_dir") or "cassettes")
    record = should_record(config, cassette, replaying=settings.target.backend == "fake")
    finalizers: list[Callable[[], None]] = []
    try:
        if settings.boards:
            # One test per board at a time, across every xdist worker of this machine.
            worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
            lease = lease_board(settings.boards, timeout=3600, start=worker)
            finalizers.append(lease.release)
            settings = replace(settings, target=replace(settings.target, host=lease.host))
        if settings.labgrid is not None:
            holding = _hold_place(request, settings)
            finalizers.append(holding.release)
            settings = replace(settings, target=holding.target(settings.target))
        target = _reach(request, state, settings, cassette, record)
        target.finalizers = finalizers
    except BaseException:
        for finalizer in reversed(finalizers):
            finalizer()
        raise
    try:
        yield target
    finally:
        problem = ""
        try:
            if target.undone:
                target.tape.finish()
        except KtraceError as exc:
            problem = str(exc)
        finally:
            for finalizer in reversed(target.finalizers):
                finalizer()
        if problem:
            pytest.fail(problem, pytrace=False)


def _hold_place(request: pytest.FixtureRequest, settings: TestSettings) -> Holding:
    """The labgrid place of this test, acquired; a failure fails the test's setup with the error's name."""
    from ._errors import LabgridError
    from ._labgrid import hold_place

    assert settings.labgrid is not None
    try:
        return hold_place(request, settings.labgrid)
    except LabgridError as exc:
        problem = f"pytest-ktrace: {type(exc).__name__}: {exc}"
    pytest.fail(problem, pytrace=False)  # outside the handler: the report shows no chained exception


def _reach(
    request: pytest.FixtureRequest, state: RunState, settings: TestSettings, cassette: Path, record: bool
) -> Target:
    from ._requirements import check_item
    from .recording._kernels import replay_snapshot
    from .recording._tape import Tape

    config = request.config
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
    return Target(tape.backend, settings, tape)


def _parks_probes(target: Target) -> bool:
    """Probes stay armed in the run's instance between tests (``_warm``), except where a test must be whole on its
    own: a cassette being recorded holds one test's conversation, and the fake is cheap to set up anyway."""
    from .backends._base import capable
    from .recording._player import Replaying

    return target.settings.parks_probes and target.tape.recorder is None and not capable(target.backend, Replaying)


@contextlib.contextmanager
def open_session(request: pytest.FixtureRequest, target: Target) -> Iterator[TraceSession]:
    from ._session import TraceSession
    from .report._provenance import record_session

    state: RunState = request.config.stash[state_key()]
    settings = target.settings
    session = TraceSession(
        target.backend,
        state.identity,
        state.next_serial(),
        scope="run" if settings.scope == "run" else "all",
        run_timeout=settings.timeout,
        buffer_kb=settings.buffer_kb,
        elf_cache=state.elf_copies,
        lost_policy=settings.lost,
        stream=settings.stream,
        keep_events=settings.keep,
        kernel_log=settings.kernel_log,
        kernel_log_allow=request.config.getini("ktrace_kernel_log_allow"),
        parked=state.parked_on(target.backend) if _parks_probes(target) else None,
        owner=request.node.nodeid,
    )
    request.node.stash[SESSION_KEY] = session
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
                    f"pytest-ktrace: {target.label} was unreachable at teardown ({report.deferred}); "
                    f"{session.instance} and its probes are removed as soon as the connection is back"
                ),
                stacklevel=1,
            )
        if report:
            target.undone = report.replayable
            pytest.fail(
                f"pytest-ktrace could not undo everything this test created on {target.label}:\n  "
                + "\n  ".join(report.failures),
                pytrace=False,
            )
        if report.inspected:
            message = "pytest-ktrace (at teardown, since the test's last look): " + "\n".join(report.inspected)
            if settings.kernel_log == "warn":
                warnings.warn(pytest.PytestWarning(message), stacklevel=1)
            else:
                pytest.fail(message, pytrace=False)
