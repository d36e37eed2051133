"""The fake tracefs's kernel modules: functions and trace events that come and go with a module, as the kernel's
kprobe lookup and ``trace_module_add_events()``/``trace_module_remove_events()`` make them."""

from __future__ import annotations

import re

import pytest

from pytest_ktrace.fake._tracefs import FakeOSError, FakeTracefs
from pytest_ktrace.snapshots._snapshot import KernelSnapshot

EVENT_FORMAT = """name: ktbar_request
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int irq;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int ret;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] name;\toffset:16;\tsize:4;\tsigned:0;

print fmt: "irq=%d name=%s ret=%d", REC->irq, __get_str(name), REC->ret
"""
FUNCTIONS = ("ktbar_request", "ktbar_init", "ktbar_exit", "ktbar_handler")


def snapshot(release: str) -> KernelSnapshot:
    return KernelSnapshot(
        name="unit",
        release=release,
        arch="x86_64",
        features=frozenset({"kprobes", "dynamic_events", "instances", "error_log"}),
        readme="tracing mini-HOWTO (fake)\n",
        symbols=frozenset({"__setup_irq", "vfs_read"}),
        duplicate_symbols=frozenset(),
        blacklist=frozenset(),
        events={},
    )


@pytest.fixture(params=["6.1.0-57-amd64", "6.12.0"], ids=["v6.1", "v6.12"])
def fs(request: pytest.FixtureRequest) -> FakeTracefs:
    return FakeTracefs(snapshot(request.param), clock=lambda: 10.0)


def refusal(fs: FakeTracefs, command: str) -> tuple[str, str]:
    """(errno, the error_log message) with which writing ``command`` to kprobe_events fails."""
    with pytest.raises(FakeOSError) as info:
        fs.write("kprobe_events", command)
    entries = fs.read("error_log").strip().splitlines()
    return info.value.errno_name, entries[-3] if len(entries) >= 3 else ""


def test_a_probe_on_a_module_that_is_not_loaded_waits_for_it(fs: FakeTracefs) -> None:
    fs.write("kprobe_events", "p:mods/pending ktbar:ktbar_request")
    assert "p:mods/pending ktbar:ktbar_request" in fs.read("kprobe_events")
    fs.modules.load("ktbar", FUNCTIONS, {})
    assert "p:mods/pending ktbar:ktbar_request" in fs.read("kprobe_events")  # still there, now registered


def test_a_plain_name_is_found_only_while_its_module_is_loaded(fs: FakeTracefs) -> None:
    errno_name, message = refusal(fs, "p:mods/early ktbar_request")
    assert errno_name in ("ENOENT", "EINVAL") and "Invalid probed address or symbol" in message
    fs.modules.load("ktbar", FUNCTIONS, {})
    fs.write("kprobe_events", "p:mods/late ktbar_request")
    fs.write("kprobe_events", "-:mods/late")
    fs.modules.unload("ktbar")
    assert refusal(fs, "p:mods/again ktbar_request")[0] in ("ENOENT", "EINVAL")


def test_a_function_the_loaded_module_lacks_is_refused_at_its_name(fs: FakeTracefs) -> None:
    fs.modules.load("ktbar", FUNCTIONS, {})
    errno_name, message = refusal(fs, "p:mods/wrong ktbar:vfs_read")  # in the kernel, not in the module
    # v6.1 finds out when it registers the probe (ENOENT); v6.12 while parsing it (EINVAL)
    assert errno_name == ("ENOENT" if fs.snapshot.release.startswith("6.1.") else "EINVAL")
    assert "Invalid probed address or symbol" in message
    caret = fs.read("error_log").strip().splitlines()[-1]
    command = fs.read("error_log").strip().splitlines()[-2]
    assert command.index("ktbar:vfs_read") == caret.index("^")


def test_a_name_in_the_kernel_and_a_module_is_ambiguous(fs: FakeTracefs) -> None:
    fs.modules.load("ktbar", (*FUNCTIONS, "vfs_read"), {})
    assert refusal(fs, "p:mods/twice vfs_read")[0] in ("EADDRNOTAVAIL", "EINVAL")
    fs.write("kprobe_events", "p:mods/module_one ktbar:vfs_read")  # the module prefix picks one


