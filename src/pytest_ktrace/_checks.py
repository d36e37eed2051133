"""Checks of what a test hands the plugin: every wrong type or value becomes a :class:`KtraceError` that names the
argument, before anything reaches a target (the kernel judges the rest, with its own error_log line)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Optional

from ._errors import KtraceError, hide_for_ktrace_errors

__all__ = ["check_encodable", "check_int", "check_seconds", "check_text", "command_argv", "type_name"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals


def type_name(value: object) -> str:
    return type(value).__name__


def check_seconds(what: str, value: object, *, optional: bool = False, zero_ok: bool = True) -> None:
    """A duration in seconds: a real number (not bool, not NaN), >= 0 (or > 0)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KtraceError(f"{what}={value!r} must be a number of seconds, got {type_name(value)}")
    if (isinstance(value, float) and math.isnan(value)) or value < 0 or (value == 0 and not zero_ok):
        raise KtraceError(f"{what}={value!r} must be a number of seconds {'>= 0' if zero_ok else '> 0'}")


def check_int(what: str, value: object, minimum: int, maximum: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise KtraceError(f"{what}={value!r} must be an int, got {type_name(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise KtraceError(f"{what}={value!r} must be an int {bound}")


def check_encodable(what: str, text: str) -> None:
    """What is written to tracefs is UTF-8, with U+DC80..U+DCFF standing for raw bytes (surrogateescape, as
    tracefs is read); any other lone surrogate cannot be written at all."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise KtraceError(
            f"{what} {text!r} holds {text[exc.start]!r} at {exc.start}, a lone surrogate that cannot be encoded "
            "(only U+DC80..U+DCFF, surrogateescape'd bytes, can)"
        ) from None


def check_text(what: str, text: str) -> None:
    """Filters and paths travel as one line: a newline would start another command."""
    if not isinstance(text, str):
        raise KtraceError(f"{what} must be a str, got {type(text).__name__} {text!r}")
    check_encodable(what, text)
    if "\n" in text or "\r" in text or "\0" in text:
        raise KtraceError(f"{what} {text!r} contains a newline or NUL: it must be a single line")


def command_argv(argv: object, what: str = "run()") -> list[str]:
    """A command as the target runs it: a str (one word) or a sequence of str, bytes or path-likes."""
    if isinstance(argv, (str, os.PathLike)):
        argv = [argv]
    elif isinstance(argv, (bytes, bytearray)) or not isinstance(argv, Sequence):
        raise KtraceError(
            f"{what} argv must be a str or a sequence (list, tuple) of str, got {type_name(argv)} {argv!r}"
        )
    words: list[str] = []
    for index, part in enumerate(argv):
        if not isinstance(part, (str, bytes, os.PathLike)):
            raise KtraceError(
                f"{what} argv[{index}] must be a str (or bytes, a path-like), got {type_name(part)} {part!r}"
            )
        word = os.fspath(part)
        words.append(word if isinstance(word, str) else word.decode("utf-8", "surrogateescape"))
    return words
