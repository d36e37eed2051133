"""The public surface: what ``pytest_ktrace`` exports, and the names users catch errors by."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

import pytest_ktrace
from pytest_ktrace import backends


def test_every_exported_name_resolves() -> None:
    for name in pytest_ktrace.__all__:
        assert getattr(pytest_ktrace, name) is not None, name
    assert sorted(pytest_ktrace.__all__) == pytest_ktrace.__all__
    assert set(pytest_ktrace.__all__) <= set(dir(pytest_ktrace))


def test_every_error_is_public_under_its_own_name() -> None:
    errors = [getattr(pytest_ktrace, name) for name in pytest_ktrace.__all__]
    errors = [cls for cls in errors if isinstance(cls, type) and issubclass(cls, pytest_ktrace.KtraceError)]
    assert len(errors) >= 25
    for cls in errors:
        # what a traceback prints, and what pickle (pytest-xdist) looks up
        assert cls.__module__ == "pytest_ktrace", cls
        assert getattr(pytest_ktrace, cls.__qualname__) is cls


def test_errors_cross_processes() -> None:
    error = pytest_ktrace.UnknownParameter("irq='irqs': __setup_irq() has no parameter 'irqs'")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_backend_authors_find_the_contract_in_one_place() -> None:
    for name in ("Backend", "Streaming", "FileFetching", "SharedFilesystem", "Injecting", "Imitating", "TraceStream"):
        assert getattr(backends, name) is getattr(pytest_ktrace, name)


def test_internal_modules_are_private() -> None:
    import pkgutil

    public = {"plugin", "hookspecs", "backends", "btf", "fake", "guests", "recording", "report", "snapshots"}
    for module in pkgutil.iter_modules(pytest_ktrace.__path__):
        assert module.name in public or module.name.startswith("_"), module.name


@pytest.mark.parametrize("name", ["KtraceError", "TraceSession", "UnknownMember"])
def test_importing_the_package_stays_light(name: str) -> None:
    """``import pytest_ktrace`` loads no tracing machinery until a name is used (the plugin loads on every run)."""
    code = (
        "import sys, pytest_ktrace\n"
        "heavy = ('pytest_ktrace._session', 'pytest_ktrace._parse', 'pytest_ktrace.btf')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        f"getattr(pytest_ktrace, {name!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
