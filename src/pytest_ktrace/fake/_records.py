"""What an emitted event records: the field values :meth:`FakeTracefs.emit` stores for the values it is given.

A field left out reads as 0, an empty string or a faulted fetch; a probe event's ``__probe_*`` fields and its
``$comm`` and immediate arguments get the values a kernel would have recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Union

from ._events import EventDefinition
from ._formats import EventField
from ._kernel import FakeKernel
from ._render import RecordValue

__all__ = ["FieldInput", "record_values"]

#: What :meth:`FakeTracefs.emit` accepts per field: ints, strs (``None``: a string fetch that faulted) and, for
#: probe array arguments, the elements.
FieldInput = Union[int, str, None, Sequence[Union[int, str, None]]]

_UPROBE_LOAD_BASE = 0x0000_5555_5555_4000  # a typical PIE load address, for __probe_ip defaults


def _probe_defaults(definition: EventDefinition, comm: str, kernel: FakeKernel) -> dict[str, FieldInput]:
    """The values a probe event records unless given: its probe address, ``$comm`` and immediates."""
    primary = definition.primary
    defaults: dict[str, FieldInput] = {}
    if primary is None:
        return defaults
    if primary.kind == "kprobe":
        symbols = kernel.symbol_addresses()
        entry = symbols.get(primary.symbol or "", primary.address or 0) + (primary.offset if primary.symbol else 0)
    else:
        entry = _UPROBE_LOAD_BASE + primary.offset
    if primary.is_return:
        defaults["__probe_func"] = entry
        defaults["__probe_ret_ip"] = 0
    else:
        defaults["__probe_ip"] = entry
    for arg in primary.args:
        if arg.text in ("$comm", "$COMM"):
            defaults[arg.name] = comm
        elif arg.text.startswith('\\"'):
            defaults[arg.name] = arg.text[2:].removesuffix('"')
        elif arg.text.startswith("\\"):
            with suppress(ValueError):  # only plain numbers have a value to default to
                defaults[arg.name] = int(arg.text[1:], 0)
    return defaults


def _address_value(value: FieldInput, kernel: FakeKernel) -> int:
    """A kprobe address given as a number or as ``"sym+0x10"``."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        symbol, _, offset = value.partition("+")
        return kernel.symbol_addresses().get(symbol, 0) + (int(offset, 0) if offset else 0)
    return 0


def _stored_value(event_field: EventField, value: FieldInput) -> RecordValue:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if value is None:
        return (
            None
            if event_field.is_string and event_field.fetch_type is not None
            else ("" if event_field.is_string else 0)
        )
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, str)):
        return value
    raise TypeError(f"field {event_field.name}: {type(value).__name__} is not an int, str or sequence")


def record_values(
    definition: EventDefinition, given: Mapping[str, FieldInput], comm: str, kernel: FakeKernel
) -> dict[str, RecordValue]:
    """Every field of the event's layout, from ``given`` or its default (addresses from ``kernel``'s kallsyms)."""
    primary = definition.primary
    defaults = _probe_defaults(definition, comm, kernel)
    values: dict[str, RecordValue] = {}
    for event_field in definition.layout.fields:
        value = given.get(event_field.name, defaults.get(event_field.name))
        if event_field.name.startswith("__probe_") and primary is not None and primary.kind == "kprobe":
            value = _address_value(value, kernel)
        values[event_field.name] = _stored_value(event_field, value)
    return values
