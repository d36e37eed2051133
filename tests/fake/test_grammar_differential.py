"""The grammar against this machine's kernel: the same uprobe commands go to uprobe_events and to the parser.

Every case must end the same way on both sides: accepted (and listed identically) or refused with the same errno,
the same error_log message and the same caret.  Only uprobes are exercised (this kernel has no kprobe_events).

Safety rules, because this is a shared, live kernel:
* every probe lives in the group ``ktrace_grammartest_<pid>`` and is removed right after its case (and in a final
  sweep), nothing is ever enabled, uprobe_events is never truncated;
* no two live probes ever share an event name (appending a second probe point to an event has wedged this kernel
  before): event names are unique across the case list, and a case refuses to run if its event already exists;
* a command is only written if its first word pins the group to ours (``p:GROUP/``...), cannot create anything
  (not ``p``/``r``), or is one of a few heads verified to be refused.  uprobe_events silently ignores the name in
  ``r10:NAME`` or ``pNAME:...`` and would auto-name the probe into the shared ``uprobes`` group, where it could
  append to someone else's event.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import pytest

from pytest_ktrace.fake._grammar import (
    KernelDialect,
    LineTooLongError,
    ProbeCommand,
    ProbeSyntaxError,
    RemovalCommand,
    parse_command,
    split_commands,
)

TRACEFS = Path("/sys/kernel/tracing")
UPROBE_EVENTS = TRACEFS / "uprobe_events"
ERROR_LOG = TRACEFS / "error_log"
DIALECT = KernelDialect(os.uname().release, os.uname().machine)  # the kernel these tests run on
GROUP = f"ktrace_grammartest_{os.getpid()}"
TARGET_SOURCE = "/usr/bin/true"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not UPROBE_EVENTS.exists() or not ERROR_LOG.exists() or os.uname().machine != "x86_64",
    reason="needs root, x86_64 and tracefs with uprobe_events and error_log",
)


def entry_file_offset(path: str) -> int:
    """The file offset of an ELF64 executable's entry point: a real instruction to put the probes on."""
    data = Path(path).read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path} is not a 64-bit ELF file"
    entry, phoff = struct.unpack_from("<QQ", data, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for index in range(phnum):
        kind, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", data, phoff + index * phentsize)
        if kind == 1 and vaddr <= entry < vaddr + filesz:  # PT_LOAD holding the entry point
            return int(entry - vaddr + offset)
    raise AssertionError(f"no PT_LOAD segment of {path} holds the entry point")


# Placeholders: {G} group, {T} target path, {L} a symlink to it, {O} the entry offset in hex, {D} in decimal,
# {N} the target's directory.  Each accepted case uses its own event name (see the module docstring).
CASES: list[str] = [
    # --- accepted: probe points and names
    "p:{G}/ok_plain {T}:{O}",
    "r:{G}/ok_ret {T}:{O}",
    "p:{G}/ok_pct_return {T}:{O}%return",
    "p:{G}/ok_refctr {T}:{O}(0x10)",
    "p:{G}/ok_refctr_zero {T}:{O}(0)",
    "p:{G}/ok_return_then_refctr {T}:{O}%return(8)",
    "p:{G}/ok_decimal {T}:{D}",
    "p:{G}/ok_zero {T}:0",
    "p:{G}.ok_dot_separator {T}:{O}",
    "p:{G}/ {T}:{O}",
    "p:{G}/ok_symlink {L}:{O}",
    "p:{G}/ok_dotdot {N}/../{N_BASE}/true:{O}",
    "   p:{G}/ok_leading_spaces    {T}:{O}     %di   ",
    "p:{G}/ok_tabs\t{T}:{O}\t%si",
    "p:{G}/ok_nbsp\udca0{T}:{O}\udca0%dx",
    "p:{G}/ok_comment {T}:{O} %di # everything after the hash is ignored",
    "p:{G}/ok_latin1_\udce9 {T}:{O}",
    "p:{G}/" + "e" * 63 + " {T}:{O}",
    "p:{G}/ok_name32 {T}:{O} " + "a" * 32 + "=%di",
    # --- accepted: fetch arguments
    "p:{G}/ok_regs {T}:{O} %ax %bx %cx %dx %si %di %bp %sp %ip %flags %orig_ax %cs %ss %r8 %r15",
    "p:{G}/ok_stack {T}:{O} $stack $stack0 $stack99999 $comm $COMM",
    "r:{G}/ok_retval {T}:{O} $retval rv2=$retvalfoo",
    "p:{G}/ok_deref {T}:{O} +0($stack) -8(%sp) +0x10(+8(%di)) +u4(%si) -u4(%si)",
    "p:{G}/ok_types {T}:{O} a=%di:u8 b=%di:s16 c=%di:x32 d=%di:u64 e=%di:char f=%di:s64 g=%di:x8",
    'p:{G}/ok_strings {T}:{O} s=+0(%di):string u=+0(%di):ustring c=$comm:string i=\\"hello" v=\\1:string',
    "p:{G}/ok_bitfields {T}:{O} bf=%di:b4@2/32 bf2=+0(%si):b1@0/8 bf3=%dx:b64@0/64 bf4=%cx:b0x4@0x4/0x8",
    "p:{G}/ok_arrays {T}:{O} arr=+0(%di):u8[4] sarr=+0(%di):string[2] big=+0(%di):x8[64] us=+0(%di):ustring[3]",
    "p:{G}/ok_immediates {T}:{O} imm=\\123 neg=\\-5 hex=\\0x10 plus=\\+7 oct=\\017",
    "p:{G}/ok_memory {T}:{O} @0x1000 @+0x10 @+-4 @4096",
    "p:{G}/ok_auto_names {T}:{O} %di x=%si %dx",
    "p:{G}/ok_nested {T}:{O} +0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(%di))))))))))))):u16",
    "p:{G}/ok_junk_after_brace {T}:{O} +0(%di)junk",
    "p:{G}/ok_arg_63 {T}:{O} x=+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(%di))))))))))))))",
    "p:{G}/ok_128_args {T}:{O} " + " ".join(["%di"] * 128),
    "p:{G}/ok_more_strings {T}:{O} f=@+0x10:string g=\\-1:string h=+0(%di):char[4] k=%di:b4@4/8",
    "p:{G}/ok_auto_arg_names {T}:{O} arg1=%di %si arg3=%dx",
    "p:{G}/ok_octal {T}:010",
    "p:{G}/ok_colon_in_path {N}/with:colon:{O}",
    "p:{G}/ {N}/my-prog.bin:{O}",
    "p:{G}/ {N}/" + "a" * 100 + ":{O}",
    "r:{G}/ {T}:0x1",
    "p:{G}/ok_hash_in_arg {T}:{O} x=%di#comment",
    "p:{G}/ok_vt_ff_cr\v{T}:{O}\f%di\r%si",
    "p:{G}/ok_name_is_group {T}:{O} {G}=%di",
    "p:{G}/ok_size_3072 {T}:{O} " + " ".join(f"a{i}=+0(%di):u64[64]" for i in range(6)),
    # --- refused by the probe point
    "p:{G}/bad /nonexistent/file:0x10",
    "p:{G}/bad /sys:100",
    "p:{G}/bad {T}/below_a_file:10",
    "p:{G}/bad {T}:10a",
    "p:{G}/bad {T}:0x",
    "p:{G}/bad {T}:08",
    "p:{G}/bad {T}:99999999999999999999",
    "p:{G}/bad {T}:10(1a)",
    "p:{G}/bad {T}:10(99999999999999999999)",
    "p:{G}/bad {T}:10()",
    "p:{G}/bad {T}:10(10",
    "p:{G}/bad {T}:10(10)a",
    "p:{G}/bad {T}:10(10)%return",
    "p:{G}/bad {T}:10%hoge",
    "p:{G}/bad {T}:10%returnx",
    "p:{G}/bad {T}:10%",
    "p:{G}/bad {T}",
    "p:{G}/bad true:10",
    "p:{G}/bad {T}:x10",
    "p:{G}/bad",
    "x:{G}/bad {T}:{O}",
    "p:{G}/bad " + " ".join(["%di"] * 129),
    "p:{G}/bad " + " ".join(["%di"] * 130),
    "p:{G}/bad {T}:{O} " + " ".join(["%di"] * 129),
    "p:{G}/bad {T}:+10",
    "p:{G}/bad   {T}:{O}    $retval",
    "p:{G}/bad {N}/with:colon:zz",
    # --- refused by the event name
    "p:/ {T}:{O}",
    "p:{G}/ev/x {T}:{O}",
    "p:1x.ev {T}:{O}",
    "p:/bad {T}:{O}",
    "p: {T}:{O}",
    "p:{G}/bad.1 {T}:{O}",
    "p:{G}/1bad {T}:{O}",
    "p:{G}/bad-name {T}:{O}",
    "p:{G}/bad\u00e9 {T}:{O}",
    "p:{G}/" + "e" * 64 + " {T}:{O}",
    "p:{G}" + "x" * 50 + "/bad {T}:{O}",
    "p:1{G}/bad {T}:{O}",
    "p:{G}.1/bad {T}:{O}",
    # --- refused by a fetch argument
    "p:{G}/bad {T}:{O} @+ab",
    "p:{G}/bad {T}:{O} @+99999999999999999999",
    "p:{G}/bad {T}:{O} @symbol",
    "p:{G}/bad {T}:{O} @12345678abcde",
    "p:{G}/bad {T}:{O} @99999999999999999999",
    "p:{G}/bad {T}:{O} $stack0:symstr",
    "p:{G}/bad {T}:{O} $stack0:symbol",
    "p:{G}/bad {T}:{O} $arg1",
    "p:{G}/bad {T}:{O} $arg0",
    "p:{G}/bad {T}:{O} $argx",
    "p:{G}/bad {T}:{O} $arg*",
    "r:{G}/bad {T}:{O} $arg2",
    "p:{G}/bad {T}:{O} $retval",
    "p:{G}/bad {T}:{O} x=$retval",
    "p:{G}/bad {T}:{O} $stackx",
    "p:{G}/bad {T}:{O} $stack1x",
    "p:{G}/bad {T}:{O} $stack99999999999999999999",
    "p:{G}/bad {T}:{O} $none_var",
    "p:{G}/bad {T}:{O} $",
    "p:{G}/bad {T}:{O} %none_reg",
    "p:{G}/bad {T}:{O} %ds",
    "p:{G}/bad {T}:{O} %rax",
    "p:{G}/bad {T}:{O} %DI",
    "p:{G}/bad {T}:{O} %",
    "p:{G}/bad {T}:{O} hoge",
    "p:{G}/bad {T}:{O} _x",
    "p:{G}/bad {T}:{O} &1",
    "p:{G}/bad {T}:{O} ($stack)",
    "p:{G}/bad {T}:{O} x=+0((%di))",
    "p:{G}/bad {T}:{O} (:u8",
    "p:{G}/bad {T}:{O} 1",
    "p:{G}/bad {T}:{O} +0()",
    "p:{G}/bad {T}:{O} arg1=\\x",
    "p:{G}/bad {T}:{O} \\99999999999999999999",
    "p:{G}/bad {T}:{O} \\",
    'p:{G}/bad {T}:{O} arg1=\\"abcd',
    'p:{G}/bad {T}:{O} \\"',
    "p:{G}/bad {T}:{O} +0@0)",
    "p:{G}/bad {T}:{O} +0ab1(%di)",
    "p:{G}/bad {T}:{O} +(%di)",
    "p:{G}/bad {T}:{O} +99999999999999999999(%di)",
    "p:{G}/bad {T}:{O} +0(+0(%di)",
    "p:{G}/bad {T}:{O} +u0(+u0(%di)",
    "p:{G}/bad {T}:{O} x=-u8(-8(%di)",
    "p:{G}/bad {T}:{O} +0($comm)",
    "p:{G}/bad {T}:{O} +u0($comm)",
    'p:{G}/bad {T}:{O} +0(\\"a")',
    "p:{G}/bad {T}:{O} +0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(@0))))))))))))))",
    "p:{G}/bad {T}:{O} +0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(%di)))))))))))))):string",
    "p:{G}/bad {T}:{O} +0(%di):u8[10",
    "p:{G}/bad {T}:{O} +0(%di):u8[10]a",
    "p:{G}/bad {T}:{O} +0(%di):u8[10a]",
    "p:{G}/bad {T}:{O} +0(%di):u8[256]",
    "p:{G}/bad {T}:{O} +0(%di):u8[65]",
    "p:{G}/bad {T}:{O} +0(%di):u8[0]",
    "p:{G}/bad {T}:{O} %di:u8[2]",
    "p:{G}/bad {T}:{O} +u0(%di):u8[2]",
    "p:{G}/bad {T}:{O} %di:unknown_type",
    "p:{G}/bad {T}:{O} %di:",
    "p:{G}/bad {T}:{O} $stack0:string",
    "p:{G}/bad {T}:{O} %di:ustring",
    "p:{G}/bad {T}:{O} $stack:string",
    "p:{G}/bad {T}:{O} +0(%di):symstr",
    "p:{G}/bad {T}:{O} %di:u8[64]",
    "p:{G}/bad {T}:{O} +0(%di):string[65]",
    "p:{G}/bad {T}:{O} $comm:u8",
    "p:{G}/bad {T}:{O} $comm:string[2]",
    'p:{G}/bad {T}:{O} \\"x":u32',
    "p:{G}/bad {T}:{O} %di:b10@a/16",
    "p:{G}/bad {T}:{O} %di:b0@0/8",
    "p:{G}/bad {T}:{O} %di:b9@0/8",
    "p:{G}/bad {T}:{O} %di:b4/8",
    "p:{G}/bad {T}:{O} %di:b4@2/12",
    "p:{G}/bad {T}:{O} %di:bfoo",
    "p:{G}/bad {T}:{O} +0($stack):b100@0/8",
    "p:{G}/bad {T}:{O} arg123456789012345678901234567890=%di",
    "p:{G}/bad {T}:{O} =%di",
    "p:{G}/bad {T}:{O} 1x=%di",
    "p:{G}/bad {T}:{O} var.1=%di",
    "p:{G}/bad {T}:{O} var1=%di var1=%si",
    "p:{G}/bad {T}:{O} arg2=%di %si",
    "p:{G}/bad {T}:{O} common_pid=%di",
    "p:{G}/bad {T}:{O} __probe_ip=%di",
    "p:{G}/bad {T}:{O} x=+1234567(+1234567(+1234567(+1234567(+1234567(+1234567(@1234))))))",
    "p:{G}/bad {T}:{O} x=",
    "p:{G}/bad {T}:{O} " + " ".join(f"a{i}=+0(%di):u64[64]" for i in range(7)),
    # --- removals (nothing of these exists: ENOENT when the syntax is fine)
    "-:{G}/no_such_event",
    "-:{G}/",
    "-:{G}/no_such_event %di",
    "-",
    "-:",
    "-x",
]


# Heads outside our group that this kernel was seen to refuse (NO_GROUP_NAME, NO_EVENT_NAME, BAD_GROUP_NAME...).
REFUSED_FOREIGN_HEADS = {"p:/bad", "p:", "p:1{G}/bad", "p:/", "p:1x.ev", "p:{G}" + "x" * 50 + "/bad"}


def head_is_safe(command: str, values: dict[str, str]) -> bool:
    head = command.replace("\udca0", " ").split(None, 1)[0] if command.strip() else ""
    if not head or head[0] not in "pr":
        return True
    if re.match(rf"[pr]:{re.escape(GROUP)}[/.]", head):
        return True
    return head in {expand(allowed, values) for allowed in REFUSED_FOREIGN_HEADS}


def fuzz_cases(count: int, seed: int = 20251201) -> list[str]:
    """Deterministic random argument lists, each under its own event name in our group."""
    pieces = [
        "%di",
        "%si",
        "%r8",
        "$stack",
        "$stack1",
        "$comm",
        "$retval",
        "$arg1",
        "@0x10",
        "@+4",
        "@x",
        "\\1",
        '\\"s"',
        "\\",
        "+0(",
        "+u0(",
        "-8(",
        "(",
        ")",
        ":u8",
        ":x64",
        ":string",
        ":ustring",
        ":b4@2/8",
        ":s32[2]",
        "[3]",
        "]",
        ":",
        "=",
        "n=",
        "a",
        "_",
        "1",
        "0x",
        "$",
        "%",
        "@",
        "+",
        "-",
        ".",
        "*",
        "&",
    ]
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        args = " ".join("".join(rng.choice(pieces) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 3)))
        place = "{T}:{O}" + rng.choice(["", "%return", "(0x8)"])
        cases.append(f"{rng.choice('pr')}:{{G}}/fuzz{index} {place} {args}")
    return cases


