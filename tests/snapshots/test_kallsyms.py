"""The kernel text layout behind ``field.function`` filters and the fake's symbol rendering."""

from __future__ import annotations

import json

import pytest

from ktrace_testing import DEV_VM_SNAPSHOT
from pytest_ktrace.fake._tracefs import FakeOSError, FakeTracefs
from pytest_ktrace.snapshots._kallsyms import KernelText, parse_kallsyms
from pytest_ktrace.snapshots._snapshot import KernelSnapshot, load_snapshot

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000100 t helper_a
ffffffff81000180 T kmem_cache_free
ffffffff81000400 T kfree
ffffffff81000400 T kfree_alias
ffffffff81000500 D some_data
ffffffff81000600 t helper_a
ffffffff81000700 T _etext
ffffffffc0001000 t virtnet_poll\t[virtio_net]
"""


def test_functions_end_where_the_next_symbol_starts() -> None:
    text = parse_kallsyms(KALLSYMS)
    assert text.span_of_name("kmem_cache_free") == (0xFFFFFFFF81000180, 0xFFFFFFFF81000400)
    assert text.span_of_address(0xFFFFFFFF810003FF) == (0xFFFFFFFF81000180, 0xFFFFFFFF81000400)
    assert text.symbol_at(0xFFFFFFFF81000401) == ("kfree", 0xFFFFFFFF81000400, 0xFFFFFFFF81000600)
    # a duplicated name resolves to its lowest address, as kallsyms_lookup_name finds it
    assert text.span_of_name("helper_a") == (0xFFFFFFFF81000100, 0xFFFFFFFF81000180)
    assert "some_data" not in text.names  # only text symbols (T, t)
    assert text.span_of_name("no_such") is None


def test_addresses_outside_the_symbols_belong_to_no_function() -> None:
    text = parse_kallsyms(KALLSYMS)
    assert text.span_of_address(0x10) is None
    assert text.span_of_address(0xFFFFFFFF80FFFFFF) is None
    assert text.span_of_address(0xFFFFFFFFC0001000) is None  # the last symbol has no known end
    assert text.span_of_name("virtnet_poll") is None


def test_kallsyms_read_without_root_has_no_layout() -> None:
    zeros = "".join(f"0000000000000000 T {name}\n" for name in ("a", "b", "c"))
    assert parse_kallsyms(zeros).span_of_name("a") is None


def test_stored_layout_round_trips() -> None:
    text = parse_kallsyms(KALLSYMS)
    again = KernelText.from_json(json.loads(json.dumps(text.to_json())))
    assert (again.starts, again.names) == (text.starts, text.names)
    with pytest.raises(ValueError):
        KernelText.from_json({"names": ["a"], "start_deltas": []})


def test_spans_given_as_sizes_leave_gaps_between_functions() -> None:
    text = KernelText.from_spans({"f": (0x1000, 0x10), "g": (0x2000, 0x10)})
    assert text.span_of_name("f") == (0x1000, 0x1010)
    assert text.span_of_address(0x1800) is None


def _fake_with_kmem_events() -> FakeTracefs:
    # the development VM's snapshot was taken before snapshots recorded the kernel's addresses
    return FakeTracefs(load_snapshot(str(DEV_VM_SNAPSHOT)), file_exists=lambda path: None)


def test_the_fake_takes_function_filters_on_a_snapshot_without_addresses() -> None:
    fs = _fake_with_kmem_events()
    assert fs.snapshot.text is None  # a snapshot taken before layouts were recorded: the fake makes one up
    path = "events/kmem/kmem_cache_free/filter"
    fs.write(path, "call_site.function == kmem_cache_free")
    assert fs.read(path) == "call_site.function == kmem_cache_free\n"
    start = fs.symbol_address("kmem_cache_free")
    fs.write("events/kmem/kmem_cache_free/enable", "1")
    assert fs.emit("kmem/kmem_cache_free", {"call_site": start + 8, "ptr": 1}, pid=1, comm="x") == 1
    assert fs.emit("kmem/kmem_cache_free", {"call_site": fs.symbol_address("kfree"), "ptr": 1}, pid=1, comm="x") == 0
    fs.write(path, f"call_site.function == {start + 3:#x}")
    with pytest.raises(FakeOSError):
        fs.write(path, "call_site.function == no_such_function_here")
    assert "Function not found" in fs.read("error_log")


def test_the_fake_uses_the_snapshots_layout_and_answers() -> None:
    shipped = load_snapshot("debian-6.1-x86_64")
    layout = parse_kallsyms(KALLSYMS)
    snapshot = KernelSnapshot(
        name="laid-out",
        release=shipped.release,
        arch=shipped.arch,
        features=shipped.features,
        readme=shipped.readme,
        symbols=frozenset(layout.names),
        duplicate_symbols=frozenset({"helper_a"}),
        blacklist=None,
        events={"kmem/kmem_cache_free": shipped.events["kmem/kmem_cache_free"]},
        text=layout,
        answers={"filter_trailing_operator": "accepted"},
    )
    fs = FakeTracefs(snapshot)
    path = "events/kmem/kmem_cache_free/filter"
    fs.write(path, "call_site.function == 0xffffffff810003ff")
    with pytest.raises(FakeOSError):
        fs.write(path, "call_site.function == 0xffffffff80000000")
    assert fs.symbol_address("kmem_cache_free") == 0xFFFFFFFF81000180
    fs.write(path, "common_pid == 1 &&")  # this kernel took a trailing operator, its snapshot says
    assert fs.read(path) == "common_pid == 1 &&\n"
