"""FakeTracefs against this machine's tracefs: one scripted session, applied to both, must give the same results.

Every step's outcome (success with the bytes written or the text read, or the errno) is compared.  Contents are
normalised only for what cannot agree: timestamps, pids, addresses (load addresses of the probed binary), the
irq-info flags, error_log timestamps and event IDs (other sessions create and delete dynamic events on this
kernel concurrently, which moves the ID the next event gets).  Files shared with the rest of the machine
(uprobe_events, dynamic_events, available_events and the top-level error_log) are compared only in their lines
that name this test's group.

Safety rules, because this is a shared, live kernel:
* the group and the instance are ``ktrace_fakediff_<pid>``; everything is removed in ``finally`` blocks;
* probe files are only appended to (``os.open(O_WRONLY|O_APPEND)`` + one ``os.write``), never truncated, and the
  top-level error_log is never cleared (other sessions read it);
* no event name ever gets a second probe point on the real kernel: the EEXIST cases reuse the same probe point
  (SAME_PROBE, DIFF_PROBE_TYPE) or another kind's name (EVENT_EXIST), and fail before anything is appended.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import pytest

from pytest_ktrace._elf import symbol_file_offset
from pytest_ktrace.fake._tracefs import FakeOSError, FakeTracefs, FieldInput
from pytest_ktrace.snapshots._snapshot import KernelSnapshot

TRACEFS = Path("/sys/kernel/tracing")
GROUP = f"ktrace_fakediff_{os.getpid()}"
INSTANCE = f"instances/{GROUP}"
COMM = "fdtarget"


def _environment_problem() -> Optional[str]:
    if os.uname().machine != "x86_64":
        return "the scripted register fetchargs are x86_64's"
    if os.geteuid() != 0:
        return "needs root for tracefs"
    if not (TRACEFS / "uprobe_events").exists() or not (TRACEFS / "instances").is_dir():
        return "needs tracefs with uprobe_events and instances"
    if shutil.which("gcc") is None:
        return "needs gcc to build the probed program"
    return None


pytestmark = pytest.mark.skipif(_environment_problem() is not None, reason=_environment_problem() or "")

TARGET_SOURCE = r"""
#include <stdio.h>
__attribute__((noinline, used)) long target(long a, int b, const char *s, char c)
{
    return a + b + s[0] + c;
}
int main(void)
{
    volatile long r = target(42, -7, "hello", 'Z');
    r += target(-1, 3, "x y=z", 1);
    return (int)(r & 1);
}
"""


# What the two calls of target() pass and return, as the fetchargs below see them.
@dataclass(frozen=True)
class Call:
    a: int
    b: int
    s: str
    c: int
    returned: int

    @property
    def first_bytes(self) -> tuple[int, ...]:
        return tuple(self.s.encode()[:4])


CALLS = (Call(42, -7, "hello", ord("Z"), 229), Call(-1, 3, "x y=z", 1, 123))


# --------------------------------------------------------------------------------------------------------------
# The two sides
# --------------------------------------------------------------------------------------------------------------

Outcome = tuple[str, Union[int, str, None]]  # ("ok", bytes written / text read / None) or ("err", "EINVAL")


class RealTracefs:
    """This machine's tracefs, through single system calls."""

    def write(self, path: str, data: str, append: bool = True) -> int:
        assert append, "the real kernel's files are never truncated by this test"
        fd = os.open(TRACEFS / path, os.O_WRONLY | os.O_APPEND)
        try:
            return os.write(fd, data.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)

    def read(self, path: str) -> str:
        return (TRACEFS / path).read_bytes().decode("utf-8", "surrogateescape")

    def mkdir(self, path: str) -> None:
        os.mkdir(TRACEFS / path)

    def rmdir(self, path: str) -> None:
        os.rmdir(TRACEFS / path)


Side = Union[RealTracefs, FakeTracefs]


@dataclass(frozen=True)
class Step:
    """One operation; ``normalise`` turns a read's text into what must match."""

    action: str  # write / read / mkdir / rmdir / run
    path: str = ""
    data: str = ""
    normalise: Callable[[str], str] = lambda text: text


