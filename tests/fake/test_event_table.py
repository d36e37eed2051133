"""The fake's event table hands out event type IDs as the kernel's IDA does: the lowest free one from the lowest
in use. It keeps that ID instead of searching every event for it; checked here against the search itself."""

from __future__ import annotations

import random

import pytest

from pytest_ktrace.fake._events import EventDefinition, EventTable
from pytest_ktrace.snapshots._snapshot import KernelSnapshot


def snapshot_with_ids(ids: list[int]) -> KernelSnapshot:
    return KernelSnapshot(
        name="unit",
        release="6.1.0",
        arch="x86_64",
        features=frozenset(),
        readme="",
        symbols=frozenset(),
        duplicate_symbols=frozenset(),
        blacklist=frozenset(),
        events={f"sys/ev{index}": f"name: ev{index}\nID: {event_id}\nformat:\n" for index, event_id in enumerate(ids)},
    )


def searched(table: EventTable) -> int:
    """The rule, by brute force over every event."""
    used = {definition.event_id for definition in table.events.values()}
    candidate = min(used | {21}) if used else 21
    while candidate in used:
        candidate += 1
    return candidate


@pytest.mark.parametrize("seed", range(20))
def test_next_event_id_is_the_lowest_free_one_through_adds_and_removals(seed: int) -> None:
    rng = random.Random(seed)
    # snapshot IDs with gaps and a duplicate (an unreadable ID line reads as 0), sometimes below 21
    ids = rng.sample(range(1, 60), rng.randint(0, 30)) + rng.choice([[], [0, 0], [7, 7]])
    table = EventTable(snapshot_with_ids(ids))
    added: list[EventDefinition] = []
    for step in range(300):
        assert table.next_event_id() == searched(table), step
        roll = rng.random()
        if roll < 0.5 or not table.events:
            event_id = table.next_event_id() if rng.random() < 0.8 else rng.randint(0, 80)
            definition = EventDefinition("grp", f"e{step}", event_id, table.next_serial())
            table.add(definition)
            added.append(definition)
        else:
            pool = added if added and rng.random() < 0.7 else list(table.events.values())
            victim = pool.pop(rng.randrange(len(pool))) if pool is added else rng.choice(pool)
            if victim.key in table.events:
                table.remove(victim)
            if victim in added:
                added.remove(victim)
    assert table.next_event_id() == searched(table)
