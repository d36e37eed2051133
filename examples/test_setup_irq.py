"""A driver regression suite on real kernels: does re-binding a device register its interrupt?

`__setup_irq(irq, desc, new)` is where every request_irq() lands. The test unbinds and rebinds a platform device
(i8042 on x86_64, the PL031 RTC on the arm64 `virt` machine), so the kernel really frees and requests the IRQ,
and checks the arguments (`%x0..%x2` on arm64, `$argN` portably), the irqaction's name read through a struct
offset (`+0(+80(new)):string`, `irqaction->name` on 64-bit 6.1) and the return value. Or by name
(`test_rebind_by_name`): `irq="irq"`, `name="new->name:string"`, resolved from the guest kernel's BTF.

Runs on disposable qemu guests (stock Debian 6.1 kernels): `pytest examples/test_setup_irq.py`, or against a
board: `pytest examples/test_setup_irq.py --ktrace-host=arm-board` with the board's device in DEVICES.
"""

from __future__ import annotations

import pytest

from pytest_ktrace import ProbeRejected, UnknownSymbol, UnsupportedFetchArg
from pytest_ktrace.btf import UnknownMember, UnknownParameter

# arch -> (driver directory, device, irqaction name the driver requests)
DEVICES = {
    "x86_64": ("/sys/bus/platform/drivers/i8042", "i8042", "i8042"),
    "arm64": ("/sys/bus/amba/drivers/rtc-pl031", "9010000.pl031", "rtc-pl031"),
}

on_each_guest = pytest.mark.parametrize(
    "arch",
    [pytest.param(arch, marks=pytest.mark.ktrace(vm=arch), id=arch) for arch in DEVICES],
)


def rebind(ktrace, arch: str) -> None:
    driver, device, _ = DEVICES[arch]
    result = ktrace.run(["sh", "-c", f'echo "$1" > {driver}/unbind && echo "$1" > {driver}/bind', "sh", device])
    assert result.returncode == 0, result.stderr


@on_each_guest
def test_rebind_registers_the_irq(ktrace, arch):
    _, _, irq_name = DEVICES[arch]
    setup = ktrace.kprobe("__setup_irq", irq="$arg1:u32", name="+0(+80($arg3)):string")
    done = ktrace.kretprobe("__setup_irq", ret="$retval:s32")

    rebind(ktrace, arch)

    setup.assert_any_call(name=irq_name, irq=lambda irq: irq > 0)
    done.assert_returned(0)
    ktrace.assert_order(setup, done)
    ktrace.assert_latency(setup, done, max_us=1_000_000)


@on_each_guest
def test_rebind_by_name(ktrace, arch):
    """The same probes by name: parameters and struct members are resolved from the kernel's BTF, so the offsets
    (80 into struct irqaction; 44 or 100 into struct irq_desc, x86_64 or arm64) are the kernel's own."""
    _, _, irq_name = DEVICES[arch]
    setup = ktrace.kprobe("__setup_irq", irq="irq", name="new->name:string", inner="desc->irq_data.irq")
    done = ktrace.kretprobe("__setup_irq")  # ret typed from BTF: int, so s32 (an error reads -22, not 4294967274)

    rebind(ktrace, arch)

    setup.assert_any_call(name=irq_name, irq=lambda irq: irq > 0)
    assert setup.events and all(event["inner"] == event["irq"] for event in setup.events)
    done.assert_returned(0)
    ktrace.assert_order(setup, done)


@on_each_guest
def test_names_are_checked_against_the_kernel(ktrace, arch):
    with pytest.raises(UnknownMember, match=r"no member 'irq_dat' \(did you mean 'irq_data'"):
        ktrace.kprobe("__setup_irq", inner="desc->irq_dat.irq")
    with pytest.raises(UnknownParameter, match=r"its parameters: irq, desc, new"):
        ktrace.kprobe("__setup_irq", irq="irqq")
    with pytest.raises(UnsupportedFetchArg, match=r"Record it with an entry probe"):
        ktrace.kretprobe("__setup_irq", irq="irq")  # Linux 6.1 keeps no entry arguments for return probes


@pytest.mark.ktrace(vm="arm64")
def test_arm64_registers_by_name(ktrace):
    """The reference document's own spelling: raw registers and a member offset."""
    setup = ktrace.kprobe("__setup_irq", irq="%x0:u32", desc="%x1:x64", new="%x2:x64", name="+0(+80(%x2)):string")
    rebind(ktrace, "arm64")
    setup.assert_any_call(name="rtc-pl031", desc=lambda d: d != 0, new=lambda n: n != 0)
    [event] = setup.where(name="rtc-pl031").events
    assert event["irq"] > 0


@on_each_guest
def test_kprobe_filter_on_the_irq_name(ktrace, arch):
    _, _, irq_name = DEVICES[arch]
    only_ours = ktrace.kprobe("__setup_irq", name="+0(+80($arg3)):string", filter=f'name == "{irq_name}"')
    rebind(ktrace, arch)
    only_ours.assert_all_calls(name=irq_name)


@on_each_guest
def test_retval_on_an_entry_probe_is_the_kernels_error(ktrace, arch):
    ktrace.kprobe("__setup_irq", bad="$retval")
    with pytest.raises(ProbeRejected) as info:
        ktrace.arm()
    assert "$retval is not available on probe" in str(info.value)
    command, caret = info.value.kernel_log.splitlines()[1:3]
    assert command[caret.index("^") :].startswith("bad=$retval") or command[caret.index("^") :].startswith("$retval")


@on_each_guest
def test_unknown_function_is_named(ktrace, arch):
    ktrace.kprobe("__setup_irqq")
    with pytest.raises(UnknownSymbol, match=r"unknown symbol '__setup_irqq'.*__setup_irq"):
        ktrace.arm()


@pytest.mark.xfail(reason="demonstrates the failure message against the real return value", strict=True)
@on_each_guest
def test_wrong_expectation_shows_the_real_return(ktrace, arch):
    done = ktrace.kretprobe("__setup_irq")
    rebind(ktrace, arch)
    done.assert_returned(-22)  # AssertionError: __setup_irq returned 0 (expected -22); ...
