"""Tests on places of a real labgrid lab (coordinator and exporter on 127.0.0.1, see conftest.py): each test
reserves, acquires and releases its place through the coordinator, and traces this machine's kernel over SSH."""

from __future__ import annotations

import json
import platform
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
LAB_MODULE = Path(__file__).with_name("lab.py")

# An inner test that traces an exec on its place and checks, through the coordinator, that the place it runs on is
# acquired by this machine's owner for a reservation while it runs.
ON_PLACE = f"""
import importlib.util
import json
import os
import sys

import pytest

spec = importlib.util.spec_from_file_location("lab_view", {str(LAB_MODULE)!r})
lab_view = sys.modules["lab_view"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab_view)


@pytest.mark.parametrize("n", range(2))
def test_exec_on_a_place(ktrace, ktrace_target, n):
    execs = ktrace.tracepoint("sched:sched_process_exec")
    result = ktrace.run(["/bin/true"])
    execs.assert_any_call(filename="/bin/true", pid=result.pid)
    place = ktrace_target.settings.target.labgrid_place
    lab = lab_view.Lab(None, port=int(os.environ["LAB_PORT"]))
    seen = lab.places()[place]
    assert seen.acquired == lab_view.my_owner() and seen.reservation
    with open(os.environ["PLACES_LOG"], "a") as log:
        log.write(json.dumps([place, seen.reservation]) + "\\n")
"""


def _log(pytester: pytest.Pytester) -> list[tuple[str, str]]:
    path = pytester.path / "places.log"
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []


def _run(pytester: pytest.Pytester, lab: object, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_on_place=ON_PLACE)
    env = {"LAB_PORT": str(lab.port), "PLACES_LOG": str(pytester.path / "places.log")}  # type: ignore[attr-defined]
    for key, value in env.items():
        pytester._monkeypatch.setenv(key, value)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def _idle(lab: object) -> None:
    """Every place released, every reservation cancelled."""
    assert all(place.acquired is None for place in lab.places().values()), lab.places()  # type: ignore[attr-defined]
    assert lab.reservations() == [], lab.reservations()  # type: ignore[attr-defined]


def test_a_suite_runs_on_a_place_chosen_by_tags(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str], sshd_server: object
) -> None:
    junit = pytester.path / "junit.xml"
    result = _run(
        pytester,
        loop_lab,
        f"--ktrace-labgrid={loop_lab.address}",  # type: ignore[attr-defined]
        "--ktrace-labgrid-tags=lab=loop,slot=b",
        *ssh_args,
        f"--junitxml={junit}",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"ktrace: backend ssh, target a labgrid tags lab=loop,slot=b at {loop_lab.address}: *",  # type: ignore[attr-defined]
            f"ktrace: labgrid:loop-b (backend ssh): Linux {platform.release()} {platform.machine()}; *2 test(s)",
        ]
    )
    runs = _log(pytester)
    assert [place for place, _ in runs] == ["loop-b", "loop-b"]
    assert runs[0][1] != runs[1][1], "each test reserves anew"
    props = [
        {p.get("name"): p.get("value") for p in case.iter("property")} for case in ET.parse(junit).iter("testcase")
    ]
    assert [(p["ktrace_target"], p["ktrace_labgrid_place"]) for p in props] == [("labgrid:loop-b", "loop-b")] * 2
    assert props[0]["ktrace_host"] == f"ktrace-root@127.0.0.1:{sshd_server.port}"  # type: ignore[attr-defined]
    _idle(loop_lab)
