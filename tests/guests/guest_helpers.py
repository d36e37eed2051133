"""Helpers for the guest tests: SSH via paramiko with a reject policy (pinned host key)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import paramiko

from pytest_ktrace.guests import RunningGuest


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def connect(guest: RunningGuest, known_hosts: Optional[Path] = None) -> paramiko.SSHClient:
    """An SSH client that trusts only the host key in known_hosts (RejectPolicy for anything else)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.load_host_keys(str(known_hosts or guest.known_hosts_path))
    client.connect(
        guest.host,
        port=guest.port,
        username=guest.user,
        key_filename=str(guest.key_path),
        allow_agent=False,
        look_for_keys=False,
        timeout=30,
        banner_timeout=30,
        auth_timeout=30,
    )
    return client


def run(client: paramiko.SSHClient, command: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``command`` with the guest's sh; return (exit status, stdout, stderr)."""
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode()
    err = stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err
