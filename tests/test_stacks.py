"""stacktrace=True: the kernel's stacktrace trigger, on this machine's real tracepoints and uprobes, on the fake
(which must print what the kernel prints), and the parser of <stack trace> entries on kernel-shaped text."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ktrace_testing import run_pytest
from pytest_ktrace import KtraceError
from pytest_ktrace._stacks import frame_name, stacks_by_event

TRACEFS = Path("/sys/kernel/tracing")
pytest_plugins = ["pytester"]


def test_exec_is_called_from_execve(ktrace) -> None:
    execs = ktrace.tracepoint("sched:sched_process_exec", stacktrace=True)
    result = ktrace.run(["/bin/true"])
    # (over SSH the command's pid first execs the remote shell's setsid and sh: take the exec of /bin/true)
    [event] = [e for e in execs.events if e.pid == result.pid and e["filename"] == "/bin/true"]
    # what the kernel's exec path is made of on every 6.x kernel
    assert "bprm_execve" in event.stack, event.stack
    assert event.stack[0] == "bprm_execve", event.stack  # the tracepoint's own writer frames are left out
    assert [f.split(".")[0] for f in event.stack].index("do_execveat_common") == 1
    execs.assert_called_from("bprm_execve")
    execs.assert_called_from("do_execveat_common")  # matches the .isra.0 clone
    execs.assert_not_called_from("kernel_clone")
    with pytest.raises(AssertionError, match=r"was not called from do_exit\.\nStack 1 \(\d+ hits?\):\n    => "):
        execs.assert_called_from("do_exit")
    with pytest.raises(AssertionError, match="was called from bprm_execve in 1 of 1 hit"):
        execs.where(pid=result.pid, filename="/bin/true").assert_not_called_from("bprm_execve")


def test_the_trigger_keeps_the_probes_filter_and_is_removed(ktrace) -> None:
    execs = ktrace.tracepoint("sched:sched_process_exec", filter='filename ~ "*/true"', stacktrace=True)
    result = ktrace.run(["sh", "-c", "/bin/true; /bin/echo x"])
    mine = [event for event in execs.events if event.pid != result.pid or event["filename"].endswith("/true")]
    assert [event["filename"] for event in mine] == ["/bin/true"] and mine[0].stack[0] == "bprm_execve"
    # the filtered-out execs (sh, echo) got no stack entry either: one entry per kept event
    assert ktrace.trace_text.count("<stack trace>") == len(execs.events)
    trigger = TRACEFS / ktrace.instance_path / "events" / execs.spec.event_dir / "trigger"
    assert trigger.read_text().strip() == 'stacktrace:unlimited if filename ~ "*/true"'
    ktrace.teardown()
    assert not trigger.exists()


def test_uprobe_stacks_are_the_programs_own_frames(ktrace, probed: Path) -> None:
    fib = ktrace.uprobe(str(probed), "fib", n="$arg1:s32", stacktrace=True)
    ktrace.run([str(probed), "fib", "3"])
    # fib(3) from main; fib(2) and fib(1) from fib(3); fib(1), fib(0) from fib(2): caller depth = recursion depth
    depths = [event.stack.index("main") for event in fib.events]
    assert [event["n"] for event in fib.events] == [3, 2, 1, 0, 1]
    assert depths == [1, 2, 3, 3, 2], [event.stack for event in fib.events]
    assert all(set(event.stack[: event.stack.index("main")]) == {"fib"} for event in fib.events)
    fib.assert_called_from("main")
    fib.where(n=0).assert_called_from("fib")
    with pytest.raises(AssertionError, match="was not called from setup_thing"):
        fib.assert_called_from("setup_thing")
    # the frames after main are the C library's, outside the binary: left as addresses
    assert all(frame.startswith("0x") for event in fib.events for frame in event.stack[event.stack.index("main") + 1 :])


def test_probes_without_stacktrace_have_none(ktrace, probed: Path) -> None:
    plain = ktrace.uprobe(str(probed), "setup_thing", irq="$arg1:s32")
    ktrace.run([str(probed), "setup", "eth0", "5"])
    assert plain.events[0].stack == ()
    with pytest.raises(TypeError, match="define it with stacktrace=True"):
        plain.assert_called_from("main")


def test_bad_stacktrace_values_are_refused(ktrace) -> None:
    with pytest.raises(KtraceError, match="stacktrace= must be True or False"):
        ktrace.tracepoint("sched:sched_process_exec", stacktrace="yes")


# ------------------------------------------------------------------------------------------------ fake

FAKE_SUITE = """
import pytest

