"""Record on real kernels, replay on the fake: the examples' __setup_irq suite recorded on the qemu guests
passes with no guest running, a changed expectation fails as it would on the board, and a changed test is told
its cassette is stale."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ktrace_testing import DEV_VM_SNAPSHOT, run_pytest
from pytest_ktrace.snapshots._snapshot import KernelSnapshot, load_snapshot

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
pytest_plugins = ["pytester"]


_pytest = run_pytest


@pytest.fixture
def guest_suite(tmp_path: Path) -> Path:
    """A copy of the examples' __setup_irq suite with its cassettes (recorded on the x86_64 and arm64 guests)."""
    shutil.copy(EXAMPLES / "test_setup_irq.py", tmp_path)
    shutil.copytree(EXAMPLES / "cassettes" / "test_setup_irq", tmp_path / "cassettes" / "test_setup_irq")
    return tmp_path


def test_guest_suite_replays_on_the_fake_without_a_guest(guest_suite: Path, tmp_path: Path) -> None:
    # No qemu on PATH: had the replay tried to boot a guest, its tests would be skipped, not passed.
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "cat", "ls", "gcc"):
        if shutil.which(tool):
            (bare / tool).symlink_to(shutil.which(tool) or tool)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
            "test_setup_irq.py",
            "--ktrace-backend=fake",
        ],
        cwd=guest_suite,
        env={**os.environ, "PATH": str(bare)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:]
    assert "13 passed, 2 xfailed" in run.stdout, run.stdout[-2000:]


def test_a_changed_expectation_fails_on_the_fake_as_on_the_board(guest_suite: Path) -> None:
    suite = guest_suite / "test_setup_irq.py"
    suite.write_text(suite.read_text().replace("    done.assert_returned(0)\n", "    done.assert_returned(-22)\n", 1))
    run = _pytest(guest_suite, "test_setup_irq.py", "--ktrace-backend=fake", "-k", "rebind_registers")
    assert run.returncode == 1
    assert "2 failed" in run.stdout
    assert "__setup_irq returned 0 (expected -22)" in run.stdout


def test_a_changed_probe_makes_the_cassette_stale(guest_suite: Path) -> None:
    suite = guest_suite / "test_setup_irq.py"
    suite.write_text(suite.read_text().replace('irq="$arg1:u32", name=', 'irq="$arg1:s32", name=', 1))
    run = _pytest(guest_suite, "test_setup_irq.py", "--ktrace-backend=fake", "-k", "rebind_registers")
    assert run.returncode == 1
    assert "cassette is stale: re-record on hardware" in run.stdout
    assert "the probes changed since the recording" in run.stdout


def test_a_changed_name_makes_the_cassette_stale(guest_suite: Path) -> None:
    # names are resolved from the BTF recorded in the cassette: one it did not record cannot be resolved here
    suite = guest_suite / "test_setup_irq.py"
    suite.write_text(suite.read_text().replace('inner="desc->irq_data.irq"', 'inner="desc->irq_data.hwirq"', 1))
    run = _pytest(guest_suite, "test_setup_irq.py", "--ktrace-backend=fake", "-k", "rebind_by_name")
    assert run.returncode == 1
    assert "2 failed" in run.stdout
    assert "cassette is stale: re-record on hardware" in run.stdout
    assert "__setup_irq 'desc->irq_data.hwirq' (at entry) was not resolved from BTF" in run.stdout
    assert "recorded names at entry: desc->irq_data.irq, irq, new->name:string" in run.stdout


def test_names_replay_with_their_recorded_types_and_errors(guest_suite: Path) -> None:
    # the return type recorded from BTF (int: s32) shows -22 as -22; the errors the test expects replay too
    suite = guest_suite / "test_setup_irq.py"
    head, tail = suite.read_text().split("def test_rebind_by_name", 1)
    suite.write_text(head + "def test_rebind_by_name" + tail.replace("assert_returned(0)", "assert_returned(-22)", 1))
    run = _pytest(guest_suite, "test_setup_irq.py", "--ktrace-backend=fake", "-k", "rebind_by_name or checked_against")
    assert run.returncode == 1, run.stdout[-3000:]
    assert "2 failed, 2 passed" in run.stdout, run.stdout[-3000:]
    assert "__setup_irq returned 0 (expected -22)" in run.stdout


def test_a_changed_command_makes_the_cassette_stale(guest_suite: Path) -> None:
    suite = guest_suite / "test_setup_irq.py"
    suite.write_text(suite.read_text().replace("&& echo", "; sleep 0; echo"))
    run = _pytest(guest_suite, "test_setup_irq.py", "--ktrace-backend=fake", "-k", "rebind_registers")
    assert run.returncode == 1
    assert "cassette is stale: re-record on hardware" in run.stdout and "the command changed" in run.stdout


