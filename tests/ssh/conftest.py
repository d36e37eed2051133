"""Fixtures for the SSH backend tests: a real sshd on loopback, real tracefs, busybox shells.

Everything here needs root (test accounts, tracefs, sshd's privilege separation); without it, or without
``/usr/sbin/sshd``, the SSH tests are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

TRACEFS = Path("/sys/kernel/tracing")
TAG = "ktrace_sshtest"


def _load_harness() -> ModuleType:
    # loaded by path so it works under every --import-mode (tests/ssh is not a package)
    name = "ktrace_tests_sshd"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("sshd.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


harness = _load_harness()


def _need_root_tracefs() -> None:
    if os.geteuid() != 0:
        pytest.skip("SSH backend tests need root (test accounts, sshd, tracefs)")
    if not (TRACEFS / "available_events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True)
    if not (TRACEFS / "available_events").exists():
        pytest.skip(f"tracefs is not mounted at {TRACEFS} and could not be mounted")


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[object]:
    """A real OpenSSH server on 127.0.0.1 (see tests/ssh/sshd.py); stopped (its own pid only) at the end."""
    _need_root_tracefs()
    if not Path(harness.SSHD).exists():
        pytest.skip(f"{harness.SSHD} is missing: apt-get install -y openssh-server")
    if shutil.which("sudo") is None:
        pytest.skip("sudo is missing: apt-get install -y sudo")
    harness.ensure_users()
    workdir = Path(tempfile.mkdtemp(prefix="ktrace-sshd-"))
    workdir.chmod(0o755)  # sshd reads authorized_keys as the logging-in user
    server = harness.SshServer(workdir / "srv")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def no_tracefs_leaks() -> Iterator[None]:
    """After the session, nothing of these tests may remain in this machine's tracefs."""
    yield
    if not (TRACEFS / "available_events").exists():
        return
    # only this process's names (all carry its pid): pytest-xdist workers may still be using theirs
    mine = str(os.getpid())
    leaked = [line for line in (TRACEFS / "uprobe_events").read_text().splitlines() if TAG in line and mine in line]
    leaked += [f"instance {d}" for d in os.listdir(TRACEFS / "instances") if d.startswith(TAG) and mine in d]
    assert not leaked, f"SSH tests left state in tracefs: {leaked}"


@pytest.fixture
def make_backend(sshd_server: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., object]]:
    """``make_backend(alias="ktrace-test", **kwargs)`` -> an SshBackend on the test sshd, closed afterwards."""
    from pytest_ktrace.backends.ssh._backend import SshBackend

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("KTRACE_SSH_PASSWORD", raising=False)
    made: list[SshBackend] = []

    def make(alias: str = "ktrace-test", **kwargs: object) -> SshBackend:
        kwargs.setdefault("ssh_config", sshd_server.ssh_config)  # type: ignore[attr-defined]
        backend = SshBackend(alias, **kwargs)  # type: ignore[arg-type]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make_backend: Callable[..., object]) -> object:
    return make_backend()


@pytest.fixture
def instance() -> Iterator[str]:
    """A tracefs instance name for this test (``instances/ktrace_sshtest_<pid>_<n>``), removed afterwards."""
    instance.counter += 1  # type: ignore[attr-defined]
    rel = f"instances/{TAG}_{os.getpid()}_{instance.counter}"  # type: ignore[attr-defined]
    try:
        yield rel
    finally:
        if (TRACEFS / rel).exists():
            (TRACEFS / rel / "events" / "enable").write_text("0")
            os.rmdir(TRACEFS / rel)


instance.counter = 0  # type: ignore[attr-defined]


def remove_uprobe_group(group: str) -> None:
    """Remove every uprobe of ``group`` (disabled first), appending only: uprobe_events is never truncated."""
    listing = (TRACEFS / "uprobe_events").read_text()
    for line in listing.splitlines():
        name = line.split()[0].split(":", 1)[1] if ":" in line.split()[0] else ""
        if name.startswith(group + "/"):
            enable = TRACEFS / "events" / name / "enable"
            if enable.exists():
                enable.write_text("0")
            for inst in (TRACEFS / "instances").iterdir():
                ienable = inst / "events" / name / "enable"
                if ienable.exists():
                    ienable.write_text("0")
            fd = os.open(TRACEFS / "uprobe_events", os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, f"-:{name}".encode())
            finally:
                os.close(fd)


@pytest.fixture
def uprobe_group() -> Iterator[str]:
    """A uprobe group name for this test; any probe left in it is removed afterwards."""
    group = f"{TAG}_{os.getpid()}"
    try:
        yield group
    finally:
        remove_uprobe_group(group)


def elf_entry_offset(path: str) -> int:
    """File offset of an ELF64 little-endian executable's entry point (a valid uprobe offset)."""
    data = Path(path).read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path} is not ELF64"
    entry, phoff = struct.unpack_from("<QQ", data, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_vaddr <= entry < p_vaddr + p_filesz:
            return int(entry - p_vaddr + p_offset)
    raise AssertionError(f"entry point of {path} is in no PT_LOAD segment")


@pytest.fixture(scope="session")
def true_probe_point() -> str:
    path = os.path.realpath("/usr/bin/true")
    return f"{path}:0x{elf_entry_offset(path):x}"


@pytest.fixture(scope="session")
def busybox_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of busybox applet symlinks: with PATH set to it alone, scripts see only busybox."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is missing: apt-get install -y busybox-static")
    out = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    bindir = tmp_path_factory.mktemp("busybox-bin")
    for applet in sorted({*out, "busybox"}):
        (bindir / applet).symlink_to(busybox)
    return bindir
