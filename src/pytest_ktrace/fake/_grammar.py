"""The kernel's kprobe/uprobe command grammar, as a pure parser for the fake tracefs.

The fake backend must reject exactly what the kernel rejects: same errno, same ``error_log`` message, same caret
column.  This module re-implements the *behaviour* of ``kernel/trace/trace_probe.c``, ``trace_kprobe.c``,
``trace_uprobe.c`` and ``trace_dynevent.c`` (v6.12 as the model, v6.1 differences switched by
:class:`KernelDialect`), including their quirks, because the quirks are what a test against a real kernel sees.

Faithfulness notes that shape the code:

* The kernel works on bytes with its own ``ctype`` table (Latin-1: byte 0xA0 is a space, 0xC0-0xFF are letters).
  Internally every command is therefore handled as a "byte string": a ``str`` whose characters are the bytes
  (Latin-1 decoded).  Results are converted back to ``str`` (UTF-8, undecodable bytes kept as surrogates).
  ``ProbeSyntaxError.position`` counts bytes, like the kernel's caret.
* Numbers go through :func:`._kernel_lib.kstrtoull` and friends, which copy ``lib/kstrtox.c``: ``0x``/``0``
  prefixes, a leading ``+``, overflow giving ``ERANGE`` before trailing garbage gives ``EINVAL``.  The errno
  matters: several errors return the number parser's errno rather than ``EINVAL``.
* Fetch arguments are compiled into a 16-slot instruction array (``FETCH_INSN_MAX``) only to reproduce *when*
  ``TOO_MANY_OPS`` fires and which instruction is last (``BAD_STRING`` and friends look at it).

State-dependent checks (``EVENT_EXIST``, ``SAME_PROBE``, ``DIFF_*``, removal of an unknown event -> ``ENOENT``,
``EBUSY``) are the backend's job: it knows which events exist.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import stat
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Literal, Optional, Sequence, Union

from ._kernel_lib import (
    KstrtoxError,
    argv_split,
    from_kernel_bytes,
    isalpha,
    isdigit,
    kstrtoll,
    kstrtouint,
    kstrtoull,
    simple_strtoul,
    to_kernel_bytes,
)

__all__ = [
    "ERROR_MESSAGES",
    "FetchArg",
    "KernelDialect",
    "LineTooLongError",
    "ProbeCommand",
    "ProbeSyntaxError",
    "RemovalCommand",
    "UnsupportedCommand",
    "parse_command",
    "split_commands",
]

ProbeKind = Literal["kprobe", "uprobe"]
ControlFile = Literal["kprobe_events", "uprobe_events", "dynamic_events"]
Subsystem = Literal["trace_kprobe", "trace_uprobe"]
SymbolLookup = Callable[[str], Union[bool, int]]  # how many; -1: its module is not loaded
FileLookup = Callable[[str], Optional[str]]

# --------------------------------------------------------------------------------------------------------------
# Constants (kernel/trace/trace_probe.h, trace.h, trace.c)
# --------------------------------------------------------------------------------------------------------------

MAX_TRACE_ARGS = 128
MAX_ARGSTR_LEN = 63
MAX_ARRAY_LEN = 64
MAX_ARG_NAME_LEN = 32
MAX_EVENT_NAME_LEN = 64
MAX_PROBE_EVENT_SIZE = 3072
FETCH_INSN_MAX = 16
KRETPROBE_MAXACTIVE_MAX = 4096
WRITE_BUFSIZE = 4096
# THREAD_SIZE / sizeof(long): 16 KiB stacks on x86_64, arm64 and riscv64 (without KASAN).
PARAM_MAX_STACK = 16384 // 8
DEFAULT_GROUP = {"kprobe": "kprobes", "uprobe": "uprobes"}
RESERVED_FIELD_NAMES = frozenset(
    {
        "common_type",
        "common_flags",
        "common_preempt_count",
        "common_pid",
        "common_tgid",
        "__probe_ip",
        "__probe_ret_ip",
        "__probe_func",
    }
)

# The ERRORS table of v6.12 (trace_probe.h), in order; the message text is what error_log prints.
ERROR_MESSAGES: dict[str, str] = {
    "FILE_NOT_FOUND": "Failed to find the given file",
    "NO_REGULAR_FILE": "Not a regular file",
    "BAD_REFCNT": "Invalid reference counter offset",
    "REFCNT_OPEN_BRACE": "Reference counter brace is not closed",
    "BAD_REFCNT_SUFFIX": "Reference counter has wrong suffix",
    "BAD_UPROBE_OFFS": "Invalid uprobe offset",
    "BAD_MAXACT_TYPE": "Maxactive is only for function exit",
    "BAD_MAXACT": "Invalid maxactive number",
    "MAXACT_TOO_BIG": "Maxactive is too big",
    "BAD_PROBE_ADDR": "Invalid probed address or symbol",
    "NON_UNIQ_SYMBOL": "The symbol is not unique",
    "BAD_RETPROBE": "Retprobe address must be an function entry",
    "NO_TRACEPOINT": "Tracepoint is not found",
    "BAD_TP_NAME": "Invalid character in tracepoint name",
    "BAD_ADDR_SUFFIX": "Invalid probed address suffix",
    "NO_GROUP_NAME": "Group name is not specified",
    "GROUP_TOO_LONG": "Group name is too long",
    "BAD_GROUP_NAME": "Group name must follow the same rules as C identifiers",
    "NO_EVENT_NAME": "Event name is not specified",
    "EVENT_TOO_LONG": "Event name is too long",
    "BAD_EVENT_NAME": "Event name must follow the same rules as C identifiers",
    "EVENT_EXIST": "Given group/event name is already used by another event",
    "RETVAL_ON_PROBE": "$retval is not available on probe",
    "NO_RETVAL": "This function returns 'void' type",
    "BAD_STACK_NUM": "Invalid stack number",
    "BAD_ARG_NUM": "Invalid argument number",
    "BAD_VAR": "Invalid $-variable specified",
    "BAD_REG_NAME": "Invalid register name",
    "BAD_MEM_ADDR": "Invalid memory address",
    "BAD_IMM": "Invalid immediate value",
    "IMMSTR_NO_CLOSE": "String is not closed with '\"'",
    "FILE_ON_KPROBE": "File offset is not available with kprobe",
    "BAD_FILE_OFFS": "Invalid file offset value",
    "SYM_ON_UPROBE": "Symbol is not available with uprobe",
    "TOO_MANY_OPS": "Dereference is too much nested",
    "DEREF_NEED_BRACE": "Dereference needs a brace",
    "BAD_DEREF_OFFS": "Invalid dereference offset",
    "DEREF_OPEN_BRACE": "Dereference brace is not closed",
    "COMM_CANT_DEREF": "$comm can not be dereferenced",
    "BAD_FETCH_ARG": "Invalid fetch argument",
    "ARRAY_NO_CLOSE": "Array is not closed",
    "BAD_ARRAY_SUFFIX": "Array has wrong suffix",
    "BAD_ARRAY_NUM": "Invalid array size",
    "ARRAY_TOO_BIG": "Array number is too big",
    "BAD_TYPE": "Unknown type is specified",
    "BAD_STRING": "String accepts only memory argument",
    "BAD_SYMSTRING": "Symbol String doesn't accept data/userdata",
    "BAD_BITFIELD": "Invalid bitfield",
    "ARG_NAME_TOO_LONG": "Argument name is too long",
    "NO_ARG_NAME": "Argument name is not specified",
    "BAD_ARG_NAME": "Argument name must follow the same rules as C identifiers",
    "USED_ARG_NAME": "This argument name is already used",
    "ARG_TOO_LONG": "Argument expression is too long",
    "NO_ARG_BODY": "No argument expression",
    "BAD_INSN_BNDRY": "Probe point is not an instruction boundary",
    "FAIL_REG_PROBE": "Failed to register probe event",
    "DIFF_PROBE_TYPE": "Probe type is different from existing probe",
    "DIFF_ARG_TYPE": "Argument type or name is different from existing probe",
    "SAME_PROBE": "There is already the exact same probe event",
    "NO_EVENT_INFO": "This requires both group and event name to attach",
    "BAD_ATTACH_EVENT": "Attached event does not exist",
    "BAD_ATTACH_ARG": "Attached event does not have this field",
    "NO_EP_FILTER": "No filter rule after 'if'",
    "NOSUP_BTFARG": "BTF is not available or not supported",
    "NO_BTFARG": "This variable is not found at this probe point",
    "NO_BTF_ENTRY": "No BTF entry for this probe point",
    "BAD_VAR_ARGS": "$arg* must be an independent parameter without name etc.",
    "NOFENTRY_ARGS": "$arg* can be used only on function entry or exit",
    "DOUBLE_ARGS": "$arg* can be used only once in the parameters",
    "ARGS_2LONG": "$arg* failed because the argument list is too long",
    "ARGIDX_2BIG": "$argN index is too big",
    "NO_PTR_STRCT": "This is not a pointer to union/structure.",
    "NOSUP_DAT_ARG": "Non pointer structure/union argument is not supported.",
    "BAD_HYPHEN": "Failed to parse single hyphen. Forgot '>'?",
    "NO_BTF_FIELD": "This field is not found.",
    "BAD_BTF_TID": "Failed to get BTF type info.",
    "BAD_TYPE4STR": "This type does not fit for string.",
    "NEED_STRING_TYPE": "$comm and immediate-string only accepts string type",
    "EVENT_TOO_BIG": "Event too big (too many fields?)",
    # Newer than v6.12.117, seen on v6.18 (see _CODES_ADDED_LATER).
    "TOO_MANY_ARGS": "Too many arguments are specified",
    "TOO_MANY_EARGS": "Too many entry arguments specified",
}

# Codes v6.1 does not have (reference §1).  MAXACT_NO_KPROBE is v6.1's name for BAD_MAXACT_TYPE.
_CODES_MISSING_IN_6_1 = frozenset(
    {
        "BAD_MAXACT_TYPE",
        "NO_TRACEPOINT",
        "BAD_TP_NAME",
        "NO_RETVAL",
        "NOSUP_BTFARG",
        "NO_BTFARG",
        "NO_BTF_ENTRY",
        "BAD_VAR_ARGS",
        "NOFENTRY_ARGS",
        "DOUBLE_ARGS",
        "ARGS_2LONG",
        "ARGIDX_2BIG",
        "NO_PTR_STRCT",
        "NOSUP_DAT_ARG",
        "BAD_HYPHEN",
        "NO_BTF_FIELD",
        "BAD_BTF_TID",
        "BAD_TYPE4STR",
        "NEED_STRING_TYPE",
    }
)
# Codes newer than the v6.12 sources, with the first release assumed to have them: "tracing/probes: Fix
# MAX_TRACE_ARGS limit handling" logs TOO_MANY_ARGS (v6.18 does; v6.12.117 silently returns E2BIG).
_AFTER_6_12 = (6, 14)  # assumed first release of what v6.18 does and v6.12.117 does not
_CODES_ADDED_LATER: dict[str, tuple[int, int]] = {"TOO_MANY_ARGS": _AFTER_6_12, "TOO_MANY_EARGS": _AFTER_6_12}
_V6_1_ONLY_MESSAGES = {"MAXACT_NO_KPROBE": "Maxactive is not for kprobe"}

# regs_query_register_offset() tables: arch/x86/kernel/ptrace.c (64-bit entries only: ds/es/fs/gs are 32-bit
# only), arch/arm64/kernel/ptrace.c, arch/riscv/kernel/ptrace.c.
_REGISTERS: dict[str, frozenset[str]] = {
    "x86_64": frozenset(
        [
            "r15",
            "r14",
            "r13",
            "r12",
            "r11",
            "r10",
            "r9",
            "r8",
            "bx",
            "cx",
            "dx",
            "si",
            "di",
            "bp",
            "ax",
            "orig_ax",
            "ip",
            "cs",
            "flags",
            "sp",
            "ss",
        ]
    ),
    "arm64": frozenset([f"x{i}" for i in range(31)] + ["lr", "sp", "pc", "pstate"]),
    "riscv64": frozenset(
        ["epc", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1"]
        + [f"a{i}" for i in range(8)]
        + [f"s{i}" for i in range(2, 12)]
        + ["t3", "t4", "t5", "t6", "status", "badaddr", "cause", "orig_a0"]
    ),
}
_ARCH_ALIASES = {"aarch64": "arm64", "amd64": "x86_64", "x86-64": "x86_64", "riscv": "riscv64"}

# offsetof(struct dentry, d_name.name) and offsetof(struct file, f_path.dentry) on 64-bit v6.12 (used by the
# %pd/%pD rewrite, whose output is visible in listings and error_log).
_DENTRY_NAME_OFFSET = 0x28
_FILE_DENTRY_OFFSET = 0x40

# --------------------------------------------------------------------------------------------------------------
# Dialect
# --------------------------------------------------------------------------------------------------------------

_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class KernelDialect:
    """Which kernel the grammar imitates: ``KernelDialect("6.1.0", "arm64")``, ``("6.18.44", "x86_64")``.

    Two behaviour families are modelled from source: v6.1 (releases before 6.12) and v6.12 (6.12 and later, checked
    against a 6.18 kernel).  Releases between 6.2 and 6.11 get the 6.1 family; the exact version each 6.12
    feature arrived in is not modelled.  No BTF is modelled: BTF-only syntax gets the error of a kernel built
    without ``CONFIG_PROBE_EVENTS_BTF_ARGS``.
    """

    release: str
    arch: str

    def __post_init__(self) -> None:
        if not _RELEASE.match(self.release):
            raise ValueError(f"kernel release {self.release!r} does not start with MAJOR.MINOR")
        if self.canonical_arch not in _REGISTERS:
            raise ValueError(f"unsupported arch {self.arch!r} (known: {', '.join(sorted(_REGISTERS))})")

    @cached_property  # asked several times per argument of every command
    def version(self) -> tuple[int, int, int]:
        match = _RELEASE.match(self.release)
        assert match is not None  # checked in __post_init__
        return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)

    @property
    def canonical_arch(self) -> str:
        return _ARCH_ALIASES.get(self.arch, self.arch)

    @property
    def modern(self) -> bool:
        """True for the v6.12 behaviour family (BTF-era parser, ``$arg*``, %pd, empty event names...)."""
        return self.version[:2] >= (6, 12)

    @property
    def paren_is_btf_cast(self) -> bool:
        """A fetch argument starting with '(' is BTF cast syntax (seen on v6.18): NOSUP_BTFARG without BTF."""
        return self.version[:2] >= _AFTER_6_12

    @property
    def registers(self) -> frozenset[str]:
        return _REGISTERS[self.canonical_arch]

    @property
    def default_fetch_type(self) -> str:
        return "x64"

    @property
    def has_argn(self) -> bool:
        """``$argN`` exists (CONFIG_HAVE_FUNCTION_ARG_ACCESS_API, true on all supported arches)."""
        return True

    def has_error(self, code: str) -> bool:
        if code in _CODES_ADDED_LATER:
            return self.version[:2] >= _CODES_ADDED_LATER[code]
        if self.modern:
            return code in ERROR_MESSAGES
        return (code in ERROR_MESSAGES and code not in _CODES_MISSING_IN_6_1) or code in _V6_1_ONLY_MESSAGES

    def message(self, code: str) -> str:
        if not self.has_error(code):
            raise KeyError(f"{code} does not exist in kernel {self.release}")
        return _V6_1_ONLY_MESSAGES.get(code) or ERROR_MESSAGES[code]


# --------------------------------------------------------------------------------------------------------------
# Results and errors
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchArg:
    """One fetch argument: ``name`` (given or auto ``argN``), ``text`` (the expression as listed), ``type``."""

    name: str
    text: str
    type: str


@dataclass(frozen=True)
class ProbeCommand:
    """A parsed ``p``/``r`` command, as the kernel would register it."""

    kind: ProbeKind
    is_return: bool
    maxactive: Optional[int]
    group: str
    event: str
    symbol: Optional[str]
    offset: int
    address: Optional[int]
    path: Optional[str]
    ref_ctr_offset: Optional[int]
    args: tuple[FetchArg, ...]

    def listing(self) -> str:
        """The line ``kprobe_events``/``uprobe_events`` shows for this probe (without the newline)."""
        letter = "r" if self.is_return else "p"
        arg_text = "".join(f" {arg.name}={arg.text}" for arg in self.args)
        if self.kind == "uprobe":
            ref_ctr = f"(0x{self.ref_ctr_offset:x})" if self.ref_ctr_offset else ""
            return f"{letter}:{self.group}/{self.event} {self.path}:0x{self.offset:016x}{ref_ctr}{arg_text}"
        maxactive = str(self.maxactive) if self.is_return and self.maxactive else ""
        if self.symbol is None:
            # The kernel prints 0x%p, i.e. a hashed pointer unless no_hash_pointers; the fake shows the real one.
            place = f"0x{self.address or 0:016x}"
        elif self.offset:
            place = f"{self.symbol}+{self.offset}"
        else:
            place = self.symbol
        return f"{letter}{maxactive}:{self.group}/{self.event} {place}{arg_text}"


@dataclass(frozen=True)
class RemovalCommand:
    """``-:[GROUP/]EVENT [match args]``; ``event == ""`` with a group removes the whole group."""

    group: Optional[str]
    event: str
    match_args: tuple[str, ...]


class ProbeSyntaxError(Exception):
    """The kernel rejects the command.

    ``code`` is the ERRORS name when ``logged``; unlogged failures (the kernel returns an errno and writes nothing
    to error_log) get a descriptive pseudo code such as ``UNKNOWN_COMMAND``, an empty ``message`` and position 0.
    """

    def __init__(
        self,
        code: str,
        message: str,
        errno: str,
        position: int,
        command: str,
        subsystem: Subsystem,
        logged: bool,
    ) -> None:
        super().__init__(f"{errno} {code}: {message or '(no error_log entry)'} at {position} in {command!r}")
        self.code = code
        self.message = message
        self.errno = errno
        self.position = position
        self.command = command
        self.subsystem: Subsystem = subsystem
        self.logged = logged

    def error_log_entry(self, timestamp: float) -> str:
        """The ``error_log`` entry text (three lines, newline-terminated) for ``timestamp`` seconds since boot."""
        if not self.logged:
            raise ValueError(f"{self.code} leaves no error_log entry")
        micros = round(timestamp * 1_000_000)
        seconds, micros = divmod(micros, 1_000_000)
        return (
            f"[{seconds:5d}.{micros:06d}] {self.subsystem}: error: {self.message}\n"
            f"  Command: {self.command}\n"
            f"{' ' * (11 + self.position)}^\n"
        )


class LineTooLongError(ProbeSyntaxError):
    """A write had a line the kernel's 4 KiB buffer cannot hold (EINVAL, no error_log entry).

    ``preceding`` holds the commands the kernel ran before it gave up: those stay applied.
    """

    def __init__(self, preceding: list[str], subsystem: Subsystem = "trace_kprobe") -> None:
        super().__init__("LINE_TOO_LONG", "", "EINVAL", 0, "", subsystem, False)
        self.preceding = preceding


class UnsupportedCommand(NotImplementedError):
    """A ``dynamic_events`` command of a kind this grammar does not model (eprobe, fprobe, tprobe, synthetic)."""


# --------------------------------------------------------------------------------------------------------------
# Byte-string access and names (is_good_name)
# --------------------------------------------------------------------------------------------------------------


def _at(text: str, index: int) -> str:
    """``text[index]`` with C semantics: reading at the terminating NUL gives ``"\\0"``."""
    return text[index] if index < len(text) else "\0"


# is_good_name() / is_good_system_name(): isalpha() of lib/ctype.c (ASCII and Latin-1 letters but the
# multiplication and division signs), isdigit(), '_' (and '-' for a v6.12 group), as one pattern each.
_LETTER = "A-Za-z\xc0-\xd6\xd8-\xf6\xf8-\xff"
_GOOD_NAME = re.compile(f"[{_LETTER}_][{_LETTER}0-9_]*")
_GOOD_HYPHEN_NAME = re.compile(f"[{_LETTER}_-][{_LETTER}0-9_-]*")


def _is_good_name(name: str, *, hyphen_ok: bool = False) -> bool:
    return (_GOOD_HYPHEN_NAME if hyphen_ok else _GOOD_NAME).fullmatch(name) is not None


# --------------------------------------------------------------------------------------------------------------
# Error logging context (trace_probe_log_*)
# --------------------------------------------------------------------------------------------------------------


class _Log:
    """The kernel's trace_probe_log: the argv, the index of the word the caret is relative to."""

    def __init__(self, subsystem: Subsystem, argv: list[str], dialect: KernelDialect) -> None:
        self.subsystem: Subsystem = subsystem
        self.argv = argv
        self.index = 0
        self.dialect = dialect

    def error(self, offset: int, code: str, errno: str = "EINVAL") -> ProbeSyntaxError:
        command = " ".join(self.argv)
        if self.index >= len(self.argv):
            position = len(command) + 1  # one past the end of the joined command
        else:
            position = sum(len(word) + 1 for word in self.argv[: self.index]) + offset
        return ProbeSyntaxError(
            code, self.dialect.message(code), errno, position, from_kernel_bytes(command), self.subsystem, True
        )

    def unlogged(self, code: str, errno: str) -> ProbeSyntaxError:
        return ProbeSyntaxError(code, "", errno, 0, from_kernel_bytes(" ".join(self.argv)), self.subsystem, False)