@dataclass(frozen=True)
class KernelOutcome:
    errno: Optional[int]  # None: accepted
    log_message: Optional[str]  # the entry's message, None when the kernel logged nothing
    log_command: Optional[str]
    caret: Optional[int]


def kernel_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def write_control(data: bytes) -> Optional[int]:
    """One O_APPEND write (Python's "a" mode lseeks, which tracefs refuses); the errno or None."""
    fd = os.open(UPROBE_EVENTS, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)
    return None


def clear_error_log() -> None:
    with open(ERROR_LOG, "w") as log:  # O_TRUNC clears it
        log.write("")


_ENTRY = re.compile(rb"^\[[ \d]+\.\d+\] trace_uprobe: error: (.*)\n  Command: (.*)\n( *)\^\n", re.MULTILINE)


def find_log_entry(command: bytes) -> Optional[tuple[str, str, int]]:
    """Our entry in error_log (other sessions may log too): (message, command, caret)."""
    for match in _ENTRY.finditer(ERROR_LOG.read_bytes()):
        if match.group(2) == command:
            message, logged_command = (raw.decode("utf-8", "surrogateescape") for raw in match.group(1, 2))
            return message, logged_command, len(match.group(3)) - len("  Command: ")
    return None


def listed_events() -> dict[str, str]:
    """uprobe_events lines of our group, by "group/event"."""
    lines: dict[str, str] = {}
    for raw in UPROBE_EVENTS.read_bytes().decode("utf-8", "surrogateescape").splitlines():
        name = raw.split(" ", 1)[0].split(":", 1)[1]
        if name.startswith(GROUP + "/"):
            lines[name] = raw
    return lines


