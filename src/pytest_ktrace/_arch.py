"""Per-architecture facts: which register carries the Nth function argument."""

from __future__ import annotations

import re

from ._errors import UnsupportedFetchArg, hide_for_ktrace_errors

__all__ = ["ARG_REGISTERS", "normalize_arch", "rewrite_argn"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

# The kernel calling convention of each arch (also the user-space one for these three).
ARG_REGISTERS: dict[str, tuple[str, ...]] = {
    "x86_64": ("%di", "%si", "%dx", "%cx", "%r8", "%r9"),
    "arm64": tuple(f"%x{i}" for i in range(8)),
    "riscv64": tuple(f"%a{i}" for i in range(8)),
}

_ARCH_ALIASES = {"aarch64": "arm64", "amd64": "x86_64", "x86-64": "x86_64", "riscv": "riscv64"}

_ARGN = re.compile(r"\$arg(\d+)")


def normalize_arch(machine: str) -> str:
    """``uname -m`` spelling to the kernel's arch name (aarch64 -> arm64)."""
    return _ARCH_ALIASES.get(machine, machine)


def rewrite_argn(fetcharg: str, arch: str, *, why: str) -> str:
    """Replace every ``$argN`` in a fetch argument with the register that holds argument N on ``arch``.

    ``why`` says why the kernel cannot take ``$argN`` itself; it ends up in the error if the rewrite is impossible.
    """

    registers = ARG_REGISTERS.get(normalize_arch(arch))

    def replace(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if registers is None:
            raise UnsupportedFetchArg(
                f"{match.group(0)} in {fetcharg!r}: {why}, and pytest-ktrace does not know the argument "
                f"registers of arch {arch!r}; use the register name instead"
            )
        if not 1 <= index <= len(registers):
            raise UnsupportedFetchArg(
                f"{match.group(0)} in {fetcharg!r}: {why}, and on {arch} only arguments 1..{len(registers)} are "
                f"passed in registers ({', '.join(registers)}); read later ones from the stack with $stackN"
            )
        return registers[index - 1]

    return _ARGN.sub(replace, fetcharg)
