"""Guest images around a kernel the user built (``--ktrace-vm-kernel``), with its modules tree
(``--ktrace-vm-modules``, a ``make modules_install INSTALL_MOD_PATH=DIR`` tree).

The kernel is checked before anything is built or booted: its architecture from its own header, its release
against the modules tree's, its config against what the guest needs. The image holds the same busybox + dropbear
initramfs as the stock guests, with the modules the boot needs (virtio drivers built as modules) copied in, and
the whole modules tree on a read-only ext2 disk that init mounts at /lib/modules/<release>, where ``modprobe``
finds any module by name.

Cached under the same root as the stock images, as ``<arch>-user-<hash>/``, the hash covering the kernel file's
SHA-256, the modules tree (every file's path, size and mtime) and the config files next to the kernel. The
least recently used user images beyond the newest few are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .._errors import GuestKernelError, MissingTool, TargetError
from ._arches import ArchSpec, spec_for
from ._guest_files import MODULE_LIST_PATH, MODULES_MOUNT_PATH
from ._images import (
    USERLAND_PACKAGES,
    GuestImage,
    _install_file,
    _load_cached,
    _recipe_fingerprint,
    _sha256_of,
    _shipped_modules,
    _write_client_key,
    assemble_rootfs,
    cached_build,
    deb_dir,
    default_cache_root,
    install_modules,
    module_load_order,
    stage_packages,
)
from ._initramfs import pack_initramfs
from ._kernel_config import (
    MODULE_OF,
    KernelConfig,
    config_candidates,
    guest_needs,
    missing_options,
    no_config_error,
    parse_config,
)
from ._kernel_files import KernelFile, bootable_kernel, embedded_config, inspect_kernel, kernel_proper, kernel_release

__all__ = ["UserKernel", "build_user_image", "check_user_kernel", "describe_user_kernel"]

_MANIFEST = "manifest.json"
_USER_IMAGE_FORMAT = 1
_KEEP_USER_IMAGES = 3  # per arch, besides the one just used
_EVICT_AFTER_S = 3600.0  # never remove an image used this recently: another run may be about to boot it
_BLOCK = 4096
_E2FS_HINT = "apt-get install e2fsprogs"
# Devices the guests' IRQ trigger rebinds: loaded when built as modules, left out when the kernel lacks them.
_TRIGGER_MODULES = {"x86_64": ("i8042",), "arm64": ("rtc_pl031",)}


@dataclass(frozen=True)
class UserKernel:
    """A user's kernel that passed the checks: what it is, its modules tree and its config."""

    kernel: KernelFile
    release: str
    modules: Optional[Path]  # the INSTALL_MOD_PATH directory
    release_dir: Optional[Path]  # <modules>/lib/modules/<release>
    config: KernelConfig
    proper: Optional[bytes] = field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        config = self.config
        return _summary(self.kernel.path, self.kernel.format, self.release, self.modules, config.source, config.btf)


def _summary(kernel: Path, kind: str, release: str, modules: Optional[Path], config: str, btf: bool) -> str:
    parts = [f"kernel {kernel} ({kind}, {release})"]
    if modules is not None:
        parts.append(f"modules {modules}")
    parts.append(f"config {config}")
    parts.append("BTF: yes" if btf else "BTF: no (CONFIG_DEBUG_INFO_BTF is not set: probes cannot use C names)")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------- checks


def _release_dir(modules: Path, release: Optional[str], kernel: Path) -> tuple[Path, str]:
    """``<modules>/lib/modules/<release>`` of the tree, checked against the kernel's release."""
    if not modules.is_dir():
        raise GuestKernelError(f"modules tree {modules} does not exist (or is no directory)", kernel=str(kernel))
    base = modules / "lib" / "modules"
    if not base.is_dir():
        hint = ""
        if (modules / "modules.dep").exists() or (modules / "kernel").is_dir():
            hint = f" ({modules} looks like lib/modules/<release> itself: pass the INSTALL_MOD_PATH above it)"
        raise GuestKernelError(
            f"modules tree {modules} has no lib/modules/: pass the INSTALL_MOD_PATH of "
            f"`make modules_install INSTALL_MOD_PATH=DIR`{hint}",
            kernel=str(kernel),
        )
    releases = sorted(entry.name for entry in base.iterdir() if entry.is_dir())
    if release is None:
        if len(releases) != 1:
            raise GuestKernelError(
                f"{kernel}: cannot tell its release (no version string in it), and modules tree {modules} holds "
                f"{', '.join(releases) or 'no release'}",
                kernel=str(kernel),
            )
        release = releases[0]
    if release not in releases:
        raise GuestKernelError(
            f"{kernel} is release {release}, but modules tree {modules} holds "
            f"{', '.join(releases) or 'no modules'} (lib/modules/{release} is missing): the modules of another "
            "build cannot load into this kernel",
            kernel=str(kernel),
        )
    release_dir = base / release
    if not (release_dir / "modules.dep").is_file():
        raise GuestKernelError(
            f"modules tree {modules}: lib/modules/{release} has no modules.dep, which modprobe needs; run "
            f"`depmod -b {modules} {release}` (make modules_install runs it)",
            kernel=str(kernel),
        )
    return release_dir, release