def perform(side: Side, step: Step) -> Outcome:
    try:
        if step.action == "write":
            return "ok", side.write(step.path, step.data)
        if step.action == "read":
            return "ok", step.normalise(side.read(step.path))
        if step.action == "mkdir":
            side.mkdir(step.path)
        elif step.action == "rmdir":
            side.rmdir(step.path)
        return "ok", None
    except OSError as exc:
        assert isinstance(exc, FakeOSError) or isinstance(side, RealTracefs), f"fake raised a bare {exc!r}"
        return "err", errno.errorcode.get(exc.errno or 0, str(exc.errno))


# --------------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------------

_CONTEXT = re.compile(r"^(?P<comm>.{16})-(?P<pid>\d+)\s*(?P<cpu>\[\d{3}\])(?P<flags> \S{5})? +\d+\.\d{6}: ", re.M)
_PROBE_FIELD_ADDRESS = re.compile(r"(__probe_\w+)=0x[0-9a-f]+ \(-?\d+\)")
_DEFAULT_HEAD = re.compile(r": \(0x[0-9a-f]+(?: <- 0x[0-9a-f]+)?\)")
_ERROR_LOG_TIME = re.compile(r"^\[\s*\d+\.\d{6}\] ", re.M)
_EVENT_ID = re.compile(r"^ID: \d+$", re.M)


def normalise_trace(text: str) -> str:
    def context(match: re.Match[str]) -> str:
        flags = " FLAGS" if match.group("flags") else ""
        return f"{match.group('comm')}-PID {match.group('cpu')}{flags} TS: "

    text = _CONTEXT.sub(context, text)
    text = _PROBE_FIELD_ADDRESS.sub(r"\1=ADDR", text)
    return _DEFAULT_HEAD.sub(lambda m: ": (ADDR <- ADDR)" if "<-" in m.group(0) else ": (ADDR)", text)


def normalise_error_log(text: str) -> str:
    return _ERROR_LOG_TIME.sub("[TS] ", text)


def only_ours(text: str) -> str:
    """The lines of a machine-wide listing that name this test's group."""
    return "".join(line + "\n" for line in text.splitlines() if GROUP in line)


def our_error_log_entries(text: str) -> str:
    """Top-level error_log entries (three lines each) whose command names this test's group."""
    entries = re.split(r"(?m)^(?=\[\s*\d+\.\d{6}\] )", text)
    return normalise_error_log("".join(entry for entry in entries if GROUP in entry))


def without_event_id(text: str) -> str:
    return _EVENT_ID.sub("ID: N", text)


def event_id_free(text: str) -> str:
    return "N\n" if text.strip().isdigit() else text


# --------------------------------------------------------------------------------------------------------------
# The script
# --------------------------------------------------------------------------------------------------------------


