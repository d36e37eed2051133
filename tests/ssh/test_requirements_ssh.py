"""ktrace_requires and the JUnit provenance over SSH (the loopback sshd): detection in one round trip through the
remote shell, ktrace_host in the properties, and a board pool checked against the board each test leased."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

RELEASE = os.uname().release
MACHINE = os.uname().machine
HAS_KPROBES = Path("/sys/kernel/tracing/kprobe_events").exists()


def _properties(xml: Path) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        props: dict[str, list[str]] = {}
        for prop in case.iter("property"):
            props.setdefault(prop.get("name", ""), []).append(prop.get("value", ""))
        out[case.get("name", "")] = props
    return out


def test_requirements_and_properties_over_ssh(sshd_server, pytester: pytest.Pytester, probed: Path) -> None:
    pytester.makepyfile(
        test_remote=f"""
        import pytest
        from pytest_ktrace._requirements import _FACTS

        @pytest.mark.ktrace_requires(uprobes=True, symbols=["schedule"], events=["sched:sched_switch"],
                                     kernel=">=3.0", arch={MACHINE!r})
        def test_runs(ktrace):
            fib = ktrace.uprobe({str(probed)!r}, "fib")
            ktrace.run([{str(probed)!r}, "fib", "2"])
            fib.assert_call_count(3)

        @pytest.mark.ktrace_requires(kprobes=True, symbols=["schedulx"])
        def test_kprobes(ktrace):
            pass

        def test_zz_once(request):
            [facts] = request.config.stash[_FACTS].values()
            assert facts.round_trips == 1, facts.round_trips
        """
    )
    xml = pytester.path / "junit.xml"
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "-rs",
        "--ktrace-host=ktrace-test",
        f"--ktrace-ssh-config={sshd_server.ssh_config}",
        f"--junitxml={xml}",
    )
    head = f"pytest-ktrace: ktrace-test (Linux {RELEASE} {MACHINE}) cannot run this test: "
    if HAS_KPROBES:
        result.assert_outcomes(passed=2, skipped=1)
        result.stdout.fnmatch_lines([f"SKIPPED [[]1] test_remote.py:11: {head}no symbol schedulx in /proc/kallsyms*"])
    else:
        result.assert_outcomes(passed=2, skipped=1)
        result.stdout.fnmatch_lines(
            [
                f"SKIPPED [[]1] test_remote.py:11: {head}no kprobes (kprobe_events missing*), no symbol schedulx in "
                "/proc/kallsyms (close matches: schedule*"
            ]
        )
    props = _properties(xml)
    for name in ("test_runs", "test_kprobes"):
        if name == "test_kprobes":  # judged against the board: it could not run it
            assert props[name].pop("ktrace_unmet") == ["ktrace-test"]
        assert {key: values for key, values in props[name].items() if key != "ktrace_probe"} == {
            "ktrace_target": ["ktrace-test"],
            "ktrace_backend": ["ssh"],
            "ktrace_kernel": [RELEASE],
            "ktrace_arch": [MACHINE],
            "ktrace_features": [props[name]["ktrace_features"][0]],
            "ktrace_host": ["ktrace-test"],
        }
        assert "uprobes" in props[name]["ktrace_features"][0].split(",")
    [probe] = props["test_runs"]["ktrace_probe"]
    assert probe.startswith("p:<group>/<event:1> ") and f" {probed}:0x" in probe


def test_a_board_pool_is_checked_against_the_leased_board(sshd_server, pytester: pytest.Pytester, probed: Path) -> None:
    text = Path(sshd_server.ssh_config).read_text()
    block = text.split("Host ktrace-test\n", 1)[1].split("\nHost ", 1)[0]
    config = pytester.path / "ssh_config"
    config.write_text(f"Host board-a\n{block}\nHost board-b\n{block}\n")
    pytester.makepyfile(
        test_pool=f"""
        import pytest

        @pytest.mark.ktrace_requires(uprobes=True, symbols=["schedule"])
        def test_fixture(ktrace):
            ktrace.uprobe({str(probed)!r}, "fib")
            ktrace.run([{str(probed)!r}, "fib", "1"])

        @pytest.mark.ktrace_requires(kernel="<3.0")
        def test_fixture_skips(ktrace):
            pass

        @pytest.mark.ktrace_requires(kernel="<3.0")
        def test_no_fixture():
            pass
        """
    )
    xml = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-rs",
        "--ktrace-host=board-a,board-b",
        f"--ktrace-ssh-config={config}",
        f"--junitxml={xml}",
    )
    result.assert_outcomes(passed=1, skipped=2)
    props = _properties(xml)
    leased = props["test_fixture_skips"]["ktrace_host"]
    assert leased in (["board-a"], ["board-b"])
    result.stdout.fnmatch_lines_random(
        [
            f"SKIPPED [[]1] test_pool.py:8: pytest-ktrace: {leased[0]} (Linux {RELEASE} *) cannot run this test: "
            f"kernel is {RELEASE} (needs <3.0)",
            # no fixture, no lease: judged on the pool's first board
            f"SKIPPED [[]1] test_pool.py:12: pytest-ktrace: board-a (Linux {RELEASE} *) cannot run this test: *",
        ]
    )
    assert props["test_no_fixture"]["ktrace_host"] == ["board-a"]
    assert props["test_fixture"]["ktrace_host"] in (["board-a"], ["board-b"])
    assert len(props["test_fixture"]["ktrace_probe"]) == 1
