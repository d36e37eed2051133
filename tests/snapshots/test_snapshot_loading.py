"""Loading snapshots: once per process and file (every fake backend shares the immutable snapshot), again when
the file changes; the kallsyms layout read back from its stored form without sorting it again."""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_ktrace.snapshots._kallsyms import KernelText
from pytest_ktrace.snapshots._snapshot import KernelSnapshot, load_snapshot, shipped_snapshots


def test_a_snapshot_is_loaded_once_per_process_and_file(tmp_path: Path) -> None:
    assert load_snapshot("debian-6.1-arm64") is load_snapshot("debian-6.1-arm64")
    copy = tmp_path / "copy.json.gz"
    shutil.copy(shipped_snapshots()["debian-6.1-arm64"], copy)
    first = load_snapshot(str(copy))
    assert first is load_snapshot(str(copy))
    assert first is not load_snapshot("debian-6.1-arm64")  # another file: read on its own
    assert first == load_snapshot("debian-6.1-arm64")


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "mine.json.gz"
    original = load_snapshot("debian-6.1-x86_64")
    replace(original, name="mine").save(path)
    assert load_snapshot(str(path)).name == "mine"
    replace(original, name="mine-again", release="6.1.0-99-amd64").save(path)  # a new file in its place
    again = load_snapshot(str(path))
    assert (again.name, again.release) == ("mine-again", "6.1.0-99-amd64")


def test_an_unreadable_snapshot_still_says_why() -> None:
    with pytest.raises(Exception, match="unknown snapshot"):
        load_snapshot("/nonexistent/snapshot.json.gz")


@pytest.mark.parametrize("name", list(shipped_snapshots()))
def test_stored_kallsyms_read_back_as_the_sorting_constructor_lays_them_out(name: str) -> None:
    stored = json.loads(gzip.decompress(shipped_snapshots()[name].read_bytes()))["text"]
    fast = KernelText.from_json(stored)
    starts, address = [], 0
    for delta in stored["start_deltas"]:
        address += delta
        starts.append(address)
    sorted_again = KernelText(zip(starts, stored["names"]))
    assert (fast.starts, fast.names) == (sorted_again.starts, sorted_again.names)
    assert fast._starts == sorted_again._starts and fast._first == sorted_again._first
    assert fast._span == sorted_again._span
    for probe in (*fast.starts[:50:7], *fast.starts[-50::7], fast.starts[0] - 1, fast.starts[-1] + 1):
        assert fast.symbol_at(probe) == sorted_again.symbol_at(probe)
        assert fast.symbol_at(probe + 3) == sorted_again.symbol_at(probe + 3)
    for symbol in fast.names[::997]:
        assert fast.span_of_name(symbol) == sorted_again.span_of_name(symbol)


def test_kallsyms_stored_out_of_order_or_twice_are_sorted_and_made_distinct() -> None:
    stored = {"names": ["b", "a", "a", "c", "dup", "dup"], "start_deltas": [300, -200, 0, 50, 100, 0]}
    text = KernelText.from_json(stored)
    assert text.names == ("a", "c", "dup", "b")
    assert text.starts == (100, 150, 250, 300)
    assert text.span_of_name("c") == (150, 250)


def test_duplicated_names_are_found_once(tmp_path: Path) -> None:
    path = tmp_path / "dups.json.gz"
    text = KernelText([(0x1000, "a"), (0x1100, "b"), (0x1200, "a"), (0x1300, "c"), (0x1400, "_etext")])
    base = load_snapshot("debian-6.1-x86_64")
    snapshot = replace(base, name="dups", symbols=frozenset(text.names), duplicate_symbols={"a"}, text=text)
    snapshot.save(path)
    loaded = KernelSnapshot.load(path)
    assert loaded.duplicate_symbols == frozenset({"a"})
    assert loaded.symbols == frozenset({"a", "b", "c", "_etext"})
