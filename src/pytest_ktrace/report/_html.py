"""``index.html`` of ``--ktrace-report=DIR``: one self-contained page (inline CSS and JS, no network).

Everything is in the HTML itself, so the page reads without JavaScript; the script only adds an outcome filter,
expand/collapse buttons and a "showing N of M" line. Every piece of text from a test, a probe or a trace is
HTML-escaped (probe definitions, comms and messages can hold ``<``, ``&`` and quotes).
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence
from urllib.parse import quote

__all__ = ["OUTCOMES", "ArtifactLink", "ProbeRow", "TestRow", "render_index"]

# in the order the summary and the filter list them
OUTCOMES = ("failed", "error", "xpassed", "xfailed", "skipped", "passed")
_SUMMARY_CHARS = 240


@dataclass(frozen=True)
class ProbeRow:
    kind: str
    name: str
    definition: str  # the line written to *_events (spec.render()), or the tracepoint's name
    filter: str = ""
    where: str = ""  # file:line of the definition
    count: Optional[int] = None  # events of this probe; None: not known (never armed, trace unreadable)


@dataclass(frozen=True)
class ArtifactLink:
    label: str
    href: Optional[str]  # relative to the report directory; None when the file was missing
    path: str  # where the test attached it from
    error: str = ""  # why it is not in the report (it could not be copied)


@dataclass(frozen=True)
class TestRow:
    """One test that used ktrace, as the report shows it."""

    __test__ = False  # not a pytest test class, whatever its name says

    nodeid: str
    outcome: str
    duration: float
    message: str = ""  # the failure/skip reason in one or a few lines
    longrepr: str = ""  # the full failure text
    target: str = ""
    instance: str = ""
    probes: Sequence[ProbeRow] = ()
    events: int = 0
    lost: Sequence[tuple[int, int]] = ()  # (cpu, count); cpu -1: the count of all CPUs together
    trace_href: Optional[str] = None
    timeline_href: Optional[str] = None
    timeline: str = ""
    kernel_log_href: Optional[str] = None
    kernel_log: str = ""  # its last lines, shown under a failing test
    trace_error: str = ""
    artifacts: Sequence[ArtifactLink] = field(default_factory=tuple)

    @property
    def lost_total(self) -> int:
        return sum(count for _, count in self.lost)

    @property
    def failed(self) -> bool:
        return self.outcome in ("failed", "error")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(relative: str) -> str:
    return _e(quote(relative, safe="/"))


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


_CSS = """
:root { --fg: #1d232a; --muted: #5b6672; --line: #d7dde3; --bg-alt: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 1.5em; }
h1 { font-size: 1.5em; margin: 0 0 .3em; }
.meta { color: var(--muted); margin: 0 0 .8em; }
ul.totals { list-style: none; padding: 0; margin: 0 0 1em; display: flex; gap: .5em; flex-wrap: wrap; }
ul.totals li, .badge { padding: .1em .6em; border-radius: 1em; font-weight: 600; white-space: nowrap; }
#ktrace-controls { margin: 0 0 1em; display: flex; gap: 1em; align-items: center; flex-wrap: wrap; }
#ktrace-controls label { cursor: pointer; }
#ktrace-controls button { font: inherit; padding: .15em .7em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .35em .5em; border-bottom: 1px solid var(--line); }
th { background: var(--bg-alt); position: sticky; top: 0; }
tbody.test:nth-of-type(even) tr.summary { background: #fbfcfd; }
td.nodeid { font-family: ui-monospace, "DejaVu Sans Mono", monospace; word-break: break-all; min-width: 16em; }
td.num { text-align: right; white-space: nowrap; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
ul.probes { margin: 0; padding-left: 1.1em; }
ul.probes code { word-break: break-all; }
.where, .none { color: var(--muted); }
td.target { max-width: 20em; font-size: 12.5px; }
td.probes { max-width: 44em; }
td.target, td.probes, .where, code { overflow-wrap: anywhere; }
tr.details td { background: var(--bg-alt); padding-left: 1.5em; }
pre { margin: .3em 0 .6em; padding: .5em; background: #fff; border: 1px solid var(--line); overflow-x: auto; }
details > summary { cursor: pointer; font-weight: 600; }
.lost { color: #b42318; font-weight: 600; }
.badge.outcome-passed, .totals .outcome-passed { background: #dcfce7; color: #14532d; }
.badge.outcome-failed, .totals .outcome-failed { background: #fee2e2; color: #7f1d1d; }
.badge.outcome-error, .totals .outcome-error { background: #fecaca; color: #7f1d1d; }
.badge.outcome-skipped, .totals .outcome-skipped { background: #e5e7eb; color: #374151; }
.badge.outcome-xfailed, .totals .outcome-xfailed { background: #ffedd5; color: #7c2d12; }
.badge.outcome-xpassed, .totals .outcome-xpassed { background: #fef9c3; color: #713f12; }
tbody.test.outcome-failed td.outcome, tbody.test.outcome-error td.outcome { border-left: 4px solid #dc2626; }
tbody.test.outcome-failed tr.summary, tbody.test.outcome-error tr.summary { background: #fff7f7; }
"""

# Plain ES5 so any browser runs it; it only hides/shows what the HTML already contains.
_JS = """
(function () {
  var bodies = Array.prototype.slice.call(document.querySelectorAll("tbody.test"));
  var controls = document.getElementById("ktrace-controls");
  if (!controls || !bodies.length) { return; }
  var counts = {};
  bodies.forEach(function (body) {
    var outcome = body.getAttribute("data-outcome");
    counts[outcome] = (counts[outcome] || 0) + 1;
  });
  var filter = document.createElement("div");
  filter.id = "ktrace-filter";
  filter.appendChild(document.createTextNode("Show: "));
  var boxes = [];
  ORDER.forEach(function (outcome) {
    if (!counts[outcome]) { return; }
    var label = document.createElement("label");
    var box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.value = outcome;
    box.addEventListener("change", apply);
    boxes.push(box);
    label.appendChild(box);
    label.appendChild(document.createTextNode(" " + outcome + " (" + counts[outcome] + ") "));
    label.className = "badge outcome-" + outcome;
    filter.appendChild(label);
  });
  var shown = document.createElement("span");
  shown.id = "ktrace-shown";
  function button(text, open) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.addEventListener("click", function () {
      document.querySelectorAll("tbody.test details").forEach(function (d) { d.open = open; });
    });
    return b;
  }
  function apply() {
    var wanted = {};
    boxes.forEach(function (box) { wanted[box.value] = box.checked; });
    var visible = 0;
    bodies.forEach(function (body) {
      var show = wanted[body.getAttribute("data-outcome")] !== false;
      body.hidden = !show;
      if (show) { visible += 1; }
    });
    shown.textContent = "showing " + visible + " of " + bodies.length + " tests";
  }
  controls.appendChild(filter);
  controls.appendChild(button("expand all", true));
  controls.appendChild(button("collapse all", false));
  controls.appendChild(shown);
  apply();
})();
"""


def _short_site(where: str) -> str:
    path, colon, line = where.rpartition(":")
    return f"{os.path.basename(path)}:{line}" if colon and line.isdigit() else os.path.basename(where)


def _probe_list(row: TestRow) -> str:
    if not row.probes:
        return '<span class="none">no probes</span><br>'
    items = []
    for probe in row.probes:
        count = "?" if probe.count is None else str(probe.count)
        extra = f" filter <code>{_e(probe.filter)}</code>" if probe.filter else ""
        # the file name and line are what a reader needs; the full path is in the tooltip
        where = f' <span class="where" title="{_e(probe.where)}">{_e(_short_site(probe.where))}</span>'
        where = where if probe.where else ""
        # a tracepoint's definition is its name, already shown
        definition = f"<br><code>{_e(probe.definition)}</code>" if probe.definition != probe.name else ""
        items.append(
            f'<li><b>{_e(probe.name)}</b> ({_e(probe.kind)}): <span class="count">{_e(count)}</span> '
            f"event{'s' if probe.count != 1 else ''}{definition}{extra}{where}</li>"
        )
    return '<ul class="probes">' + "".join(items) + "</ul>"


def _files(row: TestRow) -> str:
    links = []
    if row.trace_href:
        links.append(f'<a href="{_href(row.trace_href)}">trace</a>')
    if row.timeline_href:
        links.append(f'<a href="{_href(row.timeline_href)}">timeline</a>')
    if row.kernel_log_href:
        links.append(f'<a href="{_href(row.kernel_log_href)}">kernel log</a>')
    for artifact in row.artifacts:
        if artifact.href:
            links.append(f'<a class="artifact" href="{_href(artifact.href)}">{_e(artifact.label)}</a>')
        else:
            why = artifact.error or "missing"
            links.append(
                f'<span class="none" title="{_e(artifact.path)}">{_e(artifact.label)} ({_e(why)}: '
                f"{_e(artifact.path)})</span>"
            )
    return "<br>".join(links) or '<span class="none">none</span>'


def _lost(row: TestRow) -> str:
    if not row.lost:
        return "0"
    where = ", ".join(f"{count} on CPU {cpu}" if cpu >= 0 else f"{count}" for cpu, count in row.lost)
    return f'<span class="lost" title="{_e(where)}">{row.lost_total}</span>'


def _details(row: TestRow) -> str:
    """The part below the row: the failure, the timeline of failing tests, why the trace is missing."""
    parts = []
    if row.message or row.longrepr:
        what = {"skipped": "reason", "xfailed": "reason", "xpassed": "reason"}.get(row.outcome, "failure")
        # the summary line is the message's first line; the whole text is in the <pre> below it
        first = row.message.strip().splitlines()[0] if row.message.strip() else ""
        if len(first) > _SUMMARY_CHARS:
            first = first[: _SUMMARY_CHARS - 3] + "..."
        parts.append(
            f'<details class="message"{" open" if row.failed else ""}><summary>{what}: {_e(first)}</summary>'
            + (f"<pre>{_e(row.longrepr)}</pre>" if row.longrepr else "")
            + "</details>"
        )
    if row.trace_error:
        parts.append(f'<p class="lost">trace could not be read: {_e(row.trace_error)}</p>')
    if row.failed and row.timeline:
        parts.append(
            f'<details class="timeline" open><summary>timeline</summary><pre>{_e(row.timeline)}</pre></details>'
        )
    if row.failed and row.kernel_log:
        parts.append(
            f'<details class="timeline" open><summary>kernel log</summary><pre>{_e(row.kernel_log)}</pre></details>'
        )
    if not parts:
        return ""
    return f'<tr class="details"><td colspan="7">{"".join(parts)}</td></tr>'


def _row(row: TestRow) -> str:
    outcome = _e(row.outcome)
    target = _e(row.target) + (f'<br><span class="where">{_e(row.instance)}</span>' if row.instance else "")
    total = f'<span class="where">{row.events} event{"s" if row.events != 1 else ""} in all</span>'
    return (
        f'<tbody class="test outcome-{outcome}" data-outcome="{outcome}">'
        f'<tr class="summary"><td class="nodeid">{_e(row.nodeid)}</td>'
        f'<td class="outcome"><span class="badge outcome-{outcome}">{outcome}</span></td>'
        f'<td class="num">{_e(_duration(row.duration))}</td>'
        f'<td class="target">{target}</td>'
        f'<td class="probes">{_probe_list(row)}{total}</td>'
        f'<td class="num">{_lost(row)}</td>'
        f"<td>{_files(row)}</td></tr>" + _details(row) + "</tbody>"
    )


def render_index(rows: Sequence[TestRow], *, generated: str, version: str) -> str:
    """The whole page; ``generated`` is when (free text), ``version`` the plugin's."""
    counts = {outcome: sum(1 for row in rows if row.outcome == outcome) for outcome in OUTCOMES}
    totals = "".join(
        f'<li class="outcome-{outcome}">{count} {outcome}</li>' for outcome, count in counts.items() if count
    )
    body = "".join(_row(row) for row in rows) or (
        '<tbody><tr><td colspan="7" class="none">no test used the ktrace fixture</td></tr></tbody>'
    )
    order = "[" + ", ".join(f'"{outcome}"' for outcome in OUTCOMES) + "]"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>pytest-ktrace report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n<header>\n<h1>pytest-ktrace report</h1>\n"
        f'<p class="meta">{len(rows)} test{"s" if len(rows) != 1 else ""} used ktrace; generated {_e(generated)} '
        f"by pytest-ktrace {_e(version)}</p>\n"
        f'<ul class="totals">{totals}</ul>\n<div id="ktrace-controls"></div>\n</header>\n'
        '<table id="ktrace-tests">\n<thead><tr><th>test</th><th>outcome</th><th>duration</th><th>target</th>'
        "<th>probes (events)</th><th>lost</th><th>files</th></tr></thead>\n"
        f"{body}\n</table>\n<script>var ORDER = {order};{_JS}</script>\n</body>\n</html>\n"
    )