class _Cancelled(Exception):
    """-ECANCELED: this create op does not recognise the command (another op may; else EINVAL)."""


# --------------------------------------------------------------------------------------------------------------
# Fetch argument parser (traceprobe_parse_probe_arg and helpers)
# --------------------------------------------------------------------------------------------------------------

# Stage-1 fetch ops, as strings: only their identity matters.
_REG, _STACK, _STACKP, _RETVAL, _IMM, _COMM, _ARG, _FOFFS, _DATA, _EDATA = (
    "REG",
    "STACK",
    "STACKP",
    "RETVAL",
    "IMM",
    "COMM",
    "ARG",
    "FOFFS",
    "DATA",
    "EDATA",
)
_DEREF, _UDEREF, _SYMBOL = "DEREF", "UDEREF", "NOP_SYMBOL"
_ST_MEM, _ST_UMEM, _ST_RAW = "ST_MEM", "ST_UMEM", "ST_RAW"
_ST_STRING, _ST_USTRING, _ST_SYMSTR = "ST_STRING", "ST_USTRING", "ST_SYMSTR"

_TYPE_SIZES = {
    "u8": 1,
    "u16": 2,
    "u32": 4,
    "u64": 8,
    "s8": 1,
    "s16": 2,
    "s32": 4,
    "s64": 8,
    "x8": 1,
    "x16": 2,
    "x32": 4,
    "x64": 8,
    "char": 1,
    "symbol": 8,
    "string": 4,
    "ustring": 4,
    "symstr": 4,  # strings are stored as a u32 __data_loc
}
_STRING_TYPES = frozenset({"string", "ustring", "symstr"})


