"""The kernel's trace event filter language, for the in-memory fake tracefs.

This reproduces what ``kernel/trace/trace_events_filter.c`` does when a filter expression is written to
``events/<system>/<event>/filter``: which expressions are accepted, which errno a rejected write fails with, the
error message and the caret position the kernel reports, the text the ``filter`` file shows afterwards, and which
events an accepted filter keeps.

The kernel parses bytes, with its own ``ctype`` table (Latin-1: byte 0xA0 is a space and bytes 0xC0-0xFF other than
0xD7/0xF7 are letters), so this module works on the UTF-8 encoding of the expression and every position is a byte
offset.  Behaviour was checked against the running kernel (6.18) by ``tests/fake/test_filters_differential.py``.

Kernel behaviours that are easy to get wrong and are copied on purpose:

* the written text loses its trailing whitespace (leading whitespace stays) and ends at the first NUL byte;
  ``0`` (with any surrounding whitespace) clears the filter instead of being parsed;
* parenthesis and quote balance is checked before anything else, and those failures return ``EPERM``
  (``Too few '('``), ``ENOENT`` (``Too many '('``) and ``ESRCH`` (``Missing matching quote``);
* a predicate that does not start with a field name (``== 1``, ``()``) fails with ``EPERM`` without a parse error
  message: the ``filter`` file shows ``Error: (0)`` and error_log says ``Error`` at position 0;
* a trailing ``&&``/``||`` is ignored (``pid == 1 &&`` is accepted), a lone ``!`` is ``No filter found``;
* errors inside a predicate are reported one byte to the right of where they are (the kernel's ``pos`` is one past
  the predicate start); the ``filter`` file clamps the caret to the end of the expression, error_log does not;
* numbers are parsed like ``kstrtoll``/``kstrtoull`` with base 0 (``010`` is octal, ``08`` is illegal, ``-1`` is
  illegal for an unsigned field) and then truncated to the field's width (``pid == 4294967297`` matches pid 1);
* ``~ "!pat"`` negates the glob, and a glob pattern that starts with a digit is compared literally;
* ``~ "*suffix"`` on a fixed-size char array (and on ``COMM``) compares the end of the whole array, so it only
  matches a string that fills it;
* ``CPU & 3`` is accepted but never matches, and a mask of a single CPU (``CPUS{2}``) turns ``&`` into ``==``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

from ..snapshots._kallsyms import KernelText
from ._kernel_lib import KstrtoxError, bitmap_parselist, glob_match, isalnum, isdigit, isspace, kstrtoll, kstrtoull

__all__ = [
    "COMMON_FIELDS",
    "CURRENT_COMM_KEY",
    "CURRENT_CPU_KEY",
    "DEFAULT_NR_CPU_IDS",
    "FILTER_ERROR_TEXTS",
    "FILTER_WRITE_LIMIT",
    "GENERIC_FIELDS",
    "CompiledFilter",
    "FieldClass",
    "FilterError",
    "FilterField",
    "compile_filter",
    "normalize_filter_text",
]

FieldValue = Union[int, str]

#: The messages of ``err_text[]`` in kernel/trace/trace_events_filter.c, indexed by the kernel's FILT_ERR_* code.
FILTER_ERROR_TEXTS: tuple[str, ...] = (
    "No error",
    "Invalid operator",
    "Too many '('",
    "Too few '('",
    "Missing matching quote",
    "Missing '{'",
    "Missing '}'",
    "Operand too long",
    "Expecting string field",
    "Expecting numeric field",
    "Illegal operation for field type",
    "Field not found",
    "Illegal integer value",
    "Couldn't find or set field in one of a subsystem's events",
    "Too many terms in predicate expression",
    "Meaningless filter expression",
    "Invalid cpulist",
    "Only 'ip' field is supported for function trace",
    "Invalid value (did you forget quotes)?",
    "Function not found",
    "Error",
    "No filter found",
)

_ERR_INVALID_OP = 1
_ERR_TOO_MANY_OPEN = 2
_ERR_TOO_MANY_CLOSE = 3
_ERR_MISSING_QUOTE = 4
_ERR_MISSING_BRACE_OPEN = 5
_ERR_MISSING_BRACE_CLOSE = 6
_ERR_OPERAND_TOO_LONG = 7
_ERR_EXPECT_STRING = 8
_ERR_EXPECT_DIGIT = 9
_ERR_ILLEGAL_FIELD_OP = 10
_ERR_FIELD_NOT_FOUND = 11
_ERR_ILLEGAL_INTVAL = 12
_ERR_TOO_MANY_PREDS = 14
_ERR_INVALID_FILTER = 15
_ERR_INVALID_CPULIST = 16
_ERR_INVALID_VALUE = 18
_ERR_NO_FUNCTION = 19
_ERR_ERRNO = 20
_ERR_NO_FILTER = 21

#: A write of this many bytes or more to a ``filter`` file fails with EINVAL before any parsing (``cnt >=
#: PAGE_SIZE`` in event_filter_write) and leaves the file unchanged; the fake's file layer enforces it.
FILTER_WRITE_LIMIT = 4096
#: The number of possible CPUs assumed when none is given (it bounds ``CPUS{...}`` lists and ``N``).
DEFAULT_NR_CPU_IDS = 8
#: Keys of the value mapping that hold the CPU and the task comm the event was recorded on/by.  They feed the
#: ``CPU``/``cpu``/``common_cpu`` and ``COMM``/``comm`` pseudo fields.
CURRENT_CPU_KEY = "common_cpu"
CURRENT_COMM_KEY = "common_comm"

_MAX_FILTER_STR_VAL = 256  # a quoted string must be shorter than this
_NUMBER_BUFFER_SIZE = 24  # a number operand (with its sign) must be shorter than this
_TASK_COMM_LEN = 16
_TRACE_SEQ_BUFFER_SIZE = 8192 - (24 + 8 + 4)  # TRACE_SEQ_SIZE minus struct seq_buf, readpos and full
_ERROR_LOG_LOCATION = "event filter parse error"
_ERROR_LOG_COMMAND_PREFIX = "  Command: "


def _encode(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _normalize_written_bytes(written: str | bytes) -> bytes:
    """What the parser sees: the buffer ends at its first NUL and loses trailing (kernel) whitespace."""
    raw = _encode(written).split(b"\0", 1)[0]
    end = len(raw)
    while end and isspace(raw[end - 1]):
        end -= 1
    return raw[:end]


def normalize_filter_text(written: str | bytes) -> str:
    """The filter string the kernel stores for a write: cut at NUL, trailing whitespace removed, leading kept."""
    return _decode(_normalize_written_bytes(written))


# ---------------------------------------------------------------------------------------------------------------------
# Fields


class FieldClass(enum.Enum):
    """How the kernel filters a field (its ``filter_type``)."""

    NUMBER = "number"  # FILTER_OTHER: integers of 1, 2, 4 or 8 bytes (any other size never matches)
    DYNAMIC_STRING = "dynamic_string"  # __data_loc char[] / __string()
    RELATIVE_DYNAMIC_STRING = "relative_dynamic_string"  # __rel_loc char[]
    STATIC_STRING = "static_string"  # char name[N]
    POINTER_STRING = "pointer_string"  # char * / const char *
    CPUMASK = "cpumask"  # __data_loc cpumask_t
    CURRENT_CPU = "current_cpu"  # the CPU / cpu / common_cpu pseudo fields
    CURRENT_COMM = "current_comm"  # the COMM / comm pseudo fields
    STACKTRACE = "stacktrace"  # the stacktrace / STACKTRACE pseudo fields (accepted, never match)


_STRING_CLASSES = frozenset(
    {
        FieldClass.DYNAMIC_STRING,
        FieldClass.RELATIVE_DYNAMIC_STRING,
        FieldClass.STATIC_STRING,
        FieldClass.POINTER_STRING,
        FieldClass.CURRENT_COMM,
    }
)


def _class_of_c_type(c_type: str) -> FieldClass:
    """filter_assign_type(): classify a field by the C type its format line declares."""
    if "__data_loc" in c_type:
        if "char" in c_type:
            return FieldClass.DYNAMIC_STRING
        if "cpumask_t" in c_type:
            return FieldClass.CPUMASK
    if "__rel_loc" in c_type and "char" in c_type:
        return FieldClass.RELATIVE_DYNAMIC_STRING
    if "[" in c_type and "char" in c_type:
        return FieldClass.STATIC_STRING
    if c_type in ("char *", "const char *"):
        return FieldClass.POINTER_STRING
    return FieldClass.NUMBER


@dataclass(frozen=True)
class FilterField:
    """One field an event's filter may name, as its ``format`` file declares it.

    ``c_type`` (the declared type, e.g. ``__data_loc char[]``, ``char[16]``, ``pid_t``) is optional; when it is
    given it decides the field class exactly like the kernel does, otherwise ``is_string`` picks a dynamic string or
    a number.  ``field_class`` overrides both (used for the pseudo fields).
    """

    name: str
    is_string: bool
    size: int
    signed: bool
    c_type: str = ""
    field_class: Optional[FieldClass] = None

    @property
    def kind(self) -> FieldClass:
        if self.field_class is not None:
            return self.field_class
        if self.c_type:
            return _class_of_c_type(self.c_type)
        return FieldClass.DYNAMIC_STRING if self.is_string else FieldClass.NUMBER

    @property
    def filters_as_string(self) -> bool:
        return self.kind in _STRING_CLASSES


#: ``ftrace_generic_fields``: known to every event, looked up after the event's own fields.
GENERIC_FIELDS: tuple[FilterField, ...] = (
    FilterField("CPU", False, 0, True, "int", FieldClass.CURRENT_CPU),
    FilterField("cpu", False, 0, True, "int", FieldClass.CURRENT_CPU),
    FilterField("common_cpu", False, 0, True, "int", FieldClass.CURRENT_CPU),
    FilterField("COMM", True, 0, False, "char *", FieldClass.CURRENT_COMM),
    FilterField("comm", True, 0, False, "char *", FieldClass.CURRENT_COMM),
    FilterField("stacktrace", False, 0, False, "char *", FieldClass.STACKTRACE),
    FilterField("STACKTRACE", False, 0, False, "char *", FieldClass.STACKTRACE),
)

#: ``ftrace_common_fields`` (struct trace_entry): known to every event, looked up last.
COMMON_FIELDS: tuple[FilterField, ...] = (
    FilterField("common_type", False, 2, False, "unsigned short"),
    FilterField("common_flags", False, 1, False, "unsigned char"),
    FilterField("common_preempt_count", False, 1, False, "unsigned char"),
    FilterField("common_pid", False, 4, True, "int"),
)


# ---------------------------------------------------------------------------------------------------------------------
# Errors


class FilterError(Exception):
    """A filter the kernel rejects.

    ``message`` is the kernel's err_text (what error_log prints), ``position`` the error position the kernel
    records (unclamped, as error_log shows it), ``errno`` the symbolic errno the write(2) fails with and
    ``error_code`` the FILT_ERR_* index.  ``has_parse_error`` is False for the failures the kernel reports without a
    parse error (the ``filter`` file then says ``Error: (0)``).
    """

    def __init__(self, error_code: int, position: int, errno: str, *, has_parse_error: bool = True) -> None:
        self.error_code = error_code
        self.message = FILTER_ERROR_TEXTS[error_code]
        self.position = position
        self.errno = errno
        self.has_parse_error = has_parse_error
        super().__init__(f"{self.message} (position {position}, {errno})")

    def filter_file_text(self, expression: str | bytes) -> str:
        """Exactly what reading the event's ``filter`` file returns after the failed write of ``expression``."""
        stored = _normalize_written_bytes(expression)
        text = _BoundedSequence()
        text.put(stored)
        if self.has_parse_error:
            caret_width = min(self.position, len(stored))
            if caret_width:
                caret_width += 1  # "indexing is off by one"
            text.printf(b"\n" + b"^".rjust(caret_width))
            text.printf(b"\nparse_error: " + self.message.encode() + b"\n")
        else:
            text.printf(b"\nError: (0)\n")
        return _decode(_filter_file_read(text.value()))

    def error_log_entry(self, expression: str | bytes) -> str:
        """The instance's error_log entry for this failure, without its ``[timestamp] `` prefix."""
        stored = _decode(_normalize_written_bytes(expression))
        if self.has_parse_error:
            message, caret = self.message, self.position
        else:
            message, caret = FILTER_ERROR_TEXTS[_ERR_ERRNO], 0
        caret_line = " " * (len(_ERROR_LOG_COMMAND_PREFIX) + caret) + "^\n"
        return f"{_ERROR_LOG_LOCATION}: error: {message}\n{_ERROR_LOG_COMMAND_PREFIX}{stored}\n{caret_line}"


