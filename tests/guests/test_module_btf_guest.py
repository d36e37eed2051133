"""BTF names on a module's functions in the qemu guests (real kprobes, Debian 6.1 kernels): the example driver
``examples/driver/ktbar``, built with BTF against each guest kernel's own by ``scripts/build-example-driver``.

A probe defined before ``load_module()`` takes its names from the ``.ko``'s BTF (the module is not loaded yet); a
probe defined after takes them from the kernel's ``/sys/kernel/btf/ktbar``. The values are checked against what
the kernel itself reports: the irqaction ``__setup_irq`` receives, the module's log line and its trace event."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SUITE = """
import os
import re

import pytest

KO = os.environ["KTBAR_KO"]
pytestmark = pytest.mark.ktrace(vm=os.environ["KTBAR_ARCH"])
NAMED = {"irq": "$arg1:u32", "name": "+0($arg2):string"}  # int ktbar_request(unsigned int irq, const char *irq_name)
# before the module is loaded the kernel takes no $argN on its functions: the same arguments by register
FIRST, SECOND = {"x86_64": ("%di", "%si"), "arm64": ("%x0", "%x1")}[os.environ["KTBAR_ARCH"]]


def test_names_defined_before_the_load_come_from_the_ko(ktrace):
    request = ktrace.kprobe("ktbar:ktbar_request", irq="irq", name="irq_name:string")
    done = ktrace.kretprobe("ktbar:ktbar_request")
    setup = ktrace.kprobe("__setup_irq", irq="irq", name="new->name:string")
    assert dict(request.spec.fetchargs) == {"irq": "irq", "name": "irq_name:string"}  # ktbar is not loaded yet
    ktrace.load_module(KO, name="named early")
    assert dict(request.spec.fetchargs) == {"irq": f"{FIRST}:u32", "name": f"+0({SECOND}):string"}
    assert dict(done.spec.fetchargs) == {"ret": "$retval:s32"}
    request.assert_called_once_with(name="named early")
    irq = request.events[0].fields["irq"]
    logged = ktrace.kernel_log.assert_printed(r'ktbar: irq (\\d+) requested as "named early"')
    assert int(re.search(r"irq (\\d+)", logged.text).group(1)) == irq
    setup.where(name="named early").assert_called_once_with(irq=irq)
    done.assert_returned(0)
    # the kernel took the module's BTF as its own: it was written against this kernel's
    assert ktrace.run(["test", "-s", "/sys/kernel/btf/ktbar"]).returncode == 0
    ktrace.kernel_log.assert_not_printed(r"failed to validate module \\[ktbar\\] BTF")


def test_names_defined_after_the_load_come_from_the_kernel(ktrace):
    ktrace.load_module(KO, name="named late")
    request = ktrace.kprobe("ktbar:ktbar_request", irq="irq", name="irq_name:string")
    found = ktrace.kprobe("ktbar_request", irq="irq")  # no module named: /proc/kallsyms places it in ktbar
    event = ktrace.tracepoint("ktbar:ktbar_request")
    assert dict(request.spec.fetchargs) == NAMED and dict(found.spec.fetchargs) == {"irq": NAMED["irq"]}
    ktrace.run(["sh", "-c", "echo 1 > /sys/module/ktbar/parameters/rerequest"], check=True)
    request.assert_called_once_with(name="named late")
    irq = request.events[0].fields["irq"]
    event.assert_called_once_with(irq=irq, name="named late", ret=0)
    found.assert_called_once_with(irq=irq)


def test_names_of_a_module_nothing_loads_are_an_error_at_arming(ktrace):
    import pytest_ktrace

    ktrace.kprobe("ktbar:ktbar_request", irq="irq")
    with pytest.raises(pytest_ktrace.BtfUnavailable, match=r"module ktbar is not loaded on .*did not load it"):
        ktrace.arm()
"""


@pytest.fixture(scope="module")
def ktbar_modules() -> dict[str, Path]:
    out = subprocess.run(
        [str(ROOT / "scripts" / "build-example-driver")], capture_output=True, text=True, timeout=900, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    built = {
        arch: Path(path) for arch, path in re.findall(r"^ktbar\.ko for (\S+) \(.*?\).*?: (\S+)$", out.stdout, re.M)
    }
    assert set(built) >= {"x86_64", "arm64"}, out.stdout
    # the script checks each module's BTF on its kernel's and prints the function the suite probes
    assert out.stdout.count("BTF: int ktbar_request(unsigned int irq, const char *irq_name)") == 2, out.stdout
    return built


@pytest.mark.guest
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_btf_names_of_the_example_driver_in_the_guest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ktbar_modules: dict[str, Path], arch: str
) -> None:
    monkeypatch.setenv("KTBAR_KO", str(ktbar_modules[arch]))
    monkeypatch.setenv("KTBAR_ARCH", arch)
    pytester.makepyfile(test_ktbar_names=SUITE)
    recorded = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--ktrace-record")
    recorded.assert_outcomes(passed=3)
    # the cassettes keep what the BTF answered (from the .ko, then from the kernel), and the fake's kernel has
    # ktbar only once the replayed insmod loads it: the probes are written as they were on the guest
    replayed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--ktrace-backend=fake")
    replayed.assert_outcomes(passed=3)
