"""Backends: where tracefs lives. Each one implements :class:`~pytest_ktrace.backends.base.Backend`."""

from __future__ import annotations

from .base import Backend, Mkdir, Op, OpResult, Read, Rmdir, RunResult, TargetInfo, Write

__all__ = ["Backend", "Mkdir", "Op", "OpResult", "Read", "Rmdir", "RunResult", "TargetInfo", "Write"]
