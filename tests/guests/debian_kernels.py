"""Real kernels other than the guests' own, as a user would hand them to --ktrace-vm-kernel: a Debian kernel
package unpacked like an installed one (boot/vmlinuz-*, boot/config-*, lib/modules/<release>/ with the
modules.dep its postinst makes), which is also the layout of `make modules_install INSTALL_MOD_PATH=DIR`.

The .debs are fetched into the guest cache's debs/ (verified against apt's SHA-256, reused by later runs) and
unpacked once into <cache>/kernel-trees/<package>_<version>/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_ktrace._errors import KtraceError
from pytest_ktrace.guests._arches import spec_for
from pytest_ktrace.guests._images import _deb_files, _ensure_debs, _FileLock, deb_dir, default_cache_root


@dataclass(frozen=True)
class KernelTree:
    """An unpacked kernel package: ``root`` is the INSTALL_MOD_PATH, ``kernel`` and ``config`` are in boot/."""

    root: Path
    release: str
    kernel: Path
    config: Path

    @property
    def release_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def _kernel_package(meta: str, debian_arch: str) -> str:
    """The linux-image-<abi>-<flavour> package a meta package such as linux-image-cloud-amd64 depends on."""
    result = subprocess.run(
        ["apt-cache", "depends", f"{meta}:{debian_arch}"], capture_output=True, text=True, check=False
    )
    match = re.search(r"^\s*Depends:\s*(linux-image-[^\s:]+)", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        pytest.skip(f"apt does not know {meta}:{debian_arch}: {result.stderr.strip()} (run apt-get update)")
    return match.group(1)


def unpacked_kernel(meta: str, arch: str) -> KernelTree:
    """The kernel package ``meta`` depends on for ``arch`` (x86_64, arm64), unpacked with its modules.dep."""
    spec = spec_for(arch)
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "depmod"):
        if shutil.which(tool) is None and not Path("/sbin", tool).exists():
            pytest.skip(f"{tool} not found (./scripts/bootstrap installs it)")
    package = _kernel_package(meta, spec.debian_arch)
    release = package[len("linux-image-") :]
    cache_root = default_cache_root()
    trees = cache_root / "kernel-trees"
    # A tree of this package (its name carries the kernel's ABI) unpacked earlier: no need to ask apt for its URL
    for root in sorted(trees.glob(f"{package}_*_{spec.debian_arch}"), reverse=True):
        tree = KernelTree(root, release, root / "boot" / f"vmlinuz-{release}", root / "boot" / f"config-{release}")
        if (tree.release_dir / "modules.dep").is_file():
            return tree
    try:
        [deb] = _deb_files(spec, [package])
    except KtraceError as exc:
        pytest.skip(f"cannot find {package}: {exc}")
    root = trees / deb.filename.removesuffix(".deb")
    tree = KernelTree(root, release, root / "boot" / f"vmlinuz-{release}", root / "boot" / f"config-{release}")
    if (tree.release_dir / "modules.dep").is_file():
        return tree
    trees.mkdir(parents=True, exist_ok=True)
    with _FileLock(trees / ".lock"):
        if (tree.release_dir / "modules.dep").is_file():
            return tree
        [deb_path] = _ensure_debs(spec, [deb], deb_dir(cache_root, spec))
        unpacking = Path(tempfile.mkdtemp(prefix=".unpack-", dir=trees))
        try:
            subprocess.run(["dpkg-deb", "-x", str(deb_path), str(unpacking)], check=True, capture_output=True)
            # What the package's postinst does when it is installed (and `make modules_install` does too).
            depmod = shutil.which("depmod") or "/sbin/depmod"
            subprocess.run([depmod, "-b", str(unpacking), release], check=True, capture_output=True)
            if root.exists():
                shutil.rmtree(root)
            os.rename(unpacking, root)
        except BaseException:
            shutil.rmtree(unpacking, ignore_errors=True)
            raise
    return tree
