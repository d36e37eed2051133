"""``ktrace.hist()`` and ``count_by()`` in the kernel, on the fake backend (its hist triggers are checked against
the Debian 6.1 guest by tests/fake/test_fake_hist.py; the guests themselves: tests/guests/test_hist_guest.py)."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from pytest_ktrace import HistUnavailable, KtraceError, ProbeRejected
from pytest_ktrace._hist_spec import COUNT_SIZE, Task
from pytest_ktrace._identity import RunIdentity
from pytest_ktrace._session import TraceSession
from pytest_ktrace.backends._base import Read, Write
from pytest_ktrace.fake._backend import FakeBackend
from pytest_ktrace.snapshots._snapshot import load_snapshot

SNAPSHOT = "debian-6.1-x86_64"


def session_on(snapshot: Any = None, **options: Any) -> tuple[FakeBackend, TraceSession]:
    backend = FakeBackend(snapshot if snapshot is not None else load_snapshot(SNAPSHOT))
    return backend, TraceSession(backend, RunIdentity.current(), 1, **options)


@pytest.fixture
def fake() -> Any:
    backend, session = session_on()
    yield backend, session
    assert not session.teardown()
    assert backend.tracefs.read("kprobe_events") == ""
    assert backend.tracefs.listdir("instances") == []


def test_hist_counts_by_keys_sums_values_and_filters(fake: Any) -> None:
    _backend, session = fake
    read = session.kprobe("vfs_read", fd="$arg1:s32", n="$arg3:u64")
    table = session.hist(read, ["common_pid.execname", "fd"], ["n"], filter="n > 10")
    assert table.source == "kernel" and table.trigger.endswith(":size=2048 if n > 10")
    session.inject(read, 3, fd=3, n=100, task_pid=5, task_comm="cat")
    session.inject(read, 2, fd=-1, n=1000, task_pid=6, task_comm="dd")
    session.inject(read, 4, fd=0, n=1, task_pid=6, task_comm="dd")  # filtered out
    assert table[(Task("cat", 5), 3)]["n"] == 300
    assert table[(("dd", 6), -1)].hitcount == 2
    assert table.counter == Counter({(Task("cat", 5), 3): 3, (Task("dd", 6), -1): 2})
    assert (table.hits, table.dropped, table.total, table.entries) == (5, 0, 5, 2)
    session.inject(read, 1, fd=3, n=50, task_pid=5, task_comm="cat")
    assert table[(Task("cat", 5), 3)].hitcount == 4  # read again: something happened since


def test_the_probes_own_filter_is_the_triggers_too(fake: Any) -> None:
    _backend, session = fake
    read = session.kprobe("vfs_read", fd="$arg1:s32", filter="fd >= 0")
    table = session.hist(read, "fd")
    assert table.spec.filter == "fd >= 0"
    both = session.hist(read, "fd", filter="fd < 10")
    assert both.spec.filter == "(fd >= 0) && (fd < 10)"
    session.inject(read, fd=-1)
    session.inject(read, fd=3)
    session.inject(read, fd=30)
    assert table.counter == Counter({3: 1, 30: 1}) and both.counter == Counter({3: 1})
    assert read.call_count == 2  # the trace saw what the hist saw


def test_the_trigger_goes_in_the_arming_batch_and_before_the_probe_in_teardown(fake: Any) -> None:
    backend, session = fake
    read = session.kprobe("vfs_read", fd="$arg1:s32")
    table = session.hist(read, "fd")
    assert session.hist(read, "fd") is table  # the same trigger asked twice
    trips = backend.round_trips
    session.arm()
    assert backend.round_trips == trips + 1
    trigger = f"{session.instance_path}/events/{read.spec.event_dir}/trigger"
    ops = session.teardown_ops()
    assert ops[0] == Write(trigger, "!" + table.trigger)
    assert ops.index(Write(trigger, "!" + table.trigger)) < ops.index(Write("kprobe_events", read.spec.removal()))
    assert backend.tracefs.read(trigger) == f"{table.trigger} [active]\n"
    assert backend.tracefs.read(f"{session.instance_path}/events/{read.spec.event_dir}/enable") == "1*\n"


def test_a_hist_asked_after_arming_is_armed_by_the_next_look(fake: Any) -> None:
    _backend, session = fake
    read = session.kprobe("vfs_read", fd="$arg1:s32")
    session.inject(read, fd=1)
    table = session.hist(read, "fd")
    session.inject(read, fd=2)  # arms it first
    assert table.counter == Counter({2: 1})


def test_a_full_table_fails_when_its_keys_are_listed(fake: Any) -> None:
    _backend, session = fake
    read = session.kprobe("vfs_read", n="$arg3:u64")
    table = session.hist(read, "n", size=128)
    assert table.size == 128
    for n in range(130):
        session.inject(read, n=n)
    assert (table.hits, table.dropped, table.total, table.complete) == (128, 2, 130, False)
    assert table[0].hitcount == 1
    with pytest.raises(AssertionError, match=r"was full, so 2 of 130 events"):
        len(table)


def test_the_kernels_refusal_is_quoted_with_its_caret(fake: Any) -> None:
    _backend, session = fake
    read = session.kprobe("vfs_read", fd="$arg1:s32")
    session.hist(read, "nosuch")
    with pytest.raises(ProbeRejected) as info:
        session.arm()
    assert "the kernel rejected hist(vfs_read): Couldn't find field" in str(info.value)
    assert info.value.kernel_log.splitlines()[1:] == [
        "  Command: hist:keys=nosuch:vals=hitcount:sort=hitcount:size=2048",
        "                     ^",
    ]
    assert info.value.errno_name == "EINVAL"
    session.arm()  # the refused trigger is gone: the probe is armed
    assert read.call_count == 0


def test_a_filter_the_kernel_refuses_is_named_as_such(fake: Any) -> None:
    _backend, session = fake
    read = session.kprobe("vfs_read", fd="$arg1:s32")
    session.hist(read, "fd", filter="nosuch == 1")
    with pytest.raises(ProbeRejected, match="the kernel logs nothing for a trigger's filter"):
        session.arm()


def test_what_hist_refuses_before_the_kernel(fake: Any) -> None:
    _backend, session = fake
    read = session.kprobe("vfs_read", fd="$arg1:s32")
    with pytest.raises(KtraceError, match="where\\(\\) view's criteria"):
        session.hist(read.where(fd=3), "fd")
    with pytest.raises(KtraceError, match="a hist table has 1 to 3 keys"):
        session.hist(read, [])
    with pytest.raises(KtraceError, match="takes a probe made by this test's ktrace fixture"):
        session.hist("vfs_read", "fd")  # type: ignore[arg-type]
    _, run_scoped = session_on(scope="run")
    probe = run_scoped.kprobe("vfs_read")
    with pytest.raises(KtraceError, match="scope='run'"):
        run_scoped.hist(probe, "common_pid")
    assert not run_scoped.teardown()


def test_a_target_without_hist_triggers() -> None:
    snapshot = load_snapshot(SNAPSHOT)
    plain = replace(
        snapshot, readme=snapshot.readme.replace("hist trigger\t- If set", "-"), features=snapshot.features - {"hist"}
    )
    _backend, session = session_on(plain)
    read = session.kprobe("vfs_read", fd="$arg1:s32")
    with pytest.raises(HistUnavailable, match=r"has no hist triggers.*CONFIG_HIST_TRIGGERS=y") as info:
        session.hist(read, "fd")
    assert info.value.target == "fake:debian-6.1-x86_64" and info.value.option == "CONFIG_HIST_TRIGGERS"
    counted = session.count_by(read, "fd")
    assert counted.source == "stream" and "has no hist triggers" in counted.why
    session.inject(read, 2, fd=4)
    session.collect()
    assert counted == Counter({4: 2})
    assert not session.teardown()


# ---------------------------------------------------------------------------------------------------- count_by
def test_count_by_counts_in_the_kernel_the_values_the_events_hold(fake: Any) -> None:
    _backend, session = fake
    read = session.kprobe("vfs_read", fd="$arg1:s32", n="$arg3:u64")
    by_fd = session.count_by(read, "fd")
    by_pid = session.count_by(read, "pid")
    by_cpu = session.count_by(read, "task_cpu")
    streamed = session.count_by(read.where(n=1), "fd")
    assert (by_fd.source, by_pid.source, by_cpu.source, streamed.source) == ("kernel", "kernel", "kernel", "stream")
    assert "where() view" in streamed.why
    session.inject(read, 3, fd=-2, n=1, task_pid=7, task_cpu=1)
    session.inject(read, 2, fd=5, n=2, task_pid=8)
    session.collect()
    assert by_fd == Counter({-2: 3, 5: 2}) == Counter(event.fields["fd"] for event in read.events)
    assert by_pid == Counter({7: 3, 8: 2})
    assert by_cpu == Counter({1: 3, 0: 2})
    assert streamed == Counter({-2: 3})
    assert isinstance(by_fd, Counter)


def test_count_by_streams_what_the_kernel_would_count_otherwise(fake: Any) -> None:
    _backend, session = fake
    read = session.kprobe("vfs_read", fd="$arg1:s32", where="$arg1:symbol")
    by_comm = session.count_by(read, "comm")
    by_symbol = session.count_by(read, "where")
    assert by_comm.source == "stream" and "exec" in by_comm.why
    assert by_symbol.source == "stream" and "where" in by_symbol.why
    with pytest.raises(KtraceError, match="no such field"):
        session.count_by(read, "nosuch")
    session.inject(read, 2, fd=1, task_comm="cat")
    session.collect()
    assert by_comm == Counter({"cat": 2})


def test_count_by_in_stream_mode_counts_in_the_kernel() -> None:
    _backend, session = session_on(stream=True)
    read = session.kprobe("vfs_read", fd="$arg1:s32")
    by_fd = session.count_by(read, "fd")
    assert by_fd.source == "kernel"
    session.inject(read, 20, fd=3)
    assert read.call_count == 20
    assert by_fd == Counter({3: 20})
    assert not session.teardown()


def test_count_by_says_when_the_kernels_table_was_full(fake: Any) -> None:
    backend, session = fake
    read = session.kprobe("vfs_read", n="$arg3:u64")
    by_n = session.count_by(read, "n")
    for n in range(COUNT_SIZE + 3):
        backend.inject(read.spec.event_dir, {"n": n})
    with pytest.warns(pytest.PytestWarning, match=r"table \(8192 values\) was full, so 3 events"):
        session.collect()
    assert by_n.dropped == 3 and len(by_n) == COUNT_SIZE
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.collect()  # said once


def test_latency_histogram_says_it_streams(fake: Any) -> None:
    _backend, session = fake
    entry = session.kprobe("vfs_read")
    done = session.kretprobe("vfs_read")
    histogram = session.latency_histogram(entry, done)
    assert histogram.source == "stream" and "synthetic event" in histogram.why


def test_the_tables_come_back_with_each_collection_not_more(fake: Any) -> None:
    backend, session = fake
    read = session.kprobe("vfs_read", fd="$arg1:s32")
    by_fd = session.count_by(read, "fd")
    table = session.hist(read, "fd")
    session.inject(read, fd=1)
    reads: list[str] = []
    apply = backend.apply

    def counting(ops: Any, **kwargs: Any) -> Any:
        reads.extend(op.path for op in ops if isinstance(op, Read) and op.path.endswith("/hist"))
        return apply(ops, **kwargs)

    backend.apply = counting  # type: ignore[method-assign]
    session.collect()
    assert by_fd == Counter({1: 1}) and len(reads) == 1  # one read of the event's hist file for both
    assert table.counter == Counter({1: 1})
    assert len(reads) == 1  # collected since: nothing new to read