@dataclass
class _ArgContext:
    """traceprobe_parse_context, reduced to what a BTF-less parse needs."""

    kernel: bool  # TPARG_FL_KERNEL (kprobe) vs TPARG_FL_USER (uprobe)
    is_return: bool  # TPARG_FL_RETURN
    function_entry: bool  # TPARG_FL_FENTRY
    offset: int = 0

    @property
    def at_function_entry(self) -> bool:
        return self.kernel and self.function_entry and not self.is_return

    @property
    def at_function_return(self) -> bool:
        return self.kernel and self.is_return


class _Code:
    """The fetch_insn array: FETCH_INSN_MAX slots, the last one is END."""

    def __init__(self) -> None:
        self.ops: list[Optional[str]] = [None] * FETCH_INSN_MAX
        self.ops[-1] = "END"
        self.symbols: list[str] = []  # @SYM[+offs] texts, resolved at registration

    @property
    def end(self) -> int:
        return FETCH_INSN_MAX - 1

    def is_free(self, index: int) -> bool:
        return self.ops[index] is None


class _ArgParser:
    def __init__(self, log: _Log, dialect: KernelDialect, ctx: _ArgContext) -> None:
        self.log = log
        self.dialect = dialect
        self.ctx = ctx

    def fail(self, offset: int, code: str, errno: str = "EINVAL") -> ProbeSyntaxError:
        return self.log.error(offset, code, errno)

    # parse_probe_vars: $retval, $stack, $stackN, $comm, $argN
    def parse_var(self, arg: str, code: _Code, pc: int) -> None:
        ctx = self.ctx
        name = arg[1:]
        error = "BAD_VAR"
        modern = self.dialect.modern
        if name.startswith("retval") if modern else name == "retval":
            if not ctx.is_return:
                raise self.fail(ctx.offset, "RETVAL_ON_PROBE")
            code.ops[pc] = _RETVAL
            return
        if name.startswith("stack"):
            rest = name[5:]
            if rest == "":
                code.ops[pc] = _STACKP
                return
            if isdigit(rest[0]):
                try:
                    number = kstrtoull(rest, 10)
                except KstrtoxError:
                    raise self.fail(ctx.offset, "BAD_VAR") from None
                if ctx.kernel and number > PARAM_MAX_STACK:
                    raise self.fail(ctx.offset, "BAD_STACK_NUM")
                code.ops[pc] = _STACK
                return
            raise self.fail(ctx.offset, "BAD_VAR")
        if name in ("comm", "COMM"):
            code.ops[pc] = _COMM
            return
        # v6.1 only knows $argN at a kprobe function entry; elsewhere it is just an unknown variable.
        if self.dialect.has_argn and name.startswith("arg") and (modern or ctx.at_function_entry):
            try:
                number = kstrtoull(name[3:], 10)
            except KstrtoxError:
                raise self.fail(ctx.offset, "BAD_VAR") from None
            if number == 0 or number > PARAM_MAX_STACK:
                raise self.fail(ctx.offset, "BAD_ARG_NUM")
            if ctx.at_function_entry:
                code.ops[pc] = _ARG
                return
            if ctx.at_function_return:
                code.ops[pc] = _EDATA  # fetched at entry, stored for the return handler (v6.12)
                return
            error = "NOFENTRY_ARGS"
        raise self.fail(ctx.offset, error)

    def parse(self, arg: str, code: _Code, pc: int) -> int:
        """parse_probe_arg: compile ``arg`` from slot ``pc``; return the slot of the last instruction."""
        ctx = self.ctx
        first = _at(arg, 0)
        if first == "$":
            self.parse_var(arg, code, pc)
        elif first == "%":
            if arg[1:] not in self.dialect.registers:
                raise self.fail(ctx.offset, "BAD_REG_NAME")
            code.ops[pc] = _REG
        elif first == "@":
            pc = self.parse_memory(arg, code, pc)
        elif first in "+-":
            pc = self.parse_deref(arg, code, pc)
        elif first == "\\":
            if _at(arg, 1) == '"':
                body = arg[2:]
                if not body or body[-1] != '"':
                    raise self.fail(ctx.offset + 2 + len(body), "IMMSTR_NO_CLOSE")
                code.ops[pc] = _DATA
            else:
                try:
                    _str_to_immediate(arg[1:])
                except KstrtoxError as exc:
                    raise self.fail(ctx.offset + 1, "BAD_IMM", exc.errno) from None
                code.ops[pc] = _IMM
        elif first == "(" and self.dialect.paren_is_btf_cast:
            raise self.fail(ctx.offset, "NOSUP_BTFARG", "EOPNOTSUPP")
        elif (isalpha(first) or first == "_") and self.dialect.modern:
            # A bare name is a BTF variable.  Without BTF support: -EOPNOTSUPP where BTF could apply (kprobe at
            # function entry/exit), -EINVAL elsewhere.
            btf_capable = ctx.at_function_entry or ctx.at_function_return
            raise self.fail(ctx.offset, "NOSUP_BTFARG", "EOPNOTSUPP" if btf_capable else "EINVAL")
        if code.ops[pc] is None:
            raise self.fail(ctx.offset, "BAD_FETCH_ARG")
        return pc

    def parse_memory(self, arg: str, code: _Code, pc: int) -> int:
        ctx = self.ctx
        second = _at(arg, 1)
        if isdigit(second):
            try:
                kstrtoull(arg[1:])
            except KstrtoxError as exc:
                raise self.fail(ctx.offset, "BAD_MEM_ADDR", exc.errno) from None
            code.ops[pc] = _IMM
        elif second == "+":
            if ctx.kernel:
                raise self.fail(ctx.offset, "FILE_ON_KPROBE")
            try:
                kstrtoll(arg[2:])
            except KstrtoxError as exc:
                raise self.fail(ctx.offset, "BAD_FILE_OFFS", exc.errno) from None
            code.ops[pc] = _FOFFS
        else:
            if not ctx.kernel:
                raise self.fail(ctx.offset, "SYM_ON_UPROBE")
            code.ops[pc] = _SYMBOL
            code.symbols.append(arg[1:])
            pc += 1
            if pc == code.end:
                raise self.fail(ctx.offset, "TOO_MANY_OPS")
            code.ops[pc] = _IMM
        pc += 1
        if pc == code.end:
            raise self.fail(ctx.offset, "TOO_MANY_OPS")
        code.ops[pc] = _DEREF
        return pc

    def parse_deref(self, arg: str, code: _Code, pc: int) -> int:
        ctx = self.ctx
        deref = _DEREF
        # The kernel overwrites the 'u' with the sign and steps over it, so every caret after this point is one
        # column short of the real text for +u/-u: copied deliberately.
        if _at(arg, 1) == "u":
            deref = _UDEREF
            arg = arg[0] + arg[2:]
        if arg[0] == "+":
            arg = arg[1:]
        brace = arg.find("(")
        if brace < 0:
            raise self.fail(ctx.offset, "DEREF_NEED_BRACE")
        try:
            kstrtoll(arg[:brace])
        except KstrtoxError as exc:
            raise self.fail(ctx.offset, "BAD_DEREF_OFFS", exc.errno) from None
        ctx.offset += brace + 1 + (1 if arg[0] != "-" else 0)
        inner = arg[brace + 1 :]
        close = inner.rfind(")")
        if close < 0:
            raise self.fail(ctx.offset + len(inner), "DEREF_OPEN_BRACE")
        saved_offset = ctx.offset
        pc = self.parse(inner[:close], code, pc)  # anything after the last ')' is ignored, as in the kernel
        ctx.offset = saved_offset
        if code.ops[pc] in (_COMM, _DATA):
            raise self.fail(ctx.offset, "COMM_CANT_DEREF")
        pc += 1
        if pc == code.end:
            raise self.fail(ctx.offset, "TOO_MANY_OPS")
        code.ops[pc] = deref
        return pc


