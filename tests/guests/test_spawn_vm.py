"""``ktrace.spawn()`` in a qemu guest whose userland is busybox only (the arm64 Debian-kernel guest, reached over
dropbear through --ktrace-vm): busybox's setsid gives the command a session of its own, a real kprobe sees what it
triggers, and teardown ends it and its child by their process group, checked from inside the guest."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER = r"""
import time
import pytest
import pytest_ktrace

def _stat(ktrace, pid):
    text = ktrace.backend.run(["sh", "-c", f"cat /proc/{pid}/stat 2>/dev/null || echo gone"]).stdout
    return "gone" if text.strip() == "gone" else text.rsplit(")", 1)[1].split()

def test_spawn_on_the_busybox_guest(ktrace):
    setup = ktrace.kprobe("__setup_irq", irq="%x0:u32")
    process = ktrace.spawn(["sh", "-c", "ktrace-trigger-setup-irq && echo triggered; sleep 600 & echo $!; wait"])
    ktrace.wait_for(setup, timeout=120)
    deadline = time.monotonic() + 60
    while len(process.stdout.split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    said, child = process.stdout.split()
    assert said == "triggered" and process.returncode is None
    state, _, group, session = _stat(ktrace, process.pid)[:4]
    assert int(group) == int(session) == process.pid  # its own session, made by busybox setsid
    assert int(_stat(ktrace, child)[2]) == process.pid
    with pytest.raises(pytest_ktrace.WaitTimeout, match=ktrace.target.name):
        process.wait(timeout=0.5)
    report = ktrace.teardown()
    assert not report, report.failures
    assert process.returncode == 128 + 15
    for pid in (process.pid, int(child)):
        state = _stat(ktrace, pid)
        assert state == "gone" or state[0] == "Z", state
    print("SPAWNED", process.pid, child)
"""


def test_spawn_on_a_busybox_guest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_vm_spawn=INNER)
    result = pytester.runpytest_subprocess("-s", "--ktrace-vm=arm64")
    if "qemu-system-aarch64 not found" in result.stdout.str():
        pytest.skip("qemu-system-aarch64 is not installed")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*SPAWNED *"])
