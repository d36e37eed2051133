"""Backends: where tracefs lives.

Every backend implements :class:`Backend`, the required contract. What only some targets can do is a small
capability protocol, checked with ``isinstance``: :class:`Streaming` (stream mode, ``stream=True``),
:class:`FileFetching` (BTF and ELF files read from the target), :class:`FilePushing` (``ktrace.push()``),
:class:`Spawning` (``ktrace.spawn()``, which returns a :class:`BackgroundCommand`), :class:`PreparingRuns` (a
test's arming in its first command's round trip),
:class:`SharedFilesystem` (the target sees this machine's files), :class:`Injecting` (``ktrace.inject()`` on the
fake) and :class:`Imitating` (a backend that stands in for a real kernel from a snapshot). A third-party backend
implements what its target can do and registers itself through the ``pytest_ktrace_make_backend`` hook.
"""

from __future__ import annotations

from ._base import (
    Backend,
    BackgroundCommand,
    FileFetching,
    FilePushing,
    Imitating,
    Injecting,
    Mkdir,
    Op,
    OpResult,
    PreparingRuns,
    Read,
    Remove,
    Rmdir,
    RunResult,
    SharedFilesystem,
    Spawning,
    Streaming,
    TargetInfo,
    TraceStream,
    Write,
)

__all__ = [
    "Backend",
    "BackgroundCommand",
    "FileFetching",
    "FilePushing",
    "Imitating",
    "Injecting",
    "Mkdir",
    "Op",
    "OpResult",
    "PreparingRuns",
    "Read",
    "Remove",
    "Rmdir",
    "RunResult",
    "SharedFilesystem",
    "Spawning",
    "Streaming",
    "TargetInfo",
    "TraceStream",
    "Write",
]
