"""A real OpenSSH server on loopback for the SSH backend tests.

:class:`SshServer` starts ``/usr/sbin/sshd -D`` on ``127.0.0.1`` with a free port and everything in one temporary
directory: its own config, a fresh ed25519 host key, a PidFile, per-user ``authorized_keys`` files (via ``%u``), a
client key pair, a private ``known_hosts`` and a private ``ssh_config`` with ``Host`` aliases. Only loopback is
ever used. :meth:`SshServer.stop` ends exactly the sshd process it started.

``SshServer(workdir, full_tmp="64k")`` is a target whose ``/tmp`` is full: its sshd runs in a private mount
namespace (``unshare --mount``) where a tmpfs of that size covers ``/tmp`` and a filler file takes its every
byte. The server's own directory (under the real ``/tmp``) is bind-mounted back into that tmpfs at the same path,
so its config, host key and authorized_keys stay readable. Nothing of it is visible outside the namespace, and
the namespace (with its mounts) ends with the last of its processes, i.e. with :meth:`SshServer.stop`.

:func:`ensure_users` creates, idempotently, the local accounts the tests log in as:

- ``ktrace-root``: a uid-0 alias of root whose login shell is ``/bin/sh``. root's ``~/.bashrc`` on the dev machine
  runs ``pyenv init`` on every SSH exec (bash sources ``.bashrc`` for commands run by sshd), which costs far more
  than the work under test; the alias gives root's rights without that cost.
- ``ktrace-nosudo``: an ordinary user without sudo.
- ``ktrace-sudo``: may run anything with ``sudo`` without a password (``/etc/sudoers.d/ktrace-test``).
- ``ktrace-sudopw``: may use ``sudo`` but only with a password (which it does not have), so ``sudo -n`` fails.

The accounts get the password field ``*`` (no password, but not "locked": sshd with ``UsePAM no`` refuses locked
accounts even for key authentication).
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SSHD = "/usr/sbin/sshd"
ROOT_ALIAS = "ktrace-root"
NOSUDO = "ktrace-nosudo"
SUDO = "ktrace-sudo"
SUDOPW = "ktrace-sudopw"
USERS = (ROOT_ALIAS, NOSUDO, SUDO, SUDOPW)
SUDOERS_FILE = Path("/etc/sudoers.d/ktrace-test")
SUDOERS_TEXT = (
    "# pytest-ktrace SSH backend tests (tests/ssh/sshd.py): one user with sudo NOPASSWD, one that needs a password\n"
    f"{SUDO} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    f"{SUDOPW} ALL=(ALL:ALL) ALL\n"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _user_exists(name: str) -> bool:
    return subprocess.run(["getent", "passwd", name], capture_output=True).returncode == 0


def ensure_users() -> None:
    """Create the test accounts and the sudoers drop-in if they are missing (needs root).

    Serialised by a lock file, so pytest-xdist workers starting together do not race on useradd."""
    with open("/run/ktrace-test-users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _ensure_users_locked()


def _ensure_users_locked() -> None:
    for name in USERS:
        if _user_exists(name):
            continue
        if name == ROOT_ALIAS:
            cmd = ["useradd", "-o", "-u", "0", "-g", "0", "-M", "-d", "/root", "-s", "/bin/sh", name]
        else:
            cmd = ["useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", name]
        subprocess.run(cmd, check=True, capture_output=True)
        subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    if not SUDOERS_FILE.exists() or SUDOERS_FILE.read_text() != SUDOERS_TEXT:
        tmp = SUDOERS_FILE.with_name(".ktrace-test.tmp")
        tmp.write_text(SUDOERS_TEXT)
        tmp.chmod(0o440)
        subprocess.run(["visudo", "-cqf", str(tmp)], check=True, capture_output=True)
        tmp.replace(SUDOERS_FILE)


def keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


# Run by `unshare --mount --propagation private sh -c` before sshd: $1 the server's directory, $2 the tmpfs size,
# then sshd's argv. The cwd keeps hold of the real directory while the tmpfs covers /tmp; mkdir before filling.
_FULL_TMP = r"""set -e
cd "$1"
exec 2>full-tmp.log
mount -t tmpfs -o size="$2",mode=1777 ktrace-full-tmp /tmp
case $1 in /tmp/*) mkdir -p "$1"; mount --no-canonicalize --bind . "$1";; esac
dd if=/dev/zero of=/tmp/.ktrace-filler bs=4096 >/dev/null 2>&1 || true
shift 2
exec "$@"
"""
FULL_TMP_SOURCE = "ktrace-full-tmp"  # the tmpfs's name in /proc/*/mounts


