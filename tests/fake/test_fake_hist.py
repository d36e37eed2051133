"""Hist triggers in the fake tracefs, against what the Debian 6.1 guest printed (tests/data/hist, captured by
tests/data/hist/capture.sh): the same hits give the same hist file, byte for byte, the same errors the same
error_log lines; and the kernel's rules for what a trigger counts."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_ktrace._formats import EventFormat, parse_format
from pytest_ktrace._hist_spec import HistSpec, hist_spec
from pytest_ktrace._hist_table import decode, parse_hist
from pytest_ktrace.fake._tracefs import FakeOSError, FakeTracefs, FakeUnsupportedError
from pytest_ktrace.snapshots._snapshot import load_snapshot

DATA = Path(__file__).parents[1] / "data" / "hist"
GUEST = "debian-6.1-x86_64"
INSTANCE = "instances/cap"
PROBES = (
    "p:cap/rd vfs_read fd=$arg1:s32 count=$arg3:u64",
    "p:cap/op do_sys_openat2 dfd=$arg1:s32 name=+0($arg2):string flags=+0($arg3):u64",
    "r:cap/opr do_sys_openat2 ret=$retval:s32",
)


def captured(name: str) -> str:
    return (DATA / f"{GUEST}.{name}").read_text()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


@pytest.fixture
def fs() -> FakeTracefs:
    tracefs = FakeTracefs(load_snapshot(GUEST), cpus=1, clock=Clock())
    tracefs.mkdir(INSTANCE)
    for probe in PROBES:
        tracefs.write("kprobe_events", probe)
    return tracefs


def trigger(fs: FakeTracefs, event: str, spec: HistSpec) -> None:
    fs.write(f"{INSTANCE}/events/{event}/trigger", spec.command)


def table_text(text: str, spec: HistSpec) -> str:
    (table,) = [table for table in parse_hist(text) if spec.matches(table.info)]
    return table.text.rstrip("\n")


def errno_of(call: object, *args: object) -> str:
    with pytest.raises(FakeOSError) as info:
        call(*args)  # type: ignore[operator]
    return info.value.errno_name


def replay_table(fs: FakeTracefs, event: str, spec: HistSpec, file: str, fmt: EventFormat | None, emit) -> None:  # type: ignore[no-untyped-def]
    """Fire the events that make the guest's table of ``spec`` (each entry's hits, its sums in the last one),
    in the order the guest printed them (ties then print in that order here too)."""
    (table,) = [table for table in parse_hist(captured(file)) if spec.matches(table.info)]
    data = decode(spec, table, fmt)
    for key, entry in data.entries.items():
        for hit in range(entry.hitcount):
            last = hit == entry.hitcount - 1
            emit(key, {name: (total if last else 0) for name, total in entry.sums.items()})


# ------------------------------------------------------------------------------------------------ the same text
def test_a_compound_key_with_a_hex_sum_prints_as_on_the_guest(fs: FakeTracefs) -> None:
    spec = hist_spec(["dfd", "common_cpu", "flags.hex"], ["flags.hex"], sort="hitcount.descending")
    trigger(fs, "cap/op", spec)

    def emit(key, sums):  # type: ignore[no-untyped-def]
        dfd, cpu, flags = key
        fs.emit("cap/op", {"dfd": dfd, "flags": flags, "name": "/x"}, pid=1, comm="sh", cpu=cpu)

    # each event carries its flags: the sum of an entry is hitcount * flags
    replay_table(fs, "cap/op", spec, "cap_op.hist", parse_format(captured("cap_op.format"), "cap"), emit)
    text = fs.read(f"{INSTANCE}/events/cap/op/hist")
    assert table_text(text, spec) == table_text(captured("cap_op.hist"), spec)


@pytest.mark.parametrize(
    ("event", "spec", "file"),
    [
        ("cap/rd", hist_spec("common_pid.execname", "count"), "cap_rd.hist"),
        ("cap/op", hist_spec("flags.log2"), "cap_op.hist"),
        ("cap/op", hist_spec("flags.buckets=1024", "dfd"), "cap_op.hist"),
        ("cap/op", hist_spec("name"), "cap_op.hist"),
        ("cap/opr", hist_spec("ret", sort="ret", filter="ret < 0"), "cap_opr.hist"),
        ("sched/sched_process_fork", hist_spec("child_pid", size=128), "sched_sched_process_fork.hist"),
        ("sched/sched_process_fork", hist_spec("parent_comm"), "sched_sched_process_fork.hist"),
        ("sched/sched_switch", hist_spec("prev_state", filter="prev_pid == 999999"), "sched_sched_switch.hist"),
    ],
)
def test_tables_print_as_on_the_guest(fs: FakeTracefs, event: str, spec: HistSpec, file: str) -> None:
    trigger(fs, event, spec)
    group, name = event.split("/")
    fmt = parse_format(captured(f"cap_{name}.format"), group) if group == "cap" else None
    key_field = spec.keys[0]
    (table,) = [t for t in parse_hist(captured(file)) if spec.matches(t.info)]

    def emit(key, sums):  # type: ignore[no-untyped-def]
        fields: dict[str, object] = dict(sums)
        pid, comm = 100, "sh"
        if key_field.modifier == "execname":
            comm, pid = key
        elif key_field.modifier == "log2":
            fields[key_field.name] = 1 << key
        else:
            fields[key_field.name] = key
        fs.emit(event, fields, pid=pid, comm=comm)

    replay_table(fs, event, spec, file, fmt, emit)
    for extra in range(table.dropped):  # hits of keys the guest's table had no room for
        fs.emit(event, {key_field.name: 10**6 + extra}, pid=100, comm="sh")
    text = fs.read(f"{INSTANCE}/events/{event}/hist")
    assert table_text(text, spec) == table_text(captured(file), spec)


def test_several_triggers_and_their_listing(fs: FakeTracefs) -> None:
    shown = captured("cap_op.trigger").splitlines()
    specs = [
        hist_spec("name"),
        hist_spec(["dfd", "common_cpu", "flags.hex"], ["flags.hex"], sort="hitcount.descending"),
        hist_spec("flags.log2"),
        hist_spec("flags.buckets=1024", "dfd"),
    ]
    for spec in specs:
        trigger(fs, "cap/op", spec)
    assert fs.read(f"{INSTANCE}/events/cap/op/trigger").splitlines() == shown
    fs.emit("cap/op", {"dfd": -100, "flags": 0x8000, "name": "/etc/passwd"}, pid=7, comm="cat")
    tables = parse_hist(fs.read(f"{INSTANCE}/events/cap/op/hist"))
    assert [table.info for table in tables] == [line.rsplit(" [", 1)[0] for line in shown]
    assert [table.hits for table in tables] == [1, 1, 1, 1]
    assert fs.read(f"{INSTANCE}/events/cap/rd/hist") == ""  # no trigger: an empty file
    fs.write(f"{INSTANCE}/events/cap/op/trigger", "stacktrace")
    assert fs.read(f"{INSTANCE}/events/cap/op/trigger").splitlines() == ["stacktrace:unlimited", *shown]


def test_the_errors_and_their_error_log_lines(fs: FakeTracefs) -> None:
    path = f"{INSTANCE}/events/cap/op/trigger"
    fs.write(path, "hist:keys=name")
    for command in (
        "hist:keys=nosuch",
        "hist:keys=flags.bogus",
        "hist:keys=flags:sort=nosuch",
        "hist:keys=name",
        "hist:keys=",
        "hist:keys=dfd.execname",
    ):
        with pytest.raises(FakeOSError):
            fs.write(path, command)
    strip = re.compile(r"^\[ *\d+\.\d+\] ", re.M)
    guest = strip.sub("", captured("error_log"))
    assert strip.sub("", fs.read(f"{INSTANCE}/error_log")) == guest
    assert errno_of(fs.write, path, "hist:keys=name") == "EEXIST"
    # what the kernel refuses without a word in error_log
    refused = (
        "hist:keys=a,b,c,d",
        "hist:keys=flags:size=64",
        "hist:keys=flags:vals=dfd,flags,common_cpu",
        "hist:keys=flags if nosuch == 1",
        "hist:keys=name,name",
        "hist:vals=flags",
        "hist",
    )
    for command in refused:
        before = fs.read(f"{INSTANCE}/error_log")
        assert errno_of(fs.write, path, command) == "EINVAL", command
        if command != "hist:keys=a,b,c,d":  # the first field that is not there is logged
            assert fs.read(f"{INSTANCE}/error_log") == before, command
    with pytest.raises(FakeUnsupportedError):
        fs.write(path, "hist:keys=flags:onmax($x).save(flags)")


# ---------------------------------------------------------------------------------------------- what it counts
def test_a_trigger_counts_whether_or_not_the_event_is_enabled(fs: FakeTracefs) -> None:
    spec = hist_spec("common_pid")
    trigger(fs, "cap/rd", spec)
    assert fs.read(f"{INSTANCE}/events/cap/rd/enable") == "0*\n"  # soft mode, as the guest showed
    assert fs.read(f"{INSTANCE}/set_event") == "cap:rd\n"
    fs.write(f"{INSTANCE}/tracing_on", "0", append=False)
    fs.emit("cap/rd", {"fd": 3, "count": 10}, pid=5, comm="cat")
    fs.write(f"{INSTANCE}/events/cap/rd/enable", "1", append=False)
    assert fs.read(f"{INSTANCE}/events/cap/rd/enable") == "1*\n"
    fs.emit("cap/rd", {"fd": 3, "count": 10}, pid=5, comm="cat")
    (table,) = parse_hist(fs.read(f"{INSTANCE}/events/cap/rd/hist"))
    assert table.hits == 2
    assert "cap/rd" not in fs.read(f"{INSTANCE}/trace")  # tracing was off: the ring buffer has nothing


def test_the_pid_filter_applies_and_the_events_own_filter_does_not(fs: FakeTracefs) -> None:
    fs.write(f"{INSTANCE}/events/cap/rd/filter", "count > 100", append=False)
    trigger(fs, "cap/rd", hist_spec("common_pid"))
    trigger(fs, "cap/rd", hist_spec("fd", filter="count > 100"))
    fs.emit("cap/rd", {"fd": 3, "count": 10}, pid=5, comm="cat")
    fs.emit("cap/rd", {"fd": 4, "count": 1000}, pid=5, comm="cat")
    fs.write(f"{INSTANCE}/set_event_pid", "6")
    fs.emit("cap/rd", {"fd": 5, "count": 1000}, pid=5, comm="cat")  # not a traced pid: no trigger sees it
    fs.emit("cap/rd", {"fd": 6, "count": 1000}, pid=6, comm="cat")
    by_pid, by_fd = parse_hist(fs.read(f"{INSTANCE}/events/cap/rd/hist"))
    assert (by_pid.hits, by_fd.hits) == (3, 2)
    assert [row.key_text.split(":")[1].strip() for row in by_fd.rows] == ["4", "6"]


def test_a_full_table_drops_new_keys_and_keeps_counting_old_ones(fs: FakeTracefs) -> None:
    spec = hist_spec("count", size=128)
    trigger(fs, "cap/rd", spec)
    for count in range(200):
        fs.emit("cap/rd", {"fd": 0, "count": count}, pid=1, comm="a")
    fs.emit("cap/rd", {"fd": 0, "count": 0}, pid=1, comm="a")
    (table,) = parse_hist(fs.read(f"{INSTANCE}/events/cap/rd/hist"))
    data = decode(spec, table)
    assert (table.hits, table.entries, table.dropped) == (129, 128, 72)
    assert data.entries[0].hitcount == 2 and 150 not in data.entries


def test_a_signed_key_and_sum_print_as_u64(fs: FakeTracefs) -> None:
    spec = hist_spec("ret", "ret")
    trigger(fs, "cap/opr", spec)
    fs.emit("cap/opr", {"ret": -2}, pid=1, comm="a")
    fs.emit("cap/opr", {"ret": -2}, pid=1, comm="a")
    text = fs.read(f"{INSTANCE}/events/cap/opr/hist")
    assert "{ ret: 18446744073709551614 } hitcount:          2  ret: 18446744073709551612" in text
    data = decode(spec, parse_hist(text)[0], parse_format(captured("cap_opr.format"), "cap"))
    assert data.entries[-2]["ret"] == -4


# ------------------------------------------------------------------------------------------------- teardown
def test_removal_needs_the_exact_trigger_and_the_event_is_busy_until_then(fs: FakeTracefs) -> None:
    spec = hist_spec("common_pid", filter="fd == 3")
    trigger(fs, "cap/rd", spec)
    assert errno_of(fs.write, "kprobe_events", "-:cap/rd") == "EBUSY"
    fs.write(f"{INSTANCE}/events/cap/rd/trigger", "!hist:keys=common_pid")  # another trigger: nothing, no error
    assert fs.read(f"{INSTANCE}/events/cap/rd/hist") != ""
    fs.write(f"{INSTANCE}/events/cap/rd/trigger", spec.removal)
    assert fs.read(f"{INSTANCE}/events/cap/rd/hist") == ""
    assert fs.read(f"{INSTANCE}/events/cap/rd/enable") == "0\n"
    fs.write("kprobe_events", "-:cap/rd")


def test_removing_the_instance_removes_its_triggers(fs: FakeTracefs) -> None:
    trigger(fs, "cap/rd", hist_spec("common_pid"))
    fs.rmdir(INSTANCE)
    fs.write("kprobe_events", "-:cap/rd")


def test_no_hist_file_on_a_kernel_without_hist_triggers() -> None:
    snapshot = load_snapshot(GUEST)
    readme = snapshot.readme.replace("hist trigger\t- If set", "(none)")
    plain = replace(snapshot, readme=readme, features=snapshot.features - {"hist"})
    assert "hist" not in plain.features
    tracefs = FakeTracefs(plain, cpus=1)
    assert not tracefs.exists("events/sched/sched_switch/hist")
    assert "hist" not in tracefs.listdir("events/sched/sched_switch")
    with pytest.raises(FakeOSError):
        tracefs.write("events/sched/sched_switch/trigger", "hist:keys=prev_pid")
