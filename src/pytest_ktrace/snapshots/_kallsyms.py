"""The kernel's text symbols as ``kallsyms`` lays them out: names, start addresses, and the span of each function.

A filter predicate ``call_site.function == name`` (or ``== 0xADDRESS``) keeps events whose field points into one
function. The kernel finds that function with ``kallsyms_lookup_name()`` and ``kallsyms_lookup_size_offset()``:
a function starts at its symbol's address and ends where the next higher symbol starts, and an address outside
the kernel's symbols belongs to no function. :class:`KernelText` answers the same two questions from a snapshot.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Iterable, Mapping
from typing import Optional

__all__ = ["TEXT_TYPES", "KernelText", "parse_kallsyms"]

TEXT_TYPES = frozenset("Tt")


class KernelText:
    """Text symbols ordered by address. ``names[i]`` starts at ``starts[i]``; both are sorted by address."""

    __slots__ = ("_first", "_last", "_span", "_starts", "names", "starts")

    def __init__(self, pairs: Iterable[tuple[int, str]]) -> None:
        ordered = sorted(set(pairs))
        self._lay_out(tuple(start for start, _ in ordered), tuple(name for _, name in ordered))

    def _lay_out(self, starts: tuple[int, ...], names: tuple[str, ...]) -> None:
        """``starts``/``names``: the distinct (start, name) pairs in ascending order."""
        self.starts: tuple[int, ...] = starts
        self.names: tuple[str, ...] = names
        self._starts = list(dict.fromkeys(starts))  # distinct addresses (ascending): where each function ends
        # kallsyms_lookup_name finds the lowest of duplicated names: built from the highest, the lowest stays
        self._first: dict[str, int] = dict(zip(reversed(names), reversed(starts)))
        self._span: Optional[tuple[int, int]] = (self._starts[0], self._starts[-1]) if len(self._starts) > 1 else None

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"KernelText({len(self.names)} symbols)"

    @classmethod
    def from_spans(cls, spans: Mapping[str, tuple[int, int]]) -> KernelText:
        """Functions given as name -> (start, size): each end becomes the start of an unnamed gap."""
        pairs = [(start, name) for name, (start, _) in spans.items()]
        pairs += [(start + size, "") for start, size in spans.values()]
        text = cls(pairs)
        text._first.pop("", None)
        return text

    def span_of_address(self, address: int) -> Optional[tuple[int, int]]:
        """[start, end) of the function holding ``address``; None outside the kernel's text."""
        if self._span is None or not self._span[0] <= address < self._span[1]:
            return None
        index = bisect.bisect_right(self._starts, address) - 1
        if self._is_gap(self._starts[index]):
            return None
        return self._starts[index], self._starts[index + 1]

    def symbol_at(self, address: int) -> Optional[tuple[str, int, int]]:
        """(name, start, end) of the function holding ``address`` (the first name of aliases at one start)."""
        span = self.span_of_address(address)
        if span is None:
            return None
        return self.names[bisect.bisect_left(self.starts, span[0])], span[0], span[1]

    def span_of_name(self, name: str) -> Optional[tuple[int, int]]:
        start = self._first.get(name)
        return None if start is None else self.span_of_address(start)

    def _is_gap(self, start: int) -> bool:
        index = bisect.bisect_left(self.starts, start)
        return all(self.names[i] == "" for i in range(index, bisect.bisect_right(self.starts, start)))

    # --- storage: names in address order and the differences between starts compress to a third of sorted names

    def to_json(self) -> dict[str, list[int] | list[str]]:
        deltas = [b - a for a, b in zip((0, *self.starts), self.starts)]
        return {"names": list(self.names), "start_deltas": deltas}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> KernelText:
        names, deltas = data["names"], data["start_deltas"]
        if not isinstance(names, list) or not isinstance(deltas, list) or len(names) != len(deltas):
            raise ValueError("text symbols: names and start_deltas must be lists of the same length")
        starts = tuple(itertools.accumulate(map(int, deltas)))
        texts = tuple(map(str, names))
        if not all(map(operator.lt, zip(starts, texts), zip(starts[1:], texts[1:]))):
            return cls(zip(starts, texts))  # not as to_json() writes it: sorted and made distinct here
        # to_json() wrote distinct pairs in ascending order: nothing to sort (a snapshot holds ~50k symbols)
        text = cls.__new__(cls)
        text._lay_out(starts, texts)
        return text


def parse_kallsyms(text: str) -> KernelText:
    """``/proc/kallsyms`` -> its text symbols (types T and t). Lines are ``ADDR TYPE NAME`` or ``ADDR TYPE NAME\\t
    [module]``. Read without root, every address is 0: the layout is then unknown, the names still count."""
    pairs: list[tuple[int, str]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[1] not in TEXT_TYPES:
            continue
        try:
            pairs.append((int(parts[0], 16), parts[2]))
        except ValueError:
            continue
    return KernelText(pairs)
