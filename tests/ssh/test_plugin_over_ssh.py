"""The plugin end to end through a real OpenSSH server on 127.0.0.1: the local suite passes unchanged, and the
failures a board user meets (dropped link, missing permissions) read clearly and leave the target clean."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from ktrace_testing import run_pytest

ROOT = Path(__file__).resolve().parents[2]
pytest_plugins = ["pytester"]


def _ktrace_leftovers() -> list[str]:
    """What runs of this process (inline pytester runs) left in tracefs; other xdist workers' runs are not ours."""
    tracefs = Path("/sys/kernel/tracing")
    mine = re.compile(rf"\bktrace_[0-9a-f]{{6}}_{os.getpid()}_")
    lines = [line for line in (tracefs / "uprobe_events").read_text().splitlines() if mine.search(line)]
    return lines + [name for name in os.listdir(tracefs / "instances") if mine.match(name)]


def _left_by(pid: int) -> list[str]:
    """The ktrace probes and instances in tracefs made by the run in process ``pid``."""
    tracefs = Path("/sys/kernel/tracing")
    mine = re.compile(rf"\bktrace_[0-9a-f]{{6}}_{pid}_")
    lines = [line for line in (tracefs / "dynamic_events").read_text().splitlines() if mine.search(line)]
    return lines + [name for name in os.listdir(tracefs / "instances") if mine.match(name)]


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    return run_pytest(ROOT, *args, timeout=900)


def test_local_suite_passes_unchanged_through_ssh(sshd_server) -> None:
    run = _pytest(
        "tests/test_uprobes.py",
        "tests/test_tracepoints.py",
        "examples/test_register_irq.py",
        "examples/test_syscalls.py",
        "--ktrace-host=ktrace-test",
        f"--ktrace-ssh-config={sshd_server.ssh_config}",
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout and not re.search(r"\d+ errors?\b", run.stdout)


def test_header_names_the_remote_host(sshd_server) -> None:
    run = _pytest(
        "-v", "examples/test_syscalls.py", "--ktrace-host=ktrace-test", f"--ktrace-ssh-config={sshd_server.ssh_config}"
    )
    assert run.returncode == 0, run.stdout
    assert "ktrace: backend ssh, target ktrace-test: reached when a test first needs it" in run.stdout
    assert f"ktrace: ktrace-test (backend ssh): Linux {os.uname().release} {os.uname().machine}; " in run.stdout


def test_non_root_user_through_sudo(sshd_server) -> None:
    run = _pytest(
        "examples/test_register_irq.py",
        "--ktrace-host=ktrace-test-sudo",
        "--ktrace-sudo",
        f"--ktrace-ssh-config={sshd_server.ssh_config}",
    )
    assert run.returncode == 0, run.stdout[-4000:]


def test_non_root_user_without_sudo_is_told_why(sshd_server) -> None:
    run = _pytest(
        "examples/test_syscalls.py",
        "--ktrace-host=ktrace-test-nosudo",
        f"--ktrace-ssh-config={sshd_server.ssh_config}",
    )
    assert run.returncode == 1
    assert "ktrace-nosudo" in run.stdout or "--ktrace-sudo" in run.stdout, run.stdout
    assert "--ktrace-sudo" in run.stdout


def test_unknown_host_key_is_refused_by_default(sshd_server, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    text = Path(sshd_server.ssh_config).read_text().replace(str(sshd_server.known_hosts), str(tmp_path / "empty"))
    config.write_text(text)
    (tmp_path / "empty").write_text("")
    run = _pytest("examples/test_syscalls.py", "--ktrace-host=ktrace-test", f"--ktrace-ssh-config={config}")
    assert run.returncode == 1
    assert "--ktrace-accept-new-host-key" in run.stdout, run.stdout
    accepted = _pytest(
        "examples/test_syscalls.py",
        "--ktrace-host=ktrace-test",
        f"--ktrace-ssh-config={config}",
        "--ktrace-accept-new-host-key",
    )
    assert accepted.returncode == 0, accepted.stdout[-3000:]
    assert "[127.0.0.1]" in (tmp_path / "empty").read_text()


class _DropConnection:
    """Gives the inner test a fixture that kills the sshd process serving its connection."""

    def __init__(self, server: object) -> None:
        self.server = server

    @pytest.fixture
    def drop_connection(self):
        def drop(backend: object) -> None:
            pid = self.server.pid_of_connection(backend.local_port)  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)

        return drop


def test_dropped_connection_fails_that_test_and_the_next_one_cleans_up(
    sshd_server, pytester: pytest.Pytester, probed: Path
) -> None:
    pytester.makepyfile(
        test_drop=f"""
        import threading

        BIN = {str(probed)!r}

        def test_link_dies_mid_command(ktrace, drop_connection):
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "2"])
            probe.assert_call_count(3)
            threading.Timer(1.0, drop_connection, [ktrace.backend]).start()
            ktrace.run(["sleep", "5"])

        def test_next_one_reconnects(ktrace):
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "3"])
            probe.assert_call_count(5)
        """
    )
    result = pytester.runpytest(
        "--ktrace-host=ktrace-test",
        f"--ktrace-ssh-config={sshd_server.ssh_config}",
        plugins=[_DropConnection(sshd_server)],
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*ConnectionLost: *ktrace-test*"])
    assert "ssh.py" not in result.stdout.str()  # the failure shows the test's line, not the backend's internals
    assert _ktrace_leftovers() == []


RECORD_PID = """
import os

def pytest_configure(config):
    open("run.pid", "w").write(str(os.getpid()))
"""

LATE_SPLAT_SUITE = """
import time

def kmsg_later(ktrace, text):
    # printed after the command returned: after the test's last read of the trace
    late = f'(sleep 0.3; printf "%s\\\\n" "<4>{text}" > /dev/kmsg) >/dev/null 2>&1 &'
    ktrace.run(["sh", "-c", late])
    time.sleep(1.0)

def test_splat_after_the_last_look(ktrace):
    kmsg_later(ktrace, "BUG: ktrace_selftest late")

def test_next(ktrace):
    ktrace.run(["true"], check=True)
"""


@pytest.mark.parametrize("tests", ["two", "last"])
def test_a_splat_after_the_last_look_fails_the_run_naming_the_test(
    sshd_server, pytester: pytest.Pytester, tests: str
) -> None:
    """Over SSH a test's teardown travels with the next test's first round trip (or the end of the run): what it
    finds there still fails the run, naming the test it belongs to."""
    pytester.makepyfile(test_late=LATE_SPLAT_SUITE)
    # the run's process id names what it creates in tracefs
    pytester.makeconftest(RECORD_PID)
    selected = () if tests == "two" else ("-k", "last_look")
    # in its own process: an inline run's module cleanup leaves paramiko's cryptography unusable for the next one
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--ktrace-host=ktrace-test",
        f"--ktrace-ssh-config={sshd_server.ssh_config}",
        *selected,
    )
    result.assert_outcomes(passed=2 if tests == "two" else 1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "pytest-ktrace found problems after these tests ended (their parked probes, their teardown):",
            "  ktrace-test: test_late.py::test_splat_after_the_last_look: after the test's last look: "
            "the kernel printed a BUG*",
        ]
    )
    assert "test_next:" not in result.stdout.str()
    assert _left_by(int((pytester.path / "run.pid").read_text())) == []
