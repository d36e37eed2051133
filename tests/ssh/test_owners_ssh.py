"""Owner records and `pytest-ktrace clean` over SSH (root, and a user through sudo), on a real sshd on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_ktrace import _owners as owners
from pytest_ktrace._identity import RunIdentity
from pytest_ktrace.backends._base import Mkdir

TRACEFS = Path("/sys/kernel/tracing")


def _clean(sshd_server: Any, alias: str, sudo: bool, *args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("pytest-ktrace")
    command = [str(cli), "clean", "--host", alias, "--ssh-config", str(sshd_server.ssh_config), *args]
    return subprocess.run(command + (["--sudo"] if sudo else []), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("alias", "sudo"), [("ktrace-test", False), ("ktrace-test-sudo", True)])
def test_a_dead_controllers_leftovers_are_cleaned_over_ssh(
    sshd_server: Any, make_backend: Callable[..., Any], alias: str, sudo: bool
) -> None:
    backend = make_backend(alias, sudo=sudo)
    dead = RunIdentity("0badc0", 4_000_000 + os.getpid() % 100_000, "beef")  # another machine's run
    owners.claim(backend, dead)
    record = Path(f"/run/pytest-ktrace/{dead.group}.json")
    instance = dead.instance(1)
    try:
        assert record.is_file() and f'"pid": {dead.pid}' in record.read_text()
        assert [r.ok for r in backend.apply([Mkdir(f"instances/{instance}")])] == [True]

        fresh = _clean(sshd_server, alias, sudo, "--older-than", "1h")
        assert fresh.returncode == 0, fresh.stderr
        assert f"live runs (kept): {dead.group}: run {dead.pid}" in fresh.stdout and "nothing to remove" in fresh.stdout
        assert (TRACEFS / "instances" / instance).is_dir()

        os.utime(record, (record.stat().st_atime, record.stat().st_mtime - 7200))  # its heartbeat stopped 2h ago
        listed = _clean(sshd_server, alias, sudo, "--older-than", "1h", "--dry-run")
        assert f"dead runs: {dead.group}" in listed.stdout and "heartbeat 72" in listed.stdout
        assert (TRACEFS / "instances" / instance).is_dir()

        cleaned = _clean(sshd_server, alias, sudo, "--older-than", "1h")
        assert cleaned.returncode == 0, cleaned.stderr
        assert f"removed instance {instance}" in cleaned.stdout and f"removed record {record}" in cleaned.stdout
        assert not (TRACEFS / "instances" / instance).exists() and not record.exists()
    finally:
        if (TRACEFS / "instances" / instance).exists():
            (TRACEFS / "instances" / instance).rmdir()
        record.unlink(missing_ok=True)


def test_an_unreachable_host_is_named(sshd_server: Any) -> None:
    run = subprocess.run(
        [str(Path(sys.executable).with_name("pytest-ktrace")), "clean", "--host", "root@127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("pytest-ktrace: error:") and "127.0.0.1" in run.stderr
    assert "Traceback" not in run.stderr
