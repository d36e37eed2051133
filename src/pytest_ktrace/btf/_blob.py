"""The BTF parser: :class:`BtfTypes` over one blob (``/sys/kernel/btf/vmlinux``, a module's split BTF, a ``.BTF``
ELF section), and :class:`FuncInfo`, what a function lookup returns.

Design, for speed on a ~130k-type vmlinux in pure Python:

* loading copies the type section into an ``array`` of 32-bit words (byte-swapped once if the blob's endianness
  is not the host's) and walks it once to record where each record starts: one list append per type, no
  decoding (~60 ms for 6.18's vmlinux);
* a type is decoded into a :mod:`.kinds` object the first time it is asked for, then cached;
* the name -> ids index is built on the first lookup by name (one pass, names decoded then), so a process that
  never asks for a name never pays for it; lookups are then dict hits;
* per-struct member tables (anonymous struct/union members flattened, like C name lookup) are built on first use.

Split BTF (``/sys/kernel/btf/<module>``, a module's ``.BTF``): pass ``base=`` the vmlinux :class:`BtfTypes`; type
ids continue after the base's last id and string offsets after the base's string section, exactly as the kernel
(``btf_parse_module``) and libbpf (``btf__new_split``) number them. Lookups in a split BTF search its own types
first, then the base's.

Malformed input never escapes as IndexError/struct.error: the header and section bounds are checked on load, the
walk checks record bounds and kinds, and decoding checks every type id and string offset it follows, raising
:class:`~.errors.BtfFormatError`.
"""

from __future__ import annotations

import difflib
import struct
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from .._errors import hide_for_ktrace_errors
from ._errors import BtfError, BtfFormatError, BtfUnavailable, UnknownFunction, UnknownParameter, UnknownType
from ._kinds import (
    EXTRA_WORDS,
    KIND_KEYWORDS,
    WORDS_PER_VLEN,
    Array,
    BtfType,
    Composite,
    Datasec,
    DeclTag,
    Enum,
    Float,
    Func,
    FuncProto,
    Fwd,
    Int,
    Kind,
    Member,
    Modifier,
    Param,
    Ptr,
    Typedef,
    Var,
    Void,
    kind_of,
)
from ._syntax import split_path

__all__ = ["BTF_MAGIC", "HEADER_SIZE", "MAX_DEPTH", "BtfTypes", "FuncInfo", "Location"]

__tracebackhide__ = hide_for_ktrace_errors

BTF_MAGIC = 0xEB9F
HEADER_SIZE = 24  # struct btf_header as of version 1
#: Longest chain of typedef/modifier hops, nested anonymous members or array dimensions followed before the blob
#: is declared looping. Real kernels need < 10.
MAX_DEPTH = 64
_NR_KINDS = len(EXTRA_WORDS)

# an array typecode whose items are exactly 4 bytes ('I' on every Linux ABI; 'L' as a fallback)
_WORD = next(code for code in ("I", "L", "H") if array(code).itemsize == 4)

BytesLike = Union[bytes, bytearray, memoryview]

_LINKAGE = {0: "static", 1: "global", 2: "extern"}


@dataclass(frozen=True)
class Location:
    """Where a member path (``irq_data.irq``, ``cb[3]``) lies inside a type: ``bit_offset`` from its start,
    ``bitfield_size`` (0 unless a bitfield) and the member's type id ``type``."""

    bit_offset: int
    bitfield_size: int
    type: int

    @property
    def byte_offset(self) -> int:
        return self.bit_offset // 8


@dataclass(frozen=True)
class FuncInfo:
    """A function found by name: ``BTF_KIND_FUNC`` ``id`` and its ``BTF_KIND_FUNC_PROTO`` ``proto_id``.

    ``params`` in declaration order, ``ret`` the return type id (0 is void), ``linkage`` ``static``/``global``/
    ``extern``. ``btf`` is the :class:`BtfTypes` the ids belong to.
    """

    name: str
    id: int
    proto_id: int
    params: tuple[Param, ...]
    ret: int
    variadic: bool
    linkage: str
    btf: BtfTypes = field(repr=False, compare=False)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(param.name for param in self.params)

    @property
    def returns_void(self) -> bool:
        return self.btf.resolve(self.ret).kind is Kind.UNKN

    def param(self, name: str) -> Param:
        """The parameter called ``name``; :class:`~.errors.UnknownParameter` lists the real ones if none is."""
        for param in self.params:
            if param.name == name:
                return param
        raise UnknownParameter(
            f"{self.name}() has no parameter {name!r}{_did_you_mean(name, self.param_names)}; "
            f"its parameters: {', '.join(self.param_names) or '(none)'}\n  {self.signature()}",
            expr=name,
        )

    def signature(self) -> str:
        """The C declaration, e.g. ``int __setup_irq(unsigned int irq, struct irq_desc *desc, struct irqaction
        *new)``."""
        return self.btf.type_name(self.id)


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


