"""The grammar of named fetch arguments: ``base ( ->member | .member | [index] )* [:type]``.

``base`` is a parameter name (``desc``), ``$argN`` (the parameter in that register slot, typed from BTF) or
``$retval`` (return probes). ``:type`` is any kernel fetch type (``u32``, ``x64``, ``string``, ``symbol``,
``b3@5/32``, ``u8[16]``, ``%pd``...). Spaces around operators are allowed (``desc -> name``) and dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .._errors import hide_for_ktrace_errors
from ._errors import FetchargSyntaxError

__all__ = ["KERNEL_TYPE", "Expression", "parse_expression", "split_path"]

__tracebackhide__ = hide_for_ktrace_errors

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_HEAD = re.compile(rf"\s*(\$retval|\$arg[1-9][0-9]*|{_IDENT})\s*")
_STEP = re.compile(rf"(->|\.)\s*({_IDENT})\s*|\[\s*(0[xX][0-9a-fA-F]+|[0-9]+)\s*\]\s*")

#: Every type the kernel's probe parser accepts (kprobetrace.rst "Types"), with an optional ``[N]`` array count.
KERNEL_TYPE = re.compile(
    r"(?P<base>[sux](?:8|16|32|64)|char|string|ustring|symbol|symstr)(?:\[(?P<count>[0-9]+)\])?"
    r"|(?P<bitfield>b[0-9]+@[0-9]+/(?:8|16|32|64))"
    r"|(?P<dentry>%p[dD])"
)

Step = tuple[str, str]  # ("->", member) | (".", member) | ("[", index as decimal text)


@dataclass(frozen=True)
class Expression:
    """A parsed fetcharg expression: ``base``, the access ``steps`` and the explicit ``type`` (None if absent)."""

    text: str
    base: str
    steps: tuple[Step, ...]
    type: Optional[str]

    @property
    def body(self) -> str:
        """The expression without its type, normalised (no spaces): ``desc->irq_data.irq``."""
        return self.base + "".join(f"[{operand}]" if op == "[" else op + operand for op, operand in self.steps)


def _fail(text: str, column: int, what: str) -> FetchargSyntaxError:
    pointer = " " * (column + 4) + "^"
    return FetchargSyntaxError(
        f"bad fetcharg expression {text!r}: {what}\n    {text}\n{pointer}\n"
        "  expected: name, name->member, name->member.member, name->array[3], $retval->member, with an optional "
        "':type' (u32, x64, string, symbol, ...)",
        expr=text,
    )


def _steps(text: str, start: int, end: int) -> tuple[Step, ...]:
    steps: list[Step] = []
    pos = start
    while pos < end:
        match = _STEP.match(text, pos, end)
        if match is None:
            rest = text[pos:end]
            if rest.startswith("->") or rest.startswith("."):
                what = f"expected a member name after {rest[:2] if rest.startswith('->') else '.'!r}"
            elif rest.startswith("["):
                what = "expected a non-negative integer index and ']' after '['"
            elif rest.startswith("-"):
                what = "'-' must be followed by '>' (member of a pointer: ->)"
            else:
                what = f"unexpected {rest[0]!r}"
            raise _fail(text, pos, what)
        if match.group(3) is not None:
            steps.append(("[", str(int(match.group(3), 0))))
        else:
            steps.append((match.group(1), match.group(2)))
        pos = match.end()
    return tuple(steps)


def parse_expression(text: str) -> Expression:
    """Parse ``desc->irq_data.irq``, ``new->name:string``, ``$retval``...; :class:`~.errors.FetchargSyntaxError`
    (with a caret under the problem) otherwise."""
    if not isinstance(text, str):
        raise FetchargSyntaxError(f"fetcharg expression must be a str, got {type(text).__name__} {text!r}")
    colon = text.find(":")
    body_end = colon if colon >= 0 else len(text)
    explicit: Optional[str] = None
    if colon >= 0:
        explicit = text[colon + 1 :].strip()
        if not KERNEL_TYPE.fullmatch(explicit):
            raise _fail(
                text,
                colon + 1,
                f"unknown type {explicit!r} (s8..s64, u8..u64, x8..x64, char, string, ustring, symbol, symstr, "
                "b<width>@<offset>/<8|16|32|64>, %pd, %pD, or one of those with [N])",
            )
    head = _HEAD.match(text, 0, body_end)
    if head is None:
        stripped = text[:body_end].strip()
        return_hint = " ($retval in return probes)" if stripped.startswith("$") else ""
        raise _fail(text, len(text) - len(text.lstrip()), f"expected a parameter name or $argN{return_hint}")
    return Expression(text, head.group(1), _steps(text, head.end(), body_end), explicit)


def split_path(path: str) -> tuple[Step, ...]:
    """The steps of a member path without a base: ``irq_data.irq`` -> (('.', 'irq_data'), ('.', 'irq'))."""
    if not isinstance(path, str):
        raise FetchargSyntaxError(f"member path must be a str, got {type(path).__name__} {path!r}")
    stripped = path.strip()
    if not stripped:
        return ()
    text = stripped if stripped[0] in ".[-" else "." + stripped
    return _steps(text, 0, len(text))
