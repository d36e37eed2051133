from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ktrace_testing import build_probed


@pytest.fixture(scope="session")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/prog/probed.c built with gcc -O0 -g (PIE), named `probed` (its comm in traces)."""
    out = tmp_path_factory.mktemp("prog")
    target = out / "probed"
    shutil.copy2(build_probed(out), target)
    return target


# The caches of the run that started the tests (guest images and debs, kernel BTF), as pytester's HOME hides them.
_CACHE_HOME = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


@pytest.fixture(autouse=True)
def _shared_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytester points HOME at each test's own directory: without this, every inner run that boots a guest
    would download the kernel packages and build the images again, and fetch the guest's BTF again."""
    monkeypatch.setenv("XDG_CACHE_HOME", _CACHE_HOME)


@pytest.fixture(autouse=True)
def _no_labgrid_plugin_inside(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """labgrid's own pytest plugin (loaded from its entry point when labgrid is installed) starts a process-wide
    step logger in pytest_configure, so an in-process pytest run inside another one (pytester's inline runs) fails
    with an INTERNALERROR. The runs of pytester leave it out; tests of both plugins together put it back."""
    if "pytester" not in request.fixturenames:
        return
    request.getfixturevalue("pytester")  # it clears PYTEST_ADDOPTS when it starts
    addopts = os.environ.get("PYTEST_ADDOPTS", "")
    monkeypatch.setenv("PYTEST_ADDOPTS", f"{addopts} -p no:labgrid".strip())


def pytest_configure(config: pytest.Config) -> None:
    # The suite runs pytest-ktrace inside itself: inner runs count what is left in tracefs and remove what they
    # judge to be dead runs' leftovers (some with a shortened heartbeat age). So this outer run keeps no probes
    # armed between its own tests; inner runs park theirs as any user's run does (tests/test_parking.py).
    if config.getoption("ktrace_fresh_probes", default=None) is None and not config.getini("ktrace_fresh_probes"):
        config.option.ktrace_fresh_probes = True
