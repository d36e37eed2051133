"""Names, not offsets, on real kprobes: the Debian 6.1 guests' BTF, fetched over SSH and cached on disk,
resolves parameters and struct members, types return values, and finds module functions. The same tests run
unchanged on x86_64 and arm64, whose struct layouts and argument registers differ. (The __setup_irq suite by
name is in examples/test_setup_irq.py, replayed from its cassettes by tests/fake/test_replay.py.)"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ktrace_testing import run_pytest
from pytest_ktrace.guests import ARCHES, build_image, qemu_available

pytest_plugins = ["pytester"]

on_each_guest = pytest.mark.parametrize(
    "arch", [pytest.param(arch, marks=pytest.mark.ktrace(vm=arch), id=arch) for arch in ARCHES]
)


@on_each_guest
def test_a_long_return_is_signed_and_a_user_string_is_read_by_name(ktrace, arch: str) -> None:
    opened = ktrace.kprobe("do_sys_openat2", path="filename:ustring", flags="how->flags")
    done = ktrace.kretprobe("do_sys_openat2", ret="$retval")  # long in BTF: s64, so -ENOENT reads -2
    assert dict(done.spec.fetchargs) == {"ret": "$retval:s64"}
    assert dict(opened.spec.fetchargs)["path"] == "+0($arg2):ustring"
    result = ktrace.run(["cat", "/nonexistent/ktrace-btf"])
    assert result.returncode != 0
    opened.assert_any_call(path="/nonexistent/ktrace-btf", flags=lambda flags: (flags & 0o3) == 0)  # O_RDONLY
    done.assert_any_return(-2)


@on_each_guest
def test_module_functions_by_name(ktrace, arch: str) -> None:
    xmit = ktrace.kprobe("virtio_net:start_xmit", dev="dev->name:string", len="skb->len", filter='dev == "eth0"')
    # without the module: not in vmlinux, so /proc/kallsyms says which module's BTF has it
    found = ktrace.kprobe("start_xmit", dev="dev->name:string", len="skb->len")
    assert found.spec.fetchargs == xmit.spec.fetchargs
    line = xmit.spec.render().split(" ", 1)[1]
    assert line.startswith("virtio_net:start_xmit dev=+0($arg2):string len=+"), line  # net_device.name[16] at 0
    ktrace.run(["echo", "the answer leaves through virtio_net"])  # the SSH reply is transmitted by start_xmit
    xmit.assert_any_call(dev="eth0", len=lambda length: length > 0)
    found.assert_any_call(dev="eth0")


INNER = """
import pytest
from pytest_ktrace.btf._names import kernel_btf

@pytest.mark.ktrace(vm="x86_64")
def test_by_name(ktrace):
    setup = ktrace.kprobe("__setup_irq", irq="irq", name="new->name:string", inner="desc->irq_data.irq")
    done = ktrace.kretprobe("__setup_irq")
    ktrace.run(["sh", "-c", "echo i8042 > /sys/bus/platform/drivers/i8042/unbind && "
                "echo i8042 > /sys/bus/platform/drivers/i8042/bind"])
    setup.assert_any_call(name="i8042", irq=1)
    assert all(event["inner"] == event["irq"] for event in setup.events)
    done.assert_returned(0)

@pytest.mark.ktrace(vm="x86_64")
def test_btf_fetched_once(ktrace):
    ktrace.kprobe("__setup_irq", irq="irq")
    digest = ktrace.run(["sha256sum", "/sys/kernel/btf/vmlinux"]).stdout.split()[0]  # replayed on the fake
    if ktrace.target.backend != "fake":
        btf = kernel_btf(getattr(ktrace.backend, "inner", ktrace.backend))
        print(f"BTF fetched={btf.fetched} source={btf.source} sha256={digest}")
"""


def _pytest(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_pytest(cwd, "-s", *args, env=env)


def test_recorded_on_a_guest_replayed_on_the_fake_with_the_btf_cached(tmp_path: Path) -> None:
    unavailable = qemu_available("x86_64")
    if unavailable is not None:
        pytest.skip(unavailable)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_names.py").write_text(INNER)
    cache = tmp_path / "btf-cache"
    env = {**os.environ, "KTRACE_BTF_CACHE_DIR": str(cache)}

    # 1. on the guest, recording: the BTF crosses once (two tests, one target) and is cached by build id
    recorded = _pytest(suite, "test_names.py", "--ktrace-record", env=env)
    assert recorded.returncode == 0, recorded.stdout[-4000:]
    [line] = re.findall(r"BTF fetched=(\d+) source=(\S+) sha256=([0-9a-f]{64})", recorded.stdout)
    fetched, source, digest = int(line[0]), Path(line[1]), line[2]
    [cached] = list(cache.iterdir())
    assert source == cached and fetched == cached.stat().st_size
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest, "the cache holds the guest's BTF, byte for byte"
    image = build_image("x86_64").kernel  # the guest --ktrace-vm=x86_64 booted
    if shutil.which("readelf"):  # the build id of the kernel the guest booted, as binutils reads it
        notes = subprocess.run(["readelf", "-n", str(image)], capture_output=True, text=True, check=True).stdout
        assert cached.name == f"6.1.0-57-amd64-{re.search(r'Build ID: ([0-9a-f]+)', notes).group(1)}.btf"
    cassette = suite / "cassettes" / "test_names" / "test_by_name.json"
    assert '"new->name:string": "+0(+80($arg3)):string"' in cassette.read_text()
    assert '"returns": "s32"' in cassette.read_text()

    # 2. on the fake: no guest, no BTF; the cassette resolves the names
    replayed = _pytest(
        suite, "test_names.py", "--ktrace-backend=fake", env={**env, "KTRACE_BTF_CACHE_DIR": "/nonexistent"}
    )
    assert replayed.returncode == 0, replayed.stdout[-4000:]
    assert "2 passed" in replayed.stdout

    # 3. on a guest again: the cached BTF is used, nothing but the build id crosses
    again = _pytest(suite, "test_names.py", "-k", "fetched_once", env=env)
    assert again.returncode == 0, again.stdout[-4000:]
    assert f"BTF fetched=0 source={cached} sha256={digest}" in again.stdout

    # 4. a name the cassette did not record: stale, as a changed probe is
    (suite / "test_names.py").write_text(INNER.replace('inner="desc->irq_data.irq"', 'inner="desc->irq_data.hwirq"'))
    stale = _pytest(suite, "test_names.py", "--ktrace-backend=fake", "-k", "by_name", env=env)
    assert stale.returncode == 1
    assert "cassette is stale: re-record on hardware" in stale.stdout
    assert "'desc->irq_data.hwirq' (at entry) was not resolved from BTF" in stale.stdout
