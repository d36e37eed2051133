"""The kernel log of each test: captured from ``printk:console`` in the test's instance, splats fail the test.

The real-kernel tests make this machine's kernel print through ``/dev/kmsg``: the line arrives as a
``printk:console`` event of the writing task, exactly as a driver's printk would (a real WARN needs a module; the
qemu guest suites provoke those).
"""

from __future__ import annotations

import pytest

from pytest_ktrace._events import Event
from pytest_ktrace._kernel_log import KernelLog, LogLine, find_splats, lines_of, taint_letters

QUIET = ("-p", "no:cacheprovider")
FAKE = ("--ktrace-backend=fake", "--ktrace-snapshot=debian-6.12-x86_64")
WARN_LINE = "WARNING: CPU: 0 PID: 1 at drivers/ktrace/selftest.c:12 ktrace_selftest+0x10/0x20"


def _console(*texts: str, pid: int = 7) -> list[Event]:
    return [
        Event("printk", "console", {"msg": text}, pid=pid, comm="insmod", cpu=0, timestamp=10.0 + index)
        for index, text in enumerate(texts)
    ]


# ------------------------------------------------------------------------------------------------- recognising
@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (WARN_LINE, "WARNING"),
        ("BUG: kernel NULL pointer dereference, address: 0000000000000008", "BUG"),
        ("kernel BUG at drivers/ktrace/selftest.c:40!", "BUG"),
        ("BUG: KASAN: slab-out-of-bounds in ktrace_selftest+0x2c/0x40", "KASAN"),
        ("BUG: KFENCE: use-after-free read in ktrace_selftest+0x2c/0x40", "KFENCE"),
        ("UBSAN: array-index-out-of-bounds in drivers/ktrace/selftest.c:30:9", "UBSAN"),
        ("WARNING: possible circular locking dependency detected", "lockdep"),
        ("WARNING: possible recursive locking detected", "lockdep"),
        ("Oops: general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP", "Oops"),
        ("Internal error: Oops: 0000000096000005 [#1] PREEMPT SMP", "Oops"),
        ("Unable to handle kernel NULL pointer dereference at virtual address 0000000000000000", "Oops"),
        ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "RCU stall"),
        ("rcu: INFO: rcu_sched self-detected stall on CPU", "RCU stall"),
        ("INFO: task kworker/0:1:35 blocked for more than 122 seconds.", "hung task"),
        ("Kernel panic - not syncing: Fatal exception", "panic"),
    ],
)
def test_every_kind_of_splat_is_recognised(line: str, kind: str) -> None:
    (splat,) = find_splats(lines_of(_console("ktrace_selftest: loading", line, "---[ end trace 0000 ]---")))
    assert splat.kind == kind and splat.headline == line


@pytest.mark.parametrize(
    "line",
    [
        "ktrace_selftest: irq 30 requested",
        "usb 1-1: new high-speed USB device number 2 using xhci_hcd",
        "a WARNING: in the middle of a line is not a report",
        "EXT4-fs (vda1): mounted filesystem with ordered data mode",
    ],
)
def test_ordinary_lines_are_not_splats(line: str) -> None:
    assert find_splats(lines_of(_console(line))) == []


def test_a_report_keeps_its_own_lines_and_joins_the_module_list() -> None:
    events = _console(
        "------------[ cut here ]------------",
        "ktbar: asked to warn",
        WARN_LINE,
        "Modules linked in:",
        " ktbar_mod(OE+)",
        " virtio_net",
        "CPU: 0 PID: 106 Comm: insmod Tainted: G           OE      6.1.0-57-amd64 #1  Debian 6.1.158-1",
        "Call Trace:",
        " <TASK>",
        " dump_stack_lvl+0x44/0x5c",
        "---[ end trace 0000000000000000 ]---",
        "ktbar: after the report",
    ) + _console("another task's line", pid=9)
    (splat,) = find_splats(lines_of(events))
    texts = [line.text for line in splat.lines]
    assert texts[0] == "ktbar: asked to warn"  # a WARN's own message comes before its WARNING line
    assert splat.headline == WARN_LINE and texts[-1] == "---[ end trace 0000000000000000 ]---"
    assert "Modules linked in: ktbar_mod(OE+) virtio_net" in texts
    assert " dump_stack_lvl+0x44/0x5c" in texts  # a call trace line is a line of its own
    assert "ktbar: after the report" not in texts and "another task's line" not in texts


