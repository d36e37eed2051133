"""A kernel the user built, checked before anything boots, on real kernels: Debian's cloud flavour (a second
kernel, not the guests' own) as bzImage and modules tree, the arm64 guest's Image, its Image.gz, and the x86
guest's PVH vmlinux. What is not a kernel, a kernel of the other arch, a modules tree of another release, a
config without what the guest needs and no config at all are clear errors."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from debian_kernels import KernelTree, unpacked_kernel

from pytest_ktrace import GuestKernelError
from pytest_ktrace._errors import MissingTool
from pytest_ktrace.guests import build_image, check_user_kernel, describe_user_kernel, inspect_kernel
from pytest_ktrace.guests._arches import spec_for
from pytest_ktrace.guests._images import install_modules, module_load_order
from pytest_ktrace.guests._kernel_files import bootable_kernel, kernel_proper, kernel_release
from pytest_ktrace.guests._user_images import _image_dir

pytestmark = pytest.mark.guest
pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def cloud() -> KernelTree:
    return unpacked_kernel("linux-image-cloud-amd64", "x86_64")


def _stock_kernel(arch: str) -> Path:
    try:
        return build_image(arch).kernel
    except MissingTool as missing:
        pytest.skip(f"cannot build the {arch} guest image: {missing}")


@pytest.fixture(scope="module")
def arm64_image() -> Path:
    return _stock_kernel("arm64")


def _config_without(config: Path, *options: str, changes: dict[str, str] | None = None) -> str:
    lines = []
    for line in config.read_text().splitlines():
        name = line.partition("=")[0]
        if name in options:
            line = f"# {name} is not set"
        elif changes and name in changes:
            line = f"{name}={changes[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- what it is


def test_the_cloud_bzimage_is_x86_64_with_its_release_from_the_header(cloud: KernelTree) -> None:
    found = inspect_kernel(cloud.kernel)
    assert (found.arch, found.format) == ("x86_64", "bzImage")
    assert kernel_release(found) == cloud.release == "6.1.0-57-cloud-amd64"


def test_the_arm64_guest_image_raw_and_gzipped(arm64_image: Path, tmp_path: Path) -> None:
    raw = inspect_kernel(arm64_image)
    assert (raw.arch, raw.format) == ("arm64", "Image")
    release = kernel_release(raw)
    assert release is not None and release.endswith("-arm64")
    packed = tmp_path / "Image.gz"
    packed.write_bytes(gzip.compress(arm64_image.read_bytes(), compresslevel=1))
    found = inspect_kernel(packed)
    assert (found.arch, found.format) == ("arm64", "Image.gz")
    proper, why = kernel_proper(found)
    assert proper == arm64_image.read_bytes(), why
    assert kernel_release(found, proper) == release
    assert bootable_kernel(found, proper).format == "Image"


def test_the_x86_guest_vmlinux_is_an_elf_kernel_qemu_boots_by_pvh() -> None:
    vmlinux = _stock_kernel("x86_64")  # the PVH ELF the stock image extracted from Debian's bzImage
    found = inspect_kernel(vmlinux)
    assert (found.arch, found.format) == ("x86_64", "vmlinux")
    assert kernel_release(found) == build_image("x86_64").kernel_release
    assert bootable_kernel(found, vmlinux.read_bytes()).format == "pvh-elf"


def test_the_cloud_bzimage_boots_as_the_pvh_elf_inside_it(cloud: KernelTree) -> None:
    found = inspect_kernel(cloud.kernel)
    proper, why = kernel_proper(found)  # lz4-compressed: opened with the lz4 tool (scripts/bootstrap installs it)
    assert proper is not None, why
    assert proper.startswith(b"\x7fELF") and kernel_release(found, proper) == cloud.release
    assert bootable_kernel(found, proper).format == "pvh-elf"


def test_without_the_lz4_tool_the_cloud_bzimage_boots_as_it_is(
    cloud: KernelTree, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no lz4 there
    found = inspect_kernel(cloud.kernel)
    proper, why = kernel_proper(found)
    assert proper is None and why == "its kernel is lz4-compressed and lz4 is not installed (apt-get install lz4)"
    booted = bootable_kernel(found, proper)
    assert booted.format == "bzImage" and booted.data == cloud.kernel.read_bytes()
    checked = check_user_kernel(cloud.kernel, cloud.root)  # the config beside it still serves
    assert checked.config.source == str(cloud.config)


def test_an_x86_vmlinux_without_its_pvh_note_is_refused_before_booting(tmp_path: Path) -> None:
    vmlinux = bytearray(_stock_kernel("x86_64").read_bytes())
    # the note qemu looks for: type XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen"; make it another type
    note_type = vmlinux.find(struct.pack("<I", 18) + b"Xen\0")
    assert note_type > 0
    vmlinux[note_type : note_type + 4] = struct.pack("<I", 17)
    stripped = tmp_path / "vmlinux"
    stripped.write_bytes(bytes(vmlinux))
    with pytest.raises(GuestKernelError, match=r"without a PVH entry note .* boot arch/x86/boot/bzImage instead"):
        check_user_kernel(stripped)


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compressed_boot_modules_go_into_the_initramfs_decompressed(
    cloud: KernelTree, tmp_path: Path, compress: str
) -> None:
    release_dir = tmp_path / "lib" / "modules" / cloud.release
    suffix = {"gzip": ".gz", "zstd": ".zst"}[compress]
    for module in (cloud.release_dir / "kernel").rglob("*.ko"):
        if module.parent.name in ("virtio", "net") or module.name == "failover.ko":
            packed = release_dir / module.relative_to(cloud.release_dir)
            packed = packed.with_name(packed.name + suffix)
            packed.parent.mkdir(parents=True, exist_ok=True)
            if compress == "gzip":
                packed.write_bytes(gzip.compress(module.read_bytes()))
            else:
                subprocess.run(["zstd", "-q", "-o", str(packed), str(module)], check=True)
    shutil.copyfile(cloud.release_dir / "modules.builtin", release_dir / "modules.builtin")
    order = module_load_order(release_dir, ["virtio_pci", "virtio_net"])
    assert all(path.endswith(f".ko{suffix}") for path in order)
    rootfs = tmp_path / "rootfs"
    installed = install_modules(release_dir, rootfs, cloud.release, order)
    names = [Path(path).name for path in installed]
    assert names.index("virtio.ko") < names.index("virtio_pci.ko") and names.index("failover.ko") < names.index(
        "virtio_net.ko"
    )
    for path in installed:
        plain = cloud.release_dir / path
        assert (rootfs / "lib" / "modules" / cloud.release / path).read_bytes() == plain.read_bytes()


def _elf_around(image: bytes, split: int, base: int = 0xFFFF800008000000) -> bytes:
    """A 64-bit AArch64 ELF executable whose two PT_LOAD segments hold ``image`` split at ``split``, the way
    the linker lays a vmlinux out (the file offsets differ from the memory offsets)."""
    header_size, phentsize = 64, 56
    first_offset = 0x1000
    second_offset = first_offset + split + 0x1000  # a gap in the file, none in memory
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, base, header_size, 0, 0, header_size, phentsize, 2, 0, 0, 0)
    segments = b"".join(
        struct.pack("<IIQQQQQQ", 1, 5, offset, base + start, base + start, size, size, 0x10000)
        for offset, start, size in ((first_offset, 0, split), (second_offset, split, len(image) - split))
    )
    elf = bytearray(second_offset + len(image) - split)
    elf[: len(header) + len(segments)] = header + segments
    elf[first_offset : first_offset + split] = image[:split]
    elf[second_offset:] = image[split:]
    return bytes(elf)


def test_an_arm64_vmlinux_boots_as_the_image_its_segments_lay_out(arm64_image: Path, tmp_path: Path) -> None:
    image = arm64_image.read_bytes()
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(_elf_around(image, split=len(image) // 3))
    found = inspect_kernel(vmlinux)
    assert (found.arch, found.format) == ("arm64", "vmlinux")
    assert kernel_release(found) == kernel_release(inspect_kernel(arm64_image))
    booted = bootable_kernel(found, vmlinux.read_bytes())
    assert booted.format == "Image" and booted.data == image


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("passwd", b"root:x:0:0:root:/root:/bin/sh\n", "is not a kernel: expected an x86 bzImage"),
        ("empty", b"", "is empty"),
        ("not-an-image.gz", gzip.compress(b"hello, not an arm64 Image\n" * 10), "is gzip data, but not of an arm64"),
    ],
)
def test_a_file_that_is_no_kernel_is_named(tmp_path: Path, name: str, content: bytes, says: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GuestKernelError, match=says) as raised:
        inspect_kernel(path)
    assert raised.value.kernel == str(path)


def test_a_program_a_directory_and_a_missing_file_are_not_kernels(tmp_path: Path) -> None:
    with pytest.raises(GuestKernelError, match="is an ELF file but not a Linux kernel"):
        inspect_kernel(Path(os.path.realpath(sys.executable)))
    with pytest.raises(GuestKernelError, match="is a directory"):
        inspect_kernel(tmp_path)
    with pytest.raises(GuestKernelError, match="does not exist"):
        inspect_kernel(tmp_path / "bzImage")


# --------------------------------------------------------------------------------------------- the config


def test_the_cloud_kernel_with_its_modules_passes_and_says_it_has_btf(cloud: KernelTree) -> None:
    checked = check_user_kernel(cloud.kernel, cloud.root)
    assert checked.release == cloud.release
    assert checked.config.source == str(cloud.config)  # no IKCONFIG in Debian kernels: the file beside it
    assert checked.summary().endswith("BTF: yes")


def test_without_its_modules_tree_the_cloud_kernels_virtio_modules_are_missing(cloud: KernelTree) -> None:
    with pytest.raises(GuestKernelError) as raised:
        check_user_kernel(cloud.kernel)
    assert raised.value.missing == ("CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_NET")
    assert "it is CONFIG_VIRTIO_NET=m, but no --ktrace-vm-modules tree provides it" in str(raised.value)
    assert "--ktrace-vm-modules=DIR" in str(raised.value)


def test_a_config_without_what_the_guest_needs_names_every_missing_option_at_once(
    cloud: KernelTree, tmp_path: Path
) -> None:
    kernel = tmp_path / cloud.kernel.name
    shutil.copyfile(cloud.kernel, kernel)
    removed = ("CONFIG_DEVTMPFS", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_KPROBE_EVENTS", "CONFIG_UPROBE_EVENTS")
    # ext4 as a module the tree does not have (the cloud kernel builds it in), the console driver as a module
    changes = {"CONFIG_EXT4_FS": "m", "CONFIG_SERIAL_8250": "m"}
    (tmp_path / ".config").write_text(_config_without(cloud.config, *removed, "CONFIG_EXT2_FS", changes=changes))
    with pytest.raises(GuestKernelError) as raised:
        check_user_kernel(kernel, cloud.root)
    error = raised.value
    assert error.config == str(tmp_path / ".config")
    assert set(error.missing) == {*removed, "CONFIG_SERIAL_8250", "CONFIG_EXT4_FS"}
    message = str(error)
    assert f"lacks {len(error.missing)} option(s)" in message
    assert "CONFIG_SERIAL_8250=y (the console is the PC's serial port ttyS0): it is CONFIG_SERIAL_8250=m" in message
    assert "CONFIG_EXT4_FS=y or CONFIG_EXT2_FS=y" in message and "the modules tree has no ext4.ko" in message


def test_without_btf_the_summary_says_so(cloud: KernelTree, tmp_path: Path) -> None:
    kernel = tmp_path / cloud.kernel.name
    shutil.copyfile(cloud.kernel, kernel)
    (tmp_path / f"config-{cloud.release}").write_text(_config_without(cloud.config, "CONFIG_DEBUG_INFO_BTF"))
    summary = describe_user_kernel(kernel, cloud.root, cache_dir=tmp_path / "cache")
    assert "BTF: no (CONFIG_DEBUG_INFO_BTF is not set" in summary
    assert f"config {tmp_path / f'config-{cloud.release}'}" in summary


def test_no_config_anywhere_says_where_it_looked(cloud: KernelTree, tmp_path: Path) -> None:
    kernel = tmp_path / "arch" / "x86" / "boot" / "bzImage"
    kernel.parent.mkdir(parents=True)
    shutil.copyfile(cloud.kernel, kernel)
    with pytest.raises(GuestKernelError, match="no config found") as raised:
        check_user_kernel(kernel, cloud.root)
    message = str(raised.value)
    assert "the config embedded in it (CONFIG_IKCONFIG): not there" in message
    for place in (
        kernel.parent / ".config",
        kernel.parent / f"config-{cloud.release}",
        tmp_path / ".config",  # the top of the build tree an arch/x86/boot/bzImage was made in
        cloud.release_dir / "build" / ".config",
    ):
        assert f"    {place}\n" in message


def _with_ikconfig(image: bytes, config: str) -> bytes:
    # what CONFIG_IKCONFIG puts into the kernel: the config, gzip'ed, between two markers
    return image + b"IKCFG_ST" + gzip.compress(config.encode()) + b"IKCFG_ED"


def test_a_config_embedded_in_an_image_gz_is_read_first(arm64_image: Path, tmp_path: Path) -> None:
    config = build_image("arm64").config_path.read_text()
    embedded = _config_without(
        Path(build_image("arm64").config_path), changes={"CONFIG_VIRTIO_PCI": "y", "CONFIG_VIRTIO_NET": "y"}
    )
    packed = tmp_path / "Image.gz"
    packed.write_bytes(gzip.compress(_with_ikconfig(arm64_image.read_bytes(), embedded), compresslevel=1))
    (tmp_path / ".config").write_text(config)  # Debian's own: virtio as modules, which would fail the check
    checked = check_user_kernel(packed, arch="arm64")
    assert checked.config.source == "embedded in Image.gz (CONFIG_IKCONFIG)"
    assert checked.kernel.arch == "arm64"


# --------------------------------------------------------------------------------- modules and their release


def test_a_modules_tree_of_another_release_is_refused(cloud: KernelTree, tmp_path: Path) -> None:
    other = tmp_path / "lib" / "modules" / "6.1.0-57-rt-amd64"
    other.mkdir(parents=True)
    (other / "modules.dep").write_text("")
    with pytest.raises(GuestKernelError) as raised:
        check_user_kernel(cloud.kernel, tmp_path)
    assert str(raised.value).startswith(
        f"{cloud.kernel} is release 6.1.0-57-cloud-amd64, but modules tree {tmp_path} holds 6.1.0-57-rt-amd64"
    )


def test_a_modules_tree_without_modules_dep_or_lib_modules_is_refused(cloud: KernelTree, tmp_path: Path) -> None:
    with pytest.raises(GuestKernelError, match=r"has no lib/modules/: pass the INSTALL_MOD_PATH"):
        check_user_kernel(cloud.kernel, cloud.release_dir)  # lib/modules/<release> itself
    bare = tmp_path / "lib" / "modules" / cloud.release
    bare.mkdir(parents=True)
    with pytest.raises(GuestKernelError, match=rf"run `depmod -b {tmp_path} {cloud.release}`"):
        check_user_kernel(cloud.kernel, tmp_path)


def test_a_kernel_of_the_other_arch_is_refused(cloud: KernelTree, arm64_image: Path) -> None:
    with pytest.raises(GuestKernelError, match="is an x86_64 kernel, not arm64"):
        check_user_kernel(cloud.kernel, cloud.root, arch="arm64")
    with pytest.raises(GuestKernelError, match="is an arm64 kernel, not x86_64"):
        check_user_kernel(arm64_image, arch="x86_64")


def test_the_image_cache_key_follows_the_kernel_the_tree_and_the_config(cloud: KernelTree, tmp_path: Path) -> None:
    kernel = tmp_path / "boot" / cloud.kernel.name
    kernel.parent.mkdir()
    shutil.copyfile(cloud.kernel, kernel)
    config = tmp_path / "boot" / cloud.config.name
    shutil.copyfile(cloud.config, config)
    tree = tmp_path / "lib" / "modules" / cloud.release
    shutil.copytree(cloud.release_dir / "kernel" / "drivers" / "net", tree / "kernel" / "drivers" / "net")
    spec = spec_for("x86_64")

    def key() -> Path:
        return _image_dir(spec, tmp_path / "cache", kernel, tmp_path)

    first = key()
    assert key() == first
    config.write_text(config.read_text() + "# edited\n")
    after_config = key()
    dummy = tree / "kernel" / "drivers" / "net" / "dummy.ko"
    dummy.write_bytes(dummy.read_bytes() + b"\0")
    after_tree = key()
    with kernel.open("ab") as stream:
        stream.write(b"\0")
    after_kernel = key()
    assert len({first, after_config, after_tree, after_kernel}) == 4


# ----------------------------------------------------------------------------------------- through pytest

INNER = """
def test_never_runs(ktrace):
    raise AssertionError("the kernel was refused, no test may run")
