"""Host-key checking as ``ssh`` does it. :class:`KnownHosts` reads the user and system known_hosts files an
:class:`~._config.Endpoint` names (hashed names, patterns, ``@revoked``) and appends an accepted key to the user's
file atomically. :class:`HostKeyChecker` always refuses a revoked or changed key, with the file and line to fix,
and leaves an unknown key to a :class:`MissingHostKeyPolicy` (the shape of paramiko's policies): by default
:class:`RejectPolicy`, or :class:`AcceptNewPolicy` (trust on first use) with ``accept_new_host_key`` or
``StrictHostKeyChecking accept-new``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import paramiko
from paramiko.hostkeys import HostKeyEntry

from ..._errors import DiskFull, KtraceError, TargetError, hide_for_ktrace_errors
from ..._files import append_atomic
from ._config import Endpoint, SshOptions

__all__ = [
    "AcceptNewPolicy",
    "HostKeyChecker",
    "KnownEntry",
    "KnownHosts",
    "MissingHostKeyPolicy",
    "RejectPolicy",
    "fingerprint",
]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass
class KnownEntry:
    """One known_hosts line that names the host (or a key accepted this session, at line 0)."""

    file: Path
    lineno: int
    key: paramiko.PKey
    revoked: bool = False


class KnownHosts:
    """The known_hosts files of each endpoint, plus the keys accepted during this session (remembered even when
    the user's file is ``/dev/null``, so a reconnect does not ask again)."""

    def __init__(self, *, host: str) -> None:
        self._host = host
        self._accepted: dict[str, paramiko.PKey] = {}

    def entries(self, endpoint: Endpoint) -> list[KnownEntry]:
        name = endpoint.known_name
        entries: list[KnownEntry] = []
        for path in (*endpoint.user_known_hosts, *endpoint.global_known_hosts):
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            entries.extend(_matching_entries(path, lines, name))
        accepted = self._accepted.get(name)
        if accepted is not None:
            entries.append(KnownEntry(Path("(accepted this session)"), 0, accepted))
        return entries

    def add(self, endpoint: Endpoint, key: paramiko.PKey) -> None:
        """Trust ``key`` for this session and append it to the endpoint's first user known_hosts file."""
        self._accepted[endpoint.known_name] = key
        self._save(endpoint, key)

    def _save(self, endpoint: Endpoint, key: paramiko.PKey) -> None:
        if not endpoint.user_known_hosts or str(endpoint.user_known_hosts[0]) in ("/dev/null", "none"):
            return
        path = endpoint.user_known_hosts[0]
        name = endpoint.known_name
        host_field = paramiko.HostKeys.hash_host(name) if endpoint.hash_known_hosts else name
        line = f"{host_field} {key.get_name()} {key.get_base64()}\n".encode()
        try:
            with open(path, "rb") as check:
                if check.seek(0, os.SEEK_END) > 0:
                    check.seek(-1, os.SEEK_END)
                    if check.read(1) != b"\n":
                        line = b"\n" + line
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TargetError(
                f"accepted the new host key of {name} but cannot save it to {path}: {exc}",
                host=self._host,
                cause="cannot save host key",
            ) from None
        try:
            # one O_APPEND write, cut off again if it fails part-way: known_hosts never ends in half a key
            append_atomic(path, line, what=f"the new host key of {name} to")
        except DiskFull:
            raise
        except KtraceError as exc:
            raise TargetError(str(exc), host=self._host, cause="cannot save host key") from None


def _matching_entries(path: Path, lines: Sequence[str], name: str) -> list[KnownEntry]:
    entries: list[KnownEntry] = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        revoked = False
        if text.startswith("@"):
            marker, _, text = text.partition(" ")
            if marker != "@revoked":
                continue  # @cert-authority: certificates are not used here
            revoked = True
        try:
            entry = HostKeyEntry.from_line(text, lineno)
        except Exception:  # an unreadable line in known_hosts is skipped, as ssh does
            continue
        if entry is None or not _host_matches(name, entry.hostnames):
            continue
        entries.append(KnownEntry(path, lineno, entry.key, revoked))
    return entries


class MissingHostKeyPolicy(Protocol):
    """What to do with a key known_hosts has no entry of its type for: return to accept it, raise to refuse."""

    def missing_host_key(self, endpoint: Endpoint, key: paramiko.PKey, others: Sequence[KnownEntry]) -> None:
        """``others`` are the host's known keys of other types (which do not make ``key`` a changed key)."""
        ...


class RejectPolicy:
    """Refuse an unknown key, saying how to check and record it."""

    def __init__(self, *, host: str) -> None:
        self._host = host

    def missing_host_key(self, endpoint: Endpoint, key: paramiko.PKey, others: Sequence[KnownEntry]) -> None:
        files = ", ".join(str(p) for p in endpoint.user_known_hosts + endpoint.global_known_hosts)
        other = (
            f" (known_hosts has only other key types for it: {', '.join(sorted({e.key.get_name() for e in others}))})"
            if others
            else ""
        )
        raise TargetError(
            f"host key of {endpoint.known_name} ({endpoint.alias}) is unknown: {key.get_name()} {fingerprint(key)} "
            f"is not in {files}{other}. Check and record it by connecting once by hand "
            f"(ssh -p {endpoint.port} {endpoint.user}@{endpoint.hostname}), "
            "or pass --ktrace-accept-new-host-key to accept and save it",
            host=self._host,
            cause="host key unknown",
        )


class AcceptNewPolicy:
    """Trust on first use: accept an unknown key and save it to the user's known_hosts."""

    def __init__(self, known_hosts: KnownHosts) -> None:
        self._known_hosts = known_hosts

    def missing_host_key(self, endpoint: Endpoint, key: paramiko.PKey, others: Sequence[KnownEntry]) -> None:
        self._known_hosts.add(endpoint, key)


class HostKeyChecker:
    """Checks the key each endpoint offers (the target and every jump host) against its known_hosts."""

    def __init__(self, options: SshOptions, *, host: str) -> None:
        self._options = options
        self._host = host
        self.known_hosts = KnownHosts(host=host)
        self._reject = RejectPolicy(host=host)
        self._accept_new = AcceptNewPolicy(self.known_hosts)

    def policy_for(self, endpoint: Endpoint) -> MissingHostKeyPolicy:
        if self._options.accept_new_host_key or endpoint.accept_new:
            return self._accept_new
        return self._reject

    @staticmethod
    def prefer_known_key_types(transport: paramiko.Transport, known: Sequence[KnownEntry]) -> None:
        """Ask for a key type known_hosts has first, as ssh does, so a known host is not seen as changed."""
        families = {_key_family(e.key.get_name()) for e in known if not e.revoked}
        if not families:
            return
        options = transport.get_security_options()
        offered = list(options.key_types)
        first = [k for k in offered if _key_family(k) in families]
        if first:
            options.key_types = tuple(first + [k for k in offered if k not in first])

    def check(self, endpoint: Endpoint, key: paramiko.PKey, known: Sequence[KnownEntry]) -> None:
        """Return if ``key`` may be trusted (known, or accepted by the policy); raise :class:`TargetError` if not."""
        name = endpoint.known_name
        kind = key.get_name()
        for entry in known:
            if entry.revoked and entry.key.asbytes() == key.asbytes():
                raise TargetError(
                    f"host key of {name} ({kind} {fingerprint(key)}) is marked @revoked in "
                    f"{entry.file}:{entry.lineno}; refusing to connect",
                    host=self._host,
                    cause="host key revoked",
                )
        good = [e for e in known if not e.revoked]
        same_type = [e for e in good if _key_family(e.key.get_name()) == _key_family(kind)]
        if any(e.key.asbytes() == key.asbytes() for e in same_type):
            return
        if same_type:
            raise self._changed(endpoint, key, same_type)
        self.policy_for(endpoint).missing_host_key(endpoint, key, good)

    def _changed(self, endpoint: Endpoint, key: paramiko.PKey, recorded: Sequence[KnownEntry]) -> TargetError:
        name = endpoint.known_name
        where = ", ".join(f"{e.file}:{e.lineno}" for e in recorded)
        first = recorded[0]
        return TargetError(
            f"HOST KEY CHANGED for {name} ({endpoint.alias}): it now offers {key.get_name()} {fingerprint(key)}, "
            f"which differs from the key recorded at {where}. This may be a reinstalled board or an attack. If the "
            f"change is expected, remove line {first.lineno} of {first.file} (ssh-keygen -R '{name}' -f "
            f"{first.file}) and connect again; refusing to connect",
            host=self._host,
            cause="host key changed",
        )


def _key_family(name: str) -> str:
    return "ssh-rsa" if name in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512") else name


def _glob(pattern: str) -> re.Pattern[str]:
    """An ssh host pattern: only ``*`` and ``?`` are special (``[host]:port`` is literal)."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.compile("".join(parts))


def _host_matches(name: str, patterns: Sequence[str]) -> bool:
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pat = pattern[1:] if negated else pattern
        if pat.startswith("|1|"):
            hit = paramiko.HostKeys.hash_host(name, pat) == pat
        else:
            hit = _glob(pat).fullmatch(name.lower()) is not None
        if hit and negated:
            return False
        matched |= hit
    return matched
