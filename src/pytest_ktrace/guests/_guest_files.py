"""The files the guest's initramfs carries besides the Debian binaries, and the console protocol of its init.

The init (busybox ash as PID 1) speaks to the host only through the serial console, which qemu writes to a
file the host owns. It prints the dropbear host public key between two markers before starting dropbear, so
the host can pin that key instead of trusting whatever answers on the forwarded port, then a ready marker once
dropbear listens.
"""

from __future__ import annotations

from typing import Mapping

__all__ = [
    "FAILED_MARKER",
    "HOSTKEY_BEGIN_MARKER",
    "HOSTKEY_END_MARKER",
    "MODULES_MOUNT_PATH",
    "MODULE_LIST_PATH",
    "READY_MARKER",
    "SETUP_IRQ_TRIGGER_PATH",
    "etc_files",
    "init_script",
    "setup_irq_trigger_script",
]

HOSTKEY_BEGIN_MARKER = "KTRACE-GUEST-HOSTKEY-BEGIN"
HOSTKEY_END_MARKER = "KTRACE-GUEST-HOSTKEY-END"
READY_MARKER = "KTRACE-GUEST-READY"
FAILED_MARKER = "KTRACE-GUEST-FAILED:"

# Absolute .ko paths inside the guest, one a line, in load order (dependencies first).
MODULE_LIST_PATH = "etc/ktrace/modules"
# Where init mounts the modules disk, and its filesystem type (absent: no modules disk).
MODULES_MOUNT_PATH = "etc/ktrace/modules-mount"
# Rebinds the arch's IRQ test device so that __setup_irq runs (i8042 on x86_64, the PL031 RTC on arm64).
SETUP_IRQ_TRIGGER_PATH = "usr/bin/ktrace-trigger-setup-irq"

_HOST_KEY = "/etc/dropbear/dropbear_ed25519_host_key"

_INIT_TEMPLATE = r"""#!/bin/busybox sh
# PID 1 of a pytest-ktrace guest. It must never exit (that panics the kernel), so failures park in fail().
/bin/busybox --install -s /bin
/bin/busybox --install -s /sbin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

fail() {
    echo "@FAILED@ $*"
    while :; do sleep 3600; done
}

mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "cannot mount /dev"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts || fail "cannot mount /dev/pts"
mount -t tracefs tracefs /sys/kernel/tracing || fail "cannot mount tracefs at /sys/kernel/tracing"
# debugfs is optional (some tools still look for /sys/kernel/debug/tracing).
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname -F /etc/hostname

while read -r module; do
    [ -n "$module" ] || continue
    insmod "$module" || fail "insmod $module failed"
done < /@MODULE_LIST@

# A kernel the user built brings its modules tree on a read-only virtio disk: "<fstype> <directory>".
if [ -s /@MODULES_MOUNT@ ]; then
    read -r fstype modules_dir < /@MODULES_MOUNT@
    tries=0
    until [ -b /dev/vda ]; do
        tries=$((tries + 1))
        [ "$tries" -le 250 ] || fail "no /dev/vda (the modules disk) after loading the virtio-blk modules"
        usleep 20000
    done
    mkdir -p "$modules_dir"
    mount -t "$fstype" -o ro /dev/vda "$modules_dir" || fail "cannot mount the modules disk on $modules_dir"
fi

ip link set lo up
tries=0
until [ -e /sys/class/net/eth0 ]; do
    tries=$((tries + 1))
    [ "$tries" -le 250 ] || fail "no eth0 after loading the virtio-net modules"
    usleep 20000
done
# qemu user networking: the guest is 10.0.2.15, forwarded connections come from 10.0.2.2. No default route:
# the guest has no business reaching anything else (the netdev is also restrict=on).
ip addr add 10.0.2.15/24 dev eth0 || fail "cannot configure eth0"
ip link set eth0 up || fail "cannot bring eth0 up"

# A fresh host key per boot, shown on the console (trusted: only the host reads it) before anyone connects.
mkdir -p /etc/dropbear
dropbearkey -t ed25519 -f @HOST_KEY@ >/dev/null 2>&1 || fail "dropbearkey could not generate the host key"
public_key=$(dropbearkey -y -f @HOST_KEY@ 2>/dev/null | grep '^ssh-ed25519 ' | cut -d ' ' -f 1,2)
[ -n "$public_key" ] || fail "dropbearkey printed no public key"
echo "@HOSTKEY_BEGIN@"
echo "$public_key"
echo "@HOSTKEY_END@"

# -s: key authentication only; -j -k: no port forwarding through the guest.
dropbear -r @HOST_KEY@ -s -j -k -p 22 || fail "dropbear did not start"
# dropbear forks before it listens: report ready only once port 22 (0x0016) is in LISTEN (0A) state.
tries=0
listening='^ *[0-9]+: [0-9A-F]+:0016 [0-9A-F]+:0000 0A '
until cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -qE "$listening"; do
    tries=$((tries + 1))
    [ "$tries" -le 500 ] || fail "dropbear is not listening on port 22"
    usleep 10000
done
echo "@READY@"

# ash reaps any child while it waits, so orphans reparented to PID 1 do not pile up as zombies.
while :; do sleep 3600; done
"""

_TRIGGER_TEMPLATE = r"""#!/bin/sh
# Unbinds and rebinds @DEVICE@, whose driver requests its IRQ at probe time: each run calls __setup_irq.
set -e
@BODY@"""


def init_script() -> str:
    replacements = {
        "@FAILED@": FAILED_MARKER,
        "@MODULE_LIST@": MODULE_LIST_PATH,
        "@MODULES_MOUNT@": MODULES_MOUNT_PATH,
        "@HOST_KEY@": _HOST_KEY,
        "@HOSTKEY_BEGIN@": HOSTKEY_BEGIN_MARKER,
        "@HOSTKEY_END@": HOSTKEY_END_MARKER,
        "@READY@": READY_MARKER,
    }
    text = _INIT_TEMPLATE
    for placeholder, value in replacements.items():
        text = text.replace(placeholder, value)
    return text


def setup_irq_trigger_script(device_name: str, body: str) -> str:
    return _TRIGGER_TEMPLATE.replace("@DEVICE@", device_name).replace("@BODY@", body)


def etc_files(hostname: str) -> Mapping[str, str]:
    """Minimal account data for dropbear: root without a usable password ('*'), busybox sh as its shell."""
    return {
        "etc/passwd": "root:*:0:0:root:/root:/bin/sh\n",
        "etc/group": "root:x:0:\ntty:x:5:\n",
        "etc/shells": "/bin/sh\n",
        "etc/hostname": hostname + "\n",
        "etc/hosts": f"127.0.0.1 localhost {hostname}\n",
    }
