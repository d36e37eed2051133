"""The report hooks: what each test's reports carry (the trace section, flame graphs, HTML extras, the JSON
entry), the terminal summary of the targets reached, and the ``--ktrace-report`` index written at the end."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Optional

import pytest

if TYPE_CHECKING:
    from .._session import TraceSession
    from ._section import RunReport, TestFiles

__all__ = ["ReportIndexHooks", "TargetSummary", "after_report"]


def after_report(
    item: pytest.Item,
    report: pytest.TestReport,
    session: Optional[TraceSession],
    files: Optional[TestFiles],
    *,
    json_wanted: bool,
) -> None:
    """A test's report of one phase, annotated with what the test traced."""
    from ._ci_outputs import JSON_ATTR, html_extras, test_entry
    from ._flamegraphs import after_call as write_flamegraphs_after
    from ._section import annotate

    config = item.config
    html_wanted = session is not None and bool(config.getoption("htmlpath", default=None))
    write_flamegraphs_after(item, report, session, files.root if files is not None else None)
    captured = annotate(item, report, session, files, keep=json_wanted or html_wanted)
    if html_wanted and report.when == "call" and captured is not None:
        html_extras(report, captured)
    if json_wanted and report.when == "teardown":
        setattr(report, JSON_ATTR, test_entry(session, captured))


class TargetSummary:
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
        if self.targets:
            from .. import _indexed

            if _indexed._index_rows is _indexed._index_rows_python:
                terminalreporter.write_line(
                    "ktrace: the trace parser ran without its C helper (it is built when pytest-ktrace is installed "
                    "where a C compiler and the Python headers are): the same results, parsed slower"
                )


class ReportIndexHooks:
    """``--ktrace-report`` on the controller (or the only process): the reports of every phase of every test
    (under xdist the workers' reports, deserialized), and the index written once at the end."""

    def __init__(self, run_report: RunReport) -> None:
        self.run_report = run_report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.run_report.add(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        from .. import __version__

        self.run_report.write(__version__)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.run_report.written is not None:
            terminalreporter.write_line(f"ktrace report: {self.run_report.written}")
