"""Unit tests of the fake tracefs: file semantics, errno, listings, formats, rendering and the selftests' cases."""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ktrace_testing import DEV_VM_SNAPSHOT
from pytest_ktrace._formats import FormatCatalog, parse_format
from pytest_ktrace._parse import TraceParser
from pytest_ktrace.fake._tracefs import FakeOSError, FakeTracefs, FakeUnsupportedError, FieldInput
from pytest_ktrace.snapshots._snapshot import KernelSnapshot, load_snapshot

BINARY = "/opt/fake/bin/app"


def _sched_events() -> dict[str, str]:
    shipped = load_snapshot(str(DEV_VM_SNAPSHOT))
    wanted = ("sched/sched_switch", "sched/sched_process_fork", "sched/sched_process_exit", "sched/sched_wakeup")
    return {name: shipped.events[name] for name in wanted}


@pytest.fixture(scope="module")
def snapshot() -> KernelSnapshot:
    """A small x86_64 6.12 target with kprobes: four sched tracepoints and a handful of kernel symbols."""
    return KernelSnapshot(
        name="unit",
        release="6.12.0",
        arch="x86_64",
        features=frozenset({"kprobes", "uprobes", "dynamic_events", "instances", "fields", "error_log"}),
        readme="tracing mini-HOWTO (fake)\n",
        symbols=frozenset({"kernel_clone", "vfs_read", "vfs_write", "name_show", "do_nanosleep", "kfree"}),
        duplicate_symbols=frozenset({"name_show"}),
        blacklist=frozenset({"do_nanosleep"}),
        events=_sched_events(),
    )


