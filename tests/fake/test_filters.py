"""Unit tests of the fake's event filter language (pytest_ktrace.fake._filters).

The expected texts below were read back from a 6.18 kernel's ``filter`` files and error_log; the differential
test re-checks them (and many more) against the running kernel when it can.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_filter_rejections import KERNEL_REJECTIONS

from pytest_ktrace.fake._filters import (
    COMMON_FIELDS,
    CURRENT_COMM_KEY,
    CURRENT_CPU_KEY,
    FILTER_ERROR_TEXTS,
    CompiledFilter,
    FieldClass,
    FilterError,
    FilterField,
    compile_filter,
    normalize_filter_text,
)
from pytest_ktrace.fake._kernel_lib import bitmap_parselist as parse_cpulist
from pytest_ktrace.fake._kernel_lib import glob_match as glob_matches

EXEC_FIELDS = (
    FilterField("filename", True, 4, False, "__data_loc char[]"),
    FilterField("pid", False, 4, True, "pid_t"),
    FilterField("old_pid", False, 4, True, "pid_t"),
)
WIDE_FIELDS = (
    FilterField("ret", False, 8, True, "long"),
    FilterField("flags", False, 8, False, "unsigned long"),
    FilterField("small", False, 1, False, "u8"),
    FilterField("tiny_signed", False, 1, True, "s8"),
    FilterField("comm16", True, 16, False, "char[16]"),
    FilterField("name", True, 8, False, "const char *"),
    FilterField("target_cpu", False, 4, False, "unsigned int"),
    FilterField("mask", False, 4, False, "__data_loc cpumask_t"),
    FilterField("bytes", False, 16, False, "u8[16]"),
)

FieldValues = dict[str, Union[int, str]]


def compiled(expression: str, fields: tuple[FilterField, ...] = EXEC_FIELDS, **options: object) -> CompiledFilter:
    result = compile_filter(expression, fields, **options)  # type: ignore[arg-type]
    assert isinstance(result, CompiledFilter)
    return result


def rejection(expression: str | bytes, fields: tuple[FilterField, ...] = EXEC_FIELDS) -> FilterError:
    with pytest.raises(FilterError) as caught:
        compile_filter(expression, fields, nr_cpu_ids=2)
    return caught.value


# ---------------------------------------------------------------------------------------------------------------------
# Errors, exactly as a 6.18 kernel reports them (kernel_filter_rejections.py; the differential test writes each of
# them to this machine's kernel too)


@pytest.mark.parametrize(("expression", "errno", "filter_text"), KERNEL_REJECTIONS)
def test_rejections_match_the_kernel(expression: str | bytes, errno: str, filter_text: str) -> None:
    error = rejection(expression)
    assert error.errno == errno
    assert error.filter_file_text(expression) == filter_text


def test_error_log_entry_keeps_the_unclamped_position() -> None:
    error = rejection("pid == 1 pid == 2")
    assert error.message == "Too many terms in predicate expression"
    assert error.position == 9
    assert error.error_log_entry("pid == 1 pid == 2") == (
        "event filter parse error: error: Too many terms in predicate expression\n"
        "  Command: pid == 1 pid == 2\n" + " " * 20 + "^\n"
    )


def test_errors_without_a_parse_error_log_the_generic_text_at_zero() -> None:
    error = rejection("pid == 1 && ()")
    assert not error.has_parse_error
    assert error.errno == "EPERM"
    assert error.error_log_entry("pid == 1 && ()") == (
        "event filter parse error: error: Error\n  Command: pid == 1 && ()\n" + " " * 11 + "^\n"
    )


def test_caret_past_the_end_is_clamped_in_the_filter_file_only() -> None:
    error = rejection("pid == 1 &&  (")
    assert error.message == "Too many '('"
    assert error.position == 13
    assert error.filter_file_text("pid == 1 &&  (\n").splitlines()[1] == " " * 13 + "^"


def test_error_texts_are_the_kernel_table() -> None:
    assert len(FILTER_ERROR_TEXTS) == 22
    assert FILTER_ERROR_TEXTS[18] == "Invalid value (did you forget quotes)?"
    assert "Unbalanced parens" not in FILTER_ERROR_TEXTS


def test_an_overlong_expression_loses_the_lines_that_do_not_fit_the_trace_seq() -> None:
    late_error = "pid == 1 && " * 340 + "nosuch == 1"
    assert rejection(late_error).filter_file_text(late_error) == late_error + "\n"
    caret_fits = "pid == 1 && " * 338 + " " * 5 + "nosuch == 1"
    assert rejection(caret_fits).filter_file_text(caret_fits).endswith("1\n" + " " * 4068 + "^\n")


@pytest.mark.parametrize("expression", ["pid == 1 &&", "pid == 1 ||", "pid == 1 && !", "(pid == 1) ||"])
def test_a_trailing_operator_is_meaningless(expression: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(expression, EXEC_FIELDS)
    assert caught.value.message == "Meaningless filter expression"
    assert caught.value.position == len(expression)


def test_a_kernel_that_took_a_trailing_operator_is_an_answer_of_its_snapshot() -> None:
    assert compiled("pid == 1 &&", trailing_operator_is_error=False).matches({"pid": 1})


# ---------------------------------------------------------------------------------------------------------------------
# Accepting, storing and clearing


@pytest.mark.parametrize("clearing", ["0", " 0 ", "0\n", "\t0"])
def test_zero_clears(clearing: str) -> None:
    assert compile_filter(clearing, EXEC_FIELDS) is None


def test_stored_text_keeps_leading_and_drops_trailing_whitespace_and_what_follows_nul() -> None:
    assert compiled("  pid == 1  \n").expression == "  pid == 1"
    assert compiled("pid == 1\0 garbage").filter_file_text() == "pid == 1\n"
    assert normalize_filter_text(b"pid == 1\xa0") == "pid == 1"
    assert compiled("pid\t==\t1").expression == "pid\t==\t1"


def test_latin1_space_separates_tokens() -> None:
    assert compile_filter(b"pid\xa0==\xa01", EXEC_FIELDS) is not None


def test_common_and_pseudo_fields_are_always_known() -> None:
    for name in [field.name for field in COMMON_FIELDS] + ["CPU", "cpu", "common_cpu", "stacktrace"]:
        assert compile_filter(f"{name} == 1", ()) is not None
    assert compile_filter('COMM == "x" && comm ~ "y*"', ()) is not None


def test_an_event_field_shadows_a_pseudo_field() -> None:
    event_comm = (FilterField("comm", True, 16, False, "char[16]"),)
    keep = compiled('comm == "own"', event_comm)
    assert keep.matches({"comm": "own", CURRENT_COMM_KEY: "other"})
    assert not keep.matches({"comm": "other", CURRENT_COMM_KEY: "own"})


def test_field_class_follows_the_declared_c_type() -> None:
    kinds = {field.name: field.kind for field in WIDE_FIELDS}
    assert kinds["comm16"] is FieldClass.STATIC_STRING
    assert kinds["name"] is FieldClass.POINTER_STRING
    assert kinds["mask"] is FieldClass.CPUMASK
    assert kinds["ret"] is FieldClass.NUMBER
    assert FilterField("s", True, 4, False).kind is FieldClass.DYNAMIC_STRING


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation


@pytest.mark.parametrize(
    ("expression", "pid", "expected"),
    [
        ("pid == 1", 1, True),
        ("pid != 1", 1, False),
        ("pid == 010", 8, True),
        ("pid == 0x1F", 31, True),
        ("pid == 4294967297", 1, True),  # truncated to 32 bits
        ("pid < 4294967296", 5, False),  # the operand becomes 0
        ("pid < 0", -5, True),
        ("pid == -1", 0xFFFFFFFF, True),
        ("pid & 6", 4, True),
        ("pid & 6", 8, False),
        ("pid >= -2147483648", -2147483648, True),
    ],
)
def test_numeric_predicates(expression: str, pid: int, expected: bool) -> None:
    assert compiled(expression).matches({"pid": pid}) is expected


def test_unsigned_and_signed_ordering_at_field_width() -> None:
    assert compiled("flags > 1", WIDE_FIELDS).matches({"flags": -1})
    assert not compiled("ret > 1", WIDE_FIELDS).matches({"ret": -1})
    assert compiled("small == 257", WIDE_FIELDS).matches({"small": 1})
    assert compiled("tiny_signed < 0", WIDE_FIELDS).matches({"tiny_signed": 200})
    with pytest.raises(FilterError, match="Illegal integer value"):
        compile_filter("flags == -1", WIDE_FIELDS)


def test_fields_without_a_comparison_size_never_match() -> None:
    assert not compiled("bytes == 0", WIDE_FIELDS).matches({"bytes": 0})
    assert not compiled("bytes != 0", WIDE_FIELDS).matches({"bytes": 0})
    assert not compiled("stacktrace == 0", ()).matches({})


@pytest.mark.parametrize(
    ("pattern", "filename", "expected"),
    [
        ("/bin/true", "/bin/true", True),
        ("*true", "/bin/true", True),
        ("/bin/*", "/bin/true", True),
        ("*in/t*", "/bin/true", True),
        ("*", "", True),
        ("**", "x", True),
        ("/b?n/t*e", "/bin/true", True),
        ("/bin/[st]rue", "/bin/true", True),
        ("/bin/[!t]rue", "/bin/true", False),
        ("!*true", "/bin/true", False),
        ("!*true", "/bin/echo", True),
        ("1*", "1*", True),  # a leading digit compares literally
        ("1*", "12", False),
        ("\\*x", "*x", True),
        ("[a-", "[a-", True),  # an unclosed class is literal
    ],
)
def test_glob_predicates(pattern: str, filename: str, expected: bool) -> None:
    assert compiled(f'filename ~ "{pattern}"').matches({"filename": filename}) is expected


def test_string_equality_and_inequality() -> None:
    assert compiled("filename == 'a\"b'").matches({"filename": 'a"b'})
    assert compiled('filename != "x"').matches({"filename": "xy"})
    assert not compiled('filename == "x"').matches({"filename": "xy"})
    assert compiled('name == "abc"', WIDE_FIELDS).matches({"name": "abc"})


def test_suffix_glob_on_fixed_arrays_compares_the_end_of_the_array() -> None:
    assert not compiled('COMM ~ "*rue"', ()).matches({CURRENT_COMM_KEY: "true"})
    assert compiled('COMM ~ "*pro"', ()).matches({CURRENT_COMM_KEY: "ktrace-glob-probe-true"})
    assert compiled('COMM == "ktrace-glob-pro"', ()).matches({CURRENT_COMM_KEY: "ktrace-glob-probe-true"})
    assert not compiled('comm16 ~ "*sh"', WIDE_FIELDS).matches({"comm16": "bash"})
    assert compiled('comm16 ~ "*sh*"', WIDE_FIELDS).matches({"comm16": "bash"})
    assert compiled('name ~ "*sh"', WIDE_FIELDS).matches({"name": "bash"})


def test_current_cpu_predicates() -> None:
    assert compiled("CPU == 1", ()).matches({CURRENT_CPU_KEY: 1})
    assert not compiled("CPU & 1", ()).matches({CURRENT_CPU_KEY: 1})
    assert compiled("CPU & CPUS{1}", (), nr_cpu_ids=4).matches({CURRENT_CPU_KEY: 1})
    assert compiled("CPU & CPUS{1-2}", (), nr_cpu_ids=4).matches({CURRENT_CPU_KEY: 2})
    assert not compiled("CPU == CPUS{1-2}", (), nr_cpu_ids=4).matches({CURRENT_CPU_KEY: 2})
    assert compiled("CPU != CPUS{1-2}", (), nr_cpu_ids=4).matches({CURRENT_CPU_KEY: 2})


def test_cpumask_predicates_on_fields() -> None:
    assert compiled("target_cpu & CPUS{2-3}", WIDE_FIELDS).matches({"target_cpu": 3})
    assert not compiled("target_cpu != CPUS{2-3}", WIDE_FIELDS, nr_cpu_ids=4).matches({"target_cpu": 9})
    assert compiled("target_cpu & CPUS{2}", WIDE_FIELDS).matches({"target_cpu": 2})
    assert compiled("mask & CPUS{1,3}", WIDE_FIELDS).matches({"mask": 0b1000})
    assert compiled("mask == CPUS{3}", WIDE_FIELDS).matches({"mask": 0b1000})
    assert not compiled("mask == CPUS{3}", WIDE_FIELDS).matches({"mask": 0b1001})
    assert compiled("mask == CPUS{0,3}", WIDE_FIELDS).matches({"mask": 0b1001})


@pytest.mark.parametrize(
    ("cpulist", "cpus"),
    [
        ("0", {0}),
        ("0-3", {0, 1, 2, 3}),
        ("0,2 ,5", {0, 2, 5}),
        ("0-7:2/4", {0, 1, 4, 5}),
        ("N", {7}),
        ("all", set(range(8))),
        ("ALL:1/2", {0, 2, 4, 6}),
        (",", set()),
    ],
)
def test_cpulists(cpulist: str, cpus: set[int]) -> None:
    assert parse_cpulist(cpulist.encode(), 8) == frozenset(cpus)


@pytest.mark.parametrize("cpulist", ["8", "3-1", "x", "1:1/2", "0-3:3/2", "0-3:1/0", "0-", "-1", "0-3x"])
def test_invalid_cpulists(cpulist: str) -> None:
    assert parse_cpulist(cpulist.encode(), 8) is None


def test_function_filters_use_the_symbol_table() -> None:
    symbols = {"do_sys_open": (0x1000, 0x80)}
    keep = compiled("ret.function == do_sys_open", WIDE_FIELDS, kernel_functions=symbols)
    assert keep.matches({"ret": 0x1010})
    assert not keep.matches({"ret": 0x1080})
    assert compiled("ret.function != 0x1000", WIDE_FIELDS, kernel_functions=symbols).matches({"ret": 5})
    assert rejection("ret.function == nope", WIDE_FIELDS).message == "Function not found"
    assert rejection("pid.function == 1").message == "Illegal operation for field type"
    assert rejection("ret.function < 1", WIDE_FIELDS).message == "Invalid operator"


def test_missing_values_read_as_zero_and_empty() -> None:
    assert compiled('pid == 0 && filename == ""').matches({})


def test_wrongly_typed_values_are_rejected() -> None:
    with pytest.raises(TypeError):
        compiled("pid == 1").matches({"pid": "1"})
    with pytest.raises(TypeError):
        compiled('filename == "1"').matches({"filename": 1})


# ---------------------------------------------------------------------------------------------------------------------
# Properties


@dataclass(frozen=True)
class Leaf:
    field: str
    value: int


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class Binary:
    operator: str
    left: Node
    right: Node
    parenthesized: bool


Node = Union[Leaf, Not, Binary]
LOGIC_FIELDS = tuple(FilterField(f"f{index}", False, 4, True, "int") for index in range(4))


def render(node: Node, parent_precedence: int = 0) -> str:
    """The expression with the fewest parentheses && over || needs, plus the ones the strategy asked for."""
    if isinstance(node, Leaf):
        return f"{node.field} == {node.value}"
    if isinstance(node, Not):
        inner = node.operand
        return "!" + (render(inner) if isinstance(inner, Leaf) else f"({render(inner)})")
    precedence = 2 if node.operator == "&&" else 1
    text = f"{render(node.left, precedence)} {node.operator} {render(node.right, precedence + 1)}"
    if node.parenthesized or precedence < parent_precedence:
        return f"({text})"
    return text


def evaluate(node: Node, values: FieldValues) -> bool:
    if isinstance(node, Leaf):
        return values[node.field] == node.value
    if isinstance(node, Not):
        return not evaluate(node.operand, values)
    if node.operator == "&&":
        return evaluate(node.left, values) and evaluate(node.right, values)
    return evaluate(node.left, values) or evaluate(node.right, values)


leaves = st.builds(Leaf, st.sampled_from([field.name for field in LOGIC_FIELDS]), st.integers(0, 1))
trees: st.SearchStrategy[Node] = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.builds(Binary, st.sampled_from(["&&", "||"]), children, children, st.booleans()),
    ),
    max_leaves=12,
)
assignments = st.fixed_dictionaries({field.name: st.integers(0, 1) for field in LOGIC_FIELDS})


@settings(max_examples=400, deadline=None)
@given(trees, st.lists(assignments, min_size=1, max_size=8))
def test_the_branch_program_evaluates_like_boolean_logic(tree: Node, events: list[FieldValues]) -> None:
    expression = render(tree)
    program = compiled(expression, LOGIC_FIELDS)
    for values in events:
        assert program.matches(values) is evaluate(tree, values), expression


filter_alphabet = st.sampled_from(
    [*"pidfenamCPUSOM_01x9-!&|()'\"~=<>{}*?[]\\., \t\n\0", "\xa0", "é", "filename", "pid", "CPUS{", "&&", "||"]
)
filterish_text = st.lists(filter_alphabet, max_size=40).map("".join)
event_values = st.fixed_dictionaries(
    {
        "filename": st.text(max_size=20),
        "pid": st.integers(-(2**70), 2**70),
        "old_pid": st.integers(-(2**31), 2**31),
        CURRENT_CPU_KEY: st.integers(0, 7),
        CURRENT_COMM_KEY: st.text(max_size=20),
    }
)


def _check_compile_contract(expression: str | bytes, values: FieldValues) -> None:
    try:
        result = compile_filter(expression, EXEC_FIELDS)
    except FilterError as error:
        assert error.message in FILTER_ERROR_TEXTS
        assert error.errno in {"EINVAL", "EPERM", "ENOENT", "ESRCH", "ENOMEM"}
        assert error.position >= 0
        assert isinstance(error.filter_file_text(expression), str)
        assert error.error_log_entry(expression).startswith("event filter parse error: error: ")
        return
    if result is not None:
        assert isinstance(result.matches(values), bool)
        assert result.filter_file_text().endswith("\n")


@settings(max_examples=600, deadline=None)
@given(filterish_text, event_values)
def test_filter_like_text_only_raises_filter_error(expression: str, values: FieldValues) -> None:
    _check_compile_contract(expression, values)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.binary(max_size=60)), event_values)
def test_arbitrary_text_only_raises_filter_error(expression: str | bytes, values: FieldValues) -> None:
    _check_compile_contract(expression, values)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab*?[]!-^", max_size=8), st.text(alphabet="ab[]!-^", max_size=8))
def test_glob_agrees_with_fnmatch_on_plain_patterns(pattern: str, text: str) -> None:
    assert glob_matches(pattern.encode(), text.encode()) is fnmatch.fnmatchcase(text, pattern)


def test_a_negated_class_does_not_match_the_end_of_the_string() -> None:
    assert not glob_matches(b"[!?]", b"")
    assert not compiled('filename ~ "/bin/true[!x]"').matches({"filename": "/bin/true"})
    assert compiled('filename ~ "/bin/tru[!x]"').matches({"filename": "/bin/true"})


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "&"]), st.integers(-(2**63), 2**64 - 1), event_values)
def test_every_numeric_operand_compiles_and_evaluates(operator: str, operand: int, values: FieldValues) -> None:
    """As the kernel's comparison predicates do: the record's value and the operand both as the field's C type
    (``pid_t``: the low 32 bits, signed; ``u64``: the low 64 bits), then compared."""
    unsigned = (FilterField("u", False, 8, False, "u64"),)
    test = _C_OPERATORS[operator]
    value = values["pid"]
    assert isinstance(value, int)
    if operand < 0:
        assert compiled(f"pid {operator} {operand}").matches(values) is test(_s32(value), _s32(operand))
        with pytest.raises(FilterError):
            compile_filter(f"u {operator} {operand}", unsigned)
    else:
        matched = compiled(f"u {operator} {operand:#x}", unsigned).matches({"u": value})
        assert matched is test(value % 2**64, operand)


def _s32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31


_C_OPERATORS = {
    "==": lambda left, right: left == right,
    "!=": lambda left, right: left != right,
    "<": lambda left, right: left < right,
    "<=": lambda left, right: left <= right,
    ">": lambda left, right: left > right,
    ">=": lambda left, right: left >= right,
    "&": lambda left, right: (left & right) != 0,
}
