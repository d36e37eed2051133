"""pytest_ktrace._elf against real binaries: tests/prog/probed.c (PIE and -no-pie), /usr/bin/true, libc."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ktrace_testing import build_probed
from pytest_ktrace import _elf as elf
from pytest_ktrace._errors import KtraceError, MissingBinary, ProbeRejected, UnknownSymbol

PROG = Path(__file__).resolve().parent / "prog"
TRACEFS = Path("/sys/kernel/tracing")


needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
needs_binutils = pytest.mark.skipif(
    shutil.which("nm") is None or shutil.which("readelf") is None, reason="binutils (nm, readelf) not installed"
)


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("elf")
    return {"pie": build_probed(d), "nopie": build_probed(d, pie=False)}


def nm_functions(path: Path, dynamic: bool = False) -> dict[str, int]:
    """Defined function symbols as binutils sees them: name -> st_value."""
    out = subprocess.run(
        ["nm", "--defined-only", *(["-D"] if dynamic else []), str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TtWwi":
            syms.setdefault(parts[2].split("@", 1)[0], int(parts[0], 16))
    return syms


def readelf_loads(path: Path) -> list[tuple[int, int, int]]:
    """PT_LOAD segments as binutils sees them: (offset, vaddr, memsz)."""
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    loads = []
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "LOAD":
            loads.append((int(parts[1], 16), int(parts[2], 16), int(parts[5], 16)))
    return loads


def expected_offset(path: Path, symbol: str, dynamic: bool = False) -> int:
    value = nm_functions(path, dynamic)[symbol]
    for off, vaddr, memsz in readelf_loads(path):
        if vaddr <= value < vaddr + memsz:
            return value - vaddr + off
    raise AssertionError(f"{symbol} not in a LOAD segment")


FUNCS = ["setup_thing", "add_u64", "fib", "sleep_us", "takes_struct", "takes_string", "main"]


@needs_binutils
@pytest.mark.parametrize("kind", ["pie", "nopie"])
def test_offsets_match_binutils(bins: dict[str, Path], kind: str) -> None:
    path = bins[kind]
    for name in FUNCS:
        assert elf.symbol_file_offset(path, name) == expected_offset(path, name), name


@needs_binutils
def test_nopie_offset_is_not_the_virtual_address(bins: dict[str, Path]) -> None:
    path = bins["nopie"]
    vaddr = nm_functions(path)["setup_thing"]
    off = elf.symbol_file_offset(path, "setup_thing")
    assert vaddr >= 0x400000 > off  # the uprobe offset is into the file, not the link address


def test_offset_points_at_the_function_code(bins: dict[str, Path]) -> None:
    # -O0 x86_64/arm64 prologues: endbr64 / push %rbp, or stp x29, x30
    for kind in ("pie", "nopie"):
        data = bins[kind].read_bytes()
        off = elf.symbol_file_offset(bins[kind], "fib")
        head = data[off : off + 4]
        assert head in (b"\xf3\x0f\x1e\xfa",) or head[:1] == b"\x55" or head[3:4] == b"\xa9", (kind, head)


def test_str_and_path_accepted(bins: dict[str, Path]) -> None:
    assert elf.symbol_file_offset(str(bins["pie"]), "fib") == elf.symbol_file_offset(bins["pie"], "fib")


def test_list_function_symbols(bins: dict[str, Path]) -> None:
    syms = elf.list_function_symbols(bins["pie"])
    assert set(FUNCS) <= set(syms)
    assert "probed_sink" not in syms  # a data object, not a function
    assert all(isinstance(v, int) and v > 0 for v in syms.values())
    syms["fib"] = -1  # a copy: callers cannot corrupt the cache
    assert elf.list_function_symbols(bins["pie"])["fib"] > 0


def test_symbols_cached_by_path_mtime_size(bins: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "probed"
    shutil.copy2(bins["pie"], copy)
    calls = []
    real_read = elf._read

    def counting(p: str):  # type: ignore[no-untyped-def]
        calls.append(p)
        return real_read(p)

    monkeypatch.setattr(elf, "_read", counting)
    first = elf.list_function_symbols(copy)
    elf.symbol_file_offset(copy, "fib")
    elf.elf_machine(copy)
    assert len(calls) == 1
    # replace the file with a different build: new mtime/size -> read again
    shutil.copy(bins["nopie"], copy)
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = elf.list_function_symbols(copy)
    assert len(calls) == 2
    assert second != first


def test_unknown_symbol_names_file_and_close_matches(bins: dict[str, Path]) -> None:
    with pytest.raises(UnknownSymbol) as info:
        elf.symbol_file_offset(bins["pie"], "setup_thingy")
    text = str(info.value)
    assert str(bins["pie"]) in text
    assert "setup_thingy" in text and "did you mean" in text and "setup_thing" in text
    assert isinstance(info.value, ProbeRejected) and isinstance(info.value, KtraceError)


def test_unknown_symbol_without_close_match(bins: dict[str, Path]) -> None:
    with pytest.raises(UnknownSymbol, match="no function symbol 'zzzqqq'") as info:
        elf.symbol_file_offset(bins["pie"], "zzzqqq")
    assert "did you mean" not in str(info.value)


def test_data_symbol_is_not_a_function(bins: dict[str, Path]) -> None:
    with pytest.raises(UnknownSymbol):
        elf.symbol_file_offset(bins["pie"], "probed_sink")


@needs_gcc
def test_stripped_binary_uses_dynsym(tmp_path: Path) -> None:
    if shutil.which("strip") is None:
        pytest.skip("strip not installed")
    exe = tmp_path / "probed-rdynamic"
    subprocess.run(["gcc", "-O0", "-g", "-rdynamic", "-o", str(exe), str(PROG / "probed.c")], check=True)
    before = elf.symbol_file_offset(exe, "add_u64")
    subprocess.run(["strip", str(exe)], check=True)
    out = subprocess.run(["readelf", "-SW", str(exe)], capture_output=True, text=True, check=True).stdout
    assert ".symtab" not in out and ".dynsym" in out
    assert elf.symbol_file_offset(exe, "add_u64") == before


def test_usr_bin_true_has_only_dynsym_imports() -> None:
    true = Path(shutil.which("true") or "/usr/bin/true")
    if not true.exists():
        pytest.skip("no /usr/bin/true")
    true = true.resolve()
    syms = elf.list_function_symbols(true)
    # a stripped executable: .dynsym holds imports (undefined) only, unless it exports something
    with pytest.raises(UnknownSymbol) as info:
        elf.symbol_file_offset(true, "main")
    assert str(true) in str(info.value)
    if not syms:
        assert "no function symbols" in str(info.value)
    assert elf.elf_machine(true) == elf.elf_machine(sys.executable)


def _libc() -> Path:
    for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6"):
        if Path(p).exists():
            return Path(p).resolve()
    pytest.skip("no libc.so.6 found")


@needs_binutils
def test_shared_library_dynsym_offsets() -> None:
    libc = _libc()
    for name in ("malloc", "getpid", "write"):
        assert elf.symbol_file_offset(libc, name) == expected_offset(libc, name, dynamic=True), name


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingBinary, match="does not exist") as info:
        elf.symbol_file_offset(tmp_path / "nope", "main")
    assert str(tmp_path / "nope") in str(info.value)
    with pytest.raises(MissingBinary):
        elf.list_function_symbols(tmp_path / "nope")
    with pytest.raises(MissingBinary):
        elf.elf_machine(tmp_path / "nope")


def test_not_elf(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(MissingBinary, match="not an ELF file"):
        elf.symbol_file_offset(script, "main")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(MissingBinary):
        elf.elf_machine(empty)
    with pytest.raises(MissingBinary, match="not a regular file"):
        elf.symbol_file_offset(tmp_path, "main")


@pytest.mark.parametrize("cut", [4, 16, 64, 200, 1000, -100, -1])  # negative: that many bytes off the end
def test_truncated_elf_is_missing_binary_not_a_crash(bins: dict[str, Path], tmp_path: Path, cut: int) -> None:
    bad = tmp_path / f"trunc{cut}"
    bad.write_bytes(bins["pie"].read_bytes()[:cut])
    with pytest.raises(MissingBinary, match=rf"{re.escape(str(bad))}: not a valid ELF file \(ELF"):
        elf.list_function_symbols(bad)


def test_elf_machine(bins: dict[str, Path]) -> None:
    want = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
    assert elf.elf_machine(bins["pie"]) == want
    assert elf.elf_machine(bins["nopie"]) == want


# ----------------------------------------------------------------------------------------------- real uprobes


def _tracefs_writable() -> bool:
    return (TRACEFS / "uprobe_events").exists() and os.access(TRACEFS / "uprobe_events", os.W_OK)


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@pytest.mark.skipif(not _tracefs_writable(), reason="needs root and tracefs with uprobes")
@pytest.mark.parametrize("kind", ["pie", "nopie"])
def test_offset_really_fires_a_uprobe(bins: dict[str, Path], kind: str) -> None:
    group = f"ktrace_parsetest_{os.getpid()}"
    event = f"elf_{kind}"
    inst = TRACEFS / "instances" / f"{group}_elf_{kind}"
    path = bins[kind]
    off = elf.symbol_file_offset(path, "fib")
    defined = False
    inst.mkdir()
    try:
        _append(TRACEFS / "uprobe_events", f"p:{group}/{event} {path}:{off:#x} n=%di:s32")
        defined = True
        (inst / "events" / group / event / "enable").write_text("1")
        subprocess.run([str(path), "fib", "3"], check=True, capture_output=True)
        (inst / "events" / group / event / "enable").write_text("0")
        trace = (inst / "trace").read_text(errors="replace")
        hits = [line for line in trace.splitlines() if f" {event}: " in line]
        assert len(hits) == 5, trace  # fib(3) calls fib 5 times
    finally:
        if defined:
            enable = inst / "events" / group / event / "enable"
            if enable.exists():
                enable.write_text("0")
        inst.rmdir()
        if defined:
            _append(TRACEFS / "uprobe_events", f"-:{group}/{event}")
