"""Filter expressions generated from the filter grammar (hypothesis), written to this machine's kernel and parsed by
the fake: the kernel's verdict, errno, ``filter`` file text and error_log entry (message and caret) must match.

The grammar covers what ``trace_events_filter.c`` parses: numeric, string, glob, ``CPUS{}`` and ``.function``
predicates on the fields of two real events, the generic ``CPU``/``COMM`` fields, ``!``, ``&&``, ``||`` and
parentheses; then it breaks what it built (a trailing operator, a cut, a stray byte) to reach the error paths. The
seeds are the kernel's own: the expressions of its filter self-test table (``test_filter_data``) and of the
``event-filter-incomplete`` and ``event-filter-function`` selftests, always run first.
"""

from __future__ import annotations

from typing import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_filters_differential import (
    EXEC_EVENT,
    KMEM_FREE_EVENT,
    ScratchInstance,
    _tracefs_problem,
    instance,  # noqa: F401  (the scratch tracefs instance, a module fixture)
    kernel,  # noqa: F401  (a snapshot of this machine's kernel, a module fixture)
    possible_cpu_count,
    read_event_format,
)

from pytest_ktrace.fake._filters import CompiledFilter, FilterError, FilterField, compile_filter
from pytest_ktrace.snapshots._snapshot import KernelSnapshot

pytestmark = pytest.mark.skipif(_tracefs_problem() is not None, reason=_tracefs_problem() or "")

EXAMPLES = settings(
    max_examples=400,
    derandomize=True,  # the same expressions on every run: CI is repeatable, a failure reproducible
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- the grammar ----------------------------------------------------------------------------------------------

SPACE = st.sampled_from(["", " ", " ", "  ", "\t"])
NUMERIC_FIELDS = ["pid", "old_pid", "common_pid", "common_type", "common_flags", "common_preempt_count", "CPU", "cpu"]
STRING_FIELDS = ["filename", "COMM", "comm"]
UNKNOWN_FIELDS = ["nosuch", "Pid", "pid_", "_", "ptr"]
OPERATORS = ["==", "!=", "<", "<=", ">", ">=", "&", "~"]
BROKEN_OPERATORS = ["=", "=<", "!~", "<>", "=="[0:1], "&&", "!"]


@st.composite
def numbers(draw: st.DrawFn) -> str:
    value = draw(st.one_of(st.integers(-5, 5), st.integers(-(2**64) - 1, 2**64 + 1)))
    style = draw(st.sampled_from(["dec", "hex", "oct", "junk"]))
    if style == "hex" and value >= 0:
        return hex(value)
    if style == "oct" and value > 0:
        return "0" + format(value, "o")
    if style == "junk":
        return draw(st.sampled_from(["1x", "0xZZ", "-", "--1", "1.5", "0b1", "1e3", "09", "x1", "1" * 30]))
    return str(value)


@st.composite
def cpumasks(draw: st.DrawFn) -> str:
    body = draw(st.sampled_from(["0", "1", "0-1", "0,1", "1-0", "", "999", "0-999", "a", "0-", "0,,1", " 0"]))
    closed = draw(st.sampled_from(["}", "}", ""]))
    return f"CPUS{{{body}{closed}"


@st.composite
def strings(draw: st.DrawFn) -> str:
    quote = draw(st.sampled_from(['"', "'"]))
    text = draw(st.text(alphabet="ab/.-*?[]!^ ", max_size=8))
    closed = draw(st.sampled_from([quote, quote, quote, ""]))
    return f"{quote}{text}{closed}"


@st.composite
def predicates(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["number", "number", "string", "string", "cpus", "mixed"]))
    if kind == "number":
        field, operand = draw(st.sampled_from(NUMERIC_FIELDS)), draw(numbers())
    elif kind == "string":
        field, operand = draw(st.sampled_from(STRING_FIELDS)), draw(strings())
    elif kind == "cpus":
        field, operand = draw(st.sampled_from(["CPU", "pid", "filename", "common_cpu"])), draw(cpumasks())
    else:  # anything with anything: the type errors
        field = draw(st.sampled_from(NUMERIC_FIELDS + STRING_FIELDS + UNKNOWN_FIELDS))
        operand = draw(st.one_of(numbers(), strings(), cpumasks(), st.sampled_from(["", "abc", "(1)"])))
    operator = draw(st.sampled_from(OPERATORS + BROKEN_OPERATORS if kind == "mixed" else OPERATORS))
    return f"{field}{draw(SPACE)}{operator}{draw(SPACE)}{operand}"


def expressions(leaves: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(
                lambda a, op, b, s: f"{a}{s}{op}{s}{b}", children, st.sampled_from(["&&", "||"]), children, SPACE
            ),
            st.builds(lambda a, s: f"({s}{a}{s})", children, SPACE),
            st.builds(lambda a, bang: f"{bang}{a}", children, st.sampled_from(["!", "! ", "!!"])),
        )

    return st.recursive(leaves, combine, max_leaves=6)


@st.composite
def broken(draw: st.DrawFn, built: st.SearchStrategy[str]) -> str:
    """A built expression, then maybe damaged: what a user's typo or a half-written filter looks like."""
    text = draw(built)
    damage = draw(st.sampled_from(["none", "none", "tail", "cut", "byte", "parens"]))
    if damage == "tail":  # the event-filter-incomplete selftest's tails
        return text + " " + draw(st.sampled_from(["&&", "||", "&& !", "|| !", "&& !! ", "|| !! "]))
    if damage == "cut" and len(text) > 1:
        return text[: draw(st.integers(1, len(text) - 1))]
    if damage == "byte":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(list("()!&|'\"~{}#,"))) + text[at:]
    if damage == "parens":
        return draw(st.sampled_from(["(", ")", "((", "))"])) + text + draw(st.sampled_from(["", ")", "("]))
    return text


