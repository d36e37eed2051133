"""boot(): a real qemu guest per arch, reached over SSH with a pinned host key, running real kprobes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest
from guest_helpers import connect, run

from pytest_ktrace._errors import TargetError
from pytest_ktrace.guests import GuestImage, RunningGuest, boot, qemu_available

pytestmark = pytest.mark.guest

UNAME_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}
# The device whose driver requests its IRQs at bind time, by its name in /proc/interrupts.
IRQ_DEVICE = {"x86_64": "i8042", "arm64": "rtc-pl031"}
UNBIND_BIND = {
    "x86_64": "echo i8042 > /sys/bus/platform/drivers/i8042/unbind\n"
    "echo i8042 > /sys/bus/platform/drivers/i8042/bind\n",
    "arm64": "driver=/sys/bus/amba/drivers/rtc-pl031\n"
    'device=$(cd "$driver" && ls -d *.pl031)\n'
    'echo "$device" > "$driver/unbind"\n'
    'echo "$device" > "$driver/bind"\n',
}
INSTANCE = "instances/ktrace_selftest"
ENTRY_PROBE = "p:ktrace_selftest/setup_irq __setup_irq irq=$arg1"
RETURN_PROBE = "r:ktrace_selftest/setup_irq_ret __setup_irq ret=$retval:s32"


def qemu_children() -> set[int]:
    """PIDs of qemu processes whose parent is this test process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_text = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat_text[stat_text.index("(") + 1 : stat_text.rindex(")")]
        parent = int(stat_text[stat_text.rindex(")") + 2 :].split()[1])
        if parent == os.getpid() and comm.startswith("qemu-system"):
            found.add(int(entry.name))
    return found


