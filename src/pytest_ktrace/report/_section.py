"""What pytest-ktrace adds to pytest's reports: the "ktrace trace" section of a failing test (timeline, then the
raw trace) and ``--ktrace-report=DIR`` (per-test trace and timeline files, attached artifacts, ``index.html``).

Data flow, also under pytest-xdist: when a test's call phase ends, :func:`capture` reads its session once. At its
teardown report, the process that ran it (a worker) writes the test's files under DIR and puts a JSON-able summary
on the report (attribute :data:`REPORT_ATTR`, which xdist serializes with the report). The controller collects
the reports of every phase in :class:`RunReport` and writes ``index.html`` once, at the end of the session.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import pytest

from .._events import Event
from .._probes import ProbeSpec
from ._artifacts import Artifact
from ._html import ArtifactLink, ProbeRow, TestRow, render_index
from ._timeline import Timeline, build_timeline, render_timeline

if TYPE_CHECKING:
    from .._session import TraceSession

__all__ = [
    "REPORT_ATTR",
    "WORKER_INPUT_KEY",
    "Capture",
    "RunReport",
    "TestFiles",
    "annotate",
    "capture",
    "failure_section",
    "resolve_report_dir",
]

REPORT_ATTR = "ktrace_report"  # the TestReport attribute carrying a test's summary to the controller
WORKER_INPUT_KEY = "ktrace_report_dir"  # xdist workerinput: the directory the controller resolved and checked
SECTION = "ktrace trace"
_SECTION_TRACE_LINES = 400
_TIMELINE_LINES = 60
_KERNEL_LOG_LINES = 40
_LONGREPR_CHARS = 20_000
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


_CAPTURE_KEY = pytest.StashKey["Capture"]()


def annotate(
    item: pytest.Item,
    report: pytest.TestReport,
    session: Optional[TraceSession],
    files: Optional[TestFiles],
    *,
    keep: bool = False,
) -> Optional[Capture]:
    """``pytest_runtest_makereport`` of one phase. The session is read when the test's call ends (or its setup
    failed): a failing call gets the "ktrace trace" section. With ``files`` (``--ktrace-report``), the teardown
    report carries the test's summary, written after the session's own teardown so that artifacts attached
    until the very end are included. ``keep``: read the session for other outputs too (JSON, pytest-html).
    Returns what was read, once the session ended."""
    session_ended = report.when == "call" or (report.when == "setup" and not report.passed)
    failed_call = report.when == "call" and report.failed
    if session is not None and session_ended and (files is not None or failed_call or keep):
        found = capture(session)
        item.stash[_CAPTURE_KEY] = found
        if failed_call and found.armed:
            report.sections.append((SECTION, failure_section(found)))
    uses_ktrace = session is not None or "ktrace" in getattr(item, "fixturenames", ())
    if report.when == "teardown" and files is not None and uses_ktrace:
        captured = item.stash.get(_CAPTURE_KEY, None)
        setattr(report, REPORT_ATTR, files.write(item.nodeid, captured, session.artifacts if session else ()))
    return item.stash.get(_CAPTURE_KEY, None)


# ------------------------------------------------------------------------------------------------ the directory
def resolve_report_dir(config: pytest.Config) -> Optional[Path]:
    """``--ktrace-report`` (relative to where pytest was started) or ini ``ktrace_report`` (relative to the ini
    file), created if needed and checked writable; None when neither is given. A bad directory is a usage error
    naming it, at startup."""
    workerinput: Optional[Mapping[str, Any]] = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get(WORKER_INPUT_KEY):
        return Path(str(workerinput[WORKER_INPUT_KEY]))  # checked by the controller
    raw = config.getoption("ktrace_report", default=None)
    if raw is not None:
        source, base = f"--ktrace-report={raw!r}", config.invocation_params.dir
    else:
        raw = config.getini("ktrace_report")
        if not raw:
            return None
        inipath = getattr(config, "inipath", None)
        source, base = f"ini ktrace_report={raw!r}", inipath.parent if inipath is not None else config.rootpath
    text = str(raw)
    if not text.strip():
        raise pytest.UsageError(f"pytest-ktrace: {source}: give the directory to write the report into")
    path = Path(os.path.abspath(os.path.join(base, os.path.expanduser(text))))
    _check_writable(path, source)
    return path


def _check_writable(path: Path, source: str) -> None:
    if path.exists() and not path.is_dir():
        raise pytest.UsageError(f"pytest-ktrace: {source}: {path} is a file, not a directory for the report")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise pytest.UsageError(
            f"pytest-ktrace: {source}: cannot create the report directory {path}: {exc.strerror or exc}"
        ) from None
    try:
        # os.access() says yes to root on a read-only mount: writing a file is the only real test
        fd, probe = tempfile.mkstemp(prefix=".ktrace-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise pytest.UsageError(
            f"pytest-ktrace: {source}: the report directory {path} is not writable: {exc.strerror or exc}"
        ) from None


# ----------------------------------------------------------------------------------------- one test's session
@dataclass
class Capture:
    """What one test's session held when its call phase ended (read once, for the section and the report)."""

    target: str = ""
    instance: str = ""
    armed: bool = False  # False: no probe was ever armed, so there is no trace to show
    trace_text: str = ""
    trace_error: str = ""  # why the trace could not be read
    events: Sequence[Event] = ()
    lost: Mapping[int, int] = field(default_factory=dict)
    probes: Sequence[tuple[ProbeSpec, Optional[int]]] = ()  # (definition, events seen; None if unknown)
    artifacts: Sequence[Artifact] = ()
    kernel_log: Sequence[str] = ()  # what the kernel printed while the test traced, one line each

    def timeline(self) -> Timeline:
        return build_timeline(self.events, [spec for spec, _ in self.probes])


