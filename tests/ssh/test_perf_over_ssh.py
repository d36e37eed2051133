"""perf_stat() and profile() through a real OpenSSH server on 127.0.0.1: tests/test_perf.py passes unchanged (the
wrapper scripts run in the board's POSIX sh; a board without perf is covered by the same script locally)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


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
