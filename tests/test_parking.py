"""Probes parked between the tests of a run, on this machine's kernel: a later test takes back the event an earlier
one armed, sees only its own events, and everything is gone when the run ends, whatever happened."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from ktrace_testing import append_line, build_probed, ours_in_this_process, tracefs_state
from pytest_ktrace._warm import PARKING_FILTER

pytest_plugins = ["pytester"]

TRACEFS = Path("/sys/kernel/tracing")


def _suite(pytester: pytest.Pytester, probed: Path, body: str) -> None:
    pytester.makepyfile(test_parked=f"BIN = {str(probed)!r}\n" + textwrap.dedent(body))


def test_a_later_test_takes_back_the_event_and_sees_only_its_own_calls(pytester: pytest.Pytester, probed: Path) -> None:
    _suite(
        pytester,
        probed,
        """
        import subprocess
        from pathlib import Path

        SEEN = []

        def _filter(ktrace, probe):
            path = Path("/sys/kernel/tracing") / ktrace.instance_path / "events" / probe.spec.event_dir / "filter"
            return path.read_text().strip()

        def test_first(ktrace):
            fib = ktrace.uprobe(BIN, "fib", n="$arg1:s32")
            ktrace.run([BIN, "fib", "2"])
            fib.assert_call_count(3)
            SEEN.append((ktrace.instance, fib.spec.event_dir))

        def test_calls_between_tests_are_not_recorded(ktrace):
            # the parked event still fires but its filter passes nothing
            subprocess.run([BIN, "fib", "4"], check=True, stdout=subprocess.DEVNULL)
            fib = ktrace.uprobe(BIN, "fib", n="$arg1:s32")
            assert (ktrace.instance, fib.spec.event_dir) == SEEN[0]  # the same instance, the same event
            ktrace.run([BIN, "fib", "3"])
            fib.assert_call_count(5)  # not 3 + 9 + 5: the buffer was cleared, parked calls never recorded
            fib.assert_any_call(n=3)

        def test_a_filter_of_its_own(ktrace):
            fib = ktrace.uprobe(BIN, "fib", n="$arg1:s32", filter="n == 1")
            assert fib.spec.event_dir == SEEN[0][1]
            ktrace.run([BIN, "fib", "3"])
            fib.assert_call_count(2)
            assert _filter(ktrace, fib) == "n == 1"

        def test_other_arguments_are_another_event(ktrace):
            fib = ktrace.uprobe(BIN, "fib")
            assert fib.spec.event_dir != SEEN[0][1]
            ktrace.run([BIN, "fib", "1"])
            fib.assert_call_count(1)

        def test_parked_events_pass_nothing(ktrace):
            ktrace.arm()
            events = Path("/sys/kernel/tracing") / ktrace.instance_path / "events" / SEEN[0][1]
            assert events.joinpath("enable").read_text().strip() == "1"
            assert events.joinpath("filter").read_text().strip() == PARKING
        """.replace("PARKING", repr(PARKING_FILTER)),
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=5)
    assert ours_in_this_process(tracefs_state()) == []


def test_a_tracepoint_is_parked_and_taken_back_too(pytester: pytest.Pytester, probed: Path) -> None:
    _suite(
        pytester,
        probed,
        """
        SEEN = []

        def _exec(ktrace):
            return ktrace.tracepoint("sched:sched_process_exec", filter=f'filename == "{BIN}"')

        def test_first(ktrace):
            execs = _exec(ktrace)
            ktrace.run([BIN, "fib", "1"])
            execs.assert_call_count(1)
            SEEN.append(ktrace.instance)

        def test_again(ktrace):
            execs = _exec(ktrace)
            assert ktrace.instance == SEEN[0]
            ktrace.run([BIN, "fib", "1"])
            ktrace.run([BIN, "fib", "1"])
            execs.assert_call_count(2)  # its own two, not the first test's
        """,
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)
    assert ours_in_this_process(tracefs_state()) == []


def test_a_file_rebuilt_in_place_gets_a_new_probe(pytester: pytest.Pytester, tmp_path: Path) -> None:
    built = build_probed(tmp_path)
    moving = tmp_path / "moving"
    shutil.copy(built, moving)
    pytester.makepyfile(
        test_rebuilt=f"""
        import os, shutil
        BIN, SOURCE = {str(moving)!r}, {str(built)!r}
        NAMES = []

        def test_before(ktrace):
            fib = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "2"])
            fib.assert_call_count(3)
            NAMES.append(fib.spec.event_dir)

        def test_after_the_file_was_replaced(ktrace):
            os.unlink(BIN)
            shutil.copy(SOURCE, BIN)  # a new inode: the parked uprobe stays on the old one
            fib = ktrace.uprobe(BIN, "fib")
            assert fib.spec.event_dir != NAMES[0]
            ktrace.run([BIN, "fib", "2"])
            fib.assert_call_count(3)
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert ours_in_this_process(tracefs_state()) == []