def _str_to_immediate(text: str) -> int:
    if isdigit(_at(text, 0)):
        return kstrtoull(text)
    if _at(text, 0) == "-":
        return kstrtoll(text)
    if _at(text, 0) == "+":
        return kstrtoll(text[1:])
    raise KstrtoxError("EINVAL")


def _fetch_type_size(type_name: Optional[str], kernel: bool, dialect: KernelDialect) -> Optional[tuple[str, int]]:
    """find_fetch_type: (storage type name, size) or None for an unknown type."""
    if type_name is not None and not kernel and type_name in ("symbol", "symstr"):
        return None
    if type_name is None:
        type_name = dialect.default_fetch_type
    if type_name.startswith("b"):
        slash = type_name.find("/")
        if slash < 0:
            return None
        try:
            container = kstrtoull(type_name[slash + 1 :])
        except KstrtoxError:
            return None
        if container not in (8, 16, 32, 64):
            return None
        return f"u{container}", container // 8
    size = _TYPE_SIZES.get(type_name)
    return None if size is None else (type_name, size)


class _ProbeArgs:
    """Parses the argument words of one command, accumulating names and the event size."""

    def __init__(self, log: _Log, dialect: KernelDialect, ctx_factory: Callable[[], _ArgContext]) -> None:
        self.log = log
        self.dialect = dialect
        self.ctx_factory = ctx_factory
        self.args: list[FetchArg] = []
        self.symbols: list[str] = []
        self.size = 0

    def add(self, word: str) -> None:
        index = len(self.args)
        ctx = self.ctx_factory()
        equal = word.find("=")
        if equal >= 0:
            if equal > MAX_ARG_NAME_LEN:
                raise self.log.error(0, "ARG_NAME_TOO_LONG")
            if equal == 0:
                raise self.log.error(0, "NO_ARG_NAME")
            name, body = word[:equal], word[equal + 1 :]
        else:
            name, body = f"arg{index + 1}", word
        if not _is_good_name(name):
            raise self.log.error(0, "BAD_ARG_NAME")
        if name in RESERVED_FIELD_NAMES or any(arg.name == from_kernel_bytes(name) for arg in self.args):
            raise self.log.error(0, "USED_ARG_NAME")
        ctx.offset = len(word) - len(body)
        type_text = self.parse_body(body, ctx)
        self.args.append(FetchArg(from_kernel_bytes(name), from_kernel_bytes(body), from_kernel_bytes(type_text)))

    def parse_body(self, body: str, ctx: _ArgContext) -> str:
        """traceprobe_parse_probe_arg_body; returns the resolved type text."""
        log = self.log
        if len(body) > MAX_ARGSTR_LEN:
            raise log.error(ctx.offset, "ARG_TOO_LONG", "E2BIG")
        if not body:
            raise log.error(ctx.offset, "NO_ARG_BODY")
        fetch, type_name, count, type_offset = self.split_type(body, ctx)
        storage_type, size = self.storage_type(fetch, type_name, count, type_offset, ctx)

        code = _Code()
        parser = _ArgParser(log, self.dialect, ctx)
        body_offset = ctx.offset
        pc = parser.parse(fetch, code, 0)
        if not self.dialect.modern:
            # v6.1 passed the offset by value, so later carets are relative to the body again; v6.12 keeps the
            # outermost dereference's inner offset (ctx->offset), shifting them right.
            ctx.offset = body_offset
        self.size += size * (count or 1)
        if self.size > MAX_PROBE_EVENT_SIZE:
            raise log.error(ctx.offset, "EVENT_TOO_BIG", "E2BIG")
        self.finalize(code, pc, storage_type, type_name, type_offset, count, ctx)
        self.symbols.extend(code.symbols)

        shown = type_name if type_name is not None else storage_type
        return f"{shown}[{count}]" if count else shown

    def split_type(self, body: str, ctx: _ArgContext) -> tuple[str, Optional[str], int, int]:
        """parse_probe_arg_type: ``FETCH[:TYPE[COUNT]]`` -> (fetch, type or None, array count or 0, offset of the
        type in the body)."""
        colon = body.find(":")
        if colon < 0:
            return body, None, 0, 0
        type_offset = colon + 1
        type_name = body[type_offset:]
        bracket = type_name.find("[")
        if bracket < 0:
            return body[:colon], type_name, 0, type_offset
        count = self.array_count(
            type_name[bracket + 1 :], ctx.offset + type_offset + bracket + 1, ctx.offset + len(body)
        )
        return body[:colon], type_name[:bracket], count, type_offset

    def array_count(self, count_text: str, count_offset: int, end_offset: int) -> int:
        """The ``N]`` of ``TYPE[N]`` (``count_offset``: where N starts, ``end_offset``: where the body ends)."""
        log = self.log
        close = count_text.find("]")
        if close < 0:
            raise log.error(end_offset, "ARRAY_NO_CLOSE")
        if close + 1 != len(count_text):
            raise log.error(count_offset + close + 1, "BAD_ARRAY_SUFFIX")
        try:
            count = kstrtouint(count_text[:close])
        except KstrtoxError:
            count = 0
        if count == 0:
            raise log.error(count_offset, "BAD_ARRAY_NUM")
        if count > MAX_ARRAY_LEN:
            raise log.error(count_offset, "ARRAY_TOO_BIG")
        return count

    def storage_type(
        self, fetch: str, type_name: Optional[str], count: int, type_offset: int, ctx: _ArgContext
    ) -> tuple[str, int]:
        """find_fetch_type for the argument: (storage type name, size)."""
        log = self.log
        if fetch in ("$comm", "$COMM") or fetch.startswith('\\"'):
            # $comm and immediate strings can only be stored as a (non-array) string.
            if count or (type_name is not None and type_name != "string"):
                if not self.dialect.has_error("NEED_STRING_TYPE"):
                    raise log.unlogged("NEED_STRING_TYPE", "EINVAL")
                raise log.error(ctx.offset + type_offset, "NEED_STRING_TYPE")
            resolved = _fetch_type_size("string", ctx.kernel, self.dialect)
        else:
            resolved = _fetch_type_size(type_name, ctx.kernel, self.dialect)
        if resolved is None:
            raise log.error(ctx.offset + type_offset, "BAD_TYPE")
        return resolved

    def finalize(
        self,
        code: _Code,
        pc: int,
        storage_type: str,
        type_name: Optional[str],
        type_offset: int,
        count: int,
        ctx: _ArgContext,
    ) -> None:
        """finalize_fetch_insn: the store, bitfield and array instructions, with their checks."""
        log = self.log
        if storage_type in _STRING_TYPES:
            pc = self.place_string_store(code, pc, storage_type, type_offset, count, ctx)
        elif code.ops[pc] == _DEREF:
            code.ops[pc] = _ST_MEM
        elif code.ops[pc] == _UDEREF:
            code.ops[pc] = _ST_UMEM
        else:
            pc += 1
            if not code.is_free(pc):
                raise log.error(ctx.offset, "TOO_MANY_OPS", "E2BIG")
            code.ops[pc] = _ST_RAW
        store = code.ops[pc]

        if type_name is not None and type_name.startswith("b"):
            if not self.bitfield_ok(type_name, storage_type, code, pc):
                raise log.error(ctx.offset + type_offset, "BAD_BITFIELD")
            pc += 1
        if count:
            if store not in (_ST_MEM, _ST_STRING, _ST_USTRING):
                raise log.error(ctx.offset + type_offset, "BAD_STRING")
            pc += 1
            if not code.is_free(pc):
                raise log.error(ctx.offset, "TOO_MANY_OPS", "E2BIG")
            code.ops[pc] = "LP_ARRAY"

    def place_string_store(
        self, code: _Code, pc: int, storage_type: str, type_offset: int, count: int, ctx: _ArgContext
    ) -> int:
        """The store of a string, ustring or symstr argument after the fetch ending at ``pc``; returns its slot."""
        log = self.log
        last = code.ops[pc]
        if storage_type == "symstr":
            if last not in (_REG, _STACK, _RETVAL, _ARG, _DEREF):
                raise log.error(ctx.offset + type_offset, "BAD_SYMSTRING")
        elif last not in (_DEREF, _UDEREF, _IMM, _COMM, _DATA):
            raise log.error(ctx.offset + type_offset, "BAD_STRING")
        if storage_type == "symstr" or last in (_IMM, _COMM, _DATA) or count:
            pc += 1
            if not code.is_free(pc):
                raise log.error(ctx.offset, "TOO_MANY_OPS")
        if storage_type == "ustring" or last == _UDEREF:
            code.ops[pc] = _ST_USTRING
        else:
            code.ops[pc] = _ST_SYMSTR if storage_type == "symstr" else _ST_STRING
        return pc

    @staticmethod
    def bitfield_ok(type_name: str, storage_type: str, code: _Code, pc: int) -> bool:
        """__parse_bitfield_probe_arg: b<width>@<offset>/<container>, fitting in the container."""
        width, tail = simple_strtoul(type_name, 1)
        if width == 0 or _at(type_name, tail) != "@":
            return False
        bit_offset, offset_tail = simple_strtoul(type_name, tail + 1)
        if offset_tail == tail + 1 or _at(type_name, offset_tail) != "/":
            return False
        if not code.is_free(pc + 1):
            return False
        code.ops[pc + 1] = "MOD_BF"
        return _TYPE_SIZES[storage_type] * 8 >= width + bit_offset


