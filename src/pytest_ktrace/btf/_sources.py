"""Where BTF blobs come from, besides ``/sys/kernel/btf/*`` on a running kernel: the ``.BTF`` section of an ELF file
(an uncompressed ``vmlinux`` such as the guests' PVH kernel, a module's ``.ko``), or a raw kernel image without
section headers (arm64 ``Image``: the blob is found by its header). Stdlib only (struct, gzip), no pyelftools, so
the BTF layer stays importable anywhere.

So the BTF of a guest kernel can be read on the host, from the image the guest boots, without booting it.
"""

from __future__ import annotations

import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import Optional, Union

from .._errors import hide_for_ktrace_errors
from ._blob import HEADER_SIZE, BtfTypes
from ._errors import BtfError, BtfFormatError, BtfUnavailable

__all__ = ["btf_from_elf", "btf_from_kernel_image", "find_btf_blob", "load_kernel_btf"]

__tracebackhide__ = hide_for_ktrace_errors

_ELF_MAGIC = b"\x7fELF"


def _elf_sections(data: bytes) -> dict[str, tuple[int, int]]:
    """Section name -> (file offset, size) of an ELF file, checked against the file's size."""
    if len(data) < 64 or data[:4] != _ELF_MAGIC:
        raise BtfFormatError("not an ELF file")
    klass, endian_byte = data[4], data[5]
    if klass not in (1, 2) or endian_byte not in (1, 2):
        raise BtfFormatError(f"ELF class {klass}/data encoding {endian_byte} unknown")
    e = "<" if endian_byte == 1 else ">"
    try:
        if klass == 2:
            (shoff,) = struct.unpack_from(e + "Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x3A)
            header, name_at, offset_at = e + "IIQQQQIIQQ", 0, (4, 5)
        else:
            (shoff,) = struct.unpack_from(e + "I", data, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x2E)
            header, name_at, offset_at = e + "IIIIIIIIII", 0, (4, 5)
        if shoff == 0:
            return {}
        if shentsize < struct.calcsize(header):
            raise BtfFormatError(f"ELF section header size {shentsize} too small")
        if shnum == 0:  # more than 0xff00 sections: the count is in section 0's sh_size
            shnum = struct.unpack_from(header, data, shoff)[5]
        if shstrndx == 0xFFFF:
            shstrndx = struct.unpack_from(header, data, shoff)[6]
        if shoff + shnum * shentsize > len(data) or shnum > 1 << 20:
            raise BtfFormatError("ELF section headers run past the end of the file (truncated?)")
        raw = [struct.unpack_from(header, data, shoff + i * shentsize) for i in range(shnum)]
        if not 0 <= shstrndx < shnum:
            raise BtfFormatError(f"ELF section name table index {shstrndx} out of range")
        names_off, names_size = raw[shstrndx][offset_at[0]], raw[shstrndx][offset_at[1]]
        names = data[names_off : names_off + names_size]
        sections: dict[str, tuple[int, int]] = {}
        for fields in raw:
            start = fields[name_at]
            end = names.find(b"\0", start)
            name = names[start:end].decode("ascii", "replace") if 0 <= start < len(names) and end >= 0 else ""
            offset, size = fields[offset_at[0]], fields[offset_at[1]]
            if fields[1] != 8 and offset + size <= len(data):  # SHT_NOBITS has no bytes in the file
                sections.setdefault(name, (offset, size))
        return sections
    except struct.error:
        raise BtfFormatError("ELF headers truncated") from None


def btf_from_elf(data: bytes, *, what: str = "ELF file") -> bytes:
    """The ``.BTF`` section of an ELF file (vmlinux, module .ko); :class:`~.errors.BtfUnavailable` if it has none."""
    sections = _elf_sections(bytes(data))
    if ".BTF" not in sections:
        raise BtfUnavailable.for_target(what, "it has no .BTF section (built without CONFIG_DEBUG_INFO_BTF?)")
    offset, size = sections[".BTF"]
    return bytes(data[offset : offset + size])


def find_btf_blob(data: bytes, *, what: str = "kernel image") -> bytes:
    """The largest well-formed base BTF blob inside ``data`` (a raw kernel image: arm64 ``Image``, a decompressed
    bzImage payload), found by its header (magic, version 1, a 24-byte header, a type section then a string
    section that starts with NUL and ends with NUL) and checked by loading it."""
    blob = bytes(data)
    candidates: list[tuple[int, int]] = []
    for magic, endian in ((b"\x9f\xeb\x01\x00", "<"), (b"\xeb\x9f\x01\x00", ">")):
        pos = blob.find(magic)
        while pos >= 0:
            if pos + HEADER_SIZE <= len(blob):
                hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(endian + "IIIII", blob, pos + 4)
                end = pos + hdr_len + str_off + str_len
                if (
                    hdr_len == HEADER_SIZE
                    and type_off == 0
                    and str_off == type_len
                    and type_len > 0
                    and str_len > 0
                    and end <= len(blob)
                    and blob[pos + hdr_len + str_off] == 0
                    and blob[end - 1] == 0
                ):
                    candidates.append((end - pos, pos))
            pos = blob.find(magic, pos + 1)
    for size, start in sorted(candidates, reverse=True):
        try:
            BtfTypes.load(blob[start : start + size])
        except BtfError:
            continue
        return blob[start : start + size]
    raise BtfUnavailable.for_target(what, "no BTF blob found in it (built without CONFIG_DEBUG_INFO_BTF?)")


def _decompress(data: bytes) -> Optional[bytes]:
    try:
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(data)
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        raise BtfFormatError("the compressed kernel image is corrupt") from None
    return None


def btf_from_kernel_image(data: bytes, *, what: str = "kernel image") -> bytes:
    """The vmlinux BTF in a kernel image: an ELF vmlinux (its ``.BTF``), a gzip/xz-compressed image (decompressed
    first, e.g. Debian's arm64 ``vmlinuz``), or a raw image (:func:`find_btf_blob`). A bzImage or zstd payload is
    not unpacked: extract it first (``scripts/extract-vmlinux``)."""
    blob = bytes(data)
    if blob[:4] == _ELF_MAGIC:
        return btf_from_elf(blob, what=what)
    inflated = _decompress(blob)
    if inflated is not None:
        return btf_from_kernel_image(inflated, what=what)
    return find_btf_blob(blob, what=what)


def load_kernel_btf(path: Union[str, Path], base: Optional[BtfTypes] = None, *, name: str = "") -> BtfTypes:
    """:class:`BtfTypes` from any file holding BTF: a raw blob (``/sys/kernel/btf/*``), an ELF with ``.BTF``
    (vmlinux or, with ``base``, a module), or a kernel image."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BtfUnavailable.for_target(str(path), "the file does not exist") from None
    except OSError as exc:
        raise BtfUnavailable.for_target(str(path), f"cannot read it: {exc.strerror or exc}") from None
    label = name or path.name
    if data[:2] in (b"\x9f\xeb", b"\xeb\x9f"):
        return BtfTypes.load(data, base, name=label)
    if data[:4] == _ELF_MAGIC and base is not None:
        return BtfTypes.load(btf_from_elf(data, what=str(path)), base, name=label)
    return BtfTypes.load(btf_from_kernel_image(data, what=str(path)), base, name=label)
