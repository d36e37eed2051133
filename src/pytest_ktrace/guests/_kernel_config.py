"""A user kernel's config, found and checked against what the guest needs before anything boots.

Where the config comes from, first found wins: the one embedded in the kernel (CONFIG_IKCONFIG), a ``.config`` or
``config-<release>`` next to the kernel file, the ``.config`` of the build tree the file was built in
(``arch/<arch>/boot/<image>``), the ``build`` directory of the modules tree. Every option the guest needs and the
config lacks is named in one error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .._errors import GuestKernelError

__all__ = [
    "MODULE_OF",
    "GuestNeed",
    "KernelConfig",
    "config_candidates",
    "guest_needs",
    "missing_options",
    "no_config_error",
    "parse_config",
]

# The module a tristate option builds, for options the guest can take as a module from the modules tree.
MODULE_OF = {
    "CONFIG_VIRTIO_PCI": "virtio_pci",
    "CONFIG_VIRTIO_NET": "virtio_net",
    "CONFIG_VIRTIO_BLK": "virtio_blk",
    "CONFIG_EXT4_FS": "ext4",
    "CONFIG_EXT2_FS": "ext2",
}


@dataclass(frozen=True)
class GuestNeed:
    """One thing the guest needs: any of ``options`` set (``=y``; ``=m`` too for options in MODULE_OF when the
    modules tree has that module)."""

    options: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class KernelConfig:
    """A kernel's options (``CONFIG_X`` -> ``y``/``m``/value) and where they were read."""

    options: Mapping[str, str]
    source: str
    text: str

    @property
    def btf(self) -> bool:
        return self.options.get("CONFIG_DEBUG_INFO_BTF") == "y"


def parse_config(text: str, source: str) -> KernelConfig:
    options: dict[str, str] = {}
    for line in text.splitlines():
        name, equals, value = line.partition("=")
        if equals and name.startswith("CONFIG_"):
            options[name] = value.strip().strip('"')
    return KernelConfig(options, source, text)


_COMMON = (
    GuestNeed(("CONFIG_BLK_DEV_INITRD",), "boots from the plugin's initramfs"),
    GuestNeed(("CONFIG_RD_GZIP",), "the initramfs is gzip-compressed"),
    GuestNeed(("CONFIG_DEVTMPFS",), "init mounts /dev as devtmpfs"),
    GuestNeed(("CONFIG_BINFMT_ELF",), "runs busybox and dropbear"),
    GuestNeed(("CONFIG_BINFMT_SCRIPT",), "init is a #! script"),
    GuestNeed(("CONFIG_PROC_FS",), "init mounts /proc"),
    GuestNeed(("CONFIG_SYSFS",), "init mounts /sys"),
    GuestNeed(("CONFIG_UNIX98_PTYS",), "init mounts devpts for dropbear"),
    GuestNeed(("CONFIG_INET",), "SSH reaches the guest over TCP/IP"),
    GuestNeed(("CONFIG_PCI",), "the network card is a virtio PCI device"),
    GuestNeed(("CONFIG_VIRTIO_PCI",), "virtio PCI transport"),
    GuestNeed(("CONFIG_VIRTIO_NET",), "virtio network card"),
    GuestNeed(("CONFIG_FTRACE",), "tracing support"),
    GuestNeed(("CONFIG_TRACING",), "tracefs"),
    GuestNeed(("CONFIG_KPROBES",), "kprobes"),
    GuestNeed(("CONFIG_KPROBE_EVENTS",), "kprobes through tracefs"),
    GuestNeed(("CONFIG_UPROBE_EVENTS",), "uprobes through tracefs"),
)
_BY_ARCH = {
    "x86_64": (
        GuestNeed(("CONFIG_SERIAL_8250",), "the console is the PC's serial port ttyS0"),
        GuestNeed(("CONFIG_SERIAL_8250_CONSOLE",), "the console is the PC's serial port ttyS0"),
    ),
    "arm64": (
        GuestNeed(("CONFIG_SERIAL_AMBA_PL011",), "the console is the virt machine's PL011 ttyAMA0"),
        GuestNeed(("CONFIG_SERIAL_AMBA_PL011_CONSOLE",), "the console is the virt machine's PL011 ttyAMA0"),
        GuestNeed(("CONFIG_PCI_HOST_GENERIC",), "the virt machine's PCIe host bridge"),
    ),
}
_WITH_MODULES = (
    GuestNeed(("CONFIG_MODULES",), "loadable modules"),
    GuestNeed(("CONFIG_MODULE_UNLOAD",), "a test's modules are unloaded after it"),
    GuestNeed(("CONFIG_VIRTIO_BLK",), "the modules tree is a virtio disk"),
    GuestNeed(("CONFIG_EXT4_FS", "CONFIG_EXT2_FS"), "the modules disk is an ext2 filesystem"),
)


def guest_needs(arch: str, *, modules: bool) -> tuple[GuestNeed, ...]:
    return (*_COMMON, *_BY_ARCH[arch], *(_WITH_MODULES if modules else ()))


def _unmet(need: GuestNeed, config: KernelConfig, available_modules: frozenset[str], have_tree: bool) -> str:
    """'' when the need is met, else how the config falls short of it."""
    values = [config.options.get(option) for option in need.options]
    if "y" in values:
        return ""
    as_modules = [(option, MODULE_OF.get(option)) for option, value in zip(need.options, values) if value == "m"]
    if any(module in available_modules for _, module in as_modules if module):
        return ""
    wanted = " or ".join(f"{option}=y" for option in need.options)
    if as_modules:
        option, module = as_modules[0]
        if module is None:
            return f"{wanted} ({need.why}): it is {option}=m, and the guest needs it built in"
        where = f"the modules tree has no {module}.ko" if have_tree else "no --ktrace-vm-modules tree provides it"
        return f"{wanted} ({need.why}): it is {option}=m, but {where}"
    return f"{wanted} ({need.why})"


def missing_options(
    config: KernelConfig, needs: Sequence[GuestNeed], available_modules: frozenset[str], *, have_tree: bool
) -> list[tuple[GuestNeed, str]]:
    """Every need the config does not meet, with how it falls short (empty: the kernel can run the guest).
    ``available_modules``: the module names the modules tree has (``have_tree``: there is a tree)."""
    unmet = ((need, _unmet(need, config, available_modules, have_tree)) for need in needs)
    return [(need, problem) for need, problem in unmet if problem]


def config_candidates(kernel: Path, release: Optional[str], release_dir: Optional[Path]) -> list[Path]:
    """The files that may hold the kernel's config, in the order they are tried (after the embedded one)."""
    directory = kernel.parent
    candidates = [directory / ".config"]
    if release:
        candidates.append(directory / f"config-{release}")
    # make leaves the image in <tree>/arch/<arch>/boot/ and the config at <tree>/.config
    if directory.name == "boot" and directory.parent.parent.name == "arch":
        candidates.append(directory.parent.parent.parent / ".config")
    if release_dir is not None:
        candidates.append(release_dir / "build" / ".config")
    return candidates


def no_config_error(kernel: Path, embedded_reason: str, looked: Sequence[Path]) -> GuestKernelError:
    places = "\n".join(f"    {path}" for path in looked)
    return GuestKernelError(
        f"{kernel}: cannot check the kernel before booting it: no config found. Looked for\n"
        f"    the config embedded in it (CONFIG_IKCONFIG): {embedded_reason}\n{places}\n"
        "  Put the kernel's .config next to it (as .config or config-<release>), or build it with CONFIG_IKCONFIG=y.",
        kernel=str(kernel),
    )
