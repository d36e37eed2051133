"""Field matchers: a plain value, a predicate, or :data:`ANY`, the way ``unittest.mock`` compares arguments."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Union

__all__ = ["ANY", "Matcher", "describe_expected", "field_matches", "mismatches"]


class _Any:
    """Equal to everything; shows as ``ANY``."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()

Matcher = Union[int, str, Callable[[Any], bool], Any]


def field_matches(expected: Any, actual: Any) -> bool:
    if expected is ANY:
        return True
    if callable(expected) and not isinstance(expected, (int, str)):
        try:
            return bool(expected(actual))
        except Exception:
            return False
    return bool(expected == actual)


def _missing(name: str) -> str:
    return f"{name}: no such field (the task is task_pid, task_comm, task_cpu)"


def mismatches(expected: Mapping[str, Any], fields: Mapping[str, Any]) -> list[str]:
    """Human lines for every expected field the event does not satisfy (empty list: it matches)."""
    problems: list[str] = []
    for name, want in expected.items():
        if name not in fields:
            problems.append(_missing(name))
        elif not field_matches(want, fields[name]):
            problems.append(f"{name}={fields[name]!r} (expected {describe_expected(want)})")
    return problems


def describe_expected(want: Any) -> str:
    if want is ANY:
        return "ANY"
    if callable(want) and not isinstance(want, (int, str)):
        return getattr(want, "__name__", repr(want))
    return repr(want)