def test_the_module_list_of_6_1_has_no_blanks_before_its_fragments() -> None:
    (line,) = lines_of(_console("Modules linked in:", "ktbar(OE+)", "virtio_net"))
    assert line.text == "Modules linked in: ktbar(OE+) virtio_net"


def test_two_reports_are_two_splats() -> None:
    splats = find_splats(lines_of(_console(WARN_LINE, "BUG: scheduling while atomic: insmod/106/0x00000002")))
    assert [splat.kind for splat in splats] == ["WARNING", "BUG"]


def test_taint_letters_follow_the_kernel() -> None:
    assert taint_letters(0) == "G"
    assert taint_letters(4096 | 8192) == "OE"  # an unsigned out-of-tree module
    assert taint_letters(512 | 4096) == "WO"


def test_expectations_absorb_their_splat_and_fail_when_unmet() -> None:
    log = KernelLog("fail", captured=True)
    log.expect(r"selftest\.c:12")
    log.update(_console(WARN_LINE))
    assert log.problems(final=True) == []
    log = KernelLog("fail", captured=True)
    log.expect(r"never printed")
    log.update(_console("ktbar: fine"))
    assert log.problems(final=True) == ["kernel_log.expect('never printed'): the kernel printed no such splat"]


def test_each_splat_is_reported_once() -> None:
    log = KernelLog("fail", captured=True)
    log.update(_console(WARN_LINE))
    assert len(log.problems(final=False)) == 1
    assert log.problems(final=False) == []
    log.update(_console(WARN_LINE, "BUG: scheduling while atomic: insmod/106/0x00000002"))
    (problem,) = log.problems(final=False)
    assert "printed a BUG" in problem


def test_lines_print_with_their_task() -> None:
    assert str(LogLine(12.5, "insmod", 106, "ktbar: hi")) == "12.500000 insmod-106: ktbar: hi"


# ----------------------------------------------------------------------------------------- this machine's kernel
KMSG_SUITE = """
import time
import pytest

def kmsg(ktrace, text, level=4):
    # the shell quotes nothing: the line travels as an argument
    return ktrace.run(["sh", "-c", 'printf "%s\\\\n" "$1" > /dev/kmsg', "sh", f"<{level}>{text}"], check=True)

def test_warn_fails_a_passing_test(ktrace):
    kmsg(ktrace, "WARNING: CPU: 0 PID: 1 at drivers/ktrace/selftest.c:12 ktrace_selftest+0x10/0x20")

def test_expected_warn_passes(ktrace):
    ktrace.kernel_log.expect(r"ktrace_selftest\\+0x10")
    kmsg(ktrace, "WARNING: CPU: 0 PID: 1 at drivers/ktrace/selftest.c:12 ktrace_selftest+0x10/0x20")

def test_expected_warn_that_never_comes_fails(ktrace):
    ktrace.kernel_log.expect(r"ktrace_selftest")
    kmsg(ktrace, "ktrace_selftest: all quiet", level=6)

def test_ordinary_lines_are_readable_and_not_events(ktrace):
    kmsg(ktrace, "ktrace_selftest: hello from the test", level=6)
    line = ktrace.kernel_log.assert_printed(r"hello from the test")
    assert line.comm == "sh" and line.pid == ktrace.runs[0].pid
    assert not [e for e in ktrace.events if e.system == "printk"]

def test_splat_after_the_last_look(ktrace):
    kmsg(ktrace, "ktrace_selftest: before", level=6)
    late = '(sleep 0.3; printf "%s\\\\n" "<4>BUG: ktrace_selftest late" > /dev/kmsg) >/dev/null 2>&1 &'
    ktrace.run(["sh", "-c", late])
    time.sleep(1.0)
"""