class _BoundedSequence:
    """A trace_seq: a printf that does not fit is dropped and every later write is dropped too."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._full = False

    def put(self, data: bytes) -> None:
        if self._full or len(self._buffer) + len(data) > _TRACE_SEQ_BUFFER_SIZE:
            self._full = True
            return
        self._buffer += data

    def printf(self, formatted: bytes) -> None:
        if self._full or len(self._buffer) + len(formatted) >= _TRACE_SEQ_BUFFER_SIZE:
            self._full = True
            return
        self._buffer += formatted

    def value(self) -> bytes:
        return bytes(self._buffer)


def _filter_file_read(stored: bytes) -> bytes:
    """event_filter_read(): the stored string and a newline, or nothing when that does not fit a trace_seq."""
    reader = _BoundedSequence()
    reader.printf(stored + b"\n")
    return reader.value()


class _PredicateAbort(Exception):
    """parse_pred() failed without recording a parse error (it returned -1)."""


# ---------------------------------------------------------------------------------------------------------------------
# Numbers

_U64_MASK = (1 << 64) - 1


def _parse_integer_operand(text: bytes, signed: bool) -> int | None:
    """kstrtoll/kstrtoull(text, 0): the value as the kernel's u64, or None when it is illegal."""
    chars = text.decode("latin-1")
    try:
        return kstrtoll(chars) & _U64_MASK if signed else kstrtoull(chars)
    except KstrtoxError:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Predicates


