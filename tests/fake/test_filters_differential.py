"""The fake filter language against the running kernel.

Every expression below is written to a tracepoint's ``filter`` file inside a scratch tracefs instance; the errno,
the text the ``filter`` file shows afterwards and the instance's error_log entry must be exactly what
pytest_ktrace.fake._filters predicts.  For filters on sched_process_exec the event is then enabled (in the scratch
instance only) while a few programs run, and the execs the kernel kept must be the ones CompiledFilter.matches()
keeps.  Nothing outside the scratch instance is touched; it is removed afterwards.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pytest
from kernel_filter_rejections import KERNEL_REJECTIONS

from pytest_ktrace.backends._local import LocalBackend
from pytest_ktrace.fake._filters import (
    CURRENT_COMM_KEY,
    CURRENT_CPU_KEY,
    CompiledFilter,
    FilterError,
    FilterField,
    compile_filter,
)
from pytest_ktrace.snapshots._snapshot import KernelSnapshot, snapshot

TRACEFS = Path("/sys/kernel/tracing")
EXEC_EVENT = "sched/sched_process_exec"
OPENAT_EXIT_EVENT = "syscalls/sys_exit_openat"
KMEM_FREE_EVENT = "kmem/kmem_cache_free"
TASK_COMM_LEN = 16

Expression = Union[str, bytes]


def _tracefs_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a tracefs instance"
    if not (TRACEFS / "instances").is_dir():
        return "tracefs with instances is not mounted at /sys/kernel/tracing"
    for event in (EXEC_EVENT, OPENAT_EXIT_EVENT, KMEM_FREE_EVENT):
        if not (TRACEFS / "events" / event / "format").is_file():
            return f"tracepoint {event} is not available"
    return None


pytestmark = pytest.mark.skipif(_tracefs_problem() is not None, reason=_tracefs_problem() or "")


@dataclass(frozen=True)
class EventFormat:
    event_id: int
    fields: tuple[FilterField, ...]


_FORMAT_FIELD = re.compile(r"^\s*field:(?P<decl>[^;]*);\s*offset:\d+;\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d);")


def read_event_format(event: str) -> EventFormat:
    """The event's own (non-common) fields, classified by their declared C type as the kernel does."""
    text = (TRACEFS / "events" / event / "format").read_text()
    event_id = int(re.search(r"^ID: (\d+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    fields = []
    for line in text.splitlines():
        found = _FORMAT_FIELD.match(line)
        if not found:
            continue
        declaration = found.group("decl").strip()
        c_type, name = declaration.rsplit(" ", 1)
        if "[" in name:  # "char comm[16]" declares the array on the name
            name, bracket = name.split("[", 1)
            c_type = f"{c_type}[{bracket}"
        if name.startswith("common_"):
            continue
        is_string = "char" in c_type and ("[" in c_type or "*" in c_type)
        fields.append(FilterField(name, is_string, int(found.group("size")), found.group("signed") == "1", c_type))
    return EventFormat(event_id, tuple(fields))


def possible_cpu_count() -> int:
    """nr_cpu_ids: one more than the highest CPU in /sys/devices/system/cpu/possible."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def as_bytes(expression: Expression) -> bytes:
    return expression if isinstance(expression, bytes) else expression.encode()


def as_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class ScratchInstance:
    """instances/ktrace_filtertest_<pid>: its filter files, error_log, trace and the exec event's enable."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def filter_path(self, event: str) -> Path:
        return self.root / "events" / event / "filter"

    def write_filter(self, event: str, expression: Expression) -> str | None:
        """One write(2) of the expression; the errno name when the kernel rejects it."""
        descriptor = os.open(self.filter_path(event), os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(descriptor, as_bytes(expression))
        except OSError as failure:
            return errno.errorcode[failure.errno or 0]
        finally:
            os.close(descriptor)
        return None

    def read_filter(self, event: str) -> str:
        return as_text(self.filter_path(event).read_bytes())

    def clear_error_log(self) -> None:
        with open(self.root / "error_log", "wb"):
            pass

    def error_log_entries(self) -> list[str]:
        """error_log entries with their ``[timestamp] `` prefix removed."""
        text = as_text((self.root / "error_log").read_bytes())
        entries = re.split(r"^\[\s*\d+\.\d+\] ", text, flags=re.MULTILINE)
        return [entry for entry in entries if entry]

    def set_exec_enabled(self, enabled: bool) -> None:
        (self.root / "events" / EXEC_EVENT / "enable").write_text("1" if enabled else "0")

    def clear_trace(self) -> None:
        with open(self.root / "trace", "wb"):
            pass

    def read_trace(self) -> str:
        return as_text((self.root / "trace").read_bytes())


@pytest.fixture(scope="module")
def instance() -> Iterator[ScratchInstance]:
    root = TRACEFS / "instances" / f"ktrace_filtertest_{os.getpid()}"
    root.mkdir()
    scratch = ScratchInstance(root)
    try:
        yield scratch
    finally:
        try:
            scratch.set_exec_enabled(False)
            for event in (EXEC_EVENT, OPENAT_EXIT_EVENT, KMEM_FREE_EVENT):
                scratch.write_filter(event, "0")
        finally:
            root.rmdir()


@pytest.fixture(scope="module")
def exec_format() -> EventFormat:
    return read_event_format(EXEC_EVENT)


@pytest.fixture(scope="module")
def nr_cpu_ids() -> int:
    return possible_cpu_count()


@pytest.fixture(scope="module")
def kernel() -> KernelSnapshot:
    """A snapshot of this machine's kernel: its text layout and its answers to what its version does not settle."""
    backend = LocalBackend()
    try:
        return snapshot(backend, "this-machine")
    finally:
        backend.close()


def filter_options(kernel: KernelSnapshot) -> dict[str, Any]:
    return {
        "kernel_functions": kernel.text,
        "trailing_operator_is_error": kernel.answer("filter_trailing_operator") == "rejected",
    }


_ADDRESS = re.compile(r"\{(?P<where>start|inside|last|end):(?P<name>\w+)\}")


def with_addresses(expression: Expression, kernel: KernelSnapshot) -> Expression:
    """``{start:f}``, ``{inside:f}``, ``{last:f}``, ``{end:f}``: addresses in and around function f, this boot."""
    if isinstance(expression, bytes) or kernel.text is None:
        return expression

    def address(found: re.Match[str]) -> str:
        span = kernel.text.span_of_name(found.group("name")) if kernel.text else None
        assert span is not None, found.group("name")
        start, end = span
        offsets = {"start": start, "inside": start + 1, "last": end - 1, "end": end}
        return hex(offsets[found.group("where")])

    return _ADDRESS.sub(address, expression)


def _long_expression_with_late_error(padding: int, predicates: int) -> str:
    return "pid == 1 && " * predicates + " " * padding + "nosuch == 1"


#: Expressions written to the kernel's sched_process_exec and sys_exit_openat filters; good and bad ones.
EXEC_EXPRESSIONS: list[Expression] = [
    # accepted numeric forms
    "pid == 1",
    "pid != 1",
    "pid < 1",
    "pid <= 1",
    "pid > 1",
    "pid >= 1",
    "pid & 1",
    "pid==1",
    "pid\t==\t1",
    "  pid == 1  ",
    "pid == 0x10",
    "pid == 0X1f",
    "pid == 010",
    "pid == -1",
    "old_pid == -2147483648",
    "pid == 9223372036854775807",
    "pid == -9223372036854775808",
    "pid == 4294967297",
    # illegal numbers
    "pid == 9223372036854775808",
    "pid == -9223372036854775809",
    "pid == 0x",
    "pid == 08",
    "pid == 1a",
    "pid == --1",
    "pid == 12345678901234567890123",
    "pid == 123456789012345678901234",
    "common_type == -1",
    "stacktrace == -1",
    "pid == abc",
    "pid == +1",
    "comm != bash",
    # operators and types
    "pid = 1",
    "pid =! 1",
    "pid <> 1",
    "pid",
    "pid ==",
    "== 1",
    "pid ~ 1",
    'pid ~ "1"',
    'pid == "1"',
    "pid == '1'",
    'filename == "/bin/true"',
    "filename == '/bin/true'",
    "filename == 'a\"b'",
    'filename != "x"',
    'filename ~ "x*"',
    'filename ~ "[a-"',
    'filename ~ "\\\\"',
    'filename < "x"',
    'filename & "x"',
    "filename == 1",
    "filename == x",
    'filename == "' + "a" * 255 + '"',
    'filename == "' + "a" * 256 + '"',
    "pid.ustring == 1",
    'filename.ustring ~ "*x*"',
    "pid.function == 1",
    "pid.nosuch == 1",
    # fields
    "nosuch == 1",
    'common_comm == "x"',
    'COMM == "bash"',
    'comm ~ "*sh"',
    "common_pid > 0",
    "common_preempt_count > 4",
    "common_flags & 0x1",
    "common_type == 1",
    "stacktrace == 1",
    "STACKTRACE & 1",
    "cpu == 0",
    "common_cpu >= 1",
    'CPU ~ "x"',
    "CPU == x",
    # cpumasks
    "CPU & CPUS{0}",
    "CPU & CPUS{N}",
    "CPU & CPUS{all}",
    "CPU & CPUS{,}",
    "CPU & CPUS{0-1:1/2}",
    "CPU & CPUS{0,N}",
    "CPU == CPUS{0-N}",
    "CPU & CPUS{}",
    "CPU & CPUS{1-0}",
    "CPU & CPUS{4096}",
    "CPU & CPUS{0-1:3/2}",
    "CPU & CPUS{x}",
    "CPU & CPUS 0}",
    "CPU & CPUS{0",
    "CPU < CPUS{0}",
    "filename == CPUS{0}",
    "pid & CPUS{0-1}",
    "stacktrace & CPUS{0}",
    # logical structure
    "pid == 1 && old_pid == 2",
    "pid == 1 || old_pid == 2",
    '(pid == 1 || old_pid == 2) && !(filename ~ "*sh")',
    "!pid == 1",
    "!!pid == 1",
    "!",
    "()",
    "(!)",
    ")(",
    "(pid == 1",
    "pid == 1)",
    "((pid == 1) || (pid == 2)",
    "(pid == 1))",
    "pid == 1 &&",
    "pid == 1 ||",
    "pid == 1 && !",
    "(pid == 1) ||  ",
    "pid == 1 &&\n",
    "pid == 1 && (pid == 2 ||",
    "pid == 1 && ()",
    "pid == 1 & pid == 2",
    "pid == 1 | pid == 2",
    "pid == 1 pid == 2",
    "pid == 1 && && pid == 2",
    "(pid == 1)(pid == 2)",
    '"pid" == 1',
    "pid == 1 '",
    'filename == "x',
    # clearing and empty writes
    "0",
    " 0 ",
    "00",
    "",
    " ",
    # bytes the kernel's ctype treats specially, NUL, very long expressions
    b"pid\xa0== 1",
    b"pid == 1\xa0",
    b"pid\xc3 == 1",
    "pid == 1\0 garbage",
    "pid\u00e9 == 1",
    _long_expression_with_late_error(padding=5, predicates=338),
    _long_expression_with_late_error(padding=0, predicates=340),
]
OPENAT_EXIT_EXPRESSIONS: list[Expression] = [
    "ret < 0",
    "ret == -2",
    "ret == 18446744073709551615",
    "ret & 0x8000000000000000",
    "__syscall_nr == 257",
    "ret.function == 1",
    "ret.function == no_such_kernel_function_xyz",
    "ret.function < 1",
    'ret == "x"',
]
# call_site is an unsigned long: the kernel function it points into, by name or by address
KMEM_FREE_EXPRESSIONS: list[Expression] = [
    "call_site.function == kmem_cache_free",
    "call_site.function != kmem_cache_free",
    "call_site.function==kmem_cache_free&&ptr==0",
    "call_site.function == kmem_cache_free || call_site.function == kfree",
    "call_site.function == no_such_kernel_function_xyz",
    "call_site.function == {start:kmem_cache_free}",
    "call_site.function == {inside:kmem_cache_free}",
    "call_site.function == {last:kmem_cache_free}",
    "call_site.function == {end:kmem_cache_free}",
    "call_site.function == 0x10",
    "call_site.function == 0",
    "call_site.function == 0xzz",
    "call_site.function == 0x" + "f" * 20,
    "call_site.function < kmem_cache_free",
    "call_site.function ~ kmem_cache_free",
    'call_site.function == "kmem_cache_free"',
    "ptr.function == kmem_cache_free",
    "name.function == kmem_cache_free",
    "nosuch.function == kmem_cache_free",
]
# every rejection the unit tests pin to a 6.18 kernel's text is written to this kernel too
_RECORDED = [expression for expression, _, _ in KERNEL_REJECTIONS if expression not in EXEC_EXPRESSIONS]
WRITTEN_EXPRESSIONS: list[tuple[str, Expression]] = (
    [(EXEC_EVENT, expression) for expression in [*EXEC_EXPRESSIONS, *_RECORDED]]
    + [(OPENAT_EXIT_EVENT, expression) for expression in OPENAT_EXIT_EXPRESSIONS]
    + [(KMEM_FREE_EVENT, expression) for expression in KMEM_FREE_EXPRESSIONS]
)


def _case_id(case: tuple[str, Expression]) -> str:
    event, expression = case
    return f"{event.split('/')[1]}:{expression!r:.60}"


@pytest.mark.parametrize("case", WRITTEN_EXPRESSIONS, ids=[_case_id(case) for case in WRITTEN_EXPRESSIONS])
def test_kernel_agrees_on_acceptance_and_error_text(
    instance: ScratchInstance, nr_cpu_ids: int, kernel: KernelSnapshot, case: tuple[str, Expression]
) -> None:
    event, expression = case
    expression = with_addresses(expression, kernel)
    fields = read_event_format(event).fields
    instance.write_filter(event, "0")
    instance.clear_error_log()

    kernel_errno = instance.write_filter(event, expression)
    kernel_filter_text = instance.read_filter(event)
    kernel_log = instance.error_log_entries()

    try:
        compiled = compile_filter(expression, fields, nr_cpu_ids=nr_cpu_ids, **filter_options(kernel))
    except FilterError as predicted:
        assert kernel_errno == predicted.errno
        assert kernel_filter_text == predicted.filter_file_text(expression)
        assert kernel_log == [predicted.error_log_entry(expression)]
        return
    assert kernel_errno is None
    assert kernel_log == []
    if compiled is None:
        assert kernel_filter_text == "none\n"
    else:
        assert kernel_filter_text == compiled.filter_file_text()


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation against real sched_process_exec events


@dataclass(frozen=True)
class ExecRun:
    filename: str
    pid: int
    cpu: int

    @property
    def comm(self) -> str:
        return os.path.basename(self.filename)[: TASK_COMM_LEN - 1]


#: Filters set on sched_process_exec while the sample programs run; each must keep exactly the predicted execs.
#: ``{event_id}`` stands for the event's ID from its format file.
EVALUATED_FILTERS: list[str] = [
    'filename == "/bin/true"',
    'filename != "/bin/true"',
    'filename ~ "*true"',
    'filename ~ "/bin/*"',
    'filename ~ "*glob*"',
    'filename ~ "*/ktrace-gl?b-*"',
    'filename ~ "!*true"',
    'filename ~ "[/]bin/[!t]*"',
    'filename ~ "/bin/tru?"',
    'filename ~ "1*"',
    'filename ~ "/bin/true[!x]"',
    'filename ~ "/bin/tru[!x]"',
    'COMM == "true"',
    'COMM ~ "*rue"',
    'COMM ~ "*pro"',
    'comm ~ "ech*"',
    'COMM ~ "*cho*"',
    "CPU == 0",
    "CPU & CPUS{1}",
    "CPU & CPUS{0-1}",
    "CPU != CPUS{0-1}",
    "common_cpu != 0",
    "CPU & 1",
    "pid & 1",
    "!(pid & 1)",
    "pid < 4294967296",
    "pid > -4294967296",
    "common_pid > 0",
    "pid & CPUS{0-1}",
    "stacktrace == 1",
    '(filename ~ "*true" || filename ~ "*echo") && !(COMM == "echo")',
    '!(pid & 1) || filename == "/bin/echo"',
    'pid & 1 && filename ~ "*true*" || CPU == 1',
    '!(filename == "/bin/true" || !(CPU == 0))',
    "pid == 1 &&",
    "!(!(pid & 1))",
    '!filename ~ "*true" && !COMM ~ "*cho"',
    'filename ~ "*/ktrace-glob-[p]robe-t*" || filename ~ "*[e-f]cho"',
    "common_type == {event_id}",
    "common_type != {event_id}",
]


@pytest.fixture(scope="module")
def sample_programs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    true_binary = shutil.which("true") or "/bin/true"
    glob_named = tmp_path_factory.mktemp("exec") / "ktrace-glob-probe-true"
    shutil.copy2(true_binary, glob_named)
    return ["/bin/true", "/bin/echo", str(glob_named)]


def run_pinned(program: str, cpu: int) -> ExecRun:
    process = subprocess.Popen(
        [program, "ktrace"], stdout=subprocess.DEVNULL, preexec_fn=lambda: os.sched_setaffinity(0, {cpu})
    )
    process.wait(timeout=10)
    return ExecRun(program, process.pid, cpu)


_EXEC_LINE = re.compile(r"\[(?P<cpu>\d+)\].*sched_process_exec: filename=(?P<filename>.*) pid=(?P<pid>\d+) old_pid=")


def kept_execs(trace: str, runs: list[ExecRun]) -> set[int]:
    our_pids = {run.pid for run in runs}
    kept = set()
    for line in trace.splitlines():
        found = _EXEC_LINE.search(line)
        if found and int(found.group("pid")) in our_pids:
            kept.add(int(found.group("pid")))
    return kept


def exec_values(run: ExecRun, event_id: int) -> dict[str, int | str]:
    return {
        "filename": run.filename,
        "pid": run.pid,
        "old_pid": run.pid,
        "common_pid": run.pid,
        "common_type": event_id,
        CURRENT_CPU_KEY: run.cpu,
        CURRENT_COMM_KEY: run.comm,
    }


@pytest.mark.parametrize("expression", EVALUATED_FILTERS)
def test_kernel_keeps_the_execs_the_filter_matches(
    instance: ScratchInstance,
    exec_format: EventFormat,
    nr_cpu_ids: int,
    kernel: KernelSnapshot,
    sample_programs: list[str],
    expression: str,
) -> None:
    expression = expression.replace("{event_id}", str(exec_format.event_id))
    usable_cpus = sorted(os.sched_getaffinity(0))[:2]
    try:
        compiled = compile_filter(expression, exec_format.fields, nr_cpu_ids=nr_cpu_ids, **filter_options(kernel))
    except FilterError:  # e.g. CPUS{1} on a one-CPU machine, a trailing '&&': the kernel must refuse it too
        assert instance.write_filter(EXEC_EVENT, expression) is not None
        return
    assert isinstance(compiled, CompiledFilter)
    assert instance.write_filter(EXEC_EVENT, expression) is None

    instance.clear_trace()
    instance.set_exec_enabled(True)
    try:
        runs = [run_pinned(program, cpu) for program in sample_programs for cpu in usable_cpus]
    finally:
        instance.set_exec_enabled(False)
        trace = instance.read_trace()
        instance.write_filter(EXEC_EVENT, "0")

    predicted = {run.pid for run in runs if compiled.matches(exec_values(run, exec_format.event_id))}
    assert kept_execs(trace, runs) == predicted, [(run, run.pid in predicted) for run in runs]


def test_enough_expressions_are_compared() -> None:
    assert len(WRITTEN_EXPRESSIONS) >= 60
