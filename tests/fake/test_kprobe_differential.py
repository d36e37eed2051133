"""FakeBackend against the real kprobes of the Debian 6.1 qemu guests: one scripted session, applied to both.

This machine has no kprobes, so the fake's kprobe side is checked against the guests' kernels (x86_64 and arm64,
the kernels the ``debian-6.1-<arch>`` snapshots were taken from).  The same list of tracefs operations goes to
the guest (:class:`~pytest_ktrace.backends.ssh.SshBackend`) and to ``FakeBackend(load_snapshot(...))``, and every
step's outcome must be identical: success or the errno name, and the text of every read.

Contents are normalised only for what cannot agree: error_log and trace timestamps, event IDs, the pids and
irq-info flags of trace lines, and the sizes the kernel prints in ``sym+0xoff/0xsize`` (the fake's kallsyms gives
every symbol 0x100 bytes, so the offset of a kretprobe's return address, which may lie beyond that, goes too).
The fake's trace is fed with the very field values, pids and comms the guest recorded (read from an unfiltered
second instance), so the two ``trace`` files differ only in what the fake renders or filters itself.

The guest is booted once per arch for this module and is disposable, but the test still cleans up after itself
(group ``ktrace_kdiff_<pid>``, instances ``ktrace_kdiff_<pid>`` and ``..._all``) and never truncates
``kprobe_events``.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional, Union

import pytest

from pytest_ktrace._errors import MissingTool
from pytest_ktrace.backends._base import Backend, Mkdir, Op, OpResult, Read, Rmdir, Write
from pytest_ktrace.fake._backend import FakeBackend
from pytest_ktrace.guests import RunningGuest, boot, qemu_available
from pytest_ktrace.snapshots._snapshot import load_snapshot

pytestmark = pytest.mark.guest

GROUP = f"ktrace_kdiff_{os.getpid()}"
INSTANCE = f"instances/{GROUP}"
ALL = f"instances/{GROUP}_all"  # unfiltered: what the guest recorded, fed into the fake
AUTO_EVENT = "kprobes/p___setup_irq_0"  # what `p __setup_irq` is named
TRIGGER = "/usr/bin/ktrace-trigger-setup-irq"
# offsetof(struct irqaction, name) on 64-bit 6.1: handler, dev_id, percpu_dev_id, next, thread_fn, thread,
# secondary (7 pointers), irq, flags (2 x 4 bytes), thread_flags, thread_mask (2 longs).
IRQACTION_NAME = 80


@dataclass(frozen=True)
class Arch:
    """What the script needs to know of an arch: the first three argument registers and the arch's quirks."""

    name: str
    regs: tuple[str, str, str]
    caller: str  # a fetcharg holding __setup_irq's return address (the kretprobe trampoline, as it is)
    bad_reg: str
    mid_instruction: str  # errno of __setup_irq+1 and +4
    mid_instruction_message: str  # and its error_log message
    blacklisted: str


ARCHS = {
    "x86_64": Arch(
        "x86_64",
        ("%di", "%si", "%dx"),
        "$stack0",
        "%r16",
        "EILSEQ",
        "Probe point is not an instruction boundary",
        "kprobe_dispatcher",
    ),
    "arm64": Arch(
        "arm64", ("%x0", "%x1", "%x2"), "%x30", "%x31", "EINVAL", "Failed to register probe event", "kprobe_dispatcher"
    ),
}


# --------------------------------------------------------------------------------------------------------------
# Steps and outcomes
# --------------------------------------------------------------------------------------------------------------

Outcome = tuple[str, str]  # ("ok", normalised text read or "") / ("err", "EINVAL")


@dataclass(frozen=True)
class Step:
    """One tracefs operation, or the trigger (``op`` None); ``normalise`` maps a read's text to what must match."""

    op: Optional[Op]
    normalise: Callable[[str], str] = lambda text: text
    expect: Optional[str] = None  # the errno the script means to provoke ("" for success), checked on the guest
    message: Optional[str] = None  # the error_log message the guest must have logged for this write

    @property
    def is_trigger(self) -> bool:
        return self.op is None