class _Operator(enum.Enum):
    GLOB = "~"
    NOT_EQUAL = "!="
    EQUAL = "=="
    LESS_EQUAL = "<="
    LESS = "<"
    GREATER_EQUAL = ">="
    GREATER = ">"
    BITWISE_AND = "&"


_OPERATORS_IN_MATCH_ORDER: tuple[_Operator, ...] = tuple(_Operator)  # "<=" before "<", ">=" before ">"

_ORDERING_TESTS: dict[_Operator, Callable[[int, int], bool]] = {
    _Operator.LESS: lambda left, right: left < right,
    _Operator.LESS_EQUAL: lambda left, right: left <= right,
    _Operator.GREATER: lambda left, right: left > right,
    _Operator.GREATER_EQUAL: lambda left, right: left >= right,
    _Operator.BITWISE_AND: lambda left, right: (left & right) != 0,
    _Operator.EQUAL: lambda left, right: left == right,
    _Operator.NOT_EQUAL: lambda left, right: left != right,
}


def _as_width(value: int, size: int, signed: bool) -> int:
    bits = size * 8
    value &= (1 << bits) - 1
    if signed and value >> (bits - 1):
        value -= 1 << bits
    return value


class _EventValues:
    """The field values of one event, read the way the kernel reads the record."""

    def __init__(self, values: Mapping[str, FieldValue]) -> None:
        self._values = values

    def number(self, name: str) -> int:
        value = self._values.get(name, 0)
        if isinstance(value, str):
            raise TypeError(f"filter field {name!r} is numeric, got the string {value!r}")
        return int(value)

    def text(self, name: str) -> bytes:
        value = self._values.get(name, "")
        if not isinstance(value, str):
            raise TypeError(f"filter field {name!r} is a string, got {value!r}")
        return _encode(value).split(b"\0", 1)[0]

    def current_cpu(self) -> int:
        return self.number(CURRENT_CPU_KEY)

    def current_comm(self) -> bytes:
        return self.text(CURRENT_COMM_KEY)


