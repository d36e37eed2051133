"""Helpers shared by the test modules (a unique module name: several conftest.py files exist in this repo)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROG_DIR = Path(__file__).parent / "prog"
TRACEFS = Path("/sys/kernel/tracing")


def compile_probed(out_dir: Path, *extra: str) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build tests/prog/probed.c (apt-get install gcc)", pytrace=False)
    out = out_dir / ("probed" + "".join(extra).replace("-", "_"))
    subprocess.run([gcc, "-O0", "-g", *extra, "-o", str(out), str(PROG_DIR / "probed.c")], check=True)
    return out


def tracefs_state() -> dict[str, str]:
    """What tracefs holds that could be ours: probe lists and instance names."""
    state = {}
    for name in ("uprobe_events", "kprobe_events"):
        path = TRACEFS / name
        state[name] = path.read_text() if path.exists() else ""
    state["instances"] = "\n".join(sorted(os.listdir(TRACEFS / "instances")))
    return state


def ours(state: dict[str, str]) -> list[str]:
    return [line for text in state.values() for line in text.splitlines() if "ktrace_" in line]


def append_line(path: Path, line: str) -> None:
    """Append one command the way `echo >>` does (Python's "a" mode lseeks, which tracefs refuses)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