def outcome(step: Step, result: OpResult) -> Outcome:
    if not result.ok:
        return "err", result.errno_name
    return "ok", step.normalise(result.data) if isinstance(step.op, Read) else ""


def difference(real: Outcome, fake: Outcome) -> str:
    if real[0] == fake[0] == "ok":  # two texts: what changes, line by line
        lines = difflib.unified_diff(real[1].splitlines(), fake[1].splitlines(), "real", "fake", lineterm="")
        return "\n".join(f"  {line}" for line in lines)
    return f"  real: {real!r}\n  fake: {fake!r}"


def describe(step: Step) -> str:
    op = step.op
    if isinstance(op, Write):
        return f"write {op.path} {op.data!r}"
    if isinstance(op, Read):
        return f"read {op.path}"
    if isinstance(op, Mkdir):
        return f"mkdir {op.path}"
    if isinstance(op, Rmdir):
        return f"rmdir {op.path}"
    return "trigger"


# --------------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------------

_ERROR_LOG_TIME = re.compile(r"^\[\s*\d+\.\d{6}\] ", re.M)
_EVENT_ID = re.compile(r"^ID: \d+$", re.M)
_CONTEXT = re.compile(r"^(?P<comm>.{16})-(?P<pid>\d+)\s*(?P<cpu>\[\d{3}\]) (?P<flags>\S{5}) +\d+\.\d{6}: ", re.M)
_SYMBOL_SIZE = re.compile(r"\b([\w.]+\+0x[0-9a-f]+)/0x[0-9a-f]+")
_RETURN_OFFSET = re.compile(r": \(([\w.]+)\+0x[0-9a-f]+/SIZE <- ")


def ours(text: str) -> str:
    """The lines of a listing that name this test's group or its auto-named probe."""
    return "".join(line + "\n" for line in text.splitlines() if GROUP in line or AUTO_EVENT in line)


def our_error_log_entries(text: str) -> str:
    entries = re.split(r"(?m)^(?=\[\s*\d+\.\d{6}\] )", text)
    return _ERROR_LOG_TIME.sub("[TS] ", "".join(entry for entry in entries if GROUP in entry))


def normalise_error_log(text: str) -> str:
    return _ERROR_LOG_TIME.sub("[TS] ", text)


def without_event_id(text: str) -> str:
    return _EVENT_ID.sub("ID: N", text)


def normalise_trace(text: str) -> str:
    text = _CONTEXT.sub(lambda m: f"{m.group('comm')}-PID {m.group('cpu')} FLAGS TS: ", text)
    text = _SYMBOL_SIZE.sub(r"\1/SIZE", text)
    # The fake kallsyms gives every symbol 0x100 bytes: a return address further into its function than that
    # (request_threaded_irq+0x109 on x86_64) cannot be represented, so the kretprobe's return offset goes too.
    return _RETURN_OFFSET.sub(r": (\1+OFFSET/SIZE <- ", text)


# --------------------------------------------------------------------------------------------------------------
# The script
# --------------------------------------------------------------------------------------------------------------