def capture(session: TraceSession) -> Capture:
    """Read the session's trace now. Never raises: the report must not hide the test's own failure."""
    found = Capture(armed=session.armed, instance=session.instance, artifacts=session.artifacts)
    try:
        found.target = session.describe_target()
    except Exception as exc:
        found.target = f"(target unavailable: {exc})"
    views = session.probes
    if not found.armed:
        found.probes = [(view.spec, None) for view in views]
        return found
    try:
        parsed = session.collect()
        found.trace_text = session.trace_text
        found.kernel_log = [str(line) for line in session.kernel_log_lines(parsed)]
        found.events = list(parsed.events)
        found.lost = dict(parsed.lost)
    except Exception as exc:
        found.trace_error = str(exc) or type(exc).__name__
        found.probes = [(view.spec, None) for view in views]
        return found
    counts: list[tuple[ProbeSpec, Optional[int]]] = []
    for view in views:
        try:
            counts.append((view.spec, view.call_count))  # exact, also in stream mode
        except Exception:
            counts.append((view.spec, None))
    found.probes = counts
    return found


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _artifact_lines(artifacts: Sequence[Artifact]) -> list[str]:
    return [
        f"artifact {artifact.label}: {artifact.path}" + ("" if artifact.path.exists() else " (missing)")
        for artifact in artifacts
    ]


def failure_section(found: Capture) -> str:
    """The "ktrace trace" section: target, instance, artifacts, the timeline, then the raw trace (its last
    lines)."""
    header = [f"target: {found.target}", f"instance: {found.instance}", *_artifact_lines(found.artifacts)]
    if found.trace_error:
        return "\n".join([*header, f"(trace could not be read: {found.trace_error})"])
    lines = [line for line in found.trace_text.splitlines() if not line.startswith("#")]
    if not lines:
        return "\n".join([*header, "(no events recorded)"])
    timeline = render_timeline(found.timeline(), max_lines=_TIMELINE_LINES)
    log: list[str] = []
    if found.kernel_log:
        kept, count = found.kernel_log[-_KERNEL_LOG_LINES:], len(found.kernel_log)
        heading = (
            f"kernel log ({_plural(count, 'line')}):"
            if count == len(kept)
            else f"kernel log (the last {len(kept)} of {count} lines):"
        )
        log = [heading, *(f"  {line}" for line in kept)]
    title = f"raw trace ({_plural(len(lines), 'line')}):"
    if len(lines) > _SECTION_TRACE_LINES:
        title = f"raw trace (the last {_SECTION_TRACE_LINES} of {len(lines)} lines):"
        lines = [f"... {len(lines) - _SECTION_TRACE_LINES} earlier lines omitted ...", *lines[-_SECTION_TRACE_LINES:]]
    return "\n".join([*header, timeline, *log, title, *lines])


