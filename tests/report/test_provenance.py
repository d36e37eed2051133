"""JUnit XML provenance: each ktrace test's target and the exact probe lines it wrote, as <property> elements, on
this machine, on the fake, and through pytest-xdist."""

from __future__ import annotations

import os
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_ktrace._probes import ProbeSpec
from pytest_ktrace.backends._local import LocalBackend
from pytest_ktrace.report._provenance import probe_line

pytest_plugins = ["pytester"]

RELEASE = os.uname().release
MACHINE = os.uname().machine

# Records every line written to a probe control file, so the properties can be compared with what was written.
RECORDING_CONFTEST = """
import json, os
import pytest
from pytest_ktrace.backends._base import Write
from pytest_ktrace.backends._local import LocalBackend

BIN = {bin!r}
WRITTEN = {written!r}

class Recording(LocalBackend):
    def apply(self, ops, *, stop_on_error=False):
        with open(WRITTEN, "a") as out:
            for op in ops:
                if isinstance(op, Write) and op.path in ("uprobe_events", "kprobe_events") and op.data[:1] != "-":
                    out.write(json.dumps([os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], op.data]) + "\\n")
        return super().apply(ops, stop_on_error=stop_on_error)

@pytest.hookimpl(tryfirst=True)
def pytest_ktrace_make_backend(config, target):
    if target.backend == "local":
        return Recording(target.tracefs)
"""


def _properties(xml: Path) -> dict[str, list[tuple[str, str]]]:
    """testcase name -> its (name, value) properties, in order."""
    out: dict[str, list[tuple[str, str]]] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        out[case.get("name", "")] = [(p.get("name", ""), p.get("value", "")) for p in case.iter("property")]
    return out


def _target(props: list[tuple[str, str]]) -> dict[str, str]:
    return {name: value for name, value in props if name != "ktrace_probe"}


def _probes(props: list[tuple[str, str]]) -> list[str]:
    return [value for name, value in props if name == "ktrace_probe"]


def test_probe_line_is_the_control_line_or_the_tracepoint_and_its_filter() -> None:
    kprobe = ProbeSpec("kprobe", "g", "p_x_1", "__setup_irq", (("irq", "%di:u32"),), filter="irq == 3")
    assert probe_line(kprobe) == "p:g/p_x_1 __setup_irq irq=%di:u32 if irq == 3"
    uretprobe = ProbeSpec("uretprobe", "g", "ur_f_2", "/bin/prog:0x1139", (("ret", "$retval:s32"),))
    assert probe_line(uretprobe) == "r:g/ur_f_2 /bin/prog:0x1139 ret=$retval:s32"
    tracepoint = ProbeSpec("tracepoint", "sched", "sched_switch", "", display="sched:sched_switch")
    assert probe_line(tracepoint) == "sched:sched_switch"
    # numbered: the run's names normalised, so that two runs' JUnit properties diff cleanly
    assert probe_line(kprobe, 1) == "p:<group>/<event:1> __setup_irq irq=%di:u32 if irq == 3"
    assert probe_line(tracepoint, 3) == "sched:sched_switch"


@pytest.fixture
def recording(pytester: pytest.Pytester, probed: Path) -> Path:
    written = pytester.path / "written.jsonl"
    pytester.makeconftest(RECORDING_CONFTEST.format(bin=str(probed), written=str(written)))
    return written