@dataclass
class SshServer:
    """One sshd on 127.0.0.1 living in ``workdir``; see the module docstring."""

    workdir: Path
    port: int = 0
    proc: Optional[subprocess.Popen[bytes]] = None
    aliases: dict[str, str] = field(default_factory=dict)
    full_tmp: Optional[str] = None  # a tmpfs size ("64k"): /tmp of this target is that small, and full
    extra_config: list[str] = field(default_factory=list)  # appended to sshd_config (e.g. a Match block)

    @property
    def target_tmp(self) -> Path:
        """``/tmp`` as the target (sshd and its sessions) sees it, from outside its mount namespace."""
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/root/tmp")

    @property
    def host_key(self) -> Path:
        return self.workdir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.workdir / "id_ed25519"

    @property
    def other_key(self) -> Path:
        """A key that is in no authorized_keys file."""
        return self.workdir / "id_other"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.workdir / "ssh_config"

    @property
    def log(self) -> Path:
        return self.workdir / "sshd.log"

    def known_hosts_line(self) -> str:
        pub = (self.workdir / "ssh_host_ed25519_key.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n"

    def start(self) -> SshServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        keygen(self.host_key, "ktrace-test-host")
        keygen(self.client_key, "ktrace-test-client")
        keygen(self.other_key, "ktrace-test-other")
        auth_dir = self.workdir / "authorized_keys"
        auth_dir.mkdir()
        pub = (self.workdir / "id_ed25519.pub").read_text()
        for user in (*USERS, "root"):
            (auth_dir / user).write_text(pub)
        self.port = free_port()
        config = self.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    "UsePAM no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    f"AuthorizedKeysFile {auth_dir}/%u",
                    "StrictModes no",
                    "AllowTcpForwarding yes",
                    "PrintMotd no",
                    "UseDNS no",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "LogLevel VERBOSE",
                    "Subsystem sftp internal-sftp",
                    *self.extra_config,
                    "",
                ]
            )
        )
        self.known_hosts.write_text(self.known_hosts_line())
        blocks = []
        for alias, user in {
            "ktrace-test": ROOT_ALIAS,
            "ktrace-test-nosudo": NOSUDO,
            "ktrace-test-sudo": SUDO,
            "ktrace-test-sudopw": SUDOPW,
        }.items():
            self.aliases[alias] = user
            blocks.append(
                f"Host {alias}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {user}\n"
                f"  IdentityFile {self.client_key}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {self.known_hosts}\n"
            )
        blocks.append(
            f"Host ktrace-test-jump\n  HostName 127.0.0.1\n  Port {self.port}\n  User {ROOT_ALIAS}\n"
            f"  ProxyJump ktrace-test-nosudo\n  IdentityFile {self.client_key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
        )
        self.ssh_config.write_text("\n".join(blocks))
        argv = [SSHD, "-D", "-f", str(config), "-E", str(self.log)]
        if self.full_tmp is not None:
            prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _FULL_TMP, "sh"]
            argv = [*prefix, str(self.workdir), self.full_tmp, *argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                logs = [p for p in (self.log, self.workdir / "full-tmp.log") if p.exists()]
                log = "".join(p.read_text()[-2000:] for p in logs) or "(no log)"
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """End the sshd process this object started (its connection children were forked from it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def descendants(self) -> dict[int, str]:
        """pid -> cmdline of every process below this sshd (its per-connection children and theirs)."""
        assert self.proc is not None
        parents: dict[int, int] = {}
        names: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                names[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):
                continue
        found: dict[int, str] = {}
        frontier = {self.proc.pid}
        while frontier:
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
            found.update({pid: names[pid] for pid in frontier})
        return found

    def pid_of_connection(self, client_port: int) -> int:
        """The sshd process serving the TCP connection whose client end is 127.0.0.1:``client_port``.

        Found through ``/proc/net/tcp`` (the inode of the server-side socket) and the open fds of this sshd's
        descendants; the one doing the network I/O (``user@notty``) is preferred over a privsep monitor.
        """
        inode = ""
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            local_port = int(cols[1].split(":")[1], 16)
            remote_port = int(cols[2].split(":")[1], 16)
            if remote_port == client_port and local_port == self.port:
                inode = cols[9]
                break
        if not inode:
            raise LookupError(f"no TCP socket of 127.0.0.1:{self.port} with peer port {client_port}")
        target = f"socket:[{inode}]"
        holders: list[tuple[int, str]] = []
        for pid, cmdline in self.descendants().items():
            try:
                if any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{pid}/fd")):
                    holders.append((pid, cmdline))
            except OSError:
                continue
        if not holders:
            raise LookupError(f"no process below sshd {self.proc and self.proc.pid} holds {target}")
        holders.sort(key=lambda h: ("@" not in h[1], h[0]))
        return holders[0][0]

    def ssh_cli(self, alias: str, command: str) -> subprocess.CompletedProcess[str]:
        """Run ``command`` through the OpenSSH client, as a reference for what ``ssh`` itself would do."""
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", alias, command],
            capture_output=True,
            text=True,
            timeout=30,
        )