def script(arch: Arch) -> list[Step]:
    r0, r1, r2 = arch.regs
    entry = (
        f"p:{GROUP}/entry __setup_irq irq={r0}:u32 desc={r1} act={r2}:x64 a1=$arg1:s32 a3=$arg3 "
        f"name=+0(+{IRQACTION_NAME}({r2})):string cm=$comm st=$stack0 caller={arch.caller}:symbol "
        f"bf={r0}:b4@0/32"
    )
    exit_ = f"r10:{GROUP}/exit __setup_irq rv=$retval:s32 rx=$retval:x64"
    events = f"{INSTANCE}/events/{GROUP}"
    everything = f"{ALL}/events/{GROUP}"

    def write(path: str, data: str, expect: str = "") -> Step:
        return Step(Write(path, data), expect=expect)

    def read(path: str, normalise: Callable[[str], str] = lambda text: text) -> Step:
        return Step(Read(path), normalise)

    def probe(line: str, expect: str = "", message: Optional[str] = None) -> Step:
        return Step(Write("kprobe_events", line), expect=expect, message=message)

    return [
        Step(Mkdir(INSTANCE), expect=""),
        Step(Mkdir(ALL), expect=""),
        probe(entry),
        probe(exit_),
        probe("p __setup_irq"),  # auto-named: kprobes/p___setup_irq_0
        # refused by the grammar
        probe(f"p:{GROUP}/no_symbol ktrace_kdiff_no_such_symbol", "ENOENT", "Invalid probed address or symbol"),
        probe(f"p:{GROUP}/retval_on_entry __setup_irq rv=$retval", "EINVAL", "$retval is not available on probe"),
        probe(f"p:{GROUP}/bad_reg __setup_irq x={arch.bad_reg}", "EINVAL", "Invalid register name"),
        probe(f"p:{GROUP}/bad_type __setup_irq x={r0}:u128", "EINVAL", "Unknown type is specified"),
        probe(f"p10:{GROUP}/maxactive_on_entry __setup_irq", "EINVAL", "Maxactive is not for kprobe"),
        read("error_log", our_error_log_entries),  # error_log keeps only the last 8 entries: read it often
        # refused at registration
        probe(f"p:{GROUP}/blacklisted {arch.blacklisted}", "EINVAL", "Failed to register probe event"),
        probe(f"p:{GROUP}/mid_insn __setup_irq+1", arch.mid_instruction, arch.mid_instruction_message),
        # inside the 5-byte __fentry__ nop (x86_64) / the bl ftrace_caller site (arm64)
        probe(f"p:{GROUP}/ftrace_site __setup_irq+4", arch.mid_instruction, arch.mid_instruction_message),
        probe(f"r:{GROUP}/retprobe_mid __setup_irq+8", "EINVAL", "Retprobe address must be an function entry"),
        read("error_log", our_error_log_entries),
        # refused by the state
        probe(entry, "EEXIST", "There is already the exact same probe event"),
        probe(f"p:{GROUP}/exit __setup_irq", "EEXIST", "Probe type is different from existing probe"),
        probe(f"-:{GROUP}/never_defined", "ENOENT"),
        read("kprobe_events", ours),
        read("dynamic_events", ours),
        read("available_events", ours),
        read("error_log", our_error_log_entries),
        read(f"events/{GROUP}/entry/format", without_event_id),
        read(f"events/{GROUP}/exit/format", without_event_id),
        read(f"events/{AUTO_EVENT}/format", without_event_id),
        read(f"events/{AUTO_EVENT}/enable"),
        probe(f"-:{AUTO_EVENT}"),
        probe(f"-:{AUTO_EVENT}", "ENOENT"),
        read("kprobe_events", ours),
        read(f"{events}/entry/enable"),
        read(f"{events}/entry/filter"),
        read(f"{events}/entry/trigger"),
        read(f"{events}/enable"),
        read(f"{events}/filter"),
        # filters: a bad one first (EINVAL, error text in the filter file), then good ones
        write(f"{events}/entry/filter", "irq == ", "EINVAL"),
        read(f"{events}/entry/filter"),
        read(f"{INSTANCE}/error_log", normalise_error_log),
        write(f"{events}/entry/filter", 'irq != 1 && cm ~ "ktrace*"'),
        read(f"{events}/entry/filter"),
        write(f"{events}/exit/filter", "rv < 0"),  # only failures: drops every exit record
        read(f"{events}/exit/filter"),
        # enables
        write(f"{events}/entry/enable", "2", "EINVAL"),
        write(f"{events}/entry/enable", "1"),
        read(f"{events}/enable"),  # X: mixed
        write(f"{events}/exit/enable", "1"),
        read(f"{events}/enable"),
        read(f"{INSTANCE}/set_event", ours),
        write(f"{everything}/enable", "1"),
        # an enabled kprobe event cannot be removed
        probe(f"-:{GROUP}/entry", "EBUSY"),
        probe(f"-:{GROUP}/", "EBUSY"),
        Step(None),  # the trigger: the device rebind calls __setup_irq
        read(f"{ALL}/trace", normalise_trace),
        read(f"{INSTANCE}/trace", normalise_trace),
        # disable, then remove
        write(f"{events}/enable", "0"),
        write(f"{everything}/enable", "0"),
        read(f"{events}/entry/enable"),
        read(f"{events}/enable"),
        probe(f"-:{GROUP}/entry"),
        probe(f"-:{GROUP}/entry", "ENOENT"),
        read(f"{INSTANCE}/trace", normalise_trace),  # cleared by the removal of an event it had enabled
        probe(f"-:{GROUP}/exit __setup_irq rv=$retval:s32 rx=$retval:u64", "ENOENT"),  # the args must match
        probe(f"-:{GROUP}/exit __setup_irq rv=$retval:s32"),
        read("kprobe_events", ours),
        read(f"{events}/enable"),  # ENOENT: the group is gone
        Step(Rmdir(ALL), expect=""),
        Step(Rmdir(INSTANCE), expect=""),
        Step(Rmdir(INSTANCE), expect="ENOENT"),
    ]