class Clock:
    """A trace clock that advances one millisecond per call."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


@pytest.fixture
def fs(snapshot: KernelSnapshot) -> FakeTracefs:
    # Every uprobe path "exists" and is a regular file, so the tests need no real binaries.
    return FakeTracefs(snapshot, clock=Clock(), file_exists=lambda path: None)


def errno_of(call: object, *args: object, **kwargs: object) -> str:
    assert callable(call)
    with pytest.raises(FakeOSError) as info:
        call(*args, **kwargs)
    return info.value.errno_name


def error_entries(text: str) -> list[str]:
    """error_log entries without their timestamps."""
    return [entry for entry in re.split(r"(?m)^\[\s*\d+\.\d{6}\] ", text) if entry]


# --------------------------------------------------------------------------------------------------------------
# Files and directories
# --------------------------------------------------------------------------------------------------------------


def test_top_level_tree(fs: FakeTracefs) -> None:
    entries = fs.listdir("")
    for name in ("kprobe_events", "uprobe_events", "dynamic_events", "available_events", "instances", "trace"):
        assert name in entries
    assert fs.listdir("events/sched") == sorted(
        ["enable", "filter", "sched_process_exit", "sched_process_fork", "sched_switch", "sched_wakeup"]
    )
    assert fs.listdir("events/sched/sched_switch") == ["enable", "filter", "format", "id", "trigger"]
    assert fs.read("events/sched/sched_switch/format") == fs.snapshot.events["sched/sched_switch"]
    assert fs.read("events/sched/sched_switch/id") == "372\n"
    assert fs.read("README") == fs.snapshot.readme
    assert errno_of(fs.read, "events/sched/nosuch/format") == "ENOENT"
    assert errno_of(fs.read, "events/sched") == "EISDIR"
    assert errno_of(fs.read, "trace_marker") == "EINVAL"
    assert errno_of(fs.write, "available_events", "x") == "EINVAL"
    assert errno_of(fs.write, "events/sched/sched_switch/format", "x") == "EINVAL"
    assert errno_of(fs.write, "nosuch", "x") == "ENOENT"


def test_snapshot_without_kprobes_has_no_kprobe_events(snapshot: KernelSnapshot) -> None:
    fs = FakeTracefs(
        KernelSnapshot(**{**snapshot.__dict__, "features": snapshot.features - {"kprobes"}}), file_exists=lambda p: None
    )
    assert not fs.exists("kprobe_events")
    assert errno_of(fs.write, "kprobe_events", "p kernel_clone") == "ENOENT"
    # dynamic_events only has the uprobe parser: a kprobe command is not understood (EINVAL, nothing logged)
    assert errno_of(fs.write, "dynamic_events", "p:k kernel_clone") == "EINVAL"
    assert fs.read("error_log") == ""


def test_instances_mkdir_rmdir(fs: FakeTracefs) -> None:
    fs.mkdir("instances/one")
    assert errno_of(fs.mkdir, "instances/one") == "EEXIST"
    assert errno_of(fs.mkdir, "events/mine") == "EPERM"
    assert errno_of(fs.mkdir, "instances/one/sub") == "EPERM"
    assert errno_of(fs.mkdir, "nosuch/dir") == "ENOENT"
    assert "trace" in fs.listdir("instances/one")
    assert "kprobe_events" not in fs.listdir("instances/one")
    assert "sched_switch" in fs.listdir("instances/one/events/sched")
    assert fs.listdir("instances") == ["one"]
    with fs.hold_open("instances/one/trace"):
        assert errno_of(fs.rmdir, "instances/one") == "EBUSY"
    assert errno_of(fs.rmdir, "events/sched") == "EPERM"
    assert errno_of(fs.rmdir, "trace") == "ENOTDIR"
    fs.rmdir("instances/one")
    assert errno_of(fs.rmdir, "instances/one") == "ENOENT"
    assert not fs.exists("instances/one/trace")


def test_instance_removal_disables_its_events(fs: FakeTracefs) -> None:
    fs.write("kprobe_events", "p:myevent kernel_clone")
    fs.mkdir("instances/i")
    fs.write("instances/i/events/kprobes/myevent/enable", "1")
    assert errno_of(fs.write, "kprobe_events", "-:myevent") == "EBUSY"
    fs.rmdir("instances/i")  # an enabled event does not keep an instance alive
    fs.write("kprobe_events", "-:myevent")


# --------------------------------------------------------------------------------------------------------------
# Probe control files
# --------------------------------------------------------------------------------------------------------------


def test_kprobe_listing_and_auto_names(fs: FakeTracefs) -> None:
    fs.write("kprobe_events", "p kernel_clone\n")
    fs.write("kprobe_events", "r:myret vfs_read $retval\n")
    fs.write("kprobe_events", "p:grp/withargs vfs_write+4 $stack %ax +0($stack):u8")
    fs.write("kprobe_events", "p:ret2 vfs_read%return")
    assert fs.read("kprobe_events") == (
        "p:kprobes/p_kernel_clone_0 kernel_clone\n"
        "r10:kprobes/myret vfs_read arg1=$retval\n"  # register_kretprobe()'s maxactive: max(10, 2 * CPUs)
        "p:grp/withargs vfs_write+4 arg1=$stack arg2=%ax arg3=+0($stack):u8\n"
        "r10:kprobes/ret2 vfs_read\n"
    )
    assert fs.read("dynamic_events") == fs.read("kprobe_events")
    assert fs.read("uprobe_events") == ""
    # newest first, in front of the events that existed when the (top-level) array was made
    assert fs.read("available_events").splitlines()[:4] == [
        "kprobes:ret2",
        "grp:withargs",
        "kprobes:myret",
        "kprobes:p_kernel_clone_0",
    ]


def test_kprobe_errors_are_logged_with_a_caret(fs: FakeTracefs) -> None:
    assert errno_of(fs.write, "kprobe_events", "p vfs_read $retval") == "EINVAL"
    assert errno_of(fs.write, "kprobe_events", "p no_such_function") == "EINVAL"
    assert errno_of(fs.write, "kprobe_events", "p name_show") == "EINVAL"
    entries = error_entries(fs.read("error_log"))
    assert entries == [
        "trace_kprobe: error: $retval is not available on probe\n  Command: p vfs_read $retval\n" + " " * 22 + "^\n",
        "trace_kprobe: error: Invalid probed address or symbol\n  Command: p no_such_function\n" + " " * 13 + "^\n",
        "trace_kprobe: error: The symbol is not unique\n  Command: p name_show\n" + " " * 13 + "^\n",
    ]


def test_blacklisted_function_fails_to_register(fs: FakeTracefs) -> None:
    assert errno_of(fs.write, "kprobe_events", "p:bl do_nanosleep") == "EINVAL"
    assert error_entries(fs.read("error_log")) == [
        "trace_kprobe: error: Failed to register probe event\n  Command: p:bl do_nanosleep\n" + " " * 16 + "^\n"
    ]
    assert fs.read("kprobe_events") == ""


def test_eexist_variants(fs: FakeTracefs) -> None:
    """test_duplicates.tc / kprobe_multiprobe.tc: what a second definition of a name does."""
    fs.write("kprobe_events", "p:myevent kernel_clone a=%ax")
    assert errno_of(fs.write, "kprobe_events", "p:myevent kernel_clone a=%ax") == "EEXIST"  # SAME_PROBE
    assert errno_of(fs.write, "kprobe_events", "r:myevent vfs_read") == "EEXIST"  # DIFF_PROBE_TYPE
    assert errno_of(fs.write, "kprobe_events", "p:myevent vfs_read a=%ax:u32") == "EEXIST"  # DIFF_ARG_TYPE
    assert errno_of(fs.write, "kprobe_events", "p:myevent vfs_read a=%ax b=%bx") == "EEXIST"  # more args
    assert errno_of(fs.write, "kprobe_events", "p:myevent vfs_read") == "EEXIST"  # fewer args
    assert errno_of(fs.write, "kprobe_events", "p:sched/sched_switch vfs_read") == "EEXIST"  # EVENT_EXIST
    fs.write("uprobe_events", f"p:up/ev {BINARY}:0x10")
    assert errno_of(fs.write, "kprobe_events", "p:up/ev vfs_read") == "EEXIST"  # another kind's name
    entries = error_entries(fs.read("error_log"))
    assert [entry.splitlines()[0] for entry in entries] == [
        "trace_kprobe: error: There is already the exact same probe event",
        "trace_kprobe: error: Probe type is different from existing probe",
        "trace_kprobe: error: Argument type or name is different from existing probe",
        "trace_kprobe: error: Argument type or name is different from existing probe",
        "trace_kprobe: error: Argument type or name is different from existing probe",
        "trace_kprobe: error: Given group/event name is already used by another event",
        "trace_kprobe: error: Given group/event name is already used by another event",
    ]
    # DIFF_ARG_TYPE points at the first differing argument (the first extra one), past the end if one is missing
    assert entries[2].splitlines()[2] == " " * (11 + len("p:myevent vfs_read ")) + "^"
    assert entries[3].splitlines()[2] == " " * (11 + len("p:myevent vfs_read a=%ax ")) + "^"
    assert entries[4].splitlines()[2] == " " * (11 + len("p:myevent vfs_read") + 1) + "^"
    assert entries[0].splitlines()[2] == " " * 11 + "^"


def test_multiprobe_listing_and_selective_removal(fs: FakeTracefs) -> None:
    fs.write("kprobe_events", "p:testevent kernel_clone a=%ax")
    fs.write("kprobe_events", "p:testevent vfs_read a=%bx")  # same name and argument types: appended
    assert fs.read("kprobe_events") == "p:kprobes/testevent kernel_clone a=%ax\np:kprobes/testevent vfs_read a=%bx\n"
    assert fs.listdir("events/kprobes") == ["enable", "filter", "testevent"]
    fs.write("kprobe_events", "-:kprobes/testevent kernel_clone")
    assert fs.read("kprobe_events") == "p:kprobes/testevent vfs_read a=%bx\n"
    assert errno_of(fs.write, "kprobe_events", "-:kprobes/testevent kernel_clone") == "ENOENT"


def test_removal_rules(fs: FakeTracefs) -> None:
    assert errno_of(fs.write, "kprobe_events", "-:nosuch") == "ENOENT"
    assert errno_of(fs.write, "kprobe_events", "-:") == "EINVAL"
    fs.write("kprobe_events", "p:g1/a kernel_clone\np:g1/b vfs_read\np:g2/a vfs_write\n")
    fs.write("kprobe_events", "-:g1/")  # a whole group
    assert fs.read("kprobe_events") == "p:g2/a vfs_write\n"
    fs.write("kprobe_events", "-:a")  # any group
    assert fs.read("kprobe_events") == ""


def test_busy_check(fs: FakeTracefs) -> None:
    """busy_check.tc: an enabled event blocks O_TRUNC and its own removal; disabling unblocks both."""
    fs.write("kprobe_events", "p:myevent kernel_clone")
    fs.write("events/kprobes/myevent/enable", "1")
    assert errno_of(fs.write, "kprobe_events", "\n", append=False) == "EBUSY"
    assert errno_of(fs.write, "kprobe_events", "-:myevent") == "EBUSY"
    assert fs.read("kprobe_events") == "p:kprobes/myevent kernel_clone\n"
    fs.write("events/kprobes/myevent/enable", "0")
    fs.write("kprobe_events", "\n", append=False)
    assert fs.read("kprobe_events") == ""


def test_clear_select_events(fs: FakeTracefs) -> None:
    """clear_select_events.tc: each control file's O_TRUNC clears only its own kind; dynamic_events clears all."""
    fs.write("kprobe_events", "p:kp kernel_clone")
    fs.write("uprobe_events", f"p:up {BINARY}:0x40")
    fs.write("uprobe_events", "", append=False)
    assert fs.read("dynamic_events") == "p:kprobes/kp kernel_clone\n"
    fs.write("uprobe_events", f"p:up {BINARY}:0x40")
    fs.write("kprobe_events", "", append=False)
    assert fs.read("dynamic_events") == f"p:uprobes/up {BINARY}:0x0000000000000040\n"
    fs.write("kprobe_events", "p:kp kernel_clone")
    fs.write("dynamic_events", "\n", append=False)
    assert fs.read("dynamic_events") == ""


