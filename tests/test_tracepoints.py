"""Real kernel tracepoints on this machine, triggered by processes the test starts."""

from __future__ import annotations

import errno

import pytest

from pytest_ktrace import ProbeRejected, UnknownSymbol


@pytest.mark.ktrace(scope="run")
def test_exec_fork_exit_of_our_process_only(ktrace) -> None:
    execs = ktrace.tracepoint("sched:sched_process_exec")
    forks = ktrace.tracepoint("sched:sched_process_fork")
    exits = ktrace.tracepoint("sched:sched_process_exit")
    result = ktrace.run(["sh", "-c", "/bin/true; echo done"])
    assert result.stdout == "done\n"
    # sh itself exec'd, then its child exec'd /bin/true: both followed through event-fork
    assert {event["filename"] for event in execs.events} >= {"/bin/true"}
    forks.assert_called()
    child = forks.events[0]["child_pid"]
    exits.assert_any_call(pid=child)
    assert {event.pid for event in execs.events} <= {result.pid, child}


@pytest.mark.ktrace(scope="run")
def test_openat_exit_reports_enoent(ktrace, tmp_path) -> None:
    opened = ktrace.tracepoint("syscalls:sys_exit_openat", filter="ret < 0")
    result = ktrace.run(["cat", str(tmp_path / "missing")])
    assert result.returncode != 0
    opened.assert_any_call(ret=-errno.ENOENT)
    opened.assert_all_calls(ret=lambda ret: ret < 0)


@pytest.mark.ktrace(scope="run")
def test_scope_run_ignores_other_processes(ktrace) -> None:
    import subprocess

    execs = ktrace.tracepoint("sched:sched_process_exec")
    ktrace.arm()
    subprocess.run(["/bin/true"], check=True)  # not started by ktrace.run: must not be recorded
    result = ktrace.run(["/bin/echo", "hi"])
    execs.assert_called_once_with(filename="/bin/echo")
    assert execs.events[0].pid == result.pid


def test_scope_all_sees_every_process(ktrace) -> None:
    import subprocess

    execs = ktrace.tracepoint("sched:sched_process_exec", filter='filename ~ "*/true"')
    ktrace.arm()
    proc = subprocess.run(["/bin/true"], check=True)
    assert proc.returncode == 0
    ktrace.wait_for(execs, timeout=10)
    execs.assert_any_call(filename="/bin/true")


def test_unknown_tracepoint_suggests_close_names(ktrace) -> None:
    ktrace.tracepoint("sched:sched_process_exce")
    with pytest.raises(UnknownSymbol, match="did you mean sched:sched_process_exec"):
        ktrace.arm()


def test_bad_tracepoint_filter(ktrace) -> None:
    ktrace.tracepoint("sched:sched_process_exec", filter="nosuchfield == 1")
    with pytest.raises(ProbeRejected) as info:
        ktrace.arm()
    assert "Field not found" in info.value.kernel_log


def test_malformed_tracepoint_name(ktrace) -> None:
    from pytest_ktrace import KtraceError

    with pytest.raises(KtraceError, match="must be 'system:event'"):
        ktrace.tracepoint("sched_process_exec")
