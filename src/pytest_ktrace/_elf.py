"""ELF helpers for uprobes: where a function symbol lives *in the file* (the offset ``uprobe_events`` wants).

A uprobe is placed at a file offset, not at a virtual address: ``st_value`` is mapped through the ``PT_LOAD``
segment that contains it (``vaddr - p_vaddr + p_offset``), which is right for PIE, non-PIE and shared objects.
Symbols come from ``.symtab`` first, then ``.dynsym`` (stripped binaries such as ``/usr/bin/true``).
"""

from __future__ import annotations

import difflib
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ._errors import MissingBinary, UnknownSymbol, hide_for_ktrace_errors

__all__ = ["elf_machine", "list_function_symbols", "symbol_file_offset"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

PathLike = Union[str, Path]

#: e_machine (as pyelftools names it) -> the name the kernel / uname use
_MACHINES: Dict[str, str] = {
    "EM_X86_64": "x86_64",
    "EM_386": "i386",
    "EM_AARCH64": "arm64",
    "EM_ARM": "arm",
    "EM_RISCV": "riscv",
    "EM_PPC64": "ppc64",
    "EM_PPC": "ppc",
    "EM_S390": "s390",
    "EM_MIPS": "mips",
    "EM_LOONGARCH": "loongarch",
    "EM_SPARCV9": "sparc64",
}


class _ElfInfo:
    """What we read from one ELF file, once: function symbols (name -> file offset) and the machine."""

    __slots__ = ("functions", "machine", "unmapped")

    def __init__(self, functions: Dict[str, int], machine: str, unmapped: Dict[str, int]) -> None:
        self.functions = functions
        self.machine = machine
        self.unmapped = unmapped  # symbols whose st_value lies in no PT_LOAD segment (name -> st_value)


_CacheKey = Tuple[str, int, int]
_cache: Dict[_CacheKey, _ElfInfo] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 64


def _key(path: PathLike) -> Tuple[str, _CacheKey]:
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise MissingBinary(f"{p} does not exist (no ELF file to place a uprobe in)") from None
    except OSError as exc:
        raise MissingBinary(f"{p}: cannot stat: {exc.strerror or exc}") from None
    if not os.path.isfile(p):
        raise MissingBinary(f"{p}: not a regular file")
    return p, (os.path.realpath(p), st.st_mtime_ns, st.st_size)


def _load(path: PathLike) -> Tuple[str, _ElfInfo]:
    p, key = _key(path)
    with _cache_lock:
        info = _cache.get(key)
    if info is not None:
        return p, info
    info = _read(p)
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.pop(next(iter(_cache)))
        _cache[key] = info
    return p, info


def _read(p: str) -> _ElfInfo:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(p, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                raise MissingBinary(f"{p}: not an ELF file")
            fh.seek(0)
            try:
                elf = ELFFile(fh)
                machine = _MACHINES.get(str(elf["e_machine"]), str(elf["e_machine"]))
                segments = _load_segments(elf)
                functions: Dict[str, int] = {}
                unmapped: Dict[str, int] = {}
                for section_name in (".symtab", ".dynsym"):
                    section = elf.get_section_by_name(section_name)
                    if section is None or not hasattr(section, "iter_symbols"):
                        continue
                    for sym in section.iter_symbols():
                        _add_symbol(sym, segments, functions, unmapped)
            except MissingBinary:
                raise
            except (ELFError, Exception) as exc:  # pyelftools raises a zoo of exceptions on corrupt files
                raise MissingBinary(f"{p}: not a valid ELF file ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise MissingBinary(f"{p}: cannot read: {exc.strerror or exc}") from None
    return _ElfInfo(functions, machine, unmapped)


def _load_segments(elf: Any) -> List[Tuple[int, int, int]]:
    segments: List[Tuple[int, int, int]] = []
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD":
            segments.append((int(seg["p_vaddr"]), int(seg["p_memsz"]), int(seg["p_offset"])))
    return segments


def _add_symbol(
    sym: Any, segments: List[Tuple[int, int, int]], functions: Dict[str, int], unmapped: Dict[str, int]
) -> None:
    name = sym.name
    if not name or name in functions:  # .symtab wins over .dynsym
        return
    if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC"):
        return
    shndx = sym["st_shndx"]
    if shndx == "SHN_UNDEF" or shndx == "SHN_ABS":
        return
    value = int(sym["st_value"])
    if value == 0:
        return
    off = _vaddr_to_offset(value, segments)
    if off is None:
        unmapped.setdefault(name, value)
        return
    functions[name] = off
    # versioned .dynsym names ("memcpy@@GLIBC_2.14") are also reachable by their bare name
    base = name.split("@", 1)[0]
    if base != name and base not in functions:
        functions[base] = off


def _vaddr_to_offset(vaddr: int, segments: List[Tuple[int, int, int]]) -> Optional[int]:
    for p_vaddr, p_memsz, p_offset in segments:
        if p_vaddr <= vaddr < p_vaddr + p_memsz:
            return vaddr - p_vaddr + p_offset
    return None


def list_function_symbols(path: PathLike) -> dict[str, int]:
    """Every defined function symbol of the ELF file at ``path`` -> its file offset (a copy; cached by
    ``(path, st_mtime_ns, size)``). Raises :class:`MissingBinary` if the file is missing or not ELF."""
    _, info = _load(path)
    return dict(info.functions)


def symbol_file_offset(path: PathLike, symbol: str) -> int:
    """The uprobe offset of function ``symbol`` in the ELF file at ``path``.

    Raises :class:`UnknownSymbol` (naming the file and suggesting close names) when there is no such function,
    :class:`MissingBinary` when the file is missing or not ELF."""
    p, info = _load(path)
    off = info.functions.get(symbol)
    if off is not None:
        return off
    if symbol in info.unmapped:
        raise UnknownSymbol(
            f"symbol {symbol!r} in {p} has address {info.unmapped[symbol]:#x}, which is in no PT_LOAD segment"
        )
    close = difflib.get_close_matches(symbol, list(info.functions), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if not info.functions:
        hint = " (the file has no function symbols: stripped? try a binary with .symtab or .dynsym)"
    raise UnknownSymbol(f"no function symbol {symbol!r} in {p}{hint}")


def elf_machine(path: PathLike) -> str:
    """The architecture of the ELF file at ``path`` in kernel/uname spelling: ``x86_64``, ``arm64``, ..."""
    _, info = _load(path)
    return info.machine