# --------------------------------------------------------------------------------------------------------------
# The trigger: the guest's records, parsed and fed into the fake
# --------------------------------------------------------------------------------------------------------------

_LINE = re.compile(
    r"^(?P<comm>.{16})-(?P<pid>\d+)\s+\[(?P<cpu>\d{3})\] \S{5} +\d+\.\d{6}: (?P<event>\w+): \((?P<head>[^)]*)\)"
    r"(?P<args>.*)$"
)
_ARG = re.compile(r' (\w+)=("[^"]*"|\S+)')
_SYMBOL_OFFSET = re.compile(r"^([\w.]+)\+(0x[0-9a-f]+)/0x[0-9a-f]+$")

FieldValue = Union[int, str]


@dataclass(frozen=True)
class Recorded:
    event: str
    pid: int
    comm: str
    cpu: int
    fields: dict[str, FieldValue]


def parse_records(trace: str, symbol_address: Callable[[str], int]) -> list[Recorded]:
    """The probe records of a guest's ``trace``, with symbols turned into the fake kallsyms' addresses."""

    def value(text: str) -> FieldValue:
        if text.startswith('"'):
            return text[1:-1]
        symbol = _SYMBOL_OFFSET.match(text)
        if symbol:
            return symbol_address(symbol.group(1)) + int(symbol.group(2), 16)
        return int(text, 0)

    records = []
    for line in trace.splitlines():
        match = _LINE.match(line)
        if match is None:
            assert line.startswith("#"), f"unparsed trace line {line!r}"
            continue
        fields = {name: value(text) for name, text in _ARG.findall(match.group("args"))}
        if " <- " in match.group("head"):
            # The kretprobe's return address: its function, for the fake kallsyms (the offset is normalised).
            fields["__probe_ret_ip"] = match.group("head").split(" <- ")[0].split("+")[0]
        records.append(
            Recorded(
                f"{GROUP}/{match.group('event')}",
                int(match.group("pid")),
                match.group("comm").strip(),
                int(match.group("cpu")),
                fields,
            )
        )
    return records


# --------------------------------------------------------------------------------------------------------------
# Fixtures and the test
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(ARCHS))
def guest(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGuest]:
    arch: str = request.param
    unavailable = qemu_available(arch)
    if unavailable is not None:
        pytest.skip(unavailable)
    try:
        running = boot(arch, workdir=tmp_path_factory.mktemp(f"kdiff-vm-{arch}"))
    except MissingTool as missing:
        pytest.skip(f"cannot build/boot the {arch} guest: {missing}")
        raise  # not reached
    try:
        yield running
    finally:
        running.shutdown()