def remove_event(name: str) -> None:
    failure = write_control(kernel_bytes(f"-:{name}"))
    assert failure is None, f"could not remove {name}: {os.strerror(failure)}"


def run_on_kernel(command: str) -> tuple[KernelOutcome, dict[str, str]]:
    """Write the command; return the outcome and the probes it created (already removed again)."""
    data = kernel_bytes(command)
    expected_command = b" ".join(re.split(rb"[ \t\n\v\f\r\xa0]+", data.split(b"#", 1)[0].strip(b" \t\n\v\f\r\xa0")))
    before = listed_events()
    entry: Optional[tuple[str, str, int]] = None
    for _attempt in range(3):  # another session may clear error_log between our write and our read
        clear_error_log()
        failure = write_control(data)
        created = {name: line for name, line in listed_events().items() if name not in before}
        for name in created:
            remove_event(name)
        if failure is None:
            return KernelOutcome(None, None, None, None), created
        entry = find_log_entry(expected_command)
        if entry is not None:
            return KernelOutcome(failure, entry[0], entry[1], entry[2]), created
    return KernelOutcome(failure, None, None, None), created


def parse_on_grammar(command: str) -> Union[ProbeCommand, RemovalCommand, ProbeSyntaxError, None]:
    try:
        return parse_command(command, control="uprobe_events", dialect=DIALECT)
    except ProbeSyntaxError as error:
        return error


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    directory = tmp_path_factory.mktemp("grammar_target")
    program = directory / "true"
    shutil.copy(TARGET_SOURCE, program)
    for copy_name in ("with:colon", "my-prog.bin", "a" * 100):
        shutil.copy(TARGET_SOURCE, directory / copy_name)
    link = directory / "true_link"
    link.symlink_to(program)
    offset = entry_file_offset(str(program))
    yield {
        "G": GROUP,
        "T": str(program),
        "L": str(link),
        "N": str(directory),
        "N_BASE": directory.name,
        "O": hex(offset),
        "D": str(offset),
    }
    for name in listed_events():  # belt and braces: nothing of ours may outlive the test
        remove_event(name)