def test_module_events_appear_with_an_id_of_their_own_and_go_with_it(fs: FakeTracefs) -> None:
    fs.mkdir("instances/mine")
    assert not fs.exists("events/ktbar")
    fs.modules.load("ktbar", FUNCTIONS, {"ktbar/ktbar_request": EVENT_FORMAT})
    text = fs.read("events/ktbar/ktbar_request/format")
    event_id = int(re.search(r"^ID: (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert event_id != 1234 and text == EVENT_FORMAT.replace("ID: 1234", f"ID: {event_id}")
    assert fs.read("events/ktbar/ktbar_request/id").strip() == str(event_id)
    assert "ktbar:ktbar_request" in fs.read("available_events").split()
    assert fs.exists("instances/mine/events/ktbar/ktbar_request/enable")
    fs.modules.unload("ktbar")
    assert not fs.exists("events/ktbar") and not fs.exists("instances/mine/events/ktbar")
    assert "ktbar:ktbar_request" not in fs.read("available_events").split()


def test_an_enabled_module_event_goes_with_its_module(fs: FakeTracefs) -> None:
    fs.mkdir("instances/mine")
    fs.modules.load("ktbar", FUNCTIONS, {"ktbar/ktbar_request": EVENT_FORMAT})
    fs.write("instances/mine/events/ktbar/ktbar_request/enable", "1")
    fs.modules.unload("ktbar")  # enabling through tracefs takes no reference on the module
    assert not fs.exists("instances/mine/events/ktbar")
    fs.modules.load("ktbar", FUNCTIONS, {"ktbar/ktbar_request": EVENT_FORMAT})
    assert fs.read("instances/mine/events/ktbar/ktbar_request/enable").strip() == "0"  # a new event, disabled


def test_unloading_resets_the_buffers_that_recorded_its_events(fs: FakeTracefs) -> None:
    fs.mkdir("instances/used")
    fs.mkdir("instances/other")
    fs.modules.load("ktbar", FUNCTIONS, {"ktbar/ktbar_request": EVENT_FORMAT})
    fs.write("instances/used/events/ktbar/ktbar_request/enable", "1")
    fs.write("instances/other/trace_marker", "kept")
    fs.emit("ktbar/ktbar_request", {"irq": 24, "ret": 0, "name": "ktbar"}, pid=7, comm="insmod")
    assert "ktbar_request: " in fs.read("instances/used/trace")
    fs.modules.unload("ktbar")
    assert "ktbar" not in fs.read("instances/used/trace")
    assert "kept" in fs.read("instances/other/trace")  # its buffer never held the module's events


def test_loading_twice_or_unloading_what_is_not_loaded_fails(fs: FakeTracefs) -> None:
    fs.modules.load("ktbar", FUNCTIONS, {"ktbar/ktbar_request": EVENT_FORMAT})
    with pytest.raises(FakeOSError) as twice:
        fs.modules.load("ktbar", FUNCTIONS, {})
    assert twice.value.errno_name == "EEXIST"
    fs.modules.unload("ktbar")
    with pytest.raises(FakeOSError) as gone:
        fs.modules.unload("ktbar")
    assert gone.value.errno_name == "ENOENT"
    assert fs.modules.loaded == []


def test_a_probe_waiting_for_its_module_takes_no_argn(fs: FakeTracefs) -> None:
    """kprobe_on_func_entry() cannot find a function of a module that is not loaded, so the probe is not known to
    be at a function entry: ``$argN`` is refused until the module is there."""
    errno_name, message = refusal(fs, "p:mods/args ktbar:ktbar_request $arg1")
    assert errno_name == "EINVAL"
    modern = not fs.snapshot.release.startswith("6.1.")
    assert message.endswith(
        "$arg* can be used only on function entry or exit" if modern else "Invalid $-variable specified"
    )
    fs.write("kprobe_events", "p:mods/registers ktbar:ktbar_request %di")  # registers need no entry
    fs.write("kprobe_events", "r:mods/returns ktbar:ktbar_request $retval")  # nor does a kretprobe
    fs.modules.load("ktbar", FUNCTIONS, {})
    fs.write("kprobe_events", "p:mods/args ktbar:ktbar_request $arg1")


def test_a_kretprobe_waiting_for_its_module_gets_its_maxactive_when_the_module_comes(fs: FakeTracefs) -> None:
    fs.write("kprobe_events", "r:mods/waiting ktbar:ktbar_request")
    fs.write("kprobe_events", "r:mods/now vfs_read")
    assert fs.read("kprobe_events").splitlines() == ["r:mods/waiting ktbar:ktbar_request", "r10:mods/now vfs_read"]
    fs.modules.load("ktbar", FUNCTIONS, {})
    fs.modules.unload("ktbar")  # registered once: the kernel keeps the maxactive it gave
    assert fs.read("kprobe_events").splitlines() == ["r10:mods/waiting ktbar:ktbar_request", "r10:mods/now vfs_read"]