def test_o_trunc_then_write_defines_the_new_probe(fs: FakeTracefs) -> None:
    fs.write("kprobe_events", "p:old kernel_clone")
    fs.write("kprobe_events", "p:new vfs_read", append=False)
    assert fs.read("kprobe_events") == "p:kprobes/new vfs_read\n"


def test_multi_line_write_stops_at_the_first_error(fs: FakeTracefs) -> None:
    data = "p:first kernel_clone\n# comment\n\np:second vfs_read $bogus\np:third vfs_write\n"
    assert errno_of(fs.write, "kprobe_events", data) == "EINVAL"
    assert fs.read("kprobe_events") == "p:kprobes/first kernel_clone\n"
    assert errno_of(fs.write, "kprobe_events", "p:long kernel_clone " + "x" * 5000) == "EINVAL"


def test_uprobe_listing_and_return_probes(fs: FakeTracefs) -> None:
    fs.write("uprobe_events", f"p:grp/ent {BINARY}:0x1129 a=%di s=+0(%si):string")
    fs.write("uprobe_events", f"r:grp/ret {BINARY}:0x1129 rv=$retval:s32")
    fs.write("uprobe_events", f"p {BINARY}:0x200(0x30)")
    assert fs.read("uprobe_events") == (
        f"p:grp/ent {BINARY}:0x0000000000001129 a=%di s=+0(%si):string\n"
        f"r:grp/ret {BINARY}:0x0000000000001129 rv=$retval:s32\n"
        f"p:uprobes/p_app_0x200 {BINARY}:0x0000000000000200(0x30)\n"
    )