def expand(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: values[match.group(1)], template)


def test_case_list_is_big_enough_and_names_are_unique(target: dict[str, str]) -> None:
    assert len(CASES) >= 100
    accepted_names = [
        f"{result.group}/{result.event}"
        for result in (parse_on_grammar(expand(case, target)) for case in CASES + fuzz_cases(150))
        if isinstance(result, ProbeCommand)
    ]
    assert len(accepted_names) == len(set(accepted_names)), "two accepted cases share an event name"
    assert all(name.startswith(GROUP + "/") for name in accepted_names)
    assert all(head_is_safe(expand(case, target), target) for case in CASES + fuzz_cases(150))


@pytest.mark.parametrize("cases", [CASES, fuzz_cases(150)], ids=["hand-written", "fuzzed"])
def test_kernel_and_grammar_agree(target: dict[str, str], cases: list[str]) -> None:
    mismatches: list[str] = []
    for template in cases:
        command = expand(template, target)
        assert head_is_safe(command, target), f"{command!r} might create a probe outside {GROUP}"
        expected = parse_on_grammar(command)
        if isinstance(expected, ProbeCommand):
            name = f"{expected.group}/{expected.event}"
            assert name not in listed_events(), f"{name} exists already; refusing to append a probe to it"
        outcome, created = run_on_kernel(command)
        problem = compare(expected, outcome, created)
        if problem:
            mismatches.append(f"{command!r}\n    {problem}")
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ:\n" + "\n".join(mismatches)