class _Predicate:
    def test(self, event: _EventValues) -> bool:
        raise NotImplementedError


class _NeverMatches(_Predicate):
    """FILTER_PRED_FN_NOP: fields whose size has no comparison function (pseudo fields, arrays)."""

    def test(self, event: _EventValues) -> bool:
        return False


@dataclass
class _NumberEquality(_Predicate):
    """FILTER_PRED_FN_8..64: unsigned equality at the field's width, optionally negated."""

    field_name: str
    size: int
    operand: int
    negate: bool

    def test(self, event: _EventValues) -> bool:
        stored = _as_width(event.number(self.field_name), self.size, False)
        return (stored == _as_width(self.operand, self.size, False)) != self.negate


@dataclass
class _NumberOrdering(_Predicate):
    """FILTER_PRED_FN_[SU]8..64: < <= > >= & with the operand cast to the field's type."""

    field_name: str
    size: int
    signed: bool
    operator: _Operator
    operand: int

    def test(self, event: _EventValues) -> bool:
        stored = _as_width(event.number(self.field_name), self.size, self.signed)
        return _ORDERING_TESTS[self.operator](stored, _as_width(self.operand, self.size, self.signed))


def _scalar_in_mask(operator: _Operator, cpu: int, mask: frozenset[int]) -> bool:
    """do_filter_scalar_cpumask(): the mask has a weight other than one, so it never equals one CPU."""
    if operator is _Operator.EQUAL:
        return False
    if operator is _Operator.NOT_EQUAL:
        return True
    return cpu in mask


@dataclass
class _NumberInCpumask(_Predicate):
    """FILTER_PRED_FN_*_CPUMASK: a numeric field holding a CPU number against a multi-CPU mask."""

    field_name: str
    size: int
    operator: _Operator
    mask: frozenset[int]
    nr_cpu_ids: int

    def test(self, event: _EventValues) -> bool:
        cpu = _as_width(event.number(self.field_name), self.size, False)
        if cpu >= self.nr_cpu_ids:
            return False
        return _scalar_in_mask(self.operator, cpu, self.mask)


@dataclass
class _CurrentCpuComparison(_Predicate):
    """FILTER_PRED_FN_CPU: the recording CPU against a number (``&`` never matches)."""

    operator: _Operator
    operand: int

    def test(self, event: _EventValues) -> bool:
        if self.operator is _Operator.BITWISE_AND:
            return False
        return _ORDERING_TESTS[self.operator](event.current_cpu(), _as_width(self.operand, 4, True))


@dataclass
class _CurrentCpuInCpumask(_Predicate):
    """FILTER_PRED_FN_CPU_CPUMASK."""

    operator: _Operator
    mask: frozenset[int]

    def test(self, event: _EventValues) -> bool:
        return _scalar_in_mask(self.operator, event.current_cpu(), self.mask)


def _mask_of(value: int, nr_cpu_ids: int) -> frozenset[int]:
    return frozenset(cpu for cpu in range(nr_cpu_ids) if value >> cpu & 1)


@dataclass
class _CpumaskField(_Predicate):
    """FILTER_PRED_FN_CPUMASK / _CPUMASK_CPU: a cpumask field (its value an int bitmask) against CPUS{...}."""

    field_name: str
    operator: _Operator
    mask: frozenset[int]
    single_cpu: Optional[int]
    nr_cpu_ids: int

    def test(self, event: _EventValues) -> bool:
        field_mask = _mask_of(event.number(self.field_name), self.nr_cpu_ids)
        if self.single_cpu is not None:
            is_only_cpu = field_mask == {self.single_cpu}
            if self.operator is _Operator.EQUAL:
                return is_only_cpu
            if self.operator is _Operator.NOT_EQUAL:
                return not is_only_cpu
            return self.single_cpu in field_mask
        if self.operator is _Operator.EQUAL:
            return field_mask == self.mask
        if self.operator is _Operator.NOT_EQUAL:
            return field_mask != self.mask
        return bool(field_mask & self.mask)


@dataclass
class _FunctionAddress(_Predicate):
    """FILTER_PRED_FN_FUNCTION: ``field.function == symbol`` tests start <= value < end."""

    field_name: str
    start: int
    end: int
    negate: bool

    def test(self, event: _EventValues) -> bool:
        address = event.number(self.field_name) & _U64_MASK
        return (self.start <= address < self.end) != self.negate


class _MatchKind(enum.Enum):
    FULL = "full"
    FRONT = "front"
    MIDDLE = "middle"
    END = "end"
    GLOB = "glob"


def _c_string(data: bytes) -> bytes:
    return data.split(b"\0", 1)[0]