"""


def test_the_plugin_refuses_a_bad_kernel_before_any_test_runs(pytester: pytest.Pytester, cloud: KernelTree) -> None:
    pytester.makepyfile(test_refused=INNER)
    result = pytester.runpytest_subprocess(f"--ktrace-vm-kernel={cloud.kernel}", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-ktrace: {cloud.kernel} ({cloud.release}) cannot run the qemu guest: its config "
            f"({cloud.config}) lacks 2 option(s) the guest needs:",
            "    CONFIG_VIRTIO_PCI=y (virtio PCI transport): it is CONFIG_VIRTIO_PCI=m, but no --ktrace-vm-modules*",
            "    CONFIG_VIRTIO_NET=y (virtio network card): it is CONFIG_VIRTIO_NET=m, but no --ktrace-vm-modules*",
        ]
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--ktrace-vm=arm64", "--ktrace-vm-kernel=KERNEL"],
            "--ktrace-vm='arm64' asks for an arm64 guest, but "
            "--ktrace-vm-kernel='KERNEL' is an x86_64 kernel; drop one of them",
        ),
        (["--ktrace-vm-modules=TREE"], "--ktrace-vm-modules='TREE' needs a kernel of that build*"),
        (
            ["--ktrace-vm-kernel=no/such/bzImage"],
            "--ktrace-vm-kernel='no/such/bzImage': */no/such/bzImage does not exist",
        ),
    ],
)
def test_usage_errors_name_the_option(pytester: pytest.Pytester, cloud: KernelTree, args: list[str], says: str) -> None:
    pytester.makepyfile(test_refused=INNER)
    args = [arg.replace("KERNEL", str(cloud.kernel)).replace("TREE", str(cloud.root)) for arg in args]
    says = says.replace("KERNEL", str(cloud.kernel)).replace("TREE", str(cloud.root))
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-ktrace: {says}"])


def test_a_marker_asking_for_the_other_arch_errors_only_its_test(pytester: pytest.Pytester, cloud: KernelTree) -> None:
    pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.ktrace(vm="arm64")
        def test_wants_arm64(ktrace):
            pass

        def test_not_a_ktrace_test():
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        f"--ktrace-vm-kernel={cloud.kernel}", f"--ktrace-vm-modules={cloud.root}", "--collect-only", "-q"
    )
    assert result.ret == pytest.ExitCode.OK  # the command line is fine: the kernel passes its checks
    result = pytester.runpytest_subprocess(
        f"--ktrace-vm-kernel={cloud.kernel}", f"--ktrace-vm-modules={cloud.root}", "-k", "wants_arm64"
    )
    result.assert_outcomes(errors=1, deselected=1)  # at the setup of its target, naming both
    result.stdout.fnmatch_lines(
        ["*@pytest.mark.ktrace(vm='arm64') asks for an arm64 guest, but --ktrace-vm-kernel=* is an x86_64 kernel*"]
    )


def test_ini_keys_take_paths_from_the_ini_files_directory(pytester: pytest.Pytester, cloud: KernelTree) -> None:
    project = pytester.mkdir("project")
    (project / "tests").mkdir()
    (project / "tests" / "test_nothing.py").write_text(INNER)
    kernel = os.path.relpath(cloud.kernel, project)
    modules = os.path.relpath(cloud.root, project)
    (project / "pytest.ini").write_text(f"[pytest]\nktrace_vm_kernel = {kernel}\nktrace_vm_modules = {modules}\n")
    result = pytester.runpytest_subprocess(str(project / "tests"), "--collect-only", "--rootdir", str(project))
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            f"ktrace: backend vm, target vm:x86_64:{cloud.kernel.name}: reached when a test first needs it",
            f"ktrace: kernel {cloud.kernel} (bzImage, {cloud.release}); modules {cloud.root}; config *; BTF: yes",
        ]
    )
