"""Streaming through a real OpenSSH server on 127.0.0.1: tests/test_streaming.py passes unchanged over the
dd-based stream, and the remote reader is ended by its pid, also when the connection dropped underneath."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_ktrace.backends._base import Mkdir, Read, Rmdir, Write
from pytest_ktrace.backends.ssh._backend import SshBackend
from pytest_ktrace.backends.ssh._streams import SshTraceStream

ROOT = Path(__file__).resolve().parents[2]
TRACEFS = Path("/sys/kernel/tracing")


def _trace_pipe_readers() -> list[str]:
    """Processes of this machine with an instance's trace_pipe open (the dd a stream runs, or a leak)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            links = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")]
        except OSError:
            continue
        found.extend(f"{entry}: {link}" for link in links if link.endswith("/trace_pipe") and "ktrace_" in link)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie whose parent has not reaped it yet counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _instances() -> set[str]:
    return {name for name in os.listdir(TRACEFS / "instances") if name.startswith("ktrace_")}


def test_streaming_suite_through_ssh(sshd_server: Any) -> None:
    before = _trace_pipe_readers()
    instances = _instances()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
            "tests/test_streaming.py",
            "--ktrace-host=ktrace-test",
            f"--ktrace-ssh-config={sshd_server.ssh_config}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-3000:]
    assert _trace_pipe_readers() == before, "a remote dd reader was left running"
    assert _instances() <= instances, "the run left instances behind"


@pytest.mark.parametrize(("alias", "sudo"), [("ktrace-test", False), ("ktrace-test-sudo", True)])
def test_stream_reader_is_dd_and_is_ended_by_its_pid(
    make_backend: Callable[..., Any], instance: str, alias: str, sudo: bool
) -> None:
    backend = make_backend(alias, sudo=sudo)
    backend.apply([Mkdir(instance), Write(f"{instance}/tracing_on", "1", append=False)])
    stream = backend.open_stream(f"{instance}/trace_pipe")
    assert isinstance(stream, SshTraceStream)
    try:
        # the pid is printed right before `exec dd`; while the exec is under way the cmdline reads empty
        deadline = time.monotonic() + 5
        cmdline = Path(f"/proc/{stream.pid}/cmdline").read_bytes().split(b"\0")
        while not cmdline[0].endswith(b"dd") and time.monotonic() < deadline:
            time.sleep(0.01)
            cmdline = Path(f"/proc/{stream.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].endswith(b"dd") and cmdline[1] == f"if={TRACEFS}/{instance}/trace_pipe".encode()
        # a busy instance cannot be removed while its trace_pipe is read
        [busy] = backend.apply([Rmdir(instance)])
        assert busy.errno_name == "EBUSY"
        backend.apply([Write(f"{instance}/trace_marker", "hello-stream")])
        text = ""
        deadline = time.monotonic() + 10
        while "hello-stream" not in text and time.monotonic() < deadline:
            started = time.monotonic()
            text += stream.read(0.2)
            assert time.monotonic() - started < 2.0  # read() honours its timeout
        assert "tracing_mark_write: hello-stream" in text
        assert stream.read(0.05) == ""
    finally:
        stream.close()
    assert not _alive(stream.pid)
    stream.close()  # idempotent
    assert [r.ok for r in backend.apply([Rmdir(instance)])] == [True]


def test_a_missing_file_cannot_be_streamed(backend: SshBackend) -> None:
    from pytest_ktrace._errors import KtraceError

    with pytest.raises(KtraceError, match=r"cannot stream .*ktrace_sshtest_nosuch/trace_pipe on ktrace-test: it is"):
        backend.open_stream("instances/ktrace_sshtest_nosuch/trace_pipe")
    assert backend.apply([Read("tracing_on")])[0].ok  # the connection is fine afterwards


def test_reader_is_ended_after_the_connection_dropped(backend: SshBackend, sshd_server: Any, instance: str) -> None:
    backend.apply([Mkdir(instance)])
    stream = backend.open_stream(f"{instance}/trace_pipe")
    assert isinstance(stream, SshTraceStream)
    os.kill(sshd_server.pid_of_connection(backend.local_port), signal.SIGKILL)  # the sshd serving us only
    time.sleep(0.2)
    assert _alive(stream.pid), "the dd is orphaned, still blocked on trace_pipe"
    try:
        stream.close()  # reconnects and ends exactly that dd
        assert not _alive(stream.pid)
    finally:
        if _alive(stream.pid):
            os.kill(stream.pid, signal.SIGKILL)  # the dd we started, should the test fail
    assert [r.ok for r in backend.apply([Rmdir(instance)])] == [True]
