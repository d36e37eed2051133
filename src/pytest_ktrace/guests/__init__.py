"""Disposable qemu guests running a stock Debian kernel with kprobes, reachable over SSH on 127.0.0.1.

This machine's kernel may lack kprobes; a guest gives tests a real one. :func:`build_image` assembles (and
caches) a kernel + busybox/dropbear initramfs from Debian packages; :func:`boot` starts it under qemu and
returns a :class:`RunningGuest` with a pinned host key and a private ssh_config.
"""

from __future__ import annotations

from ._arches import ARCHES
from ._images import GuestImage, build_image
from ._qemu import RunningGuest, boot, qemu_available

__all__ = ["ARCHES", "GuestImage", "RunningGuest", "boot", "build_image", "qemu_available"]