def test_uprobe_with_siblings_can_lose_one_while_enabled(fs: FakeTracefs) -> None:
    fs.write("uprobe_events", f"p:grp/ev {BINARY}:0x10\np:grp/ev {BINARY}:0x20\n")
    fs.write("events/grp/ev/enable", "1")
    fs.write("uprobe_events", f"-:grp/ev {BINARY}:0x0000000000000010")  # a sibling: no busy check
    assert errno_of(fs.write, "uprobe_events", "-:grp/ev") == "EBUSY"  # the last one is checked


def test_error_log_keeps_eight_and_o_trunc_clears(fs: FakeTracefs) -> None:
    for number in range(10):
        with pytest.raises(FakeOSError):
            fs.write("kprobe_events", f"p:e{number} vfs_read $retval")
    entries = error_entries(fs.read("error_log"))
    assert len(entries) == 8
    assert "p:e2 vfs_read" in entries[0] and "p:e9 vfs_read" in entries[-1]
    fs.write("error_log", "x")  # an append changes nothing
    assert len(error_entries(fs.read("error_log"))) == 8
    fs.write("error_log", "\n", append=False)
    assert fs.read("error_log") == ""


def test_unsupported_commands_are_refused_as_such(fs: FakeTracefs) -> None:
    with pytest.raises(FakeUnsupportedError) as info:
        fs.write("dynamic_events", "e:my/ev sched/sched_switch")
    assert info.value.errno == errno.ENOSYS


# --------------------------------------------------------------------------------------------------------------
# Format files
# --------------------------------------------------------------------------------------------------------------


def test_probe_format_layout(fs: FakeTracefs) -> None:
    fs.write("kprobe_events", "p:grp/k vfs_read a=%ax:u8 b=%bx c=+0(%si):string d=%cx:b4@2/32 e=+0(%di):s16[3]")
    text = fs.read("events/grp/k/format")
    assert "\tfield:unsigned long __probe_ip;\toffset:8;\tsize:8;\tsigned:0;\n" in text
    assert "\tfield:u8 a;\toffset:16;\tsize:1;\tsigned:0;\n" in text
    assert "\tfield:u64 b;\toffset:17;\tsize:8;\tsigned:0;\n" in text  # packed: no alignment
    assert "\tfield:__data_loc char[] c;\toffset:25;\tsize:4;\tsigned:1;\n" in text
    assert "\tfield:u32 d;\toffset:29;\tsize:4;\tsigned:0;\n" in text
    assert "\tfield:s16 e[];\toffset:33;\tsize:6;\tsigned:1;\n" in text
    assert text.endswith(
        'print fmt: "(%lx) a=%u b=0x%Lx c=\\"%s\\" d=%u e={%d,%d,%d}", REC->__probe_ip, REC->a, REC->b, '
        "__get_str(c), REC->d, REC->e[0], REC->e[1], REC->e[2]\n"
    )
    parsed = parse_format(text, "grp")
    assert parsed.field_names == ("__probe_ip", "a", "b", "c", "d", "e")
    assert parsed.is_probe


def test_return_probe_format(fs: FakeTracefs) -> None:
    fs.write("uprobe_events", f"r:grp/r {BINARY}:0x10 rv=$retval:s64")
    text = fs.read("events/grp/r/format")
    assert "\tfield:unsigned long __probe_func;\toffset:8;\tsize:8;\tsigned:0;\n" in text
    assert "\tfield:unsigned long __probe_ret_ip;\toffset:16;\tsize:8;\tsigned:0;\n" in text
    assert "\tfield:s64 rv;\toffset:24;\tsize:8;\tsigned:1;\n" in text
    assert text.endswith('print fmt: "(%lx <- %lx) rv=%Ld", REC->__probe_func, REC->__probe_ret_ip, REC->rv\n')
    snapshot_ids = [int(fs.read(f"events/sched/{name}/id")) for name in fs.listdir("events/sched")[2:]]
    assert int(fs.read("events/grp/r/id")) not in snapshot_ids


