"""``ktrace.load_module()`` in the qemu guests (real kprobes, Debian 6.1 kernels) with the example driver
``examples/driver/ktbar``, built for each guest's exact kernel by ``scripts/build-example-driver``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SUITE = """
import os
import pytest
import pytest_ktrace

KO = os.environ["KTBAR_KO"]
pytestmark = pytest.mark.ktrace(vm=os.environ["KTBAR_ARCH"])


def test_init_requests_its_irq(ktrace):
    setup = ktrace.kprobe("__setup_irq", irq="irq", name="new->name:string")
    done = ktrace.kretprobe("__setup_irq")
    module = ktrace.load_module(KO, name="ktbar test")
    assert module.name == "ktbar" and module.ours and module.path.endswith(".ko")
    setup.where(name="ktbar test").assert_called_once()
    done.assert_any_return(0)
    ktrace.kernel_log.assert_printed(r'ktbar: irq \\d+ requested as "ktbar test"')


def test_a_probe_on_its_function_before_it_exists(ktrace):
    request = ktrace.kprobe("ktbar:ktbar_request")
    ktrace.load_module(KO)
    request.assert_called_once()


def test_its_own_tracepoint(ktrace):
    ktrace.load_module(KO, name="again")
    event = ktrace.tracepoint("ktbar:ktbar_request")  # it exists once the module is loaded
    request = ktrace.kprobe("ktbar_request")  # a plain name of the loaded module's function
    ktrace.run(["sh", "-c", "echo 1 > /sys/module/ktbar/parameters/rerequest"], check=True)
    event.assert_called_once_with(name="again", ret=0)
    request.assert_called_once()


def test_a_failing_init_is_named(ktrace):
    with pytest.raises(pytest_ktrace.ModuleLoadError, match="No such device") as failed:
        ktrace.load_module(KO, fail_init=True)
    assert failed.value.errno_name == "ENODEV" and failed.value.module == "ktbar"
    assert "ktbar: failing init on purpose" in failed.value.kernel_log


def test_a_refused_irq_is_the_kernels_minus_22(ktrace):
    done = ktrace.kretprobe("__setup_irq")
    with pytest.raises(pytest_ktrace.ModuleLoadError, match="Invalid argument") as failed:
        ktrace.load_module(KO, bad_irq_flags=True)
    assert 'requesting irq' in failed.value.kernel_log and "failed: -22" in failed.value.kernel_log
    done.assert_any_return(-22)


def test_a_warn_fails_the_test(ktrace):
    ktrace.load_module(KO, warn=True)


def test_a_warn_on_purpose(ktrace):
    ktrace.kernel_log.expect(r"warning on purpose")
    ktrace.load_module(KO, warn=True)


def test_a_module_that_will_not_unload_fails_the_test(ktrace):
    ktrace.load_module(KO)
    ktrace.run(["sh", "-c", "echo 1 > /sys/module/ktbar/parameters/hold"], check=True)


def test_the_held_module_is_still_there_and_can_go(ktrace):
    assert ktrace.run(["cat", "/sys/module/ktbar/refcnt"], check=True).stdout.strip() == "1"
    ktrace.run(["sh", "-c", "echo 0 > /sys/module/ktbar/parameters/hold && rmmod ktbar"], check=True)


def test_nothing_is_left(ktrace):
    assert ktrace.run(["ls", "/sys/module/ktbar"]).returncode != 0
    assert not [name for name in ktrace.run(["ls", "/tmp"]).stdout.split() if name.endswith(".ko")]
"""


@pytest.fixture(scope="module")
def ktbar_modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = subprocess.run(
        [str(ROOT / "scripts" / "build-example-driver")], capture_output=True, text=True, timeout=900, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the script names the module it built for each guest's kernel: "ktbar.ko for ARCH (RELEASE), ...: PATH"
    built = {
        arch: Path(path) for arch, path in re.findall(r"^ktbar\.ko for (\S+) \(.*?\).*?: (\S+)$", out.stdout, re.M)
    }
    assert set(built) >= {"x86_64", "arm64"}, out.stdout
    return built


@pytest.mark.guest
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_the_example_driver_in_the_guest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ktbar_modules: dict[str, Path], arch: str
) -> None:
    ko = pytester.path / "ktbar.ko"  # the test's own copy: the record and the replay load the same bytes
    ko.write_bytes(ktbar_modules[arch].read_bytes())
    monkeypatch.setenv("KTBAR_KO", str(ko))
    monkeypatch.setenv("KTBAR_ARCH", arch)
    pytester.makepyfile(test_ktbar=SUITE)
    recorded = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--ktrace-record")
    replayed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--ktrace-backend=fake")
    for result in (recorded, replayed):  # the guest's kernel, then its cassettes replayed on the fake
        result.assert_outcomes(passed=9, failed=1, errors=1)
        result.stdout.fnmatch_lines(
            [
                "*_ ERROR at teardown of test_a_module_that_will_not_unload_fails_the_test _*",
                "*rmmod ktbar: *ktbar*holders of ktbar: ; refcnt 1*",
                "*_ test_a_warn_fails_the_test _*",
                "*pytest-ktrace (after the test): the kernel printed a WARNING during this test:*",
                "*insmod-*: WARNING: CPU: * at *ktbar*",
                "*the kernel's taint changed during this test: *W: *",
            ]
        )
    assert "ktrace: backend fake" in replayed.stdout.str()
    # the cassette says what the module brought and when it went: the fake did the same from it
    cassette = json.loads((pytester.path / "cassettes" / "test_ktbar" / "test_its_own_tracepoint.json").read_text())
    changes = [step["modules"] for step in cassette["interactions"] if "modules" in step]
    assert [sorted(change) for change in changes] == [["loaded"], ["unloaded"]], changes
    ktbar = changes[0]["loaded"]["ktbar"]
    assert "ktbar_request" in ktbar["functions"] and list(ktbar["events"]) == ["ktbar/ktbar_request"]
    assert "field:int irq;" in ktbar["events"]["ktbar/ktbar_request"]
    assert changes[1]["unloaded"] == ["ktbar"]
