"""What a test names in an event, one rule everywhere: fields by name, the task as task_pid/task_comm/task_cpu
(pid/comm/cpu where the event has no such field); inject's timestamps; readable order failures and sessions."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

FAKE = ("-p", "no:cacheprovider", "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.1-x86_64")


def _run(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    header = "import pytest\nfrom pytest_ktrace import KtraceError\n"
    pytester.makepyfile(test_injected_suite=header + textwrap.dedent(body))
    return pytester.runpytest(*FAKE)


def test_fields_and_the_task_are_kept_apart(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        def test_wakeup(ktrace):
            wakeup = ktrace.tracepoint("sched:sched_wakeup")
            # sched_wakeup has fields comm and pid: they are the woken task; the task_* are the waker
            ktrace.inject(wakeup, comm="worker", pid=77, prio=120, target_cpu=1,
                          task_comm="kworker/0:1", task_pid=12, task_cpu=1)
            [event] = wakeup.events
            assert (event.fields["comm"], event.fields["pid"]) == ("worker", 77)
            assert (event.comm, event.pid, event.cpu) == ("kworker/0:1", 12, 1)
            wakeup.assert_called_once_with(comm="worker", pid=77, task_comm="kworker/0:1", task_pid=12)
            assert wakeup.where(pid=77).call_count == 1 and wakeup.where(pid=12).call_count == 0
            assert wakeup.where(task_pid=12).call_count == 1 and wakeup.where(task_cpu=0).call_count == 0

        def test_shorthands_name_the_task_where_the_event_has_no_such_field(ktrace):
            setup = ktrace.kprobe("__setup_irq", irq="$arg1:u32")
            ktrace.inject(setup, irq=5, pid=300, comm="modprobe")  # a kprobe has no field pid or comm
            [event] = setup.events
            assert (event.pid, event.comm) == (300, "modprobe")
            setup.assert_called_with(irq=5, pid=300, comm="modprobe")
            assert setup.where(pid=300).call_count == 1

        def test_an_unknown_name_says_what_can_be_named(ktrace):
            setup = ktrace.kprobe("__setup_irq", irq="$arg1:u32")
            with pytest.raises(KtraceError, match=r"has no field 'irqq' \\(its fields: irq; the task: task_pid"):
                ktrace.inject(setup, irqq=5)
            ktrace.inject(setup, irq=5)
            with pytest.raises(AssertionError, match="irqq: no such field \\\\(the task is task_pid"):
                setup.assert_called_with(irqq=5)
        """,
    )
    result.assert_outcomes(passed=3)


def test_injected_timestamps_make_latency_exact(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        def test_latency(ktrace):
            entry = ktrace.kprobe("__setup_irq", irq="$arg1:u32")
            done = ktrace.kretprobe("__setup_irq", ret="$retval:s32")
            ktrace.inject(entry, irq=5, task_pid=40, timestamp=100.0)
            ktrace.inject(done, ret=0, task_pid=40, timestamp=100.000250)
            assert [e.timestamp for e in entry.events + done.events] == [100.0, 100.00025]
            ktrace.assert_latency(entry, done, max_us=250)
            with pytest.raises(AssertionError, match="250"):
                ktrace.assert_latency(entry, done, max_us=249)
            with pytest.raises(KtraceError, match="timestamp= must be seconds"):
                ktrace.inject(entry, irq=5, timestamp=-1)
        """,
    )
    result.assert_outcomes(passed=1)


def test_order_of_one_functions_entry_and_return_names_them(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        def test_order(ktrace):
            entry = ktrace.kprobe("__setup_irq", irq="$arg1:u32")
            done = ktrace.kretprobe("__setup_irq", ret="$retval:s32")
            ktrace.inject(done, ret=0, timestamp=1.0)
            ktrace.inject(entry, irq=5, timestamp=2.0)
            ktrace.assert_order(entry, done)
        """,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*Expected __setup_irq (entry) before __setup_irq (return), but __setup_irq (return) came first.*"]
    )


def test_a_session_shows_what_it_is(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import re

        def test_repr(ktrace):
            ktrace.kprobe("__setup_irq")
            assert re.fullmatch(r"<TraceSession ktrace_\\w+ on fake: 0 of 1 probe\\(s\\) armed>", repr(ktrace))
            ktrace.arm()
            assert repr(ktrace).endswith(": 1 of 1 probe(s) armed>")
        """,
    )
    result.assert_outcomes(passed=1)


def test_a_return_and_the_next_call_in_one_microsecond_pair_in_trace_order(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        def test_ties(ktrace):
            entry = ktrace.kprobe("__setup_irq", irq="$arg1:u32")
            done = ktrace.kretprobe("__setup_irq", ret="$retval:s32")
            hist = ktrace.latency_histogram(entry, done)
            ktrace.inject(entry, irq=1, task_pid=7, timestamp=1.0)
            ktrace.inject(done, ret=0, task_pid=7, timestamp=2.0)
            ktrace.inject(entry, irq=2, task_pid=7, timestamp=2.0)  # the next call, in the same microsecond
            ktrace.inject(done, ret=0, task_pid=7, timestamp=3.0)
            assert ktrace.assert_latency(entry, done) == [1e6, 1e6]
            assert (hist.count, hist.min, hist.max) == (2, 1e6, 1e6)
        """,
    )
    result.assert_outcomes(passed=1)
