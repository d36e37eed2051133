"""build_image: real Debian packages, a real initramfs, a cache that answers fast and survives concurrency."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ktrace._errors import MissingTool
from pytest_ktrace.guests import ARCHES, GuestImage, build_image
from pytest_ktrace.guests import _images as images_module

pytestmark = pytest.mark.guest

DEBIAN_ARCH = {"x86_64": "amd64", "arm64": "arm64"}


def test_arches_are_the_documented_pair() -> None:
    assert ARCHES == ("x86_64", "arm64")


def test_unknown_arch_is_rejected() -> None:
    with pytest.raises(ValueError, match="riscv64"):
        build_image("riscv64")


def test_image_has_kernel_initrd_key_and_config(arch: str, guest_image: GuestImage) -> None:
    assert guest_image.arch == arch
    assert re.fullmatch(rf"\d+\.\d+\.\d+-\d+-{DEBIAN_ARCH[arch]}", guest_image.kernel_release)
    kernel_head = guest_image.kernel.read_bytes()[:64]
    if arch == "x86_64":
        assert kernel_head.startswith(b"\x7fELF"), "x86_64 boots the PVH vmlinux extracted from the bzImage"
    else:
        assert kernel_head[56:60] == b"ARM\x64", "arm64 boots the raw Image"
    assert guest_image.initrd.read_bytes()[:2] == b"\x1f\x8b"
    key_text = guest_image.key_path.read_text()
    assert key_text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert stat.S_IMODE(guest_image.key_path.stat().st_mode) == 0o600
    config = guest_image.config_path.read_text()
    assert guest_image.config_path.name == f"config-{guest_image.kernel_release}"
    for option in ("CONFIG_KPROBES=y", "CONFIG_KPROBE_EVENTS=y", "CONFIG_HAVE_FUNCTION_ARG_ACCESS_API=y"):
        assert option in config.splitlines()


def newc_names(archive: bytes) -> list[str]:
    """Names in a (possibly concatenated) newc cpio stream, as the kernel reads it: past every TRAILER!!!."""
    names = []
    offset = 0
    while offset + 110 <= len(archive):
        if archive[offset : offset + 6] != b"070701":
            offset += 1  # padding between archives
            continue
        fields = [int(archive[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        file_size, name_size = fields[6], fields[11]
        name_start = offset + 110
        name = archive[name_start : name_start + name_size - 1].decode()
        data_start = name_start + name_size + (-(110 + name_size) % 4)
        offset = data_start + file_size + (-file_size % 4)
        if name != "TRAILER!!!":
            names.append(name)
    return names


def test_initramfs_contains_busybox_dropbear_and_init(arch: str, guest_image: GuestImage) -> None:
    listing = newc_names(gzip.decompress(guest_image.initrd.read_bytes()))
    for path in (
        "init",
        "bin/busybox",
        "usr/sbin/dropbear",
        "usr/bin/dropbearkey",
        "dev/console",
        "root/.ssh/authorized_keys",
        "usr/bin/ktrace-trigger-setup-irq",
    ):
        assert path in listing
    assert not any("python" in path or path.endswith("/bash") for path in listing)
    assert any(path.endswith("/virtio_net.ko") for path in listing)


def test_second_build_is_the_cached_image_and_builds_nothing(
    arch: str, guest_image: GuestImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(How long the cached path takes: benchmarks/bench_guests.py.)"""

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image was built again although it is cached")

    monkeypatch.setattr(images_module, "_build_into", no_build)
    monkeypatch.setattr(images_module, "_FileLock", no_build)  # the cache's fast path takes no lock either
    assert build_image(arch) == guest_image


def test_concurrent_cold_builds_produce_one_image(tmp_path: Path) -> None:
    """Two processes (as pytest-xdist workers would) building into one empty cache: one builds, both get it."""
    arch = "arm64"
    try:
        build_image(arch)  # the session's own cache: cheap when cached, and proves apt can serve arm64
    except MissingTool as missing:
        pytest.skip(f"cannot build the {arch} guest image: {missing}")
    stale = tmp_path / f".build-{arch}-stale"
    stale.mkdir()  # what a builder killed mid-way leaves behind
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from pytest_ktrace.guests import build_image\n"
        f"image = build_image({arch!r}, cache_dir=Path(sys.argv[1]))\n"
        "print(json.dumps([str(image.kernel), str(image.initrd), str(image.key_path), image.kernel_release]))\n"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err.decode()
        results.append(json.loads(out))
    assert results[0] == results[1]
    image_dirs = [path.name for path in tmp_path.iterdir() if path.name.startswith(f"{arch}-")]
    assert len(image_dirs) == 1
    assert not list(tmp_path.glob(".build-*")), "build directories must be renamed or removed"
    manifest = json.loads((tmp_path / image_dirs[0] / "manifest.json").read_text())
    assert manifest["kernel_release"] == results[0][3]
    assert os.path.exists(results[0][0])
    shutil.rmtree(tmp_path / image_dirs[0])  # ~100 MB of image and .debs that no later test needs
    shutil.rmtree(tmp_path / "debs")
