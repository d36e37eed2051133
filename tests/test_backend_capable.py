"""backends._base.capable(): isinstance() against a capability Protocol, remembered once true: per backend class
when the class answers it, else per backend; a capability of methods only is remembered missing per backend."""

from __future__ import annotations

import gc
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
    _base._BY_BACKEND.clear()
    _base._LACKING.clear()


@pytest.mark.parametrize("backend", [_Injects(), _Plain(), FakeBackend(load_snapshot("debian-6.1-arm64"))])
@pytest.mark.parametrize("capability", [Injecting, PreparingRuns])
def test_it_answers_as_isinstance_and_remembers_a_class_that_has_it(backend: object, capability: type) -> None:
    expected = isinstance(backend, capability)
    assert [capable(backend, capability) for _ in range(3)] == [expected] * 3
    assert ({(type(backend), capability)} if expected else set()) == _base._BY_CLASS


def test_a_method_given_to_one_instance_is_remembered_for_that_instance() -> None:
    given = _Plain()
    given.inject_probe = lambda *args, **kwargs: 0  # type: ignore[attr-defined]
    assert capable(given, Injecting)
    assert not capable(_Plain(), Injecting)
    assert not _base._BY_CLASS
    assert dict(_base._BY_BACKEND) == {given: {Injecting}}


def test_a_capability_with_data_members_is_remembered_per_backend() -> None:
    local, remote = _Local(True), _Local(False)
    assert [capable(local, SharedFilesystem), capable(remote, SharedFilesystem)] * 2 == [True, False] * 2
    assert not _base._BY_CLASS
    assert dict(_base._BY_BACKEND) == {local: {SharedFilesystem}}


class _Unhashable(_Local):
    __hash__ = None  # type: ignore[assignment]


def test_a_backend_that_cannot_be_remembered_is_asked_each_time() -> None:
    backend = _Unhashable(True)
    assert capable(backend, SharedFilesystem) and capable(backend, SharedFilesystem)
    assert not capable(_Unhashable(False), SharedFilesystem)
    assert not _base._BY_BACKEND


def test_a_backend_is_not_kept_alive_by_what_it_can() -> None:
    backend = _Local(True)
    assert capable(backend, SharedFilesystem)
    del backend
    gc.collect()
    assert not _base._BY_BACKEND


def test_a_backend_without_methods_is_remembered_so_one_without_data_is_asked_again() -> None:
    plain, remote = _Plain(), _Local(False)
    assert not capable(plain, PreparingRuns) and not capable(remote, SharedFilesystem)
    assert dict(_base._LACKING) == {plain: {PreparingRuns}}  # methods do not come later; data may
    remote.files_are_local = True  # type: ignore[attr-defined]
    assert capable(remote, SharedFilesystem)
    plain.run_prepared = lambda *args, **kwargs: None  # type: ignore[attr-defined]
    assert not capable(plain, PreparingRuns), "remembered: a backend's methods are fixed when it is first asked"
