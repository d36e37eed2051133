"""The SSH backend: tracefs on a board reached over SSH, one POSIX sh script per round trip."""

from __future__ import annotations

from ._backend import SshBackend

__all__ = ["SshBackend"]