# --------------------------------------------------------------------------------------------------------------
# Event names (traceprobe_parse_event_name)
# --------------------------------------------------------------------------------------------------------------


def _parse_event_name(text: str, offset: int, log: _Log, dialect: KernelDialect) -> tuple[Optional[str], Optional[str]]:
    """Return (group or None, event or None); event None means auto-name (v6.12 ``GROUP/``)."""
    group: Optional[str] = None
    slash = text.find("/")
    if slash < 0:
        slash = text.find(".")
    event = text
    if slash >= 0:
        if slash == 0:
            raise log.error(offset, "NO_GROUP_NAME")
        if slash + 1 > MAX_EVENT_NAME_LEN:
            raise log.error(offset, "GROUP_TOO_LONG")
        group = text[:slash]
        if not _is_good_name(group, hyphen_ok=dialect.modern):
            raise log.error(offset, "BAD_GROUP_NAME")
        event = text[slash + 1 :]
        offset += slash + 1
    if not event:
        if slash >= 0 and dialect.modern:
            return group, None
        raise log.error(offset, "NO_EVENT_NAME")
    if len(event) >= MAX_EVENT_NAME_LEN:
        raise log.error(offset, "EVENT_TOO_LONG")
    if not _is_good_name(event):
        raise log.error(offset, "BAD_EVENT_NAME")
    return group, event


