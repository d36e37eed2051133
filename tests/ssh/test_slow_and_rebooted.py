"""A target that is slow to answer, and one that loses its state and connection between tests (as a reboot does)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from ktrace_testing import left_behind, tracefs_state
from pytest_ktrace import TargetError
from pytest_ktrace.backends.ssh._backend import SshBackend

pytest_plugins = ["pytester"]


def test_a_target_that_never_answers_times_out_with_its_name(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
        config = tmp_path / "ssh_config"
        config.write_text(f"Host silent-board\n  HostName 127.0.0.1\n  Port {port}\n  User root\n")
        backend = SshBackend("silent-board", ssh_config=config, connect_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(TargetError) as info:
            backend.describe()
        assert time.monotonic() - started < 30
        text = str(info.value)
        assert "silent-board" in text or "127.0.0.1" in text
        assert "time" in text.lower(), text
        for conn in accepted:
            conn.close()


class _Reboot:
    """Gives the inner test a fixture that drops its SSH connection and wipes what it created in tracefs,
    which is what a board reboot does to a running test."""

    def __init__(self, server: object) -> None:
        self.server = server

    @pytest.fixture
    def reboot_target(self):
        def reboot(session) -> None:
            root = Path("/sys/kernel/tracing")
            for op in session.teardown_ops():  # what a reboot makes vanish: exactly this test's objects
                path = root / op.path
                data = getattr(op, "data", None)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND) if data is not None else None
                try:
                    if fd is not None:
                        os.write(fd, data.encode())
                    else:
                        os.rmdir(path)
                except OSError:
                    pass
                finally:
                    if fd is not None:
                        os.close(fd)
            os.kill(self.server.pid_of_connection(session.backend.local_port), signal.SIGKILL)  # type: ignore[attr-defined]

        return reboot


def test_target_rebooted_between_tests(sshd_server, pytester: pytest.Pytester, probed: Path) -> None:
    pytester.makepyfile(
        test_reboot=f"""
        BIN = {str(probed)!r}

        def test_before_the_reboot(ktrace, reboot_target):
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "2"])
            probe.assert_call_count(3)
            reboot_target(ktrace)

        def test_after_the_reboot(ktrace):
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "3"])
            probe.assert_call_count(5)
        """
    )
    result = pytester.runpytest(
        "--ktrace-host=ktrace-test", f"--ktrace-ssh-config={sshd_server.ssh_config}", plugins=[_Reboot(sshd_server)]
    )
    result.assert_outcomes(passed=2)
    assert left_behind(tracefs_state()) == []
