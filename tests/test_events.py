"""The public behaviour of :class:`Event`, whichever way it was built (its constructor, or the parser's
column-wise builder)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Callable

import pytest

from pytest_ktrace import Event
from pytest_ktrace._events import (
    _events_from_headers,
    _fields_builder,
    _make_event,
    _set_fields,
    _set_raw,
    _source_index,
)


def _made() -> Event:
    return Event("fp", "fent", {"irq": 200, "name": "eth0"}, 42, "prog", 1, 123.5, raw="raw line")


class _Columns:
    """A FieldsSource: the fields and raw lines of its events from columns, counting how often it is asked."""

    def __init__(self, names: tuple[str, ...], columns: list[list[object]], raws: list[str]) -> None:
        self.names, self.columns, self.raws, self.asked, self.asked_raw = names, columns, raws, 0, 0
        self.events: list[Event] = []

    def fill(self, event: Event) -> None:
        self.asked += 1
        if self.columns:
            for e, values in zip(self.events, _fields_builder(self.names)(len(self.events), self.columns)):
                _set_fields(e, values)
            self.columns = []
        assert self.events[_source_index(event)] is event

    def fill_raw(self, event: Event) -> None:
        self.asked_raw += 1
        _set_raw(event, self.raws[_source_index(event)])


def _built_with(source: _Columns) -> list[Event]:
    count = len(source.raws)
    source.events = _events_from_headers("fp", "fent", [("prog", 42, 1)] * count, [123.5] * count, source)
    return source.events


def _built() -> Event:
    return _built_with(_Columns(("irq", "name"), [[200], ["eth0"]], ["other raw"]))[0]


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


def test_fields_and_raw_left_to_a_source_are_filled_once_for_all_its_events() -> None:
    source = _Columns(("irq", "name"), [[200, 300], ["eth0", "eth1"]], ["line 0", "line 1"])
    first, second = _built_with(source)
    assert source.asked == 0 and (first.pid, second.timestamp) == (42, 123.5)  # the header needs no fields
    assert second["irq"] == 300 and source.asked == 1
    assert first.fields == {"irq": 200, "name": "eth0"} and second.get("name") == "eth1" and source.asked == 1
    assert (first.raw, second.raw) == ("line 0", "line 1") and source.asked == 1 and source.asked_raw == 2
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        first.nope  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(first, "_missing") and source.asked == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.fields = {}  # type: ignore[misc]


@pytest.mark.parametrize(
    "use",
    [
        lambda e: e == _made(),
        repr,
        pickle.dumps,
        copy.deepcopy,
        dataclasses.asdict,
        lambda e: e.named(),
        lambda e: e.value("irq"),
    ],
)
def test_every_way_of_reading_an_event_fills_its_fields(use: Callable[[Event], object]) -> None:
    source = _Columns(("irq", "name"), [[200], ["eth0"]], ["the line"])
    (event,) = _built_with(source)
    use(event)
    assert source.asked == 1 and event.fields == {"irq": 200, "name": "eth0"} and event.raw == "the line"


def test_reading_the_raw_line_decodes_no_field() -> None:
    source = _Columns(("irq", "name"), [[200], ["eth0"]], ["the line"])
    (event,) = _built_with(source)
    assert event.raw == "the line" and (source.asked, source.asked_raw) == (0, 1)
    assert event.raw == "the line" and source.asked_raw == 1  # kept


def test_fields_builder_of_no_field_names_builds_empty_dicts() -> None:
    assert _fields_builder(())(3, []) == [{}, {}, {}]
