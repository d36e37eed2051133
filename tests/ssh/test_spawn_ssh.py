"""``ktrace.spawn()`` through a real OpenSSH server on 127.0.0.1 (the target is this machine, so the outer test
sees the processes the suite started, or left): the spawn suite passes unchanged, teardown ends what a test left
running, and a command outlives neither a missing program nor a dropped connection."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ktrace_testing import run_pytest
from pytest_ktrace._errors import ConnectionLost, TargetError
from pytest_ktrace.backends._base import Mkdir, Read
from pytest_ktrace.backends.ssh._backend import SshBackend
from test_spawn import SUITE, _alive, _gone

ROOT = Path(__file__).resolve().parents[2]
pytest_plugins = ["pytester"]


def test_the_spawn_suite_passes_through_ssh(sshd_server: Any) -> None:
    run = run_pytest(
        ROOT,
        "tests/test_spawn.py",
        "-k",
        "not replayed and not fake and not teardown",  # those run their own inner pytest, on this machine
        "--ktrace-host=ktrace-test",
        f"--ktrace-ssh-config={sshd_server.ssh_config}",
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "15 passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
    assert "ktrace: ktrace-test (backend ssh)" in run.stdout


def test_teardown_over_ssh_ends_what_the_test_left_running_before_its_probes(
    pytester: pytest.Pytester, sshd_server: Any, probed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path.chmod(0o777)
    seen = tmp_path / "seen"
    monkeypatch.setenv("SEEN", str(seen))  # read by the test, written into its command
    pytester.makepyfile(test_spawning=SUITE.format(binary=str(probed)))
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-s", "--ktrace-host=ktrace-test", f"--ktrace-ssh-config={sshd_server.ssh_config}"
    )
    result.assert_outcomes(passed=2)
    leader, child = map(int, re.findall(r"PIDS (\d+) (\d+)", result.stdout.str())[0])
    assert seen.read_text() == "1\n"  # its probe was still enabled when it was told to end
    assert not _alive(leader) and _gone(leader)  # its shell on the target reaped it
    assert not _alive(child) and _gone(child)


def test_a_missing_program_starts_nothing(backend: SshBackend) -> None:
    before = os.listdir("/proc")
    with pytest.raises(TargetError, match=r"cannot start \['no-such-program', 'x'\] on ktrace-test: no such command"):
        backend.spawn(["no-such-program", "x"])
    with pytest.raises(TargetError, match=r"cannot start \['/no/such/file'\] on ktrace-test"):
        backend.spawn(["/no/such/file"])
    assert backend.run(["true"]).returncode == 0
    assert not any("KTRACE_SPAWN" in _environ(pid) for pid in set(os.listdir("/proc")) - set(before) if pid.isdigit())


def _environ(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_pid_files_get_the_pid_before_it_runs(backend: SshBackend, instance: str) -> None:
    backend.apply([Mkdir(instance)])
    command = backend.spawn(["sleep", "30"], pid_files=[f"{instance}/set_event_pid"])
    try:
        [listed] = backend.apply([Read(f"{instance}/set_event_pid")])
        assert listed.data.split() == [str(command.pid)]
        assert os.getpgid(command.pid) == command.pid and os.getsid(command.pid) == command.pid  # its own session
        assert command.poll() is None and command.wait(0.1) is None
    finally:
        result = command.kill(1.0)
    assert result.returncode == 128 + signal.SIGTERM and command.killed
    assert not _alive(command.pid)


def test_a_dropped_connection_does_not_leave_it_running(backend: SshBackend, sshd_server: Any) -> None:
    command = backend.spawn(["sh", "-c", "sleep 300 & echo $!; wait"])
    deadline = time.monotonic() + 10
    while not command.output()[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(command.output()[0])
    os.kill(sshd_server.pid_of_connection(backend.local_port), signal.SIGKILL)  # the sshd of this connection only
    time.sleep(0.2)
    with pytest.raises(ConnectionLost, match="dropped"):
        command.poll()  # its status went with the connection
    assert command.kill(1.0).returncode == -1  # reconnects, and ends its group all the same
    assert _gone(command.pid) and not _alive(child) and _gone(child)
    assert backend.run(["echo", "back"]).stdout == "back\n"