def _sanitize_event_name(name: str) -> str:
    # sanitize_event_name() skips the first character and only replaces ':', '.' and '*'.
    return name[:1] + "".join("_" if c in ":.*" else c for c in name[1:])


# --------------------------------------------------------------------------------------------------------------
# kprobe creation (__trace_kprobe_create)
# --------------------------------------------------------------------------------------------------------------


def _symbol_count(symbol_exists: SymbolLookup, symbol: str) -> int:
    result = symbol_exists(symbol)
    return int(result)


@dataclass(frozen=True)
class _KprobePoint:
    """Where a kprobe goes: a symbol (+offset) or an address, and what that makes of the probe."""

    symbol: Optional[str] = None
    address: Optional[int] = None
    offset: int = 0
    is_return: bool = False
    return_flag: bool = False  # TPARG_FL_RETURN is only set on the symbol path: 'r 0xADDR $retval' is refused
    function_entry: bool = False


def _kprobe_maxactive(head: str, colon: int, is_return: bool, log: _Log, dialect: KernelDialect) -> Optional[int]:
    """``rN:...``: the kretprobe's maxactive N (None without one)."""
    if not isdigit(_at(head, 1)):
        return None
    if not is_return:
        raise log.error(1, "BAD_MAXACT_TYPE" if dialect.modern else "MAXACT_NO_KPROBE")
    digits = head[1:colon] if colon >= 0 else head[1:]
    if len(digits) > MAX_EVENT_NAME_LEN - 1:
        raise log.error(1, "BAD_MAXACT")
    try:
        maxactive = kstrtouint(digits)
    except KstrtoxError:
        maxactive = 0
    if not maxactive:
        raise log.error(1, "BAD_MAXACT")
    if maxactive > KRETPROBE_MAXACTIVE_MAX:
        raise log.error(1, "MAXACT_TOO_BIG")
    return maxactive


def _kprobe_point(
    place: str, is_return: bool, log: _Log, dialect: KernelDialect, symbol_exists: SymbolLookup
) -> _KprobePoint:
    """The probe point (argv[1]): an address, or ``SYMBOL[+OFFS|%return]`` checked against the symbols."""
    try:
        return _KprobePoint(address=kstrtoull(place), is_return=is_return)
    except KstrtoxError:
        pass
    log.index = 1
    if "/" in place and ":" in place:
        raise _Cancelled  # looks like a uprobe: dynamic_events hands it to the uprobe parser
    symbol = place
    percent = symbol.find("%")
    if percent >= 0:
        if symbol[percent:] != "%return":
            raise log.error(percent, "BAD_ADDR_SUFFIX")
        symbol = symbol[:percent]
        is_return = True
    symbol, offset = _split_offset(symbol, log, "BAD_PROBE_ADDR")
    if offset < 0 or offset > 0xFFFFFFFF:
        raise log.error(0, "BAD_PROBE_ADDR")
    count = _symbol_count(symbol_exists, from_kernel_bytes(symbol))
    # A negative count: MOD:SYMBOL of a module that is not loaded, accepted and registered when it comes. v6.1
    # looks any MOD:SYMBOL up only when the probe registers (see the dynamic events' registration check).
    pending = count < 0
    if not pending and (dialect.modern or ":" not in symbol):
        if count > 1:
            raise log.error(0, "NON_UNIQ_SYMBOL", "EINVAL" if dialect.modern else "EADDRNOTAVAIL")
        if count == 0:
            raise log.error(0, "BAD_PROBE_ADDR", "EINVAL" if dialect.modern else "ENOENT")
    # kprobe_on_func_entry(): only offset 0 is the entry (no IBT/ftrace slack modelled), and only of a function
    # the kernel can find now: a probe waiting for its module takes no $argN.
    at_entry = offset == 0
    if not at_entry and is_return and not pending:  # -EINVAL; a function not found yet is -ENOENT, no refusal
        raise log.error(0, "BAD_RETPROBE")
    return _KprobePoint(symbol, None, offset, is_return, is_return, at_entry and not is_return and not pending)