@dataclass
class _StringMatch(_Predicate):
    """FILTER_PRED_FN_STRING/STRLOC/STRRELLOC/PCHAR/COMM with the regex_match_* callbacks."""

    field_name: str
    field_kind: FieldClass
    static_size: int
    match_kind: _MatchKind
    pattern: bytes
    negate: bool

    def _buffer_and_length(self, event: _EventValues) -> tuple[bytes, int]:
        """The bytes the kernel looks at and the length it passes to the match callback."""
        if self.field_kind is FieldClass.CURRENT_COMM:
            comm = event.current_comm()[: _TASK_COMM_LEN - 1]
            return comm.ljust(_TASK_COMM_LEN, b"\0"), _TASK_COMM_LEN
        value = event.text(self.field_name)
        if self.field_kind is FieldClass.STATIC_STRING:
            return value[: self.static_size].ljust(self.static_size, b"\0"), self.static_size
        return value + b"\0", len(value) + 1

    def test(self, event: _EventValues) -> bool:
        buffer, length = self._buffer_and_length(event)
        return self._matches(buffer, length) != self.negate

    def _matches(self, buffer: bytes, length: int) -> bool:
        pattern = self.pattern
        if self.match_kind is _MatchKind.FULL:
            if length == 0:
                return _c_string(buffer) == pattern
            if length < len(pattern):
                return False
            return _c_string(buffer[:length]) == pattern[:length]
        if self.match_kind is _MatchKind.FRONT:
            if length and length < len(pattern):
                return False
            return _c_string(buffer[: len(pattern)]) == pattern
        if self.match_kind is _MatchKind.MIDDLE:
            return pattern in buffer[:length]
        if self.match_kind is _MatchKind.END:
            text_length = length - 1
            return text_length >= len(pattern) and buffer[text_length - len(pattern) : text_length] == pattern
        return glob_match(pattern, _c_string(buffer[:length]))


def _classify_glob(pattern: bytes) -> tuple[_MatchKind, bytes, bool]:
    """filter_parse_regex(): the match kind, the bytes to compare and whether a leading ``!`` negates it."""
    negate = pattern[:1] == b"!"
    if negate:
        pattern = pattern[1:]
    if pattern[:1] and isdigit(pattern[0]):
        return _MatchKind.FULL, pattern, negate
    kind = _MatchKind.FULL
    for index, byte in enumerate(pattern):
        if byte == ord("*"):
            if index == 0:
                kind = _MatchKind.END
            elif index == len(pattern) - 1:
                kind = _MatchKind.MIDDLE if kind is _MatchKind.END else _MatchKind.FRONT
                pattern = pattern[:index]
                break
            else:
                return _MatchKind.GLOB, pattern, negate
        elif byte in b"[?\\":
            return _MatchKind.GLOB, pattern, negate
    if pattern[:1] == b"*":
        pattern = pattern[1:]
    return kind, pattern, negate


# ---------------------------------------------------------------------------------------------------------------------
# The parser (predicate_parse / parse_pred / calc_stack)

_INVERT = 1
_PROCESS_AND = 2
_PROCESS_OR = 4

_ERRNO_EPERM = "EPERM"  # a -1 return from the parser
_ERRNO_ENOENT = "ENOENT"  # calc_stack's TOO_MANY_OPEN (-2)
_ERRNO_ESRCH = "ESRCH"  # calc_stack's MISSING_QUOTE (-3)
_ERRNO_EINVAL = "EINVAL"
_ERRNO_ENOMEM = "ENOMEM"


@dataclass
class _ProgramEntry:
    predicate: Optional[_Predicate]
    target: int
    branch_when: bool = False


@dataclass
class _ExpressionShape:
    paren_depth: int
    predicate_bound: int


def _measure_expression(text: bytes) -> _ExpressionShape:
    """calc_stack(): check parentheses and quotes, bound the number of predicates and the nesting depth."""
    in_predicate = False
    predicate_count = 0
    open_parens = 1
    max_open = 1
    quote = 0
    last_quote_index = 0
    for index, byte in enumerate(text):
        if isspace(byte):
            continue
        if quote:
            if byte == quote:
                quote = 0
            continue
        if byte in b"'\"":
            quote = byte
            last_quote_index = index
        elif byte in b"|&" and index + 1 < len(text) and text[index + 1] == byte:
            in_predicate = False
            continue
        elif byte == ord("("):
            in_predicate = False
            open_parens += 1
            max_open = max(max_open, open_parens)
            continue
        elif byte == ord(")"):
            in_predicate = False
            if open_parens == 1:
                raise FilterError(_ERR_TOO_MANY_CLOSE, index, _ERRNO_EPERM)
            open_parens -= 1
            continue
        if not in_predicate:
            predicate_count += 1
            in_predicate = True
    if quote:
        raise FilterError(_ERR_MISSING_QUOTE, last_quote_index, _ERRNO_ESRCH)
    if open_parens != 1:
        raise FilterError(_ERR_TOO_MANY_OPEN, _find_unclosed_paren(text, open_parens), _ERRNO_ENOENT)
    return _ExpressionShape(max_open, predicate_count)


def _find_unclosed_paren(text: bytes, open_parens: int) -> int:
    """Walk back from the end to the ``(`` left open; index 0 is never examined, so it is the fallback."""
    level = open_parens
    quote = 0
    for index in range(len(text) - 1, 0, -1):
        byte = text[index]
        if quote:
            if byte == quote:
                quote = 0
            continue
        if byte == ord("("):
            if level == open_parens:
                return index
            level -= 1
        elif byte == ord(")"):
            level += 1
        elif byte in b"'\"":
            quote = byte
    return 0


