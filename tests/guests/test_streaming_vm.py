"""Streaming from a qemu guest whose userland is busybox only (the arm64 Debian-kernel guest, booted through
--ktrace-vm): the stream is busybox dd on trace_pipe, synchronised by trace_marker, and its reader is gone after
teardown."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER = r"""
import pytest

@pytest.mark.ktrace(stream=True)
def test_streams_from_the_busybox_guest(ktrace):
    probe = ktrace.kprobe("__setup_irq", irq="%x0:u32")
    by_irq = ktrace.count_by(probe, "irq")
    ktrace.run(["ktrace-trigger-setup-irq"], check=True)
    per_run = probe.call_count
    assert per_run >= 1
    for runs in range(2, 5):
        ktrace.run(["ktrace-trigger-setup-irq"], check=True)
        assert probe.call_count == per_run * runs  # synchronised: nothing of the run is still in flight
    assert sum(by_irq.values()) == per_run * 4
    reader = ktrace._stream_mode.stream.pid
    pipe = f"{ktrace.target.tracefs}/{ktrace.instance_path}/trace_pipe"
    # busybox ash may run `exec dd` as an applet in the shell's own process: its cmdline can stay the sh -c line
    cmdline = ktrace.run(["cat", f"/proc/{reader}/cmdline"]).stdout.split("\0")
    assert f"if={pipe}" in cmdline or f"exec dd if='{pipe}' bs=65536" in " ".join(cmdline), cmdline
    assert ktrace.run(["readlink", f"/proc/{reader}/exe"]).stdout.strip() == "/bin/busybox"
    report = ktrace.teardown()
    assert not report, report.failures
    state = ktrace.backend.run(["sh", "-c", f"cat /proc/{reader}/stat 2>/dev/null || echo gone"]).stdout
    assert state.strip() == "gone" or state.split(")")[1].split()[0] == "Z", state
    assert ktrace.instance not in ktrace.backend.run(["ls", f"{ktrace.target.tracefs}/instances"]).stdout.split()
    print("STREAMED", probe.call_count)

@pytest.mark.ktrace(stream=False)
def test_no_reader_is_left_on_the_guest(ktrace):
    # the pattern is written so that this grep's own command line does not match it
    found = ktrace.run(["sh", "-c", "grep -l 'trace_pip[e]' /proc/[0-9]*/cmdline 2>/dev/null; true"]).stdout
    assert found.split() == [], found
"""


def test_stream_on_a_busybox_guest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_vm_stream=INNER)
    result = pytester.runpytest_subprocess("-s", "--ktrace-vm=arm64")
    if "qemu-system-aarch64 not found" in result.stdout.str():
        pytest.skip("qemu-system-aarch64 is not installed")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*STREAMED *"])
