"""The qemu guests as boards of a labgrid lab, for the tests and the benchmarks: :func:`start_guest_pool` boots the
x86_64 and arm64 guests (one after the other), :meth:`GuestPool.export` exports them to a :class:`lab.Lab` as
places ``guest-<arch>`` with tags ``kind=guest``, ``arch=<arch>`` (each a ``NetworkService`` at the guest's
forwarded SSH port on 127.0.0.1), :meth:`GuestPool.shutdown` stops exactly the qemu processes it started.

As in a lab, one key logs in to every board: a key made for the pool is authorised in both guests and given to
pytest with ``--ktrace-ssh-identity``. The boards' host keys are pinned: the keys the guests printed on their
consoles, in a known_hosts that the pool's ssh_config names for 127.0.0.1 (:attr:`GuestPool.ssh_args`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pytest_ktrace.guests import RunningGuest, boot

ARCHES = ("x86_64", "arm64")
RELEASE_SUFFIX = {"x86_64": "-amd64", "arm64": "-arm64"}  # Debian's kernel flavours


def _write_lab_key(path: Path) -> str:
    """A private ed25519 key for the whole lab (0600, as OpenSSH wants it); its authorized_keys line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode() + " ktrace-lab\n"


def shell(guest: RunningGuest, key: Path, command: str) -> str:
    """``command``'s output as root on ``guest`` (its host key pinned); a failure is an AssertionError."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.load_host_keys(str(guest.known_hosts_path))
    client.connect(
        guest.host,
        port=guest.port,
        username=guest.user,
        key_filename=str(key),
        allow_agent=False,
        look_for_keys=False,
        timeout=60,
        banner_timeout=60,
        auth_timeout=60,
    )
    try:
        _, stdout, stderr = client.exec_command(command, timeout=120)
        out = stdout.read().decode()
        status = stdout.channel.recv_exit_status()
        assert status == 0, f"{guest.arch} guest: {command!r} exited {status}: {stderr.read().decode()}"
        return out
    finally:
        client.close()


class GuestPool:
    """The booted guests, the lab's key (authorised in each) and the client files that reach them as places."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.guests: dict[str, RunningGuest] = {}
        self.key = workdir / "lab_ed25519"
        self.ssh_config = workdir / "ssh_config"

    @property
    def ssh_args(self) -> list[str]:
        """pytest's arguments that reach the guests' places (and nothing else: no agent, no ~/.ssh)."""
        return [f"--ktrace-ssh-config={self.ssh_config}", f"--ktrace-ssh-identity={self.key}"]

    def host_args(self, arch: str) -> list[str]:
        """pytest's arguments that reach the guest of ``arch`` as a plain SSH host, without labgrid."""
        guest = self.guests[arch]
        return [f"--ktrace-host={guest.user}@{guest.host}:{guest.port}", *self.ssh_args]

    def export(self, lab: Any) -> None:
        """Export every guest to ``lab`` as place ``guest-<arch>`` with tags ``kind=guest,arch=<arch>``."""
        lab.export(
            "guests",
            {
                f"guest-{arch}": {"NetworkService": {"address": guest.host, "port": guest.port, "username": guest.user}}
                for arch, guest in self.guests.items()
            },
        )
        for arch in self.guests:
            lab.add_place(f"guest-{arch}", f"guests/guest-{arch}/NetworkService", {"kind": "guest", "arch": arch})

    def leftovers(self) -> dict[str, list[str]]:
        """What of ours each guest still has: ``ktrace_`` groups, instances and probe definitions in tracefs, and
        the owner records beside them."""
        command = (
            "cd /sys/kernel/tracing && ls instances events && cat kprobe_events uprobe_events dynamic_events "
            "2>/dev/null; ls /run/pytest-ktrace 2>/dev/null; true"
        )
        return {
            arch: [word for word in shell(guest, self.key, command).split() if "ktrace_" in word]
            for arch, guest in self.guests.items()
        }

    def shutdown(self) -> None:
        for guest in self.guests.values():
            guest.shutdown()


def start_guest_pool(workdir: Path, arches: Sequence[str] = ARCHES) -> GuestPool:
    """Boot a guest of each of ``arches`` (files under ``workdir``) and make them a pool; on a failure, the guests
    booted so far are shut down again."""
    workdir.mkdir(parents=True, exist_ok=True)
    pool = GuestPool(workdir)
    try:
        for arch in arches:
            pool.guests[arch] = boot(arch, workdir=workdir / arch)
        authorized = _write_lab_key(pool.key).strip()
        for guest in pool.guests.values():
            shell(guest, guest.key_path, f"echo '{authorized}' >> /root/.ssh/authorized_keys")
        known_hosts = workdir / "known_hosts"
        known_hosts.write_text("".join(guest.known_hosts_path.read_text() for guest in pool.guests.values()))
        pool.ssh_config.write_text(
            f"Host 127.0.0.1\n  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n  IdentitiesOnly yes\n"
        )
    except BaseException:
        pool.shutdown()
        raise
    return pool
