"""What the SSH backend is told and how ``ssh`` would read it: the ``[user@]host[:port]`` target string, the
backend's own options (:class:`SshOptions`, shared by all its parts), and the resolution of a host alias through
OpenSSH's ``ssh_config`` into an :class:`Endpoint` (host name, port, user, identity files, known_hosts files,
``StrictHostKeyChecking``, the ``ProxyJump`` chain or ``ProxyCommand``), done the way ``ssh`` does it:
``~/.ssh/config`` then ``/etc/ssh/ssh_config``, or the one file given (like ``ssh -F``).
"""

from __future__ import annotations

import getpass
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import paramiko

from ..._errors import TargetError, hide_for_ktrace_errors

__all__ = ["Endpoint", "EndpointResolver", "SshOptions", "parse_target"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_dsa")
_USER_KNOWN_HOSTS = "~/.ssh/known_hosts ~/.ssh/known_hosts2"
_GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"


def parse_target(target: str) -> tuple[Optional[str], str, Optional[int]]:
    """``[user@]host[:port]`` (``host`` may be an ssh_config alias or a ``[v6::addr]``) -> (user, host, port)."""
    user: Optional[str] = None
    rest = target.strip()
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    port: Optional[int] = None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":") and tail[1:]:
            port = int(tail[1:])
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        port = int(port_text) if port_text else None
    else:
        host = rest
    if not host:
        raise TargetError(f"no host in SSH target {target!r}", host=target, cause="bad target")
    return user or None, host, port


@dataclass
class SshOptions:
    """How the backend was asked to reach its target. One instance is shared by the backend's parts, so a value
    changed on the backend applies to the next connection, batch or stream."""

    sudo: bool
    accept_new_host_key: bool
    connect_timeout: float
    command_timeout: float
    identity: Optional[Path] = None  # a private key tried before any other (like ``ssh -i``)
    password: Optional[str] = field(default=None, repr=False)  # the target's own (a labgrid NetworkService's)

    @property
    def shell(self) -> str:
        """The command every script is fed to, on its stdin."""
        return "sudo -n sh -s" if self.sudo else "sh -s"


@dataclass
class Endpoint:
    """One host as ssh would connect to it, after ssh_config."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: list[Path]
    identities_explicit: bool
    identities_only: bool
    user_known_hosts: list[Path]
    global_known_hosts: list[Path]
    host_key_alias: Optional[str]
    hash_known_hosts: bool
    accept_new: bool  # StrictHostKeyChecking accept-new (or no): a new key is accepted, a changed one never
    proxy_jump: list[str]
    proxy_command: Optional[str]

    @property
    def where(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_name(self) -> str:
        """The name its key is filed under in known_hosts (``[host]:port`` for a port other than 22)."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


class EndpointResolver:
    """Turns a host alias (the target, or one hop of its ProxyJump chain) into an :class:`Endpoint`. The config
    files are read again for every resolution, as each ``ssh`` invocation would."""

    def __init__(self, ssh_config: Optional[Path], *, host: str) -> None:
        self._ssh_config = ssh_config
        self._host = host  # the backend's target, named in the errors about its config files

    def resolve(self, alias: str, user: Optional[str] = None, port: Optional[int] = None) -> Endpoint:
        try:
            options = self._load().lookup(alias)
        except Exception as exc:  # paramiko raises several kinds for a config it cannot evaluate
            raise TargetError(
                f"cannot resolve {alias!r} through ssh config: {exc}", host=alias, cause="bad ssh config"
            ) from None
        hostname = options.get("hostname", alias)
        login = user or options.get("user") or getpass.getuser()
        try:
            port_no = port or int(options.get("port", 22))
        except ValueError:
            raise TargetError(f"bad Port in ssh config for {alias!r}", host=alias, cause="bad ssh config") from None
        raw_ids: Union[str, list[str], None] = options.get("identityfile")  # a list when configured
        ids = raw_ids if isinstance(raw_ids, list) else ([raw_ids] if raw_ids else [])
        explicit = bool(ids)
        if not ids:
            ids = [f"~/.ssh/{name}" for name in _DEFAULT_IDENTITIES]
        jump = options.get("proxyjump", "")
        return Endpoint(
            alias=alias,
            hostname=hostname,
            port=port_no,
            user=login,
            identity_files=[_expand(p, login, hostname) for p in ids],
            identities_explicit=explicit,
            identities_only=options.get("identitiesonly", "no").lower() == "yes",
            user_known_hosts=[
                _expand(p, login, hostname) for p in _paths(options.get("userknownhostsfile", _USER_KNOWN_HOSTS))
            ],
            global_known_hosts=[
                _expand(p, login, hostname) for p in _paths(options.get("globalknownhostsfile", _GLOBAL_KNOWN_HOSTS))
            ],
            host_key_alias=options.get("hostkeyalias"),
            hash_known_hosts=options.get("hashknownhosts", "no").lower() == "yes",
            accept_new=options.get("stricthostkeychecking", "ask").lower() in ("accept-new", "no", "off"),
            proxy_jump=[] if jump.lower() in ("", "none") else [h.strip() for h in jump.split(",") if h.strip()],
            proxy_command=None
            if options.get("proxycommand", "none").lower() == "none"
            else options.get("proxycommand"),
        )

    def _load(self) -> paramiko.SSHConfig:
        config = paramiko.SSHConfig()
        if self._ssh_config is not None:
            files = [self._ssh_config]
        else:
            files = [Path("~/.ssh/config").expanduser(), Path("/etc/ssh/ssh_config")]
        for path in files:
            try:
                with open(path, encoding="utf-8") as handle:
                    config.parse(handle)
            except FileNotFoundError:
                if path == self._ssh_config:
                    raise TargetError(
                        f"ssh config {path} does not exist", host=self._host, cause="missing ssh config"
                    ) from None
            except (OSError, paramiko.SSHException) as exc:
                raise TargetError(
                    f"cannot read ssh config {path}: {exc}", host=self._host, cause="bad ssh config"
                ) from None
        return config


def _expand(path: str, user: str, host: str) -> Path:
    home = str(Path.home())
    expanded = path.replace("%d", home).replace("%u", getpass.getuser()).replace("%h", host)
    expanded = expanded.replace("%r", user).replace("%%", "%")
    return Path(os.path.expanduser(expanded))


def _paths(value: str) -> list[str]:
    """A known-hosts file list. paramiko has already removed the quotes of a single quoted value, so an
    unquoted value is split only when every word looks like a path of its own (``/...``, ``~...``, ``%d...``)."""
    if '"' in value or "'" in value:
        return shlex.split(value)
    words = value.split()
    if len(words) > 1 and all(w.startswith(("/", "~", "%")) for w in words):
        return words
    return [value.strip()] if value.strip() else []