def test_qemu_available_names_the_missing_binary_and_package(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no qemu on PATH
    binary, package = {
        "x86_64": ("qemu-system-x86_64", "qemu-system-x86"),
        "arm64": ("qemu-system-aarch64", "qemu-system-arm"),
    }[arch]
    assert qemu_available(arch) == f"{binary} not found; apt-get install {package}"


def test_guest_attributes(arch: str, running_guest: RunningGuest) -> None:
    assert running_guest.arch == arch
    assert running_guest.host == "127.0.0.1"
    assert running_guest.user == "root"
    assert running_guest.host_alias == f"ktrace-vm-{arch}"
    assert running_guest.is_running()
    assert running_guest.boot_seconds > 0
    known_hosts = running_guest.known_hosts_path.read_text()
    assert re.fullmatch(rf"\[127\.0\.0\.1\]:{running_guest.port} ssh-ed25519 [A-Za-z0-9+/]+=*\n", known_hosts)
    config = running_guest.ssh_config_path.read_text()
    assert f"Host {running_guest.host_alias}\n" in config
    assert f"Port {running_guest.port}\n" in config
    assert "IdentitiesOnly yes" in config
    assert str(running_guest.known_hosts_path) in config
    assert "KTRACE-GUEST-READY" in running_guest.console_log.read_text(errors="replace")


def test_ssh_uname(arch: str, running_guest: RunningGuest, ssh: paramiko.SSHClient) -> None:
    status, out, err = run(ssh, "uname -r -m")
    assert status == 0, err
    assert out.split() == [running_guest.image.kernel_release, UNAME_MACHINE[arch]]


def test_guest_shell_is_busybox_and_tracefs_is_mounted(ssh: paramiko.SSHClient) -> None:
    status, out, err = run(
        ssh,
        "readlink /bin/sh; ls -l /sbin/insmod | grep -c busybox; "
        "grep -c ' /sys/kernel/tracing tracefs ' /proc/mounts; "
        "command -v python python3 bash || true",
    )
    assert status == 0, err
    assert out.split() == ["/bin/busybox", "1", "1"]


def test_unknown_host_key_is_rejected(running_guest: RunningGuest, tmp_path: Path) -> None:
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(running_guest, known_hosts=empty_known_hosts)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")
def test_openssh_client_with_ssh_config(arch: str, running_guest: RunningGuest) -> None:
    result = subprocess.run(
        ["ssh", "-F", str(running_guest.ssh_config_path), running_guest.host_alias, "uname", "-m"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == UNAME_MACHINE[arch]


def irqs_of(ssh: paramiko.SSHClient, device: str) -> set[int]:
    status, out, err = run(ssh, "cat /proc/interrupts")
    assert status == 0, err
    return {int(line.split(":")[0]) for line in out.splitlines() if line.split() and line.split()[-1] == device}


@pytest.mark.parametrize("trigger", ["unbind-bind", "guest-helper"])
def test_real_kprobe_on_setup_irq(arch: str, ssh: paramiko.SSHClient, trigger: str) -> None:
    expected_irqs = irqs_of(ssh, IRQ_DEVICE[arch])
    assert expected_irqs, f"{IRQ_DEVICE[arch]} has no IRQ in /proc/interrupts"
    trigger_commands = UNBIND_BIND[arch] if trigger == "unbind-bind" else "ktrace-trigger-setup-irq\n"
    setup = (
        "set -e\ncd /sys/kernel/tracing\n"
        f"mkdir {INSTANCE}\n"
        # >> (O_APPEND): > would first delete every kprobe event on the system.
        f"echo '{ENTRY_PROBE}' >> kprobe_events\n"
        f"echo '{RETURN_PROBE}' >> kprobe_events\n"
        f"echo 1 > {INSTANCE}/events/ktrace_selftest/enable\n"
        "cat kprobe_events\n"
    )
    teardown = (
        "set -e\ncd /sys/kernel/tracing\n"
        f"echo 0 > {INSTANCE}/events/ktrace_selftest/enable\n"  # an enabled event cannot be removed (EBUSY)
        "echo '-:ktrace_selftest/setup_irq' >> kprobe_events\n"
        "echo '-:ktrace_selftest/setup_irq_ret' >> kprobe_events\n"
        f"rmdir {INSTANCE}\n"
        "cat kprobe_events\n"
    )
    status, listing, err = run(ssh, setup)
    try:
        assert status == 0, err
        assert ENTRY_PROBE in listing.splitlines()
        # The kernel lists return probes with their default maxactive, e.g. "r10:".
        assert re.search(r"^r\d*:ktrace_selftest/setup_irq_ret __setup_irq ret=\$retval:s32$", listing, re.M)
        status, _, err = run(ssh, "set -e\n" + trigger_commands)
        assert status == 0, err
        status, trace, err = run(ssh, f"cat /sys/kernel/tracing/{INSTANCE}/trace")
        assert status == 0, err
    finally:
        teardown_status, remaining, teardown_err = run(ssh, teardown)
    assert teardown_status == 0, teardown_err
    assert "ktrace_selftest" not in remaining

    # Pair each entry with the return that follows it (one vCPU: they are adjacent per call).
    pending_irq = None
    matched = []
    for line in trace.splitlines():
        entry = re.search(r" setup_irq: \(__setup_irq\+0x0/0x[0-9a-f]+\) irq=0x([0-9a-f]+)$", line)
        if entry:
            pending_irq = int(entry.group(1), 16)
            continue
        returned = re.search(r" setup_irq_ret: \(\S+ <- __setup_irq\) ret=(-?\d+)$", line)
        if returned and pending_irq is not None:
            matched.append((pending_irq, int(returned.group(1))))
            pending_irq = None
    assert any(irq in expected_irqs and ret == 0 for irq, ret in matched), trace


def test_failed_boot_raises_target_error_and_leaves_no_qemu(arch: str, guest_image: GuestImage, tmp_path: Path) -> None:
    unavailable = qemu_available(arch)
    if unavailable is not None:
        pytest.skip(unavailable)
    before = qemu_children()
    with pytest.raises(TargetError, match="timed out") as raised:
        boot(arch, image=guest_image, timeout=0.3, workdir=tmp_path)
    assert "console lines" in str(raised.value)
    assert qemu_children() == before
