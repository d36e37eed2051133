"""Failure-report timelines and ``--ktrace-report=DIR``, end to end through pytester: on this machine's kernel
(uprobes on tests/prog/probed.c), on the fake backend, under pytest-xdist, and rendered by headless Chromium."""

from __future__ import annotations

import html
import re
import shutil
import struct
import subprocess
import textwrap
import zlib
from pathlib import Path

import pytest

from pytest_ktrace import KtraceError
from pytest_ktrace.report._artifacts import make_artifact
from pytest_ktrace.report._html import ArtifactLink, ProbeRow, TestRow, render_index

pytest_plugins = ["pytester"]

HOSTILE = "pr<&\"'>b"  # a binary (and so a comm) name that is all HTML metacharacters
FAKE = ("--ktrace-backend=fake", "--ktrace-snapshot=debian-6.1-x86_64")


@pytest.fixture
def suite(pytester: pytest.Pytester, probed: Path) -> pytest.Pytester:
    """A pytester dir whose conftest names the probed binary twice: as built, and copied to a hostile name."""
    hostile = pytester.path / "bin" / HOSTILE
    hostile.parent.mkdir()
    shutil.copy2(probed, hostile)
    pytester.makeconftest(f"BIN = {str(probed)!r}\nHOSTILE_BIN = {str(hostile)!r}\n")
    return pytester


def _write(pytester: pytest.Pytester, body: str, name: str = "test_it") -> Path:
    return pytester.makepyfile(
        **{name: "from conftest import BIN, HOSTILE_BIN\nimport pytest\n" + textwrap.dedent(body)}
    )


def _section(output: str) -> list[str]:
    """The lines of the first "ktrace trace" report section."""
    lines = output.splitlines()
    start = next(index for index, line in enumerate(lines) if re.fullmatch(r"-+ ktrace trace -+", line))
    end = next((index for index in range(start + 1, len(lines)) if re.match(r"^(=+|_+|-+) ", lines[index])), len(lines))
    return lines[start + 1 : end]


# ------------------------------------------------------------------------------------ the failure section
def test_failure_section_shows_the_timeline_before_the_raw_trace_real_kernel(suite: pytest.Pytester) -> None:
    _write(
        suite,
        """
        @pytest.mark.ktrace(scope="run")  # only our command's exec: other tests may run on this machine
        def test_fib(ktrace):
            entry = ktrace.uprobe(BIN, "fib", n="$arg1:s32")
            done = ktrace.uretprobe(BIN, "fib")
            ktrace.tracepoint("sched:sched_process_exec")
            ktrace.run([BIN, "fib", "3"])
            ktrace.attach("notes", "notes.txt")
            done.assert_returned(0)

        def test_passes(ktrace):
            ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "1"])
        """,
    )
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    section = _section(result.stdout.str())
    assert section[0].startswith("target: local local: Linux")
    assert section[1].startswith("instance: ktrace_")
    assert section[2] == f"artifact notes: {suite.path / 'notes.txt'} (missing)"
    assert re.fullmatch(
        r"timeline: 11 events as 5 calls, 1 single event; time from the first event at [\d.]+", section[3]
    )
    timeline = section[4:10]
    bodies = [line.split(" | ", 1)[1] for line in timeline]
    assert bodies[0].startswith("sched:sched_process_exec filename='/")  # the exec of the command, before its calls
    assert bodies[1:] == [
        "fib(n=3) = 2",
        "  fib(n=2) = 1",
        "    fib(n=1) = 1",
        "    fib(n=0) = 0",
        "  fib(n=1) = 1",
    ]
    for line in timeline:
        assert len(line) <= 100
        assert re.match(r"^ +\+\d+\.\d{6} probed-\d+ ", line)
    assert all(re.search(r"\d \u00b5s \| ", line) for line in timeline[1:])  # every call has a latency
    assert section[10] == "raw trace (11 lines):"
    assert sum(1 for line in section[11:] if "u_fib_" in line) == 5
    assert "test_passes" not in result.stdout.str().split("short test summary")[0].split("ktrace trace")[1]


