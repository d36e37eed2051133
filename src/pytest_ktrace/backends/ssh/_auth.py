"""Client authentication in ``ssh``'s order: the key given with ``--ktrace-ssh-identity`` (as ``ssh -i``), the
ssh-agent's keys (unless ``IdentitiesOnly yes``), then the endpoint's identity files, then a password: the target's
own (a labgrid place's ``NetworkService`` carries one), else the ``KTRACE_SSH_PASSWORD`` environment variable.
A refusal is a :class:`~pytest_ktrace.TargetError` listing everything tried and why each failed; a transport
failure part-way is left to propagate as :class:`paramiko.SSHException`, for the connection to report as a
dropped connection.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import paramiko

from ..._errors import TargetError, hide_for_ktrace_errors
from ._config import Endpoint
from ._hostkeys import fingerprint

__all__ = ["PASSWORD_ENV", "authenticate"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

PASSWORD_ENV = "KTRACE_SSH_PASSWORD"


def authenticate(
    transport: paramiko.Transport,
    endpoint: Endpoint,
    *,
    host: str,
    identity: Optional[Path] = None,
    password: Optional[str] = None,
) -> None:
    """Authenticate ``transport`` as ``endpoint.user``, or raise :class:`TargetError` naming ``host``."""
    tried: list[str] = []
    if identity is not None and _by_key_files(transport, endpoint, [identity], tried, explicit=True):
        return
    if _by_agent(transport, endpoint, tried) or _by_identity_files(transport, endpoint, tried):
        return
    if _by_password(transport, endpoint, tried, password):
        return
    raise TargetError(
        f"authentication failed for user {endpoint.user!r} at {endpoint.alias} ({endpoint.hostname}:{endpoint.port}); "
        f"tried: {'; '.join(tried) or 'no key (no agent, no identity file)'}. Add the public key to the user's "
        f"authorized_keys, set IdentityFile in ssh config or --ktrace-ssh-identity, or set ${PASSWORD_ENV}",
        host=host,
        cause="authentication failed",
    )


def _by_agent(transport: paramiko.Transport, endpoint: Endpoint, tried: list[str]) -> bool:
    if endpoint.identities_only:
        return False
    try:
        agent_keys = paramiko.Agent().get_keys()
    except (paramiko.SSHException, OSError):
        agent_keys = ()
    return any(_by_key(transport, endpoint, key, tried, f"agent key {fingerprint(key)}") for key in agent_keys)


def _by_identity_files(transport: paramiko.Transport, endpoint: Endpoint, tried: list[str]) -> bool:
    return _by_key_files(transport, endpoint, endpoint.identity_files, tried, explicit=endpoint.identities_explicit)


def _by_key_files(
    transport: paramiko.Transport, endpoint: Endpoint, paths: list[Path], tried: list[str], *, explicit: bool
) -> bool:
    for path in paths:
        if not path.exists():
            if explicit:
                tried.append(f"{path} (missing)")
            continue
        try:
            key = paramiko.PKey.from_path(path)
        except paramiko.PasswordRequiredException:
            tried.append(f"{path} (has a passphrase: load it into ssh-agent)")
            continue
        except (paramiko.SSHException, OSError, ValueError) as exc:
            tried.append(f"{path} (unreadable: {exc})")
            continue
        if _by_key(transport, endpoint, key, tried, f"{path} ({key.get_name()} {fingerprint(key)})"):
            return True
    return False


def _by_password(transport: paramiko.Transport, endpoint: Endpoint, tried: list[str], own: Optional[str]) -> bool:
    password, source = (own, "the target's password") if own else (os.environ.get(PASSWORD_ENV), f"${PASSWORD_ENV}")
    if not password:
        return False
    with contextlib.suppress(paramiko.AuthenticationException):  # a refusal is reported with the rest
        transport.auth_password(endpoint.user, password)
    tried.append(f"password from {source}")
    return transport.is_authenticated()


def _by_key(
    transport: paramiko.Transport, endpoint: Endpoint, key: paramiko.PKey, tried: list[str], label: str
) -> bool:
    try:
        transport.auth_publickey(endpoint.user, key)
    except paramiko.BadAuthenticationType as exc:
        tried.append(f"{label} (server allows only {', '.join(exc.allowed_types)})")
        return False
    except paramiko.AuthenticationException:
        tried.append(label)
        return False
    return transport.is_authenticated()