def script(binary: Path, offset: int) -> list[Step]:
    point = f"{binary}:{offset:#x}"
    listed_point = f"{binary}:0x{offset:016x}"  # how uprobe_events shows it, which removal arguments must match
    entry_args = "a=%di:s64 b=%si:s32 s=+0(%dx):string c=%cx:char raw=%di bytes=+0(%dx):u8[4] bf=%si:b4@0/32 cm=$comm"
    entry = f"p:{GROUP}/entry {point} {entry_args}"
    events = f"{INSTANCE}/events/{GROUP}"
    steps = [
        Step("mkdir", INSTANCE),
        Step("mkdir", INSTANCE),  # EEXIST
        Step("mkdir", f"{INSTANCE}/events/nested"),  # EPERM
        Step("write", "uprobe_events", entry),
        Step("write", "uprobe_events", f"r:{GROUP}/exit {point} rv=$retval:s64\n"),
        # refused by the grammar: error_log entries with a caret
        Step("write", "uprobe_events", f"p:{GROUP}/bad_retval {point} $retval"),
        Step("write", "uprobe_events", f"p:{GROUP}/bad_type {point} x=%di:u128"),
        Step("write", "uprobe_events", f"p:{GROUP}/bad_reg {point}  %zz"),
        Step("write", "uprobe_events", f"p:{GROUP}/bad_file /nonexistent/{GROUP}:0x10"),
        # refused by the state: EEXIST variants that never append a probe point
        Step("write", "uprobe_events", entry),  # SAME_PROBE
        Step("write", "uprobe_events", f"r:{GROUP}/entry {point} {entry_args}"),  # DIFF_PROBE_TYPE
        Step("write", "uprobe_events", f"p:sched/sched_switch {point}"),  # EVENT_EXIST (a tracepoint)
        # several commands in one write: the first stays, the second fails, the third never runs
        Step(
            "write",
            "uprobe_events",
            f"p:{GROUP}/multi_one {point} x=%ax\np:{GROUP}/multi_bad {point} $bogus\np:{GROUP}/multi_two {point}\n",
        ),
        Step("write", "uprobe_events", f"# just a comment\n\n-:{GROUP}/never_defined\n"),  # ENOENT
        Step("read", "uprobe_events", normalise=only_ours),
        Step("read", "dynamic_events", normalise=only_ours),
        Step("read", "available_events", normalise=only_ours),
        Step("read", "error_log", normalise=our_error_log_entries),
        Step("read", f"events/{GROUP}/entry/format", normalise=without_event_id),
        Step("read", f"events/{GROUP}/exit/format", normalise=without_event_id),
        Step("read", f"{events}/entry/format", normalise=without_event_id),
        Step("read", f"{events}/entry/id", normalise=event_id_free),
        Step("read", f"{events}/entry/enable"),
        Step("read", f"{events}/entry/filter"),
        Step("read", f"{events}/entry/trigger"),
        Step("read", f"{events}/enable"),
        Step("read", f"{events}/filter"),
        # enable and filter
        Step("write", f"{events}/entry/enable", "2"),  # EINVAL
        Step("write", f"{events}/entry/enable", " 1"),  # EINVAL
        Step("write", f"{events}/entry/enable", "1\n"),
        Step("read", f"{events}/enable"),  # X: mixed
        Step("write", f"{events}/exit/enable", "1"),
        Step("read", f"{events}/enable"),
        Step("read", f"{INSTANCE}/set_event", normalise=only_ours),
        Step("write", f"{events}/entry/filter", "a == "),  # bad: EINVAL, error text in the file and error_log
        Step("read", f"{events}/entry/filter"),
        Step("write", f"{events}/entry/filter", "s == hello"),  # bad: a string needs quotes? (kernel decides)
        Step("read", f"{events}/entry/filter"),
        Step("write", f"{events}/entry/filter", "(a == 42"),  # bad: Too many '('
        Step("read", f"{INSTANCE}/error_log", normalise=normalise_error_log),
        Step("write", f"{events}/entry/filter", 'a == 42 || s ~ "x*"'),
        Step("read", f"{events}/entry/filter"),
        Step("write", f"{events}/exit/filter", "rv > 200"),
        Step("read", f"{events}/exit/filter"),
        # an enabled event can be removed by nobody
        Step("write", "uprobe_events", f"-:{GROUP}/entry"),  # EBUSY
        Step("write", "uprobe_events", f"-:{GROUP}/exit {listed_point} rv=$retval:s64"),  # EBUSY (it matches)
        Step("write", "uprobe_events", f"-:{GROUP}/exit {point} rv=$retval:s64"),  # ENOENT: not as listed
        Step("write", "uprobe_events", f"-:{GROUP}/exit {point} rv=$retval:u64"),  # ENOENT (args differ)
        Step("run"),
        Step("read", f"{INSTANCE}/trace", normalise=normalise_trace),
        Step("write", f"{INSTANCE}/options/fields", "1"),
        Step("read", f"{INSTANCE}/options/fields"),
        Step("read", f"{INSTANCE}/trace", normalise=normalise_trace),
        Step("write", f"{INSTANCE}/trace_options", "nofields"),
        Step("write", f"{INSTANCE}/trace_options", "noirq-info"),
        Step("read", f"{INSTANCE}/trace", normalise=normalise_trace),
        Step("write", f"{INSTANCE}/trace_options", "no-such-option"),  # EINVAL
        Step("write", f"{INSTANCE}/trace_options", "irq-info"),
        # disable, then remove: the instance's buffer is cleared by the removal of an event it had enabled
        Step("write", f"{events}/enable", "0"),
        Step("read", f"{events}/entry/enable"),
        Step("read", f"{INSTANCE}/set_event", normalise=only_ours),
        Step("write", "uprobe_events", f"-:{GROUP}/entry"),
        Step("write", "uprobe_events", f"-:{GROUP}/entry"),  # ENOENT
        Step("read", f"{INSTANCE}/trace", normalise=normalise_trace),
        Step("write", "uprobe_events", f"-:{GROUP}/exit"),
        Step("read", f"{events}/enable"),  # the group still has multi_one
        Step("write", "uprobe_events", f"-:{GROUP}/"),  # the rest of the group
        Step("read", "uprobe_events", normalise=only_ours),
        Step("read", f"{events}/enable"),  # ENOENT: the group is gone
        Step("rmdir", INSTANCE),
        Step("rmdir", INSTANCE),  # ENOENT
    ]
    return steps


