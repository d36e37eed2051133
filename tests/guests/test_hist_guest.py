"""``ktrace.hist()`` and ``count_by()`` on the qemu guests' kernels (Debian 6.1, CONFIG_HIST_TRIGGERS=y): real hist
triggers on a busy kernel function and a tracepoint, with keys, values and filters, a table too small for its keys,
nothing left behind; recorded there and replayed on the fake from the cassettes."""

from __future__ import annotations

import pytest

SUITE = """
import os
from collections import Counter

import pytest
import pytest_ktrace

pytestmark = pytest.mark.ktrace(vm=os.environ["HIST_ARCH"])


def test_keys_values_and_a_filter_on_a_busy_function(ktrace):
    read = ktrace.kprobe("vfs_read", n="$arg3:u64")
    table = ktrace.hist(read, ["common_pid.execname"], ["n"], filter="n == 1")
    assert ktrace.target.has("hist") and table.source == "kernel"
    ktrace.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=5000"], check=True)
    (dd,) = [entry for task, entry in table.items() if task.comm == "dd"]
    assert dd.hitcount == dd["n"] >= 5000  # every 1-byte read, whatever the rate
    assert all(entry.hitcount == entry["n"] for entry in table.values())  # the filter: only reads of 1 byte
    assert table.dropped == 0 and table.total == table.hits == sum(table.counter.values())


def test_count_by_in_the_kernel_holds_what_the_events_hold(ktrace):
    opened = ktrace.kprobe("do_sys_openat2", name="+0($arg2):string", filter='name == "/proc/version"')
    failed = ktrace.kretprobe("do_sys_openat2", ret="$retval:s32", filter="ret < 0")
    by_name = ktrace.count_by(opened, "name")
    by_ret = ktrace.count_by(failed, "ret")
    by_pid = ktrace.count_by(failed, "pid")
    ktrace.run(["sh", "-c", "for i in 1 2 3; do cat /proc/version /nonexistent; done"])
    assert (by_name.source, by_ret.source, by_pid.source) == ("kernel",) * 3
    assert by_name == Counter(event["name"] for event in opened.events) == Counter({"/proc/version": 3})
    assert by_ret == Counter(event["ret"] for event in failed.events)
    assert by_ret[-2] == 3  # ENOENT, a signed value the kernel prints as a u64
    assert by_pid == Counter(event.pid for event in failed.events)


def test_a_table_too_small_for_its_keys(ktrace):
    fork = ktrace.tracepoint("sched:sched_process_fork")
    table = ktrace.hist(fork, "child_pid", size=100)
    assert table.size == 128  # rounded up to a power of two, as the kernel does
    ktrace.run(["sh", "-c", "for i in $(seq 200); do /bin/true; done"], check=True)
    assert table.entries == table.hits == 128 and table.dropped >= 200 - 128
    assert table.total == table.hits + table.dropped and not table.complete
    with pytest.raises(AssertionError, match="was full"):
        len(table)


def test_the_kernels_own_refusal(ktrace):
    read = ktrace.kprobe("vfs_read")
    ktrace.hist(read, "nosuch")
    with pytest.raises(pytest_ktrace.ProbeRejected) as info:
        ktrace.arm()
    assert "Couldn't find field" in str(info.value) and info.value.kernel_log.splitlines()[-1].strip() == "^"


def test_no_trigger_is_left_behind(ktrace):
    found = ktrace.run(
        ["sh", "-c", "grep -ls '^hist:' /sys/kernel/tracing/events/*/*/trigger "
         "/sys/kernel/tracing/instances/*/events/*/*/trigger; true"]
    ).stdout
    assert found.split() == [], found
"""


@pytest.mark.guest
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_hist_triggers_in_the_guest(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    monkeypatch.setenv("HIST_ARCH", arch)
    pytester.makepyfile(test_hist_suite=SUITE)
    recorded = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--ktrace-record")
    if "not found" in recorded.stdout.str() and "qemu" in recorded.stdout.str():
        pytest.skip(f"qemu for {arch} is not installed")
    replayed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--ktrace-backend=fake")
    for result in (recorded, replayed):  # the guest's kernel, then its cassettes replayed on the fake
        result.assert_outcomes(passed=5)
