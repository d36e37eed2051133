"""Boots a guest image in qemu and hands out what an SSH client needs to reach it safely.

Safety rules this module keeps: qemu runs in its own session with stdin from /dev/null and dies with its
parent (PR_SET_PDEATHSIG), so a killed pytest never leaves a guest behind holding a port; only the PID started
here is ever signalled; the guest's only network is a qemu user-mode netdev with ``restrict=on`` and one
forward from 127.0.0.1; the SSH host key is the one the guest printed on its console, never whatever answers
on the port.
"""

from __future__ import annotations

import base64
import ctypes
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable, Optional

from .._errors import MissingTool, TargetError
from ._arches import ArchSpec, accelerator_args, spec_for
from ._guest_files import FAILED_MARKER, HOSTKEY_BEGIN_MARKER, HOSTKEY_END_MARKER, READY_MARKER
from ._images import GuestImage, build_image

__all__ = ["RunningGuest", "boot", "qemu_available"]

_HOST = "127.0.0.1"
_USER = "root"
_MEMORY_MB = 512
_CONSOLE_TAIL_LINES = 30
_POLL_SECONDS = 0.02
_TERMINATE_GRACE_SECONDS = 5.0
# A port picked as free can be taken by someone else before qemu binds it; qemu then exits and we retry.
_PORT_ATTEMPTS = 5
_HOSTFWD_BUSY = "Could not set up host forwarding rule"
_PR_SET_PDEATHSIG = 1


def qemu_available(arch: str) -> Optional[str]:
    """None if a guest of ``arch`` can be booted here, else why not (with the install command)."""
    spec = spec_for(arch)
    if shutil.which(spec.qemu_binary) is None:
        return f"{spec.qemu_binary} not found; apt-get install {spec.qemu_package}"
    return None


class _HostForwardBusy(Exception):
    """qemu could not bind the chosen forward port."""


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, to exactly this child, and reap it (Popen never signals a reaped PID)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=_TERMINATE_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RunningGuest:
    """A booted qemu guest reachable over SSH at ``host:port``; a context manager that shuts it down on exit.

    ``known_hosts_path`` pins the host key the guest printed on its console, so a client can use a reject
    policy for unknown keys. ``ssh_config_path`` lets OpenSSH reach it as ``ssh -F <path> <host_alias>``.
    """

    arch: str
    host: str
    port: int
    user: str
    key_path: Path
    known_hosts_path: Path
    ssh_config_path: Path
    host_alias: str
    pid: int
    console_log: Path
    boot_seconds: float
    image: GuestImage

    def __init__(
        self,
        *,
        image: GuestImage,
        port: int,
        known_hosts_path: Path,
        ssh_config_path: Path,
        console_log: Path,
        boot_seconds: float,
        process: subprocess.Popen[bytes],
        workdir: Path,
        owns_workdir: bool,
    ) -> None:
        self.arch = image.arch
        self.host = _HOST
        self.port = port
        self.user = _USER
        self.key_path = image.key_path
        self.known_hosts_path = known_hosts_path
        self.ssh_config_path = ssh_config_path
        self.host_alias = _host_alias(image.arch)
        self.pid = process.pid
        self.console_log = console_log
        self.boot_seconds = boot_seconds
        self.image = image
        self._process = process
        self._workdir = workdir
        self._owns_workdir = owns_workdir
        # Also stops qemu if the guest object is dropped or the interpreter exits without shutdown().
        self._finalizer = weakref.finalize(self, _terminate, process)

    def is_running(self) -> bool:
        return self._process.poll() is None

    def shutdown(self) -> None:
        """Stop the qemu process started for this guest (SIGTERM, then SIGKILL). Safe to call again."""
        self._finalizer()  # runs _terminate once; later calls do nothing
        _terminate(self._process)
        if self._owns_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> RunningGuest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RunningGuest {self.arch} {self.host}:{self.port} pid={self.pid} {state}>"


def _host_alias(arch: str) -> str:
    return f"ktrace-vm-{arch}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn making the child get SIGKILL when the thread that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent_pid = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent_pid:
            # The parent died between fork and prctl: the death signal will never come.
            os._exit(126)

    return preexec


