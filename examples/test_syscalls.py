"""Kernel tracepoints: what the kernel did for a process the test started."""

from __future__ import annotations

import errno

import pytest


@pytest.mark.ktrace(scope="run")  # record only the processes started by ktrace.run (and their children)
def test_open_of_missing_file_fails_with_enoent(ktrace, tmp_path):
    enter = ktrace.tracepoint("syscalls:sys_enter_openat")
    exit_ = ktrace.tracepoint("syscalls:sys_exit_openat", filter="ret < 0")

    result = ktrace.run(["cat", str(tmp_path / "missing.conf")])

    assert result.returncode == 1
    enter.assert_called()
    exit_.assert_any_call(ret=-errno.ENOENT)


@pytest.mark.ktrace(scope="run")
def test_exec_is_traced(ktrace):
    execs = ktrace.tracepoint("sched:sched_process_exec")
    result = ktrace.run(["/bin/true"])
    execs.assert_called_once_with(filename="/bin/true", pid=result.pid)
