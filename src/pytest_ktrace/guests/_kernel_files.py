"""What a kernel file a user built is: its architecture and format (from its own header), its release, the kernel
proper inside it, the config it embeds, and the form qemu boots fastest.

Formats: an x86 ``bzImage`` (boot protocol header ``HdrS``), an arm64 ``Image`` (magic ``ARM\\x64`` at byte 56)
raw or gzip-compressed (``Image.gz``), and an ELF ``vmlinux`` (``e_machine`` x86-64 or AArch64). Reading the
architecture costs a few bytes of the file; everything else reads it whole.
"""

from __future__ import annotations

import bz2
import lzma
import mmap
import os
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

from .._errors import GuestKernelError

__all__ = [
    "BootableKernel",
    "KernelFile",
    "bootable_kernel",
    "embedded_config",
    "inspect_kernel",
    "kernel_proper",
    "kernel_release",
]

_HEAD_BYTES = 4096
_SETUP_MAX_BYTES = 128 * 512  # the real-mode setup (which holds the version string) is at most 127 sectors + 1
_ARM64_MAGIC_OFFSET = 56
_ARM64_MAGIC = b"ARM\x64"
_ELF_MAGIC = b"\x7fELF"
_GZIP_MAGIC = b"\x1f\x8b"
_EM_X86_64 = 62
_EM_AARCH64 = 183
_ET_EXEC = 2
_PT_LOAD = 1
_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point qemu needs to boot an x86 ELF directly
_XLF_KERNEL_64 = 1
_BANNER = re.compile(rb"Linux version (\S+) \(")
_IKCONFIG_START = b"IKCFG_ST"
# A decompressed kernel is tens of MB; refuse to inflate anything that claims to be far larger.
_MAX_KERNEL_BYTES = 1 << 30

_FORMATS = "an x86 bzImage, an arm64 Image or Image.gz, or an ELF vmlinux"


@dataclass(frozen=True)
class KernelFile:
    """A kernel file identified by its header: ``arch`` is ``x86_64`` or ``arm64``, ``format`` one of
    ``bzImage``, ``Image``, ``Image.gz``, ``vmlinux``."""

    path: Path
    arch: str
    format: str


@dataclass(frozen=True)
class BootableKernel:
    """What qemu's ``-kernel`` gets: the bytes and their form (``pvh-elf``, ``bzImage``, ``Image``)."""

    data: bytes
    format: str


def _error(path: Path, reason: str) -> GuestKernelError:
    return GuestKernelError(f"{path} {reason}", kernel=str(path))


def _read_head(path: Path) -> bytes:
    try:
        with path.open("rb") as stream:
            return stream.read(_HEAD_BYTES)
    except FileNotFoundError:
        raise _error(path, "does not exist") from None
    except IsADirectoryError:
        raise _error(path, f"is a directory, not a kernel file ({_FORMATS})") from None
    except OSError as exc:
        raise _error(path, f"cannot be read: {exc.strerror or exc}") from None


def _gzip_head(path: Path) -> bytes:
    decompressor = zlib.decompressobj(wbits=31)
    try:
        with path.open("rb") as stream:
            return decompressor.decompress(stream.read(1 << 16), 256)
    except (OSError, zlib.error) as exc:
        raise _error(path, f"is gzip data that does not decompress: {exc}") from None


def _elf_arch(path: Path, head: bytes) -> str:
    if len(head) < 64 or head[4] != 2:
        raise _error(path, "is a 32-bit ELF file; the guests run 64-bit kernels (x86_64, arm64)")
    if head[5] != 1:
        raise _error(path, "is a big-endian ELF file; the guests run little-endian kernels")
    e_type, e_machine = struct.unpack_from("<HH", head, 16)
    arch = {_EM_X86_64: "x86_64", _EM_AARCH64: "arm64"}.get(e_machine)
    if arch is None:
        raise _error(path, f"is an ELF file for machine {e_machine}, not x86-64 or AArch64")
    if e_type != _ET_EXEC or _banner_release(path) is None:
        raise _error(path, "is an ELF file but not a Linux kernel (no executable with a 'Linux version' banner)")
    return arch


def _bzimage_arch(path: Path, head: bytes) -> str:
    protocol = struct.unpack_from("<H", head, 0x206)[0]
    if protocol < 0x20C or not head[0x236] & _XLF_KERNEL_64:
        raise _error(path, "is a 32-bit x86 bzImage (boot protocol without a 64-bit entry); the guest is x86_64")
    return "x86_64"


