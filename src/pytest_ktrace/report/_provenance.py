"""Where a test traced, and with which probes, in its JUnit XML (``--junitxml``).

Each test that used the ``ktrace`` fixture (or was checked against a target by ``ktrace_requires``) gets these
``<property>`` elements, appended to ``item.user_properties`` as ``record_property`` does (so they also travel from
xdist workers to the controller):

* ``ktrace_target``: the target's name (``local``, the SSH host, ``fake:PROFILE``, ``labgrid:PLACE``);
* ``ktrace_backend``: the backend that reached it (``local``, ``ssh``, ``vm``, ``fake``, a plugin's);
* ``ktrace_kernel``: its kernel release; ``ktrace_arch``: its ``uname -m``; ``ktrace_features``: its tracefs
  features, comma-separated;
* ``ktrace_host``: the host given for an SSH target (the board leased from a pool, a labgrid place's
  ``NetworkService`` as ``user@address:port``);
* ``ktrace_labgrid_place``: the labgrid place the test held;
* ``ktrace_probe``, once per probe the test defined, in order: the line written to ``kprobe_events`` /
  ``uprobe_events`` with the run's names normalised as cassettes do (``p:<group>/<event:N> LOCATION ARGS``, N
  the probe's number in the test), so the properties of two runs diff cleanly; or the tracepoint's
  ``system:event``. A probe with a filter gets `` if FILTER`` after it (written to the event's ``filter`` file).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Optional

import pytest

from .._errors import KtraceError
from .._probes import ProbeSpec
from ..backends._base import TargetInfo

if TYPE_CHECKING:
    from .._session import TraceSession
    from .._targets import TargetSpec

__all__ = ["PREFIX", "probe_line", "record_session", "record_target", "target_properties"]

PREFIX = "ktrace_"


def target_properties(target: TargetSpec, info: TargetInfo) -> list[tuple[str, str]]:
    props = [
        ("ktrace_target", target.label if target.labgrid_place else info.name),
        ("ktrace_backend", target.backend),
        ("ktrace_kernel", info.release),
        ("ktrace_arch", info.arch),
        ("ktrace_features", ",".join(sorted(info.features))),
    ]
    if target.host:
        props.append(("ktrace_host", target.host))
    if target.labgrid_place:
        props.append(("ktrace_labgrid_place", target.labgrid_place))
    return props


def probe_line(spec: ProbeSpec, number: Optional[int] = None) -> str:
    """The probe's definition; with ``number`` (its place among the test's probes, from 1), normalised."""
    line = spec.render() if spec.is_dynamic else f"{spec.group}:{spec.event}"
    if number is not None and spec.is_dynamic:
        line = line.replace(f"{spec.group}/{spec.event}", f"<group>/<event:{number}>", 1)
    return f"{line} if {spec.filter}" if spec.filter else line


def record_target(item: pytest.Item, target: TargetSpec, info: TargetInfo) -> None:
    """Append the target properties once per test (a later call for the same test adds nothing)."""
    if not any(name == "ktrace_target" for name, _ in item.user_properties):
        item.user_properties.extend(target_properties(target, info))


def record_session(item: pytest.Item, target: TargetSpec, session: TraceSession) -> None:
    """At the ``ktrace`` fixture's teardown (the teardown report is the one junitxml reads properties from):
    the target, then one ``ktrace_probe`` per probe. Never raises: provenance must not fail a test."""
    with contextlib.suppress(KtraceError):
        record_target(item, target, session.target)
    for number, view in enumerate(session.probes, 1):
        item.user_properties.append(("ktrace_probe", probe_line(view.spec, number)))
