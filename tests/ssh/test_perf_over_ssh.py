"""perf_stat(), profile() and stacktrace=True through a real OpenSSH server on 127.0.0.1: tests/test_perf.py and
tests/test_stacks.py pass unchanged (the perf wrapper scripts run in the board's POSIX sh; a board without perf
is covered by the same script locally)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ktrace_testing import run_pytest

ROOT = Path(__file__).resolve().parents[2]


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    return run_pytest(ROOT, *args, timeout=900)


def test_stack_tests_pass_unchanged_through_ssh(sshd_server) -> None:
    run = _pytest(
        "tests/test_stacks.py",
        "-k",
        "not fake and not replay",  # those run their own pytest on the fake
        "--ktrace-host=ktrace-test",
        f"--ktrace-ssh-config={sshd_server.ssh_config}",
    )
    failures = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR", "E   "))]
    assert run.returncode == 0, "\n".join(failures[:40]) + run.stderr[-2000:]
    assert "6 passed" in run.stdout, run.stdout[-2000:]


def test_perf_tests_pass_unchanged_through_ssh(sshd_server) -> None:
    run = _pytest(
        "tests/test_perf.py",
        "-k",
        "not no_perf and not replays and not flame",  # those start their own local pytest runs
        "--ktrace-host=ktrace-test",
        f"--ktrace-ssh-config={sshd_server.ssh_config}",
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "8 passed" in run.stdout, run.stdout[-2000:]
