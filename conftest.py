"""Repository-wide test configuration: real tracefs is required here, never silently replaced.

CI sets ``KTRACE_NO_SKIPS=1``: everything in this repository can run on the machines CI runs on (root, tracefs,
uprobes, qemu for the guests, gcc, sshd), so there a skip means something went missing (a package list, a tool,
an image) and is turned into a failure that keeps the skip's reason, wherever the skip comes from: a test, a
fixture, the plugin's own requirement checks, a module-level skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Union

import pytest

NO_SKIPS = os.environ.get("KTRACE_NO_SKIPS") == "1"


def _skip_reason(report: Union[pytest.CollectReport, pytest.TestReport]) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason


def _refuse_skip(report: Union[pytest.CollectReport, pytest.TestReport]) -> None:
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):  # a strict xfail is not a skip
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"skipped, and KTRACE_NO_SKIPS=1 (CI) makes every skip a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _refuse_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _refuse_skip(outcome.get_result())
