"""Plugin behaviour through pytester: options, ini, markers, header, failure output, teardown guarantees."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ktrace_testing import TRACEFS, append_line, left_behind, ours, ours_in_this_process, run_pytest, tracefs_state

pytest_plugins = ["pytester"]


@pytest.fixture
def suite(pytester: pytest.Pytester, probed: Path) -> pytest.Pytester:
    pytester.makeconftest(f"BIN = {str(probed)!r}\n")
    return pytester


def _write(pytester: pytest.Pytester, body: str, name: str = "test_it") -> None:
    pytester.makepyfile(**{name: "from conftest import BIN\nimport pytest\n" + textwrap.dedent(body)})


def test_the_summary_shows_what_the_tests_reached(suite: pytest.Pytester) -> None:
    _write(suite, "def test_traces(ktrace):\n    ktrace.tracepoint('sched:sched_process_exec')\n")
    result = suite.runpytest()
    result.stdout.fnmatch_lines(
        [
            "ktrace: backend local, target local: reached when a test first needs it",
            "*",
            f"ktrace: local (backend local): Linux {os.uname().release} {os.uname().machine}; features *uprobes*; "
            "1 test(s)",
        ]
    )
    result.assert_outcomes(passed=1)


class _CountingListener:
    """A TCP port on 127.0.0.1 that counts the connections made to it (an SSH target nobody should reach)."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]

    def connections(self) -> int:
        count = 0
        while True:
            try:
                peer, _ = self.socket.accept()
            except OSError:  # timed out: nobody is waiting
                return count
            peer.close()
            count += 1


@pytest.mark.parametrize(
    "args",
    [["--collect-only"], ["--fixtures"], ["--help"], ["-k", "plain"], ["test_plain.py"]],
    ids=["collect-only", "fixtures", "help", "deselected", "no-ktrace-test"],
)
def test_nothing_reaches_the_target_until_a_test_needs_it(pytester: pytest.Pytester, args: list[str]) -> None:
    pytester.makepyfile(
        test_plain="def test_plain():\n    pass\n", test_traced="def test_traced(ktrace):\n    ktrace.run(['true'])\n"
    )
    listener = _CountingListener()
    try:
        run = run_pytest(pytester.path, f"--ktrace-host=root@127.0.0.1:{listener.port}", *args, "-v")
        assert run.returncode == 0, run.stdout[-3000:]
        assert listener.connections() == 0, "the target was contacted though no test needed it"
        if "--help" not in args:
            assert f"target root@127.0.0.1:{listener.port}: reached when a test first needs it" in run.stdout
    finally:
        listener.socket.close()


def test_a_refused_target_fails_only_the_tests_that_need_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_both="def test_plain():\n    pass\n\ndef test_traced(ktrace):\n    ktrace.run(['true'])\n")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connections are refused
    run = run_pytest(pytester.path, f"--ktrace-host=root@127.0.0.1:{port}")
    assert run.returncode == 1, run.stdout[-3000:]
    assert "1 passed, 1 error" in run.stdout
    assert f"target root@127.0.0.1:{port} unavailable" in run.stdout


def test_failing_assertion_reads_well_and_attaches_trace(suite: pytest.Pytester) -> None:
    _write(
        suite,
        """
        def test_returns(ktrace):
            done = ktrace.uretprobe(BIN, "setup_thing")
            ktrace.run([BIN, "setup", "eth0", "4000"])
            done.assert_returned(0)
        """,
    )
    result = suite.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: setup_thing returned -22 (expected 0); 1 of 1 returns differ.",
            "*differs: ret=-22 (expected 0)",
            "*- ktrace trace -*",
            "target: local local: Linux *",
            "*ur_setup_thing_*ret=0xffffffea (-22)*",
        ]
    )
    assert "session.py" not in result.stdout.str()  # __tracebackhide__: the test line is what pytest shows


