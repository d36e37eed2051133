"""backends._base.capable(): isinstance() against a capability Protocol, remembered per backend class only when
the class answers it."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_ktrace.backends import _base
from pytest_ktrace.backends._base import Injecting, PreparingRuns, SharedFilesystem, capable
from pytest_ktrace.fake._backend import FakeBackend
from pytest_ktrace.snapshots._snapshot import load_snapshot


class _Injects:
    def inject_probe(self, *args: Any, **kwargs: Any) -> int:
        return 0


class _Plain:
    pass


class _Local:
    def __init__(self, local: bool) -> None:
        if local:
            self.files_are_local = True


@pytest.fixture(autouse=True)
def _forget() -> None:
    _base._BY_CLASS.clear()


@pytest.mark.parametrize("backend", [_Injects(), _Plain(), FakeBackend(load_snapshot("debian-6.1-arm64"))])
@pytest.mark.parametrize("capability", [Injecting, PreparingRuns])
def test_it_answers_as_isinstance_and_remembers_a_class_that_has_it(backend: object, capability: type) -> None:
    expected = isinstance(backend, capability)
    assert [capable(backend, capability) for _ in range(3)] == [expected] * 3
    assert ({(type(backend), capability)} if expected else set()) == _base._BY_CLASS


def test_a_method_given_to_one_instance_is_asked_of_each_instance() -> None:
    given = _Plain()
    given.inject_probe = lambda *args, **kwargs: 0  # type: ignore[attr-defined]
    assert capable(given, Injecting)
    assert not capable(_Plain(), Injecting)
    assert not _base._BY_CLASS


def test_a_capability_with_data_members_is_asked_of_each_backend() -> None:
    assert capable(_Local(True), SharedFilesystem)
    assert not capable(_Local(False), SharedFilesystem)
    assert capable(_Local(True), SharedFilesystem)
    assert not _base._BY_CLASS