def test_kernel_splats_fail_tests_on_this_kernel(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kmsg=KMSG_SUITE)
    result = pytester.runpytest(*QUIET, "-rA")
    result.assert_outcomes(passed=3, failed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_warn_fails_a_passing_test _*",
            "pytest-ktrace (after the test): the kernel printed a WARNING during this test:",
            "    * sh-*: WARNING: CPU: 0 PID: 1 at drivers/ktrace/selftest.c:12 ktrace_selftest+0x10/0x20",
        ]
    )
    result.stdout.fnmatch_lines(  # the failure's trace section shows the log with its task
        [
            "*_ test_warn_fails_a_passing_test _*",
            "*- ktrace trace -*",
            "kernel log (1 line):",
            "  * sh-*: WARNING: CPU: 0 PID: 1 at drivers/ktrace/selftest.c:12 ktrace_selftest+0x10/0x20",
        ]
    )
    result.stdout.fnmatch_lines(["*kernel_log.expect('ktrace_selftest'): the kernel printed no such splat*"])
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_splat_after_the_last_look*",
            "*pytest-ktrace (at teardown, since the test's last look): the kernel printed a BUG during this test:",
        ]
    )


def test_warn_and_off_policies(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kmsg=KMSG_SUITE)
    warned = pytester.runpytest(*QUIET, "--ktrace-kernel-log=warn", "-k", "warn_fails")
    warned.assert_outcomes(passed=1, warnings=1)
    warned.stdout.fnmatch_lines(["*PytestWarning: pytest-ktrace (after the test): the kernel printed a WARNING*"])
    off = pytester.runpytest(*QUIET, "--ktrace-kernel-log=off", "-k", "warn_fails or ordinary")
    off.assert_outcomes(passed=1, failed=1)
    off.stdout.fnmatch_lines(["*the kernel log is not captured in this test (--ktrace-kernel-log=off)*"])


def test_the_ini_allow_list_and_the_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kmsg=KMSG_SUITE)
    pytester.makeini("[pytest]\nktrace_kernel_log_allow =\n    selftest\\.c:12\n")
    pytester.runpytest(*QUIET, "-k", "warn_fails").assert_outcomes(passed=1)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_marked="""
        import pytest
        from test_kmsg import kmsg

        @pytest.mark.ktrace(kernel_log="off")
        def test_marked(ktrace):
            kmsg(ktrace, "WARNING: CPU: 0 PID: 1 at drivers/ktrace/selftest.c:12 ktrace_selftest+0x10/0x20")

        @pytest.mark.ktrace(kernel_log="loud")
        def test_bad_value(ktrace):
            pass
        """
    )
    result = pytester.runpytest(*QUIET, "test_marked.py")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.ktrace(kernel_log='loud'): use one of fail, warn, off*"])


# ------------------------------------------------------------------------------------------------------ the fake
def test_the_fake_captures_the_log_like_the_kernel(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fake_log="""
        def test_splat(ktrace):
            console = ktrace.tracepoint("printk:console")
            ktrace.inject(console, msg="WARNING: CPU: 1 PID: 9 at drivers/x.c:3 x_probe+0x1/0x2", task_comm="modprobe")
            assert console.call_count == 1

        def test_quiet(ktrace):
            console = ktrace.tracepoint("printk:console")
            ktrace.inject(console, msg="x: probed", task_comm="modprobe")
            ktrace.kernel_log.assert_printed("probed")
        """
    )
    result = pytester.runpytest(*QUIET, *FAKE)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*the kernel printed a WARNING during this test:*", "* modprobe-*: WARNING: CPU: 1*"])