def _cleanup(backend: Backend) -> None:
    """Best effort: disable and remove everything this test may have left, on either side."""
    backend.apply(
        [
            Write(f"{INSTANCE}/events/{GROUP}/enable", "0"),
            Write(f"{ALL}/events/{GROUP}/enable", "0"),
            Write("kprobe_events", f"-:{GROUP}/"),
            Write("kprobe_events", f"-:{AUTO_EVENT}"),
            Rmdir(ALL),
            Rmdir(INSTANCE),
        ]
    )


@pytest.fixture
def real(guest: RunningGuest) -> Iterator[Backend]:
    from pytest_ktrace.backends.ssh._backend import SshBackend

    with SshBackend(guest.host_alias, ssh_config=guest.ssh_config_path) as backend:
        _cleanup(backend)
        try:
            yield backend
        finally:
            with contextlib.suppress(Exception):
                _cleanup(backend)


def _run(backend: Backend, steps: list[Step]) -> list[Outcome]:
    ops = [step.op for step in steps if step.op is not None]
    return [outcome(step, result) for step, result in zip(steps, backend.apply(ops))]


def test_fake_kprobes_match_the_guest_kernel(guest: RunningGuest, real: Backend) -> None:
    arch = ARCHS[guest.arch]
    fake = FakeBackend(load_snapshot(f"debian-6.1-{arch.name}"), cpus=1)  # the guests boot with -smp 1
    steps = script(arch)
    trigger = next(index for index, step in enumerate(steps) if step.is_trigger)
    before, after = steps[:trigger], steps[trigger + 1 :]
    try:
        real_outcomes = _run(real, before)
        fake_outcomes = _run(fake, before)
        run = real.run([TRIGGER], timeout=60, after=[Read(f"{ALL}/trace")])
        assert run.returncode == 0, f"{TRIGGER} failed: {run.stderr}"
        assert run.after[0].ok, run.after[0].error
        records = parse_records(run.after[0].data, fake.tracefs.symbol_address)
        assert records, f"the trigger recorded nothing:\n{run.after[0].data}"
        for record in records:
            fake.inject(record.event, record.fields, pid=record.pid, comm=record.comm, cpu=record.cpu)
        real_outcomes += [("ok", ""), *_run(real, after)]
        fake_outcomes += [("ok", ""), *_run(fake, after)]
    finally:
        _cleanup(fake)

    problems = _problems(steps, real_outcomes, fake_outcomes)
    assert not problems, "\n".join(problems)


def _problems(steps: list[Step], real_outcomes: list[Outcome], fake_outcomes: list[Outcome]) -> list[str]:
    """Where the guest did not do what the script means to provoke, and where the fake differs from it."""
    problems: list[str] = []
    for number, (step, real_outcome, fake_outcome) in enumerate(zip(steps, real_outcomes, fake_outcomes)):
        if step.expect is not None and real_outcome != (("ok", "") if not step.expect else ("err", step.expect)):
            problems.append(
                f"step {number} {describe(step)}: the guest gave {real_outcome!r}, the script expects "
                f"{step.expect or 'success'}"
            )
        if real_outcome != fake_outcome:
            problems.append(f"step {number} {describe(step)}:\n{difference(real_outcome, fake_outcome)}")
    # The script provoked what it means to: each refusal's message is in one of the guest's error_log reads.
    logged = "".join(text for step, (_, text) in zip(steps, real_outcomes) if step.op == Read("error_log"))
    for step in steps:
        if step.message is not None and isinstance(step.op, Write):
            entry = f"trace_kprobe: error: {step.message}\n  Command: {step.op.data}\n"
            if entry not in logged:
                problems.append(f"the guest's error_log has no entry {entry!r}")
    return problems


# --------------------------------------------------------------------------------------------------------------
# Modules: the example driver ktbar loaded and unloaded in the guest, and in the fake from what the guest showed
# --------------------------------------------------------------------------------------------------------------

MODULE_EVENT = "events/ktbar/ktbar_request"
NO_SYMBOL = "Invalid probed address or symbol"
NO_VAR = "Invalid $-variable specified"
MGROUP = f"ktrace_mdiff_{os.getpid()}"  # a group of its own: the guest's error_log still holds the other test's


