"""Owner records on the target: the leftovers of a killed run are removed by a later run or by ``pytest-ktrace
clean``, whichever controller it runs on, and nothing foreign or alive is ever touched.

The controllers are real pytest processes: two of them see a different /etc/machine-id (bind-mounted in a private
mount namespace of their own), as CI jobs in fresh containers do, so no controller can prove another's runs dead
from their names; only the records on the target can.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ktrace_testing import TRACEFS, append_line, ours, tracefs_state
from pytest_ktrace._elf import symbol_file_offset
from pytest_ktrace._owners import parse_duration

HANGING = """
import os, time

def test_hangs(ktrace):
    ktrace.uprobe({binary!r}, "fib")
    ktrace.arm()
    open({ready!r}, "w").close()
    time.sleep(600)
"""


def _need_namespaces() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux): a controller of its own machine id")


class Controller:
    """A pytest run on a "machine" of its own id, hanging in a test that armed a probe; ended by its PID."""

    def __init__(self, where: Path, machine_id: str, binary: Path) -> None:
        where.mkdir()
        self.ready = where / "ready"
        (where / "test_hang.py").write_text(HANGING.format(binary=str(binary), ready=str(self.ready)))
        identity = where / "machine-id"
        identity.write_text(machine_id + "\n")
        script = f'mount --bind "{identity}" /etc/machine-id && exec "$@"'
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_hang.py"],
            cwd=where,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not self.ready.exists():
            assert self.process.poll() is None, "the controller ended before its test armed"
            assert time.monotonic() < deadline, "the controller's test never armed"
            time.sleep(0.05)
        self.group = _group_of_pid(self.process.pid)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)  # as a CI job is killed: no teardown, nothing cleaned
            self.process.wait(timeout=30)


def _group_of_pid(pid: int) -> str:
    state = "\n".join(ours(tracefs_state()))
    [group] = {found.group(0) for found in re.finditer(rf"ktrace_[0-9a-f]{{6}}_{pid}_[0-9a-f]{{4}}", state)}
    return group


def _remove_groups(groups: list[str]) -> None:
    for group in groups:
        for instance in (TRACEFS / "instances").glob(f"{group}_*"):
            instance.rmdir()
        for line in (TRACEFS / "uprobe_events").read_text().splitlines():
            name = line.split(" ", 1)[0].split(":", 1)[-1]
            if name.startswith(f"{group}/"):
                append_line(TRACEFS / "uprobe_events", f"-:{name}\n")
        Path(f"/run/pytest-ktrace/{group}.json").unlink(missing_ok=True)


def _record(group: str) -> dict[str, object]:
    first = Path(f"/run/pytest-ktrace/{group}.json").read_text().splitlines()[0]
    return dict(json.loads(first))


def _clean(*args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("pytest-ktrace")
    return subprocess.run([str(cli), "clean", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def foreign(probed: Path) -> Iterator[list[str]]:
    """A probe of another tool, and a ktrace_-shaped group nobody recorded: both must survive every cleaning."""
    offset = symbol_file_offset(probed, "fib")
    names = [f"foreign{os.getpid()}/keep", "ktrace_abcdef_1_ffff/unrecorded"]
    for name in names:
        append_line(TRACEFS / "uprobe_events", f"p:{name} {probed}:{offset:#x}\n")
    yield names
    for name in names:
        append_line(TRACEFS / "uprobe_events", f"-:{name}\n")


def test_a_killed_run_is_removed_by_another_controller(tmp_path: Path, probed: Path, foreign: list[str]) -> None:
    _need_namespaces()
    dead = Controller(tmp_path / "a", "a" * 32, probed)
    live: Controller | None = None
    try:
        assert _record(dead.group)["pid"] == dead.process.pid
        dead.kill()
        assert any(dead.group in line for line in ours(tracefs_state())), "the killed run left its probe"

        listed = _clean("--dry-run")  # this machine's id differs: only the record can tell
        assert listed.returncode == 0, listed.stderr
        assert f"live runs (kept): {dead.group}: run {dead.process.pid}" in listed.stdout
        assert "no owner record (never touched): ktrace_abcdef_1_ffff/unrecorded" in listed.stdout

        time.sleep(11)  # the dead run's heartbeat ages; a live one keeps its own fresh
        live = Controller(tmp_path / "b", "b" * 32, probed)
        dry = _clean("--older-than", "10s", "--dry-run")
        assert f"dead runs: {dead.group}" in dry.stdout and "--dry-run: would remove" in dry.stdout
        assert f"live runs (kept): {live.group}" in dry.stdout
        assert any(dead.group in line for line in ours(tracefs_state()))

        cleaned = _clean("--older-than", "10s")
        assert cleaned.returncode == 0, cleaned.stderr
        assert f"removed instance {dead.group}_" in cleaned.stdout
        assert f"removed event {dead.group}/" in cleaned.stdout
        state = "\n".join(ours(tracefs_state()))
        assert dead.group not in state and not Path(f"/run/pytest-ktrace/{dead.group}.json").exists()
        assert live.group in state, "a run with a fresh heartbeat was touched"
        probes = (TRACEFS / "uprobe_events").read_text()
        assert all(f":{name} " in probes for name in foreign), "something without a record was touched"
    finally:
        dead.kill()
        if live is not None:
            live.kill()
        if sys.exc_info()[0] is not None:  # failed half-way: remove what the killed controllers left
            _remove_groups([dead.group, *([live.group] if live is not None else [])])

    # a later pytest run removes the other leftover itself, once it is older than --ktrace-clean-after
    assert live is not None
    time.sleep(3)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "test_next.py").write_text(
        "def test_next(ktrace):\n    ktrace.tracepoint('sched:sched_switch')\n"
    )
    later = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--ktrace-clean-after=2s", "-W", "default"],
        cwd=tmp_path / "c",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert later.returncode == 0, later.stdout[-3000:]
    assert "removed leftovers of an earlier crashed run on local" in later.stdout and live.group in later.stdout
    assert live.group not in "\n".join(ours(tracefs_state()))
    assert not Path(f"/run/pytest-ktrace/{live.group}.json").exists()
    assert not list(Path("/run/pytest-ktrace").glob(f"*_{os.getpid()}_*.json")), "this run keeps no stray record"


def test_a_finished_run_leaves_no_record(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import os\n"
        "def test_one(ktrace):\n"
        "    ktrace.tracepoint('sched:sched_switch')\n"
        "    group = ktrace.instance.rsplit('_', 1)[0]\n"
        "    assert os.path.exists(f'/run/pytest-ktrace/{group}.json')  # written while the run lives\n"
        "    print('GROUP=' + group)\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1)
    [group] = [line.split("GROUP=", 1)[1].strip() for line in result.outlines if "GROUP=" in line]
    assert not Path(f"/run/pytest-ktrace/{group}.json").exists()


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("6h", 21600), ("2d", 172800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "m", "-5m", "1h30m"])
def test_bad_durations_say_what_a_duration_is(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_a_bad_duration_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_one(ktrace):\n    pass\n")
    result = pytester.runpytest("--ktrace-clean-after=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ktrace-clean-after: 'soon' is not a duration*"])