class BtfTypes:
    """The types of one BTF blob (plus its ``base`` for split BTF). Build with :meth:`load` or :meth:`from_file`.

    Type ids are ``int``; :meth:`type` decodes one. Lookups by name: :meth:`func`, :meth:`struct`, :meth:`find`.
    Type algebra: :meth:`resolve` (skip typedefs and qualifiers, complete forward declarations), :meth:`sizeof`,
    :meth:`members`, :meth:`member`, :meth:`locate`, :meth:`type_name`.
    """

    def __init__(
        self,
        *,
        words: array[int],
        offsets: list[int],
        strings: bytes,
        base: Optional[BtfTypes],
        big_endian: bool,
        name: str,
    ) -> None:
        # use load(); the constructor trusts its arguments
        self._words = words
        self._offsets = offsets
        self._strings = strings
        self.base = base
        self.big_endian = big_endian
        self.name = name
        self.start_id: int = base.end_id if base is not None else 1  # first id defined by this blob
        self.end_id: int = self.start_id + len(offsets)  # one past the last id
        self.start_str: int = base.end_str if base is not None else 0
        self.end_str: int = self.start_str + len(strings)
        self._types: dict[int, BtfType] = {}
        self._resolved: dict[int, BtfType] = {}
        self._string_cache: dict[int, str] = {}
        self._first: Optional[dict[str, int]] = None  # name -> first own id with it
        self._more: dict[str, list[int]] = {}  # name -> every own id with it, when there are several
        self._member_tables: dict[int, dict[str, Member]] = {}
        self._funcs: dict[str, FuncInfo] = {}
        self._kind_names: dict[frozenset[Kind], list[str]] = {}
        self._ptr_size: Optional[int] = None

    # ---------------------------------------------------------------------------------------------------------
    # loading
    # ---------------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, data: BytesLike, base: Optional[BtfTypes] = None, *, name: str = "") -> BtfTypes:
        """Parse a raw BTF blob (``/sys/kernel/btf/*`` contents or a ``.BTF`` section). ``base`` is the vmlinux
        BTF when ``data`` is a module's split BTF; ``name`` labels errors (``vmlinux``, ``e1000``)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BtfFormatError(f"BTF data must be bytes, got {type(data).__name__}")
        if base is not None and not isinstance(base, BtfTypes):
            raise BtfFormatError(f"base must be a BtfTypes (the vmlinux BTF), got {type(base).__name__}")
        if not isinstance(name, str):
            raise BtfFormatError(f"name must be a str, got {type(name).__name__}")
        blob = bytes(data)
        what = f"BTF {name!r}" if name else "BTF"
        if blob[:2] == b"\x9f\xeb":
            endian = "<"
        elif blob[:2] == b"\xeb\x9f":
            endian = ">"
        else:
            raise BtfFormatError(
                f"{what}: not BTF ({len(blob)} bytes starting with {blob[:4].hex() or 'nothing'}; BTF starts with "
                "the magic 0xeb9f)"
            )
        if len(blob) < HEADER_SIZE:
            raise BtfFormatError(
                f"{what}: {len(blob)} bytes is too short for a BTF header ({HEADER_SIZE} bytes; truncated?)"
            )
        if blob[2] != 1:
            raise BtfFormatError(f"{what}: BTF version {blob[2]}, this parser knows version 1")
        (hdr_len,) = struct.unpack_from(endian + "I", blob, 4)
        if hdr_len < HEADER_SIZE or hdr_len > len(blob):
            raise BtfFormatError(
                f"{what}: header length {hdr_len} is impossible (at least {HEADER_SIZE}, blob is {len(blob)} bytes)"
            )
        type_off, type_len, str_off, str_len = struct.unpack_from(endian + "IIII", blob, 8)
        type_start, str_start = hdr_len + type_off, hdr_len + str_off
        for section, start, length in (("type", type_start, type_len), ("string", str_start, str_len)):
            if start + length > len(blob):
                raise BtfFormatError(
                    f"{what}: {section} section [{start}, {start + length}) runs past the end of the "
                    f"{len(blob)}-byte blob (truncated?)"
                )
        if type_off % 4 or type_len % 4:
            raise BtfFormatError(f"{what}: type section offset {type_off}/length {type_len} not 4-byte aligned")
        strings = blob[str_start : str_start + str_len]
        if strings and strings[-1] != 0:
            raise BtfFormatError(f"{what}: the string section does not end with a NUL byte (truncated?)")
        if base is None and strings[:1] != b"\0":
            raise BtfFormatError(
                f"{what}: the string section does not start with the empty string: this looks like a module's "
                "split BTF; load it with base=<the vmlinux BtfTypes>"
            )
        words: array[int] = array(_WORD)
        words.frombytes(blob[type_start : type_start + type_len])
        big_endian = endian == ">"
        if big_endian != (sys.byteorder == "big"):
            words.byteswap()
        offsets = cls._walk(words, what)
        return cls(words=words, offsets=offsets, strings=strings, base=base, big_endian=big_endian, name=name)

    @staticmethod
    def _walk(words: array[int], what: str) -> list[int]:
        """Where each type record starts, in words. The hot loop of load(): kept to table lookups and one append;
        bad kinds and truncation surface as IndexError and are diagnosed after the fact."""
        offsets: list[int] = []
        append = offsets.append
        extra, per_vlen = EXTRA_WORDS, WORDS_PER_VLEN
        total = len(words)
        pos = 0
        try:
            while pos < total:
                info = words[pos + 1]
                kind = (info >> 24) & 0x1F
                append(pos)
                pos += 3 + extra[kind] + per_vlen[kind] * (info & 0xFFFF)
        except IndexError:
            pass
        if pos != total:
            start = offsets[-1] if offsets else pos
            type_id = len(offsets)  # ids counted from this blob's first type, for the message
            if start + 1 < total and (words[start + 1] >> 24) & 0x1F >= _NR_KINDS:
                raise BtfFormatError(
                    f"{what}: type #{type_id} at byte {start * 4} of the type section has unknown kind "
                    f"{(words[start + 1] >> 24) & 0x1F} (this parser knows kinds 0..{_NR_KINDS - 1})"
                )
            raise BtfFormatError(
                f"{what}: type #{type_id} at byte {start * 4} runs past the end of the {total * 4}-byte type section "
                "(truncated?)"
            )
        return offsets

    @classmethod
    def from_file(cls, path: Union[str, Path], base: Optional[BtfTypes] = None, *, name: str = "") -> BtfTypes:
        """:meth:`load` the raw BTF file at ``path`` (``/sys/kernel/btf/vmlinux``); :class:`~.errors.BtfUnavailable`
        if it does not exist."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BtfUnavailable.for_target(
                "this kernel", f"{path} does not exist (kernel built without CONFIG_DEBUG_INFO_BTF?)"
            ) from None
        except OSError as exc:
            raise BtfUnavailable.for_target("this kernel", f"cannot read {path}: {exc.strerror or exc}") from None
        return cls.load(data, base, name=name or path.name)

    # ---------------------------------------------------------------------------------------------------------
    # raw access
    # ---------------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of types this blob defines (not counting void or the base's)."""
        return len(self._offsets)

    def __repr__(self) -> str:
        split = f", base={self.base.name or 'BTF'!r}" if self.base is not None else ""
        return f"<BtfTypes {self.name or 'BTF'!r}: ids {self.start_id}..{self.end_id - 1}{split}>"

    @property
    def own_ids(self) -> range:
        """The type ids this blob defines."""
        return range(self.start_id, self.end_id)

    def _check_id(self, type_id: int) -> None:
        if type(type_id) is not int:  # bool is an int subclass but never a type id
            raise BtfError(f"type id must be an int, got {type(type_id).__name__} {type_id!r}")
        if not 0 <= type_id < self.end_id:
            raise BtfFormatError(f"{self._what()}: type id {type_id} is out of range (ids 0..{self.end_id - 1})")

    def _what(self) -> str:
        return f"BTF {self.name!r}" if self.name else "BTF"

    def string(self, offset: int) -> str:
        """The string at ``offset`` in the (base + own) string section."""
        if offset < self.start_str:
            assert self.base is not None  # start_str is 0 without a base
            return self.base.string(offset)
        cached = self._string_cache.get(offset)
        if cached is not None:
            return cached
        relative = offset - self.start_str
        strings = self._strings
        if relative >= len(strings):
            raise BtfFormatError(
                f"{self._what()}: string offset {offset} is past the string section (ends at {self.end_str})"
            )
        end = strings.find(b"\0", relative)  # found: load() checked the section ends with NUL
        text = strings[relative:end].decode("utf-8", "replace")
        self._string_cache[offset] = text
        return text

    def raw_kind(self, type_id: int) -> int:
        """The kind number of ``type_id`` without decoding it (0 for void)."""
        self._check_id(type_id)
        if type_id < self.start_id:
            return self.base.raw_kind(type_id) if self.base is not None else 0
        return (self._words[self._offsets[type_id - self.start_id] + 1] >> 24) & 0x1F

    # ---------------------------------------------------------------------------------------------------------
    # decoding
    # ---------------------------------------------------------------------------------------------------------

    def type(self, type_id: int) -> BtfType:
        """The decoded type ``type_id`` (0 is :class:`~.kinds.Void`)."""
        cached = self._types.get(type_id)
        if cached is not None:
            return cached
        self._check_id(type_id)
        if type_id < self.start_id:
            return self.base.type(type_id) if self.base is not None else Void(0, Kind.UNKN, "void")
        decoded = self._decode(type_id)
        self._types[type_id] = decoded
        return decoded

    def _members(self, p: int, vlen: int, kflag: bool) -> tuple[Member, ...]:
        w = self._words
        members = []
        for i in range(p, p + 3 * vlen, 3):
            member_name = self.string(w[i]) if w[i] else ""
            member_type, offset = w[i + 1], w[i + 2]
            if kflag:  # bitfield size in the top 8 bits, bit offset in the low 24
                members.append(Member(member_name, member_type, offset & 0xFFFFFF, offset >> 24))
            else:
                members.append(Member(member_name, member_type, offset, self._old_style_bits(member_type)))
        old_style = [m for m in members if not kflag and m.bitfield_size]
        if old_style:  # pre-kind_flag bitfields: the int's own bit offset adds to the member's
            members = [
                Member(m.name, m.type, m.bit_offset + self._int_bit_offset(m.type), m.bitfield_size)
                if m.bitfield_size
                else m
                for m in members
            ]
        return tuple(members)

    def _enumerators(self, kind: Kind, p: int, vlen: int, kflag: bool) -> tuple[tuple[str, int], ...]:
        w = self._words
        values = []
        if kind is Kind.ENUM:
            for i in range(p, p + 2 * vlen, 2):
                value = w[i + 1]
                if kflag and value >= 1 << 31:
                    value -= 1 << 32
                values.append((self.string(w[i]), value))
        else:
            for i in range(p, p + 3 * vlen, 3):
                value = w[i + 1] | (w[i + 2] << 32)
                if kflag and value >= 1 << 63:
                    value -= 1 << 64
                values.append((self.string(w[i]), value))
        return tuple(values)

    def _params(self, p: int, vlen: int) -> tuple[tuple[Param, ...], bool]:
        w = self._words
        params: list[Param] = []
        for index, i in enumerate(range(p, p + 2 * vlen, 2)):
            if w[i] == 0 and w[i + 1] == 0 and index == vlen - 1:
                return tuple(params), True  # the "..." marker
            params.append(Param(index, self.string(w[i]) if w[i] else "", w[i + 1]))
        return tuple(params), False

    def _decode(self, tid: int) -> BtfType:
        w = self._words
        pos = self._offsets[tid - self.start_id]
        name_off, info, size_or_type = w[pos], w[pos + 1], w[pos + 2]
        kind = kind_of((info >> 24) & 0x1F)
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        name = self.string(name_off) if name_off else ""
        p = pos + 3
        if kind is None or kind is Kind.UNKN:
            raise BtfFormatError(f"{self._what()}: type id {tid} has invalid kind {(info >> 24) & 0x1F}")
        if kind is Kind.INT:
            value = w[p]
            return Int(tid, kind, name, size_or_type, value & 0xFF, (value >> 16) & 0xFF, (value >> 24) & 0x0F)
        if kind is Kind.PTR:
            return Ptr(tid, kind, name, size_or_type)
        if kind is Kind.ARRAY:
            return Array(tid, kind, name, w[p], w[p + 1], w[p + 2])
        if kind in (Kind.STRUCT, Kind.UNION):
            return Composite(tid, kind, name, size_or_type, self._members(p, vlen, kflag))
        if kind in (Kind.ENUM, Kind.ENUM64):
            return Enum(tid, kind, name, size_or_type, kflag, self._enumerators(kind, p, vlen, kflag))
        if kind is Kind.FWD:
            return Fwd(tid, kind, name, kflag)
        if kind is Kind.TYPEDEF:
            return Typedef(tid, kind, name, size_or_type)
        if kind in (Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG):
            return Modifier(tid, kind, name, size_or_type)
        if kind is Kind.FUNC:
            return Func(tid, kind, name, size_or_type, vlen)
        if kind is Kind.FUNC_PROTO:
            params, variadic = self._params(p, vlen)
            return FuncProto(tid, kind, name, size_or_type, params, variadic)
        if kind is Kind.VAR:
            return Var(tid, kind, name, size_or_type, w[p])
        if kind is Kind.DATASEC:
            entries = tuple((w[i], w[i + 1], w[i + 2]) for i in range(p, p + 3 * vlen, 3))
            return Datasec(tid, kind, name, size_or_type, entries)
        if kind is Kind.FLOAT:
            return Float(tid, kind, name, size_or_type)
        # DECL_TAG: the only kind left
        component = w[p] - (1 << 32) if w[p] >= 1 << 31 else w[p]
        return DeclTag(tid, kind, name, size_or_type, component)

    def _old_style_bits(self, type_id: int) -> int:
        """For a member of a struct without kind_flag: its bitfield width if its type is an INT narrower than its
        size or at a bit offset (the pre-kind_flag encoding), else 0. Peeks at the raw words, no decoding."""
        if not self.start_id <= type_id < self.end_id:
            return self.base._old_style_bits(type_id) if self.base is not None and type_id > 0 else 0
        pos = self._offsets[type_id - self.start_id]
        if (self._words[pos + 1] >> 24) & 0x1F != Kind.INT:
            return 0
        value, size = self._words[pos + 3], self._words[pos + 2]
        bits = value & 0xFF
        return bits if bits != size * 8 or (value >> 16) & 0xFF else 0

    def _int_bit_offset(self, type_id: int) -> int:
        int_type = self.type(type_id)
        return int_type.bit_offset if isinstance(int_type, Int) else 0

    # ---------------------------------------------------------------------------------------------------------
    # names
    # ---------------------------------------------------------------------------------------------------------

    def _index(self) -> dict[str, int]:
        if self._first is None:
            first: dict[str, int] = {}
            more = self._more
            w, strings, cache = self._words, self._strings, self._string_cache
            start_str = self.start_str
            tid = self.start_id
            for pos in self._offsets:
                name_off = w[pos]
                if name_off and (w[pos + 1] >> 24) & 0x1F not in (Kind.DECL_TAG, Kind.TYPE_TAG):
                    name = cache.get(name_off)
                    if name is None:
                        if start_str <= name_off < start_str + len(strings):
                            rel = name_off - start_str
                            name = strings[rel : strings.find(b"\0", rel)].decode("utf-8", "replace")
                            cache[name_off] = name
                        else:
                            name = self.string(name_off)  # the base's, or a BtfFormatError
                    seen = first.setdefault(name, tid)
                    if seen != tid:
                        more.setdefault(name, [seen]).append(tid)
                tid += 1
            self._first = first
        return self._first

    def ids_named(self, name: str) -> list[int]:
        """Every type id called ``name`` (of any kind except tags), own ids first, then the base's."""
        index = self._index()
        ids = list(self._more.get(name, ())) or ([index[name]] if name in index else [])
        if self.base is not None:
            ids.extend(self.base.ids_named(name))
        return ids

    def names(self, kinds: Optional[Iterable[Kind]] = None) -> list[str]:
        """The distinct names of this blob's (and its base's) types of ``kinds`` (all kinds when None)."""
        key = frozenset(kinds) if kinds is not None else frozenset(Kind)
        cached = self._kind_names.get(key)
        if cached is None:
            own = [name for name, tid in self._index().items() if Kind(self.raw_kind(tid)) in key]
            # a name whose first id has another kind may still have an id of a wanted kind
            own_set = set(own)
            for name, ids in self._more.items():
                if name not in own_set and any(Kind(self.raw_kind(tid)) in key for tid in ids):
                    own.append(name)
            cached = own + (self.base.names(key) if self.base is not None else [])
            self._kind_names[key] = cached
        return cached

    def find(self, name: str, kinds: Optional[Iterable[Kind]] = None) -> list[BtfType]:
        """The types called ``name`` (of ``kinds``, or any), own first then the base's."""
        if not isinstance(name, str):
            raise BtfError(f"type name must be a str, got {type(name).__name__} {name!r}")
        wanted = frozenset(kinds) if kinds is not None else None
        return [self.type(tid) for tid in self.ids_named(name) if wanted is None or Kind(self.raw_kind(tid)) in wanted]

    def suggest(self, name: str, kinds: Iterable[Kind], limit: int = 5) -> list[str]:
        """Close matches of ``name`` among the names of ``kinds``: names containing it (shortest first), then
        difflib's closest. For error messages; ~0.1 s on vmlinux."""
        candidates = self.names(kinds)
        found: list[str] = []
        if len(name) >= 3:
            found = sorted((c for c in candidates if name in c and c != name), key=lambda c: (len(c), c))[:3]
        lengths = range(max(1, len(name) * 2 // 3), len(name) * 3 // 2 + 2)
        near = [c for c in candidates if len(c) in lengths]
        for match in difflib.get_close_matches(name, near, n=limit, cutoff=0.7):
            if match not in found:
                found.append(match)
        return found[:limit]

    # ---------------------------------------------------------------------------------------------------------
    # lookups
    # ---------------------------------------------------------------------------------------------------------

    def func(self, name: str) -> FuncInfo:
        """The function ``name`` (first ``BTF_KIND_FUNC`` of that name, like the kernel's own lookup); raises
        :class:`~.errors.UnknownFunction` with close matches."""
        cached = self._funcs.get(name) if isinstance(name, str) else None
        if cached is not None:
            return cached
        found = self.funcs(name)
        if not found:
            close = self.suggest(name, (Kind.FUNC,))
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise UnknownFunction(
                f"no function {name!r} in the BTF of {self.name or 'the kernel'}{hint}\n"
                "  (a function missing from BTF is inlined everywhere, written in assembly, or in a module "
                "whose BTF was not loaded)",
                name=name,
                close=close,
            )
        self._funcs[name] = found[0]
        return found[0]

    def funcs(self, name: str) -> list[FuncInfo]:
        """Every function called ``name`` (static functions of different files may share a name)."""
        if not isinstance(name, str):
            raise BtfError(f"function name must be a str, got {type(name).__name__} {name!r}")
        result = []
        for func in self.find(name, (Kind.FUNC,)):
            assert isinstance(func, Func)
            proto = self.type(func.proto)
            if not isinstance(proto, FuncProto):
                raise BtfFormatError(
                    f"{self._what()}: function {name!r} (id {func.id}) has prototype id {func.proto}, "
                    f"a {proto.kind_name}, not a func_proto"
                )
            result.append(
                FuncInfo(
                    name=name,
                    id=func.id,
                    proto_id=proto.id,
                    params=proto.params,
                    ret=proto.ret,
                    variadic=proto.variadic,
                    linkage=_LINKAGE.get(func.linkage, str(func.linkage)),
                    btf=self,
                )
            )
        return result

    def struct(self, name: str) -> Composite:
        """The struct or union ``name`` (``"irq_desc"``, ``"struct irq_desc"``, ``"union bpf_attr"``): the first
        complete definition; :class:`~.errors.UnknownType` if there is none (or only a forward declaration)."""
        if not isinstance(name, str):
            raise BtfError(f"struct name must be a str, got {type(name).__name__} {name!r}")
        kinds: tuple[Kind, ...] = (Kind.STRUCT, Kind.UNION)
        bare = name.strip()
        for keyword, kind in (("struct ", Kind.STRUCT), ("union ", Kind.UNION)):
            if bare.startswith(keyword):
                bare, kinds = bare[len(keyword) :].strip(), (kind,)
        for found in self.find(bare, kinds):
            assert isinstance(found, Composite)
            return found
        declared = self.find(bare, (Kind.FWD,))
        if declared:
            raise UnknownType(f"{name!r} is only forward-declared in the BTF of {self.name or 'the kernel'}", name=bare)
        close = self.suggest(bare, kinds)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise UnknownType(
            f"no struct or union {name!r} in the BTF of {self.name or 'the kernel'}{hint}", name=bare, close=close
        )

    # ---------------------------------------------------------------------------------------------------------
    # type algebra
    # ---------------------------------------------------------------------------------------------------------

    def resolve(self, type_id: int) -> BtfType:
        """``type_id`` with typedefs, const/volatile/restrict, type and decl tags skipped, and a forward
        declaration replaced by the full struct/union of that name when the BTF has one."""
        cached = self._resolved.get(type_id)
        if cached is not None:
            return cached
        current = self.type(type_id)
        for _ in range(MAX_DEPTH):
            if isinstance(current, (Typedef, Modifier, DeclTag)):
                current = self.type(current.target)
                continue
            if isinstance(current, Fwd) and current.name:
                kind = Kind.UNION if current.is_union else Kind.STRUCT
                complete = self.find(current.name, (kind,))
                if complete:
                    current = complete[0]
            self._resolved[type_id] = current
            return current
        raise BtfFormatError(
            f"{self._what()}: type id {type_id}: more than {MAX_DEPTH} typedef/qualifier hops (a loop?)"
        )

    @property
    def ptr_size(self) -> int:
        """Size of a pointer: the size of ``long`` in this BTF (what libbpf assumes too), 8 if it has none."""
        if self._ptr_size is None:
            if self.base is not None:
                self._ptr_size = self.base.ptr_size
            else:
                sizes = [t.size for t in self.find("long unsigned int", (Kind.INT,)) if isinstance(t, Int)]
                self._ptr_size = sizes[0] if sizes and sizes[0] in (4, 8) else 8
        return self._ptr_size

    def sizeof(self, type_id: int) -> int:
        """``sizeof`` the type, in bytes; :class:`~.errors.BtfError` for void, functions and incomplete types."""
        return self._sizeof(type_id, 0)

    def _sizeof(self, type_id: int, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise BtfFormatError(f"{self._what()}: type id {type_id}: arrays nested more than {MAX_DEPTH} deep")
        resolved = self.resolve(type_id)
        if isinstance(resolved, (Int, Enum, Composite, Float, Datasec)):
            return resolved.size
        if isinstance(resolved, Ptr):
            return self.ptr_size
        if isinstance(resolved, Array):
            return resolved.nelems * self._sizeof(resolved.elem, depth + 1)
        raise BtfError(f"{self.type_name(type_id)} has no size ({resolved.kind_name})")

    def members(self, type_id: int) -> tuple[Member, ...]:
        """The direct members of the struct/union ``type_id`` (resolved), anonymous ones included as they are."""
        resolved = self.resolve(type_id)
        if not isinstance(resolved, Composite):
            raise BtfError(f"{self.type_name(type_id)} is not a struct or union")
        return resolved.members

    def member_table(self, type_id: int) -> dict[str, Member]:
        """Every member reachable by name from the struct/union ``type_id``, as C finds them: the members of
        anonymous struct/union members included, with bit offsets from the start of ``type_id``."""
        resolved = self.resolve(type_id)
        if not isinstance(resolved, Composite):
            raise BtfError(f"{self.type_name(type_id)} is not a struct or union")
        table = self._member_tables.get(resolved.id)
        if table is None:
            table = {}
            self._flatten(resolved, 0, table, 0)
            self._member_tables[resolved.id] = table
        return table

    def _flatten(self, composite: Composite, base_bits: int, table: dict[str, Member], depth: int) -> None:
        if depth > MAX_DEPTH:
            raise BtfFormatError(
                f"{self._what()}: {composite.keyword} {composite.name or '(anonymous)'}: anonymous members nested "
                f"more than {MAX_DEPTH} deep (a loop?)"
            )
        for member in composite.members:
            if member.name:
                if member.name not in table:  # C forbids duplicates; keep the first like a compiler would
                    table[member.name] = (
                        member
                        if not base_bits
                        else Member(member.name, member.type, member.bit_offset + base_bits, member.bitfield_size)
                    )
                continue
            inner = self.resolve(member.type)
            if isinstance(inner, Composite):  # anonymous struct/union: its members are ours
                self._flatten(inner, base_bits + member.bit_offset, table, depth + 1)
            # else: unnamed bitfield padding (int :3;), nothing to find

    def member(self, type_id: int, name: str) -> Optional[Member]:
        """The member ``name`` of struct/union ``type_id`` (through anonymous members), or None."""
        return self.member_table(type_id).get(name)

    def locate(self, root: Union[int, str], path: str) -> Location:
        """Where ``path`` (members joined by ``.``, array indexes as ``[N]``: ``"irq_data.irq"``, ``"cb[3]"``)
        lies in ``root`` (a type id or a struct name). No pointers are followed: this is ``offsetof``."""
        type_id = self.struct(root).id if isinstance(root, str) else root
        bits, bitfield = 0, 0
        where = self.type_name(type_id)
        for op, operand in split_path(path):
            if bitfield:
                raise BtfError(f"{where} is a bitfield, it has no members or elements")
            resolved = self.resolve(type_id)
            if op == "[":
                if not isinstance(resolved, Array):
                    raise BtfError(f"{where} is {self.type_name(type_id)}, not an array")
                index = int(operand)
                bits += index * self.sizeof(resolved.elem) * 8
                type_id = resolved.elem
                where = f"{where}[{index}]"
                continue
            if op != ".":
                raise BtfError(f"locate() follows no pointers: {path!r} has '{op}'")
            if not isinstance(resolved, Composite):
                raise BtfError(f"{where} is {self.type_name(type_id)}, not a struct or union")
            found = self.member(type_id, operand)
            if found is None:
                raise BtfError(f"{self.type_name(type_id)} has no member {operand!r}")
            bits += found.bit_offset
            bitfield = found.bitfield_size
            type_id = found.type
            where = f"{where}.{operand}"
        return Location(bits, bitfield, type_id)

    # ---------------------------------------------------------------------------------------------------------
    # C spelling
    # ---------------------------------------------------------------------------------------------------------

    def type_name(self, type_id: int) -> str:
        """C spelling: ``unsigned int``, ``const char *``, ``struct irq_desc *``, ``char[16]``,
        ``irqreturn_t (*)(int, void *)``; a function id gives its declaration."""
        return self._declare(type_id, "", 0)

    def _declare(self, type_id: int, inner: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise BtfFormatError(f"{self._what()}: type id {type_id}: declarator nested more than {MAX_DEPTH} deep")
        t = self.type(type_id)
        if isinstance(t, Ptr):
            pointee = self._skip_qualifiers(t.target, depth)
            star = f"*{inner}"
            return self._declare(t.target, f"({star})" if isinstance(pointee, (Array, FuncProto)) else star, depth + 1)
        if isinstance(t, Array):
            return self._declare(t.elem, f"{inner}[{t.nelems}]", depth + 1)
        if isinstance(t, FuncProto):
            params = [self._declare(p.type, p.name, depth + 1) for p in t.params]
            if t.variadic:
                params.append("...")
            return self._declare(t.ret, f"{inner}({', '.join(params) or 'void'})", depth + 1)
        if isinstance(t, Func):
            return self._declare(t.proto, t.name, depth + 1)
        if isinstance(t, Modifier):
            if t.kind is Kind.TYPE_TAG:  # __rcu, __user: attributes, not part of the C spelling
                return self._declare(t.target, inner, depth + 1)
            keyword = KIND_KEYWORDS[t.kind]
            if isinstance(self._skip_qualifiers(t.target, depth), Ptr):
                return self._declare(t.target, f" {keyword}{' ' + inner if inner else ''}", depth + 1)
            return f"{keyword} {self._declare(t.target, inner, depth + 1)}"
        if isinstance(t, (Composite, Fwd)):
            base = f"{t.keyword} {t.name or '{...}'}"
        elif isinstance(t, Enum):
            base = f"enum {t.name or '{...}'}"
        elif isinstance(t, Void):
            base = "void"
        elif isinstance(t, DeclTag):
            return self._declare(t.target, inner, depth + 1)
        else:
            base = t.name or f"({t.kind_name} {t.id})"
        if not inner:
            return base
        return f"{base}{inner}" if inner[0] in "[ " else f"{base} {inner}"

    def _skip_qualifiers(self, type_id: int, depth: int) -> BtfType:
        t = self.type(type_id)
        while isinstance(t, Modifier) and depth < MAX_DEPTH:
            t = self.type(t.target)
            depth += 1
        return t

    def iter_types(self) -> Iterator[BtfType]:
        """Every type this blob defines, decoded (slow on vmlinux: ~130k objects)."""
        for type_id in self.own_ids:
            yield self.type(type_id)

    def check_references(self) -> None:
        """Decode every type this blob defines and check every type id it refers to exists, as the kernel does
        before it takes a module's BTF: split BTF written against another kernel's BTF points past its end (or
        its strings do). :class:`~.errors.BtfFormatError` names the first bad reference."""
        for t in self.iter_types():
            for referenced in _references(t):
                if not 0 <= referenced < self.end_id:
                    raise BtfFormatError(
                        f"{self._what()}: type id {t.id} ({t.kind_name} {t.name or '(anonymous)'}) refers to type id "
                        f"{referenced}, which does not exist (ids 0..{self.end_id - 1})"
                    )


def _references(t: BtfType) -> list[int]:
    """The type ids ``t`` refers to."""
    if isinstance(t, (Ptr, Typedef, Modifier, Var, DeclTag)):
        return [t.target]
    if isinstance(t, Array):
        return [t.elem, t.index_type]
    if isinstance(t, Composite):
        return [member.type for member in t.members]
    if isinstance(t, FuncProto):
        return [t.ret, *(param.type for param in t.params)]
    if isinstance(t, Func):
        return [t.proto]
    if isinstance(t, Datasec):
        return [entry[0] for entry in t.vars]
    return []
