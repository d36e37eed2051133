"""CI's switch (``KTRACE_NO_SKIPS=1``, set by .ci/run): a skip anywhere in the repository's suites becomes a failure
that keeps the skip's reason, so a CI machine that lost a tool (qemu, a package list, gcc) goes red instead of
green with fewer tests. Without the switch, skips stay skips (a developer's machine may lack a guest's tools)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SUITE = """
import pytest

@pytest.fixture
def tool():
    pytest.skip("gcc not installed")

def test_skips_itself():
    pytest.skip("qemu-system-aarch64 not found")

def test_fixture_skips(tool):
    pass

@pytest.mark.skipif(True, reason="no arm64 package lists")
def test_marked():
    pass

@pytest.mark.ktrace(vm="arm64")
def test_in_a_guest(ktrace):
    pass

@pytest.mark.xfail(strict=True, reason="a known failure")
def test_known_failure():
    assert False

def test_passes():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makepyfile(
        test_suite=SUITE, test_module='import pytest\npytest.skip("no sshd", allow_module_level=True)\n'
    )
    # the guest's qemu is looked up on PATH: here it is not there, as on a machine that lost the package
    monkeypatch.setenv("PATH", str(pytester.path))
    return pytester


def test_with_the_switch_every_skip_fails_with_its_reason(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTRACE_NO_SKIPS", "1")
    # a collection error stops a run before its tests: the other skips are shown running on regardless
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, failed=1, errors=4, xfailed=1)  # a skip in setup: an error
    for reason in (
        "qemu-system-aarch64 not found",
        "gcc not installed",
        "no arm64 package lists",
        "pytest-ktrace: cannot boot the arm64 guest: qemu-system-aarch64 not found*",
        "no sshd",
    ):
        result.stdout.fnmatch_lines([f"*KTRACE_NO_SKIPS=1 (CI) makes every skip a failure: {reason}*"])
    assert suite.runpytest_subprocess("-p", "no:cacheprovider").ret == pytest.ExitCode.INTERRUPTED


def test_without_it_skips_stay_skips(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KTRACE_NO_SKIPS", raising=False)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=1, skipped=5, xfailed=1)