def fire_for_real(binary: Path) -> None:
    # Pinned to CPU 0 so the per-CPU column agrees with the fake's emit(cpu=0).
    subprocess.run([str(binary)], check=False, preexec_fn=lambda: os.sched_setaffinity(0, {0}), timeout=30)


def fire_in_fake(fake: FakeTracefs) -> None:
    """What the real run records: entry, exit, entry, exit (the values the program passes)."""
    for call in CALLS:
        entry: dict[str, FieldInput] = {
            "a": call.a,
            "b": call.b,
            "s": call.s,
            "c": call.c,
            "raw": call.a,
            "bytes": call.first_bytes,
            "bf": call.b & 0xF,  # b4@0/32 of %si
        }
        fake.emit(f"{GROUP}/entry", entry, pid=4242, comm=COMM)
        fake.emit(f"{GROUP}/exit", {"rv": call.returned, "__probe_ret_ip": 0x5555_5555_5188}, pid=4242, comm=COMM)


# --------------------------------------------------------------------------------------------------------------
# Fixtures and the test
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_snapshot() -> KernelSnapshot:
    """A snapshot of this machine, taken now: the fake must follow the kernel the test runs on."""
    from pytest_ktrace.backends._local import LocalBackend
    from pytest_ktrace.snapshots._snapshot import snapshot

    return snapshot(LocalBackend(), "local")


@pytest.fixture(scope="module")
def target_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fakediff")
    source = directory / "target.c"
    source.write_text(TARGET_SOURCE)
    binary = directory / COMM
    subprocess.run(["gcc", "-O0", "-g", "-o", str(binary), str(source)], check=True, capture_output=True)
    return binary


def _clean_real_kernel() -> None:
    """Best effort: disable and remove everything of this test's group and instance."""
    real = RealTracefs()
    for path in (f"{INSTANCE}/events/{GROUP}/enable", f"events/{GROUP}/enable"):
        if (TRACEFS / path).exists():
            with contextlib.suppress(OSError):
                real.write(path, "0")
    for line in real.read("uprobe_events").splitlines():
        match = re.match(r"^[pr]:(\S+)/(\S+) ", line)
        if match and match.group(1) == GROUP:
            with contextlib.suppress(OSError):
                real.write("uprobe_events", f"-:{GROUP}/{match.group(2)}")
    if (TRACEFS / INSTANCE).exists():
        with contextlib.suppress(OSError):
            real.rmdir(INSTANCE)


@pytest.fixture
def real_kernel() -> Iterator[RealTracefs]:
    _clean_real_kernel()
    try:
        yield RealTracefs()
    finally:
        _clean_real_kernel()


def test_fake_matches_this_kernel(
    real_kernel: RealTracefs, local_snapshot: KernelSnapshot, target_binary: Path
) -> None:
    offset = symbol_file_offset(target_binary, "target")
    ticks = iter(range(1, 1_000_000))
    fake = FakeTracefs(local_snapshot, cpus=os.cpu_count() or 1, clock=lambda: 1000.0 + next(ticks) / 1000)
    differences: list[str] = []
    for number, step in enumerate(script(target_binary, offset)):
        if step.action == "run":
            fire_for_real(target_binary)
            fire_in_fake(fake)
            continue
        real_outcome = perform(real_kernel, step)
        fake_outcome = perform(fake, step)
        if real_outcome != fake_outcome:
            differences.append(
                f"step {number} {step.action} {step.path} {step.data!r}:\n  real: {real_outcome!r}\n"
                f"  fake: {fake_outcome!r}"
            )
    assert not differences, "\n".join(differences)
