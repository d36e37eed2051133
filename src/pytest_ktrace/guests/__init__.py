"""Disposable qemu guests running a stock Debian kernel with kprobes, reachable over SSH on 127.0.0.1.

This machine's kernel may lack kprobes; a guest gives tests a real one. :func:`build_image` assembles (and
caches) a kernel + busybox/dropbear initramfs from Debian packages; :func:`boot` starts it under qemu and
returns a :class:`RunningGuest` with a pinned host key and a private ssh_config. :func:`build_user_image` does the
same around a kernel the user built (and its modules tree), checked first by :func:`check_user_kernel`.
"""

from __future__ import annotations

from ._arches import ARCHES
from ._images import GuestImage, build_image
from ._kernel_files import KernelFile, inspect_kernel
from ._qemu import RunningGuest, boot, qemu_available
from ._user_images import UserKernel, build_user_image, check_user_kernel, describe_user_kernel

__all__ = [
    "ARCHES",
    "GuestImage",
    "KernelFile",
    "RunningGuest",
    "UserKernel",
    "boot",
    "build_image",
    "build_user_image",
    "check_user_kernel",
    "describe_user_kernel",
    "inspect_kernel",
    "qemu_available",
]