def test_teardown_after_pass_fail_error_skip_xfail(suite: pytest.Pytester) -> None:
    _write(
        suite,
        """
        @pytest.fixture
        def broken(ktrace):
            ktrace.uprobe(BIN, "fib")
            ktrace.arm()
            raise RuntimeError("fixture exploded after arming")

        def test_pass(ktrace):
            ktrace.uprobe(BIN, "fib"); ktrace.run([BIN, "fib", "2"])

        def test_fail(ktrace):
            ktrace.uprobe(BIN, "fib"); ktrace.run([BIN, "fib", "2"]); assert False

        def test_error(broken):
            pass

        def test_skip(ktrace):
            ktrace.uprobe(BIN, "fib"); ktrace.arm(); pytest.skip("after arming")

        @pytest.mark.xfail(strict=True)
        def test_xfail(ktrace):
            ktrace.tracepoint("sched:sched_switch"); ktrace.arm(); assert False

        def test_exception(ktrace):
            ktrace.uretprobe(BIN, "fib"); ktrace.arm(); raise KeyError("boom")
        """,
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=1, failed=2, errors=1, skipped=1, xfailed=1)
    assert ours_in_this_process(tracefs_state()) == []


def test_foreign_probe_survives_the_suite(suite: pytest.Pytester, probed: Path) -> None:
    from pytest_ktrace._elf import symbol_file_offset

    foreign = f"p:foreign{os.getpid()}/keep {probed}:{symbol_file_offset(probed, 'fib'):#x}"
    append_line(TRACEFS / "uprobe_events", foreign)
    try:
        _write(
            suite,
            """
            def test_one(ktrace):
                ktrace.uprobe(BIN, "fib"); ktrace.run([BIN, "fib", "3"])
            def test_two(ktrace):
                ktrace.uretprobe(BIN, "fib"); ktrace.run([BIN, "fib", "3"]); assert False
            """,
        )
        result = suite.runpytest()
        result.assert_outcomes(passed=1, failed=1)
        listing = (TRACEFS / "uprobe_events").read_text()
        assert f"p:foreign{os.getpid()}/keep" in listing
    finally:
        append_line(TRACEFS / "uprobe_events", f"-:foreign{os.getpid()}/keep")


def test_marker_overrides_command_line_overrides_ini(suite: pytest.Pytester) -> None:
    suite.makeini("[pytest]\nktrace_scope = run\nktrace_timeout = 7\n")
    _write(
        suite,
        """
        def test_ini(ktrace):
            assert ktrace.scope == "run" and ktrace.run_timeout == 7

        @pytest.mark.ktrace(scope="all", timeout=3)
        def test_marker(ktrace):
            assert ktrace.scope == "all" and ktrace.run_timeout == 3
        """,
    )
    suite.runpytest().assert_outcomes(passed=2)
    _write(
        suite,
        """
        def test_cli(ktrace):
            assert ktrace.scope == "all" and ktrace.run_timeout == 5

        @pytest.mark.ktrace(scope="run")
        def test_marker(ktrace):
            assert ktrace.scope == "run" and ktrace.run_timeout == 5
        """,
    )
    suite.runpytest("--ktrace-scope=all", "--ktrace-timeout=5").assert_outcomes(passed=2)


def test_unknown_marker_argument_is_an_error_of_that_test(suite: pytest.Pytester) -> None:
    _write(
        suite,
        """
        @pytest.mark.ktrace(hots="board")
        def test_typo(ktrace):
            pass

        def test_fine():
            pass
        """,
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_typo: @pytest.mark.ktrace got unknown argument(s) hots; known: *host*"])


def test_bad_scope_value(suite: pytest.Pytester) -> None:
    _write(suite, "def test_x(ktrace): pass\n")
    result = suite.runpytest("--ktrace-scope=everything")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid choice: 'everything'*"])


def test_ssh_backend_without_host_is_a_usage_error(suite: pytest.Pytester) -> None:
    _write(suite, "def test_x(ktrace): pass\n")
    result = suite.runpytest("--ktrace-backend=ssh")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ktrace-backend=ssh needs --ktrace-host=*"])


def test_unknown_backend_names_the_builtins(suite: pytest.Pytester) -> None:
    _write(suite, "def test_x(ktrace): pass\n")
    result = suite.runpytest("--ktrace-backend=nosuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no backend called 'nosuch' (built in: local, ssh, vm, fake; *"])


