"""What differs between the guest architectures: Debian names, qemu machine, console, devices."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ARCHES", "ArchSpec", "accelerator_args", "spec_for"]

ARCHES = ("x86_64", "arm64")


@dataclass(frozen=True)
class ArchSpec:
    name: str
    debian_arch: str
    uname_machine: str
    gnu_triplet: str
    qemu_binary: str
    qemu_package: str
    console_device: str
    # Machine/CPU options used under TCG; KVM replaces the CPU model (see accelerator_args).
    tcg_machine_args: tuple[str, ...]
    # Modules the guest needs (by module name); those built into the kernel are skipped, the rest are loaded
    # together with their modinfo dependencies.
    needed_modules: tuple[str, ...]
    # Shell (busybox ash) that unbinds and rebinds a device whose driver calls request_irq() at probe time, so
    # __setup_irq runs without touching the NIC that carries SSH.
    setup_irq_trigger: str
    # Name of the device in /proc/interrupts whose IRQs the trigger re-requests.
    setup_irq_device_name: str


_X86_64 = ArchSpec(
    name="x86_64",
    debian_arch="amd64",
    uname_machine="x86_64",
    gnu_triplet="x86_64-linux-gnu",
    qemu_binary="qemu-system-x86_64",
    qemu_package="qemu-system-x86",
    console_device="ttyS0",
    tcg_machine_args=("-accel", "tcg", "-cpu", "max"),
    # The PC machine's i8042 keyboard controller requests IRQ 1 and 12 when its driver binds.
    needed_modules=("virtio_pci", "virtio_net", "i8042"),
    setup_irq_trigger=(
        "echo i8042 > /sys/bus/platform/drivers/i8042/unbind\necho i8042 > /sys/bus/platform/drivers/i8042/bind\n"
    ),
    setup_irq_device_name="i8042",
)

_ARM64 = ArchSpec(
    name="arm64",
    debian_arch="arm64",
    uname_machine="aarch64",
    gnu_triplet="aarch64-linux-gnu",
    qemu_binary="qemu-system-aarch64",
    qemu_package="qemu-system-arm",
    console_device="ttyAMA0",
    # `-cpu max` emulates pointer authentication, which makes TCG about four times slower; a57 has none.
    tcg_machine_args=("-M", "virt", "-accel", "tcg", "-cpu", "cortex-a57"),
    # The virt machine's PL031 RTC requests its IRQ when rtc-pl031 binds.
    needed_modules=("virtio_pci", "virtio_net", "rtc_pl031"),
    setup_irq_trigger=(
        "driver=/sys/bus/amba/drivers/rtc-pl031\n"
        'device=$(cd "$driver" && ls -d *.pl031 | head -n 1)\n'
        '[ -n "$device" ] || { echo "no pl031 device bound to rtc-pl031" >&2; exit 1; }\n'
        'echo "$device" > "$driver/unbind"\n'
        'echo "$device" > "$driver/bind"\n'
    ),
    setup_irq_device_name="rtc-pl031",
)

_SPECS = {spec.name: spec for spec in (_X86_64, _ARM64)}


def spec_for(arch: str) -> ArchSpec:
    try:
        return _SPECS[arch]
    except KeyError:
        raise ValueError(f"unknown guest arch {arch!r}; choose one of {', '.join(ARCHES)}") from None


def _real_kvm_available() -> bool:
    # /dev/kvm alone is not enough: a PVM host (kvm_pvm) offers /dev/kvm but cannot run a normal guest CPU.
    has_hardware_kvm = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
    return has_hardware_kvm and os.access("/dev/kvm", os.R_OK | os.W_OK)


def accelerator_args(spec: ArchSpec) -> tuple[str, ...]:
    """qemu options choosing KVM for a same-arch x86_64 guest on a real KVM host, TCG otherwise."""
    if spec.name == "x86_64" and platform.machine() == "x86_64" and _real_kvm_available():
        return ("-enable-kvm", "-cpu", "host")
    return spec.tcg_machine_args
