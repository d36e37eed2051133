"""Hooks other plugins implement to extend pytest-ktrace (added in ``pytest_addhooks``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import pytest

if TYPE_CHECKING:
    from ._targets import TargetSpec
    from .backends._base import Backend

__all__ = ["pytest_ktrace_make_backend", "pytest_ktrace_target_ready"]


@pytest.hookspec(firstresult=True)
def pytest_ktrace_make_backend(config: pytest.Config, target: TargetSpec) -> Optional[Backend]:
    """Return a backend for ``target`` (``target.backend`` names the kind: ``local``, ``ssh``, or your own),
    or ``None`` to let another implementation answer. The built-in backends are ``trylast`` implementations,
    so yours is asked first. Called once per distinct target per test run (per xdist worker)."""


@pytest.hookspec
def pytest_ktrace_target_ready(config: pytest.Config, target: TargetSpec, backend: Backend) -> None:
    """Called after a backend was made and described, before the first test uses it (e.g. to log or
    prepare the target)."""