def test_failure_section_on_the_fake_backend_with_injected_calls(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fake="""
        def test_injected(ktrace):
            setup = ktrace.kprobe("__setup_irq", irq="%di:u32", name="+0(+80(%si)):string")
            done = ktrace.kretprobe("__setup_irq")
            exec_ = ktrace.tracepoint("sched:sched_process_exec")
            ktrace.inject(setup, irq=16, name="rtc0", comm="modprobe", pid=321)
            ktrace.inject(setup, irq=17, name="rtc1", comm="modprobe", pid=321)  # nested: a second registration
            ktrace.inject(done, ret=0, comm="modprobe", pid=321)
            ktrace.inject(done, ret=-22, comm="modprobe", pid=321)
            ktrace.inject(setup, irq=18, name="late", comm="other", pid=99)  # never returns
            ktrace.inject(exec_, filename="/bin/true", pid=5, old_pid=5, comm="true", task_pid=5)
            done.assert_returned(0)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", *FAKE)
    result.assert_outcomes(failed=1)
    section = _section(result.stdout.str())
    assert section[0].startswith("target: fake fake:debian-6.1-x86_64: Linux 6.1")
    assert section[2].startswith("timeline: 6 events as 2 calls, 1 single event, 1 unmatched;")
    bodies = [line.split(" | ", 1)[1] for line in section[3:7]]
    assert bodies == [
        "__setup_irq(irq=16, name='rtc0') = -22",
        "  __setup_irq(irq=17, name='rtc1') = 0",
        "__setup_irq(irq=18, name='late') ... no return traced",
        "sched:sched_process_exec filename='/bin/true', pid=5, old_pid=5",  # pid= is the event's own field
    ]
    assert re.search(r" modprobe-321 +[\d.]+ (\u00b5s|ms) \| __setup_irq\(irq=16", section[3])
    assert " other-99 " in section[5] and " true-5 " in section[6]
    assert section[7] == "raw trace (6 lines):"


# ----------------------------------------------------------------------------------- --ktrace-report=DIR
REPORT_SUITE = """
    import os

    @pytest.fixture
    def breaks_at_teardown(ktrace):
        yield
        raise RuntimeError("teardown <broke> & said so")

    def test_fails(ktrace, tmp_path):
        entry = ktrace.uprobe(BIN, "fib", n="$arg1:s32", filter="n < 100 && n >= 0")
        done = ktrace.uretprobe(BIN, "fib")
        ktrace.run([BIN, "fib", "3"])
        notes = tmp_path / "notes <1>.txt"
        notes.write_text("what the test saw & why\\n")
        ktrace.attach("notes <&>", notes)
        ktrace.attach("flame graph", tmp_path / "not-written.svg")
        done.assert_returned(0)

    def test_passes(ktrace):
        setup = ktrace.uprobe(HOSTILE_BIN, "setup_thing", irq="$arg1:s32", name="+0($arg2):string",
                              filter='irq < 100 && name ~ "e<t>h*"')
        ktrace.run([HOSTILE_BIN, "setup", 'e<t>h&0"', "4"])
        ktrace.run([HOSTILE_BIN, "setup", "eth0", "5"])
        setup.assert_called_once_with(irq=4, name='e<t>h&0"')

    @pytest.mark.xfail(reason="known <bug> & co")
    def test_xfails(ktrace):
        ktrace.uprobe(BIN, "fib")
        ktrace.run([BIN, "fib", "2"])
        assert False

    def test_skips(ktrace):
        pytest.skip("no <board> & co")

    @pytest.mark.ktrace(scope="run")
    def test_errors(ktrace, breaks_at_teardown):
        ktrace.tracepoint("sched:sched_process_exec")
        ktrace.run([BIN, "fib", "1"])

    def test_no_ktrace():
        pass
"""


def _rows(page: str) -> dict[str, str]:
    """nodeid -> the HTML of its <tbody> in index.html."""
    rows = {}
    for match in re.finditer(r'<tbody class="test [^"]*" data-outcome="([a-z]+)">(.*?)</tbody>', page, re.S):
        nodeid = re.search(r'<td class="nodeid">(.*?)</td>', match.group(2))
        assert nodeid is not None
        rows[html.unescape(nodeid.group(1))] = match.group(0)
    return rows


def _outcome(row: str) -> str:
    found = re.search(r'data-outcome="([a-z]+)"', row)
    assert found is not None
    return found.group(1)


def _links(row: str) -> dict[str, str]:
    """label -> href of the row's links (labels and hrefs unescaped)."""
    return {
        html.unescape(label): html.unescape(href)
        for href, label in re.findall(r'<a [^>]*href="([^"]+)">(.*?)</a>', row)
    }


def test_report_dir_has_one_row_per_ktrace_test_with_files_and_escaping(suite: pytest.Pytester) -> None:
    _write(suite, REPORT_SUITE)
    out = suite.path / "out"
    result = suite.runpytest("-p", "no:cacheprovider", f"--ktrace-report={out}")
    result.assert_outcomes(failed=1, passed=3, skipped=1, xfailed=1, errors=1)
    result.stdout.fnmatch_lines([f"ktrace report: {out / 'index.html'}"])
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"<(link|img|iframe)\b|<script\s+src|https?://", page), "the page must be self-contained"
    rows = _rows(page)
    assert {nodeid: _outcome(row) for nodeid, row in rows.items()} == {
        "test_it.py::test_fails": "failed",
        "test_it.py::test_passes": "passed",
        "test_it.py::test_xfails": "xfailed",
        "test_it.py::test_skips": "skipped",
        "test_it.py::test_errors": "error",
    }  # test_no_ktrace did not use ktrace: no row

    failed = rows["test_it.py::test_fails"]
    assert "local local: Linux" in failed and re.search(r'<td class="num">\d+ ms</td>', failed)
    entry_line = re.search(r"p:ktrace_\w+/u_fib_\d+ [^ <]+probed[^ <]*:0x[0-9a-f]+ n=%di:s32", failed)
    assert entry_line is not None, failed
    assert "filter <code>n &lt; 100 &amp;&amp; n &gt;= 0</code>" in failed
    assert re.search(r'<b>fib</b> \(uprobe\): <span class="count">5</span> events', failed)
    assert re.search(r'<b>fib</b> \(uretprobe\): <span class="count">5</span> events', failed)
    assert '<td class="num">0</td>' in failed  # nothing lost
    assert "fib returned 1, 2 (expected 0)" in failed  # the failure message...
    assert "<pre>" in failed and "done.assert_returned(0)" in failed  # ...and the full failure text
    assert "fib(n=3) = 2" in failed and "  fib(n=2) = 1" in failed  # the timeline of a failure
    links = _links(failed)
    assert set(links) == {"trace", "timeline", "notes <&>"}
    trace = (out / links["trace"]).read_text()
    assert trace.startswith("# tracer: nop") and trace.count(": u_fib_") == 5  # the raw trace, complete
    assert (out / links["timeline"]).read_text().startswith("timeline: 10 events as 5 calls")
    assert (out / links["notes <&>"]).read_text() == "what the test saw & why\n"  # copied into DIR
    assert "flame graph (missing: " in failed and "not-written.svg" in failed

    passed = rows["test_it.py::test_passes"]
    escaped_bin = html.escape(HOSTILE, quote=True)
    assert escaped_bin in passed and HOSTILE not in page  # the hostile path in the probe definition...
    assert "filter <code>irq &lt; 100 &amp;&amp; name ~ &quot;e&lt;t&gt;h*&quot;</code>" in passed
    assert '<span class="count">1</span> event<br>' in passed
    assert '<details class="timeline"' not in passed  # only failures show their timeline inline
    timeline = (out / _links(passed)["timeline"]).read_text()
    assert f"{HOSTILE}-" in timeline and "setup_thing(irq=4, name='e<t>h&0\"')" in timeline  # ...its comm

    assert "no &lt;board&gt; &amp; co" in rows["test_it.py::test_skips"]
    assert "no probes" in rows["test_it.py::test_skips"] and "trace" not in _links(rows["test_it.py::test_skips"])
    assert "known &lt;bug&gt; &amp; co" in rows["test_it.py::test_xfails"]
    errored = rows["test_it.py::test_errors"]
    assert "in teardown: RuntimeError: teardown &lt;broke&gt; &amp; said so" in errored
    assert "sched:sched_process_exec</b> (tracepoint): " in errored
    assert "<script>" not in page.replace("<script>var ORDER", "", 1)  # one script: ours