class _FilterParser:
    def __init__(
        self,
        text: bytes,
        fields: Sequence[FilterField],
        nr_cpu_ids: int,
        kernel_functions: KernelText,
        trailing_operator_is_error: bool,
    ) -> None:
        self._text = text
        self._fields: dict[str, FilterField] = {}
        for known in (*COMMON_FIELDS, *GENERIC_FIELDS, *fields):
            self._fields[known.name] = known  # later wins: event fields, then generic, then common
        self._nr_cpu_ids = nr_cpu_ids
        self._kernel_functions = kernel_functions
        self._trailing_operator_is_error = trailing_operator_is_error

    def _at(self, index: int) -> int:
        return self._text[index] if index < len(self._text) else 0

    # -- the logical structure -------------------------------------------------------------------------------------

    def parse(self) -> list[_ProgramEntry]:
        shape = _measure_expression(self._text)
        if not shape.predicate_bound:
            raise FilterError(_ERR_ERRNO, 0, _ERRNO_EINVAL, has_parse_error=False)
        return self._build_program(shape)

    def _build_program(self, shape: _ExpressionShape) -> list[_ProgramEntry]:
        program: list[_ProgramEntry] = []
        inverts: list[bool] = []
        scopes = [0]  # each entry: _INVERT / _PROCESS_AND / _PROCESS_OR flags of one parenthesis level
        invert = False
        errno_on_failure = _ERRNO_ENOMEM
        cursor = 0
        finished = False
        while not finished and self._at(cursor):
            token = cursor
            cursor += 1
            byte = self._text[token]
            if isspace(byte):
                continue
            if byte == ord("("):
                if len(scopes) - 1 >= shape.paren_depth - 1:
                    raise FilterError(_ERR_ERRNO, 0, _ERRNO_EINVAL, has_parse_error=False)
                scopes.append(_INVERT if invert else 0)
                continue
            if byte == ord("!") and self._at(token + 1) not in b"=~":
                invert = not invert
                continue
            if len(program) >= shape.predicate_bound:
                raise FilterError(_ERR_TOO_MANY_PREDS, token, errno_on_failure)
            inverts.append(invert)
            index = len(program)
            try:
                predicate, consumed = self._parse_predicate(token)
            except _PredicateAbort:
                raise FilterError(_ERR_ERRNO, 0, _ERRNO_EPERM, has_parse_error=False) from None
            program.append(_ProgramEntry(predicate, index - 1))
            errno_on_failure = _ERRNO_EPERM
            cursor, finished, invert = self._after_predicate(token + consumed, program, index, scopes)
        if not finished and program and self._trailing_operator_is_error:
            raise FilterError(_ERR_INVALID_FILTER, cursor, _ERRNO_EINVAL)
        if len(scopes) != 1:
            raise FilterError(_ERR_TOO_MANY_OPEN, cursor, errno_on_failure)
        if not program:
            raise FilterError(_ERR_NO_FILTER, cursor, _ERRNO_EINVAL)
        return self._finish_program(program, inverts)

    def _after_predicate(
        self, cursor: int, program: list[_ProgramEntry], index: int, scopes: list[int]
    ) -> tuple[int, bool, bool]:
        """What follows predicate ``index``: ``&&``, ``||``, ``)`` (closing scopes) or the end; links the branch
        program as the kernel's predicate_parse() does. Returns (cursor, whether the expression ended, the
        inversion of the scope it continues in)."""
        while True:
            token = cursor
            cursor += 1
            byte = self._at(token)
            if isspace(byte):
                continue
            if byte in b"&|":
                if self._at(token + 1) != byte:
                    raise FilterError(_ERR_TOO_MANY_PREDS, token, _ERRNO_EPERM)
                cursor += 1
            elif byte not in (0, ord(")")):
                raise FilterError(_ERR_TOO_MANY_PREDS, token, _ERRNO_EPERM)
            invert = bool(scopes[-1] & _INVERT)
            if scopes[-1] & _PROCESS_AND:
                self._link(program, index, invert)
                scopes[-1] &= ~_PROCESS_AND
            if byte == ord("&"):
                scopes[-1] |= _PROCESS_AND
                return cursor, False, invert
            if scopes[-1] & _PROCESS_OR:
                self._link(program, index, not invert)
                scopes[-1] &= ~_PROCESS_OR
            if byte == ord("|"):
                scopes[-1] |= _PROCESS_OR
                return cursor, False, invert
            if byte == 0:
                return cursor, True, invert
            if len(scopes) == 1:
                raise FilterError(_ERR_TOO_MANY_CLOSE, cursor, _ERRNO_EPERM)
            scopes.pop()

    @staticmethod
    def _link(program: list[_ProgramEntry], current: int, branch_when: bool) -> None:
        """update_preds(): point the entry the current one chains to at the current entry."""
        linked = program[current].target
        if linked < 0:
            raise AssertionError("filter program links before its first entry")
        next_link = program[linked].target
        program[linked].branch_when = branch_when
        program[linked].target = current
        program[current].target = next_link

    @staticmethod
    def _finish_program(program: list[_ProgramEntry], inverts: list[bool]) -> list[_ProgramEntry]:
        count = len(program)
        program[-1].target = count
        program[-1].branch_when = False
        for index in range(count - 2, -1, -1):
            target = program[index].target
            if program[index].branch_when == program[target].branch_when:
                program[index].target = program[target].target
        for index, entry in enumerate(program):
            entry.branch_when = inverts[index] != entry.branch_when
            if entry.target <= index:
                raise FilterError(_ERR_ERRNO, 0, _ERRNO_EINVAL, has_parse_error=False)
        program.append(_ProgramEntry(None, 1))  # TRUE
        program.append(_ProgramEntry(None, 0))  # FALSE
        return program

    # -- one predicate ---------------------------------------------------------------------------------------------

    @staticmethod
    def _error(code: int, absolute_index: int) -> FilterError:
        """An error inside a predicate: the kernel reports it one byte right of the offending index."""
        return FilterError(code, absolute_index + 1, _ERRNO_EINVAL)

    def _parse_predicate(self, start: int) -> tuple[_Predicate, int]:
        """parse_pred(): the predicate at ``start`` and how many bytes it used."""
        at = self._at
        index = start
        while isspace(at(index)):
            index += 1
        name_start = index
        while isalnum(at(index)) or at(index) == ord("_"):
            index += 1
        if index == name_start:
            raise _PredicateAbort()
        field_name = _decode(self._text[name_start:index])
        known = self._fields.get(field_name)
        if known is None:
            raise self._error(_ERR_FIELD_NOT_FOUND, index)
        if self._text.startswith(b".ustring", index):
            index += len(b".ustring")  # a user-space string reads the same as any other from a fake record
        wants_function = self._text.startswith(b".function", index)
        if wants_function:
            index += len(b".function")
        while isspace(at(index)):
            index += 1
        operator = next(
            (op for op in _OPERATORS_IN_MATCH_ORDER if self._text.startswith(op.value.encode(), index)), None
        )
        if operator is None:
            raise self._error(_ERR_INVALID_OP, index)
        index += len(operator.value)
        while isspace(at(index)):
            index += 1
        if wants_function:
            return self._parse_function_operand(known, operator, index, start)
        if self._text.startswith(b"CPUS", index):
            return self._parse_cpumask_operand(known, operator, index, start)
        if at(index) in b"'\"":
            return self._parse_string_operand(known, operator, index, start)
        if isdigit(at(index)) or at(index) == ord("-"):
            return self._parse_number_operand(known, operator, index, start)
        raise self._error(_ERR_INVALID_VALUE, index)

    def _parse_function_operand(
        self, known: FilterField, operator: _Operator, index: int, start: int
    ) -> tuple[_Predicate, int]:
        if known.size != 8:
            raise self._error(_ERR_ILLEGAL_FIELD_OP, index)
        if operator not in (_Operator.EQUAL, _Operator.NOT_EQUAL):
            raise self._error(_ERR_INVALID_OP, index)
        operand_start = index
        if isdigit(self._at(index)):
            while isalnum(self._at(index)):
                index += 1
            if index - operand_start >= _NUMBER_BUFFER_SIZE:
                raise self._error(_ERR_OPERAND_TOO_LONG, index)
            address = _parse_integer_operand(self._text[operand_start:index], signed=False)
            if address is None:
                raise self._error(_ERR_INVALID_VALUE, index)
            span = self._kernel_functions.span_of_address(address)
        else:
            while self._at(index) and not isspace(self._at(index)):
                index += 1
            span = self._kernel_functions.span_of_name(_decode(self._text[operand_start:index]))
        if span is None:
            raise self._error(_ERR_NO_FUNCTION, index)
        predicate = _FunctionAddress(known.name, span[0], span[1], operator is _Operator.NOT_EQUAL)
        return predicate, index - start

    def _parse_cpumask_operand(
        self, known: FilterField, operator: _Operator, index: int, start: int
    ) -> tuple[_Predicate, int]:
        kind = known.kind
        if kind not in (FieldClass.CPUMASK, FieldClass.CURRENT_CPU, FieldClass.NUMBER):
            raise self._error(_ERR_ILLEGAL_FIELD_OP, index)
        if operator not in (_Operator.EQUAL, _Operator.NOT_EQUAL, _Operator.BITWISE_AND):
            raise self._error(_ERR_ILLEGAL_FIELD_OP, index)
        index += len(b"CPUS")
        brace = self._at(index)
        index += 1
        if brace != ord("{"):
            raise self._error(_ERR_MISSING_BRACE_OPEN, index)
        list_start = index
        while self._at(index) and self._at(index) != ord("}"):
            index += 1
        if self._at(index) != ord("}"):
            raise self._error(_ERR_MISSING_BRACE_CLOSE, index)
        if index == list_start:
            raise self._error(_ERR_INVALID_CPULIST, index)
        mask = bitmap_parselist(self._text[list_start:index], self._nr_cpu_ids)
        if mask is None:
            raise self._error(_ERR_INVALID_CPULIST, index)
        index += 1
        single_cpu = min(mask) if len(mask) == 1 else None
        consumed = index - start
        if kind is FieldClass.CPUMASK:
            return _CpumaskField(known.name, operator, mask, single_cpu, self._nr_cpu_ids), consumed
        if single_cpu is not None and operator is _Operator.BITWISE_AND:
            operator = _Operator.EQUAL
        if kind is FieldClass.CURRENT_CPU:
            if single_cpu is not None:
                return _CurrentCpuComparison(operator, single_cpu), consumed
            return _CurrentCpuInCpumask(operator, mask), consumed
        if known.size not in (1, 2, 4, 8):
            return _NeverMatches(), consumed
        if single_cpu is not None:
            return _NumberEquality(known.name, known.size, single_cpu, operator is _Operator.NOT_EQUAL), consumed
        return _NumberInCpumask(known.name, known.size, operator, mask, self._nr_cpu_ids), consumed

    def _parse_string_operand(
        self, known: FilterField, operator: _Operator, index: int, start: int
    ) -> tuple[_Predicate, int]:
        quote = self._at(index)
        if operator not in (_Operator.NOT_EQUAL, _Operator.GLOB, _Operator.EQUAL):
            raise self._error(_ERR_ILLEGAL_FIELD_OP, index)
        if not known.filters_as_string:
            raise self._error(_ERR_EXPECT_DIGIT, index)
        value_start = index + 1
        index = value_start
        while self._at(index) and self._at(index) != quote:
            index += 1
        if not self._at(index):
            raise self._error(_ERR_MISSING_QUOTE, index)
        if index - value_start >= _MAX_FILTER_STR_VAL:
            raise self._error(_ERR_OPERAND_TOO_LONG, index)
        pattern = self._text[value_start:index]
        negate = operator is _Operator.NOT_EQUAL
        match_kind = _MatchKind.FULL
        if operator is _Operator.GLOB:
            match_kind, pattern, negate = _classify_glob(pattern)
        index += 1
        static_size = known.size if known.kind is FieldClass.STATIC_STRING else 0
        predicate = _StringMatch(known.name, known.kind, static_size, match_kind, pattern, negate)
        return predicate, index - start

    def _parse_number_operand(
        self, known: FilterField, operator: _Operator, index: int, start: int
    ) -> tuple[_Predicate, int]:
        if known.filters_as_string:
            raise self._error(_ERR_EXPECT_STRING, index)
        if operator is _Operator.GLOB:
            raise self._error(_ERR_ILLEGAL_FIELD_OP, index)
        number_start = index
        if self._at(index) == ord("-"):
            index += 1
        while isalnum(self._at(index)):
            index += 1
        if index - number_start >= _NUMBER_BUFFER_SIZE:
            raise self._error(_ERR_OPERAND_TOO_LONG, index)
        operand = _parse_integer_operand(self._text[number_start:index], known.signed)
        if operand is None:
            raise self._error(_ERR_ILLEGAL_INTVAL, number_start)
        consumed = index - start
        if known.kind is FieldClass.CURRENT_CPU:
            return _CurrentCpuComparison(operator, operand), consumed
        if known.size not in (1, 2, 4, 8) or known.kind in (FieldClass.STACKTRACE, FieldClass.CPUMASK):
            return _NeverMatches(), consumed
        if operator in (_Operator.EQUAL, _Operator.NOT_EQUAL):
            return _NumberEquality(known.name, known.size, operand, operator is _Operator.NOT_EQUAL), consumed
        return _NumberOrdering(known.name, known.size, known.signed, operator, operand), consumed