def test_event_ids_are_reused_lowest_first(fs: FakeTracefs) -> None:
    fs.write("kprobe_events", "p:a kernel_clone\np:b vfs_read\n")
    first, second = int(fs.read("events/kprobes/a/id")), int(fs.read("events/kprobes/b/id"))
    assert second == first + 1
    fs.write("kprobe_events", "-:a")
    fs.write("kprobe_events", "p:c vfs_write")
    assert int(fs.read("events/kprobes/c/id")) == first


# --------------------------------------------------------------------------------------------------------------
# enable, filter, set_event, set_event_pid, options
# --------------------------------------------------------------------------------------------------------------


def test_enable_files(fs: FakeTracefs) -> None:
    path = "events/sched/sched_switch/enable"
    for value, expected in (("2", "EINVAL"), (" 1", "EINVAL"), ("", "EINVAL"), ("0x1", "EINVAL"), ("-1", "EINVAL")):
        assert errno_of(fs.write, path, value) == expected
    assert errno_of(fs.write, path, "18446744073709551616") == "ERANGE"
    assert fs.write(path, "01\n") == 3
    assert fs.read(path) == "1\n"
    assert fs.read("events/sched/enable") == "X\n"
    fs.write("events/sched/enable", "1")
    assert fs.read("events/sched/enable") == "1\n"
    assert fs.read("events/enable") == "1\n"
    fs.write("events/enable", "0")
    assert fs.read("events/sched/enable") == "0\n"


def test_filter_file(fs: FakeTracefs) -> None:
    fs.mkdir("instances/f")
    path = "instances/f/events/sched/sched_switch/filter"
    assert fs.read(path) == "none\n"
    fs.write(path, "prev_pid == 1")
    assert fs.read(path) == "prev_pid == 1\n"
    assert errno_of(fs.write, path, "prev_pid == ") == "EINVAL"
    assert fs.read(path) == "prev_pid ==\n           ^\nparse_error: Invalid value (did you forget quotes)?\n\n"
    assert error_entries(fs.read("instances/f/error_log")) == [
        "event filter parse error: error: Invalid value (did you forget quotes)?\n  Command: prev_pid ==\n"
        + " " * 23
        + "^\n"
    ]
    assert fs.read("error_log") == ""  # filter errors belong to the instance
    fs.write(path, "0")
    assert fs.read(path) == "none\n"
    assert errno_of(fs.write, path, "x" * 5000) == "EINVAL"


def test_filter_decides_what_is_recorded(fs: FakeTracefs) -> None:
    fs.write("events/sched/sched_wakeup/enable", "1")
    fs.write("events/sched/sched_wakeup/filter", 'pid > 100 && comm ~ "bash*"')
    assert fs.emit("sched/sched_wakeup", {"pid": 200, "comm": "bash"}, pid=1, comm="swapper") == 1
    assert fs.emit("sched/sched_wakeup", {"pid": 50, "comm": "bash"}, pid=1, comm="swapper") == 0
    # a failed filter replaces the old one, disabled: everything passes again
    with pytest.raises(FakeOSError):
        fs.write("events/sched/sched_wakeup/filter", "pid >")
    assert fs.emit("sched/sched_wakeup", {"pid": 50, "comm": "bash"}, pid=1, comm="swapper") == 1


def test_system_filter(fs: FakeTracefs) -> None:
    help_text = fs.read("events/sched/filter")
    assert help_text.startswith("### global filter ###\n")
    fs.write("events/sched/filter", "common_pid == 5")
    assert fs.read("events/sched/sched_switch/filter") == "common_pid == 5\n"
    # events without the field get an error instead, and the write still succeeds
    assert fs.write("events/sched/filter", "prev_pid == 1") == len("prev_pid == 1")
    assert fs.read("events/sched/sched_switch/filter") == "prev_pid == 1\n"
    assert fs.read("events/sched/sched_wakeup/filter") == (
        "prev_pid == 1\n^\nparse_error: Couldn't find or set field in one of a subsystem's events\n\n"
    )  # the stored error text ends in a newline and the read adds one, as for event filters
    assert len(error_entries(fs.read("error_log"))) == 3  # one per event that could not take it
    assert fs.read("events/sched/filter") == help_text
    fs.write("events/sched/filter", "0")
    assert fs.read("events/sched/sched_switch/filter") == "none\n"


