"""Names that make our tracefs objects ours: unique per machine, run and xdist worker, and recognisable later.

Every group and instance we create is called ``ktrace_<tag>_<pid>_<run>[_<serial>]``: ``tag`` identifies the
machine pytest runs on, ``pid`` the pytest process and ``run`` one pytest run inside it (pytester runs several).
A leftover is *provably ours* only when its tag is this machine's and its pid is no longer alive here; anything
else (a live run, another machine's run, a foreign probe) is left alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
from dataclasses import dataclass
from typing import Optional

__all__ = ["OWNED_NAME", "RunIdentity", "machine_tag", "stale_owner"]

OWNED_NAME = re.compile(r"^ktrace_(?P<tag>[0-9a-f]{6})_(?P<pid>\d+)_(?P<run>[0-9a-f]{4})(?:_(?P<serial>\d+))?$")


def machine_tag() -> str:
    """Six hex digits naming this machine (from /etc/machine-id, else the host name)."""
    try:
        with open("/etc/machine-id") as handle:
            seed = handle.read().strip()
    except OSError:
        seed = ""
    seed = seed or socket.gethostname()
    return hashlib.sha1(seed.encode()).hexdigest()[:6]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class RunIdentity:
    tag: str
    pid: int
    run: str

    @classmethod
    def current(cls) -> RunIdentity:
        return cls(machine_tag(), os.getpid(), secrets.token_hex(2))

    @property
    def group(self) -> str:
        """The event group of every probe this run defines."""
        return f"ktrace_{self.tag}_{self.pid}_{self.run}"

    def instance(self, serial: int) -> str:
        """The tracing instance of the ``serial``-th test of this run."""
        return f"{self.group}_{serial}"


def stale_owner(name: str, me: RunIdentity) -> Optional[int]:
    """The dead pid of the run that left ``name`` behind, if ``name`` is provably a leftover of this machine."""
    match = OWNED_NAME.match(name)
    if not match or match.group("tag") != me.tag:
        return None
    pid = int(match.group("pid"))
    if pid == me.pid or _alive(pid):
        return None
    return pid
