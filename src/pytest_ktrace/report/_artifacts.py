"""Files a test's session attaches to its report (flame graphs, captures): ``ktrace.attach(label, path)``.

They are listed in the failure report section and, with ``--ktrace-report=DIR``, copied next to the test's trace
and linked from ``index.html``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .._checks import check_text
from .._errors import KtraceError, hide_for_ktrace_errors

__all__ = ["Artifact", "make_artifact"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_MAX_LABEL = 200


@dataclass(frozen=True)
class Artifact:
    """A labelled file of one test; ``path`` is absolute (resolved when it was attached)."""

    label: str
    path: Path


def make_artifact(label: object, path: object) -> Artifact:
    """Check what ``attach()`` was given. The file need not exist yet (a hook may write it after the test); the
    report says when it is missing."""
    if not isinstance(label, str) or not label.strip():
        raise KtraceError(f"attach() label must be a non-empty str, got {type(label).__name__} {label!r}")
    check_text("attach() label", label)
    if len(label) > _MAX_LABEL:
        raise KtraceError(f"attach() label is {len(label)} characters long; at most {_MAX_LABEL} fit in a report")
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise KtraceError(f"attach() path must be a str or a path-like, got {type(path).__name__} {path!r}")
    text: Union[str, os.PathLike[str]] = path
    check_text("attach() path", os.fspath(text))
    if not os.fspath(text):
        raise KtraceError("attach() path must not be empty")
    return Artifact(label, Path(os.path.abspath(os.fspath(text))))