# ---------------------------------------------------------------------------------------------------------------------
# Public entry points


class CompiledFilter:
    """An accepted filter: the stored expression and the kernel's branch program that evaluates it."""

    def __init__(self, expression: str, program: Sequence[_ProgramEntry]) -> None:
        self.expression = expression
        self._program = tuple(program)

    def __repr__(self) -> str:
        return f"CompiledFilter({self.expression!r})"

    @property
    def predicate_count(self) -> int:
        return len(self._program) - 2

    def filter_file_text(self) -> str:
        """What the event's ``filter`` file shows while this filter is set."""
        return _decode(_filter_file_read(_encode(self.expression)))

    def matches(self, values: Mapping[str, FieldValue]) -> bool:
        """Whether the kernel keeps an event with these field values (filter_match_preds).

        ``values`` maps field names to ints (numbers, cpumask bitmasks) or strs; a missing field reads as 0 or
        "".  The ``CPU``/``COMM`` pseudo fields read ``values[CURRENT_CPU_KEY]`` and ``values[CURRENT_COMM_KEY]``.
        """
        event = _EventValues(values)
        index = 0
        while True:
            entry = self._program[index]
            if entry.predicate is None:
                return bool(entry.target)
            if entry.predicate.test(event) == entry.branch_when:
                index = entry.target
            index += 1


