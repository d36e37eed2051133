"""Pure parts: command rendering, $argN rewriting, names, ownership of leftovers, matchers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pytest_ktrace import ANY, KtraceError, UnsupportedFetchArg
from pytest_ktrace._arch import rewrite_argn
from pytest_ktrace._identity import OWNED_NAME, RunIdentity, stale_owner
from pytest_ktrace._matchers import field_matches, mismatches
from pytest_ktrace._probe_builder import check_fetchargs
from pytest_ktrace._probes import ProbeSpec, event_name_for


def test_kprobe_and_kretprobe_render_like_the_kernel_doc() -> None:
    entry = ProbeSpec("kprobe", "grp", "ev", "__setup_irq", (("irq", "%x0:u32"), ("name", "+0(+80(%x2)):string")))
    assert entry.render() == "p:grp/ev __setup_irq irq=%x0:u32 name=+0(+80(%x2)):string"
    ret = ProbeSpec("kretprobe", "grp", "rv", "__setup_irq", (("ret", "$retval:s32"),), maxactive=16)
    assert ret.render() == "r16:grp/rv __setup_irq ret=$retval:s32"
    assert ret.return_field == "ret"
    assert ret.removal() == "-:grp/rv" and ret.control_file == "kprobe_events"
    up = ProbeSpec("uretprobe", "grp", "u", "/bin/x:0x1149")
    assert up.render() == "r:grp/u /bin/x:0x1149" and up.control_file == "uprobe_events"


def test_event_names_are_kernel_legal_and_bounded() -> None:
    name = event_name_for("kprobe", "a.very-long.symbol" * 8, 12345)
    assert len(name) <= 63 and name.endswith("_12345") and name.startswith("p_a_very_long")
    assert event_name_for("uretprobe", "setup_thing", 3) == "ur_setup_thing_3"


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("x86_64", "+0(%si):string"),
        ("aarch64", "+0(%x1):string"),
        ("arm64", "+0(%x1):string"),
        ("riscv64", "+0(%a1):string"),
    ],
)
def test_argn_rewrite_per_arch(arch: str, expected: str) -> None:
    assert rewrite_argn("+0($arg2):string", arch, why="test") == expected


def test_argn_rewrite_limits() -> None:
    assert rewrite_argn("$arg6", "x86_64", why="w") == "%r9"
    with pytest.raises(UnsupportedFetchArg, match=r"only arguments 1\.\.6.*\$stackN"):
        rewrite_argn("$arg7", "x86_64", why="uprobes do not support $argN")
    with pytest.raises(UnsupportedFetchArg, match="does not know the argument registers"):
        rewrite_argn("$arg1", "mips", why="w")


@pytest.mark.parametrize(
    "fetchargs",
    [{"a b": "%di"}, {"x": "%di\n-:g/e"}, {"x": "%di y=%si"}, {"__probe_ip": "%di"}, {"x": ""}, {"x": "\t%di"}],
)
def test_shape_changing_fetchargs_are_refused(fetchargs: dict[str, str]) -> None:
    with pytest.raises(KtraceError):
        check_fetchargs(fetchargs)


def test_owned_names_and_stale_detection() -> None:
    me = RunIdentity("abcdef", os.getpid(), "1234")
    assert OWNED_NAME.match(me.group) and OWNED_NAME.match(me.instance(7))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = RunIdentity("abcdef", dead.pid, "9999")
    assert stale_owner(leftover.instance(3), me) == dead.pid
    assert stale_owner(leftover.group, me) == dead.pid
    assert stale_owner(me.instance(1), me) is None  # ourselves
    assert stale_owner(RunIdentity("abcdef", 1, "0000").group, me) is None  # alive (init)
    assert stale_owner(RunIdentity("012345", dead.pid, "9999").group, me) is None  # another machine
    assert stale_owner("ktrace_something_else", me) is None
    assert stale_owner("foreign_probe", me) is None


def test_matchers() -> None:
    assert field_matches(ANY, object())
    assert field_matches(lambda v: v > 3, 4) and not field_matches(lambda v: v > 3, 2)
    assert not field_matches(lambda v: v.nope, 2)  # a predicate that raises is a mismatch, not a crash
    assert mismatches({"a": 1, "b": "x", "c": 3}, {"a": 1, "b": "y"}) == [
        "b='y' (expected 'x')",
        "c: no such field (the task is task_pid, task_comm, task_cpu)",
    ]