def test_stack(ktrace):
    setup = ktrace.kprobe("__setup_irq", irq="$arg1:u32", stacktrace=True, filter="irq > 1")
    ktrace.inject(setup, irq=5, stack=["__setup_irq", "request_threaded_irq", "i8042_probe"])
    ktrace.inject(setup, irq=1, stack=["__setup_irq", "elsewhere"])  # filtered out: no stack entry either
    assert [e["irq"] for e in setup.events] == [5]
    assert setup.events[0].stack == ("__setup_irq", "request_threaded_irq", "i8042_probe")
    assert ktrace.trace_text.count("<stack trace>") == 1
    setup.assert_called_from("request_threaded_irq")
    setup.assert_called_from("request_irq")
"""


def test_fake_stacks_and_the_failure_message(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fake=FAKE_SUITE)
    result = pytester.runpytest("--ktrace-backend=fake", "--ktrace-snapshot=debian-6.1-x86_64")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *AssertionError: __setup_irq was not called from request_irq.",
            "E *Stack 1 (1 hit):",
            "E *    => __setup_irq",
            "E *    => request_threaded_irq",
            "E *    => i8042_probe",
            "E *Hint: close names on these stacks: request_threaded_irq",
        ]
    )


# ------------------------------------------------------------------------------------------------ parsing


def test_stack_entries_attach_to_the_last_event_of_their_cpu() -> None:
    text = textwrap.dedent(
        """\
        # tracer: nop
                  insmod-812     [001] .....    91.203000: p___setup_irq: (__setup_irq+0x0/0x6e0) irq=0x1
                    sshd-77      [000] .....    91.203001: sched_switch: prev_comm=sshd next_comm=swapper/0
                  insmod-812     [001] .....    91.203002: <stack trace>
         => kprobe_trace_func+0x1c/0x60
         => kprobe_dispatcher+0x40/0x70
         => 0xffffffffc02190c8
         => __setup_irq+0x0/0x6e0
         => request_threaded_irq+0x10c/0x1a0
         => [FTRACE TRAMPOLINE]
                    sshd-77      [000] .....    91.203003: <stack trace>
         => __schedule
                  insmod-812     [001] .....    91.203004: <user stack trace>
         =>  <00007f6ff1f86b70>
        """
    )
    stacks = stacks_by_event(text)
    assert stacks.user == {(1, 812, 91.203, "p___setup_irq"): (0x7F6FF1F86B70,)}
    assert stacks.kernel == {
        (1, 812, 91.203, "p___setup_irq"): ("__setup_irq", "request_threaded_irq", "[FTRACE TRAMPOLINE]"),
        (0, 77, 91.203001, "sched_switch"): ("__schedule",),
    }
    assert frame_name(" do_execveat_common.isra.0 ") == "do_execveat_common.isra.0"


REPLAY_SUITE = """
def test_exec_stack(ktrace):
    execs = ktrace.tracepoint("sched:sched_process_exec", filter='filename ~ "*/true"', stacktrace=True)
    ktrace.run(["/bin/true"])
    execs.assert_called_from("CALLER")
"""


def test_recorded_stacks_replay_on_the_fake(tmp_path: Path) -> None:
    suite = tmp_path / "test_replayed.py"
    suite.write_text(REPLAY_SUITE.replace("CALLER", "bprm_execve"))
    recorded = run_pytest(tmp_path, "--ktrace-record")
    assert recorded.returncode == 0, recorded.stdout[-3000:]
    replayed = run_pytest(tmp_path, "--ktrace-backend=fake")
    assert replayed.returncode == 0 and "1 passed" in replayed.stdout, replayed.stdout[-3000:]
    suite.write_text(REPLAY_SUITE.replace("CALLER", "do_exit"))
    changed = run_pytest(tmp_path, "--ktrace-backend=fake")
    assert changed.returncode == 1 and "was not called from do_exit" in changed.stdout, changed.stdout[-3000:]
