"""What CI tools read besides the terminal: ``--ktrace-json=FILE`` and pytest-html extras.

``--ktrace-json``: one JSON document for the run, one entry per test that used ``ktrace``: the target (name,
backend, kernel, arch, features), each probe's definition (names normalised as in cassettes and JUnit), its event
count, the events the kernel lost per CPU, and the outcome with the failure message. Each test's entry is built
where the test ran and travels on its teardown report (an attribute xdist serializes); the controller writes the
file once, atomically, at the end.

pytest-html (when installed and ``--html`` is given): each failing ktrace test's report carries its trace, its
timeline and the SVG flame graphs attached to it, as pytest-html "extras".
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pytest

from .._files import write_atomic
from ._provenance import probe_line

if TYPE_CHECKING:
    from .._session import TraceSession
    from ._section import Capture

__all__ = ["JSON_ATTR", "JSON_VERSION", "JsonReport", "html_extras", "test_entry"]

JSON_ATTR = "ktrace_json"  # the TestReport attribute carrying a test's entry to the controller
JSON_VERSION = 1


def test_entry(session: Optional[TraceSession], captured: Optional[Capture]) -> dict[str, Any]:
    """The worker's part of a test's entry (the controller adds the outcome)."""
    if session is None:
        return {"target": None, "instance": None, "probes": [], "lost_events": {}}
    target: Optional[dict[str, Any]]
    try:
        info = session.target
        target = {
            "name": info.name,
            "backend": info.backend,
            "kernel": info.release,
            "arch": info.arch,
            "features": sorted(info.features),
        }
    except Exception:  # an unreachable target: the entry still says what the test defined
        target = None
    counts = {id(spec): count for spec, count in captured.probes} if captured is not None else {}
    probes = [
        {
            "kind": view.spec.kind,
            "name": view.spec.display,
            "definition": probe_line(view.spec, number),
            "events": counts.get(id(view.spec)),
        }
        for number, view in enumerate(session.probes, 1)
    ]
    return {
        "target": target,
        "instance": session.instance,
        "probes": probes,
        "lost_events": {str(cpu): lost for cpu, lost in sorted((captured.lost if captured else {}).items())},
        "trace_error": captured.trace_error if captured is not None and captured.trace_error else None,
    }


def _failure(report: pytest.TestReport) -> Optional[str]:
    if report.passed or report.longrepr is None:
        return None
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    if isinstance(report.longrepr, tuple):  # a skip: (path, line, reason)
        return str(report.longrepr[-1])
    return str(report.longrepr).strip().splitlines()[-1] if str(report.longrepr).strip() else None


class JsonReport:
    """The controller's side of ``--ktrace-json``: collects the entries and writes the file at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tests: dict[str, dict[str, Any]] = {}
        self.phases: dict[str, list[pytest.TestReport]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.phases.setdefault(report.nodeid, []).append(report)
        entry = getattr(report, JSON_ATTR, None)
        if report.when == "teardown" and isinstance(entry, dict):
            self.tests[report.nodeid] = {"nodeid": report.nodeid, **entry, **self._outcome(report.nodeid)}
        if report.when == "teardown":
            self.phases.pop(report.nodeid, None)

    def _outcome(self, nodeid: str) -> dict[str, Any]:
        reports = self.phases.get(nodeid, [])
        outcome, failure = "passed", None
        for report in reports:
            if report.failed:
                outcome = "failed" if report.when == "call" else "error"
                failure = failure or _failure(report)
            elif report.skipped and outcome == "passed":
                outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
                failure = failure or _failure(report)
        return {
            "outcome": outcome,
            "duration_s": round(sum(report.duration for report in reports), 6),
            "failure": failure,
        }

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        from .. import __version__

        body = {"version": JSON_VERSION, "pytest_ktrace": __version__, "tests": list(self.tests.values())}
        write_atomic(self.path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode(), what="--ktrace-json")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_line(f"ktrace json: {self.path} ({len(self.tests)} test(s))")


def html_extras(report: pytest.TestReport, captured: Capture) -> None:
    """Append the test's trace, timeline and SVG flame graphs to ``report.extras`` (pytest-html 4)."""
    from pytest_html import extras

    added: list[Any] = list(getattr(report, "extras", []))
    if captured.trace_error:
        added.append(extras.text(f"the trace could not be read: {captured.trace_error}", name="ktrace trace"))
    elif captured.armed:
        from ._timeline import render_timeline

        added.append(extras.text(captured.trace_text, name="ktrace trace"))
        added.append(extras.text(render_timeline(captured.timeline(), max_lines=None), name="ktrace timeline"))
    for artifact in captured.artifacts:
        if artifact.path.suffix == ".svg" and artifact.path.is_file():
            content = base64.b64encode(artifact.path.read_bytes()).decode()
            added.append(extras.svg(content, name=artifact.label))
    report.extras = added  # type: ignore[attr-defined]
