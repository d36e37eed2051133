"""perf_stat() and profile() on this machine's real perf and kernel (and, unchanged, over SSH: see
tests/ssh/test_perf_over_ssh.py). Expected numbers come from the kernel's behaviour, and perf's own answer
decides whether hardware counters exist here."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ktrace_testing import run_pytest
from pytest_ktrace import KtraceError

pytestmark = pytest.mark.skipif(shutil.which("perf") is None, reason="perf is not installed (apt install linux-perf)")


def _perf_supports(event: str) -> bool:
    """What perf itself says about ``event`` on this machine (the reference for the unsupported path)."""
    out = subprocess.run(["perf", "stat", "-x,", "-e", event, "true"], capture_output=True, text=True, check=False)
    return "<not supported>" not in out.stderr


def test_counts_are_exact_and_the_command_keeps_its_output(ktrace) -> None:
    with ktrace.perf_stat(["sched:sched_process_exec", "task-clock"]) as stat:
        result = ktrace.run(["sh", "-c", "/bin/true; /bin/true; echo out; echo err >&2; exit 3"])
    # the command's own stdout, stderr and exit status, untouched by the wrapper
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    # execs: the wrapper's sh (that hands over the pid), the command's sh, two /bin/true
    stat.assert_count("sched:sched_process_exec", exactly=4)
    assert stat["task-clock"] > 0
    assert stat.values["task-clock"].unit == "msec"
    with pytest.raises(AssertionError, match=r"sched_process_exec counted 4 \(expected exactly 5\)"):
        stat.assert_count("sched:sched_process_exec", exactly=5)


def test_counts_add_up_over_the_commands_of_the_block(ktrace) -> None:
    with ktrace.perf_stat(["sched:sched_process_exec"]) as stat:
        ktrace.run(["/bin/true"])
        ktrace.run(["/bin/true"])
    assert stat.runs == 2
    stat.assert_count("sched:sched_process_exec", exactly=4)
    outside = ktrace.run(["/bin/true"])  # after the block: not wrapped, not counted
    assert outside.returncode == 0 and stat["sched:sched_process_exec"] == 4


def test_system_wide_counts_what_else_happens(ktrace, tmp_path: Path) -> None:
    # a process of our own that execs /bin/true in a loop while the measured command sleeps
    busy = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
    try:
        with ktrace.perf_stat(["sched:sched_process_exec"], system_wide=True) as wide:
            ktrace.run(["sleep", "0.3"])
        with ktrace.perf_stat(["sched:sched_process_exec"]) as own:
            ktrace.run(["sleep", "0.3"])
    finally:
        busy.kill()
        busy.wait()
    own.assert_count("sched:sched_process_exec", exactly=2)
    wide.assert_count("sched:sched_process_exec", at_least=10)
    assert "system-wide" in str(wide)


def test_the_pid_is_the_commands_and_scope_run_follows_it_not_perf(ktrace, probed: Path) -> None:
    entry = ktrace.uprobe(str(probed), "setup_thing", irq="$arg1:s32")
    with ktrace.perf_stat(["task-clock"]):
        result = ktrace.run([str(probed), "setup", "eth0", "7"])
    entry.assert_called_once_with(irq=7)
    assert entry.events[0].pid == result.pid


@pytest.mark.ktrace(scope="run")
def test_scope_run_traces_the_command_not_perf(ktrace) -> None:
    execs = ktrace.tracepoint("sched:sched_process_exec")
    with ktrace.perf_stat(["task-clock"]):
        result = ktrace.run(["sh", "-c", "/bin/true"])
    comms = {event.comm for event in execs.events}
    assert "perf" not in comms, comms
    # the command's own exec (pid = result.pid), then its child's; nothing of perf or the wrapper before it
    assert [event["filename"] for event in execs.events] == ["/usr/bin/sh", "/bin/true"]
    assert execs.events[0].pid == result.pid != execs.events[1].pid


def test_unsupported_counters_follow_perfs_own_answer(ktrace) -> None:
    supported = _perf_supports("cycles")
    with ktrace.perf_stat(["cycles", "task-clock"], unsupported="ignore") as stat:
        ktrace.run(["/bin/true"])
    if supported:
        assert stat.unsupported == {} and stat["cycles"] > 0
    else:
        assert stat.unsupported == {"cycles": "<not supported>"}
        with pytest.raises(AssertionError, match=r"cycles is <not supported>, it has no count"):
            stat["cycles"]
    assert stat["task-clock"] > 0


def test_bad_events_are_refused_before_anything_runs(ktrace) -> None:
    with pytest.raises(KtraceError, match="not one perf event name"), ktrace.perf_stat(["task-clock,cycles"]):
        pass
    with pytest.raises(KtraceError, match="non-empty list"), ktrace.perf_stat("task-clock"):
        pass
    with pytest.raises(KtraceError, match="counted nothing"), ktrace.perf_stat(["no-such-event-xyz"]):
        ktrace.run(["/bin/true"])
    with pytest.raises(KtraceError, match="ran no command"), ktrace.perf_stat(["task-clock"]):
        pass
    with (
        pytest.raises(KtraceError, match="one perf block at a time"),
        ktrace.perf_stat(["task-clock"]),
        ktrace.profile(),
    ):
        pass


def test_profile_finds_the_hot_function(ktrace, probed: Path) -> None:
    with ktrace.profile(frequency=2000) as prof:
        result = ktrace.run([str(probed), "fib", "32"])
    assert result.stdout.strip().endswith("2178309"), result.stdout
    assert prof.samples >= 20, prof.samples
    prof.assert_in_profile("fib", min_share=0.5)
    # fib leads the self time; on a loaded machine the kernel's interrupt exit path can edge past it
    assert "fib" in [name for name, _ in prof.top(3)], prof.top(5)
    roots = {stack[0] for stack in prof.folded}
    assert roots <= {"probed", "sh"}, roots  # the command (and the wrapper's sh before its exec), nothing else
    with pytest.raises(AssertionError, match=r"no_such_function is on the stack in 0\.0% of \d+ samples"):
        prof.assert_in_profile("no_such_function")
    svg = ET.fromstring(prof.svg(title="fib"))
    titles = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert any(t.startswith("fib (") for t in titles), titles[:5]
    assert "probed;" in prof.folded_text()


# ---------------------------------------------------------------------------------------- end to end

PERF_SUITE = """
def test_counts(ktrace):
    with ktrace.perf_stat(["sched:sched_process_exec"]) as stat:
        result = ktrace.run(["sh", "-c", "/bin/true; echo done"])
    assert result.stdout == "done\\n"
    stat.assert_count("sched:sched_process_exec", exactly=EXECS)

