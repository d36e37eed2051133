"""Record modes, as pytest-recording names them: ``none`` replays or runs live, ``once`` records the tests that have
no cassette yet, ``rewrite`` (``--ktrace-record``) records every test again. The fake backend only replays."""

from __future__ import annotations

from pathlib import Path

import pytest

from .. import _choices

__all__ = ["RECORD_MODES", "record_mode", "should_record"]

RECORD_MODES = _choices.RECORD_MODES


def record_mode(config: pytest.Config) -> str:
    """``none``, ``once`` or ``rewrite``: ``--ktrace-record`` (rewrite), else the record mode (command line over
    ini)."""
    mode = config.getoption("ktrace_record_mode", default=None) or config.getini("ktrace_record_mode") or "none"
    if config.getoption("ktrace_record", default=None) or config.getini("ktrace_record"):
        mode = "rewrite"
    if mode not in RECORD_MODES:
        raise pytest.UsageError(f"pytest-ktrace: record mode {mode!r} must be none, once or rewrite")
    return str(mode)


def should_record(config: pytest.Config, cassette: Path, *, replaying: bool) -> bool:
    """Whether this test writes its cassette (see :func:`record_mode`), ``once`` recording only tests that have
    none yet. The fake backend replays, never records."""
    mode = record_mode(config)
    if replaying:
        if mode == "rewrite":
            raise pytest.UsageError(
                "pytest-ktrace: --ktrace-record records on a real target; the fake backend replays cassettes"
            )
        return False
    return mode == "rewrite" or (mode == "once" and not cassette.exists())
