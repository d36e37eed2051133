"""Streaming mode (long and busy tests) on this machine's kernel: uprobes on tests/prog/probed.c whose
events are read from the instance's trace_pipe while the test runs, into bounded memory, with exact counts and
aggregates. tests/ssh/test_streaming_ssh.py runs this module again through a real sshd (the dd-based stream), and
tests/guests/test_streaming_vm.py streams from a busybox guest. The fake backend's stream is tested at the end."""

from __future__ import annotations

import os
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pytest

from pytest_ktrace._aggregates import Histogram
from pytest_ktrace._errors import KtraceError
from pytest_ktrace._identity import RunIdentity
from pytest_ktrace._session import TraceSession
from pytest_ktrace.backends._base import Op, OpResult, RunResult, TargetInfo
from pytest_ktrace.fake._backend import FakeBackend
from pytest_ktrace.fake._tracefs import FakeOSError, FakeTracefs
from pytest_ktrace.snapshots._snapshot import load_snapshot

STREAM = pytest.mark.ktrace(stream=True)
BOTH_MODES = pytest.mark.parametrize(
    "streamed",
    [
        pytest.param(True, marks=pytest.mark.ktrace(stream=True), id="stream"),
        pytest.param(False, marks=pytest.mark.ktrace(stream=False), id="trace"),
    ],
)