def _split_offset(text: str, log: _Log, code: str) -> tuple[str, int]:
    """``SYMBOL+OFFS`` / ``SYMBOL-OFFS`` -> (SYMBOL, OFFS); a bad number is ``code`` at the start."""
    sign = min((i for i in (text.find("+"), text.find("-")) if i >= 0), default=-1)
    if sign < 0:
        return text, 0
    try:
        return text[:sign], kstrtoll(text[sign:])
    except KstrtoxError:
        raise log.error(0, code) from None


def _check_arg_symbols(symbols: Sequence[str], log: _Log, symbol_exists: SymbolLookup) -> None:
    """register_trace_kprobe() -> traceprobe_update_arg(): the ``@SYM[+offs]`` of fetch args are looked up
    only when the probe registers."""
    log.index = 1
    for text in symbols:
        name, _ = _split_offset(text, log, "FAIL_REG_PROBE")
        if _symbol_count(symbol_exists, from_kernel_bytes(name)) == 0:
            raise log.error(0, "BAD_PROBE_ADDR", "ENOENT")


def _create_kprobe(argv: list[str], dialect: KernelDialect, symbol_exists: SymbolLookup) -> ProbeCommand:
    head = argv[0]
    if head[0] not in "pr" or len(argv) < 2:
        raise _Cancelled
    is_return = head[0] == "r"
    log = _Log("trace_kprobe", argv, dialect)

    colon = head.find(":", 1)
    event_text = None if colon < 0 else head[colon + 1 :]
    maxactive = _kprobe_maxactive(head, colon, is_return, log, dialect)
    point = _kprobe_point(argv[1], is_return, log, dialect, symbol_exists)
    symbol, address, offset, is_return = point.symbol, point.address, point.offset, point.is_return
    return_flag, function_entry = point.return_flag, point.function_entry

    log.index = 0
    group = DEFAULT_GROUP["kprobe"]
    event: Optional[str] = None
    if event_text is not None:
        parsed_group, event = _parse_event_name(event_text, colon + 1, log, dialect)
        group = parsed_group or group
    if event is None:
        letter = "r" if is_return else "p"
        if symbol is not None:
            event = _sanitize_event_name(f"{letter}_{symbol}_{offset}"[: MAX_EVENT_NAME_LEN - 1])
        else:
            event = f"{letter}_0x{address or 0:016x}"

    words = argv[2:]
    if dialect.modern:
        _check_meta_args(words, log, return_flag, function_entry)
    if len(words) > MAX_TRACE_ARGS:
        raise _too_many_args(log)
    if dialect.modern:
        words = [_expand_dentry_arg(word) for word in words]
        argv[2:] = words  # the kernel rewrites argv in place, so error_log shows the expansion

    def context() -> _ArgContext:
        return _ArgContext(kernel=True, is_return=return_flag, function_entry=function_entry)

    args = _ProbeArgs(log, dialect, context)
    for index, word in enumerate(words):
        log.index = index + 2
        args.add(word)

    _check_arg_symbols(args.symbols, log, symbol_exists)

    return ProbeCommand(
        kind="kprobe",
        is_return=is_return,
        maxactive=maxactive,
        group=from_kernel_bytes(group),
        event=from_kernel_bytes(event),
        symbol=None if symbol is None else from_kernel_bytes(symbol),
        offset=offset,
        address=address,
        path=None,
        ref_ctr_offset=None,
        args=tuple(args.args),
    )


def _too_many_args(log: _Log) -> ProbeSyntaxError:
    """More than MAX_TRACE_ARGS arguments: E2BIG, logged at the first argument by newer kernels only."""
    if not log.dialect.has_error("TOO_MANY_ARGS"):
        return log.unlogged("TOO_MANY_ARGS", "E2BIG")
    log.index = 2
    return log.error(0, "TOO_MANY_ARGS", "E2BIG")


def _check_meta_args(words: list[str], log: _Log, return_flag: bool, function_entry: bool) -> None:
    """traceprobe_expand_meta_args() without BTF: the $arg* checks, then NOSUP_BTFARG for $arg*."""
    star_index = -1
    for index, word in enumerate(words):
        if not word.startswith("$arg"):
            continue
        log.index = index + 2
        if not (return_flag or function_entry):
            raise log.error(0, "NOFENTRY_ARGS")
        if isdigit(_at(word, 4)):
            continue
        if _at(word, 4) != "*":
            raise log.error(0, "BAD_VAR")
        if star_index >= 0:
            raise log.error(0, "DOUBLE_ARGS")
        star_index = index
    if star_index >= 0:
        # The caret stays on the last $arg-prefixed word the scan visited.
        raise log.error(0, "NOSUP_BTFARG", "EOPNOTSUPP")


def _expand_dentry_arg(word: str) -> str:
    """traceprobe_expand_dentry_args: ``X:%pd`` / ``X:%pD`` become explicit dereference chains."""
    if not re.fullmatch(r".*:%p[dD]", word, flags=re.DOTALL):
        return word
    equal = word.find("=")
    name_part = word[: equal + 1] if equal >= 0 else ""
    target = word[equal + 1 if equal >= 0 else 0 : -4]
    if word.endswith("d"):
        return f"{name_part}+0x0(+0x{_DENTRY_NAME_OFFSET:x}({target})):string"
    return f"{name_part}+0x0(+0x{_DENTRY_NAME_OFFSET:x}(+0x{_FILE_DENTRY_OFFSET:x}({target}))):string"


# --------------------------------------------------------------------------------------------------------------
# uprobe creation (__trace_uprobe_create)
# --------------------------------------------------------------------------------------------------------------


def _real_file_check(path: str) -> Optional[str]:
    """Default ``file_exists``: kern_path(LOOKUP_FOLLOW) + d_is_reg() against this machine's filesystem."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _errno.errorcode.get(exc.errno or _errno.ENOENT, "ENOENT")
    return None if stat.S_ISREG(mode) else "NO_REGULAR_FILE"


@dataclass(frozen=True)
class _UprobePoint:
    """Where a uprobe goes: ``PATH:OFFSET[(REF_CTR_OFFSET)][%return]``."""

    filename: str
    offset: int
    ref_ctr_offset: Optional[int]
    is_return: bool


def _uprobe_point(place: str, is_return: bool, log: _Log, file_exists: FileLookup) -> _UprobePoint:
    """The probe point (argv[1]), its file checked with ``file_exists``; _Cancelled if it is no uprobe place."""
    if "/" not in place:
        raise _Cancelled
    colon = place.rfind(":")
    if colon < 0 or not isdigit(_at(place, colon + 1)):
        raise _Cancelled

    log.index = 1
    filename = place[:colon]
    problem = file_exists(from_kernel_bytes(filename))
    if problem == "NO_REGULAR_FILE":
        raise log.error(0, "NO_REGULAR_FILE")
    if problem is not None:
        # kern_path()'s own errno is returned; the callback may give it ("ENOTDIR") or just FILE_NOT_FOUND.
        raise log.error(0, "FILE_NOT_FOUND", "ENOENT" if problem == "FILE_NOT_FOUND" else problem)

    rest_start = colon + 1
    rest, ref_ctr_offset = _uprobe_ref_ctr(place, rest_start, log)
    percent = rest.find("%")
    if percent >= 0:
        if rest[percent:] != "%return":
            raise log.error(rest_start + percent, "BAD_ADDR_SUFFIX")
        rest = rest[:percent]
        is_return = True
    try:
        offset = kstrtoull(rest)
    except KstrtoxError as exc:
        raise log.error(rest_start, "BAD_UPROBE_OFFS", exc.errno) from None
    return _UprobePoint(filename, offset, ref_ctr_offset, is_return)


def _uprobe_ref_ctr(place: str, rest_start: int, log: _Log) -> tuple[str, Optional[int]]:
    """The ``(REF_CTR_OFFSET)`` of the place's part from ``rest_start``: (that part without it, the offset)."""
    rest = place[rest_start:]
    brace = rest.find("(")
    if brace < 0:
        return rest, None
    close = rest.find(")", brace)
    if close < 0:
        raise log.error(len(place), "REFCNT_OPEN_BRACE")
    if close + 1 != len(rest):
        raise log.error(rest_start + close + 1, "BAD_REFCNT_SUFFIX")
    try:
        ref_ctr_offset = kstrtoull(rest[brace + 1 : close])
    except KstrtoxError as exc:
        raise log.error(rest_start + brace + 1, "BAD_REFCNT", exc.errno) from None
    return rest[:brace], ref_ctr_offset