def _find_config(
    kernel: KernelFile, proper: Optional[bytes], why_not_proper: str, release: str, release_dir: Optional[Path]
) -> KernelConfig:
    if proper is not None:
        embedded = embedded_config(proper)
        if embedded is not None:
            return parse_config(embedded, f"embedded in {kernel.path.name} (CONFIG_IKCONFIG)")
        reason = "not there"
    else:
        reason = f"cannot look: {why_not_proper}"
    looked = config_candidates(kernel.path, release, release_dir)
    for candidate in looked:
        if candidate.is_file():
            return parse_config(candidate.read_text(errors="replace"), str(candidate))
    raise no_config_error(kernel.path, reason, looked)


def check_user_kernel(kernel: Path, modules: Optional[Path] = None, *, arch: Optional[str] = None) -> UserKernel:
    """Check a user's kernel before booting it; :class:`GuestKernelError` names the problem: not a kernel, of
    another arch than ``arch``, a modules tree of another release, no config, or every config option the guest
    needs and the kernel lacks, in one message."""
    kernel = Path(kernel).absolute()
    found = inspect_kernel(kernel)
    if arch is not None and found.arch != arch:
        raise GuestKernelError(f"{kernel} is an {found.arch} kernel, not {arch}", kernel=str(kernel))
    proper, why_not = kernel_proper(found)
    release = kernel_release(found, proper)
    release_dir: Optional[Path] = None
    if modules is not None:
        release_dir, release = _release_dir(Path(modules).absolute(), release, kernel)
    if found.format == "vmlinux":
        bootable_kernel(found, proper)  # raises for an ELF qemu cannot boot (no PVH note, no arm64 Image inside)
    config = _find_config(found, proper, why_not, release or "", release_dir)
    available = frozenset(_shipped_modules(release_dir)) if release_dir is not None else frozenset()
    needs = guest_needs(found.arch, modules=release_dir is not None)
    missing = missing_options(config, needs, available, have_tree=release_dir is not None)
    if missing:
        lines = "\n".join(f"    {problem}" for _, problem in missing)
        raise GuestKernelError(
            f"{kernel} ({release or 'release unknown'}) cannot run the qemu guest: its config ({config.source}) "
            f"lacks {len(missing)} option(s) the guest needs:\n{lines}\n"
            "  Enable them (make menuconfig, or scripts/config --enable NAME) and rebuild the kernel"
            + (
                ", or give the modules tree of this build with --ktrace-vm-modules=DIR."
                if release_dir is None and any("=m, but" in problem for _, problem in missing)
                else "."
            ),
            kernel=str(kernel),
            missing=tuple(need.options[0] for need, _ in missing),
            config=config.source,
        )
    return UserKernel(
        found,
        release or "unknown",
        Path(modules).absolute() if modules is not None else None,
        release_dir,
        config,
        proper,
    )


# -------------------------------------------------------------------------------------------------- cache


def _tree_fingerprint(release_dir: Path) -> list[tuple[str, int, int]]:
    entries = []
    for directory, dirnames, filenames in os.walk(release_dir):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(directory, name)
            status = path.lstat()
            entries.append((path.relative_to(release_dir).as_posix(), status.st_size, status.st_mtime_ns))
    return entries