def _readers_of(path: str) -> list[int]:
    """Processes with ``path`` open (our own pytest process included): a local reader's fd or a remote dd."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == path:
                    found.append(int(entry))
                    break
            except OSError:
                continue
    return found


# ------------------------------------------------------------------------------------------ busy and long tests
BUSY_RUNS, BUSY_CALLS = 100, 2000  # 200000 calls; each run alone overflows a 64 KB per-CPU buffer (~1900 events)


@pytest.mark.ktrace(stream=True, buffer_kb=64)
def test_a_busy_test_streams_every_event_through_a_small_buffer(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64", b="$arg2:u64")
    by_b = ktrace.count_by(add, "b")
    for _ in range(BUSY_RUNS):
        ktrace.run([str(probed), "loop", str(BUSY_CALLS)], check=True)
    assert not ktrace.collect().lost
    add.assert_call_count(BUSY_RUNS * BUSY_CALLS)
    assert by_b == Counter({1: BUSY_RUNS * BUSY_CALLS})
    assert len(add.events) == BUSY_RUNS * BUSY_CALLS // 2  # --ktrace-keep-events default is 100000


@pytest.mark.ktrace(stream=False, buffer_kb=64)
def test_the_same_busy_test_loses_events_when_reading_trace(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64", b="$arg2:u64")
    for _ in range(BUSY_RUNS):
        ktrace.run([str(probed), "loop", str(BUSY_CALLS)], check=True)
    assert sum(ktrace.collect().lost.values()) > BUSY_RUNS * BUSY_CALLS // 2
    with pytest.raises(AssertionError, match="LOST EVENTS"):
        add.assert_call_count(BUSY_RUNS * BUSY_CALLS)


@pytest.mark.ktrace(stream=True, buffer_kb=64)
def test_a_burst_faster_than_the_stream_is_reported_lost(ktrace, probed: Path) -> None:
    # 200000 calls in one go (well over 1M events/s): no reader keeps a 64 KB buffer from overflowing. trace_pipe
    # says so with "CPU:N [LOST M EVENTS]", and counts refuse to pass.
    add = ktrace.uprobe(str(probed), "add_u64", a="$arg1:u64")
    ktrace.run([str(probed), "loop", "200000"], check=True)
    lost = ktrace.collect().lost
    assert lost and add.call_count + sum(lost.values()) == 200000
    with pytest.raises(AssertionError, match=r"LOST EVENTS: .*overflowed") as info:
        add.assert_call_count(200000)
    assert "lost events, so no count can be trusted" in str(info.value)
    add.assert_called_with(a=199999)  # what is there still checks: the last call always arrives


@STREAM
def test_counts_are_exact_right_after_each_run(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64")
    for i in range(1, 6):
        ktrace.run([str(probed), "loop", "700"])
        assert add.call_count == 700 * i  # run() waited for its sync marker: nothing is still in flight
    assert ktrace.collect() and add.call_count == 3500
    add.assert_call_count(3500)


@pytest.mark.ktrace(stream=True, scope="run")
def test_stream_with_scope_run_counts_only_its_own_commands(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64")
    ktrace.collect()  # before the first run tracing is off: nothing to wait for
    assert add.call_count == 0
    subprocess.run([str(probed), "loop", "5"], check=True, stdout=subprocess.DEVNULL)  # not started by ktrace.run
    ktrace.run([str(probed), "loop", "7"], check=True)
    subprocess.run([str(probed), "loop", "5"], check=True, stdout=subprocess.DEVNULL)
    ktrace.run([str(probed), "loop", "3"], check=True)
    assert add.call_count == 10
    add.assert_call_count(10)


# ------------------------------------------------------------------------------------------------- bounded memory
@pytest.mark.ktrace(stream=True, keep=500)
def test_keep_bounds_the_events_kept_per_probe(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64", a="$arg1:u64")
    fib = ktrace.uprobe(str(probed), "fib", n="$arg1:s32")
    ktrace.run([str(probed), "loop", "3000"])
    ktrace.run([str(probed), "fib", "4"])
    assert add.call_count == 3000 and fib.call_count == 9
    state = ktrace._stream_mode.pump.state((add.spec.group, add.spec.event))
    assert state.kept.maxlen == 500 and len(state.kept) == 500  # the memory bound itself
    assert [event["a"] for event in add.events] == list(range(2500, 3000))  # the most recent ones
    assert len(fib.events) == 9  # per probe: fib's few are all kept
    add.assert_call_count(3000)
    add.assert_called_with(a=2999)
    add.assert_any_call(a=2500)
    fib.assert_all_calls(n=lambda n: 0 <= n <= 4)
    with pytest.raises(AssertionError, match=r"add_u64: assert_order \(its first call\) needs every event"):
        ktrace.assert_order(add, fib)  # add's first call is no longer kept: never a guess
    assert len(ktrace.events) == 509


@pytest.mark.ktrace(stream=True, keep=100)
def test_checks_that_need_every_event_say_what_was_dropped(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64", a="$arg1:u64", b="$arg2:u64")
    done = ktrace.uretprobe(str(probed), "add_u64")
    ktrace.run([str(probed), "loop", "1000"])
    checks = {
        "assert_all_calls": lambda: add.assert_all_calls(b=1),
        "assert_any_call": lambda: add.assert_any_call(a=3),
        "call_count": lambda: add.where(a=lambda a: a % 2 == 0).call_count,
        "assert_call_count": lambda: add.where(b=1).assert_call_count(1000),
        "assert_returned": lambda: done.assert_returned(lambda r: r > 0),
        "assert_order": lambda: ktrace.assert_order(add, done),
        "assert_latency": lambda: ktrace.assert_latency(add, done),
    }
    for what, check in checks.items():
        with pytest.raises(AssertionError) as info:
            check()
        message = str(info.value)
        assert f"{what}" in message and "only the last 100 of 1000 events were kept" in message, message
        assert "ktrace.count_by" in message and "--ktrace-keep-events" in message, message
    # never a wrong pass, and still a right failure or pass where the kept events decide it
    with pytest.raises(AssertionError, match="do not match"):
        add.assert_all_calls(a=lambda a: a < 950)
    add.assert_any_call(a=999)
    add.where(a=lambda a: a >= 900).assert_called()
    assert add.call_count == 1000 and done.call_count == 1000
    add.assert_call_count(1000)


# ------------------------------------------------------------------------------------------------------ aggregates
@BOTH_MODES
def test_count_by_counts_every_value(ktrace, probed: Path, streamed: bool) -> None:
    fib = ktrace.uprobe(str(probed), "fib", n="$arg1:s32")
    by_n = ktrace.count_by(fib, "n")
    # (not comm: the kernel names a task from its saved_cmdlines cache when the line is read, which a stream may
    # read before the new task's name is cached)
    by_pid = ktrace.count_by(fib, "pid")
    small = ktrace.count_by(fib.where(n=lambda n: n < 2), "n")
    run = ktrace.run([str(probed), "fib", "5"])
    # fib(5) calls fib(k) for k = 5, 4, 3, 2, 1, 0 this many times
    assert by_n == Counter({5: 1, 4: 1, 3: 2, 2: 3, 1: 5, 0: 3})
    assert by_pid == Counter({run.pid: 15}) and small == Counter({1: 5, 0: 3})
    ktrace.run([str(probed), "fib", "2"])
    assert by_n == Counter({5: 1, 4: 1, 3: 2, 2: 4, 1: 6, 0: 4})  # the same Counter, updated (live)
    assert ktrace.stream is streamed


@pytest.mark.ktrace(stream=True, keep=1000)
def test_count_by_is_exact_far_beyond_what_is_kept(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64", a="$arg1:u64", b="$arg2:u64")
    by_b = ktrace.count_by(add, "b")
    parity = ktrace.count_by(add.where(a=lambda a: a % 2 == 0), "b")
    for _ in range(10):
        ktrace.run([str(probed), "loop", "5000"])
    assert by_b == Counter({1: 50000}) and parity == Counter({1: 25000})
    assert len(add.events) == 1000


@BOTH_MODES
def test_latency_histogram_of_a_sleep(ktrace, probed: Path, streamed: bool) -> None:
    entry = ktrace.uprobe(str(probed), "sleep_us")
    done = ktrace.uretprobe(str(probed), "sleep_us")
    hist = ktrace.latency_histogram(entry, done, buckets_us=(1000, 3000, 10000, 200000))
    for _ in range(3):
        ktrace.run([str(probed), "sleep", "4000"])
    assert isinstance(hist, Histogram)
    assert hist.count == 3 and hist.unpaired == 0
    assert hist.min is not None and hist.max is not None and 4000 <= hist.min <= hist.max < 200000
    assert hist.counts[:2] == [0, 0] and sum(hist.counts) == 3 and hist.counts[-1] == 0
    assert hist.mean is not None and hist.min <= hist.mean <= hist.max
    hist.assert_below(200000)
    hist.assert_below(200000, quantile=1.0)
    with pytest.raises(AssertionError) as info:
        hist.assert_below(3000)
    text = str(info.value)
    assert "p99 is not <= 3000 us: only 0 of 3 values" in text and "<= 10000 us" in text and "#" in text


@BOTH_MODES
def test_latency_histogram_pairs_recursion_like_assert_latency(ktrace, probed: Path, streamed: bool) -> None:
    entry = ktrace.uprobe(str(probed), "fib")
    done = ktrace.uretprobe(str(probed), "fib")
    hist = ktrace.latency_histogram(entry, done)
    ktrace.run([str(probed), "fib", "6"])
    durations = ktrace.assert_latency(entry, done)
    assert hist.count == len(durations) == 25 and hist.unpaired == 0
    assert hist.min == pytest.approx(min(durations)) and hist.max == pytest.approx(max(durations))
    assert hist.total == pytest.approx(sum(durations))


@STREAM
def test_aggregates_must_come_before_the_first_run_in_stream_mode(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64", a="$arg1:u64")
    ktrace.arm()
    early = ktrace.count_by(add, "a")  # after arming, before any run: still sees every event
    ktrace.run([str(probed), "loop", "3"])
    assert early == Counter({0: 1, 1: 1, 2: 1})
    with pytest.raises(KtraceError, match=r"before the first ktrace.run\(\) in stream mode"):
        ktrace.count_by(add, "a")
    with pytest.raises(KtraceError, match=r"before the first ktrace\.run"):
        ktrace.latency_histogram(add, add)


def test_count_by_names_the_fields_a_probe_has(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64", a="$arg1:u64")
    ktrace.count_by(add, "nope")  # the format is not known before arming: checked there
    with pytest.raises(KtraceError, match=r"count_by\(add_u64, 'nope'\): the probe has no such field .*a"):
        ktrace.run([str(probed), "loop", "1"])
    with pytest.raises(KtraceError, match="no such field"):
        ktrace.count_by(add, "b")


# ------------------------------------------------------------------------------------------------------- teardown
@STREAM
def test_teardown_stops_the_reader_before_removing_anything(ktrace, probed: Path) -> None:
    add = ktrace.uprobe(str(probed), "add_u64")
    ktrace.run([str(probed), "loop", "10"])
    pipe = f"{ktrace.target.tracefs}/{ktrace.instance_path}/trace_pipe"
    thread = f"ktrace-pump-{ktrace.instance}"
    assert any(t.name == thread for t in threading.enumerate())
    on_this_machine = ktrace.backend.name in ("local", "ktrace-test")  # the local backend, or sshd on loopback
    if on_this_machine:
        assert _readers_of(pipe), "the stream is open while the test runs"
    report = ktrace.teardown()
    assert not report, report.failures
    assert not any(t.name == thread for t in threading.enumerate())
    tracefs = Path(ktrace.target.tracefs)
    if on_this_machine:
        assert not _readers_of(pipe), "a reader process or descriptor was left behind"
        assert not (tracefs / ktrace.instance_path).exists()
        assert f"{add.spec.group}/{add.spec.event}" not in (tracefs / "uprobe_events").read_text()
    assert add.call_count == 10  # what streamed stays readable after teardown


class _NoStreaming:
    """A third-party backend of the old contract: everything but open_stream."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    name = property(lambda self: self.inner.name)
    round_trips = property(lambda self: self.inner.round_trips)
    files_are_local = property(lambda self: getattr(self.inner, "files_are_local", False))

    def describe(self) -> TargetInfo:
        return self.inner.describe()  # type: ignore[no-any-return]

    def apply(self, ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        return self.inner.apply(ops, stop_on_error=stop_on_error)  # type: ignore[no-any-return]

    def run(self, argv: Sequence[str], **kwargs: Any) -> RunResult:
        return self.inner.run(argv, **kwargs)  # type: ignore[no-any-return]

    def defer(self, ops: Sequence[Op]) -> None:
        self.inner.defer(ops)

    def close(self) -> None:
        """The inner backend belongs to the run."""


def test_a_backend_without_open_stream_says_it_cannot_stream(ktrace, probed: Path) -> None:
    session = TraceSession(_NoStreaming(ktrace.backend), ktrace.identity, 900000 + os.getpid() % 1000, stream=True)
    try:
        session.uprobe(str(probed), "add_u64")
        for _ in range(2):  # and again on the next call: never a run without its stream
            with pytest.raises(
                KtraceError, match=r"the Streaming capability.*has none; run this test without stream=True"
            ):
                session.run([str(probed), "loop", "1"])
    finally:
        assert not session.teardown()
    # and without stream mode it works as before
    plain = ktrace.uprobe(str(probed), "add_u64")
    ktrace.run([str(probed), "loop", "2"])
    plain.assert_call_count(2)


# --------------------------------------------------------------------------------------- the fake backend's stream
def _fake_session(keep: int = 10, **tracefs: Any) -> tuple[FakeBackend, TraceSession]:
    backend = FakeBackend(load_snapshot("debian-6.1-arm64"))
    if tracefs:
        backend.tracefs = FakeTracefs(backend.snapshot, cpus=2, **tracefs)
    return backend, TraceSession(backend, RunIdentity.current(), 1, stream=True, keep_events=keep)


def test_fake_backend_streams_injected_events() -> None:
    backend, session = _fake_session(keep=10)
    setup = session.kprobe("__setup_irq", irq="%x0:u32", name="+0(+80(%x2)):string")
    by_irq = session.count_by(setup, "irq")
    assert session.inject(setup, 25, irq=16, name="rtc-pl031") == 25
    assert session.inject(setup, 5, irq=17, name="virtio0") == 5
    assert setup.call_count == 30 and len(setup.events) == 10
    assert by_irq == Counter({16: 25, 17: 5})
    setup.assert_called_with(irq=17, name="virtio0")
    with pytest.raises(AssertionError, match="only the last 10 of 30 events were kept"):
        setup.assert_all_calls(irq=lambda irq: irq in (16, 17))
    # while the stream is open its instance is busy, as on a kernel: teardown closes it first
    with pytest.raises(FakeOSError) as busy:
        backend.tracefs.rmdir(session.instance_path)
    assert busy.value.errno_name == "EBUSY"
    assert not session.teardown()
    assert not backend.tracefs.exists(session.instance_path)
    assert not any(t.name.startswith("ktrace-pump-") for t in threading.enumerate())


def test_fake_stream_reports_lost_events() -> None:
    backend, session = _fake_session(keep=100, buffer_events_per_cpu=5)
    setup = session.kprobe("__setup_irq", irq="%x0:u32")
    session.arm()
    with backend._lock:  # the reader cannot drain meanwhile: 20 events into a 5-event buffer
        for irq in range(20):
            backend.inject(f"{setup.spec.group}/{setup.spec.event}", {"irq": irq}, cpu=1)
    assert session.collect().lost == {1: 15}
    assert setup.call_count == 5
    setup.assert_called_with(irq=19)
    with pytest.raises(AssertionError, match=r"LOST EVENTS: .*15 on CPU 1"):
        setup.assert_call_count(5)
    assert not session.teardown()


def test_fake_stream_latency_histogram() -> None:
    backend, session = _fake_session()
    entry = session.kprobe("__setup_irq", irq="%x0:u32")
    done = session.kretprobe("__setup_irq")
    hist = session.latency_histogram(entry, done, buckets_us=(100, 1000))
    session.arm()
    key_in, key_out = f"{entry.spec.group}/{entry.spec.event}", f"{done.spec.group}/{done.spec.event}"
    for pid, start, us in ((101, 10.0, 50), (102, 11.0, 500), (101, 12.0, 5000)):
        backend.inject(key_in, {"irq": 1}, pid=pid, timestamp=start)
        backend.inject(key_out, {"ret": 0}, pid=pid, timestamp=start + us / 1e6)
    backend.inject(key_out, {"ret": 0}, pid=103, timestamp=13.0)  # an exit without its entry
    session.collect()
    assert hist.counts == [1, 1, 1] and hist.count == 3 and hist.unpaired == 1
    assert hist.min == pytest.approx(50) and hist.max == pytest.approx(5000)
    hist.assert_below(1000, quantile=0.66)
    with pytest.raises(AssertionError, match=r"p99 is not <= 1000 us: only 2 of 3"):
        hist.assert_below(1000)
    assert not session.teardown()


def test_histogram_without_a_boundary_at_the_limit_never_passes_wrongly() -> None:
    hist = Histogram((100, 1000), "x")
    for value in (50, 150, 900, 950):
        hist.add(value)
    hist.assert_below(1000, quantile=1.0)  # every bucket ends at or under 1000
    with pytest.raises(AssertionError, match="add 500 to buckets_us"):
        hist.assert_below(500, quantile=0.5)  # 150 is <= 500, but its bucket (100, 1000] straddles 500
    with pytest.raises(AssertionError, match="no values recorded"):
        Histogram((1,), "empty").assert_below(1)


# ---------------------------------------------------------------------------------------------------- settings
def test_stream_settings_marker_over_command_line_over_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nktrace_stream = true\nktrace_keep_events = 7\n")
    pytester.makepyfile(
        test_settings="""
        import pytest

        def test_ini(ktrace):
            assert ktrace.stream is True and ktrace.keep_events == 7

        @pytest.mark.ktrace(stream=False, keep=3)
        def test_marker(ktrace):
            assert ktrace.stream is False and ktrace.keep_events == 3
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_cli="""
        def test_cli(ktrace):
            assert ktrace.stream is True and ktrace.keep_events == 11
        """
    )
    pytester.runpytest("test_cli.py", "--ktrace-stream", "--ktrace-keep-events=11").assert_outcomes(passed=1)
    bad = pytester.runpytest("test_cli.py", "--ktrace-stream", "--ktrace-keep-events=0")
    assert bad.ret != 0
    assert "keep_events=0 must be at least 1" in bad.stdout.str() + bad.stderr.str()


def test_a_sync_marker_that_never_arrives_is_a_clear_error() -> None:
    backend = FakeBackend(load_snapshot("debian-6.1-arm64"))
    session = TraceSession(backend, RunIdentity.current(), 1, stream=True, sync_stall_s=0.3)
    setup = session.kprobe("__setup_irq", irq="%x0:u32")
    session.arm()
    stream = session._stream_mode.stream
    assert stream is not None
    stream.read = lambda timeout: ""  # type: ignore[method-assign]  # a reader that never delivers
    session.inject(setup, irq=1)
    with pytest.raises(KtraceError, match=r"sync marker ktrace-sync-1 did not arrive from trace_pipe within 0.3 s"):
        setup.assert_called()
    assert not session.teardown()


def test_a_failing_stream_is_reported_by_the_next_sync() -> None:
    backend = FakeBackend(load_snapshot("debian-6.1-arm64"))
    session = TraceSession(backend, RunIdentity.current(), 1, stream=True)
    session.kprobe("__setup_irq", irq="%x0:u32")
    session.arm()
    stream = session._stream_mode.stream

    def broken(timeout: float) -> str:
        raise KtraceError("the board went away")

    stream.read = broken  # type: ignore[method-assign,union-attr]
    with pytest.raises(KtraceError, match="the trace stream failed: the board went away; instance ktrace_"):
        session.collect()
    assert not session.teardown()