def test_profile(ktrace):
    with ktrace.profile() as prof:
        ktrace.run(["sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"])
    assert prof.samples > 0
"""


def _suite(directory: Path, execs: int = 3) -> Path:
    path = directory / "test_perf_suite.py"
    path.write_text(PERF_SUITE.replace("EXECS", str(execs)))
    return path


def _pytest(cwd: Path, *args: str, path: str = "") -> subprocess.CompletedProcess[str]:
    return run_pytest(cwd, *args, env={**os.environ, "PATH": path} if path else None)


def test_no_perf_on_the_target_is_a_skip_naming_it(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "dd", "true", "uname"):
        (bare / tool).symlink_to(shutil.which(tool) or tool)
    _suite(tmp_path)
    run = _pytest(tmp_path, path=str(bare))
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 skipped" in run.stdout, run.stdout[-3000:]
    assert "perf is not installed on local: perf stat needs it on the target" in run.stdout
    assert "apt install linux-perf" in run.stdout


def test_recorded_perf_replays_on_the_fake(tmp_path: Path) -> None:
    _suite(tmp_path)
    recorded = _pytest(tmp_path, "--ktrace-record")
    assert recorded.returncode == 0, recorded.stdout[-3000:]
    cassettes = sorted((tmp_path / "cassettes").rglob("*.json"))
    assert len(cassettes) == 2, cassettes
    replayed = _pytest(tmp_path, "--ktrace-backend=fake")
    assert replayed.returncode == 0, replayed.stdout[-3000:]
    assert "2 passed" in replayed.stdout
    _suite(tmp_path, execs=4)  # a changed expectation fails on the replay as it would on the target
    changed = _pytest(tmp_path, "--ktrace-backend=fake")
    assert changed.returncode == 1, changed.stdout[-3000:]
    assert "counted 3 (expected exactly 4)" in changed.stdout


FLAME_SUITE = """
def _burn(ktrace):
    with ktrace.profile(label="busy loop") as prof:
        ktrace.run(["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
    return prof

def test_passes(ktrace):
    assert _burn(ktrace).samples > 0

def test_fails(ktrace):
    _burn(ktrace)
    assert False, "expected failure"
"""


def test_flame_graphs_are_written_for_failed_tests_and_linked(tmp_path: Path) -> None:
    (tmp_path / "test_flame.py").write_text(FLAME_SUITE)
    run = _pytest(tmp_path, "--ktrace-report=out")
    assert run.returncode == 1, run.stdout[-3000:]
    graphs = sorted(p.name for p in (tmp_path / "out" / "flamegraphs").iterdir())
    assert graphs == ["test_flame.py__test_fails.folded", "test_flame.py__test_fails.svg"], graphs
    svg = ET.parse(tmp_path / "out" / "flamegraphs" / "test_flame.py__test_fails.svg").getroot()
    assert "busy loop" in "".join(svg.itertext())
    folded = (tmp_path / "out" / "flamegraphs" / "test_flame.py__test_fails.folded").read_text()
    assert all(line.rsplit(" ", 1)[1].isdigit() for line in folded.splitlines()), folded[:500]
    assert "flame graph (busy loop)" in run.stdout  # listed in the failure report section
    assert "flame graph (busy loop)" in (tmp_path / "out" / "index.html").read_text()


def test_flame_graphs_for_all_tests_without_a_report_dir(tmp_path: Path) -> None:
    (tmp_path / "test_flame.py").write_text(FLAME_SUITE)
    run = _pytest(tmp_path, "--ktrace-flamegraph=all")
    assert run.returncode == 1, run.stdout[-3000:]
    graphs = sorted(p.name for p in (tmp_path / ".ktrace" / "flamegraphs").glob("*.svg"))
    assert graphs == ["test_flame.py__test_fails.svg", "test_flame.py__test_passes.svg"], graphs
    shutil.rmtree(tmp_path / ".ktrace")
    nothing = _pytest(tmp_path, "--ktrace-flamegraph=none")
    assert nothing.returncode == 1 and not (tmp_path / ".ktrace").exists()
    bad = _pytest(tmp_path, "--ktrace-flamegraph=sometimes")
    assert bad.returncode == 4 and "sometimes" in bad.stderr, bad.stderr[-1000:]