def compare(
    expected: Union[ProbeCommand, RemovalCommand, ProbeSyntaxError, None],
    outcome: KernelOutcome,
    created: dict[str, str],
) -> Optional[str]:
    if isinstance(expected, ProbeCommand):
        if outcome.errno is not None:
            return f"grammar accepts, kernel says {os.strerror(outcome.errno)}: {outcome.log_message} @{outcome.caret}"
        name = f"{expected.group}/{expected.event}"
        if list(created) != [name]:
            return f"grammar expects {name}, kernel created {list(created)}"
        if created[name] != expected.listing():
            return f"listing differs:\n    kernel  {created[name]!r}\n    grammar {expected.listing()!r}"
        return None
    if isinstance(expected, RemovalCommand):
        # Nothing we remove exists, so a well-formed removal must fail with ENOENT.
        if outcome.errno != 2:
            return f"grammar parses a removal, kernel says {outcome.errno}"
        return None
    if expected is None:
        return None if outcome.errno is None and not created else f"grammar ignores it, kernel: {outcome}"
    if outcome.errno is None:
        return f"grammar refuses ({expected.code} @{expected.position}), kernel accepts: {list(created.values())}"
    kernel_errno = os.strerror(outcome.errno)
    grammar_errno = os.strerror(getattr(errno, expected.errno))
    if kernel_errno != grammar_errno:
        return f"errno: kernel {kernel_errno}, grammar {grammar_errno} ({expected.code})"
    if expected.logged != (outcome.log_message is not None):
        return f"logged: kernel {outcome.log_message!r}, grammar {expected.logged} ({expected.code})"
    if expected.logged and (outcome.log_message, outcome.caret, outcome.log_command) != (
        expected.message,
        expected.position,
        expected.command,
    ):
        return (
            f"log differs:\n    kernel  {outcome.log_message!r} @{outcome.caret} {outcome.log_command!r}"
            f"\n    grammar {expected.message!r} @{expected.position} {expected.command!r}"
        )
    return None


