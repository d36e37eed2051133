"""Packs a staged root directory into a gzip'd newc initramfs (GNU cpio for the tree, Python for /dev)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

from .._errors import MissingTool, TargetError

__all__ = ["pack_initramfs"]

_NEWC_MAGIC = b"070701"


def _newc_entry(name: str, mode: int, *, rdev_major: int = 0, rdev_minor: int = 0, data: bytes = b"") -> bytes:
    fields = (
        0,  # ino: the kernel only uses it to match hard links, and there are none here
        mode,
        0,  # uid
        0,  # gid
        1,  # nlink
        0,  # mtime
        len(data),
        0,  # devmajor
        0,  # devminor
        rdev_major,
        rdev_minor,
        len(name) + 1,
        0,  # check
    )
    header = _NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)
    encoded = header + name.encode() + b"\0"
    encoded += b"\0" * (-len(encoded) % 4)
    return encoded + data + b"\0" * (-len(data) % 4)


def _device_node_archive() -> bytes:
    # The kernel opens /dev/console for PID 1's stdio *before* init can mount devtmpfs. A node made by mknod
    # on the host would need root there, so the node is written straight into its own cpio archive; the
    # kernel unpacks concatenated archives in order.
    return (
        _newc_entry("dev", 0o040755)
        + _newc_entry("dev/console", 0o020600, rdev_major=5, rdev_minor=1)
        + _newc_entry("TRAILER!!!", 0)
    )


def _tree_entries(root: Path) -> list[str]:
    """Every path under root, parents before children, in a stable order."""
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        relative_dir = os.path.relpath(dirpath, root)
        for name in sorted([*dirnames, *filenames]):
            names.append(os.path.normpath(os.path.join(relative_dir, name)))
    return names


def _run_cpio(root: Path, names: Iterable[str]) -> bytes:
    cpio = shutil.which("cpio")
    if cpio is None:
        raise MissingTool("cpio not found (needed to pack the guest initramfs); apt-get install cpio")
    command: Sequence[str] = [cpio, "-o", "-H", "newc", "--owner=0:0", "--reproducible", "--quiet"]
    result = subprocess.run(
        command,
        cwd=root,
        input="".join(name + "\n" for name in names).encode(),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise TargetError(
            f"cpio failed packing the guest initramfs (exit {result.returncode}): "
            + result.stderr.decode(errors="replace").strip(),
            command=" ".join(command),
        )
    return result.stdout


def pack_initramfs(root: Path, output: Path) -> None:
    archive = _device_node_archive() + _run_cpio(root, _tree_entries(root))
    output.write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))