# --- the kernel's own expressions, mapped onto sched_process_exec's fields -----------------------------------------

# trace_events_filter.c test_filter_data: fields a..h, each compared with 1
_SELFTEST_FILTERS = [
    "a == 1 && b == 1 && c == 1 && d == 1 && e == 1 && f == 1 && g == 1 && h == 1",
    "a == 1 || b == 1 || c == 1 || d == 1 || e == 1 || f == 1 || g == 1 || h == 1",
    "(a == 1 || b == 1) && (c == 1 || d == 1) && (e == 1 || f == 1) && (g == 1 || h == 1)",
    "(a == 1 && b == 1) || (c == 1 && d == 1) || (e == 1 && f == 1) || (g == 1 && h == 1)",
    "(a == 1 && b == 1) && (c == 1 && d == 1) && (e == 1 && f == 1) || (g == 1 && h == 1)",
    "((a == 1 || b == 1) || (c == 1 || d == 1) || (e == 1 || f == 1)) && (g == 1 || h == 1)",
    "((((((((a == 1) && (b == 1)) || (c == 1)) && (d == 1)) || (e == 1)) && (f == 1)) || (g == 1)) && (h == 1))",
    "((((((((a == 1) || (b == 1)) && (c == 1)) || (d == 1)) && (e == 1)) || (f == 1)) && (g == 1)) || (h == 1))",
]
_LETTERS = dict(
    zip("abcdefgh", ["pid", "old_pid", "common_pid", "common_type", "common_flags", "CPU", "pid", "old_pid"])
)
SEEDS = [
    "".join(_LETTERS.get(char, char) for char in text) if text[0] in "(a" else text for text in _SELFTEST_FILTERS
] + [
    f"{base} {tail}"
    for base in ("common_pid == 1", "common_pid == 1 || common_pid == 2", "!(common_pid == 1 || common_pid == 2)")
    for tail in ("&&", "||", "&& !", "|| !", "&& !! ", "|| !! ")
]


# --- fixtures and the comparison ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agree(instance: ScratchInstance, kernel: KernelSnapshot) -> Callable[[str, str], None]:  # noqa: F811
    nr_cpu_ids = possible_cpu_count()
    fields: dict[str, tuple[FilterField, ...]] = {
        event: read_event_format(event).fields for event in (EXEC_EVENT, KMEM_FREE_EVENT)
    }

    def check(event: str, expression: str) -> None:
        instance.write_filter(event, "0")
        instance.clear_error_log()
        kernel_errno = instance.write_filter(event, expression)
        kernel_text = instance.read_filter(event)
        kernel_log = instance.error_log_entries()
        try:
            compiled = compile_filter(
                expression,
                fields[event],
                nr_cpu_ids=nr_cpu_ids,
                kernel_functions=kernel.text,
                trailing_operator_is_error=kernel.answer("filter_trailing_operator") == "rejected",
            )
        except FilterError as predicted:
            assert (kernel_errno, kernel_text, kernel_log) == (
                predicted.errno,
                predicted.filter_file_text(expression),
                [predicted.error_log_entry(expression)],
            ), f"the fake refuses {expression!r} ({predicted})"
            return
        shown = "none\n" if compiled is None else compiled.filter_file_text()
        assert isinstance(compiled, (CompiledFilter, type(None)))
        assert (kernel_errno, kernel_text, kernel_log) == (None, shown, []), f"the fake accepts {expression!r}"

    return check


@pytest.mark.parametrize("expression", SEEDS)
def test_the_kernels_own_expressions(agree: Callable[[str, str], None], expression: str) -> None:
    agree(EXEC_EVENT, expression)


@EXAMPLES
@given(expression=broken(expressions(predicates())))
def test_generated_expressions(agree: Callable[[str, str], None], expression: str) -> None:
    agree(EXEC_EVENT, expression)


FUNCTION_TARGETS = ["kmem_cache_free", "kfree", "no_such_function_xyz", "0x10", "0", "0xffffffffffffffff", "1abc"]


@st.composite
def function_predicates(draw: st.DrawFn) -> str:
    field = draw(st.sampled_from(["call_site", "call_site", "ptr", "name", "nosuch"]))
    operator = draw(st.sampled_from(["==", "!=", "==", "<", "&", "~"]))
    target = draw(st.sampled_from(FUNCTION_TARGETS))
    return f"{field}.function{draw(SPACE)}{operator}{draw(SPACE)}{target}"


@EXAMPLES
@given(expression=broken(expressions(st.one_of(function_predicates(), st.just("ptr == 0")))))
@example(expression="call_site.function == kmem_cache_free")  # the event-filter-function selftest
def test_generated_function_expressions(agree: Callable[[str, str], None], expression: str) -> None:
    agree(KMEM_FREE_EVENT, expression)


def test_function_addresses_of_this_boot(agree: Callable[[str, str], None], kernel: KernelSnapshot) -> None:  # noqa: F811
    # event-filter-function's second half: the address of a function, and around it
    assert kernel.text is not None, "this machine's kallsyms shows addresses to root"
    span = kernel.text.span_of_name("kmem_cache_free")
    assert span is not None
    for address in (span[0], span[0] + 1, span[1] - 1, span[1], span[0] - 1):
        agree(KMEM_FREE_EVENT, f"call_site.function == {address:#x}")
        agree(KMEM_FREE_EVENT, f"call_site.function != {address}")
