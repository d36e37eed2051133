"""``ktrace.spawn()``: commands in the background on this machine's kernel, with real uprobes on tests/prog/probed.c;
ended with their children by teardown before the probes go; recorded, then replayed on the fake. The tests that use
the ``ktrace`` fixture also run through SSH (tests/ssh/test_spawn_ssh.py): the target is this machine either way."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from pytest_ktrace import KtraceError, SpawnedProcess, TargetError, WaitTimeout
from pytest_ktrace._session import TraceSession

QUIET = ("-p", "no:cacheprovider")
pytest_plugins = ["pytester"]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (a zombie has ended: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _signalled(ktrace, number: int) -> int:
    """The status of a command ended by signal ``number``: as subprocess reports it here, as its shell does over
    SSH."""
    return -number if ktrace.target.backend == "local" else 128 + number


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether ``pid`` leaves /proc: an orphan that died is reaped by this machine's init, in its own time."""
    deadline = time.monotonic() + within
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_spawned_process_is_traced(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64", a="$arg1:u64", b="$arg2:u64")
    process = ktrace.spawn([str(probed), "add", "2", "3"])
    assert isinstance(process, SpawnedProcess)
    assert process.wait() == 0
    assert process.returncode == 0
    assert process.stdout == "add_u64=5\n" and process.stderr == ""
    add.assert_called_once_with(a=2, b=3)
    assert add.events[0].pid == process.pid


def test_events_of_a_process_that_ends_by_itself_reach_the_next_assertion(ktrace, probed: Path, tmp_path: Path) -> None:
    fib = ktrace.uprobe(str(probed), "fib", n="$arg1:s32")
    go = tmp_path / "go"
    os.mkfifo(go)
    process = ktrace.spawn(["sh", "-c", f"read line <{go} && exec {probed} fib 3"])
    fib.assert_not_called()  # read while it waits for its go
    go.write_text("go\n")
    deadline = time.monotonic() + 30
    while _alive(process.pid) and time.monotonic() < deadline:  # watched from outside: the handle is not asked
        time.sleep(0.01)
    fib.assert_call_count(5)
    assert {event.pid for event in fib.events} == {process.pid}


@pytest.mark.ktrace(stream=True)
def test_stream_mode_sees_what_it_does_after_its_start(ktrace, probed: Path, tmp_path: Path) -> None:
    fib = ktrace.uprobe(str(probed), "fib", n="$arg1:s32")
    go = tmp_path / "go"
    os.mkfifo(go)
    process = ktrace.spawn(["sh", "-c", f"read line <{go} && exec {probed} fib 2"])
    fib.assert_not_called()
    go.write_text("go\n")
    assert process.wait() == 0
    fib.assert_call_count(3)


def test_stdin_reaches_the_spawned_process(ktrace) -> None:
    process = ktrace.spawn(["cat"], stdin=b"\0\1binary\n")
    assert process.wait() == 0
    assert process.stdout == "\0\1binary\n"


@pytest.mark.ktrace(scope="run")
def test_scope_run_follows_the_spawned_process_and_its_children_only(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64", a="$arg1:u64")
    bin_ = str(probed)
    process = ktrace.spawn(["sh", "-c", f"{bin_} add 1 0 && {bin_} add 2 0 && read line && {bin_} add 3 0"])
    # traced from the spawn on, but not this process: not started by the test's ktrace
    subprocess.run([bin_, "add", "99", "0"], check=True, capture_output=True)
    ktrace.wait_for(add, 2)
    with process:
        pass  # killed here, while `read` waits for a line that never comes
    assert sorted(event.fields["a"] for event in add.events) == [1, 2]
    assert process.pid not in {event.pid for event in add.events}  # its children called add_u64, not the sh


def test_kill_ends_the_process_and_its_children(ktrace, probed: Path) -> None:
    process = ktrace.spawn(["sh", "-c", f"{probed} sleep 600000000 & echo $!; wait"])
    deadline = time.monotonic() + 30
    while not process.stdout and time.monotonic() < deadline:
        time.sleep(0.01)
    child = int(process.stdout)
    assert process.returncode is None and _alive(child)
    status = process.kill()
    assert status == _signalled(ktrace, 15)  # SIGTERM sufficed
    assert not Path(f"/proc/{process.pid}").exists()  # ended and reaped
    assert not _alive(child) and _gone(child)
    assert process.kill() == status and process.wait() == status  # idempotent


def test_wait_times_out_and_leaves_the_process_running(ktrace, probed: Path) -> None:
    process = ktrace.spawn([str(probed), "sleep", "600000000"])
    with pytest.raises(WaitTimeout) as info:
        process.wait(timeout=0.1)
    message = str(info.value)
    assert str(probed) in message and f"on {ktrace.target.name} " in message and "still running" in message
    assert info.value.pid == process.pid and info.value.timeout == 0.1
    assert process.returncode is None and _alive(process.pid)
    process.kill()
    assert process.wait(timeout=0.1) == _signalled(ktrace, 15)


def test_a_process_that_ignores_sigterm_is_killed(ktrace) -> None:
    process = ktrace.spawn(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"])
    deadline = time.monotonic() + 30
    while "ready" not in process.stdout and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.kill() == _signalled(ktrace, 9)
    assert not Path(f"/proc/{process.pid}").exists()


@pytest.mark.parametrize(
    "argv, error, message",
    [
        ([], KtraceError, "spawn\\(\\) needs a command"),
        ([1], KtraceError, r"spawn\(\) argv\[0\] must be a str"),
        (b"ls", KtraceError, r"spawn\(\) argv must be a str or a sequence"),
        (["/no/such/program"], TargetError, r"cannot start \['/no/such/program'\] on {target}: "),
        (["no-such-program"], TargetError, r"cannot start \['no-such-program'\] on {target}: "),
    ],
)
def test_bad_commands_are_refused(ktrace, argv: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.format(target=ktrace.target.name)):
        ktrace.spawn(argv)


def test_bad_stdin_and_timeouts_are_refused(ktrace) -> None:
    with pytest.raises(KtraceError, match=r"spawn\(\) stdin must be a str, bytes or None, got int"):
        ktrace.spawn(["true"], stdin=3)
    process = ktrace.spawn(["true"])
    with pytest.raises(KtraceError, match=r"wait\(\) timeout=-1 must be a number of seconds >= 0"):
        process.wait(timeout=-1)


def test_a_backend_without_the_capability_is_named(ktrace) -> None:
    class Plain:  # the Backend contract only, delegated to this test's backend
        def __init__(self, inner: object) -> None:
            self._inner = inner
            self.name = "plain-board"

        def __getattr__(self, name: str) -> object:
            if name == "spawn":
                raise AttributeError(name)
            return getattr(self._inner, name)

    session = TraceSession(Plain(ktrace.backend), ktrace.identity, 99)  # type: ignore[arg-type]
    with pytest.raises(KtraceError, match=r"spawn\(\) needs .*Spawning capability.*plain-board \(Plain\) has none"):
        session.spawn(["true"])
    session.teardown()


SUITE = """
import os, time
from pathlib import Path

BIN = {binary!r}


def test_left_running(ktrace):
    probe = ktrace.uprobe(BIN, "sleep_us")
    enable = Path(ktrace.target.tracefs, ktrace.instance_path, "events", probe.spec.event_dir, "enable")
    # at SIGTERM it notes whether its probe is still enabled, and leaves a child that sleeps on
    script = (
        f"trap 'cat {{enable}} >{{os.environ['SEEN']}}; exit 0' TERM; "
        f"{{BIN}} sleep 600000000 & echo $!; while :; do sleep 0.05; done"
    )
    process = ktrace.spawn(["sh", "-c", script])
    ktrace.wait_for(probe, timeout=30)
    while not process.stdout:
        time.sleep(0.01)
    print("PIDS", process.pid, process.stdout.strip())


def test_spawn_after_teardown_is_refused(ktrace):
    ktrace.teardown()
    try:
        ktrace.spawn(["true"])
    except Exception as exc:
        print("REFUSED", exc)
"""


def test_teardown_ends_what_the_test_left_running_before_its_probes(
    pytester: pytest.Pytester, probed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = tmp_path / "seen"
    monkeypatch.setenv("SEEN", str(seen))
    pytester.makepyfile(test_spawning=SUITE.format(binary=str(probed)))
    result = pytester.runpytest(*QUIET, "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*REFUSED spawn(): the ktrace session of this test was torn down*"])
    leader, child = map(int, re.findall(r"PIDS (\d+) (\d+)", result.stdout.str())[0])
    assert seen.read_text() == "1\n"  # its probe was still enabled when it was told to end
    assert not Path(f"/proc/{leader}").exists()  # ended and reaped
    assert not _alive(child) and _gone(child)  # ended; this machine's init reaps it


REPLAYED = """
BIN = {binary!r}


def test_spawned(ktrace):
    add = ktrace.uprobe(BIN, "add_u64", a="$arg1:u64", b="$arg2:u64")
    first = ktrace.spawn(["sh", "-c", f"sleep 0.05 && exec {{BIN}} add {a} 4"])
    looks = 0
    while first.returncode is None:
        looks += 1
    print("LOOKS", looks)
    assert first.wait() == 0 and first.stdout == "add_u64={total}\\n"
    add.assert_called_once_with(a={a}, b=4)
    slow = ktrace.spawn([BIN, "sleep", "600000000"])
    assert slow.returncode is None
    assert slow.stdout == ""


@pytest.mark.ktrace(scope="run")
def test_children_in_scope(ktrace):
    add = ktrace.uprobe(BIN, "add_u64", a="$arg1:u64")
    process = ktrace.spawn(["sh", "-c", f"{{BIN}} add 5 0; {{BIN}} add 6 0"])
    assert process.wait() == 0
    assert sorted(event.fields["a"] for event in add.events) == [5, 6]
"""


def test_spawns_are_recorded_and_replayed_on_the_fake(pytester: pytest.Pytester, probed: Path) -> None:
    pytester.makepyfile(test_replayed="import pytest\n" + REPLAYED.format(binary=str(probed), a=3, total=7))
    recorded = pytester.runpytest(*QUIET, "-s", "--ktrace-record")
    recorded.assert_outcomes(passed=2)
    cassette = (pytester.path / "cassettes" / "test_replayed" / "test_spawned.json").read_text()
    assert '"kind": "spawn"' in cassette and '"how": "killed"' in cassette and '"how": "exited"' in cassette
    replayed = pytester.runpytest(*QUIET, "-s", "--ktrace-backend=fake")
    replayed.assert_outcomes(passed=2)
    looks = re.findall(r"LOOKS (\d+)", recorded.stdout.str())
    assert int(looks[0]) > 0 and looks == re.findall(r"LOOKS (\d+)", replayed.stdout.str())  # as often running
    pytester.makepyfile(test_replayed="import pytest\n" + REPLAYED.format(binary=str(probed), a=4, total=8))
    stale = pytester.runpytest(*QUIET, "--ktrace-backend=fake", "-k", "test_spawned")
    stale.assert_outcomes(failed=1, errors=1)
    stale.stdout.fnmatch_lines(["*cassette is stale*the command changed*"])


def test_the_fake_without_a_cassette_refuses_like_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_no_cassette="""
        import pytest, pytest_ktrace

        def test_spawn(ktrace):
            with pytest.raises(pytest_ktrace.KtraceError) as info:
                ktrace.spawn(["true"])
            assert "the fake backend cannot spawn ['true']: record this test on a real target" in str(info.value)
        """
    )
    pytester.runpytest(*QUIET, "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.12-x86_64").assert_outcomes(
        passed=1
    )