def _image_dir(spec: ArchSpec, cache_root: Path, kernel: Path, modules: Optional[Path]) -> Path:
    base = modules / "lib" / "modules" if modules is not None else None
    release_dirs = sorted(path for path in base.iterdir() if path.is_dir()) if base and base.is_dir() else []
    candidates = config_candidates(kernel, None, None) + sorted(kernel.parent.glob("config-*"))
    candidates += [release / "build" / ".config" for release in release_dirs]
    configs = [(str(path), _sha256_of(path)) for path in candidates if path.is_file()]
    key = {
        "format": _USER_IMAGE_FORMAT,
        "recipe": _recipe_fingerprint(spec),
        "kernel": str(kernel),
        "kernel_sha256": _sha256_of(kernel),
        "modules": str(modules) if modules is not None else None,
        "trees": {release.name: _tree_fingerprint(release) for release in release_dirs},
        "configs": configs,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root / f"{spec.name}-user-{digest}"


def _touch(image_dir: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(image_dir / _MANIFEST)


def _evict(spec: ArchSpec, cache_root: Path, keep: Path) -> None:
    """Remove the least recently used user images of this arch beyond the newest few, if not used lately."""
    images = []
    for image_dir in cache_root.glob(f"{spec.name}-user-*"):
        try:
            images.append(((image_dir / _MANIFEST).stat().st_mtime, image_dir))
        except OSError:
            continue
    images.sort(reverse=True)
    now = time.time()
    for used, image_dir in images[_KEEP_USER_IMAGES:]:
        if image_dir != keep and now - used > _EVICT_AFTER_S:
            shutil.rmtree(image_dir, ignore_errors=True)


def describe_user_kernel(
    kernel: Path, modules: Optional[Path] = None, *, arch: Optional[str] = None, cache_dir: Optional[Path] = None
) -> str:
    """One line on a user's kernel (file, release, modules, config, BTF), from its cached image if it has one,
    else from :func:`check_user_kernel` (which raises what is wrong with it)."""
    kernel = Path(kernel).absolute()
    found = inspect_kernel(kernel)
    spec = spec_for(arch or found.arch)
    modules = Path(modules).absolute() if modules is not None else None
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    cached = _load_cached(_image_dir(spec, cache_root, kernel, modules))
    if cached is not None:
        return _summary(kernel, found.format, cached.kernel_release, modules, cached.config_source, bool(cached.btf))
    return check_user_kernel(kernel, modules, arch=spec.name).summary()


# -------------------------------------------------------------------------------------------------- build


def build_user_image(
    kernel: Path, modules: Optional[Path] = None, *, arch: Optional[str] = None, cache_dir: Optional[Path] = None
) -> GuestImage:
    """The guest image (cached) for a kernel the user built, with its modules tree if given; the kernel is
    checked first (:func:`check_user_kernel`)."""
    kernel = Path(kernel).absolute()
    found = inspect_kernel(kernel)
    spec = spec_for(arch or found.arch)
    if found.arch != spec.name:
        raise GuestKernelError(f"{kernel} is an {found.arch} kernel, not {spec.name}", kernel=str(kernel))
    modules = Path(modules).absolute() if modules is not None else None
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    if modules is not None and not modules.is_dir():
        raise GuestKernelError(f"modules tree {modules} does not exist (or is no directory)", kernel=str(kernel))
    try:
        image_dir = _image_dir(spec, cache_root, kernel, modules)
    except OSError as exc:
        raise GuestKernelError(f"{kernel}: cannot read it: {exc.strerror or exc}", kernel=str(kernel)) from None

    def build(build_dir: Path) -> None:
        _build_user_into(spec, build_dir, check_user_kernel(kernel, modules, arch=spec.name), deb_dir(cache_root, spec))

    image = cached_build(spec, cache_root, image_dir, build)
    _touch(image_dir)
    _evict(spec, cache_root, image_dir)
    return image


def _boot_modules(spec: ArchSpec, user: UserKernel) -> tuple[list[str], list[str], str]:
    """(modules the boot needs, modules loaded if present, filesystem type of the modules disk)."""
    options = user.config.options
    wanted = [MODULE_OF[name] for name in ("CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_NET") if options.get(name) == "m"]
    fstype = ""
    if user.release_dir is not None:
        if options.get("CONFIG_VIRTIO_BLK") == "m":
            wanted.append("virtio_blk")
        for option, name in (("CONFIG_EXT4_FS", "ext4"), ("CONFIG_EXT2_FS", "ext2")):
            if options.get(option) == "y":
                fstype = name
                break
        else:
            # check_user_kernel() made sure one of them is a module of the tree
            available = _shipped_modules(user.release_dir)
            fstype = "ext4" if options.get("CONFIG_EXT4_FS") == "m" and "ext4" in available else "ext2"
            wanted.append(fstype)
    return wanted, list(_TRIGGER_MODULES[spec.name]), fstype


def _mke2fs() -> str:
    for candidate in (shutil.which("mke2fs"), "/sbin/mke2fs", "/usr/sbin/mke2fs"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise MissingTool(f"mke2fs not found (needed for the modules disk of --ktrace-vm-modules); {_E2FS_HINT}")


def _disk_blocks(tree: Path) -> tuple[int, int]:
    """(4 KiB blocks, inodes) an ext2 filesystem needs for ``tree``, with room for its metadata."""
    blocks = inodes = 0
    for directory, dirnames, filenames in os.walk(tree):
        inodes += 1 + len(filenames)
        blocks += 1 + (len(dirnames) + len(filenames)) // 64
        for name in filenames:
            size = Path(directory, name).lstat().st_size
            data = math.ceil(size / _BLOCK)
            blocks += data + math.ceil(data / 1024)  # indirect blocks
    inodes += 64
    inode_table = math.ceil(inodes * 256 / _BLOCK)
    return int(blocks * 1.05) + inode_table + 2048, inodes


def _make_modules_disk(release_dir: Path, output: Path) -> None:
    mke2fs = _mke2fs()
    blocks, inodes = _disk_blocks(release_dir)
    for attempt in range(2):  # the size is an estimate: twice as large if it was too small
        command = [
            mke2fs, "-q", "-F", "-t", "ext2", "-b", str(_BLOCK), "-m", "0", "-N", str(inodes),
            "-L", "ktrace-modules", "-E", "root_owner=0:0", "-d", str(release_dir), str(output),
            str(blocks << attempt),
        ]  # fmt: skip
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return
        output.unlink(missing_ok=True)
    raise TargetError(
        f"mke2fs could not make the modules disk from {release_dir} (exit {result.returncode}): "
        + (result.stderr.strip() or result.stdout.strip()),
        command=" ".join(command),
    )


def _build_user_into(spec: ArchSpec, build_dir: Path, user: UserKernel, debs_dir: Path) -> None:
    started = time.monotonic()
    stage = build_dir / "stage"
    debs = stage_packages(spec, USERLAND_PACKAGES, debs_dir, stage)
    rootfs = build_dir / "rootfs"
    assemble_rootfs(spec, stage, rootfs)
    wanted, optional, fstype = _boot_modules(spec, user)
    modules: list[str] = []
    if user.release_dir is not None:
        order = module_load_order(user.release_dir, wanted, optional=optional)
        modules = install_modules(user.release_dir, rootfs, user.release, order)
        mount = f"{fstype} /lib/modules/{user.release}\n"
        _install_file(rootfs / MODULES_MOUNT_PATH, mount.encode(), 0o644)
        _make_modules_disk(user.release_dir, build_dir / "modules.img")
    else:
        _install_file(rootfs / MODULE_LIST_PATH, b"", 0o644)  # a kernel without modules loads none
    key_path = build_dir / "id_ed25519"
    _install_file(rootfs / "root/.ssh/authorized_keys", _write_client_key(key_path).encode(), 0o600)
    pack_initramfs(rootfs, build_dir / "initrd.img")

    bootable = bootable_kernel(user.kernel, user.proper)
    (build_dir / "kernel").write_bytes(bootable.data)
    config_name = f"config-{user.release}"
    (build_dir / config_name).write_text(user.config.text)
    shutil.rmtree(stage)
    shutil.rmtree(rootfs)
    manifest = {
        "format": _USER_IMAGE_FORMAT,
        "arch": spec.name,
        "kernel_release": user.release,
        "kernel": "kernel",
        "kernel_format": bootable.format,
        "kernel_source": str(user.kernel.path),
        "kernel_source_format": user.kernel.format,
        "initrd": "initrd.img",
        "key": key_path.name,
        "config": config_name,
        "config_source": user.config.source,
        "btf": user.config.btf,
        "modules_tree": str(user.modules) if user.modules is not None else None,
        "modules_disk": "modules.img" if user.release_dir is not None else None,
        "packages": [{"package": deb.package, "filename": deb.filename, "sha256": deb.sha256} for deb in debs],
        "modules": modules,
        "build_seconds": round(time.monotonic() - started, 2),
    }
    # Written last: its presence is what marks a directory as a complete image.
    (build_dir / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
