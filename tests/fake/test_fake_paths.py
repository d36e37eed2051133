"""split_path(): the VFS's ENAMETOOLONG counts bytes (UTF-8), for a plain ASCII path and any other alike."""

from __future__ import annotations

from typing import Optional

import pytest

from pytest_ktrace.fake._paths import split_path
from pytest_ktrace.fake._syscall_errors import FakeOSError


def _by_bytes(path: str) -> Optional[list[str]]:
    """The rule itself: None where the VFS answers ENAMETOOLONG."""
    if len(path.encode("utf-8", "surrogatepass")) >= 4096:
        return None
    parts = [part for part in path.strip("/").split("/") if part and part != "."]
    return None if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in parts) else parts


def _split(path: str) -> Optional[list[str]]:
    try:
        return split_path(path)
    except FakeOSError:
        return None


@pytest.mark.parametrize("letter", ["x", "é", "\udcff"])
@pytest.mark.parametrize("length", [254, 255, 256])
def test_a_component_of_name_max_bytes(letter: str, length: int) -> None:
    for path in (letter * length, f"instances/{letter * length}/trace", f"/./{letter * length}//"):
        assert _split(path) == _by_bytes(path)
    assert (_split("a/" + "x" * length) is None) == (length > 255)


@pytest.mark.parametrize("letter", ["x", "é"])
@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_a_path_of_path_max_bytes(letter: str, extra: int) -> None:
    part = "y" * 200
    path = "/".join([part] * 20)
    path += "/" + letter * ((4096 - len(path.encode()) - 1 + extra) // len(letter.encode()))
    assert _split(path) == _by_bytes(path)


def test_the_plugin_paths_split_into_their_components() -> None:
    assert split_path("instances/ktrace_1/events/g/p_x_2001/enable") == [
        "instances",
        "ktrace_1",
        "events",
        "g",
        "p_x_2001",
        "enable",
    ]
    assert split_path("/./events//") == ["events"]