def _qemu_command(spec: ArchSpec, image: GuestImage, port: int, qemu: str) -> list[str]:
    return [
        qemu,
        "-name",
        _host_alias(spec.name),
        *accelerator_args(spec),
        "-smp",
        "1",
        "-m",
        str(_MEMORY_MB),
        "-nographic",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        # panic=-1 with -no-reboot: a guest that panics makes qemu exit at once instead of hanging.
        "-append",
        f"console={spec.console_device} panic=-1 quiet",
        # restrict=on isolates the guest from every host network; the explicit forward below still works.
        "-netdev",
        f"user,id=n0,restrict=on,hostfwd=tcp:{_HOST}:{port}-:22",
        # romfile= skips loading the iPXE option ROM, which only costs boot time.
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
        *_modules_disk_args(image),
    ]


def _modules_disk_args(image: GuestImage) -> list[str]:
    """The read-only virtio disk holding a user kernel's modules tree (/dev/vda in the guest)."""
    if image.modules_disk is None:
        return []
    # qemu splits -drive options at commas; a comma in the path is written as two.
    path = str(image.modules_disk).replace(",", ",,")
    return [
        "-drive",
        f"file={path},if=none,id=modules,format=raw,readonly=on",
        "-device",
        "virtio-blk-pci,drive=modules",
    ]


def _console_tail(text: str) -> str:
    lines = text.splitlines()[-_CONSOLE_TAIL_LINES:]
    return "\n".join("    " + line for line in lines) if lines else "    (no console output)"


def _boot_error(spec: ArchSpec, reason: str, console_text: str, console_log: Path) -> TargetError:
    return TargetError(
        f"{spec.name} guest: {reason}\n  last {_CONSOLE_TAIL_LINES} console lines ({console_log}):\n"
        + _console_tail(console_text),
        host=f"qemu {spec.name} guest",
        cause=reason,
    )


def _parse_host_key(console_text: str) -> Optional[str]:
    """The ``ssh-ed25519 AAAA...`` line the guest printed between the host key markers, validated."""
    begin = console_text.find(HOSTKEY_BEGIN_MARKER + "\n")
    end = console_text.find("\n" + HOSTKEY_END_MARKER, begin)
    if begin < 0 or end < 0:
        return None
    match = re.search(r"^ssh-ed25519 ([A-Za-z0-9+/]+={0,2})$", console_text[begin:end], re.MULTILINE)
    if match is None:
        return None
    try:
        blob = base64.b64decode(match.group(1), validate=True)
    except ValueError:
        return None
    # An OpenSSH public key blob: string "ssh-ed25519", then string key (32 bytes).
    type_length = struct.unpack_from(">I", blob)[0] if len(blob) >= 4 else 0
    key_type = blob[4 : 4 + type_length]
    rest = blob[4 + type_length :]
    if key_type != b"ssh-ed25519" or len(rest) != 4 + 32 or struct.unpack_from(">I", rest)[0] != 32:
        return None
    return f"ssh-ed25519 {match.group(1)}"


def _wait_for_ready(spec: ArchSpec, process: subprocess.Popen[bytes], console_log: Path, deadline: float) -> str:
    """Follow the console until the guest is ready; return its host key line."""
    text = ""
    with console_log.open("rb") as console:
        while True:
            chunk = console.read()
            if chunk:
                # The serial line ends lines with \r\n and may carry stray NULs; neither matters here.
                text += chunk.decode("utf-8", errors="replace").replace("\r", "").replace("\0", "")
            failed = re.search(rf"^{re.escape(FAILED_MARKER)}(.*)$", text, re.MULTILINE)
            if failed:
                raise _boot_error(spec, f"guest init failed:{failed.group(1)}", text, console_log)
            if re.search(rf"^{re.escape(READY_MARKER)}$", text, re.MULTILINE):
                host_key = _parse_host_key(text)
                if host_key is None:
                    raise _boot_error(spec, "guest printed no valid ed25519 host key", text, console_log)
                return host_key
            returncode = process.poll()
            if returncode is not None:
                text += console.read().decode("utf-8", errors="replace").replace("\r", "")
                if _HOSTFWD_BUSY in text:
                    raise _HostForwardBusy(text)
                raise _boot_error(
                    spec,
                    f"qemu exited with status {returncode} before the guest was ready",
                    text,
                    console_log,
                )
            if time.monotonic() > deadline:
                raise _boot_error(spec, "timed out waiting for the guest to become ready", text, console_log)
            time.sleep(_POLL_SECONDS)


