"""BTF: the kernel's own type information, parsed in pure Python, and fetch arguments resolved by name.

"Names, not offsets"::

    from pytest_ktrace.btf import BtfTypes, resolve_fetcharg

    btf = BtfTypes.from_file("/sys/kernel/btf/vmlinux")        # ~0.1 s for 6.18's 130k types
    setup_irq = btf.func("__setup_irq")                         # params, return type
    resolve_fetcharg(setup_irq, "irq", "x86_64")                # '$arg1:u32'
    resolve_fetcharg(setup_irq, "desc->irq_data.irq", "x86_64") # '+108($arg2):u32'
    resolve_fetcharg(setup_irq, "new->name:string", "x86_64")   # '+0(+80($arg3)):string'

Modules:

* :mod:`.blob`: :class:`BtfTypes` (load, lookups, type algebra) and :class:`FuncInfo`;
* :mod:`.kinds`: the BTF kinds and their decoded types;
* :mod:`.syntax`: the expression grammar;
* :mod:`.fetcharg`: the resolver (:func:`resolve`, :func:`resolve_fetcharg`, :func:`resolve_return`,
  :func:`native_fetcharg`, :func:`argument_slots`);
* :mod:`.sources`: BTF from ELF files and kernel images;
* :mod:`.errors`: the error classes (all :class:`~pytest_ktrace._errors.KtraceError`).
"""

from __future__ import annotations

from ._blob import BtfTypes, FuncInfo, Location
from ._errors import (
    BadMemberAccess,
    BtfError,
    BtfFormatError,
    BtfUnavailable,
    FetchargError,
    FetchargSyntaxError,
    FetchargTooLong,
    FetchargTypeError,
    FetchargUnsupported,
    UnknownFunction,
    UnknownMember,
    UnknownParameter,
    UnknownType,
    no_btf_hint,
)
from ._fetcharg import (
    MAX_ARRAY_LEN,
    MAX_FETCHARG_LEN,
    ArgSlot,
    Fetcharg,
    argument_slots,
    bitfield_type,
    native_btf_args,
    native_fetcharg,
    resolve,
    resolve_fetcharg,
    resolve_return,
)
from ._kinds import Kind
from ._sources import btf_from_elf, btf_from_kernel_image, find_btf_blob, load_kernel_btf
from ._syntax import Expression, parse_expression

__all__ = [
    "MAX_ARRAY_LEN",
    "MAX_FETCHARG_LEN",
    "ArgSlot",
    "BadMemberAccess",
    "BtfError",
    "BtfFormatError",
    "BtfTypes",
    "BtfUnavailable",
    "Expression",
    "Fetcharg",
    "FetchargError",
    "FetchargSyntaxError",
    "FetchargTooLong",
    "FetchargTypeError",
    "FetchargUnsupported",
    "FuncInfo",
    "Kind",
    "Location",
    "UnknownFunction",
    "UnknownMember",
    "UnknownParameter",
    "UnknownType",
    "argument_slots",
    "bitfield_type",
    "btf_from_elf",
    "btf_from_kernel_image",
    "find_btf_blob",
    "load_kernel_btf",
    "native_btf_args",
    "native_fetcharg",
    "no_btf_hint",
    "parse_expression",
    "resolve",
    "resolve_fetcharg",
    "resolve_return",
]
