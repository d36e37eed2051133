"""``--ktrace-flamegraph=failed|all``: a test's ``ktrace.profile()`` blocks written as SVG flame graphs (and the
folded stacks, for other tools) and attached to its report."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Sequence

import pytest

from .._choices import FLAMEGRAPH_MODES
from .._errors import KtraceError
from .._files import write_atomic
from .._perf import Profile

if TYPE_CHECKING:
    from .._session import TraceSession

__all__ = ["FlamegraphMode", "after_call", "flamegraph_dir", "flamegraph_mode", "flamegraph_paths", "write_flamegraphs"]

FlamegraphMode = Literal["none", "failed", "all"]
MODES: tuple[str, ...] = FLAMEGRAPH_MODES

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _stem(nodeid: str) -> str:
    stem = _UNSAFE.sub("_", nodeid.replace("::", "__").replace("/", "_")).strip("_.")
    return stem[:150] or "test"


def flamegraph_paths(directory: Path, nodeid: str, count: int) -> list[Path]:
    stem = _stem(nodeid)
    return [directory / (f"{stem}.svg" if count == 1 else f"{stem}.{n + 1}.svg") for n in range(count)]


def write_flamegraphs(
    profiles: Sequence[Profile], *, nodeid: str, directory: Path, target: str
) -> list[tuple[str, Path]]:
    """Write each profile as ``<test>.svg`` plus ``<test>.folded`` under ``directory``; returns (label, svg)."""
    written: list[tuple[str, Path]] = []
    for profile, path in zip(profiles, flamegraph_paths(directory, nodeid, len(profiles))):
        what = profile.label or "profile"
        title = f"{nodeid} - {what} on {target} ({profile.samples} samples at {profile.frequency} Hz)"
        write_atomic(path, profile.svg(title).encode(), what="flame graph")
        write_atomic(path.with_suffix(".folded"), profile.folded_text().encode(), what="folded stacks")
        profile.svg_path = str(path)
        written.append((f"flame graph ({what})", path))
    return written


def flamegraph_mode(config: pytest.Config) -> FlamegraphMode:
    """``--ktrace-flamegraph`` > ini ``ktrace_flamegraph`` > ``failed``; a bad value is a usage error."""
    raw = config.getoption("ktrace_flamegraph", default=None) or config.getini("ktrace_flamegraph") or "failed"
    if raw not in MODES:
        raise pytest.UsageError(f"pytest-ktrace: --ktrace-flamegraph={raw!r}: choose one of {', '.join(MODES)}")
    return raw  # type: ignore[return-value]


def flamegraph_dir(config: pytest.Config, report_dir: Optional[Path]) -> Path:
    """Next to the HTML report when there is one, else ``.ktrace/flamegraphs`` under the rootdir."""
    return (report_dir / "flamegraphs") if report_dir is not None else config.rootpath / ".ktrace" / "flamegraphs"


def after_call(
    item: pytest.Item, report: pytest.TestReport, session: Optional[TraceSession], report_dir: Optional[Path]
) -> None:
    """``pytest_runtest_makereport`` of the call phase: write and attach the test's flame graphs when asked."""
    if session is None or report.when != "call" or not session.profiles:
        return
    mode = flamegraph_mode(item.config)
    if mode == "none" or (mode == "failed" and not report.failed):
        return
    directory = flamegraph_dir(item.config, report_dir)
    try:
        written = write_flamegraphs(
            session.profiles, nodeid=item.nodeid, directory=directory, target=session.target.name
        )
    except KtraceError as exc:  # a full disk must not hide the test's own result
        report.sections.append(("ktrace flame graph", f"not written: {exc}"))
        return
    for label, path in written:
        session.attach(label, path)
