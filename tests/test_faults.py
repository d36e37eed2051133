"""Faults while tests run, each real: tracefs unmounted underneath, a probe removed by someone else, an xdist
worker killed. Nothing of ours may stay behind, and nothing foreign may be touched."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ktrace_testing import left_behind, ours, tracefs_state

pytest_plugins = ["pytester"]


def _write(pytester: pytest.Pytester, name: str, body: str, probed: Path) -> None:
    pytester.makepyfile(**{name: f"BIN = {str(probed)!r}\n" + textwrap.dedent(body)})


def test_tracefs_unmounted_underneath(pytester: pytest.Pytester, probed: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed: apt-get install util-linux", pytrace=False)
    _write(
        pytester,
        "test_unmount",
        """
        import subprocess

        def test_tracefs_goes_away(ktrace):
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.arm()
            # only in this test's private mount namespace: the machine keeps its tracefs
            subprocess.run(["umount", "/sys/kernel/tracing"], check=True)
            ktrace.run([BIN, "fib", "1"])
            probe.assert_called()
        """,
        probed,
    )
    run = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "test_unmount.py",
        ],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stdout
    assert "TracefsUnavailable: tracefs is no longer mounted at /sys/kernel/tracing" in run.stdout
    assert "mount it again with: mount -t tracefs nodev /sys/kernel/tracing" in run.stdout
    assert "the next pytest-ktrace run removes them" in run.stdout  # teardown says what it could not do
    assert ours(tracefs_state()), "the kernel still holds the dead run's probes (seen from our namespace)"
    _write(pytester, "test_after", "def test_clean(ktrace):\n    ktrace.arm()\n", probed)
    after = pytester.runpytest("test_after.py", "-W", "always")
    after.assert_outcomes(passed=1)
    after.stdout.fnmatch_lines(["*removed leftovers of an earlier crashed run*"])
    assert left_behind(tracefs_state()) == []


def test_probe_removed_by_someone_else(pytester: pytest.Pytester, probed: Path) -> None:
    _write(
        pytester,
        "test_removed",
        """
        import os

        def append(path, text):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)

        def test_someone_removes_it(ktrace):
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.arm()
            root = "/sys/kernel/tracing"
            append(f"{root}/{ktrace.instance_path}/events/{probe.spec.event_dir}/enable", "0")
            append(f"{root}/uprobe_events", f"-:{probe.spec.event_dir}")
            ktrace.run([BIN, "fib", "2"])
            probe.assert_not_called()
        """,
        probed,
    )
    result = pytester.runpytest("-W", "always")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*pytest-ktrace: probe ktrace_*/u_fib_* was removed by someone else while the test ran*"]
    )
    assert left_behind(tracefs_state()) == []


def test_killed_xdist_worker_is_cleaned_up(pytester: pytest.Pytester, probed: Path) -> None:
    pytest.importorskip("xdist")
    _write(
        pytester,
        "test_kill",
        """
        import os, signal

        def test_worker_dies(ktrace):
            ktrace.uprobe(BIN, "fib")
            ktrace.tracepoint("sched:sched_process_exec")
            ktrace.run([BIN, "fib", "1"])
            uprobes = open("/sys/kernel/tracing/uprobe_events").read()
            if os.path.isdir(f"/sys/kernel/tracing/{ktrace.instance_path}") and ktrace.identity.group in uprobes:
                # what this worker leaves in the kernel when it is killed
                with open(os.path.join(os.path.dirname(__file__), "armed-then-killed"), "w") as evidence:
                    evidence.write(ktrace.identity.group)
            os.kill(os.getpid(), signal.SIGKILL)

        def test_others_go_on(ktrace):
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "1"])
            probe.assert_call_count(1)
        """,
        probed,
    )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "-W", "always", "-rf", "--ktrace-scope=run")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1 and outcomes.get("failed") == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*worker*crashed*"])
    # The dead worker had its instance and uprobe in tracefs when it was killed (nothing could remove them then);
    # the next pytest-ktrace run on this machine removes them: the one below, or one running alongside this test.
    evidence = pytester.path / "armed-then-killed"
    assert evidence.exists(), "the killed worker had not armed its instance and probe"
    killed_run = evidence.read_text()  # ktrace_<tag>_<pid>_<run>: its group, the prefix of its instances

    def killed_runs_leftovers() -> list[str]:
        return [line for line in ours(tracefs_state()) if killed_run in line]

    still_there = killed_runs_leftovers()
    _write(pytester, "test_after", "def test_clean(ktrace):\n    ktrace.arm()\n", probed)
    after = pytester.runpytest("test_after.py", "-W", "always")
    after.assert_outcomes(passed=1)
    if still_there:  # else a run alongside this one removed them first (a dead run's leftovers: any run may)
        after.stdout.fnmatch_lines([f"*removed leftovers of an earlier crashed run*{killed_run}*"])
    assert killed_runs_leftovers() == []
    assert left_behind(tracefs_state()) == []