def _written(path: Path) -> dict[str, list[str]]:
    """test -> the lines it wrote, with the run's names normalised (<group>/<event:N>) as the properties are."""
    import json

    out: dict[str, list[str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            test, data = json.loads(line)
            lines = out.setdefault(test.split("::")[-1], [])
            lines.append(re.sub(r"^([pr]):ktrace_\w+?/\S+", rf"\1:<group>/<event:{len(lines) + 1}>", data))
    return out


LOCAL_TESTS = """
import pytest
from conftest import BIN

def test_uprobes_and_tracepoint(ktrace):
    entry = ktrace.uprobe(BIN, "setup_thing", irq="$arg1:s32", name="+0($arg2):string")
    done = ktrace.uretprobe(BIN, "setup_thing")
    ktrace.tracepoint("sched:sched_process_exec", filter='filename ~ "*probed*"')
    ktrace.run([BIN, "setup", "eth0", "30"])
    entry.assert_called_once_with(irq=30, name="eth0")

def test_failing_still_says_where(ktrace):
    ktrace.uprobe(BIN, "fib", filter="common_pid > 0")
    ktrace.run([BIN, "fib", "1"])
    assert False, "fails on purpose"

def test_without_ktrace():
    pass

@pytest.mark.ktrace_requires(kernel="<3.0")
def test_skipped_by_requirements(ktrace):
    pass

@pytest.mark.ktrace_requires(uprobes=True)
def test_requirements_without_fixture():
    pass
"""


def _check_local(props: dict[str, list[tuple[str, str]]], written: dict[str, list[str]]) -> None:
    target = {
        "ktrace_target": "local",
        "ktrace_backend": "local",
        "ktrace_kernel": RELEASE,
        "ktrace_arch": MACHINE,
        "ktrace_features": ",".join(sorted(LocalBackend().describe().features)),
    }
    assert _target(props["test_uprobes_and_tracepoint"]) == target
    # the target first, then one property per probe in definition order; dynamic ones exactly as written
    assert [name for name, _ in props["test_uprobes_and_tracepoint"]][:5] == list(target)
    entry, done, tracepoint = _probes(props["test_uprobes_and_tracepoint"])
    assert [entry, done] == written["test_uprobes_and_tracepoint"]
    assert re.fullmatch(r"p:<group>/<event:1> /\S+/probed:0x[0-9a-f]+ irq=%di:s32 name=\+0\(%si\):string", entry)
    assert re.fullmatch(r"r:<group>/<event:2> /\S+/probed:0x[0-9a-f]+ ret=\$retval:s32", done)
    assert tracepoint == 'sched:sched_process_exec if filename ~ "*probed*"'

    [fib] = _probes(props["test_failing_still_says_where"])
    assert fib == written["test_failing_still_says_where"][0] + " if common_pid > 0"
    assert _target(props["test_failing_still_says_where"]) == target

    assert props["test_without_ktrace"] == []
    # where it was judged, and that the target could not run it
    assert props["test_skipped_by_requirements"] == [*target.items(), ("ktrace_unmet", "local")]
    assert props["test_requirements_without_fixture"] == list(target.items())


def test_local_junit_xml_has_target_and_exact_probe_lines(pytester: pytest.Pytester, recording: Path) -> None:
    pytester.makepyfile(test_local=LOCAL_TESTS)
    xml = pytester.path / "junit.xml"
    result = pytester.runpytest("-p", "no:cacheprovider", f"--junitxml={xml}")
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    _check_local(_properties(xml), _written(recording))


def test_properties_travel_through_xdist(pytester: pytest.Pytester, recording: Path) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_local=LOCAL_TESTS)
    pytester.makepyfile(
        test_more=textwrap.dedent(
            """
            import pytest
            from conftest import BIN

            @pytest.mark.parametrize("n", range(4))
            def test_fib(ktrace, n):
                fib = ktrace.uprobe(BIN, "fib", n="$arg1:s32")
                ktrace.run([BIN, "fib", str(n)])
                fib.assert_any_call(n=n)
            """
        )
    )
    xml = pytester.path / "junit.xml"
    # each test writes its own definitions (the check below compares them), none takes back a parked probe
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "xdist", "-n", "2", f"--junitxml={xml}", "--ktrace-fresh-probes"
    )
    result.assert_outcomes(passed=7, failed=1, skipped=1)
    props = _properties(xml)
    written = _written(recording)
    _check_local(props, written)
    for n in range(4):
        name = f"test_fib[{n}]"
        [line] = _probes(props[name])
        assert line == written[name][0] and line.endswith(" n=%di:s32"), line
        assert _target(props[name])["ktrace_kernel"] == RELEASE
    assert len(props) == 9
    # the controller's summary counts the workers' tests per target (all but test_without_ktrace)
    result.stdout.fnmatch_lines(
        [f"ktrace: local (backend local): Linux {RELEASE} {MACHINE}; features *; 8 test(s), 1 skipped for unmet *"]
    )


def test_fake_backend_properties(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fake="""
        def test_kprobe(ktrace):
            ktrace.kprobe("__setup_irq", irq="$arg1:u32", filter="irq == 3")
            ktrace.kretprobe("__setup_irq")
            ktrace.tracepoint("irq:irq_handler_entry")
            ktrace.arm()
        """
    )
    xml = pytester.path / "junit.xml"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.1-arm64", f"--junitxml={xml}"
    )
    result.assert_outcomes(passed=1)
    props = _properties(xml)["test_kprobe"]
    assert _target(props) == {
        "ktrace_target": "fake:debian-6.1-arm64",
        "ktrace_backend": "fake",
        "ktrace_kernel": "6.1.0-57-arm64",
        "ktrace_arch": "aarch64",
        "ktrace_features": "argN,dynamic_events,error_log,hist,instances,kprobes,printk_console,set_event_pid,uprobes",
    }
    kprobe, kretprobe, tracepoint = _probes(props)
    # $argN is rewritten to the arm64 register the 6.1 kernel reads it from: the property is what was written
    assert re.fullmatch(r"p:<group>/<event:1> __setup_irq irq=(%x0|\$arg1):u32 if irq == 3", kprobe)
    assert re.fullmatch(r"r:<group>/<event:2> __setup_irq ret=\$retval:s32", kretprobe)
    assert tracepoint == "irq:irq_handler_entry"