def test_set_event(fs: FakeTracefs) -> None:
    fs.mkdir("instances/s")
    path = "instances/s/set_event"
    assert fs.write(path, "sched:sched_switch sched:sched_wakeup") == len("sched:sched_switch ")  # one word
    assert fs.read(path) == "sched:sched_switch\n"
    assert fs.read("instances/s/events/sched/sched_switch/enable") == "1\n"
    fs.write(path, "sched:sched_wakeup")
    assert fs.read(path) == "sched:sched_switch\nsched:sched_wakeup\n"  # ID order
    fs.write(path, "!sched:sched_switch")
    assert fs.read(path) == "sched:sched_wakeup\n"
    assert errno_of(fs.write, path, "nosuch:event") == "EINVAL"
    assert errno_of(fs.write, path, "sched*:*") == "EINVAL"  # no globs beyond a lone '*'
    fs.write(path, "sched")  # a bare word matches a system or an event name
    assert len(fs.read(path).splitlines()) == 4
    fs.write(path, "", append=False)
    assert fs.read(path) == ""
    fs.write(path, "*:sched_process_exit")
    assert fs.read(path) == "sched:sched_process_exit\n"
    assert fs.read("set_event") == ""  # per instance


def test_set_event_pid_and_event_fork(fs: FakeTracefs) -> None:
    fs.write("events/sched/sched_wakeup/enable", "1")
    fs.write("set_event_pid", "100 7")
    assert fs.read("set_event_pid") == "7\n100\n"
    assert errno_of(fs.write, "set_event_pid", "-1") == "EINVAL"
    assert errno_of(fs.write, "set_event_pid", "8 abc") == "EINVAL"
    assert fs.read("set_event_pid") == "7\n100\n"  # a failed write changes nothing
    assert fs.emit("sched/sched_wakeup", {"pid": 1}, pid=100, comm="a") == 1
    assert fs.emit("sched/sched_wakeup", {"pid": 1}, pid=101, comm="b") == 0
    fork = {"parent_pid": 100, "child_pid": 101}
    fs.emit("sched/sched_process_fork", fork, pid=100, comm="a")
    assert fs.read("set_event_pid") == "7\n100\n"  # event-fork is off
    fs.write("options/event-fork", "1")
    fs.emit("sched/sched_process_fork", fork, pid=100, comm="a")
    assert fs.read("set_event_pid") == "7\n100\n101\n"
    assert fs.emit("sched/sched_wakeup", {"pid": 1}, pid=101, comm="b") == 1
    fs.emit("sched/sched_process_exit", {"pid": 101}, pid=101, comm="b")
    assert fs.read("set_event_pid") == "7\n100\n"
    fs.write("set_event_pid", "", append=False)
    assert fs.read("set_event_pid") == ""


def test_options(fs: FakeTracefs) -> None:
    assert "nofields\n" in fs.read("trace_options")
    fs.write("trace_options", "  fields\n")
    assert fs.read("options/fields") == "1\n"
    fs.write("trace_options", "nofields")
    assert fs.read("options/fields") == "0\n"
    assert errno_of(fs.write, "trace_options", "fields irq-info") == "EINVAL"
    assert errno_of(fs.write, "trace_options", "bogus") == "EINVAL"
    assert errno_of(fs.write, "options/fields", "2") == "EINVAL"
    assert errno_of(fs.write, "trace_options", "test_nop_refuse") == "EINVAL"
    fs.mkdir("instances/o")
    assert "notrace_printk_dest\n" in fs.read("instances/o/trace_options")
    assert "record-cmd" not in fs.listdir("instances/o/options")


def test_buffer_size_and_tracing_on(fs: FakeTracefs) -> None:
    assert fs.read("buffer_size_kb") == "1410\n"
    assert fs.read("buffer_total_size_kb") == "2820\n"
    fs.write("buffer_size_kb", "4")
    assert fs.read("buffer_size_kb") == "7\n"  # two 4080-byte pages
    assert errno_of(fs.write, "buffer_size_kb", "0") == "EINVAL"
    assert errno_of(fs.write, "buffer_size_kb", "100000000000000000") == "ENOMEM"
    fs.write("tracing_on", "2")
    assert fs.read("tracing_on") == "1\n"
    assert errno_of(fs.write, "tracing_on", "x") == "EINVAL"


# --------------------------------------------------------------------------------------------------------------
# trace output
# --------------------------------------------------------------------------------------------------------------

