"""Outputs CI tools read: --ktrace-json (also through xdist) and pytest-html extras."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SUITE = """
import pytest
from conftest import BIN

def test_passes(ktrace):
    entry = ktrace.uprobe(BIN, "setup_thing", irq="$arg1:s32")
    done = ktrace.uretprobe(BIN, "setup_thing", ret="$retval:s32")
    ktrace.run([BIN, "setup", "eth0", "30"])
    entry.assert_called_once_with(irq=30)

def test_fails(ktrace):
    done = ktrace.uretprobe(BIN, "setup_thing", ret="$retval:s32")
    ktrace.run([BIN, "setup", "eth0", "4000"])
    done.assert_returned(0)

@pytest.mark.ktrace_requires(kprobes=True)
def test_skipped(ktrace):
    pass

def test_without_ktrace():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, probed: Path) -> pytest.Pytester:
    pytester.makeconftest(f"BIN = {str(probed)!r}\n")
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    return pytester


@pytest.mark.parametrize("workers", [[], ["-p", "xdist", "-n", "2"]], ids=["one process", "xdist"])
def test_json_says_per_test_target_probes_counts_and_outcome(suite: pytest.Pytester, workers: list[str]) -> None:
    has_kprobes = Path("/sys/kernel/tracing/kprobe_events").exists()
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "--ktrace-json=out/ktrace.json", *workers)
    result.assert_outcomes(passed=3 if has_kprobes else 2, failed=1, skipped=0 if has_kprobes else 1)
    result.stdout.fnmatch_lines(["ktrace json: */out/ktrace.json (3 test(s))"])
    body = json.loads((suite.path / "out" / "ktrace.json").read_text())
    assert body["version"] == 1
    tests = {test["nodeid"].split("::")[1]: test for test in body["tests"]}
    assert sorted(tests) == ["test_fails", "test_passes", "test_skipped"]  # not test_without_ktrace

    passes = tests["test_passes"]
    assert passes["outcome"] == "passed" and passes["failure"] is None
    assert passes["target"] == {
        "name": "local",
        "backend": "local",
        "kernel": os.uname().release,
        "arch": os.uname().machine,
        "features": passes["target"]["features"],
    }
    assert "uprobes" in passes["target"]["features"]
    entry, done = passes["probes"]
    assert entry["kind"] == "uprobe" and entry["events"] == 1
    assert re.fullmatch(r"p:<group>/<event:1> \S+/probed:0x[0-9a-f]+ irq=%di:s32", entry["definition"])
    assert done["definition"].startswith("r:<group>/<event:2> ") and done["events"] == 1
    assert passes["lost_events"] == {}

    fails = tests["test_fails"]
    assert fails["outcome"] == "failed"
    assert fails["failure"].startswith("AssertionError: setup_thing returned -22 (expected 0)")
    assert fails["probes"][0]["events"] == 1
    if not has_kprobes:
        skipped = tests["test_skipped"]
        assert skipped["outcome"] == "skipped" and "no kprobes" in skipped["failure"]


def test_pytest_html_carries_the_trace_timeline_and_flame_graphs(suite: pytest.Pytester) -> None:
    pytest.importorskip("pytest_html")
    suite.makepyfile(
        test_flame="""
        def test_profiled(ktrace):
            with ktrace.profile(label="busy loop"):
                ktrace.run(["sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"])
            assert False, "fails on purpose"
        """
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "--html=report.html", "--self-contained-html")
    result.assert_outcomes(passed=2, failed=2, skipped=1)
    page = (suite.path / "report.html").read_text()
    blob = re.search(r'data-jsonblob="([^"]*)"', page)
    assert blob is not None
    data = json.loads(html.unescape(blob.group(1)))
    extras = {
        test["testId"].split("::")[1]: {extra["name"]: _data_uri(extra["content"]) for extra in test.get("extras", [])}
        for tests in data["tests"].values()
        for test in tests
    }
    fails = extras["test_fails"]
    assert "setup_thing" in fails["ktrace trace"]
    assert "setup_thing returned -22" in fails["ktrace timeline"]
    assert "ktrace trace" in extras["test_passes"]
    assert "ktrace trace" not in extras["test_without_ktrace"]
    svg = extras["test_profiled"]["flame graph (busy loop)"]
    assert svg.lstrip().startswith("<svg") and "busy loop" in svg


def _data_uri(content: str) -> str:
    """What a self-contained pytest-html page holds: ``data:<mime>;base64,<content>``."""
    head, _, payload = content.partition(",")
    assert head.startswith("data:") and head.endswith(";base64"), head
    return base64.b64decode(payload).decode()
