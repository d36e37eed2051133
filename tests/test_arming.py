"""The arming plan: pending probe definitions to one batch of tracefs operations (pure, no target)."""

from __future__ import annotations

from pytest_ktrace._arming import InstanceState, plan_arm
from pytest_ktrace._probes import ProbeSpec
from pytest_ktrace.backends._base import Mkdir, Read, Write

INSTANCE = "instances/ktrace_abcdef_1_beef_1"
ENTRY = ProbeSpec("kprobe", "g", "p_setup_1", "__setup_irq", (("irq", "$arg1:u32"),), filter="irq > 1")
RETURN = ProbeSpec("kretprobe", "g", "r_setup_2", "__setup_irq", (("ret", "$retval:s32"),))
SWITCH = ProbeSpec("tracepoint", "sched", "sched_switch", "", display="sched:sched_switch")
UPROBE = ProbeSpec("uprobe", "g", "u_fib_3", "/bin/prog:0x1139", ())


NEW = InstanceState()  # an instance not created yet


def _plan(*specs: ProbeSpec, state: InstanceState = NEW, **options: object) -> list[tuple[str, ...]]:
    plan = plan_arm(
        list(specs),
        instance=INSTANCE,
        state=state,
        features=options.pop("features", {"fields", "kprobes"}),  # type: ignore[arg-type]
        stacks=options.pop("stacks", set()),  # type: ignore[arg-type]
        known_formats=options.pop("known", set()),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    return [_shown(op) for op in plan.ops]


def _shown(op: object) -> tuple[str, ...]:
    if isinstance(op, Write):
        return ("write", op.path, op.data)
    assert isinstance(op, (Mkdir, Read))
    return (type(op).__name__.lower(), op.path)


def test_the_first_batch_creates_the_instance_then_defines_then_enables() -> None:
    assert _plan(ENTRY, RETURN, SWITCH, buffer_kb=64) == [
        ("mkdir", INSTANCE),
        ("write", f"{INSTANCE}/options/fields", "1"),
        ("write", f"{INSTANCE}/buffer_size_kb", "64"),
        ("write", "kprobe_events", ENTRY.render()),
        ("write", "kprobe_events", RETURN.render()),
        ("write", f"{INSTANCE}/events/g/p_setup_1/filter", "irq > 1"),
        ("write", f"{INSTANCE}/events/g/p_setup_1/enable", "1"),
        ("write", f"{INSTANCE}/events/g/r_setup_2/enable", "1"),
        ("write", f"{INSTANCE}/events/sched/sched_switch/enable", "1"),
        ("read", "events/g/p_setup_1/format"),
        ("read", "events/g/r_setup_2/format"),
        ("read", "events/sched/sched_switch/format"),
    ]


def test_teardown_is_planned_with_the_batch() -> None:
    plan = plan_arm(
        [ENTRY, SWITCH],
        instance=INSTANCE,
        state=InstanceState(),
        features=set(),
        stacks={("g", "p_setup_1")},
        known_formats=set(),
    )
    assert plan.removals == [Write("kprobe_events", "-:g/p_setup_1")]
    assert [(op.path, op.data) for op in plan.disables if isinstance(op, Write)] == [
        (f"{INSTANCE}/events/g/p_setup_1/enable", "0"),
        (f"{INSTANCE}/events/g/p_setup_1/trigger", "!stacktrace"),
        (f"{INSTANCE}/events/sched/sched_switch/enable", "0"),
    ]
    assert plan.state == InstanceState(planned=True, fields_on=False, user_stacks_on=False)


def test_a_later_batch_only_adds_probes_and_reads_only_unknown_formats() -> None:
    state = InstanceState(planned=True, fields_on=True)
    assert _plan(SWITCH, state=state, known={"sched:sched_switch"}) == [
        ("write", f"{INSTANCE}/events/sched/sched_switch/enable", "1"),
    ]


def test_run_scope_keeps_tracing_off_until_a_command_runs() -> None:
    ops = _plan(SWITCH, scope="run", features=set())
    assert ops[:3] == [
        ("mkdir", INSTANCE),
        ("write", f"{INSTANCE}/tracing_on", "0"),
        ("write", f"{INSTANCE}/options/event-fork", "1"),
    ]


def test_stacks_turn_fields_off_and_user_stacks_on_once() -> None:
    state = InstanceState(planned=True, fields_on=True)
    stacks = {("g", "u_fib_3"), ("g", "p_setup_1")}
    ops = _plan(UPROBE, ENTRY, state=state, stacks=stacks)
    assert ops[0] == ("write", f"{INSTANCE}/options/fields", "0")  # the kernel prints stacks as UNKNOWN TYPE 4
    assert ops.count(("write", f"{INSTANCE}/options/userstacktrace", "1")) == 1
    assert ("write", f"{INSTANCE}/events/g/p_setup_1/trigger", "stacktrace if irq > 1") in ops
    again = plan_arm(
        [UPROBE],
        instance=INSTANCE,
        state=InstanceState(planned=True, user_stacks_on=True),
        features=set(),
        stacks=stacks,
        known_formats=set(),
    )
    assert Write(f"{INSTANCE}/options/userstacktrace", "1", append=False) not in again.ops
