"""The kernel ``lib/`` helpers the fake's parsers share, each imitating one kernel function.

The kernel parses bytes.  A kernel string is given here either as ``bytes`` or as a "byte string": a ``str`` with
one Latin-1 character per byte (:func:`to_kernel_bytes` makes one of text read from tracefs).  The ctype tests take
a character of a byte string or a byte value; the number parsers take byte strings; :func:`bitmap_parselist` and
:func:`glob_match` take ``bytes``.
"""

from __future__ import annotations

import re
from typing import Optional, Union

__all__ = [
    "KERNEL_SPACE",
    "KstrtoxError",
    "argv_split",
    "bitmap_parselist",
    "from_kernel_bytes",
    "glob_match",
    "isalnum",
    "isalpha",
    "isdigit",
    "isspace",
    "isxdigit",
    "kstrtoll",
    "kstrtouint",
    "kstrtoul_from_user",
    "kstrtoull",
    "simple_strtoul",
    "to_kernel_bytes",
]

Char = Union[str, int]  # one character of a byte string, or one byte

# --------------------------------------------------------------------------------------------------------------
# Byte strings
# --------------------------------------------------------------------------------------------------------------


def to_kernel_bytes(text: str) -> str:
    """Text as tracefs read it (UTF-8, raw bytes surrogateescape'd) -> one character per byte, as the kernel's
    parsers see it."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def from_kernel_bytes(text: str) -> str:
    """The inverse of :func:`to_kernel_bytes`."""
    return text.encode("latin-1").decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------------------------------------
# ctype (lib/ctype.c: Latin-1, so byte 0xA0 is a space and 0xC0-0xFF but the two signs 0xD7/0xF7 are letters)
# --------------------------------------------------------------------------------------------------------------

#: The characters isspace() accepts, as a string (for ``str.strip`` and regular expressions).
KERNEL_SPACE = " \t\n\v\f\r\xa0"

_SPACES = frozenset(map(ord, KERNEL_SPACE))
_DIGITS = frozenset(range(ord("0"), ord("9") + 1))
_ASCII_LETTERS = frozenset(range(ord("A"), ord("Z") + 1)) | frozenset(range(ord("a"), ord("z") + 1))
_LETTERS = _ASCII_LETTERS | (frozenset(range(0xC0, 0x100)) - {0xD7, 0xF7})
_HEX_DIGITS = _DIGITS | frozenset(map(ord, "abcdefABCDEF"))


def _code(char: Char) -> int:
    return char if isinstance(char, int) else ord(char)


def isspace(char: Char) -> bool:
    """isspace() of lib/ctype.c."""
    return _code(char) in _SPACES


def isdigit(char: Char) -> bool:
    """isdigit() of lib/ctype.c."""
    return _code(char) in _DIGITS


def isxdigit(char: Char) -> bool:
    """isxdigit() of lib/ctype.c."""
    return _code(char) in _HEX_DIGITS


def isalpha(char: Char) -> bool:
    """isalpha() of lib/ctype.c."""
    return _code(char) in _LETTERS


def isalnum(char: Char) -> bool:
    """isalnum() of lib/ctype.c."""
    code = _code(char)
    return code in _LETTERS or code in _DIGITS


# --------------------------------------------------------------------------------------------------------------
# Numbers (lib/kstrtox.c, lib/vsprintf.c)
# --------------------------------------------------------------------------------------------------------------

_U64_LIMIT = 1 << 64
_KSTRTOUL_FROM_USER_BYTES = 66  # sign, 64 binary digits and a newline: what kstrtoul_from_user() copies


class KstrtoxError(ValueError):
    """A kstrto*() failure; ``errno`` is the errno name it returns (``"EINVAL"``, ``"ERANGE"``)."""

    def __init__(self, errno: str) -> None:
        super().__init__(errno)
        self.errno = errno


def _at(text: str, index: int) -> str:
    """``text[index]`` with C semantics: reading at the terminating NUL gives ``"\\0"``."""
    return text[index] if index < len(text) else "\0"


def _has_hex_prefix(text: str) -> bool:
    return _at(text, 0) == "0" and chr(ord(_at(text, 1)) | 0x20) == "x"


def _fixup_radix(text: str, base: int) -> tuple[int, int]:
    """_parse_integer_fixup_radix(): (base, index of the first digit); base 0 picks 16, 8 or 10 by the prefix."""
    if base == 0 and _at(text, 0) != "0":
        base = 10
    elif base == 0:
        base = 16 if _has_hex_prefix(text) and isxdigit(_at(text, 2)) else 8
    return base, 2 if base == 16 and _has_hex_prefix(text) else 0


def _digit_value(char: str) -> int:
    if isdigit(char):
        return ord(char) - ord("0")
    lower = chr(ord(char) | 0x20)
    if "a" <= lower <= "f":
        return ord(lower) - ord("a") + 10
    return 99  # stops any base


def _parse_digits(text: str, start: int, base: int) -> tuple[int, int, bool]:
    """_parse_integer_limit(): (value mod 2**64, index after the digits, whether it overflowed)."""
    value = 0
    index = start
    overflow = False
    while index < len(text):
        digit = _digit_value(text[index])
        if digit >= base:
            break
        value = value * base + digit
        if value >= _U64_LIMIT:
            overflow = True
            value &= _U64_LIMIT - 1
        index += 1
    return value, index, overflow


def _kstrtoull_unsigned(text: str, base: int) -> int:
    """_kstrtoull(): an overflow is ERANGE even when garbage follows; one trailing newline is allowed."""
    base, start = _fixup_radix(text, base)
    value, end, overflow = _parse_digits(text, start, base)
    if overflow:
        raise KstrtoxError("ERANGE")
    if end == start:
        raise KstrtoxError("EINVAL")
    if _at(text, end) == "\n":
        end += 1
    if end != len(text):
        raise KstrtoxError("EINVAL")
    return value


def kstrtoull(text: str, base: int = 0) -> int:
    """kstrtoull(): an unsigned 64-bit number, a leading ``+`` allowed; raises :class:`KstrtoxError`."""
    return _kstrtoull_unsigned(text[1:] if text.startswith("+") else text, base)


def kstrtoll(text: str, base: int = 0) -> int:
    """kstrtoll(): a signed 64-bit number (``-`` is not followed by another sign); raises :class:`KstrtoxError`."""
    if text.startswith("-"):
        value = _kstrtoull_unsigned(text[1:], base)
        if value > 1 << 63:
            raise KstrtoxError("ERANGE")
        return -value
    value = kstrtoull(text, base)
    if value >= 1 << 63:
        raise KstrtoxError("ERANGE")
    return value


def kstrtouint(text: str, base: int = 0) -> int:
    """kstrtouint(): an unsigned 32-bit number; raises :class:`KstrtoxError`."""
    value = kstrtoull(text, base)
    if value > 0xFFFFFFFF:
        raise KstrtoxError("ERANGE")
    return value


def simple_strtoul(text: str, start: int) -> tuple[int, int]:
    """simple_strtoul(text + start, &tail, 0): never fails; returns (value, tail index)."""
    base, skip = _fixup_radix(text[start:], 0)
    value, end, _ = _parse_digits(text, start + skip, base)
    return value, end


def kstrtoul_from_user(data: str, base: int = 10) -> int:
    """kstrtoul_from_user(): the number in a write of ``data`` (only its first 66 bytes are looked at, up to a
    NUL); raises :class:`KstrtoxError`.

    One difference from the kernel is kept for now: digits that overflow and are followed by other characters
    are EINVAL here, ERANGE in the kernel (:func:`kstrtoull` checks the overflow first, as the kernel does).
    """
    raw = data.encode("utf-8", "surrogateescape")[:_KSTRTOUL_FROM_USER_BYTES].split(b"\0", 1)[0]
    text = raw.decode("latin-1")
    if text.endswith("\n"):
        text = text[:-1]
    if text.startswith("+"):
        text = text[1:]
    if base == 0:
        if text[:2].lower() == "0x" and len(text) > 2:
            base, text = 16, text[2:]
        elif text.startswith("0") and len(text) > 1:
            base, text = 8, text[1:]
        else:
            base = 10
    digits = "0123456789abcdef"[:base]
    if not text or any(char.lower() not in digits for char in text):
        raise KstrtoxError("EINVAL")
    value = int(text, base)
    if value >= _U64_LIMIT:
        raise KstrtoxError("ERANGE")
    return value


# --------------------------------------------------------------------------------------------------------------
# Words (lib/argv_split.c)
# --------------------------------------------------------------------------------------------------------------

_SPACE_RUN = re.compile(f"[{KERNEL_SPACE}]+")


def argv_split(text: str) -> list[str]:
    """argv_split(): the words of a byte string, separated by isspace() runs."""
    return [word for word in _SPACE_RUN.split(text) if word]


# --------------------------------------------------------------------------------------------------------------
# CPU lists (lib/bitmap-str.c)
# --------------------------------------------------------------------------------------------------------------


def _cpulist_ends(text: bytes, index: int) -> bool:
    """end_of_str(): the list ends at its end or at a newline."""
    return index >= len(text) or text[index] == 0x0A


def _cpulist_region_ends(text: bytes, index: int) -> bool:
    """end_of_region(): a region ends where the list does, at a space or at a comma."""
    return _cpulist_ends(text, index) or isspace(text[index]) or text[index] == ord(",")


def _cpulist_number(text: bytes, index: int, last_cpu: int) -> Optional[tuple[int, int]]:
    """bitmap_getnum(): (a decimal number or ``N`` for the last CPU, the index after it), None if there is none."""
    if text[index : index + 1] == b"N":
        return last_cpu, index + 1
    start = index
    value = 0
    while index < len(text) and isdigit(text[index]):
        value = value * 10 + text[index] - 0x30
        index += 1
    if index == start or value > 0xFFFFFFFF:
        return None
    return value, index


def _cpulist_range(text: bytes, index: int, last_cpu: int) -> Optional[tuple[int, int, int]]:
    """The ``all``, ``A`` or ``A-B`` of a region: (first CPU, last CPU, the index after it), None if invalid."""
    if text[index : index + 3].lower() == b"all":
        return 0, last_cpu, index + 3
    parsed = _cpulist_number(text, index, last_cpu)
    if parsed is None:
        return None
    first, index = parsed
    if _cpulist_region_ends(text, index):
        return first, first, index
    if text[index] != ord("-"):
        return None
    parsed = _cpulist_number(text, index + 1, last_cpu)
    if parsed is None:
        return None
    return first, parsed[0], parsed[1]


def _cpulist_groups(text: bytes, index: int, last_cpu: int) -> Optional[tuple[int, int, int]]:
    """The ``:USED/GROUP`` suffix of a region after its range: (used CPUs, group size, the index after it),
    None if invalid; without one the whole range is a single group."""
    if text[index] != ord(":"):
        return None
    used = _cpulist_number(text, index + 1, last_cpu)
    if used is None or text[used[1] : used[1] + 1] != b"/":
        return None
    group = _cpulist_number(text, used[1] + 1, last_cpu)
    if group is None:
        return None
    return used[0], group[0], group[1]


def bitmap_parselist(text: bytes, nr_cpu_ids: int) -> Optional[frozenset[int]]:
    """bitmap_parselist(): the CPUs of a cpulist such as ``0-3,8,10-15:2/4``, or None when it is invalid."""
    cpus: set[int] = set()
    last_cpu = nr_cpu_ids - 1
    index = 0
    while True:
        while index < len(text) and (isspace(text[index]) or text[index] == ord(",")):
            index += 1
        if _cpulist_ends(text, index):
            return frozenset(cpus)
        cpu_range = _cpulist_range(text, index, last_cpu)
        if cpu_range is None:
            return None
        first, last, index = cpu_range
        if _cpulist_region_ends(text, index):
            used_length = group_length = last + 1
        else:
            groups = _cpulist_groups(text, index, last_cpu)
            if groups is None:
                return None
            used_length, group_length, index = groups
        if first > last or group_length == 0 or used_length > group_length or last >= nr_cpu_ids:
            return None
        for group_start in range(first, last + 1, group_length):
            cpus.update(range(group_start, min(group_start + used_length, last + 1)))
        if _cpulist_ends(text, index):
            return frozenset(cpus)


# --------------------------------------------------------------------------------------------------------------
# Globs (lib/glob.c)
# --------------------------------------------------------------------------------------------------------------


def _pattern_at(pattern: bytes, index: int) -> int:
    return pattern[index] if index < len(pattern) else 0


def _glob_class(pattern: bytes, index: int, char: int) -> Optional[tuple[bool, int]]:
    """The ``[...]``/``[!...]`` class whose body starts at ``index``: (whether ``char`` is in it, the index after
    its ``]``), or None when the pattern ends inside it (its ``[`` is then an ordinary character)."""
    inverted = _pattern_at(pattern, index) == ord("!")
    index += int(inverted)
    member = _pattern_at(pattern, index)
    index += 1
    in_class = False
    while True:
        if member == 0:
            return None
        upper = member
        if _pattern_at(pattern, index) == ord("-") and _pattern_at(pattern, index + 1) != ord("]"):
            upper = _pattern_at(pattern, index + 1)
            if upper == 0:
                return None
            index += 2
        in_class |= member <= char <= upper
        member = _pattern_at(pattern, index)
        index += 1
        if member == ord("]"):
            return in_class != inverted, index


def glob_match(pattern: bytes, text: bytes) -> bool:
    """glob_match(): anchored ``*``, ``?``, ``[a-z]``/``[!...]`` and ``\\`` escapes, iteratively."""
    pattern_index = text_index = 0
    retry_pattern: Optional[int] = None
    retry_text = 0
    while True:
        char = text[text_index] if text_index < len(text) else 0
        text_index += 1
        wanted = _pattern_at(pattern, pattern_index)
        pattern_index += 1
        if wanted == ord("?"):
            if char == 0:
                return False
            continue
        if wanted == ord("*"):
            if _pattern_at(pattern, pattern_index) == 0:
                return True
            retry_pattern = pattern_index
            text_index -= 1
            retry_text = text_index
            continue
        literal = wanted
        if wanted == ord("["):
            if char == 0:  # a class never matches the end of the string
                return False
            in_class = _glob_class(pattern, pattern_index, char)
            if in_class is not None and in_class[0]:
                pattern_index = in_class[1]
                continue
            matched_here = in_class is None and char == literal
        else:
            if wanted == ord("\\"):
                literal = _pattern_at(pattern, pattern_index)
                pattern_index += 1
            matched_here = char == literal
        if matched_here:
            if literal == 0:
                return True
            continue
        if char == 0 or retry_pattern is None:
            return False
        pattern_index = retry_pattern
        retry_text += 1
        text_index = retry_text
