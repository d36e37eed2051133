"""A pool of boards shared by every pytest process on this machine: ``--ktrace-host=board1,board2``.

Each test holds one board for its whole duration through an exclusive ``flock`` on a per-board lock file, so
pytest-xdist workers spread over the boards and never share one at the same time. The kernel releases a lock
when its process dies, so a crashed or killed worker never leaves a board locked.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from pathlib import Path
from typing import IO, Optional, Sequence

from ._errors import KtraceError, hide_for_ktrace_errors

__all__ = ["BoardLease", "lease_board", "lock_dir", "split_hosts"]

__tracebackhide__ = hide_for_ktrace_errors

_POLL_S = 0.05


def split_hosts(value: Optional[str]) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``; empty parts are an error, not silently dropped."""
    if not value:
        return ()
    parts = tuple(part.strip() for part in value.split(","))
    if any(not part for part in parts):
        raise KtraceError(f"--ktrace-host={value!r} has an empty board name between commas")
    return parts


def lock_dir() -> Path:
    base = os.environ.get("KTRACE_LOCK_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pytest-ktrace", "locks"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _lock_file(host: str) -> Path:
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", host)[:40]
    return lock_dir() / f"{readable}-{hashlib.sha1(host.encode()).hexdigest()[:10]}.lock"


class BoardLease:
    """One board held by this process until :meth:`release`."""

    def __init__(self, host: str, handle: IO[str]) -> None:
        self.host = host
        self._handle: Optional[IO[str]] = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def lease_board(hosts: Sequence[str], *, timeout: float, start: int = 0) -> BoardLease:
    """The first free board of ``hosts`` (trying from index ``start``, so workers spread), waiting up to
    ``timeout`` seconds for one to become free."""
    order = [hosts[(start + index) % len(hosts)] for index in range(len(hosts))]
    deadline = time.monotonic() + timeout
    while True:
        for host in order:
            handle = open(_lock_file(host), "a+")  # noqa: SIM115 - the lease owns it until release()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return BoardLease(host, handle)
        if time.monotonic() >= deadline:
            raise KtraceError(
                f"no board of {', '.join(hosts)} became free within {timeout:.0f} s: every one is held by another "
                f"test of this machine (lock files in {lock_dir()})"
            )
        time.sleep(_POLL_S)
