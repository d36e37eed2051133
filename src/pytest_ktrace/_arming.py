"""Arming: the probes a test defined but has not armed yet, turned into one batch of tracefs operations.

Pure: :func:`plan_arm` looks at the probe definitions and at what the test's instance already has, and returns
the batch to apply, what teardown must undo (each recorded *before* the batch runs, so a batch that dies half
way is still undone) and what the instance will have afterwards. Nothing here talks to a target.

The order inside the batch is the kernel's: the instance first (with its options), every definition, then per
event its filter, stack trigger and enable, and last the ``format`` files the session does not know yet.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Sequence
from dataclasses import dataclass, field, replace

from ._probes import ProbeSpec
from .backends._base import Mkdir, Op, Read, Write

__all__ = ["ArmPlan", "InstanceState", "disable_op", "plan_arm"]


@dataclass(frozen=True)
class InstanceState:
    """What the test's instance has: created (planned), ``options/fields`` on, ``options/userstacktrace`` on."""

    planned: bool = False
    fields_on: bool = False
    user_stacks_on: bool = False


@dataclass
class ArmPlan:
    ops: list[Op] = field(default_factory=list)  # the batch, in order
    removals: list[Op] = field(default_factory=list)  # teardown: the dynamic events to remove
    disables: list[Op] = field(default_factory=list)  # teardown: enables and triggers to turn off first
    state: InstanceState = field(default_factory=InstanceState)  # the instance once the batch ran


def plan_arm(
    pending: Sequence[ProbeSpec],
    *,
    instance: str,
    state: InstanceState,
    features: Collection[str],
    stacks: Collection[tuple[str, str]],
    known_formats: Container[str],
    buffer_kb: int | None = None,
    scope: str = "all",
) -> ArmPlan:
    """The batch that arms ``pending`` in ``instance`` (a tracefs-relative path, ``instances/NAME``).

    ``stacks`` holds the (group, event) of the probes that want call stacks; ``known_formats`` the probes
    (``display`` names) whose ``format`` the session already read; ``scope="run"`` leaves tracing off until a
    command's pid is in ``set_event_pid``."""
    plan = ArmPlan(state=state)
    if not state.planned:
        _create_instance(plan, instance, features=features, wants_stacks=bool(stacks), buffer_kb=buffer_kb, scope=scope)
    elif state.fields_on and stacks:
        # with options/fields the kernel prints stack entries as "UNKNOWN TYPE 4"
        plan.state = replace(plan.state, fields_on=False)
        plan.ops.append(Write(f"{instance}/options/fields", "0", append=False))
    for spec in pending:
        if spec.is_dynamic:
            plan.removals.append(Write(spec.control_file, spec.removal()))
            plan.ops.append(Write(spec.control_file, spec.render()))
    for spec in pending:
        _enable(plan, instance, spec, wants_stack=(spec.group, spec.event) in stacks)
    plan.ops.extend(Read(f"events/{spec.event_dir}/format") for spec in pending if spec.display not in known_formats)
    return plan


def _create_instance(
    plan: ArmPlan, instance: str, *, features: Collection[str], wants_stacks: bool, buffer_kb: int | None, scope: str
) -> None:
    plan.state = replace(plan.state, planned=True)
    plan.ops.append(Mkdir(instance))
    if "fields" in features and not wants_stacks:
        plan.state = replace(plan.state, fields_on=True)
        plan.ops.append(Write(f"{instance}/options/fields", "1", append=False))
    if buffer_kb:
        plan.ops.append(Write(f"{instance}/buffer_size_kb", str(buffer_kb), append=False))
    if scope == "run":
        # Nothing is recorded until run() has put its pid in set_event_pid and turned tracing on.
        plan.ops.append(Write(f"{instance}/tracing_on", "0", append=False))
        plan.ops.append(Write(f"{instance}/options/event-fork", "1", append=False))


def disable_op(instance: str, spec: ProbeSpec) -> Write:
    """What turns ``spec``'s event off in ``instance`` (teardown's first stage)."""
    return Write(f"{instance}/events/{spec.event_dir}/enable", "0", append=False)


def _enable(plan: ArmPlan, instance: str, spec: ProbeSpec, *, wants_stack: bool) -> None:
    events_dir = f"{instance}/events/{spec.event_dir}"
    if spec.filter:
        plan.ops.append(Write(f"{events_dir}/filter", spec.filter, append=False))
    plan.disables.append(disable_op(instance, spec))
    if wants_stack and spec.kind in ("uprobe", "uretprobe"):
        if not plan.state.user_stacks_on:
            # instance-wide: every event of this instance gets its task's user stack after it
            plan.state = replace(plan.state, user_stacks_on=True)
            plan.ops.append(Write(f"{instance}/options/userstacktrace", "1", append=False))
    elif wants_stack:
        # the trigger's own filter, so only the hits the event keeps get a stack entry
        trigger = "stacktrace" + (f" if {spec.filter}" if spec.filter else "")
        plan.ops.append(Write(f"{events_dir}/trigger", trigger))
        plan.disables.append(Write(f"{events_dir}/trigger", "!stacktrace"))
    plan.ops.append(Write(f"{events_dir}/enable", "1", append=False))
