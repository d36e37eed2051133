"""stacktrace=True on real kprobes in the Debian 6.1 guests: re-binding a driver reaches __setup_irq from the
driver core's probe path, on x86_64 and arm64 alike (the same test, unchanged). The stack starts at the probed
function on both (the int3 / BRK exception frames are left out). On arm64 a probe at a function's entry runs
before the function saved its frame record, so the unwinder skips the direct caller: x86_64 shows
request_threaded_irq, arm64 goes from __setup_irq to pl031_probe."""

from __future__ import annotations

import pytest

DEVICES = {
    "x86_64": ("/sys/bus/platform/drivers/i8042", "i8042"),
    "arm64": ("/sys/bus/amba/drivers/rtc-pl031", "9010000.pl031"),
}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.ktrace(vm=a), id=a) for a in DEVICES])
def test_setup_irq_is_called_from_request_threaded_irq(ktrace, arch: str) -> None:
    setup = ktrace.kprobe("__setup_irq", irq="$arg1:u32", stacktrace=True)
    driver, device = DEVICES[arch]
    result = ktrace.run(["sh", "-c", f'echo "$1" > {driver}/unbind && echo "$1" > {driver}/bind', "sh", device])
    assert result.returncode == 0, result.stderr
    setup.assert_called_from("really_probe")
    setup.assert_called_from("bind_store")
    setup.assert_not_called_from("do_exit")
    caller = {"x86_64": "request_threaded_irq", "arm64": "pl031_probe"}[arch]
    assert all(event.stack[1] == caller for event in setup.events), [event.stack[:3] for event in setup.events]
    assert all(event.stack[0] == "__setup_irq" for event in setup.events), [event.stack for event in setup.events]
