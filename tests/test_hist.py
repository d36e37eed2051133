"""The hist trigger builder and the hist file parser, against hist files a Debian 6.1 guest printed
(tests/data/hist, captured by tests/data/hist/capture.sh)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pytest_ktrace._errors import KtraceError
from pytest_ktrace._formats import EventFormat, parse_format
from pytest_ktrace._hist_spec import HistField, HistSpec, Task, hist_spec
from pytest_ktrace._hist_table import HistEntry, HistResult, decode, parse_hist

DATA = Path(__file__).parent / "data" / "hist"
GUEST = "debian-6.1-x86_64"


def captured(name: str) -> str:
    return (DATA / f"{GUEST}.{name}").read_text()


def fmt(name: str) -> EventFormat:
    return parse_format(captured(f"{name}.format"), "cap")


def table_of(file: str, spec: HistSpec):  # type: ignore[no-untyped-def]
    tables = [table for table in parse_hist(captured(file)) if spec.matches(table.info)]
    assert len(tables) == 1, [table.info for table in parse_hist(captured(file))]
    return tables[0]


# ------------------------------------------------------------------------------------------------------ the builder
def test_the_trigger_line_is_the_kernels_own_spelling() -> None:
    # written this way, the trigger file shows back exactly what was written (see the captured trigger file)
    spec = hist_spec(["dfd", "common_cpu", "flags.hex"], ["hitcount", "flags.hex"], sort="hitcount.descending")
    assert spec.command == (
        "hist:keys=dfd,common_cpu,flags.hex:vals=hitcount,flags.hex:sort=hitcount.descending:size=2048"
    )
    shown = captured("cap_op.trigger").splitlines()
    assert f"{spec.command} [active]" in shown
    assert f"{hist_spec('name').command} [active]" in shown
    assert f"{hist_spec('flags.log2').command} [active]" in shown
    assert f"{hist_spec('flags.bucket=1024', 'dfd').command} [active]" in shown  # bucket= is spelt buckets=
    assert spec.removal == "!" + spec.command


def test_the_filter_and_the_probes_own_filter_are_one_condition() -> None:
    assert hist_spec("ret", filter="ret < 0").command.endswith(":size=2048 if ret < 0")
    both = hist_spec("ret", filter="ret < 0", probe_filter="common_pid != 1")
    assert both.filter == "(common_pid != 1) && (ret < 0)"
    assert hist_spec("ret", probe_filter="ret != 0").filter == "ret != 0"


@pytest.mark.parametrize(("asked", "kernel"), [(65, 128), (100, 128), (128, 128), (129, 256), (131072, 131072)])
def test_the_size_is_rounded_up_to_a_power_of_two_as_the_kernel_does(asked: int, kernel: int) -> None:
    assert hist_spec("common_pid", size=asked).size == kernel
    assert f":size={kernel}" in hist_spec("common_pid", size=asked).command


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keys": []}, "1 to 3 keys"),
        ({"keys": ["a", "b", "c", "d"]}, "1 to 3 keys"),
        ({"keys": "a", "values": ["b", "c", "d"]}, "at most 2 values"),
        ({"keys": "a b"}, "is not a field name"),
        ({"keys": "a:b"}, "is not a field name"),
        ({"keys": "flags.bogus"}, r"\.bogus is not a key modifier"),
        ({"keys": "dfd.execname"}, "common_pid only"),
        ({"keys": "flags", "values": "flags.log2"}, r"\.hex is its only modifier"),
        ({"keys": "flags.buckets=0"}, "at least 1"),
        ({"keys": ["stacktrace", "common_pid"]}, "stack key cannot be combined"),
        ({"keys": "a", "size": 64}, "128 to 131072"),
        ({"keys": "a", "size": 0}, "128 to 131072"),
        ({"keys": "a", "size": 1 << 18}, "128 to 131072"),
        ({"keys": "a", "filter": "a == 1\nb"}, "one line"),
        ({"keys": "a", "sort": ["a", "b", "c"]}, "sort keys"),
        ({"keys": 3}, "field name"),
    ],
)
def test_what_would_change_the_shape_of_the_line_is_refused(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(KtraceError, match=message):
        hist_spec(**kwargs)


def test_hitcount_among_the_values_is_implicit() -> None:
    assert hist_spec("a", ["hitcount", "b"]).values == (HistField("b"),)
    assert hist_spec("a", ["hitcount", "b"]).command.startswith("hist:keys=a:vals=hitcount,b:")


# ------------------------------------------------------------------------------------------------------- the parser
def test_every_table_of_a_hist_file_with_its_totals() -> None:
    tables = parse_hist(captured("cap_op.hist"))
    triggers = captured("cap_op.trigger").splitlines()
    assert [table.info for table in tables] == [line.rsplit(" [", 1)[0] for line in triggers]
    assert all(not table.paused for table in tables)
    for table in tables:
        assert table.entries == len(table.rows)
        assert table.hits == sum(int(dict(row.values)["hitcount"]) for row in table.rows)
    assert parse_hist("") == []


def test_an_empty_table() -> None:
    (table,) = parse_hist(captured("sched_sched_switch.hist"))
    assert table.info == "hist:keys=prev_state:vals=hitcount:sort=hitcount:size=2048 if prev_pid == 999999"
    assert (table.rows, table.hits, table.entries, table.dropped) == ((), 0, 0, 0)
    spec = hist_spec("prev_state", filter="prev_pid == 999999")
    assert spec.matches(table.info)
    assert not hist_spec("prev_state").matches(table.info)  # another filter is another trigger


def test_a_full_table_reports_its_drops() -> None:
    spec = hist_spec("child_pid", size=128)
    table = table_of("sched_sched_process_fork.hist", spec)
    assert (table.hits, table.entries, table.dropped) == (128, 128, 95)
    # every fork is in one of the two tables: the other one never filled
    other = table_of("sched_sched_process_fork.hist", hist_spec("parent_comm"))
    assert other.hits == table.hits + table.dropped == 223


def test_execname_keys_and_a_signed_sum() -> None:
    spec = hist_spec("common_pid.execname", "count")
    data = decode(spec, table_of("cap_rd.hist", spec), fmt("cap_rd"))
    assert data.entries[Task("cat", 777)] == HistEntry(Task("cat", 777), 1, {"count": 65536})
    assert data.entries[("sh", 565)]["count"] == 3198  # a Task is a tuple
    assert sum(entry.hitcount for entry in data.entries.values()) == data.hits == 15


def test_signed_keys_come_back_negative() -> None:
    spec = hist_spec("ret", sort="ret", filter="ret < 0")
    data = decode(spec, table_of("cap_opr.hist", spec), fmt("cap_opr"))
    assert list(data.entries) == [-2]  # printed as 18446744073709551614 (u64 of s32 -2)
    assert data.entries[-2].hitcount == data.hits == 200  # cat /nonexistent$i, 200 times
    # without the format the number is the kernel's u64
    raw = decode(spec, table_of("cap_opr.hist", spec))
    assert list(raw.entries) == [(1 << 64) - 2]


def test_compound_keys_hex_and_a_signed_sum() -> None:
    spec = hist_spec(["dfd", "common_cpu", "flags.hex"], ["flags.hex"], sort="hitcount.descending")
    data = decode(spec, table_of("cap_op.hist", spec), fmt("cap_op"))
    keys = list(data.entries)
    assert all(dfd == -100 and cpu == 0 for dfd, cpu, _ in keys)  # AT_FDCWD on the guest's one CPU
    hitcounts = [entry.hitcount for entry in data.entries.values()]
    assert hitcounts == sorted(hitcounts, reverse=True)
    for (_, _, flags), entry in data.entries.items():
        assert entry.sums["flags"] == flags * entry.hitcount  # the sum of a constant

    spec = hist_spec("flags.buckets=1024", "dfd")
    data = decode(spec, table_of("cap_op.hist", spec), fmt("cap_op"))
    for bucket, entry in data.entries.items():
        assert bucket % 1024 == 0
        assert entry["dfd"] == -100 * entry.hitcount  # a signed sum: printed as a u64


def test_string_keys_lose_the_kernels_padding() -> None:
    spec = hist_spec("name")
    data = decode(spec, table_of("cap_op.hist", spec), fmt("cap_op"))
    assert data.entries["/nonexistent17"].hitcount == 1
    assert data.entries["/proc/version"].hitcount == 3
    assert not [name for name in data.entries if name != name.rstrip()]

    spec = hist_spec("parent_comm")
    data = decode(spec, table_of("sched_sched_process_fork.hist", spec))
    assert dict(data.entries) == {"sh": HistEntry("sh", 223)}


def test_a_string_and_a_number_in_one_key() -> None:
    spec = hist_spec(["__probe_ret_ip.sym-offset", "ret"])
    data = decode(spec, table_of("cap_opr.hist", spec), fmt("cap_opr"))
    assert set(data.entries) == {("__x64_sys_openat+0x6a/0xa0", -2), ("__x64_sys_openat+0x6a/0xa0", 3)}


def test_modifiers_give_what_they_show() -> None:
    spec = hist_spec("__probe_ip.sym")
    assert list(decode(spec, table_of("cap_rd.hist", spec)).entries) == ["vfs_read"]
    spec = hist_spec("flags.log2")
    assert set(decode(spec, table_of("cap_op.hist", spec)).entries) == {15, 16, 20}  # "~ 2^N"
    spec = hist_spec("id.syscall")
    syscalls = decode(spec, table_of("raw_syscalls_sys_enter.hist", spec)).entries
    assert syscalls["sys_openat"].hitcount >= 200 and "sys_execve" in syscalls
    spec = hist_spec("stacktrace")
    data = decode(spec, table_of("cap_opr.hist", spec))
    ((stack, entry),) = data.entries.items()
    assert stack[0].startswith("kretprobe_rethook_handler+") and stack[-1].startswith("entry_SYSCALL_64")
    assert len(stack) == 7 and entry.hitcount == data.hits


def test_the_6_12_stack_key_spelling_matches() -> None:
    assert hist_spec("stacktrace").matches("hist:keys=common_stacktrace:vals=hitcount:sort=hitcount:size=2048")


# ------------------------------------------------------------------------------------------------------- the result
class _Owner:
    """What a session gives a result: here, one table read once."""

    def __init__(self, result_data):  # type: ignore[no-untyped-def]
        self.data = result_data
        self.reads = 0

    def sync(self, result: HistResult, *, force: bool = False) -> None:
        if force or not result._read:
            self.reads += 1
            result._update(self.data)


def result_of(file: str, spec: HistSpec, policy: str = "fail", fmt_: EventFormat | None = None) -> HistResult:
    owner = _Owner(decode(spec, table_of(file, spec), fmt_))
    return HistResult(spec, "probe", owner, policy)  # type: ignore[arg-type]


def test_a_result_is_a_mapping_with_a_counter_view() -> None:
    result = result_of("cap_rd.hist", hist_spec("common_pid.execname", "count"), fmt_=fmt("cap_rd"))
    assert result.source == "kernel"
    assert len(result) == result.entries == 4 and result.complete
    assert result.counter == Counter(
        {Task("sh", 565): 11, Task("tr", 776): 2, Task("cat", 777): 1, Task("dropbear", 564): 1}
    )
    assert result.sums("count")[Task("cat", 777)] == 65536
    assert (result.hits, result.dropped, result.total) == (15, 0, 15)
    assert Task("nobody", 1) not in result
    with pytest.raises(KeyError):
        result[Task("nobody", 1)]
    with pytest.raises(KtraceError, match="not 'len'"):
        result.sums("len")
    assert "hist:keys=common_pid.execname" in repr(result)


def test_dropped_hits_are_never_silent() -> None:
    result = result_of("sched_sched_process_fork.hist", hist_spec("child_pid", size=128))
    assert (result.hits, result.dropped, result.total, result.complete) == (128, 95, 223, False)
    first = next(iter(parse_hist(captured("sched_sched_process_fork.hist"))[0].rows))
    present = int(first.key_text.split(":")[1])
    assert result[present].hitcount == 1  # a key that is there is exact
    for look in (len, list, lambda r: r.counter, lambda r: r[10**9]):
        with pytest.raises(AssertionError, match=r"table \(128 entries\) was full, so 95 of 223 events .* size="):
            look(result)
    warned = result_of("sched_sched_process_fork.hist", hist_spec("child_pid", size=128), policy="warn")
    with pytest.warns(pytest.PytestWarning, match="95 of 223 events"):
        assert len(warned) == 128


def test_the_hist_feature_is_read_from_the_readme() -> None:
    from pytest_ktrace.backends._features import features_from, readme_features
    from pytest_ktrace.snapshots._snapshot import load_snapshot

    guest = load_snapshot("debian-6.1-x86_64").readme
    assert "hist" in readme_features(guest) and "hist" in features_from({}, guest)
    without = guest.replace("hist trigger\t- If set", "")
    assert "hist" not in features_from({}, without)
