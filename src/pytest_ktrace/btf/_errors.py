"""The errors of the BTF parser and the fetcharg resolver.

Every class derives from :class:`~pytest_ktrace._errors.KtraceError`, so the plugin's hostile-input rule ("a
KtraceError with a message, never an IndexError") holds for BTF too. Two families:

* :class:`BtfFormatError`: the blob itself is broken (truncated, garbage, a type id out of range, a loop);
* :class:`FetchargError` and its subclasses: the blob is fine but the user's expression does not fit the types
  (unknown parameter or member, ``.`` on a pointer, ...). The messages list what would have been valid.

The constructors take the message only (plus the context attributes noted on each class), so ``pickle`` and
``pytest-xdist`` can carry them across processes.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .._arch import ARG_REGISTERS, normalize_arch
from .._errors import KtraceError, UnsupportedFetchArg

__all__ = [
    "BadMemberAccess",
    "BtfError",
    "BtfFormatError",
    "BtfUnavailable",
    "FetchargError",
    "FetchargSyntaxError",
    "FetchargTooLong",
    "FetchargTypeError",
    "FetchargUnsupported",
    "ModuleNotLoaded",
    "UnknownFunction",
    "UnknownMember",
    "UnknownParameter",
    "UnknownType",
    "module_btf_hint",
    "no_btf_hint",
]


class BtfError(KtraceError):
    """Base of every BTF error."""


class BtfFormatError(BtfError):
    """The BTF blob is malformed: truncated, not BTF at all, or internally inconsistent."""


class BtfUnavailable(BtfError):
    """There is no BTF to resolve names with (kernel built without ``CONFIG_DEBUG_INFO_BTF``, no
    ``/sys/kernel/btf/vmlinux``, a kernel image without a ``.BTF`` section...). The message says how to write the
    fetch argument without BTF (see :func:`no_btf_hint`)."""

    @classmethod
    def for_target(cls, where: str, reason: str, *, arch: Optional[str] = None, expr: str = "") -> BtfUnavailable:
        """The error for "``where`` has no BTF because ``reason``", with the positional fallback spelled out."""
        head = f"no BTF for {where}: {reason}"
        if expr:
            head = f"cannot resolve {expr!r}: {head}"
        return cls(f"{head}\n{no_btf_hint(arch)}")


def no_btf_hint(arch: Optional[str] = None) -> str:
    """How to write fetch arguments without BTF, with the argument registers of ``arch`` when it is known."""
    registers = ARG_REGISTERS.get(normalize_arch(arch)) if arch else None
    where = f" (on {normalize_arch(arch or '')}: {', '.join(registers)})" if registers else ""
    return (
        "  named arguments and struct members need the kernel's BTF (CONFIG_DEBUG_INFO_BTF=y, "
        "/sys/kernel/btf/vmlinux).\n"
        f"  Without it, name arguments by position: $arg1, $arg2, ... or their registers{where},\n"
        "  and write members as offsets: '+OFFSET($arg2):u32', '+0(+OFFSET($arg3)):string', with OFFSET from\n"
        "  `pahole -C <struct> vmlinux` or `gdb -batch -ex 'ptype /o struct <struct>' vmlinux`."
    )


def module_btf_hint(module: str) -> str:
    """How a module gets BTF, for the error about one that has none."""
    return (
        f"  A module has BTF when it is built against the BTF of the exact kernel it is for: Kbuild adds it when\n"
        "  the kernel build directory holds that kernel's vmlinux, and otherwise prints \"Skipping BTF generation\n"
        f'  for {module}.ko due to unavailability of vmlinux". Add it to a built module with pahole, from that\n'
        f"  kernel's /sys/kernel/btf/vmlinux: pahole -J --btf_base vmlinux.btf {module}.ko (the driver how-to in\n"
        "  the pytest-ktrace docs shows it for the qemu guests' kernels)."
    )


class ModuleNotLoaded(BtfUnavailable):
    """Names on a function of a module that is not loaded: its BTF (``/sys/kernel/btf/<module>``) appears when it
    is. The probe factories wait for it: the names are resolved when the probes are armed, from the ``.ko``
    ``ktrace.load_module()`` is loading (or from the module, loaded by then); only then is it an error."""

    def __init__(self, message: str, *, module: str = "") -> None:
        self.module = module
        super().__init__(message)


class UnknownType(BtfError):
    """A struct, union or other named type is not in the BTF."""

    def __init__(self, message: str, *, name: str = "", close: Sequence[str] = ()) -> None:
        self.name = name
        self.close = tuple(close)
        super().__init__(message)


class UnknownFunction(UnknownType):
    """No ``BTF_KIND_FUNC`` of that name: the function is inlined everywhere, written in assembly, in a module
    whose BTF was not loaded, or misspelled (the message lists close matches)."""


class FetchargError(BtfError):
    """A fetcharg expression does not fit the function's types. ``expr`` is the expression as written."""

    def __init__(self, message: str, *, expr: str = "") -> None:
        self.expr = expr
        super().__init__(message)


class FetchargSyntaxError(FetchargError):
    """The expression is not ``name``, ``name->member``, ``name->a.b[3]``, ``$retval->m`` ... with an optional
    ``:type``."""


class UnknownParameter(FetchargError):
    """The function has no parameter of that name; the message lists the real ones."""


class UnknownMember(FetchargError):
    """The struct or union has no member of that name (anonymous members searched through); the message lists
    the members."""


class BadMemberAccess(FetchargError):
    """``->`` on something that is not a pointer to a struct/union, ``.`` on a pointer (use ``->``), a member of
    a non-struct, an index on a non-array, a member of a bitfield..."""


class FetchargTypeError(FetchargError):
    """The final C type and the requested (or default) kernel fetch type do not fit: ``:string`` on an int, a
    struct without a member, ``char *`` without saying ``:string`` or ``:x64``..."""


class FetchargUnsupported(FetchargError, UnsupportedFetchArg):
    """Correct C, but the kernel's probe syntax cannot express it: an argument passed on the stack, a struct passed
    by value, a bitfield on a big-endian BTF... Also an :class:`~pytest_ktrace._errors.UnsupportedFetchArg`."""


class FetchargTooLong(FetchargUnsupported):
    """The resolved fetch argument is longer than the kernel accepts (``MAX_ARGSTR_LEN``, 63 characters)."""


# Users catch these as ``pytest_ktrace.<Name>``: that is also the name their tracebacks show.
for _public in (
    BtfError,
    BtfFormatError,
    BtfUnavailable,
    UnknownType,
    UnknownFunction,
    FetchargError,
    FetchargSyntaxError,
    UnknownParameter,
    UnknownMember,
    BadMemberAccess,
    FetchargTypeError,
    FetchargUnsupported,
    FetchargTooLong,
):
    _public.__module__ = "pytest_ktrace"