@lru_cache(maxsize=32)
def _inspect_cached(path: Path, _size: int, _mtime_ns: int) -> KernelFile:
    head = _read_head(path)
    if len(head) >= 0x240 and head[0x202:0x206] == b"HdrS":
        return KernelFile(path, _bzimage_arch(path, head), "bzImage")
    if head[_ARM64_MAGIC_OFFSET : _ARM64_MAGIC_OFFSET + 4] == _ARM64_MAGIC:
        return KernelFile(path, "arm64", "Image")
    if head.startswith(_ELF_MAGIC):
        return KernelFile(path, _elf_arch(path, head), "vmlinux")
    if head.startswith(_GZIP_MAGIC):
        inner = _gzip_head(path)
        if inner[_ARM64_MAGIC_OFFSET : _ARM64_MAGIC_OFFSET + 4] == _ARM64_MAGIC:
            return KernelFile(path, "arm64", "Image.gz")
        raise _error(path, f"is gzip data, but not of an arm64 Image; expected {_FORMATS}")
    if head.startswith(b"MZ") and head[4:8] == b"zimg":
        raise _error(path, "is an EFI zboot image (vmlinuz.efi); boot arch/arm64/boot/Image or Image.gz instead")
    if not head:
        raise _error(path, f"is empty; expected {_FORMATS}")
    raise _error(path, f"is not a kernel: expected {_FORMATS} (it starts with {head[:16].hex(' ')})")


def inspect_kernel(path: Path) -> KernelFile:
    """The architecture and format of a kernel file, from its header; :class:`GuestKernelError` for anything
    else. Remembered per (path, size, mtime), so asking for every test costs nothing."""
    path = Path(path)
    try:
        status = path.stat()
    except FileNotFoundError:
        raise _error(path, "does not exist") from None
    except OSError as exc:
        raise _error(path, f"cannot be read: {exc.strerror or exc}") from None
    return _inspect_cached(path, status.st_size, status.st_mtime_ns)


def _banner_release(path: Path) -> Optional[str]:
    with path.open("rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            return None
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            match = _BANNER.search(data)
            return match.group(1).decode(errors="replace") if match else None


def _bzimage_header_release(data: bytes) -> Optional[str]:
    offset = struct.unpack_from("<H", data, 0x20E)[0]
    if not offset:
        return None
    start = offset + 0x200
    text = data[start : start + 256].split(b"\0", 1)[0].decode(errors="replace").split()
    return text[0] if text else None


def kernel_release(kernel: KernelFile, proper: Optional[bytes] = None) -> Optional[str]:
    """The release (``uname -r``) the kernel reports: the bzImage header's version string, else the
    ``Linux version`` banner in the kernel proper. None when neither is there."""
    if kernel.format == "bzImage":
        with kernel.path.open("rb") as stream:
            return _bzimage_header_release(stream.read(_SETUP_MAX_BYTES))
    if kernel.format in ("Image", "vmlinux") and proper is None:
        return _banner_release(kernel.path)
    data = proper if proper is not None else kernel_proper(kernel)[0]
    match = _BANNER.search(data) if data is not None else None
    return match.group(1).decode(errors="replace") if match else None


# ------------------------------------------------------------------------------------------ decompression


def _gunzip(data: bytes) -> bytes:
    decompressor = zlib.decompressobj(wbits=31)
    out = decompressor.decompress(data, _MAX_KERNEL_BYTES)
    if not decompressor.eof:
        raise ValueError("truncated gzip stream")
    return out


def _bunzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data, _MAX_KERNEL_BYTES)


def _unlzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_AUTO).decompress(data, _MAX_KERNEL_BYTES)


def _with_tool(tool: str, package: str) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        found = shutil.which(tool)
        if found is None:
            raise LookupError(f"{tool} is not installed (apt-get install {package})")
        result = subprocess.run([found, "-dc"], input=data, capture_output=True, check=False)
        if result.returncode != 0:
            raise ValueError(result.stderr.decode(errors="replace").strip() or f"{tool} -dc failed")
        return result.stdout

    return run


# (magic, name, decompressor): the compressions the kernel's build offers for the bzImage payload.
_COMPRESSIONS: tuple[tuple[bytes, str, Callable[[bytes], bytes]], ...] = (
    (b"\x1f\x8b", "gzip", _gunzip),
    (b"\xfd7zXZ\x00", "xz", _unlzma),
    (b"BZh", "bzip2", _bunzip2),
    (b"\x5d\x00\x00", "lzma", _unlzma),
    (b"\x02\x21\x4c\x18", "lz4", _with_tool("lz4", "lz4")),
    (b"\x28\xb5\x2f\xfd", "zstd", _with_tool("zstd", "zstd")),
    (b"\x89LZO", "lzo", _with_tool("lzop", "lzop")),
)


def _bzimage_payload(data: bytes) -> tuple[bytes, int]:
    """The compressed kernel inside a bzImage and the size it decompresses to (the build appends it)."""
    setup_sectors = data[0x1F1] or 4  # 0 means 4 in the boot protocol
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sectors + 1) * 512 + payload_offset
    payload = data[start : start + payload_length]
    if len(payload) < 8:
        return b"", 0
    return payload[:-4], struct.unpack_from("<I", payload, len(payload) - 4)[0]