def test_kernel_errors_come_from_the_fake_grammar_not_the_cassette(guest_suite: Path) -> None:
    run = _pytest(guest_suite, "test_setup_irq.py", "--ktrace-backend=fake", "-k", "retval_on_an_entry or unknown")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "4 passed" in run.stdout


LOCAL_SUITE = """
BIN = {binary!r}

def test_setup(ktrace):
    entry = ktrace.uprobe(BIN, "setup_thing", irq="$arg1:s32", name="+0($arg2):string", filter="irq > 1")
    done = ktrace.uretprobe(BIN, "setup_thing")
    for irq in ("1", "30"):
        ktrace.run([BIN, "setup", "eth2", irq])
    entry.assert_called_once_with(irq=30, name="eth2")
    done.assert_returned(0)
    ktrace.assert_latency(entry, done, max_us=1_000_000)
"""


def test_record_locally_then_replay_in_a_clean_checkout(pytester: pytest.Pytester, probed: Path) -> None:
    pytester.makepyfile(test_local=LOCAL_SUITE.format(binary=str(probed)))
    recorded = pytester.runpytest("--ktrace-record")
    recorded.assert_outcomes(passed=1)
    cassette = pytester.path / "cassettes" / "test_local" / "test_setup.json"
    assert "<group>" in cassette.read_text() and "ktrace_" not in cassette.read_text()
    # the recording kernel's snapshot, once, beside the cassettes; the cassette names it
    [snapshot] = (pytester.path / "cassettes" / "_targets").iterdir()
    release, machine = os.uname().release, os.uname().machine
    assert snapshot.name == f"{release}-{machine}.json.gz"
    assert json.loads(cassette.read_text())["target"]["snapshot"] == f"_targets/{snapshot.name}"
    loaded = load_snapshot(str(snapshot))
    assert (loaded.release, loaded.arch) == (release, machine) and loaded.text is not None

    # a clean checkout: the test file and its cassettes, nothing else; no option but the backend
    clean = pytester.path / "clean"
    clean.mkdir()
    shutil.copy(pytester.path / "test_local.py", clean)
    shutil.copytree(pytester.path / "cassettes", clean / "cassettes")
    replayed = _pytest(clean, "--ktrace-backend=fake", "-v")
    assert replayed.returncode == 0, replayed.stdout[-3000:]
    assert "1 passed" in replayed.stdout
    assert "ktrace: backend fake: each test replays its cassette on the snapshot of the kernel" in replayed.stdout

    # an explicit snapshot still wins
    explicit = _pytest(clean, "--ktrace-backend=fake", f"--ktrace-snapshot={DEV_VM_SNAPSHOT}", "-v")
    assert explicit.returncode == 0, explicit.stdout[-3000:]
    assert "ktrace: fake:dev-vm-6.18-x86_64 (backend fake): Linux 6.18.44-fc-v857 x86_64" in explicit.stdout

    # without the snapshot, and no shipped one of that kernel: say what is missing and the one command to get it
    shutil.rmtree(clean / "cassettes" / "_targets")
    missing = _pytest(clean, "--ktrace-backend=fake")
    assert missing.returncode == 1, missing.stdout[-3000:]
    assert f"was recorded on Linux {release} {machine} (local local)" in missing.stdout
    assert f"Take it from the target with: pytest-ktrace snapshot --name target -o {clean}/cassettes/_targets/" in (
        " ".join(missing.stdout.split())
    )


def test_recording_again_keeps_the_snapshot_unless_rewriting(pytester: pytest.Pytester, probed: Path) -> None:
    pytester.makepyfile(test_local=LOCAL_SUITE.format(binary=str(probed)))
    pytester.runpytest("--ktrace-record-mode=once").assert_outcomes(passed=1)
    [snapshot] = (pytester.path / "cassettes" / "_targets").iterdir()
    snapshot.write_bytes(KernelSnapshot.load(snapshot).dumps())  # same content, new inode: a rewrite would replace it
    inode = snapshot.stat().st_ino
    (pytester.path / "cassettes" / "test_local" / "test_setup.json").unlink()
    pytester.runpytest("--ktrace-record-mode=once").assert_outcomes(passed=1)
    assert snapshot.stat().st_ino == inode
    pytester.runpytest("--ktrace-record-mode=rewrite").assert_outcomes(passed=1)
    assert snapshot.stat().st_ino != inode