def compile_filter(
    expression: str | bytes,
    fields: Sequence[FilterField],
    *,
    nr_cpu_ids: int = DEFAULT_NR_CPU_IDS,
    kernel_functions: KernelText | Mapping[str, tuple[int, int]] | None = None,
    trailing_operator_is_error: bool = True,
) -> CompiledFilter | None:
    """Parse a write to an event's ``filter`` file the way the kernel does.

    Returns None when the write clears the filter (``0``), a CompiledFilter when the kernel accepts it, and raises
    FilterError with the kernel's message, position and errno otherwise.  ``fields`` are the event's own fields;
    the common and generic (``CPU``, ``COMM``, ...) fields are always known.  ``kernel_functions`` is the kernel's
    text layout for ``field.function == symbol`` (or a mapping of names to (start address, size)).
    ``trailing_operator_is_error``: the kernel rejects ``a &&`` with "Meaningless filter expression" (v6.1, v6.12
    and the 6.18 builds checked); a kernel that took it as ``a`` has a snapshot that says so.
    The FILTER_WRITE_LIMIT check belongs to the file layer and is not applied here.
    """
    text = _normalize_written_bytes(expression)
    stripped = text
    while stripped and isspace(stripped[0]):
        stripped = stripped[1:]
    if stripped == b"0":
        return None
    if kernel_functions is None:
        kernel_functions = KernelText(())
    elif not isinstance(kernel_functions, KernelText):
        kernel_functions = KernelText.from_spans(kernel_functions)
    parser = _FilterParser(text, fields, nr_cpu_ids, kernel_functions, trailing_operator_is_error)
    program = parser.parse()
    return CompiledFilter(_decode(text), program)