def kernel_proper(kernel: KernelFile) -> tuple[Optional[bytes], str]:
    """The uncompressed kernel (an ELF vmlinux inside a bzImage, the Image inside Image.gz, the file itself
    otherwise), or None and why it could not be had (a compression this machine cannot undo)."""
    data = kernel.path.read_bytes()
    if kernel.format in ("Image", "vmlinux"):
        return data, ""
    if kernel.format == "Image.gz":
        try:
            return _gunzip(data), ""
        except (zlib.error, ValueError) as exc:
            return None, f"its gzip data does not decompress ({exc})"
    payload, size = _bzimage_payload(data)
    for magic, name, decompress in _COMPRESSIONS:
        if payload.startswith(magic):
            try:
                inner = decompress(payload)
            except LookupError as exc:
                return None, f"its kernel is {name}-compressed and {exc}"
            except (OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
                return None, f"its {name}-compressed kernel does not decompress ({exc})"
            if size and len(inner) != size:
                return None, f"its {name}-compressed kernel decompressed to {len(inner)} bytes, not {size}"
            return inner, ""
    return None, "its kernel is compressed in a way pytest-ktrace does not know"


def embedded_config(proper: bytes) -> Optional[str]:
    """The config the kernel carries with CONFIG_IKCONFIG (``IKCFG_ST`` followed by gzip data), or None."""
    start = proper.find(_IKCONFIG_START)
    while start >= 0:
        body = proper[start + len(_IKCONFIG_START) :]
        if body.startswith(_GZIP_MAGIC):
            try:
                return _gunzip(body).decode(errors="replace")
            except (zlib.error, ValueError):
                pass
        start = proper.find(_IKCONFIG_START, start + 1)
    return None


# ------------------------------------------------------------------------------------------------ booting


def _elf_segments(elf: bytes) -> list[tuple[int, int, int, int, int]]:
    """(p_type, p_offset, p_paddr, p_filesz, p_memsz) of a 64-bit little-endian ELF's program headers."""
    e_phoff = struct.unpack_from("<Q", elf, 32)[0]
    e_phentsize, e_phnum = struct.unpack_from("<HH", elf, 54)
    segments = []
    for index in range(e_phnum):
        base = e_phoff + index * e_phentsize
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from("<IIQQQQQ", elf, base)
        segments.append((p_type, p_offset, p_paddr, p_filesz, p_memsz))
    return segments


def _has_pvh_note(elf: bytes) -> bool:
    for p_type, offset, _paddr, filesz, _memsz in _elf_segments(elf):
        if p_type != _PT_NOTE:
            continue
        position, end = offset, offset + filesz
        while position + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, position)
            name = elf[position + 12 : position + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            position += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _flat_image(elf: bytes) -> bytes:
    """An arm64 vmlinux laid out as its Image (what ``objcopy -O binary`` makes): the loadable segments' file
    contents at their offsets from the lowest one."""
    loads = [(paddr, offset, filesz) for p_type, offset, paddr, filesz, _ in _elf_segments(elf) if p_type == _PT_LOAD]
    loads = [load for load in loads if load[2]]
    if not loads:
        return b""
    base = min(paddr for paddr, _, _ in loads)
    image = bytearray(max(paddr - base + filesz for paddr, _, filesz in loads))
    for paddr, offset, filesz in loads:
        image[paddr - base : paddr - base + filesz] = elf[offset : offset + filesz]
    return bytes(image)


def bootable_kernel(kernel: KernelFile, proper: Optional[bytes]) -> BootableKernel:
    """The form qemu boots: on x86_64 the PVH ELF inside a bzImage when there is one (no firmware or
    decompression under emulation: half the boot time), else the bzImage; on arm64 the raw Image."""
    path = kernel.path
    if kernel.arch == "x86_64":
        if proper is not None and proper.startswith(_ELF_MAGIC) and _has_pvh_note(proper):
            return BootableKernel(proper, "pvh-elf")
        if kernel.format == "vmlinux":
            raise _error(
                path,
                "is an x86 vmlinux without a PVH entry note (CONFIG_PVH=y), which qemu cannot boot directly; "
                "boot arch/x86/boot/bzImage instead",
            )
        return BootableKernel(path.read_bytes(), "bzImage")
    if proper is None:
        raise _error(path, "holds no arm64 kernel that can be read")
    if kernel.format == "vmlinux":
        proper = _flat_image(proper)
        if proper[_ARM64_MAGIC_OFFSET : _ARM64_MAGIC_OFFSET + 4] != _ARM64_MAGIC:
            raise _error(
                path, "has loadable segments that hold no arm64 Image header; boot arch/arm64/boot/Image instead"
            )
    return BootableKernel(proper, "Image")