def test_a_board_of_a_shipped_kernel_version_replays_on_the_shipped_snapshot(guest_suite: Path) -> None:
    # a cassette from another build of Debian's 6.1 (as on a user's board): matched by arch, version, features
    for cassette in (guest_suite / "cassettes").rglob("*.json"):
        body = json.loads(cassette.read_text())
        body["target"]["release"] = body["target"]["release"].replace("6.1.0-57", "6.1.0-99")
        cassette.write_text(json.dumps(body))
    run = _pytest(guest_suite, "test_setup_irq.py", "--ktrace-backend=fake", "-k", "rebind_registers")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 passed" in run.stdout


def test_a_shipped_snapshot_without_a_recorded_feature_is_not_used(guest_suite: Path) -> None:
    for cassette in (guest_suite / "cassettes").rglob("*.json"):
        body = json.loads(cassette.read_text())
        body["target"]["features"].append("hist_triggers_of_the_future")
        cassette.write_text(json.dumps(body))
    run = _pytest(guest_suite, "test_setup_irq.py", "--ktrace-backend=fake", "-k", "rebind_registers")
    assert run.returncode == 1
    assert "was recorded on Linux 6.1.0-57-amd64 x86_64 (ssh ktrace-vm-x86_64)" in run.stdout
    assert "pytest-ktrace snapshot --name target --host ktrace-vm-x86_64 -o " in " ".join(run.stdout.split())


def test_fake_without_a_cassette_explains_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_nocassette="""
        def test_runs(ktrace):
            ktrace.kprobe("__setup_irq")
            ktrace.run(["true"])
        """
    )
    result = pytester.runpytest("--ktrace-backend=fake", "--ktrace-snapshot=debian-6.1-arm64")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the fake backend cannot run *'true'*: record this test on a real target*"])


def test_inject_synthetic_events_typed_by_the_format(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_injecting=textwrap.dedent(
            """
            import pytest
            from pytest_ktrace import KtraceError

            def test_my_helper_sees_injected_calls(ktrace):
                setup = ktrace.kprobe("__setup_irq", irq="%x0:u32", name="+0(+80(%x2)):string", filter="irq < 100")
                done = ktrace.kretprobe("__setup_irq")
                assert ktrace.inject(setup, irq=16, name="rtc-pl031") == 1
                assert ktrace.inject(setup, irq=500, name="filtered") == 0  # the kernel filter drops it
                ktrace.inject(done, ret=-22)
                setup.assert_called_once_with(irq=16, name="rtc-pl031")
                with pytest.raises(AssertionError, match=r"__setup_irq returned -22 \\(expected 0\\)"):
                    done.assert_returned(0)
                with pytest.raises(KtraceError, match="has no field 'irqq'"):
                    ktrace.inject(setup, irqq=1)
                with pytest.raises(KtraceError, match="is an integer"):
                    ktrace.inject(setup, irq="16")

            def test_fake_rejects_what_the_kernel_rejects(ktrace):
                from pytest_ktrace import ProbeRejected, UnknownSymbol
                ktrace.kprobe("__setup_irqq")
                with pytest.raises(UnknownSymbol):
                    ktrace.arm()
            """
        )
    )
    result = pytester.runpytest("--ktrace-backend=fake", "--ktrace-snapshot=debian-6.1-arm64")
    result.assert_outcomes(passed=2)


def test_inject_on_a_real_target_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_real="""
        import pytest
        from pytest_ktrace import KtraceError

        def test_refused(ktrace):
            probe = ktrace.tracepoint("sched:sched_process_exec")
            with pytest.raises(KtraceError, match="needs the fake backend"):
                ktrace.inject(probe, filename="/bin/true")
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_record_modes_follow_pytest_recording(pytester: pytest.Pytester, probed: Path) -> None:
    pytester.makepyfile(
        test_modes=f"""
        BIN = {str(probed)!r}

        def test_one(ktrace):
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "2"])
            probe.assert_call_count(3)
        """
    )
    cassette = pytester.path / "cassettes" / "test_modes" / "test_one.json"
    pytester.runpytest().assert_outcomes(passed=1)
    assert not cassette.exists()  # mode none (the default) never writes
    pytester.runpytest("--ktrace-record-mode=once").assert_outcomes(passed=1)
    first = cassette.read_text()
    pytester.runpytest("--ktrace-record-mode=once").assert_outcomes(passed=1)
    assert cassette.read_text() == first  # once: an existing cassette is kept
    pytester.runpytest("--ktrace-record").assert_outcomes(passed=1)
    assert cassette.read_text() != first  # rewrite: recorded again (new timestamps)
    result = pytester.runpytest("--ktrace-backend=fake", f"--ktrace-snapshot={DEV_VM_SNAPSHOT}", "--ktrace-record")
    assert result.ret == pytest.ExitCode.USAGE_ERROR or "records on a real target" in result.stdout.str()