def test_a_taint_change_is_a_problem_unless_expected() -> None:
    from pytest_ktrace._kernel_log import TAINT_READ
    from pytest_ktrace.backends._base import OpResult

    log = KernelLog("fail", captured=True)
    log.note_taint(OpResult(TAINT_READ, ok=True, data="4096\n"))
    log.note_taint(OpResult(TAINT_READ, ok=True, data=f"{4096 | 512}\n"))
    assert log.problems(final=False) == [
        "the kernel's taint changed during this test: O -> WO (W: a WARNING was issued)"
    ]
    assert log.problems(final=False) == []  # once
    expecting = KernelLog("fail", captured=True)
    expecting.expect_taint("OE")
    expecting.note_taint(OpResult(TAINT_READ, ok=True, data="0"))
    expecting.note_taint(OpResult(TAINT_READ, ok=True, data="12288"))
    assert expecting.problems(final=True) == []
    unreadable = KernelLog("fail", captured=True)
    unreadable.note_taint(OpResult(TAINT_READ, ok=True, data=""))  # a target without the file: no check
    unreadable.note_taint(OpResult(TAINT_READ, ok=True, data="512"))
    assert unreadable.problems(final=False) == []


def test_the_fake_models_taint(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fake_taint="""
        def test_taints(ktrace, ktrace_target):
            ktrace.kernel_log  # the test starts tracing: its starting taint is read with the first batch
            ktrace_target.backend.taint |= 512

        def test_taints_on_purpose(ktrace, ktrace_target):
            ktrace.kernel_log.expect_taint("O")  # the fake is the run's: W is set already, O is new
            ktrace_target.backend.taint |= 4096
        """
    )
    result = pytester.runpytest(*QUIET, *FAKE)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*at teardown, since the test's last look*: the kernel's taint changed during this test: G -> W (W: *"]
    )


def test_the_report_directory_keeps_the_log(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kmsg=KMSG_SUITE)
    pytester.runpytest(*QUIET, "-k", "warn_fails", "--ktrace-report=report").assert_outcomes(failed=1)
    (log,) = (pytester.path / "report").rglob("kernel-log.txt")
    assert "WARNING: CPU: 0 PID: 1 at drivers/ktrace/selftest.c:12" in log.read_text()
    index = (pytester.path / "report" / "index.html").read_text()
    assert ">kernel log</a>" in index and "<summary>kernel log</summary>" in index


def test_cassettes_keep_the_log_and_replay_the_verdict(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kmsg=KMSG_SUITE)
    chosen = ("-k", "warn_fails or ordinary")
    pytester.runpytest(*QUIET, "--ktrace-record", *chosen).assert_outcomes(passed=1, failed=1)
    cassette = (pytester.path / "cassettes" / "test_kmsg" / "test_warn_fails_a_passing_test.json").read_text()
    assert "console: msg=WARNING: CPU: 0 PID: 1 at drivers/ktrace/selftest.c:12" in cassette
    replayed = pytester.runpytest(*QUIET, "--ktrace-backend=fake", *chosen)
    replayed.assert_outcomes(passed=1, failed=1)
    replayed.stdout.fnmatch_lines(["*the kernel printed a WARNING during this test:*"])


# ----------------------------------------------------------------------------------------------------- parsing
CONSOLE_FORMAT = """name: console
ID: 334
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] msg;\toffset:8;\tsize:4;\tsigned:1;

print fmt: "%s", __get_str(msg)
"""


@pytest.mark.parametrize(
    "body",
    [
        'ktbar: loading (name="two words" fail_init=0 warn=1)',  # words that look like key=value
        "ktbar: irq 24 requested",
        "msg=a line that begins like the fields option",  # printed by the fields option: the value is the text
    ],
)
def test_a_log_line_is_parsed_whole_whatever_it_says(body: str) -> None:
    """Without the ``fields`` option a console event prints its line as it is (6.1): the parser takes all of it as
    ``msg``, however many ``key=value`` words the text holds."""
    from pytest_ktrace._formats import FormatCatalog, parse_format
    from pytest_ktrace._parse import TraceParser

    catalog = FormatCatalog()
    catalog.add(parse_format(CONSOLE_FORMAT, "printk"))
    [event] = TraceParser(catalog).parse(f"          insmod-179     [000] .....     5.658194: console: {body}\n").events
    expected = body.removeprefix("msg=") if body.startswith("msg=") else body
    assert event.fields == {"msg": expected}
    assert [line.text for line in lines_of([event])] == [expected]