def test_third_party_backend_through_the_hook(suite: pytest.Pytester) -> None:
    suite.makeconftest(
        suite.path.joinpath("conftest.py").read_text()
        + textwrap.dedent(
            """
            from pytest_ktrace.backends._local import LocalBackend

            class Wrapped(LocalBackend):
                @property
                def name(self):
                    return "local"

            def pytest_ktrace_make_backend(config, target):
                if target.backend == "mine":
                    backend = Wrapped(target.tracefs)
                    backend.made_by_conftest = True
                    return backend
            """
        )
    )
    _write(
        suite,
        """
        def test_uses_it(ktrace):
            assert getattr(ktrace.backend, "made_by_conftest", False)
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "1"])
            probe.assert_called_once()
        """,
    )
    suite.runpytest("--ktrace-backend=mine").assert_outcomes(passed=1)


def test_tracefs_not_mounted_says_how_to_mount(suite: pytest.Pytester, tmp_path: Path) -> None:
    _write(suite, "def test_x(ktrace): pass\n")
    result = suite.runpytest(f"--ktrace-tracefs={tmp_path}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*tracefs is not mounted at {tmp_path}*mount -t tracefs nodev /sys/kernel/tracing*"])


def test_xdist_workers_are_isolated(suite: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    _write(
        suite,
        """
        @pytest.mark.ktrace(scope="run")
        @pytest.mark.parametrize("n", range(6))
        def test_counts_only_its_own(ktrace, n):
            probe = ktrace.uprobe(BIN, "fib", k="$arg1:s32")
            for _ in range(3):
                ktrace.run([BIN, "fib", "2"])
            # fib(2) = 3 calls; scope=run keeps the other worker's runs of the same binary out
            probe.where(pid=ktrace.runs[0].pid).assert_call_count(3)
            assert probe.call_count == 9
        """,
    )
    before = tracefs_state()
    result = suite.runpytest_subprocess("-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=6)
    assert left_behind(tracefs_state()) == left_behind(before) == []


def _run_pytest_child(suite: pytest.Pytester, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=suite.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigkilled_run_is_cleaned_by_the_next_run(suite: pytest.Pytester) -> None:
    _write(
        suite,
        """
        import os, signal
        def test_dies(ktrace):
            ktrace.uprobe(BIN, "fib"); ktrace.tracepoint("sched:sched_process_exec")
            ktrace.run([BIN, "fib", "1"])
            os.kill(os.getpid(), signal.SIGKILL)
        """,
        name="test_dies",
    )
    child = _run_pytest_child(suite, "test_dies.py")
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    leftovers = ours(tracefs_state())
    assert any(f"_{child.pid}_" in line for line in leftovers), leftovers
    _write(suite, "def test_next(ktrace):\n    ktrace.uprobe(BIN, 'fib'); ktrace.arm()\n", name="test_next")
    result = suite.runpytest("test_next.py", "-W", "always")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*pytest-ktrace removed leftovers of an earlier crashed run on local*"])
    assert not [line for line in ours(tracefs_state()) if f"_{child.pid}_" in line]


def test_live_run_is_not_mistaken_for_a_leftover(suite: pytest.Pytester) -> None:
    _write(
        suite,
        """
        import time
        def test_slow(ktrace):
            ktrace.uprobe(BIN, "fib"); ktrace.arm()
            print("ARMED", flush=True)
            time.sleep(6)
        """,
        name="test_slow",
    )
    child = _run_pytest_child(suite, "-s", "test_slow.py")
    assert child.stdout is not None
    for line in child.stdout:
        if "ARMED" in line:
            break
    _write(suite, "def test_other(ktrace):\n    ktrace.uprobe(BIN, 'fib'); ktrace.arm()\n", name="test_other")
    result = suite.runpytest("test_other.py", "-W", "always")
    result.assert_outcomes(passed=1)
    assert "removed leftovers" not in result.stdout.str()
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0, out
    assert left_behind(tracefs_state()) == []


def test_ctrl_c_mid_test_still_tears_down(suite: pytest.Pytester) -> None:
    _write(
        suite,
        """
        import time
        def test_interrupted(ktrace):
            ktrace.uprobe(BIN, "fib"); ktrace.uretprobe(BIN, "fib"); ktrace.arm()
            print("ARMED", flush=True)
            time.sleep(60)
        """,
        name="test_interrupted",
    )
    child = _run_pytest_child(suite, "-s", "test_interrupted.py")
    assert child.stdout is not None
    for line in child.stdout:
        if "ARMED" in line:
            break
    assert ours(tracefs_state()), "the probes should be armed now"
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=60)
    assert "KeyboardInterrupt" in out
    assert left_behind(tracefs_state()) == []
