"""BTF kinds and the Python objects one decoded type record becomes.

The layout is ``include/uapi/linux/btf.h`` (and ``Documentation/bpf/btf.rst``): a 12-byte ``struct btf_type``
(``name_off``, ``info``, ``size``-or-``type``) followed by kind-specific data. :data:`EXTRA_WORDS` and
:data:`WORDS_PER_VLEN` give the size of that data in 32-bit words, which is all the loader needs to walk the type
section without decoding it (types are decoded one at a time, on demand, by :class:`~.blob.BtfTypes`).

Type objects are immutable and refer to other types by id (an ``int``), never by object, so that decoding one
type never decodes its whole graph.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

__all__ = [
    "EXTRA_WORDS",
    "WORDS_PER_VLEN",
    "Array",
    "BtfType",
    "Composite",
    "Datasec",
    "DeclTag",
    "Enum",
    "Float",
    "Func",
    "FuncProto",
    "Fwd",
    "Int",
    "Kind",
    "Member",
    "Modifier",
    "Param",
    "Ptr",
    "Typedef",
    "Var",
    "Void",
]


class Kind(enum.IntEnum):
    """``BTF_KIND_*``."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


#: 32-bit words of kind-specific data after the 12-byte btf_type: fixed part, indexed by kind
EXTRA_WORDS: tuple[int, ...] = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
#: ... and per vlen entry (struct btf_member = 3, btf_enum = 2, btf_param = 2, btf_var_secinfo = 3, btf_enum64 = 3)
WORDS_PER_VLEN: tuple[int, ...] = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)

# BTF_INT_ENCODING bits
INT_SIGNED = 1 << 0
INT_CHAR = 1 << 1
INT_BOOL = 1 << 2


@dataclass(frozen=True)
class BtfType:
    """One type record. ``id`` is its type id (0 is ``void``), ``name`` is "" for anonymous types."""

    id: int
    kind: Kind
    name: str

    @property
    def kind_name(self) -> str:
        """``struct``, ``int``, ``func_proto``... (lower-case kind name, as ``bpftool btf dump`` prints it)."""
        return "void" if self.kind is Kind.UNKN else self.kind.name.lower()


@dataclass(frozen=True)
class Void(BtfType):
    """Type id 0: ``void`` (a function returning nothing, the target of ``void *``)."""


@dataclass(frozen=True)
class Int(BtfType):
    """``BTF_KIND_INT``: ``size`` bytes, of which ``bits`` are used starting at ``bit_offset`` (old-style bitfields:
    ``bits < size * 8``)."""

    size: int
    bits: int
    bit_offset: int
    encoding: int

    @property
    def signed(self) -> bool:
        return bool(self.encoding & INT_SIGNED)

    @property
    def is_char(self) -> bool:
        """Plain ``char`` (the text type). pahole marks it by name, not by ``BTF_INT_CHAR`` (which it leaves 0);
        ``unsigned char``/``u8`` stay bytes."""
        return bool(self.encoding & INT_CHAR) or self.name == "char"


@dataclass(frozen=True)
class Ptr(BtfType):
    """``BTF_KIND_PTR`` to type ``target``."""

    target: int


@dataclass(frozen=True)
class Array(BtfType):
    """``BTF_KIND_ARRAY`` of ``nelems`` elements of type ``elem`` (0 elements: a flexible array member)."""

    elem: int
    index_type: int
    nelems: int


@dataclass(frozen=True)
class Member:
    """A struct/union member. ``bit_offset`` is from the start of the struct; ``bitfield_size`` is 0 unless the
    member is a bitfield (with kind_flag set it comes from the member's offset word, else from an old-style
    ``BTF_KIND_INT`` with ``bits < size * 8`` whose own bit offset adds to the member's: decoding folds both
    encodings into these two fields)."""

    name: str
    type: int
    bit_offset: int
    bitfield_size: int = 0


@dataclass(frozen=True)
class Composite(BtfType):
    """``BTF_KIND_STRUCT`` or ``BTF_KIND_UNION`` (``kind`` tells which) of ``size`` bytes."""

    size: int
    members: tuple[Member, ...]

    @property
    def is_union(self) -> bool:
        return self.kind is Kind.UNION

    @property
    def keyword(self) -> str:
        return "union" if self.is_union else "struct"


@dataclass(frozen=True)
class Enum(BtfType):
    """``BTF_KIND_ENUM`` or ``BTF_KIND_ENUM64``: ``size`` bytes, ``values`` in declaration order. ``signed`` is the
    kind_flag (pahole >= 1.24 sets it for enums with a negative value); values are read as signed or unsigned
    accordingly, so an unsigned 0x80000000 stays positive."""

    size: int
    signed: bool
    values: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Fwd(BtfType):
    """``BTF_KIND_FWD``: ``struct name;`` or ``union name;`` declared but not defined here."""

    is_union: bool

    @property
    def keyword(self) -> str:
        return "union" if self.is_union else "struct"


@dataclass(frozen=True)
class Typedef(BtfType):
    """``BTF_KIND_TYPEDEF`` naming type ``target``."""

    target: int


@dataclass(frozen=True)
class Modifier(BtfType):
    """``const``/``volatile``/``restrict`` (``kind`` says which) or a ``BTF_KIND_TYPE_TAG`` (``name`` is the tag,
    e.g. ``rcu`` or ``user``), applied to ``target``."""

    target: int


@dataclass(frozen=True)
class Param:
    """A function parameter: ``index`` counts from 0 in declaration order; ``name`` may be "" (function pointer
    prototypes have unnamed parameters)."""

    index: int
    name: str
    type: int


@dataclass(frozen=True)
class FuncProto(BtfType):
    """``BTF_KIND_FUNC_PROTO``: return type ``ret`` (0 = void) and ``params``; ``variadic`` when the last entry was
    the ``...`` marker (name 0, type 0), which is not listed in ``params``."""

    ret: int
    params: tuple[Param, ...]
    variadic: bool


@dataclass(frozen=True)
class Func(BtfType):
    """``BTF_KIND_FUNC``: a function named ``name`` with prototype ``proto``; ``linkage`` is 0 static, 1 global,
    2 extern."""

    proto: int
    linkage: int


@dataclass(frozen=True)
class Var(BtfType):
    """``BTF_KIND_VAR``: a (per-cpu) variable of type ``target``."""

    target: int
    linkage: int


@dataclass(frozen=True)
class Datasec(BtfType):
    """``BTF_KIND_DATASEC``: section ``name`` holding ``vars`` as (type id, offset, size)."""

    size: int
    vars: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class Float(BtfType):
    """``BTF_KIND_FLOAT`` of ``size`` bytes."""

    size: int


@dataclass(frozen=True)
class DeclTag(BtfType):
    """``BTF_KIND_DECL_TAG`` ``name`` on type ``target``; ``component_idx`` is -1 for the type itself, else the
    member or parameter index."""

    target: int
    component_idx: int


KIND_KEYWORDS: dict[Kind, str] = {Kind.CONST: "const", Kind.VOLATILE: "volatile", Kind.RESTRICT: "restrict"}


def kind_of(value: int) -> Optional[Kind]:
    """The Kind for a raw kind number, None when this parser does not know it."""
    try:
        return Kind(value)
    except ValueError:
        return None