def _module_probes(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if MGROUP in line)


def _module_error_log_entries(text: str) -> str:
    entries = re.split(r"(?m)^(?=\[\s*\d+\.\d{6}\] )", text)
    return _ERROR_LOG_TIME.sub("[TS] ", "".join(entry for entry in entries if MGROUP in entry))


def _module_steps_before() -> list[Step]:
    return [
        Step(Write("kprobe_events", f"p:{MGROUP}/mod_pending ktbar:ktbar_request"), expect=""),
        Step(Write("kprobe_events", f"r:{MGROUP}/mod_return ktbar:ktbar_request ret=$retval"), expect=""),
        Step(Write("kprobe_events", f"r:{MGROUP}/kernel_return __setup_irq"), expect=""),  # listed as r10: at once
        Step(Write("kprobe_events", f"p:{MGROUP}/mod_plain ktbar_request"), expect="ENOENT", message=NO_SYMBOL),
        # not known to be at a function entry before its module is there
        Step(Write("kprobe_events", f"p:{MGROUP}/mod_args ktbar:ktbar_request $arg1"), expect="EINVAL", message=NO_VAR),
        Step(Read("error_log"), _module_error_log_entries),
        Step(Read("kprobe_events"), _module_probes),
    ]


def _module_steps_loaded() -> list[Step]:
    return [
        Step(Write("kprobe_events", f"p:{MGROUP}/mod_plain ktbar_request"), expect=""),
        Step(Write("kprobe_events", f"p:{MGROUP}/mod_args ktbar:ktbar_request $arg1"), expect=""),
        Step(Write("kprobe_events", f"p:{MGROUP}/mod_missing ktbar:ktbar_none"), expect="ENOENT", message=NO_SYMBOL),
        Step(Write("kprobe_events", f"p:{MGROUP}/mod_kernel ktbar:vfs_read"), expect="ENOENT", message=NO_SYMBOL),
        Step(Read("error_log"), _module_error_log_entries),
        Step(Read("kprobe_events"), _module_probes),
        Step(Read(f"{MODULE_EVENT}/format"), without_event_id),
        Step(Mkdir(INSTANCE), expect=""),
        Step(Write(f"{INSTANCE}/{MODULE_EVENT}/enable", "1"), expect=""),
    ]


def _module_steps_gone() -> list[Step]:
    def module_events(text: str) -> str:
        return "".join(line + "\n" for line in text.splitlines() if line.startswith("ktbar:"))

    return [
        Step(Read("available_events"), module_events),
        Step(Write("kprobe_events", f"p:{MGROUP}/mod_after ktbar_request"), expect="ENOENT", message=NO_SYMBOL),
        Step(Read("error_log"), _module_error_log_entries),
        Step(Read("kprobe_events"), _module_probes),
    ]


def _module_events(trace: str, fmt: str) -> list[tuple[str, int, str, dict[str, FieldValue]]]:
    """The module's events in a ``trace`` text, as the plugin parses them (the fake does not evaluate print fmts)."""
    from pytest_ktrace._formats import FormatCatalog, parse_format
    from pytest_ktrace._parse import TraceParser

    catalog = FormatCatalog()
    catalog.add(parse_format(fmt, "ktbar"))
    return [(e.name, e.pid, e.comm, dict(e.fields)) for e in TraceParser(catalog).parse(trace).events if e.system]


@pytest.fixture(scope="module")
def ktbar_ko() -> dict[str, str]:
    """The example driver built for each guest's kernel: arch -> path."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "build-example-driver"
    out = subprocess.run([str(script)], capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return dict(re.findall(r"^ktbar\.ko for (\S+) \(.*?\).*?: (\S+)$", out.stdout, re.M))


def _unload(real: Backend, fake: FakeBackend) -> tuple[Outcome, Outcome]:
    """rmmod in the guest and the fake module table's unload: refused or done, on each side."""
    from pytest_ktrace.fake._tracefs import FakeOSError

    done = real.run(["rmmod", "ktbar"], timeout=60)
    try:
        fake.tracefs.modules.unload("ktbar")
        fake_outcome: Outcome = ("ok", "")
    except FakeOSError as exc:
        fake_outcome = ("err", exc.errno_name)
    return ("ok", "") if done.returncode == 0 else ("err", done.stderr.strip()), fake_outcome


