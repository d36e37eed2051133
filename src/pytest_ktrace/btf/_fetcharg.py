"""Named arguments and member chains to the kernel's probe fetch-argument syntax, computed from BTF.

``resolve(func, "desc->irq_data.irq", "x86_64")`` on ``__setup_irq(unsigned int irq, struct irq_desc *desc,
struct irqaction *new)`` gives ``+108($arg2):u32``: the member offset comes from the BTF, the type suffix from the
member's C type. The result uses only syntax every kernel since 4.20 understands (``$argN``, ``+OFFS(...)``,
``b<w>@<o>/<c>`` bitfields): it works on Debian 6.1, which has no BTF support in its probe parser, and the
plugin's existing ``$argN`` -> register rewrite (:func:`pytest_ktrace._arch.rewrite_argn`) applies to it as to any
fetch argument.

Kernels with ``CONFIG_PROBE_EVENTS_BTF_ARGS`` (6.8+; README line ``<argname>[->field[->field|.field...]]``) can
parse names themselves; :func:`native_fetcharg` returns the expression in that syntax when the kernel would read
exactly what :func:`resolve` computes, else None. The computed form stays the default: it is the same on every
kernel and this module checks it with better messages than the kernel's ``error_log``.

Type suffixes, when the expression does not give one (``desc->irq:x32`` always wins):

==========================  =====================================================================================
C type                      fetch type
==========================  =====================================================================================
signed/unsigned int, enum   ``s8``/``s16``/``s32``/``s64``, ``u8``.. by size and signedness (so -22 prints as -22)
``_Bool``                   ``u8``
pointer                     ``x64`` (``x32`` on 32-bit BTF)
function pointer            ``symbol`` (prints ``e1000_intr+0x0/0x1a0``; ``:x64`` for the address)
``char *``, ``char[N]``     none: an error asks for ``:string`` (the text) or ``:x64``/``:u8[N]`` (the value),
                            because reading a string where the caller expected an address (or the reverse) is
                            a silent surprise either way. ``unsigned char *``/``u8 *`` are bytes: ``x64``.
array of scalars            ``<elem>[N]`` (``u32[4]``), N <= 64 (the kernel's MAX_ARRAY_LEN)
bitfield                    ``b<width>@<bit>/<container>``: the container is the aligned storage unit of the
                            bitfield's declared type (what pahole prints as ``40:38 8``), so the read stays
                            inside the struct. The kernel shows bitfields unsigned.
struct, union, void, float  none: an error lists the members to pick from
==========================  =====================================================================================

``:string``/``:ustring`` on a ``char *`` dereference it (``+0(+80($arg3)):string``), on a ``char[N]`` read in place
(``+2616($arg1):string``). ``:%pd``/``:%pD`` on a ``struct dentry *``/``struct file *`` are expanded here from BTF
offsets (Linux < 6.5 lacks them).

Parameters are mapped to argument registers with the calling convention of the arch (:func:`argument_slots`):
a struct passed by value can take two registers or none, so the Nth parameter is not always ``$argN``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Optional

from .._arch import ARG_REGISTERS, normalize_arch
from .._errors import hide_for_ktrace_errors
from ._blob import BtfTypes, FuncInfo
from ._errors import (
    BadMemberAccess,
    BtfError,
    FetchargError,
    FetchargTooLong,
    FetchargTypeError,
    FetchargUnsupported,
    UnknownMember,
    UnknownParameter,
)
from ._kinds import Array, BtfType, Composite, Enum, Float, FuncProto, Fwd, Int, Member, Param, Ptr
from ._syntax import KERNEL_TYPE, Expression, parse_expression

__all__ = [
    "MAX_ARRAY_LEN",
    "MAX_FETCHARG_LEN",
    "ArgSlot",
    "Fetcharg",
    "argument_slots",
    "bitfield_type",
    "native_btf_args",
    "native_fetcharg",
    "resolve",
    "resolve_fetcharg",
    "resolve_return",
]

__tracebackhide__ = hide_for_ktrace_errors

#: The kernel's MAX_ARGSTR_LEN (kernel/trace/trace_probe.h, 6.1 and 6.12): longest fetch argument body + type.
MAX_FETCHARG_LEN = 63
#: The kernel's MAX_ARRAY_LEN: most elements an array type (``u8[N]``) may have.
MAX_ARRAY_LEN = 64

# arch -> (calling convention, number of integer argument registers); the registers themselves are in arch.py
_ABIS: dict[str, str] = {"x86_64": "sysv", "arm64": "aapcs64", "riscv64": "riscv"}


@dataclass(frozen=True)
class ArgSlot:
    """Where parameter ``param`` is at function entry. ``register`` is the N of ``$argN`` (1-based) holding it, or
    None with ``reason`` (stack, FP register...). ``count`` registers are used (2 for a 16-byte struct or
    ``__int128``). ``by_reference``: an aggregate the ABI replaced with a pointer to a copy (arm64/riscv64 > 16
    bytes), so its members are read through ``$argN``; ``aggregate``: a struct/union passed by value in
    registers (no members can be read)."""

    param: Param
    register: Optional[int]
    count: int
    by_reference: bool = False
    aggregate: bool = False
    reason: str = ""


@dataclass(frozen=True)
class Fetcharg:
    """One resolved expression. ``text`` is what goes after ``name=`` in ``kprobe_events``; ``fetch_type`` its
    type suffix; ``c_type`` the C type fetched (``unsigned int:3`` for a bitfield); ``explicit`` whether the
    expression gave the type; ``base`` is ``$argN`` or ``$retval``; ``param`` the parameter used (None for
    ``$retval``)."""

    expr: str
    text: str
    fetch_type: str
    c_type: str
    explicit: bool
    base: str
    param: Optional[Param]


def native_btf_args(readme: str) -> bool:
    """Whether the kernel parses BTF names in fetch arguments itself (``CONFIG_PROBE_EVENTS_BTF_ARGS``), judged from
    the tracefs README (the same test as the ``btf`` feature of :mod:`pytest_ktrace.backends._features`)."""
    return isinstance(readme, str) and ("<argname>" in readme or "$arg*" in readme)


# -------------------------------------------------------------------------------------------------------------
# calling conventions
# -------------------------------------------------------------------------------------------------------------


def _alignment(btf: BtfTypes, type_id: int, depth: int = 0) -> int:
    """Alignment of a type as the ABI sees it (BTF has no alignment field): a scalar's size, an aggregate's largest
    member alignment."""
    resolved = btf.resolve(type_id)
    if isinstance(resolved, Composite) and depth < 16:
        return max([_alignment(btf, m.type, depth + 1) for m in resolved.members] or [1])
    if isinstance(resolved, Array) and depth < 16:
        return _alignment(btf, resolved.elem, depth + 1)
    if isinstance(resolved, Ptr):
        return btf.ptr_size
    if isinstance(resolved, (Int, Enum, Float)):
        return max(1, min(resolved.size, 16))
    return 1


def argument_slots(func: FuncInfo, arch: str) -> tuple[ArgSlot, ...]:
    """The argument register of every parameter of ``func`` on ``arch`` (x86-64 SysV, AAPCS64, RISC-V LP64 integer
    calling conventions; kernels pass no floats). An unknown arch gets one register per parameter, and
    parameters after a struct passed by value get none (their position is unknowable)."""
    btf = func.btf
    arch_name = normalize_arch(arch) if isinstance(arch, str) else ""
    abi = _ABIS.get(arch_name)
    total = len(ARG_REGISTERS.get(arch_name, ())) if abi else 0
    slots: list[ArgSlot] = []
    used = 0  # integer argument registers taken so far
    uncertain = ""  # unknown arch: why later parameters have no known register
    for param in func.params:
        resolved = btf.resolve(param.type)
        if isinstance(resolved, Float):
            slots.append(ArgSlot(param, None, 0, reason="is a floating-point argument (passed in an FP register)"))
            continue
        try:
            size = btf.sizeof(param.type)
        except BtfError:
            slots.append(ArgSlot(param, None, 0, reason=f"has a type without a size ({resolved.kind_name})"))
            continue
        aggregate = isinstance(resolved, (Composite, Array))
        if abi is None:
            if uncertain:
                slots.append(ArgSlot(param, None, 0, reason=uncertain))
                continue
            slots.append(ArgSlot(param, used + 1, 1, aggregate=aggregate))
            used += 1
            if aggregate:
                uncertain = (
                    f"follows a struct passed by value, and pytest-ktrace does not know how arch {arch!r} passes "
                    "structs"
                )
            continue
        by_reference = False
        words = (size + 7) // 8
        if size > 16:
            if not aggregate:
                slots.append(ArgSlot(param, None, 0, reason=f"is a {size}-byte scalar, not passed in registers"))
                continue
            if abi == "sysv":
                slots.append(ArgSlot(param, None, 0, reason=f"is a {size}-byte struct passed by value on the stack"))
                continue
            by_reference, words = True, 1  # AAPCS64 / RISC-V: replaced by a pointer to a caller-made copy
        if words == 0:
            slots.append(ArgSlot(param, None, 0, aggregate=aggregate, reason="is an empty struct (no register)"))
            continue
        if abi == "aapcs64" and words == 2 and _alignment(btf, param.type) >= 16:
            used += used % 2  # 16-byte aligned values start at an even register
        if used + words > total:
            if abi == "aapcs64":
                used = total  # NGRN = 8: everything after goes to the stack
            elif abi == "riscv" and used < total:
                used = total  # split between the last register and the stack
            slots.append(
                ArgSlot(
                    param,
                    None,
                    0,
                    aggregate=aggregate,
                    reason=f"is passed on the stack on {arch_name} (its {total} argument registers are used up)",
                )
            )
            continue
        slots.append(ArgSlot(param, used + 1, words, by_reference, aggregate and not by_reference))
        used += words
    return tuple(slots)


# -------------------------------------------------------------------------------------------------------------
# resolving
# -------------------------------------------------------------------------------------------------------------


def _member_list(btf: BtfTypes, type_id: int, limit: int = 40) -> str:
    names = list(btf.member_table(type_id))
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "(no members)"


def _find_member(btf: BtfTypes, struct_id: int, name: str, where: str, expr: str) -> Member:
    found = btf.member(struct_id, name)
    if found is not None:
        return found
    table = btf.member_table(struct_id)
    import difflib  # only on the error path

    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise UnknownMember(
        f"{where} is {btf.type_name(struct_id)}, which has no member {name!r}{hint}\n"
        f"  its members: {_member_list(btf, struct_id)}",
        expr=expr,
    )


def _sized(btf: BtfTypes, type_id: int, where: str, expr: str) -> int:
    try:
        size = btf.sizeof(type_id)
    except BtfError:
        size = 0
    if size <= 0:
        raise BadMemberAccess(
            f"{where}: cannot index {btf.type_name(type_id)} elements (no size: void or incomplete type)", expr=expr
        )
    return size


def _load(mem: str, bits: int, where: str, expr: str) -> str:
    """The fetcharg that reads the pointer-sized value at ``mem`` + bits/8."""
    if bits % 8:
        raise FetchargUnsupported(f"{where} is not at a whole byte offset (bit {bits})", expr=expr)
    return f"+{bits // 8}({mem})"


def bitfield_type(bit_offset: int, width: int, declared_size: int) -> tuple[int, str]:
    """(byte offset, ``b<width>@<bit>/<container>``) reading a ``width``-bit bitfield at ``bit_offset``.

    The container is the aligned storage unit of the declared type (``declared_size`` bytes) when the field lies
    in one, as the compiler allocated it (what pahole prints as ``40:38 8``; the read stays inside the struct).
    Otherwise (packed structs) the smallest of 8/16/32/64 bits starting at the field's first byte, which reads no
    byte beyond the next power of two of those the field touches. Little-endian bit numbering, like the kernel's
    ``FETCH_OP_MOD_BF``.
    """
    if declared_size in (1, 2, 4, 8):
        container = declared_size * 8
        start = bit_offset - bit_offset % container
        if bit_offset - start + width <= container:
            return start // 8, f"b{width}@{bit_offset - start}/{container}"
    byte, shift = divmod(bit_offset, 8)
    for container in (8, 16, 32, 64):
        if shift + width <= container:
            return byte, f"b{width}@{shift}/{container}"
    raise FetchargUnsupported(f"a {width}-bit bitfield at bit {bit_offset} does not fit one 64-bit read")


def _default_type(btf: BtfTypes, type_id: int, where: str, expr: str, element: bool = False) -> str:
    resolved = btf.resolve(type_id)
    c_type = btf.type_name(type_id)
    if isinstance(resolved, (Int, Enum)):
        if resolved.size in (1, 2, 4, 8):
            return ("s" if resolved.signed else "u") + str(resolved.size * 8)
        raise FetchargTypeError(
            f"{where} is {c_type} ({resolved.size} bytes), wider than any fetch type: give one, e.g. "
            f"'{expr}:x64' for its first 8 bytes",
            expr=expr,
        )
    if isinstance(resolved, Ptr):
        pointee = btf.resolve(resolved.target)
        if isinstance(pointee, FuncProto):
            return "symbol"
        if isinstance(pointee, Int) and pointee.is_char and not element:
            raise FetchargTypeError(
                f"{where} is {c_type}: add ':string' to read the text it points to ('{expr}:string'), "
                f"or ':x{btf.ptr_size * 8}' for the pointer value",
                expr=expr,
            )
        return f"x{btf.ptr_size * 8}"
    if isinstance(resolved, Array) and not element:
        elem = btf.resolve(resolved.elem)
        count = resolved.nelems
        if isinstance(elem, Int) and elem.is_char:
            raise FetchargTypeError(
                f"{where} is {c_type}: add ':string' to read it as text ('{expr}:string'), "
                f"or ':u8[{min(count, MAX_ARRAY_LEN) or 16}]' for its bytes",
                expr=expr,
            )
        if not isinstance(elem, (Int, Enum, Ptr)):
            raise FetchargTypeError(
                f"{where} is {c_type}, an array of {elem.kind_name}s: index it ({where}[0]...) or give a type",
                expr=expr,
            )
        elem_type = _default_type(btf, resolved.elem, f"{where}[]", expr, element=True)
        if count == 0:
            raise FetchargTypeError(
                f"{where} is {c_type}, a flexible array: give the number of elements to read, e.g. "
                f"'{expr}:{elem_type}[4]'",
                expr=expr,
            )
        if count > MAX_ARRAY_LEN:
            raise FetchargTypeError(
                f"{where} is {c_type}; the kernel records at most {MAX_ARRAY_LEN} elements: "
                f"'{expr}:{elem_type}[{MAX_ARRAY_LEN}]' for the first {MAX_ARRAY_LEN}, or index it",
                expr=expr,
            )
        return f"{elem_type}[{count}]"
    if isinstance(resolved, Composite):
        raise FetchargTypeError(
            f"{where} is {c_type} ({resolved.size} bytes), not a scalar: pick a member with '.' "
            f"({where}.{next(iter(btf.member_table(type_id)), 'member')}...)\n"
            f"  its members: {_member_list(btf, type_id)}",
            expr=expr,
        )
    if isinstance(resolved, Fwd):
        raise FetchargTypeError(
            f"{where} is {c_type}, only declared in this BTF (no layout known): give a type, e.g. '{expr}:x64'",
            expr=expr,
        )
    if isinstance(resolved, Float):
        raise FetchargTypeError(
            f"{where} is {c_type}: probes have no floating-point type; ':x{resolved.size * 8}' fetches its bits",
            expr=expr,
        )
    raise FetchargTypeError(f"{where} is {c_type} ({resolved.kind_name}): there is no value to fetch", expr=expr)


def _is_byte(btf: BtfTypes, type_id: int) -> bool:
    resolved = btf.resolve(type_id)
    return isinstance(resolved, Int) and resolved.size == 1


def _pointee_struct(btf: BtfTypes, resolved: BtfType) -> str:
    if isinstance(resolved, Ptr):
        target = btf.resolve(resolved.target)
        if isinstance(target, (Composite, Fwd)):
            return target.name
    return ""


class _Walk:
    """The state of one expression being resolved: the fetcharg ``value`` of the current pointer/register, or,
    once something was dereferenced, the object at ``mem`` + ``bits``/8."""

    def __init__(self, btf: BtfTypes, expr: str, value: str, mem: Optional[str], type_id: int, where: str) -> None:
        self.btf = btf
        self.expr = expr
        self.value = value
        self.mem = mem
        self.bits = 0
        self.bitfield = 0
        self.type_id = type_id
        self.where = where

    def c_type(self) -> str:
        return self.btf.type_name(self.type_id)

    def location(self) -> str:
        """The fetcharg reading the current value: the register itself, or a load from ``mem`` + ``bits``/8."""
        return self.value if self.mem is None else _load(self.mem, self.bits, self.where, self.expr)

    def step(self, op: str, operand: str) -> None:
        btf, where, expr = self.btf, self.where, self.expr
        if self.bitfield:
            raise BadMemberAccess(
                f"{where} is a {self.bitfield}-bit bitfield: it has no members or elements", expr=expr
            )
        resolved = btf.resolve(self.type_id)
        if op == "->":
            if not isinstance(resolved, Ptr):
                if isinstance(resolved, Composite):
                    raise BadMemberAccess(
                        f"{where} is {self.c_type()}, not a pointer: use '.' ({where}.{operand})", expr=expr
                    )
                raise BadMemberAccess(
                    f"{where} is {self.c_type()}, not a pointer to a struct or union: '->{operand}' has nothing to "
                    "follow",
                    expr=expr,
                )
            target = btf.resolve(resolved.target)
            if isinstance(target, Fwd):
                raise BadMemberAccess(
                    f"{where} points to {target.keyword} {target.name}, which this BTF only declares (no members "
                    "known; is it defined in a module whose BTF was not loaded?)",
                    expr=expr,
                )
            if not isinstance(target, Composite):
                raise BadMemberAccess(
                    f"{where} is {self.c_type()}, a pointer to {btf.type_name(resolved.target)}, which has no "
                    f"member {operand!r}",
                    expr=expr,
                )
            member = _find_member(btf, resolved.target, operand, where, expr)
            self.mem = self.location()
            self.bits, self.bitfield, self.type_id = member.bit_offset, member.bitfield_size, member.type
        elif op == ".":
            if isinstance(resolved, Ptr) and isinstance(btf.resolve(resolved.target), (Composite, Fwd)):
                raise BadMemberAccess(
                    f"{where} is a pointer ({self.c_type()}): use '->' ({where}->{operand})", expr=expr
                )
            if not isinstance(resolved, Composite):
                raise BadMemberAccess(
                    f"{where} is {self.c_type()}, not a struct or union: it has no member {operand!r}", expr=expr
                )
            if self.mem is None:
                raise FetchargUnsupported(
                    f"{where} is {self.c_type()} passed by value in registers: its members cannot be fetched "
                    "(the kernel's probes read registers whole)",
                    expr=expr,
                )
            member = _find_member(btf, self.type_id, operand, where, expr)
            self.bits += member.bit_offset
            self.bitfield, self.type_id = member.bitfield_size, member.type
        else:
            index = int(operand)
            if isinstance(resolved, Array):
                if resolved.nelems and index >= resolved.nelems:
                    raise BadMemberAccess(
                        f"{where}[{index}]: index out of range, {where} is {self.c_type()}", expr=expr
                    )
                if self.mem is None:
                    raise FetchargUnsupported(f"{where} is an array in registers: it cannot be indexed", expr=expr)
                self.bits += index * _sized(btf, resolved.elem, where, expr) * 8
                self.type_id = resolved.elem
            elif isinstance(resolved, Ptr):
                size = _sized(btf, resolved.target, where, expr)
                self.mem = self.location()
                self.bits, self.type_id = index * size * 8, resolved.target
            else:
                raise BadMemberAccess(
                    f"{where} is {self.c_type()}, not an array or a pointer: it cannot be indexed", expr=expr
                )
        self.where = f"{where}[{operand}]" if op == "[" else f"{where}{op}{operand}"


def _base(func: FuncInfo, parsed: Expression, arch: str, entry: bool) -> tuple[_Walk, Optional[Param]]:
    btf, expr, name = func.btf, parsed.text, parsed.base
    if name == "$retval":
        if entry:
            raise FetchargError(
                f"{expr!r}: $retval exists only in return probes (kretprobe), not at the entry of {func.name}()",
                expr=expr,
            )
        if func.returns_void:
            raise FetchargTypeError(
                f"{expr!r}: {func.name}() returns void, there is no $retval\n  {func.signature()}", expr=expr
            )
        return _Walk(btf, expr, "$retval", None, func.ret, "$retval"), None
    slots = argument_slots(func, arch)
    if name.startswith("$arg"):
        number = int(name[4:])
        chosen = [slot for slot in slots if slot.register == number]
        if not chosen:
            inside = [s for s in slots if s.register is not None and s.register < number < s.register + s.count]
            layout = ", ".join(
                f"{s.param.name or '?'}=$arg{s.register}"
                if s.register
                else f"{s.param.name or '?'}=(not in a register)"
                for s in slots
            )
            what = (
                f"$arg{number} is the second register of {inside[0].param.name!r}"
                if inside
                else f"{func.name}() has no parameter in $arg{number}"
            )
            raise UnknownParameter(
                f"{expr!r}: {what}; on {arch}: {layout or '(no parameters)'}\n  {func.signature()}", expr=expr
            )
        slot = chosen[0]
    else:
        try:
            param = func.param(name)
        except UnknownParameter as exc:
            raise UnknownParameter(f"{expr!r}: {exc}", expr=expr) from None
        slot = slots[param.index]
    param = slot.param
    label = param.name or f"parameter {param.index + 1}"
    if slot.register is None:
        raise FetchargUnsupported(
            f"{expr!r}: {label} (parameter {param.index + 1} of {func.name}(), {btf.type_name(param.type)}) "
            f"{slot.reason}; probes read arguments from registers only\n  {func.signature()}",
            expr=expr,
        )
    register = f"$arg{slot.register}"
    walk = _Walk(btf, expr, register, register if slot.by_reference else None, param.type, name)
    return walk, param


def _dentry_name(walk: _Walk, explicit: str, expr: str, c_type: str) -> str:
    """``:%pd`` (a struct dentry *) and ``:%pD`` (a struct file *): the name string, through the members BTF locates."""
    btf, where = walk.btf, walk.where
    wanted = "dentry" if explicit == "%pd" else "file"
    if _pointee_struct(btf, btf.resolve(walk.type_id)) != wanted:
        raise FetchargTypeError(f"{where} is {c_type}: ':{explicit}' needs a struct {wanted} *", expr=expr)
    try:
        name_offset = btf.locate("dentry", "d_name.name").byte_offset
        text = f"+{name_offset}({walk.location()})"
        if explicit == "%pD":
            text = f"+{name_offset}(+{btf.locate('file', 'f_path.dentry').byte_offset}({walk.location()}))"
    except BtfError as exc:
        raise FetchargTypeError(f"{where}: cannot expand ':{explicit}' from this BTF: {exc}", expr=expr) from None
    return f"+0({text}):string"


def _finish(walk: _Walk, explicit: Optional[str], expr: str) -> tuple[str, str, str]:
    """(text, fetch type, C type) for the end of the chain."""
    btf, where = walk.btf, walk.where
    resolved = btf.resolve(walk.type_id)
    c_type = walk.c_type() + (f":{walk.bitfield}" if walk.bitfield else "")
    if walk.bitfield:
        if explicit is not None:
            raise FetchargTypeError(
                f"{where} is a bitfield ({c_type}): leave the type out, pytest-ktrace writes the b<width>@<bit>/"
                "<container> type that extracts it",
                expr=expr,
            )
        if btf.big_endian:
            raise FetchargUnsupported(f"{where}: bitfields of big-endian BTF are not supported", expr=expr)
        assert walk.mem is not None  # bitfields are members, so something was dereferenced
        declared = btf.sizeof(walk.type_id) if isinstance(resolved, (Int, Enum)) else 0
        byte, spec = bitfield_type(walk.bits, walk.bitfield, declared)
        return f"+{byte}({walk.mem}):{spec}", spec, c_type
    if explicit is None:
        fetch_type = _default_type(btf, walk.type_id, where, expr)
        if walk.mem is None and "[" in fetch_type:
            raise FetchargTypeError(f"{where} is an array in registers: it cannot be fetched", expr=expr)
        return f"{walk.location()}:{fetch_type}", fetch_type, c_type
    if explicit in ("string", "ustring"):
        if isinstance(resolved, Ptr) and _is_byte(btf, resolved.target):
            return f"+0({walk.location()}):{explicit}", explicit, c_type
        if isinstance(resolved, Array) and _is_byte(btf, resolved.elem) and walk.mem is not None:
            return f"{walk.location()}:{explicit}", explicit, c_type
        raise FetchargTypeError(
            f"{where} is {c_type}: ':{explicit}' reads a NUL-terminated string through a char * or from a char[] "
            "member",
            expr=expr,
        )
    if explicit in ("%pd", "%pD"):
        return _dentry_name(walk, explicit, expr, c_type), "string", c_type
    match = KERNEL_TYPE.fullmatch(explicit)
    assert match is not None  # parse_expression checked it
    count = match.group("count")
    if count is not None:
        if walk.mem is None:
            raise FetchargTypeError(
                f"{where} is in a register: an array type (':{explicit}') needs memory to read from", expr=expr
            )
        if not 1 <= int(count) <= MAX_ARRAY_LEN:
            raise FetchargTypeError(f"':{explicit}': the kernel takes 1..{MAX_ARRAY_LEN} array elements", expr=expr)
    return f"{walk.location()}:{explicit}", explicit, c_type


def resolve(
    func: FuncInfo, expr: str, arch: str, *, entry: bool = True, max_len: Optional[int] = MAX_FETCHARG_LEN
) -> Fetcharg:
    """Resolve ``expr`` (``irq``, ``desc->irq_data.irq``, ``new->name:string``, ``$retval``...) against ``func``'s
    BTF prototype into a fetch argument for a probe on ``arch`` at its entry (``entry=True``) or return.

    Parameters become ``$argN`` per the arch's calling convention (the session rewrites ``$argN`` into registers on
    kernels without it, and refuses ``$argN`` in return probes of kernels < 6.9). ``max_len`` (the kernel's
    63-character limit by default, None for none) raises :class:`~.errors.FetchargTooLong` beyond it. Every
    failure is a :class:`~.errors.FetchargError` saying what would have been valid.
    """
    if not isinstance(func, FuncInfo):
        raise FetchargError(f"func must be a FuncInfo (from BtfTypes.func()), got {type(func).__name__}")
    parsed = parse_expression(expr)
    walk, param = _base(func, parsed, arch, entry)
    for op, operand in parsed.steps:
        walk.step(op, operand)
    text, fetch_type, c_type = _finish(walk, parsed.type, expr)
    if max_len is not None and len(text) > max_len:
        raise FetchargTooLong(
            f"{expr!r} resolves to {text!r}, {len(text)} characters; the kernel accepts at most {max_len} per fetch "
            "argument (MAX_ARGSTR_LEN). Probe a function that gets the inner pointer as an argument instead.",
            expr=expr,
        )
    return Fetcharg(expr, text, fetch_type, c_type, parsed.type is not None, walk.value, param)


def resolve_fetcharg(func: FuncInfo, expr: str, arch: str, *, entry: bool = True) -> str:
    """:func:`resolve`, returning only the fetch argument text (``+0(+80($arg3)):string``)."""
    return resolve(func, expr, arch, entry=entry).text


def resolve_return(func: FuncInfo) -> str:
    """The fetch type of ``func``'s return value: ``s32`` for ``int`` (so -22 prints as -22), ``x64`` for a
    pointer...; :class:`~.errors.FetchargTypeError` for ``void`` and types without one."""
    return resolve(func, "$retval", "", entry=False).fetch_type


def native_fetcharg(
    func: FuncInfo, expr: str, arch: str, *, features: AbstractSet[str], entry: bool = True
) -> Optional[str]:
    """``expr`` in the kernel's own BTF syntax (``desc->irq_data.irq:u32``) if the kernel would read exactly what
    :func:`resolve` computes, else None.

    ``features`` is the target's feature set (:func:`pytest_ktrace.backends._features.features_from`): ``btf`` for
    the syntax, ``argN_on_return`` for parameters in return probes. None when the kernel's parser differs from C:
    ``[i]``, ``.`` straight on a parameter, ``$argN``, bitfields, ``%pd``, a parameter not in the register its
    position implies (the kernel assumes one register per parameter). Raises like :func:`resolve`.
    """
    resolved = resolve(func, expr, arch, entry=entry)
    parsed = parse_expression(expr)
    if "btf" not in features or parsed.base.startswith("$arg"):
        return None
    if resolved.param is not None:
        slots = argument_slots(func, arch)
        slot = slots[resolved.param.index]
        if slot.register != resolved.param.index + 1 or slot.aggregate or slot.by_reference:
            return None
        if not entry and "argN_on_return" not in features:
            return None
    if any(op == "[" for op, _ in parsed.steps) or (parsed.steps and parsed.steps[0][0] != "->"):
        return None
    if parsed.type in ("%pd", "%pD") or (not resolved.explicit and resolved.fetch_type.startswith("b")):
        return None
    text = f"{parsed.body}:{resolved.fetch_type}"
    return text if len(text) <= MAX_FETCHARG_LEN else None