def _create_uprobe(argv: list[str], dialect: KernelDialect, file_exists: FileLookup) -> ProbeCommand:
    head = argv[0]
    if head[0] not in "pr" or len(argv) < 2:
        raise _Cancelled
    log = _Log("trace_uprobe", argv, dialect)
    if len(argv) - 2 > MAX_TRACE_ARGS:
        raise _too_many_args(log)  # checked before the place is even looked at
    # Only "p:" / "r:" introduce a name: "r10:name" or "pfoo:name" are accepted and the name is ignored.
    event_text = head[2:] if _at(head, 1) == ":" else None
    point = _uprobe_point(argv[1], head[0] == "r", log, file_exists)
    filename, offset, is_return = point.filename, point.offset, point.is_return

    log.index = 0
    group = DEFAULT_GROUP["uprobe"]
    event: Optional[str] = None
    if event_text is not None:
        parsed_group, event = _parse_event_name(event_text, 2, log, dialect)
        group = parsed_group or group
    if event is None:
        # Always 'p', not sanitized: the basename cut at the first '.', '-' or '_'.
        tail = re.split(r"[._-]", filename[filename.rfind("/") + 1 :], maxsplit=1)[0]
        event = f"p_{tail}_0x{offset:x}"[: MAX_EVENT_NAME_LEN - 1]

    def context() -> _ArgContext:
        return _ArgContext(kernel=False, is_return=is_return, function_entry=False)

    args = _ProbeArgs(log, dialect, context)
    for index, word in enumerate(argv[2:]):
        log.index = index + 2
        args.add(word)

    return ProbeCommand(
        kind="uprobe",
        is_return=is_return,
        maxactive=None,
        group=from_kernel_bytes(group),
        event=from_kernel_bytes(event),
        symbol=None,
        offset=offset,
        address=None,
        path=from_kernel_bytes(filename),
        ref_ctr_offset=point.ref_ctr_offset,
        args=tuple(args.args),
    )


# --------------------------------------------------------------------------------------------------------------
# Removal (dyn_event_release) and dispatch
# --------------------------------------------------------------------------------------------------------------


def _parse_removal(argv: list[str], subsystem: Subsystem, dialect: KernelDialect) -> RemovalCommand:
    log = _Log(subsystem, argv, dialect)
    head = argv[0]
    if head[0] == "-":
        if _at(head, 1) != ":":
            raise log.unlogged("BAD_REMOVAL", "EINVAL")
        target = head[2:]
    else:  # '!' in dynamic_events: anything up to the first ':'
        colon = head.find(":")
        if colon < 0:
            raise log.unlogged("BAD_REMOVAL", "EINVAL")
        target = head[colon + 1 :]
    group: Optional[str] = None
    slash = target.find("/")
    if slash >= 0:
        group, target = target[:slash], target[slash + 1 :]
    if group is None and not target:
        raise log.unlogged("BAD_REMOVAL", "EINVAL")
    return RemovalCommand(
        group=None if group is None else from_kernel_bytes(group),
        event=from_kernel_bytes(target),
        match_args=tuple(from_kernel_bytes(word) for word in argv[1:]),
    )


def parse_command(
    line: str,
    *,
    control: ControlFile,
    dialect: KernelDialect,
    symbol_exists: SymbolLookup = lambda symbol: True,
    file_exists: FileLookup = _real_file_check,
) -> Union[ProbeCommand, RemovalCommand, None]:
    """Parse one command as written to ``control``; ``None`` for a blank or comment-only line.

    ``symbol_exists(symbol)`` answers for kprobe symbols (``MOD:SYM`` as written, without offset); it may return a
    count, and more than one means ``NON_UNIQ_SYMBOL``.  ``file_exists(path)`` returns ``None`` for a regular file,
    else ``"FILE_NOT_FOUND"``, ``"NO_REGULAR_FILE"`` or an errno name (``"ENOTDIR"``: FILE_NOT_FOUND with that
    errno).  The default checks this machine's filesystem.  Raises :class:`ProbeSyntaxError`.
    """
    raw = to_kernel_bytes(line)
    raw = raw.split("\0", 1)[0]  # the kernel sees a C string
    raw = raw.split("#", 1)[0]  # trace_parse_run_command strips comments before the parser runs
    argv = argv_split(raw)
    if not argv:
        return None
    subsystem: Subsystem = "trace_uprobe" if control == "uprobe_events" else "trace_kprobe"

    if control == "dynamic_events":
        if raw[0] in "-!":
            return _parse_removal(argv, subsystem, dialect)
        if raw[0] in "eft" or raw.startswith("s:"):
            raise UnsupportedCommand(f"{line!r}: only kprobe and uprobe commands are modelled")
        try:
            return _create_kprobe(list(argv), dialect, symbol_exists)
        except _Cancelled:
            pass
        try:
            return _create_uprobe(list(argv), dialect, file_exists)
        except _Cancelled:
            raise _Log(subsystem, argv, dialect).unlogged("UNKNOWN_COMMAND", "EINVAL") from None

    if raw[0] == "-":
        return _parse_removal(argv, subsystem, dialect)
    try:
        if control == "kprobe_events":
            return _create_kprobe(list(argv), dialect, symbol_exists)
        return _create_uprobe(list(argv), dialect, file_exists)
    except _Cancelled:
        raise _Log(subsystem, argv, dialect).unlogged("UNKNOWN_COMMAND", "EINVAL") from None


# --------------------------------------------------------------------------------------------------------------
# Multi-line writes (trace_parse_run_command)
# --------------------------------------------------------------------------------------------------------------


def split_commands(data: str) -> list[str]:
    """Split one write() into the commands the kernel runs, comments removed (blank ones included).

    Copies the kernel's 4 KiB buffer loop: a line with a newline may hold 4094 bytes, the final unterminated line
    4095; a longer line, or a NUL byte, makes the write fail with EINVAL (:class:`LineTooLongError`) after the
    commands before it have run.
    """
    buffer = data.encode("utf-8", "surrogateescape")
    count = len(buffer)
    done = 0
    commands: list[str] = []
    while done < count:
        chunk = buffer[done : done + min(count - done, WRITE_BUFSIZE - 1)]
        position = 0
        while True:
            visible = chunk[position:].split(b"\0", 1)[0]  # C string functions stop at a NUL
            newline = visible.find(b"\n")
            if newline >= 0:
                line, size = visible[:newline], newline + 1
            else:
                line, size = visible, len(visible)
                if done + size < count:
                    if position != 0:
                        break  # re-read from the start of this line with a fresh buffer
                    raise LineTooLongError([from_kernel_bytes(c) for c in commands])
            done += size
            commands.append(line.split(b"#", 1)[0].decode("latin-1"))
            position += size
            if done >= count:
                break
    return [from_kernel_bytes(command) for command in commands]
