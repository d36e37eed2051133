"""--ktrace-vm-kernel and --ktrace-vm-modules through the plugin, booting a real second kernel on each arch: Debian's
6.1 cloud flavour (not the guests' own kernel; a bzImage on x86_64, an Image on arm64), with its modules tree as
`make modules_install` lays one out. A kprobe on a kernel function is hit by a command, and a module of that tree
is loaded by name."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from debian_kernels import KernelTree, unpacked_kernel

from ktrace_testing import qemu_pids
from pytest_ktrace.guests import build_user_image, qemu_available
from pytest_ktrace.guests._images import default_cache_root

pytestmark = pytest.mark.guest
pytest_plugins = ["pytester"]

SUITE = """
import os


def test_it_runs_the_users_kernel(ktrace):
    assert ktrace.target.release == "{release}"
    assert ktrace.run(["cat", "/proc/version"]).stdout.startswith("Linux version {release} ")


def test_a_kprobe_on_a_kernel_function_is_hit_by_a_command(ktrace):
    shown = ktrace.kprobe("version_proc_show")  # what reading /proc/version runs, once
    ktrace.run(["cat", "/proc/version"], check=True)
    shown.assert_called_once()
    assert [event.comm for event in shown.events] == ["cat"]


def test_a_module_of_its_tree_loads_by_name(ktrace):
    setup = ktrace.kprobe("dummy:dummy_setup")  # the module's function, before the module exists
    module = ktrace.load_module("dummy")
    assert module.name == "dummy" and module.ours and module.path is None
    setup.assert_called_once()  # dummy's init creates one device, numdummies=1
    assert ktrace.run(["cat", "/sys/module/dummy/initstate"]).stdout.strip() == "live"


def test_the_module_was_unloaded_after_its_test(ktrace):
    assert ktrace.run(["ls", "/sys/module/dummy"]).returncode != 0
    assert ktrace.run(["sh", "-c", "mount | grep ' /lib/modules/{release} '"]).stdout.split()[4] in ("ext2", "ext4")
    print("QEMU_CHILDREN=" + ",".join(qemu_children()))


def qemu_children():
    mine = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{{entry}}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{{entry}}/comm") as comm:
                if comm.read().startswith("qemu-system") and parent == os.getpid():
                    mine.append(entry)
        except (OSError, ValueError, IndexError):
            pass
    return mine
"""


CLOUD_KERNELS = {"x86_64": ("linux-image-cloud-amd64", "bzImage"), "arm64": ("linux-image-cloud-arm64", "Image")}


@pytest.fixture(scope="module", params=sorted(CLOUD_KERNELS))
def cloud_arch(request: pytest.FixtureRequest) -> str:
    arch: str = request.param
    return arch


@pytest.fixture(scope="module")
def cloud(cloud_arch: str) -> KernelTree:
    unavailable = qemu_available(cloud_arch)
    if unavailable is not None:
        pytest.skip(unavailable)
    return unpacked_kernel(CLOUD_KERNELS[cloud_arch][0], cloud_arch)


@pytest.fixture(scope="module")
def cache_root() -> Path:
    return default_cache_root()  # read before pytester points HOME at its own directory


def test_the_cloud_kernel_boots_with_its_modules(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, cloud_arch: str, cloud: KernelTree, cache_root: Path
) -> None:
    # the inner run shares the image cache, so the image it builds is the one the next test finds
    monkeypatch.setenv("KTRACE_CACHE_DIR", str(cache_root))
    pytester.makepyfile(test_cloud_kernel=SUITE.format(release=cloud.release))
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "-s", f"--ktrace-vm-kernel={cloud.kernel}", f"--ktrace-vm-modules={cloud.root}"
    )
    print(f"the run, image build (if not cached) and boot included: {time.monotonic() - started:.1f}s")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            f"ktrace: backend vm, target vm:{cloud_arch}:{cloud.kernel.name}: reached when a test first needs it",
            f"ktrace: kernel {cloud.kernel} ({CLOUD_KERNELS[cloud_arch][1]}, {cloud.release}); modules {cloud.root}; "
            f"config {cloud.config}; BTF: yes",
            "*",
            f"ktrace: ktrace-vm-{cloud_arch} (backend vm): Linux {cloud.release} *; features *kprobes*; 4 test(s)",
        ]
    )
    [line] = [line for line in result.outlines if "QEMU_CHILDREN=" in line]
    guests = {int(pid) for pid in line.split("QEMU_CHILDREN=", 1)[1].split(",") if pid}
    assert len(guests) == 1, "the run boots one guest"
    assert not guests & qemu_pids(), "the guest must be powered off when the run ends"


def test_the_built_image_is_cached_with_its_modules_disk(cloud: KernelTree, cache_root: Path) -> None:
    image = build_user_image(cloud.kernel, cloud.root, cache_dir=cache_root)  # built by the run above, or now
    started = time.monotonic()
    again = build_user_image(cloud.kernel, cloud.root, cache_dir=cache_root)
    cached_seconds = time.monotonic() - started
    assert again == image
    assert image.kernel_release == cloud.release and image.kernel_source == cloud.kernel
    assert image.modules_disk is not None and image.modules_disk.stat().st_size > 0
    assert image.config_source == str(cloud.config) and image.btf is True
    print(f"cached build_user_image: {cached_seconds:.2f}s")
