"""Files of the target read on this machine: the ELF binaries uprobes point into (their symbols give file offsets,
and name the frames of user stacks). A target that shares this machine's filesystem is read in place; any
other is copied once per run and copied again only when the file's size, mtime or inode changed.

Checking a remote file for change costs a round trip. Where the test's first command can carry the check (a
:class:`~.backends._base.PreparingRuns` backend: nothing is applied or run if the file changed), a copy from an
earlier test is used as it is and its identity travels with that command (:meth:`ElfCopies.unverified`); a file
found changed there is :meth:`ElfCopies.forget`-ten and read again."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ._errors import MissingBinary, hide_for_ktrace_errors
from ._files import write_private_temp
from .backends._base import Backend, SharedFilesystem

__all__ = ["ElfCopies"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals


class ElfCopies:
    """Local paths to the target's files for one test. ``cache`` (path -> (identity "size mtime inode", local
    copy)) belongs to the run, so copies outlive the test; each file is checked for change once per test."""

    def __init__(
        self,
        backend: Backend,
        cache: Optional[dict[str, tuple[str, Path]]] = None,
        *,
        timeout: Optional[float],
        check_later: bool = False,
    ) -> None:
        self.backend = backend
        self.timeout = timeout
        self._cache: dict[str, tuple[str, Path]] = {} if cache is None else cache
        self._checked: set[str] = set()
        self._check_later = check_later  # a copy from an earlier test is used now, its identity checked later
        self._unverified: dict[str, str] = {}

    def unverified(self) -> dict[str, str]:
        """The files used from an earlier test's copy and not checked yet: path -> the identity they must still have
        (``"size mtime inode"`` as ``stat -L -c '%s %Y %i'`` prints it)."""
        return dict(self._unverified)

    def verified(self) -> None:
        """The target said every :meth:`unverified` file is unchanged."""
        self._unverified.clear()

    def forget(self, paths: Sequence[str]) -> None:
        """These files changed on the target: checked and copied again on their next use."""
        for path in paths:
            self._checked.discard(path)
            self._unverified.pop(path, None)
            cached = self._cache.get(path)
            if cached is not None:
                self._cache[path] = ("", cached[1])  # no identity: the next use reads the file's again

    def check_now(self) -> list[str]:
        """Check the :meth:`unverified` files in one round trip (for a batch that cannot carry the check); the
        paths that changed, forgotten already."""
        if not self._unverified:
            return []
        paths = list(self._unverified)
        listed = self.backend.run(
            ["sh", "-c", 'for f; do stat -L -c "%s %Y %i" -- "$f" 2>/dev/null || echo; done', "ktrace-stat", *paths],
            timeout=self.timeout,
        )
        found = listed.stdout.split("\n")
        changed = [
            path
            for index, path in enumerate(paths)
            if index >= len(found) or found[index].strip() != self._unverified[path]
        ]
        self.forget(changed)
        self.verified()
        return changed

    def identity(self, path: str) -> str:
        """``"size mtime inode"`` of the target's file at ``path`` as this test found it ("" if unknown): a uprobe
        holds the inode it was defined on, so a file rebuilt in place needs a new probe."""
        if isinstance(self.backend, SharedFilesystem) and self.backend.files_are_local:
            try:
                stat = os.stat(path)
            except OSError:
                return ""
            return f"{stat.st_size} {stat.st_mtime_ns} {stat.st_ino} {stat.st_dev}"
        self.local_path(path)  # checked once per test
        cached = self._cache.get(path)
        return cached[0] if cached is not None else ""

    def local_path(self, path: str) -> Path:
        if isinstance(self.backend, SharedFilesystem) and self.backend.files_are_local:
            if not os.path.exists(path):
                raise MissingBinary(f"uprobe target {path} does not exist on {self.backend.name}")
            return Path(path)
        cached = self._cache.get(path)
        if path in self._checked and cached is not None:
            return cached[1]
        if self._check_later and cached is not None and cached[0] and cached[1].exists():
            self._checked.add(path)
            self._unverified[path] = cached[0]
            return cached[1]
        stat = self.backend.run(["stat", "-L", "-c", "%s %Y %i", "--", path], timeout=self.timeout)
        if stat.returncode != 0 and "No such file" in stat.stderr:
            raise MissingBinary(f"uprobe target {path} does not exist on {self.backend.name}")
        identity = stat.stdout.strip() if stat.returncode == 0 else ""
        self._checked.add(path)
        if cached is not None and identity and cached[0] == identity and cached[1].exists():
            return cached[1]
        result = self.backend.run(["cat", "--", path], timeout=self.timeout)
        if result.returncode != 0:
            raise MissingBinary(f"uprobe target {path} cannot be read on {self.backend.name}: {result.stderr.strip()}")
        copy = write_private_temp(
            result.stdout.encode("utf-8", "surrogateescape"),
            prefix="ktrace-elf-",
            what=f"the local copy of {self.backend.name}:{path} at",
        )
        if cached is not None:
            cached[1].unlink(missing_ok=True)
        self._cache[path] = (identity, copy)
        return copy
