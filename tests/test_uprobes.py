"""The local backend against this machine's real kernel: uprobes and uretprobes on tests/prog/probed.c."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ktrace import ANY, MissingBinary, ProbeRejected, UnknownSymbol, UnsupportedFetchArg
from pytest_ktrace._errors import KtraceError


def test_arguments_strings_and_return(ktrace, probed: Path) -> None:
    entry = ktrace.uprobe(str(probed), "setup_thing", irq="$arg1:s32", name="+0($arg2):string")
    done = ktrace.uretprobe(str(probed), "setup_thing")
    result = ktrace.run([str(probed), "setup", "eth2", "30"])
    assert result.stdout == "setup_thing=0\n"
    entry.assert_called_once_with(irq=30, name="eth2")
    done.assert_returned(0)
    ktrace.assert_order(entry, done)
    assert entry.events[0].pid == result.pid
    assert entry.events[0].comm == "probed"


def test_negative_return_is_signed(ktrace, probed: Path) -> None:
    done = ktrace.uretprobe(str(probed), "setup_thing")
    ktrace.run([str(probed), "setup", "eth0", "5000"])
    done.assert_returned(-22)
    with pytest.raises(AssertionError, match=r"setup_thing returned -22 \(expected 0\)"):
        done.assert_returned(0)


@pytest.mark.parametrize("name", ["two words", 'quo"te', "it's", "semi;colon $retval `id`", "new\nline", "é"])
def test_strings_survive_exactly(ktrace, probed: Path, name: str) -> None:
    entry = ktrace.uprobe(str(probed), "setup_thing", name="+0($arg2):string")
    ktrace.run([str(probed), "setup", name, "1"])
    entry.assert_called_once_with(name=name)


def test_hex_u64_and_types(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64", a="$arg1:u64", b="$arg2:x64", raw="$arg1")
    ktrace.run([str(probed), "add", "0xffffffffffffffff", "0x10"])
    add.assert_called_once_with(a=2**64 - 1, b=0x10, raw=2**64 - 1)


def test_struct_member_offsets(ktrace, probed: Path) -> None:
    probe = ktrace.uprobe(
        str(probed),
        "takes_struct",
        irq="+0($arg1):s32",
        count="+8($arg1):s64",
        name="+0(+16($arg1)):string",
        tag="+24($arg1):u8",
    )
    ktrace.run([str(probed), "struct", "dev0", "7", "-3"])
    probe.assert_called_once_with(irq=7, count=-3, name="dev0", tag=ord("k"))


def test_comm_and_stack_and_any(ktrace, probed: Path) -> None:
    probe = ktrace.uprobe(str(probed), "fib", n="$arg1:s32", who="$comm", sp="$stack0")
    ktrace.run([str(probed), "fib", "3"])
    probe.assert_any_call(n=3, who="probed", sp=ANY)
    probe.assert_all_calls(who="probed", n=lambda n: 0 <= n <= 3)
    assert probe.call_count == 5  # fib(3) calls fib 5 times


def test_call_count_and_not_called(ktrace, probed: Path) -> None:
    fib = ktrace.uprobe(str(probed), "fib")
    add = ktrace.uprobe(str(probed), "add_u64")
    ktrace.run([str(probed), "fib", "4"])
    fib.assert_call_count(9)
    add.assert_not_called()
    with pytest.raises(AssertionError, match="Called 9 times"):
        fib.assert_called_once()


def test_kernel_filter_on_uprobe(ktrace, probed: Path) -> None:
    small = ktrace.uprobe(str(probed), "fib", n="$arg1:s32", filter="n >= 2")
    named = ktrace.uprobe(str(probed), "setup_thing", name="+0($arg2):string", filter='name ~ "eth*"')
    ktrace.run([str(probed), "fib", "4"])
    ktrace.run([str(probed), "setup", "wlan0", "1"])
    ktrace.run([str(probed), "setup", "eth7", "1"])
    small.assert_all_calls(n=lambda n: n >= 2)
    assert small.call_count == 4  # fib(4), fib(3), fib(2), fib(2)
    named.assert_called_once_with(name="eth7")


def test_latency_pairs_per_task_with_recursion(ktrace, probed: Path) -> None:
    entry = ktrace.uprobe(str(probed), "sleep_us")
    exit_ = ktrace.uretprobe(str(probed), "sleep_us")
    ktrace.run([str(probed), "sleep", "3000"])
    [latency] = ktrace.assert_latency(entry, exit_, min_us=3000)
    with pytest.raises(AssertionError, match="latencies out of bounds"):
        ktrace.assert_latency(entry, exit_, max_us=1)
    fib_in = ktrace.uprobe(str(probed), "fib")
    fib_out = ktrace.uretprobe(str(probed), "fib")
    ktrace.run([str(probed), "fib", "3"])
    durations = ktrace.assert_latency(fib_in, fib_out)
    assert len(durations) == 5
    assert latency >= 3000


def test_where_selects_by_pid(ktrace, probed: Path) -> None:
    probe = ktrace.uprobe(str(probed), "setup_thing", name="+0($arg2):string")
    first = ktrace.run([str(probed), "setup", "a", "1"])
    second = ktrace.run([str(probed), "setup", "b", "1"])
    probe.where(pid=first.pid).assert_called_once_with(name="a")
    probe.where(pid=second.pid).assert_called_once_with(name="b")
    assert probe.call_count == 2


def test_wait_for_asynchronous_process(ktrace, probed: Path) -> None:
    import subprocess

    probe = ktrace.uprobe(str(probed), "sleep_us")
    ktrace.arm()
    proc = subprocess.Popen([str(probed), "sleep", "200000"])
    try:
        [event] = ktrace.wait_for(probe, timeout=10)
        assert event.pid == proc.pid
    finally:
        proc.wait()


def test_order_failure_shows_timeline(ktrace, probed: Path) -> None:
    entry = ktrace.uprobe(str(probed), "setup_thing")
    done = ktrace.uretprobe(str(probed), "setup_thing")
    ktrace.run([str(probed), "setup", "x", "1"])
    with pytest.raises(AssertionError, match=r"Expected ur?_?setup_thing before|came first") as info:
        ktrace.assert_order(done, entry)
    assert "First occurrences seen" in str(info.value)


def test_failure_message_shows_closest_events(ktrace, probed: Path) -> None:
    entry = ktrace.uprobe(str(probed), "setup_thing", irq="$arg1:s32", name="+0($arg2):string")
    ktrace.run([str(probed), "setup", "eth2", "31"])
    with pytest.raises(AssertionError) as info:
        entry.assert_any_call(irq=30, name="eth2")
    text = str(info.value)
    assert "setup_thing(irq=30, name='eth2') call not found." in text
    assert "differs: irq=31 (expected 30)" in text


def test_no_run_hint(ktrace, probed: Path) -> None:
    entry = ktrace.uprobe(str(probed), "setup_thing")
    with pytest.raises(AssertionError, match="nothing ran since the probes were armed"):
        entry.assert_called()


def test_argn_is_rewritten_to_registers_for_uprobes(ktrace, probed: Path) -> None:
    probe = ktrace.uprobe(str(probed), "setup_thing", irq="$arg1:s32", name="+0($arg2):string")
    expected = {"x86_64": ("%di:s32", "+0(%si):string"), "aarch64": ("%x0:s32", "+0(%x1):string")}
    arch = ktrace.target.arch
    assert dict(probe.spec.fetchargs) == dict(zip(("irq", "name"), expected[arch]))


def test_argn_on_return_probe_is_refused(ktrace, probed: Path) -> None:
    with pytest.raises(UnsupportedFetchArg, match=r"\$argN on a return probe"):
        ktrace.uretprobe(str(probed), "setup_thing", irq="$arg1")


def test_bad_fetcharg_quotes_kernel_error_log_with_caret(ktrace, probed: Path) -> None:
    ktrace.uprobe(str(probed), "setup_thing", bad="+0(%si):nosuchtype")
    with pytest.raises(ProbeRejected) as info:
        ktrace.arm()
    text = str(info.value)
    assert "Unknown type is specified" in text
    log = info.value.kernel_log.splitlines()
    assert log[1].startswith("  Command: p:ktrace_")
    caret = log[2].index("^")
    assert log[1][caret:].startswith("nosuchtype"), log
    assert "probe defined at" in text and "test_uprobes.py" in text
    assert info.value.errno_name == "EINVAL"


def test_unknown_symbol_names_close_matches(ktrace, probed: Path) -> None:
    with pytest.raises(UnknownSymbol, match=r"setup_thingy.*setup_thing"):
        ktrace.uprobe(str(probed), "setup_thingy")


def test_missing_binary(ktrace, tmp_path: Path) -> None:
    with pytest.raises(MissingBinary, match="does not exist"):
        ktrace.uprobe(str(tmp_path / "nope"), "main")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"x": "%di\n-:uprobes/foo"},
        {"x": "%di y=%si"},
        {"bad-name": "%di"},
        {"common_pid": "%di"},
    ],
)
def test_injection_and_shape_changes_are_refused(ktrace, probed: Path, kwargs: dict[str, str]) -> None:
    with pytest.raises(KtraceError):
        ktrace.uprobe(str(probed), "setup_thing", **kwargs)


def test_filter_with_newline_is_refused(ktrace, probed: Path) -> None:
    with pytest.raises(KtraceError, match="single line"):
        ktrace.uprobe(str(probed), "setup_thing", filter="common_pid > 0\n0")


def test_bad_filter_shows_kernel_parse_error(ktrace, probed: Path) -> None:
    ktrace.uprobe(str(probed), "setup_thing", irq="$arg1:s32", filter="irq >< 3")
    with pytest.raises(ProbeRejected) as info:
        ktrace.arm()
    assert "filter" in str(info.value)
    assert "parse_error" in info.value.kernel_log


def test_offset_location(ktrace, probed: Path) -> None:
    from pytest_ktrace._elf import symbol_file_offset

    offset = symbol_file_offset(probed, "add_u64")
    probe = ktrace.uprobe(str(probed), offset, a="$arg1:u64")
    ktrace.run([str(probed), "add", "5", "6"])
    probe.assert_called_once_with(a=5)


@pytest.mark.ktrace(buffer_kb=4)
def test_lost_events_fail_count_assertions(ktrace, probed: Path) -> None:
    calls = ktrace.uprobe(str(probed), "add_u64", a="$arg1:u64")
    ktrace.run([str(probed), "loop", "5000"])
    with pytest.raises(AssertionError) as info:
        calls.assert_call_count(5000)
    text = str(info.value)
    assert "the kernel lost events, so no count can be trusted" in text
    assert "LOST EVENTS: the kernel's ring buffer overflowed" in text and "on CPU" in text
    assert "--ktrace-buffer-kb" in text
    calls.assert_any_call(a=4999)  # what is still in the buffer can be checked


@pytest.mark.ktrace(buffer_kb=4, lost="warn")
def test_lost_events_only_warn_when_asked(ktrace, probed: Path) -> None:
    calls = ktrace.uprobe(str(probed), "add_u64")
    ktrace.run([str(probed), "loop", "5000"])
    with pytest.warns(pytest.PytestWarning, match="counting events although LOST EVENTS"):
        assert calls.call_count < 5000
        calls.assert_called()
        with pytest.raises(AssertionError, match="Called"):
            calls.assert_call_count(5000)