def test_nothing_is_written_without_the_option(suite: pytest.Pytester) -> None:
    _write(suite, REPORT_SUITE)

    def files() -> set[Path]:
        # pytest-benchmark makes .benchmarks in every rootdir it sees
        return {path for path in suite.path.rglob("*") if not {"__pycache__", ".benchmarks"} & set(path.parts)}

    before = files()
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=3, skipped=1, xfailed=1, errors=1)
    assert files() == before
    assert "ktrace report:" not in result.stdout.str()


def test_ini_key_is_relative_to_the_ini_file(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    suite.makeini("[pytest]\nktrace_report = reports/ktrace\n")
    _write(suite, "def test_one(ktrace):\n    ktrace.uprobe(BIN, 'fib'); ktrace.run([BIN, 'fib', '1'])\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = suite.runpytest("-p", "no:cacheprovider", str(suite.path))
    result.assert_outcomes(passed=1)
    assert (suite.path / "reports" / "ktrace" / "index.html").exists()
    assert [path.name for path in elsewhere.iterdir()] in ([], [".benchmarks"])  # pytest-benchmark's
    # the command line wins over the ini file, and is relative to where pytest was started
    result = suite.runpytest("-p", "no:cacheprovider", str(suite.path), "--ktrace-report=mine")
    result.assert_outcomes(passed=1)
    assert "test_it.py::test_one" in (elsewhere / "mine" / "index.html").read_text()


def test_xdist_workers_write_test_files_and_the_controller_the_index(suite: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    _write(
        suite,
        """
        @pytest.mark.ktrace(scope="run")
        @pytest.mark.parametrize("n", range(6))
        def test_each(ktrace, n):
            done = ktrace.uretprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "2"])
            assert n != 3, "three <is> out"
            done.assert_any_return(1)

        @pytest.mark.xfail(reason="flaky & known")
        def test_xfail(ktrace):
            assert False
        """,
    )
    out = suite.path / "out"
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-p", "xdist", f"--ktrace-report={out}")
    result.assert_outcomes(passed=5, failed=1, xfailed=1)
    assert result.stdout.str().count("ktrace report: ") == 1
    page = (out / "index.html").read_text()
    rows = _rows(page)
    assert sorted(rows) == sorted([f"test_it.py::test_each[{n}]" for n in range(6)] + ["test_it.py::test_xfail"])
    assert _outcome(rows["test_it.py::test_each[3]"]) == "failed"
    assert "three &lt;is&gt; out" in rows["test_it.py::test_each[3]"]  # the message survived serialization
    assert "| fib returned 1\n" in rows["test_it.py::test_each[3]"]  # its timeline
    assert _outcome(rows["test_it.py::test_xfail"]) == "xfailed" and "flaky &amp; known" in page
    instances = {m.group(1) for m in re.finditer(r"(ktrace_[0-9a-f]+_\d+)_[0-9a-f]+_\d+</span>", page)}
    assert len(instances) == 2, "both workers ran tests (one pytest pid each)"
    for nodeid, row in rows.items():
        if nodeid != "test_it.py::test_xfail":
            trace = (out / _links(row)["trace"]).read_text()
            assert trace.count(": ur_fib_") == 3, nodeid


@pytest.mark.parametrize("case", ["file", "under-a-file", "not-writable", "empty"])
def test_unusable_report_dir_is_a_usage_error_naming_it(suite: pytest.Pytester, case: str) -> None:
    _write(suite, "def test_x(ktrace): pass\n")
    (suite.path / "report.txt").write_text("not a directory")
    path = {
        "file": suite.path / "report.txt",
        "under-a-file": suite.path / "report.txt" / "sub",
        "not-writable": Path("/proc/self"),  # a directory not even root can write a file into
        "empty": "",
    }[case]
    result = suite.runpytest("-p", "no:cacheprovider", f"--ktrace-report={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    expected = {
        "file": f"*--ktrace-report=*: {path} is a file, not a directory for the report*",
        "under-a-file": f"*: cannot create the report directory {path}: *",
        "not-writable": "*: the report directory /proc/self is not writable: *",
        "empty": "*--ktrace-report='': give the directory to write the report into*",
    }[case]
    result.stderr.fnmatch_lines([expected])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


# ----------------------------------------------------------------------------------- the page, in a browser
def _png_colours(path: Path, enough: int = 50) -> int:
    """Distinct pixel values of an 8-bit RGB/RGBA PNG (stops counting at ``enough``), decoded with the stdlib."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, chunk = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and not interlace, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = zlib.decompress(idat)
    previous = bytearray(stride)
    seen: set[bytes] = set()
    for row in range(height):
        kind = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        seen.update(bytes(line[i : i + channels]) for i in range(0, stride, channels * 7))
        if len(seen) >= enough:
            return len(seen)
        previous = line
    return len(seen)


def test_index_renders_in_headless_chromium(pytester: pytest.Pytester, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is needed: apt-get install chromium (Debian package 'chromium')")
    pytester.makepyfile(
        test_fake="""
        import pytest

        def test_injected(ktrace):
            setup = ktrace.kprobe("__setup_irq", irq="%di:u32", name="+0(+80(%si)):string")
            done = ktrace.kretprobe("__setup_irq")
            ktrace.inject(setup, irq=16, name="rtc<0>", comm='m<o>d&"', pid=321)
            ktrace.inject(done, ret=-22, comm='m<o>d&"', pid=321)
            done.assert_returned(0)

        def test_passes(ktrace):
            setup = ktrace.kprobe("__setup_irq", irq="%di:u32")
            ktrace.inject(setup, irq=1)
            setup.assert_called_once()

        def test_skips(ktrace):
            pytest.skip("later")
        """
    )
    out = pytester.path / "out"
    pytester.runpytest("-p", "no:cacheprovider", *FAKE, f"--ktrace-report={out}").assert_outcomes(
        failed=1, passed=1, skipped=1
    )
    url = (out / "index.html").as_uri()
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    for outcome in ("failed", "passed", "skipped"):
        assert f'<tbody class="test outcome-{outcome}" data-outcome="{outcome}">' in dom
    assert dom.count('<tr class="summary">') == 3
    # made by the script, so present only if it ran: the filter with one checkbox per outcome, the counter
    assert re.search(r'<div id="ktrace-filter">Show: <label class="badge outcome-\w+"><input type="checkbox"', dom)
    assert '<span id="ktrace-shown">showing 3 of 3 tests</span>' in dom
    assert 'm&lt;o&gt;d&amp;"-321' in dom or "m&lt;o&gt;d&amp;&quot;-321" in dom  # the comm, escaped, in the timeline
    shot = tmp_path / "index.png"
    subprocess.run(
        [*browser, "--window-size=1280,900", f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True
    )
    assert shot.stat().st_size > 10_000
    assert _png_colours(shot) >= 50  # text, badges and tints: a blank or one-colour page has a handful


# ----------------------------------------------------------------------------------------------- units
def test_render_index_escapes_every_text_it_is_given() -> None:
    evil = "<script>alert('x')</script>&\""
    row = TestRow(
        nodeid=f"t.py::test[{evil}]",
        outcome="failed",
        duration=1.5,
        message=evil,
        longrepr=evil,
        target=evil,
        instance=evil,
        probes=[ProbeRow("uprobe", evil, evil, filter=evil, where=evil, count=2)],
        events=2,
        lost=[(1, 3), (-1, 4)],
        trace_href=f"dir/{evil}.txt",
        timeline=evil,
        trace_error=evil,
        artifacts=[ArtifactLink(evil, f"a/{evil}", evil), ArtifactLink(evil, None, evil, error=evil)],
    )
    page = render_index([row], generated=evil, version=evil)
    assert "<script>alert" not in page and "alert('x')" not in page
    assert page.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;") >= 10
    assert 'href="dir/%3Cscript%3Ealert%28%27x%27%29%3C/script%3E%26%22.txt"' in page
    assert '<span class="lost" title="3 on CPU 1, 4">7</span>' in page
    assert page.count("<script>") == 1


def test_render_index_of_a_run_without_ktrace_tests() -> None:
    page = render_index([], generated="now", version="0")
    assert "no test used the ktrace fixture" in page and "0 tests used ktrace" in page


@pytest.mark.parametrize(
    ("label", "path", "message"),
    [
        ("", "x", "label must be a non-empty str"),
        ("a\nb", "x", "contains a newline"),
        (3, "x", "label must be a non-empty str, got int"),
        ("ok", 5, "path must be a str or a path-like, got int"),
        ("ok", "", "path must not be empty"),
        ("ok", "a\0b", "contains a newline or NUL"),
    ],
)
def test_attach_refuses_bad_labels_and_paths(label: object, path: object, message: str) -> None:
    with pytest.raises(KtraceError, match=re.escape(message)):
        make_artifact(label, path)


def test_attach_resolves_a_relative_path_when_attached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    artifact = make_artifact("graph", "out/flame.svg")
    assert artifact.path == tmp_path / "out" / "flame.svg"
