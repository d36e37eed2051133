"""The public behaviour of :class:`Event`, whichever way it was built (its constructor, or the parser's
column-wise builder)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Callable

import pytest

from pytest_ktrace import Event
from pytest_ktrace._events import _event_builder, _make_event


def _made() -> Event:
    return Event("fp", "fent", {"irq": 200, "name": "eth0"}, 42, "prog", 1, 123.5, raw="raw line")


def _built() -> Event:
    build = _event_builder(("irq", "name"))
    return build("fp", "fent", ["other raw"], [("prog", 42, 1)], [123.5], [[200], ["eth0"]])[0]


@pytest.mark.parametrize(
    "make", [_made, _built, lambda: _make_event("fp", "fent", {"irq": 200, "name": "eth0"}, 42, "prog", 1, 123.5, "r")]
)
def test_an_event_reads_compares_and_stays_frozen(make: Callable[[], Event]) -> None:
    event = make()
    assert type(event) is Event
    assert (event.system, event.name, event.pid, event.comm, event.cpu, event.timestamp) == (
        "fp",
        "fent",
        42,
        "prog",
        1,
        123.5,
    )
    assert event.fields == {"irq": 200, "name": "eth0"} and event.stack == ()
    assert (
        event["irq"] == 200 and event.get("nope", 7) == 7 and event.value("pid") == 42 and event.full_name == "fp:fent"
    )
    assert event.named()["task_comm"] == "prog"
    # raw and stack take no part in equality (nor in repr)
    assert event == dataclasses.replace(_made(), raw="", stack=("a",)) and event != dataclasses.replace(event, pid=1)
    assert "raw" not in repr(event) and repr(event).startswith("Event(system='fp', name='fent', fields=")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.pid = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del event.comm
    with pytest.raises(TypeError):
        hash(event)  # its fields are a dict, as for the frozen dataclass it always was
    assert not hasattr(event, "__dict__")


def test_an_event_copies_pickles_and_converts_as_a_dataclass() -> None:
    event = dataclasses.replace(_built(), stack=("do_sys_open+0x0/0x10",))
    for other in (copy.copy(event), copy.deepcopy(event), pickle.loads(pickle.dumps(event))):
        assert type(other) is Event and other == event
        assert (other.raw, other.stack) == (event.raw, event.stack)
    assert dataclasses.asdict(event) == {
        "system": "fp",
        "name": "fent",
        "fields": {"irq": 200, "name": "eth0"},
        "pid": 42,
        "comm": "prog",
        "cpu": 1,
        "timestamp": 123.5,
        "raw": "other raw",
        "stack": ("do_sys_open+0x0/0x10",),
    }
    assert [f.name for f in dataclasses.fields(Event)] == [
        "system",
        "name",
        "fields",
        "pid",
        "comm",
        "cpu",
        "timestamp",
        "raw",
        "stack",
    ]
    assert Event(**{f.name: getattr(event, f.name) for f in dataclasses.fields(Event)}) == event