def test_fresh_probes_gives_each_test_its_own_instance(pytester: pytest.Pytester, probed: Path) -> None:
    _suite(
        pytester,
        probed,
        """
        import pytest
        SEEN = []

        def test_one(ktrace):
            fib = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "1"])
            SEEN.append((ktrace.instance, fib.spec.event_dir))

        @pytest.mark.ktrace(fresh_probes=True)
        def test_marked(ktrace):
            fib = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "1"])
            assert (ktrace.instance, fib.spec.event_dir) != SEEN[0]
            assert fib.spec.event_dir != SEEN[0][1]
        """,
    )
    assert pytester.runpytest("-p", "no:randomly").ret == 0
    everywhere = pytester.runpytest("-p", "no:randomly", "--ktrace-fresh-probes", "-k", "one")
    everywhere.assert_outcomes(passed=1)
    assert ours_in_this_process(tracefs_state()) == []


def test_an_instance_removed_behind_our_back_fails_one_test_and_the_run_goes_on(
    pytester: pytest.Pytester, probed: Path
) -> None:
    _suite(
        pytester,
        probed,
        """
        import os

        def test_first(ktrace):
            ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "1"])

        def test_someone_removes_our_instance(ktrace):
            root = "/sys/kernel/tracing"
            name = ktrace.instance
            for line in open(f"{root}/instances/{name}/set_event").read().split():
                fd = os.open(f"{root}/instances/{name}/events/{line.replace(':', '/')}/enable", os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            os.rmdir(f"{root}/instances/{name}")

        def test_after_it(ktrace):
            fib = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "1"])

        def test_and_the_next(ktrace):
            fib = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "2"])
            fib.assert_call_count(3)
        """,
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*TargetError: arming failed: instances/ktrace_*/trace is gone (ENOENT): the run's instance*removed by "
            "someone else after the previous test; the next test starts a new instance*"
        ]
    )
    assert ours_in_this_process(tracefs_state()) == []


def test_a_parked_event_someone_else_holds_fails_the_run_naming_the_test_that_armed_it(
    pytester: pytest.Pytester, probed: Path
) -> None:
    _suite(
        pytester,
        probed,
        """
        import os

        def test_arms_fib(ktrace):
            fib = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "1"])
            # someone enables our event in the top-level buffer too: its removal is EBUSY while they hold it
            fd = os.open(f"/sys/kernel/tracing/events/{fib.spec.event_dir}/enable", os.O_WRONLY)
            os.write(fd, b"1")
            os.close(fd)
            with open("held", "w") as note:
                note.write(fib.spec.event_dir)
        """,
    )
    result = pytester.runpytest("-p", "no:randomly")
    event = (pytester.path / "held").read_text()
    (TRACEFS / "events" / event / "enable").write_text("0")
    append_line(TRACEFS / "uprobe_events", f"-:{event}\n")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-ktrace found problems after these tests ended (their parked probes, their teardown):",
            "*local: test_parked.py::test_arms_fib: Write uprobe_events: EBUSY*",
        ]
    )
    assert ours_in_this_process(tracefs_state()) == []


def test_a_parked_probe_that_cannot_be_removed_fails_the_run_naming_its_test(
    pytester: pytest.Pytester, probed: Path
) -> None:
    _suite(
        pytester,
        probed,
        """
        import os

        def test_leaves_a_reader_open(ktrace):
            ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "1"])
            # a reader of the run's instance that outlives the test: removing the instance is EBUSY until it closes
            fd = os.open(f"/sys/kernel/tracing/{ktrace.instance_path}/trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
            with open("held", "w") as note:
                note.write(f"{fd} {ktrace.instance}")
        """,
    )
    result = pytester.runpytest("-p", "no:randomly")
    fd, instance = (pytester.path / "held").read_text().split()
    os.close(int(fd))
    os.rmdir(TRACEFS / "instances" / instance)
    assert ours_in_this_process(tracefs_state()) == []
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-ktrace found problems after these tests ended (their parked probes, their teardown):",
            "*local: this run: Rmdir instances/ktrace_*: EBUSY*",
        ]
    )