def test_multi_line_write_keeps_lines_before_the_failing_one(target: dict[str, str]) -> None:
    data = expand("p:{G}/multi_first {T}:{O}\np:{G}/multi_second {T}:{O} $retval\np:{G}/multi_third {T}:{O}", target)
    commands = split_commands(data)
    assert len(commands) == 3
    first = parse_command(commands[0], control="uprobe_events", dialect=DIALECT)
    assert isinstance(first, ProbeCommand)
    with pytest.raises(ProbeSyntaxError) as refused:
        parse_command(commands[1], control="uprobe_events", dialect=DIALECT)
    assert refused.value.code == "RETVAL_ON_PROBE"

    before = listed_events()
    failure = write_control(kernel_bytes(data))
    created = {name: line for name, line in listed_events().items() if name not in before}
    for name in created:
        remove_event(name)
    assert failure == 22
    assert created == {f"{GROUP}/multi_first": first.listing()}


@pytest.mark.parametrize("line_bytes, accepted", [(4094, True), (4095, False)])
def test_line_length_limit(target: dict[str, str], line_bytes: int, accepted: bool) -> None:
    command = expand("p:{G}/long_line_" + str(line_bytes) + " {T}:{O}", target)
    data = command + " " * (line_bytes - len(command)) + "\n"
    try:
        split_commands(data)
        grammar_accepts = True
    except LineTooLongError:
        grammar_accepts = False

    before = listed_events()
    failure = write_control(kernel_bytes(data))
    for name in listed_events():
        if name not in before:
            remove_event(name)
    assert (failure is None) == accepted == grammar_accepts
