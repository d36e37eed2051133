"""What loading the plugin brings into a pytest run that traces nothing: the modules it imports, checked at the
end of real runs (subprocesses, with the plugins installed in this environment), never a timing."""

from __future__ import annotations

import json
import os
import sys

import pytest

import pytest_ktrace
from pytest_ktrace import plugin

# What the entry point itself needs to declare options, ini keys, markers, fixtures and hooks.
_ENTRY_POINT = {
    "pytest_ktrace",
    "pytest_ktrace._choices",
    "pytest_ktrace._markers",
    "pytest_ktrace.hookspecs",
    "pytest_ktrace.plugin",
}
# Imported only for a test that traces: third-party libraries of the backends and the parsers.
_HEAVY_LIBRARIES = ("paramiko", "elftools", "cryptography", "grpc", "labgrid")

# Each process of the inner run (xdist workers too) writes what it imported, as it ends.
_CONFTEST = """
import json, os, sys

def pytest_unconfigure(config):
    out = config.rootpath / "modules" / f"{os.getpid()}.json"
    out.write_text(json.dumps(sorted(sys.modules)))
"""


def _modules_of_runs(pytester: pytest.Pytester, *args: str) -> list[set[str]]:
    """The modules each process of ``pytest ARGS`` had imported when it ended (one set per process)."""
    out = pytester.mkdir("modules")
    pytester.makeconftest(_CONFTEST)
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n\ndef test_other():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    runs = [set(json.loads(path.read_text())) for path in sorted(out.iterdir())]
    assert runs, "the inner run did not report its modules"
    return runs


def _ours(modules: set[str]) -> set[str]:
    return {name for name in modules if name == "pytest_ktrace" or name.startswith("pytest_ktrace.")}


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="run"),
        pytest.param(["--collect-only"], id="collect-only"),
        pytest.param(["-v"], id="verbose-header"),
        pytest.param(["-n", "2", "-p", "xdist"], id="xdist"),
    ],
)
def test_a_run_without_ktrace_tests_imports_only_the_entry_point(pytester: pytest.Pytester, args: list[str]) -> None:
    for modules in _modules_of_runs(pytester, *args):
        assert _ours(modules) == _ENTRY_POINT
        assert not [name for name in modules if name.split(".")[0] in _HEAVY_LIBRARIES]


def test_the_same_beside_labgrids_own_plugin(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in an environment with labgrid installed: its plugin loads (and imports labgrid), ours stays thin."""
    pytest.importorskip("labgrid")
    addopts = os.environ.get("PYTEST_ADDOPTS", "").replace("-p no:labgrid", "").strip()
    monkeypatch.setenv("PYTEST_ADDOPTS", addopts)
    for modules in _modules_of_runs(pytester):
        assert "labgrid.pytestplugin" in modules  # it really was loaded
        assert _ours(modules) == _ENTRY_POINT
        assert not [name for name in modules if name.split(".")[0] in ("paramiko", "elftools")]


def test_a_ktrace_test_imports_what_it_needs(pytester: pytest.Pytester) -> None:
    """The counterpart, so that the check above can fail: one test using the fixture brings the tracing modules."""
    pytester.makepyfile(test_traced="def test_traced(ktrace):\n    pass\n")
    for modules in _modules_of_runs(pytester, "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.1-x86_64"):
        assert {"pytest_ktrace._session", "pytest_ktrace._targets", "pytest_ktrace.fake"} <= _ours(modules)


def test_import_pytest_ktrace_imports_no_submodule() -> None:
    import subprocess

    code = "import sys, pytest_ktrace; print(sorted(m for m in sys.modules if m.startswith('pytest_ktrace')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "['pytest_ktrace']"


def test_the_header_on_the_defaults_is_what_resolving_them_says(pytester: pytest.Pytester) -> None:
    """A run that sets no ktrace option prints the header without resolving the settings; with an option set to
    its default value, the settings are resolved, and the line must be the same."""
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    plain = pytester.runpytest("-p", "no:cacheprovider")
    resolved = pytester.runpytest("-p", "no:cacheprovider", "--ktrace-backend=local")
    assert [line for line in plain.outlines if line.startswith("ktrace:")] == [plugin._DEFAULT_HEADER]
    assert [line for line in resolved.outlines if line.startswith("ktrace:")] == [plugin._DEFAULT_HEADER]


def test_errors_still_hide_our_frames() -> None:
    """The entry point's ``__tracebackhide__`` hides its frames for a KtraceError only."""

    class Info:
        def __init__(self, value: BaseException) -> None:
            self.value = value

    hide = plugin.__tracebackhide__
    assert hide(Info(pytest_ktrace.TargetError("gone")))
    assert not hide(Info(ValueError("a bug of ours")))


def test_no_option_is_set_by_default(pytester: pytest.Pytester) -> None:
    """The entry point skips resolving the settings when no option or ini key is set: every option must then
    read as unset (None on the command line, empty in the ini file), else a set default would be skipped."""
    config = pytester.parseconfigure()
    assert plugin._OPTION_DESTS
    for dest in plugin._OPTION_DESTS:
        assert config.getoption(dest) is None, dest
        assert not config.getini(dest), dest
    assert not plugin._settings_given(config)