# --------------------------------------------------------------------------------------- per-test report files
def _slug(nodeid: str) -> str:
    """A directory name per test: readable, short, unique (the hash tells parametrized cases apart)."""
    digest = hashlib.sha1(nodeid.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    readable = _SLUG.sub("_", nodeid.replace("::", "__")).strip("._")[:80]
    return f"{readable}-{digest}"


def _definition(spec: ProbeSpec) -> str:
    return spec.render() if spec.is_dynamic else spec.display


@dataclass
class TestFiles:
    """Writes one test's files under the report directory and returns the summary its report carries."""

    __test__ = False  # not a pytest test class, whatever its name says

    root: Path

    def write(self, nodeid: str, found: Optional[Capture], artifacts: Sequence[Artifact]) -> dict[str, Any]:
        """``found`` is None when the test never got a session (its ktrace fixture failed, or it was skipped)."""
        summary: dict[str, Any] = {"artifacts": [], "probes": [], "events": 0, "lost": []}
        if found is None:
            return summary
        folder = self.root / _slug(nodeid)
        relative = folder.name
        summary.update(
            target=found.target,
            instance=found.instance,
            trace_error=found.trace_error,
            events=len(found.events),
            lost=[[cpu, count] for cpu, count in sorted(found.lost.items())],
            probes=[
                {
                    "kind": spec.kind,
                    "name": spec.display,
                    "definition": _definition(spec),
                    "filter": spec.filter or "",
                    "where": spec.where,
                    "count": count,
                }
                for spec, count in found.probes
            ],
        )
        try:
            if found.armed:
                folder.mkdir(parents=True, exist_ok=True)
                timeline = found.timeline()
                (folder / "trace.txt").write_text(
                    found.trace_text or f"(trace could not be read: {found.trace_error})\n",
                    encoding="utf-8",
                    errors="surrogateescape",
                )
                (folder / "timeline.txt").write_text(
                    render_timeline(timeline, max_lines=None) + "\n", encoding="utf-8", errors="surrogateescape"
                )
                summary.update(
                    trace=f"{relative}/trace.txt",
                    timeline_file=f"{relative}/timeline.txt",
                    timeline=render_timeline(timeline, max_lines=_TIMELINE_LINES),
                )
                if found.kernel_log:
                    (folder / "kernel-log.txt").write_text(
                        "\n".join(found.kernel_log) + "\n", encoding="utf-8", errors="surrogateescape"
                    )
                    summary.update(
                        kernel_log_file=f"{relative}/kernel-log.txt",
                        kernel_log="\n".join(found.kernel_log[-_KERNEL_LOG_LINES:]),
                    )
            summary["artifacts"] = [self._copy(folder, index, artifact) for index, artifact in enumerate(artifacts)]
        except OSError as exc:  # a full disk must not turn the test into an error: the summary says what failed
            summary["trace_error"] = f"writing the report files into {folder} failed: {exc}"
        return summary

    def _copy(self, folder: Path, index: int, artifact: Artifact) -> dict[str, Any]:
        entry: dict[str, Any] = {"label": artifact.label, "path": str(artifact.path), "href": None}
        source = artifact.path
        if not source.exists():
            return entry
        try:
            entry["href"] = source.relative_to(self.root).as_posix()  # already written into the report
            return entry
        except ValueError:
            pass
        target = folder / "artifacts" / f"{index}-{_SLUG.sub('_', source.name) or 'file'}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                shutil.copy2(source, target)
        except OSError as exc:  # unreadable, or the disk is full: the report links the original instead
            entry["error"] = f"could not copy it: {exc}"
            return entry
        entry["href"] = target.relative_to(self.root).as_posix()
        return entry


# ----------------------------------------------------------------------------------------- the whole run (index)
def _reason(report: pytest.TestReport) -> str:
    """One line for the row: the exception's message, or the skip/xfail reason."""
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None and not report.failed:
        return str(wasxfail) or "expected to fail"
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, lineno, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if message:
        return str(message)
    text = report.longreprtext.strip()
    return text.splitlines()[-1] if text else ""


@dataclass
class _Phases:
    reports: dict[str, pytest.TestReport] = field(default_factory=dict)
    summary: Optional[dict[str, Any]] = None

    def outcome(self) -> str:
        call = self.reports.get("call")
        setup = self.reports.get("setup")
        if call is not None and call.failed:
            return "failed"
        if any(report.failed for report in self.reports.values()):
            return "error"  # setup or teardown failed: pytest's "error"
        for report in (call, setup):
            if report is not None and hasattr(report, "wasxfail"):
                return "xfailed" if report.skipped else "xpassed"
        if any(report.skipped for report in self.reports.values()):
            return "skipped"
        return "passed"

    def messages(self) -> tuple[str, str]:
        """(one-line reason, full failure text) of the phases that did not pass."""
        reasons: list[str] = []
        texts: list[str] = []
        for when in ("setup", "call", "teardown"):
            report = self.reports.get(when)
            if report is None or (report.passed and not hasattr(report, "wasxfail")):
                continue
            reason = _reason(report)
            if reason:
                reasons.append(reason if when == "call" else f"in {when}: {reason}")
            if report.failed:
                text = report.longreprtext
                if len(text) > _LONGREPR_CHARS:
                    text = f"... {len(text) - _LONGREPR_CHARS} characters omitted ...\n" + text[-_LONGREPR_CHARS:]
                texts.append(text if when == "call" else f"[{when}]\n{text}")
        return "; ".join(reasons), "\n\n".join(texts)


class RunReport:
    """The controller's collection of every test's reports; writes ``index.html`` at the end of the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tests: dict[str, _Phases] = {}  # nodeid -> reports, in the order tests started
        self.written: Optional[Path] = None

    def add(self, report: pytest.TestReport) -> None:
        summary = getattr(report, REPORT_ATTR, None)
        phases = self._tests.get(report.nodeid)
        if phases is None:
            if report.when != "setup" and summary is None:
                return  # not a test of ours (its setup report would have opened it... or carried no summary)
            phases = self._tests.setdefault(report.nodeid, _Phases())
        phases.reports[report.when] = report
        if isinstance(summary, dict):
            phases.summary = summary
        elif report.when == "teardown" and phases.summary is None:
            del self._tests[report.nodeid]  # finished without ktrace: nothing of it goes into the index

    def rows(self) -> list[TestRow]:
        rows: list[TestRow] = []
        for nodeid, phases in self._tests.items():
            summary = phases.summary
            if summary is None:
                continue  # the test did not use ktrace
            message, longrepr = phases.messages()
            rows.append(
                TestRow(
                    nodeid=nodeid,
                    outcome=phases.outcome(),
                    duration=sum(float(report.duration) for report in phases.reports.values()),
                    message=message,
                    longrepr=longrepr,
                    target=str(summary.get("target", "")),
                    instance=str(summary.get("instance", "")),
                    probes=[
                        ProbeRow(
                            kind=str(probe.get("kind", "")),
                            name=str(probe.get("name", "")),
                            definition=str(probe.get("definition", "")),
                            filter=str(probe.get("filter", "")),
                            where=str(probe.get("where", "")),
                            count=probe.get("count") if isinstance(probe.get("count"), int) else None,
                        )
                        for probe in summary.get("probes", [])
                    ],
                    events=int(summary.get("events", 0)),
                    lost=[(int(cpu), int(count)) for cpu, count in summary.get("lost", [])],
                    trace_href=summary.get("trace"),
                    timeline_href=summary.get("timeline_file"),
                    timeline=str(summary.get("timeline", "")),
                    kernel_log_href=summary.get("kernel_log_file"),
                    kernel_log=str(summary.get("kernel_log", "")),
                    trace_error=str(summary.get("trace_error", "")),
                    artifacts=[
                        ArtifactLink(
                            str(item.get("label", "")),
                            item.get("href"),
                            str(item.get("path", "")),
                            str(item.get("error", "")),
                        )
                        for item in summary.get("artifacts", [])
                    ],
                )
            )
        return rows

    def write(self, version: str) -> Path:
        page = render_index(self.rows(), generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), version=version)
        target = self.root / "index.html"
        scratch = target.with_name(".index.html.tmp")
        scratch.write_text(page, encoding="utf-8", errors="surrogateescape")
        os.replace(scratch, target)  # a browser reloading it never sees half a page
        self.written = target
        return target
