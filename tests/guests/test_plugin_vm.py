"""--ktrace-vm and @pytest.mark.ktrace(vm=...) through the plugin: the guest is booted at first use, shared by the
run, powered off at its end, and a machine without qemu gets a skip that says what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktrace_testing import qemu_pids, run_pytest

pytest_plugins = ["pytester"]

INNER = """
import pytest

@pytest.mark.ktrace(vm="arm64")
def test_arm64_kprobe(ktrace):
    assert ktrace.target.arch == "aarch64"
    probe = ktrace.kprobe("__setup_irq", irq="%x0:u32")
    ktrace.run(["ktrace-trigger-setup-irq"])
    probe.assert_called()

@pytest.mark.ktrace(vm="arm64")
def test_same_guest_again(ktrace):
    assert "kprobes" in ktrace.target.features
    import os
    mine = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as comm:
                if comm.read().startswith("qemu-system") and int(fields[1]) == os.getpid():
                    mine.append(entry)
        except (OSError, ValueError, IndexError):
            pass
    print("QEMU_CHILDREN=" + ",".join(mine))
"""


def test_marker_boots_the_guest_once_and_powers_it_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_vm=INNER)
    result = pytester.runpytest_subprocess("-v", "-s")
    result.assert_outcomes(passed=2)
    [line] = [line for line in result.outlines if "QEMU_CHILDREN=" in line]
    children = {int(pid) for pid in line.split("QEMU_CHILDREN=", 1)[1].split(",") if pid}
    assert len(children) == 1, "both tests must share one booted guest"
    assert not children & qemu_pids(), "the guest must be powered off when the run ends"


def test_without_qemu_the_guest_tests_skip_with_the_reason(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(test_vm=INNER)
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "ls", "cat", "uname"):
        (bare / tool).symlink_to(f"/bin/{tool}")
    env = {**os.environ, "PATH": str(bare)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", str(pytester.path / "test_vm.py")],
        cwd=pytester.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout
    assert "2 skipped" in run.stdout
    assert "qemu-system-aarch64 not found; apt-get install qemu-system-arm" in run.stdout


def test_collect_only_boots_no_guest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_vm=INNER)
    before = qemu_pids()
    for args in (["--collect-only"], ["--ktrace-vm=arm64", "--collect-only"], ["--ktrace-vm=x86_64", "--fixtures"]):
        run = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", *args],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started: set[int] = set()
        while run.poll() is None:  # watch for a qemu of this run while it lives
            started |= {pid for pid in qemu_pids() - before if _parent_chain_has(pid, run.pid)}
            time.sleep(0.02)
        out = run.communicate()[0]
        assert run.returncode == 0, out[-3000:]
        assert not started, f"{args}: qemu started though no test ran"


def _parent_chain_has(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def test_command_line_vm_runs_the_whole_suite_there(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_cli="""
        def test_on_x86_guest(ktrace):
            assert ktrace.target.release.endswith("-amd64")
            done = ktrace.kretprobe("__setup_irq")
            ktrace.run(["ktrace-trigger-setup-irq"])
            done.assert_returned(0)
        """
    )
    result = pytester.runpytest_subprocess("--ktrace-vm=x86_64")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "ktrace: backend vm, target vm:x86_64: reached when a test first needs it",
            "*",
            "ktrace: ktrace-vm-x86_64 (backend vm): Linux 6.1.0-*-amd64 x86_64; features *kprobes*; 1 test(s)",
        ]
    )


RECORDED_ON_A_GUEST = """
import pytest

@pytest.mark.ktrace(vm={arch!r})
def test_setup_irq_returns_zero(ktrace):
    done = ktrace.kretprobe("__setup_irq", ret="$retval:s32")
    ktrace.run(["ktrace-trigger-setup-irq"])
    done.assert_returned(0)
    print("REPLAYED_ON=" + ktrace.target.name)
"""


@pytest.mark.parametrize(
    ("arch", "snapshot"), [("x86_64", "6.1.0-57-amd64-x86_64"), ("arm64", "6.1.0-57-arm64-aarch64")]
)
def test_recorded_on_a_guest_replays_in_a_clean_checkout(tmp_path: Path, arch: str, snapshot: str) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_guest.py").write_text(RECORDED_ON_A_GUEST.format(arch=arch))
    recorded = run_pytest(suite, "-s", "--ktrace-record")
    assert recorded.returncode == 0, recorded.stdout[-4000:]
    assert (suite / "cassettes" / "_targets" / f"{snapshot}.json.gz").is_file()

    clean = tmp_path / "clean"
    clean.mkdir()
    shutil.copy(suite / "test_guest.py", clean)
    shutil.copytree(suite / "cassettes", clean / "cassettes")
    replayed = run_pytest(clean, "-s", "--ktrace-backend=fake")
    assert replayed.returncode == 0, replayed.stdout[-4000:]
    # the guest kernel's own snapshot from beside the cassettes, not the shipped Debian one
    assert f"REPLAYED_ON=fake:{snapshot}" in replayed.stdout