def test_fake_modules_match_the_guest_kernel(guest: RunningGuest, real: Backend, ktbar_ko: dict[str, str]) -> None:
    """A module's functions and events come and go with it, on the kernel and on the fake given what the
    recording reads of the module (its kallsyms lines and new events, :mod:`~pytest_ktrace.recording._module_changes`):
    a probe on ``MOD:FUNC`` waits for it, a plain name needs it loaded, its events go with it even while enabled,
    and the buffers that recorded them are cleared."""
    from pathlib import Path

    from pytest_ktrace.backends._base import FilePushing
    from pytest_ktrace.recording._module_changes import read_arrivals

    assert isinstance(real, FilePushing)
    fake = FakeBackend(load_snapshot(f"debian-6.1-{guest.arch}"), cpus=1)
    remote = f"/tmp/{MGROUP}-ktbar.ko"
    real.push_file(Path(ktbar_ko[guest.arch]).read_bytes(), remote, 0o644)
    phases = [_module_steps_before(), _module_steps_loaded(), _module_steps_gone()]
    real_outcomes: list[Outcome] = []
    fake_outcomes: list[Outcome] = []
    try:
        real_outcomes += _run(real, phases[0])
        fake_outcomes += _run(fake, phases[0])
        events_before = frozenset(real.apply([Read("available_events")])[0].data.splitlines())
        loaded = real.run(["insmod", remote], timeout=120)
        assert loaded.returncode == 0, loaded.stderr
        [arrival] = read_arrivals(real, ["ktbar"], events_before)
        assert "ktbar_request" in arrival.functions and list(arrival.events) == ["ktbar/ktbar_request"]
        fake.tracefs.modules.load("ktbar", arrival.functions, arrival.events)
        real_outcomes += _run(real, phases[1])
        fake_outcomes += _run(fake, phases[1])
        # the module's event fires in the guest; the fake gets the same records
        fired = real.run(
            ["sh", "-c", "echo 1 > /sys/module/ktbar/parameters/rerequest"],
            timeout=60,
            after=[Read(f"{INSTANCE}/trace")],
        )
        assert fired.returncode == 0 and fired.after[0].ok, fired.stderr
        fmt = arrival.events["ktbar/ktbar_request"]
        records = _module_events(fired.after[0].data, fmt)
        assert records and records[0][3]["ret"] == 0, fired.after[0].data
        for name, pid, comm, fields in records:
            fake.inject(
                f"ktbar/{name}", {k: v for k, v in fields.items() if isinstance(v, (int, str))}, pid=pid, comm=comm
            )
        fake_trace = fake.apply([Read(f"{INSTANCE}/trace")])[0].data
        assert _module_events(fake_trace, fmt) == records
        # the event is still enabled: the kernel unloads the module anyway, and clears the buffer that held it
        gone = _unload(real, fake)
        assert gone == (("ok", ""), ("ok", "")), gone
        traces = [backend.apply([Read(f"{INSTANCE}/trace")])[0].data for backend in (real, fake)]
        assert [_module_events(trace, fmt) for trace in traces] == [[], []], traces
        real_outcomes += _run(real, phases[2])
        fake_outcomes += _run(fake, phases[2])
    finally:
        for backend in (real, fake):
            backend.apply([Write("kprobe_events", f"-:{MGROUP}/"), Rmdir(INSTANCE)])
        real.run(["sh", "-c", f"rmmod ktbar 2>/dev/null; rm -f {remote}"], timeout=60)
    steps = [step for phase in phases for step in phase]
    problems = _problems(steps, real_outcomes, fake_outcomes)
    assert not problems, "\n".join(problems)
