"""Probe commands generated from the probe grammar (hypothesis), written to this machine's uprobe_events and parsed
by the fake: accepted and listed alike, or refused with the same errno, error_log message and caret.

The grammar builds what ``trace_probe.c`` parses: a probe point (offset, ``%return``, a reference counter), and
fetch arguments made of registers, ``$stack``/``$comm``/``$retval``/``$argN``, immediates, memory (``@``) and
nested dereferences, with names, types, bitfields and arrays; then it breaks them (a cut, a stray byte) to reach
the error paths. Every probe is in this test's own group, under a name used once, never enabled, and removed at
once (the safety rules of :mod:`test_grammar_differential`).
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_grammar_differential import (
    GROUP,
    compare,
    expand,
    head_is_safe,
    listed_events,
    parse_on_grammar,
    pytestmark,  # noqa: F401  (the same requirements: root, x86_64, uprobe_events)
    run_on_kernel,
    target,  # noqa: F401  (the module fixture: a copy of true, its entry offset)
)

from pytest_ktrace.fake._grammar import ProbeCommand

EXAMPLES = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_names = itertools.count()

REGISTERS = ["%di", "%si", "%dx", "%cx", "%ax", "%r8", "%sp", "%ip", "%flags", "%xx", "%x0", "%"]
VARIABLES = ["$stack", "$stack0", "$stack3", "$stack99999999", "$comm", "$COMM", "$retval", "$arg1", "$arg0", "$x"]
IMMEDIATES = ["\\1", "\\-5", "\\0x10", '\\"text"', "\\", "\\x"]
MEMORY = ["@0x1000", "@+0x10", "@+-4", "@x", "@"]
TYPES = [
    "u8", "u16", "u32", "u64", "s8", "s32", "x8", "x64", "char", "string", "ustring", "symbol", "symstr",
    "b4@2/32", "b1@0/8", "b9@0/8", "u8[4]", "string[2]", "u8[0]", "x32[65]", "bogus", "",
]  # fmt: skip


def fetch_args(depth: int = 0) -> st.SearchStrategy[str]:
    simple = st.sampled_from(REGISTERS + VARIABLES + IMMEDIATES + MEMORY)
    if depth >= 3:
        return simple
    offset = st.sampled_from(["+0", "-8", "+0x10", "+u4", "8", "+", "+zz"])
    return st.one_of(
        simple, st.builds(lambda o, inner: f"{o}({inner})", offset, st.deferred(lambda: fetch_args(depth + 1)))
    )


@st.composite
def arguments(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["", "", "a=", "arg2=", "x_1=", "1a=", "=", "common_pid=", "a-b="]))
    fetch = draw(fetch_args())
    kind = draw(st.sampled_from([*TYPES, None, None]))
    return f"{name}{fetch}" + ("" if kind is None else f":{kind}")


@st.composite
def commands(draw: st.DrawFn) -> str:
    head = draw(st.sampled_from(["p", "r"]))  # r1: uprobe_events would drop the name (see the safety rules)
    good = ["{T}:{O}", "{T}:{D}", "{T}:{O}%return", "{T}:{O}(0x10)", "{L}:{O}"]
    bad = ["{T}:0xZZ", "{T}", "{T}:-1", "/nonexistent:{O}", "{T}:{O}(", "{T}:{O}%ret"]
    point = draw(st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad)))
    args = draw(st.lists(arguments(), max_size=4))
    line = " ".join([f"{head}:{{G}}/{{E}}", point, *args])
    damage = draw(st.sampled_from(["none", "none", "none", "cut", "byte"]))
    prefix = len(f"{head}:{{G}}/{{E}} ")  # never damage the head: the probe must stay in our group
    # positions outside the {placeholders}, which the test fills in
    cuts = [at for at in range(prefix, len(line) + 1) if line.rfind("{", 0, at) <= line.rfind("}", 0, at)]
    if damage == "cut" and len(cuts) > 1:
        return line[: draw(st.sampled_from(cuts[1:-1] or cuts))]
    if damage == "byte":
        at = draw(st.sampled_from(cuts))
        return line[:at] + draw(st.sampled_from(list("()@$%:=+-\\\"'[]/,"))) + line[at:]
    return line


@EXAMPLES
@given(template=commands())
def test_generated_probe_commands(target: dict[str, str], template: str) -> None:  # noqa: F811
    command = expand(template, {**target, "E": f"gen_{next(_names)}"})  # an event name used once
    assert head_is_safe(command, target), f"{command!r} might create a probe outside {GROUP}"
    expected = parse_on_grammar(command)
    if isinstance(expected, ProbeCommand):
        assert f"{expected.group}/{expected.event}" not in listed_events()
    outcome, created = run_on_kernel(command)
    problem = compare(expected, outcome, created)
    assert problem is None, f"{command!r}\n    {problem}"
