"""Places of a labgrid lab as SSH targets: ``--ktrace-labgrid-tags`` / ``--ktrace-labgrid-place``.

:mod:`._request` (what a test asks for: parsed with the options, no labgrid import), :mod:`._client` (a
synchronous client over labgrid's ``ClientSession``, one per process and coordinator), :mod:`._places` (a test's
place from reservation to release), :mod:`._records` (this machine's record of what its runs hold, so that a
killed run's place is released by the next run). labgrid itself is imported only when a test first needs a place.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Union

import pytest

from .._errors import CoordinatorUnreachable, LabgridError
from ._request import LabgridRequest

if TYPE_CHECKING:
    from ._places import Holding, PlaceBroker

__all__ = ["LabgridRequest", "hold_place"]

_BROKERS = pytest.StashKey[dict[str, Union["PlaceBroker", CoordinatorUnreachable]]]()


def hold_place(request: pytest.FixtureRequest, wanted: LabgridRequest) -> Holding:
    """The place this test runs on, acquired; release it with :meth:`Holding.release` after the test. Raises a
    :class:`~pytest_ktrace.LabgridError` naming what went wrong."""
    broker = _broker(request.config, wanted.coordinator)
    return broker.hold(wanted, request.node.nodeid)


def _broker(config: pytest.Config, address: str) -> PlaceBroker:
    """This run's broker of ``address``, started (and this machine's dead runs' places recovered) on first use. An
    unreachable coordinator is remembered: the run's later tests fail at once instead of waiting again."""
    from ._client import CoordinatorClient, labgrid_missing
    from ._places import PlaceBroker
    from ._records import HoldingRecords

    brokers = config.stash.setdefault(_BROKERS, {})
    known = brokers.get(address)
    if isinstance(known, CoordinatorUnreachable):
        raise CoordinatorUnreachable(
            f"{known} (at this run's first test that needed it)", coordinator=address, cause=known.cause
        )
    if known is not None:
        return known
    missing = labgrid_missing()
    if missing:
        raise LabgridError(missing, coordinator=address)
    client = CoordinatorClient(address)
    try:
        client.start()
    except CoordinatorUnreachable as exc:
        brokers[address] = exc
        raise
    broker = PlaceBroker(client, HoldingRecords(), progress=lambda text: _show(config, text), warn=_warn_test)
    from .._targets import state_key

    state = config.stash[state_key()]
    state.closers.append(lambda: _close(broker))
    brokers[address] = broker
    try:
        recovered = broker.recover()
    except LabgridError as exc:
        recovered = [f"could not release the places of this machine's ended runs: {exc}"]
    for line in recovered:
        _warn_test(line)
    return broker


def _close(broker: PlaceBroker) -> None:
    broker.warn = _warn_late
    broker.close()


def _show(config: pytest.Config, text: str) -> None:
    """A progress line the person running pytest sees now, output capture or not (an xdist worker's stderr goes
    to the terminal)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _warn_test(text: str) -> None:
    warnings.warn(pytest.PytestWarning(f"pytest-ktrace: {text}"), stacklevel=2)


def _warn_late(text: str) -> None:
    """After the last test, a warning would go nowhere."""
    sys.stderr.write(f"pytest-ktrace: {text}\n")