def _wait_for_ssh_banner(port: int, deadline: float) -> bool:
    """True once an SSH server answers through the forward (user-mode networking accepts before the guest)."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((_HOST, port), timeout=2.0) as connection:
                connection.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
                if connection.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(_POLL_SECONDS)
    return False


def _write_client_files(workdir: Path, arch: str, port: int, key_path: Path, host_key: str) -> tuple[Path, Path]:
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[{_HOST}]:{port} {host_key}\n")
    ssh_config = workdir / "ssh_config"
    ssh_config.write_text(
        f"Host {_host_alias(arch)}\n"
        f"    HostName {_HOST}\n"
        f"    Port {port}\n"
        f"    User {_USER}\n"
        f'    IdentityFile "{key_path}"\n'
        "    IdentitiesOnly yes\n"
        f'    UserKnownHostsFile "{known_hosts}"\n'
        "    GlobalKnownHostsFile /dev/null\n"
        "    StrictHostKeyChecking yes\n"
        "    BatchMode yes\n"
    )
    return known_hosts, ssh_config


def boot(
    arch: str,
    *,
    image: Optional[GuestImage] = None,
    timeout: float = 180.0,
    workdir: Optional[Path] = None,
    kernel: Optional[str] = None,
) -> RunningGuest:
    """Boot a guest of ``arch`` (building its image if needed) and wait until it accepts SSH.

    ``kernel``: a Debian kernel series (``"6.12"``) instead of the release's default kernel (6.1 on bookworm).
    ``workdir`` receives console.log, known_hosts and ssh_config; without one a temporary directory is used
    and removed again by :meth:`RunningGuest.shutdown`. qemu gets SIGKILL when the calling *thread* exits, so
    boot from a thread that outlives the guest (normally the main thread).
    """
    spec = spec_for(arch)
    unavailable = qemu_available(arch)
    if unavailable is not None:
        raise MissingTool(unavailable)
    qemu = shutil.which(spec.qemu_binary) or spec.qemu_binary
    if image is None:
        image = build_image(arch, kernel=kernel)
    elif image.arch != spec.name:
        raise ValueError(f"image is for {image.arch}, not {spec.name}")

    owns_workdir = workdir is None
    guest_dir = Path(tempfile.mkdtemp(prefix=f"ktrace-vm-{spec.name}-")) if workdir is None else Path(workdir)
    guest_dir.mkdir(parents=True, exist_ok=True)
    console_log = guest_dir / "console.log"
    started = time.monotonic()
    deadline = started + timeout
    try:
        for _attempt in range(_PORT_ATTEMPTS):
            port = _free_port()
            with console_log.open("wb") as console:
                process = subprocess.Popen(
                    _qemu_command(spec, image, port, qemu),
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: a terminal's ^C or group kill skips it
                    preexec_fn=_die_with_parent(),
                    close_fds=True,
                )
            try:
                host_key = _wait_for_ready(spec, process, console_log, deadline)
                if not _wait_for_ssh_banner(port, deadline):
                    raise _boot_error(
                        spec,
                        f"no SSH banner on {_HOST}:{port} after the ready marker",
                        console_log.read_text(errors="replace"),
                        console_log,
                    )
            except _HostForwardBusy:
                _terminate(process)
                continue
            except BaseException:
                _terminate(process)
                raise
            known_hosts, ssh_config = _write_client_files(guest_dir, spec.name, port, image.key_path, host_key)
            return RunningGuest(
                image=image,
                port=port,
                known_hosts_path=known_hosts,
                ssh_config_path=ssh_config,
                console_log=console_log,
                boot_seconds=time.monotonic() - started,
                process=process,
                workdir=guest_dir,
                owns_workdir=owns_workdir,
            )
        raise _boot_error(
            spec,
            f"qemu could not bind a forward port in {_PORT_ATTEMPTS} attempts",
            console_log.read_text(errors="replace"),
            console_log,
        )
    except BaseException:
        if owns_workdir:
            shutil.rmtree(guest_dir, ignore_errors=True)
        raise
