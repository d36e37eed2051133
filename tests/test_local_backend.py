"""The local backend's contract, on this machine's real tracefs."""

from __future__ import annotations

import os
import pickle
import time

import pytest

from pytest_ktrace import CommandTimeout, TracefsUnavailable
from pytest_ktrace.backends._base import Backend, Mkdir, Read, Rmdir, Write
from pytest_ktrace.backends._local import LocalBackend


@pytest.fixture
def backend() -> LocalBackend:
    return LocalBackend()


@pytest.fixture
def instance(backend: LocalBackend):
    name = f"instances/ktrace_localtest_{os.getpid()}"
    [made] = backend.apply([Mkdir(name)])
    assert made.ok, made
    yield name
    backend.apply([Rmdir(name)])


def test_satisfies_the_protocol(backend: LocalBackend) -> None:
    assert isinstance(backend, Backend)
    info = backend.describe()
    assert info.release == os.uname().release and "uprobes" in info.features


def test_errors_carry_the_kernel_errno(backend: LocalBackend, instance: str) -> None:
    results = backend.apply(
        [
            Write("uprobe_events", "p:ktrace_localtest/x /nonexistent/file:0x0"),
            Write("uprobe_events", "-:ktrace_localtest_nosuch/event"),
            Mkdir(instance),
            Read(f"{instance}/nosuchfile"),
            Read(f"{instance}/nosuchfile", missing_ok=True),
            Write(f"{instance}/trace_marker", "hello"),
        ]
    )
    assert [r.errno_name for r in results] == ["ENOENT", "ENOENT", "EEXIST", "ENOENT", "", ""]
    assert results[0].error == "No such file or directory"
    assert [r.ok for r in results] == [False, False, False, False, True, True]


def test_stop_on_error_ends_the_batch(backend: LocalBackend, instance: str) -> None:
    results = backend.apply(
        [Write(f"{instance}/trace_marker", "a"), Mkdir(instance), Write(f"{instance}/trace_marker", "b")],
        stop_on_error=True,
    )
    assert len(results) == 2 and results[1].errno_name == "EEXIST"
    [trace] = backend.apply([Read(f"{instance}/trace")])
    assert "tracing_mark_write: a" in trace.data and ": b" not in trace.data


def test_run_reports_exit_output_and_pid_files(backend: LocalBackend, instance: str) -> None:
    result = backend.run(["sh", "-c", "echo out; echo err >&2; exit 3"], pid_files=[f"{instance}/set_event_pid"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    [pids] = backend.apply([Read(f"{instance}/set_event_pid")])
    # the pid was written before exec; the process has exited, so the kernel may already have dropped it
    assert pids.ok
    missing = backend.run(["/nonexistent/binary"])
    assert missing.returncode == 127 and "No such file" in missing.stderr
    fed = backend.run(["cat"], stdin="to stdin")
    assert fed.stdout == "to stdin"


def test_timeout_kills_exactly_the_process_group(backend: LocalBackend, tmp_path) -> None:
    marker = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"did not finish within 0\.5 s on local") as info:
        backend.run(["sh", "-c", f"sleep 30 & echo $! > {marker}; wait"], timeout=0.5)
    assert time.monotonic() - started < 10
    assert info.value.host == "local"
    child = int(marker.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"background child {child} of the timed-out command survived")


def test_not_mounted_says_how_to_mount(tmp_path) -> None:
    with pytest.raises(TracefsUnavailable, match="mount -t tracefs nodev /sys/kernel/tracing"):
        LocalBackend(str(tmp_path)).describe()


def test_non_root_is_told_what_permission_is_missing() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, then ask the backend
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                LocalBackend().describe()
                outcome = "no error"
            except TracefsUnavailable as exc:
                outcome = str(exc)
            os.write(write_end, pickle.dumps(outcome))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pickle.loads(pipe.read())
    os.waitpid(pid, 0)
    assert "tracefs is mounted at /sys/kernel/tracing but uid 65534 may not read it" in outcome, outcome
    assert "run pytest as root" in outcome
