"""Fixtures for the labgrid tests: a real labgrid coordinator and exporter on 127.0.0.1 (tests/labgrid/lab.py)
whose places are SSH targets on this machine, through the loopback sshd of the SSH tests (tests/ssh/sshd.py), so
the kernel under test is this machine's.

- ``lab``: a coordinator of its own for the test, nothing exported yet (add exporters and places with
  ``lab.export`` and ``lab.add_place``: another SSH target, a qemu guest's forwarded port, works the same way);
- ``loop_lab``: a lab exporting the sshd twice, as places ``loop-a`` and ``loop-b`` (tags ``arch=<this machine's
  uname -m>``, ``lab=loop``, ``slot=a``/``b``);
- ``ssh_args``: the pytest arguments that reach the sshd's places (its host key's known_hosts through
  ``--ktrace-ssh-config``, its client key through ``--ktrace-ssh-identity``).

Every test gets its own directory of labgrid records (``KTRACE_LOCK_DIR``), and no proxy, agent or
``LG_COORDINATOR`` from the environment. Needs root (the sshd's test accounts, tracefs) and labgrid in the venv
(``pip install -e '.[labgrid]'``, which scripts/bootstrap does); without them the tests are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

TRACEFS = Path("/sys/kernel/tracing")
HERE = Path(__file__).parent


def _load(name: str, path: Path) -> ModuleType:
    # loaded by path so it works under every --import-mode (tests/labgrid is not a package)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sshd = _load("ktrace_tests_sshd", HERE.parent / "ssh" / "sshd.py")
lab_harness = _load("ktrace_tests_lab", HERE / "lab.py")
_load("ktrace_tests_lab_guests", HERE / "lab_guests.py")  # the qemu guests as places (test_labgrid_guests.py)
LAB_MODULE = HERE / "lab.py"  # inner test runs load it by path to look at the coordinator


def _need_labgrid() -> None:
    if importlib.util.find_spec("labgrid") is None or not (lab_harness.BIN / "labgrid-coordinator").exists():
        pytest.skip("labgrid is not installed in this venv: pip install -e '.[labgrid]' (scripts/bootstrap)")


def _need_root_tracefs() -> None:
    if os.geteuid() != 0:
        pytest.skip("the labgrid tests need root (the sshd's test accounts, tracefs)")
    if not (TRACEFS / "available_events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True)
    if not (TRACEFS / "available_events").exists():
        pytest.skip(f"tracefs is not mounted at {TRACEFS} and could not be mounted")


@pytest.fixture(autouse=True)
def _own_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's runs keep their labgrid records (and board locks) apart from every other test's."""
    monkeypatch.setenv("KTRACE_LOCK_DIR", str(tmp_path / "locks"))
    for name in ("SSH_AUTH_SOCK", "KTRACE_SSH_PASSWORD", "LG_COORDINATOR", "LG_ENV", "LG_PLACE", "LG_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in lab_harness._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[object]:
    """A real OpenSSH server on 127.0.0.1 (tests/ssh/sshd.py); stopped (its own pid only) at the end."""
    _need_root_tracefs()
    if not Path(sshd.SSHD).exists():
        pytest.skip(f"{sshd.SSHD} is missing: apt-get install -y openssh-server")
    sshd.ensure_users()
    workdir = Path(tempfile.mkdtemp(prefix="ktrace-lg-sshd-"))
    workdir.chmod(0o755)  # sshd reads authorized_keys as the logging-in user
    server = sshd.SshServer(workdir / "srv")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[object]:
    """A labgrid coordinator of this test's own on 127.0.0.1, stopped with its exporters afterwards."""
    _need_labgrid()
    running = lab_harness.Lab(tmp_path / "lab").start()
    try:
        yield running
    finally:
        running.stop()


def loop_service(server: object) -> dict[str, object]:
    """The sshd as a labgrid NetworkService (root through its uid-0 test account)."""
    return {"address": "127.0.0.1", "port": server.port, "username": sshd.ROOT_ALIAS}  # type: ignore[attr-defined]


@pytest.fixture
def loop_lab(lab: object, sshd_server: object) -> object:
    """``lab`` with the sshd exported twice, as places ``loop-a`` and ``loop-b``."""
    service = loop_service(sshd_server)
    lab.export("loop", {"loop-a": {"NetworkService": service}, "loop-b": {"NetworkService": service}})  # type: ignore[attr-defined]
    for slot in ("a", "b"):
        tags = {"arch": platform.machine(), "lab": "loop", "slot": slot}
        lab.add_place(f"loop-{slot}", f"loop/loop-{slot}/NetworkService", tags)  # type: ignore[attr-defined]
    return lab


@pytest.fixture
def ssh_args(sshd_server: object, tmp_path: Path) -> list[str]:
    """Arguments that reach the sshd's places: its known_hosts and its client key (no agent, no ~/.ssh)."""
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host 127.0.0.1\n"
        f"  UserKnownHostsFile {sshd_server.known_hosts}\n"  # type: ignore[attr-defined]
        "  IdentitiesOnly yes\n"
    )
    return [f"--ktrace-ssh-config={config}", f"--ktrace-ssh-identity={sshd_server.client_key}"]  # type: ignore[attr-defined]