HEADER_IRQ = """# tracer: nop
#
# entries-in-buffer/entries-written: {entries}/{written}   #P:2
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""


def test_kprobe_lines(fs: FakeTracefs) -> None:
    fs.write("kprobe_events", "p:myevent kernel_clone a=%ax s=+0(%si):string c=%cx:char")
    fs.write("kprobe_events", "r:myret vfs_read rv=$retval:s32")
    fs.write("events/kprobes/enable", "1")
    fs.emit("kprobes/myevent", {"a": 1, "s": "hi", "c": 65}, pid=42, comm="bash", cpu=1, timestamp=12.5)
    fs.emit("kprobes/myret", {"rv": -22, "__probe_ret_ip": "kfree+0x1a"}, pid=42, comm="bash", timestamp=13.0)
    fs.emit("kprobes/myevent", {"a": 2}, pid=42, comm="bash", timestamp=14.0, irq_flags=0x09, preempt_count=0x12)
    text = fs.read("trace")
    assert text == HEADER_IRQ.format(entries=3, written=3) + (
        "            bash-42      [001] .....    12.500000: myevent: (kernel_clone+0x0/0x100) a=0x1 s=\"hi\" c='A'\n"
        "            bash-42      [000] .....    13.000000: myret: (kfree+0x1a/0x100 <- vfs_read) rv=-22\n"
        "            bash-42      [000] d.h21    14.000000: myevent: (kernel_clone+0x0/0x100)"
        " a=0x2 s=(fault) c='\x00'\n"
    )


def test_rendered_lines_parse_back(fs: FakeTracefs) -> None:
    fs.write("uprobe_events", f"p:grp/ent {BINARY}:0x1129 a=%di:s64 s=+0(%si):string cm=$comm b=+0(%dx):u8[2]")
    fs.write("uprobe_events", f"r:grp/ret {BINARY}:0x1129 rv=$retval:s32")
    fs.mkdir("instances/p")
    fs.write("instances/p/events/grp/enable", "1")
    fs.write("instances/p/events/sched/sched_switch/enable", "1")
    fs.emit("grp/ent", {"a": -5, "s": "a b=c", "b": (1, 2)}, pid=7, comm="app")
    fs.emit("grp/ret", {"rv": 3}, pid=7, comm="app")
    switch: dict[str, FieldInput] = {
        "prev_comm": "app",
        "prev_pid": 7,
        "prev_prio": 120,
        "prev_state": 1,
        "next_comm": "sh",
        "next_pid": 8,
    }
    fs.emit("sched/sched_switch", switch, pid=7, comm="app")
    catalog = FormatCatalog(
        [parse_format(fs.read(f"events/{path}/format"), path.split("/")[0]) for path in ("grp/ent", "grp/ret")]
        + [parse_format(fs.read("events/sched/sched_switch/format"), "sched")]
    )
    for fields_option in ("0", "1"):
        fs.write("instances/p/options/fields", fields_option)
        parsed = TraceParser(catalog).parse(fs.read("instances/p/trace"))
        assert parsed.unparsed == []
        entry, ret, switch_event = parsed.events
        assert entry.name == "ent" and entry.pid == 7 and entry.comm == "app"
        assert entry.fields["a"] == -5 and entry.fields["s"] == "a b=c" and entry.fields["cm"] == "app"
        assert ret.fields["rv"] == 3
        assert switch_event.fields["next_comm"] == "sh" and switch_event.fields["prev_pid"] == 7


def test_trace_o_trunc_clears_and_lost_events_on_trace_pipe(snapshot: KernelSnapshot) -> None:
    fs = FakeTracefs(snapshot, clock=Clock(), buffer_events_per_cpu=3)
    fs.write("events/sched/sched_wakeup/enable", "1")
    for pid in range(5):
        fs.emit("sched/sched_wakeup", {"pid": pid}, pid=pid, comm="w", cpu=0)
    fs.emit("sched/sched_wakeup", {"pid": 99}, pid=99, comm="w", cpu=1)
    trace = fs.read("trace")
    assert "# entries-in-buffer/entries-written: 4/6   #P:2\n" in trace
    assert "LOST" not in trace  # the kernel reports losses only to consuming readers
    pipe = fs.read("trace_pipe").splitlines()
    assert pipe[0] == "CPU:0 [LOST 2 EVENTS]"
    woken = [re.search(r" pid=(0x[0-9a-f]+ \(\d+\))", line) for line in pipe[1:]]
    assert [match.group(1) if match else line for match, line in zip(woken, pipe[1:])] == [
        "0x2 (2)",
        "0x3 (3)",
        "0x4 (4)",
        "0x63 (99)",
    ]
    parsed = TraceParser(FormatCatalog([parse_format(fs.read("events/sched/sched_wakeup/format"), "sched")])).parse(
        "\n".join(pipe)
    )
    assert parsed.lost == {0: 2} and len(parsed.events) == 4
    assert fs.read("trace_pipe") == ""  # consumed
    assert "# entries-in-buffer/entries-written: 0/2   #P:2\n" in fs.read("trace")
    fs.emit("sched/sched_wakeup", {"pid": 1}, pid=1, comm="w")
    fs.write("trace", "", append=False)
    assert "# entries-in-buffer/entries-written: 0/0   #P:2\n" in fs.read("trace")


def test_removal_clears_buffers_that_had_the_event_enabled(fs: FakeTracefs) -> None:
    fs.write("kprobe_events", "p:myevent kernel_clone")
    fs.mkdir("instances/a")
    fs.mkdir("instances/b")
    fs.write("instances/a/events/kprobes/myevent/enable", "1")
    fs.write("instances/b/trace_marker", "kept")
    fs.emit("kprobes/myevent", {}, pid=1, comm="x")
    fs.write("instances/a/events/kprobes/myevent/enable", "0")
    fs.write("kprobe_events", "-:myevent")
    assert "entries-written: 0/0" in fs.read("instances/a/trace")
    assert "tracing_mark_write: kept" in fs.read("instances/b/trace")


def test_trace_marker(fs: FakeTracefs) -> None:
    assert fs.write("trace_marker", "hello world") == 11
    fs.write("trace_marker", "with newline\n")
    lines = fs.read("trace").splitlines()
    assert lines[-2].endswith(": tracing_mark_write: hello world")
    assert "[000] ...1. " in lines[-2]  # a marker is written with preemption disabled once
    assert lines[-1].endswith(": tracing_mark_write: with newline")
    fs.write("options/fields", "1")
    assert fs.read("trace").splitlines()[-1].endswith(": UNKNOWN TYPE 5")
    fs.write("tracing_on", "0")
    assert errno_of(fs.write, "trace_marker", "x") == "EBADF"
    fs.write("tracing_on", "1")
    fs.write("options/markers", "0")
    assert errno_of(fs.write, "trace_marker", "x") == "EINVAL"


def test_context_variants(fs: FakeTracefs) -> None:
    fs.write("events/sched/sched_wakeup/enable", "1")
    fs.write("options/record-tgid", "1")
    fs.emit("sched/sched_wakeup", {"pid": 3}, pid=10, comm="t", tgid=9, timestamp=1.0)
    fs.write("options/irq-info", "0")
    text = fs.read("trace")
    assert "#           TASK-PID       TGID    CPU#     TIMESTAMP  FUNCTION\n" in text
    assert "               t-10      (      9) [000]      1.000000: sched_wakeup: " in text
    fs.write("options/context-info", "0")
    assert fs.read("trace") == "# tracer: nop\n#\n" + text.splitlines()[-1].split(": ", 1)[1] + "\n"


def test_emit_checks_its_arguments(fs: FakeTracefs) -> None:
    with pytest.raises(KeyError):
        fs.emit("nosuch/event", {}, pid=1, comm="x")
    with pytest.raises(ValueError):
        fs.emit("sched/sched_wakeup", {}, pid=1, comm="x", cpu=5)
    assert fs.emit("sched/sched_wakeup", {}, pid=1, comm="x") == 0  # not enabled anywhere


# --------------------------------------------------------------------------------------------------------------
# Property: write() never raises anything but FakeOSError
# --------------------------------------------------------------------------------------------------------------

WRITABLE_PATHS = [
    "kprobe_events",
    "uprobe_events",
    "dynamic_events",
    "error_log",
    "set_event",
    "set_event_pid",
    "trace",
    "trace_marker",
    "trace_options",
    "tracing_on",
    "buffer_size_kb",
    "options/fields",
    "events/enable",
    "events/sched/enable",
    "events/sched/filter",
    "events/sched/sched_switch/enable",
    "events/sched/sched_switch/filter",
    "events/sched/sched_switch/trigger",
    "instances/h/set_event",
    "instances/h/events/sched/sched_wakeup/filter",
    "available_events",
    "no/such/file",
]
COMMAND_WORDS = st.sampled_from(
    [
        "p",
        "r",
        "-:",
        "p:g/e",
        "r10:e",
        "kernel_clone",
        "vfs_read+4",
        f"{BINARY}:0x10",
        "$retval",
        "%ax",
        "+0(%si)",
        ":string",
        "a=",
        "==",
        "pid",
        "&&",
        "(",
        ")",
        '"',
        "!",
        "sched:sched_switch",
        "*",
        "0",
        "1",
        "\n",
        " ",
        "#",
    ]
)
WRITE_DATA = st.one_of(st.text(max_size=80), st.lists(COMMAND_WORDS, max_size=12).map("".join))


@pytest.fixture(scope="module")
def hypothesis_fs(snapshot: KernelSnapshot) -> Iterator[FakeTracefs]:
    fs = FakeTracefs(snapshot, clock=Clock(), file_exists=lambda path: None)
    fs.mkdir("instances/h")
    yield fs


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(WRITABLE_PATHS), data=WRITE_DATA, append=st.booleans())
def test_write_raises_only_fake_os_errors(hypothesis_fs: FakeTracefs, path: str, data: str, append: bool) -> None:
    try:
        written = hypothesis_fs.write(path, data, append=append)
    except FakeOSError as exc:
        assert exc.errno_name.startswith("E")
    else:
        assert 0 <= written <= len(data.encode("utf-8", "surrogateescape"))
    hypothesis_fs.read("trace")  # reads still work whatever was written
    hypothesis_fs.read("kprobe_events")
