"""examples/ is documentation that must keep working: run it as a newcomer would, and read its failure output."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ktrace_testing import run_pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    return run_pytest(EXAMPLES.parent, *args)


def test_failing_example_explains_itself() -> None:
    run = _pytest("--runxfail", f"{EXAMPLES}/test_register_irq.py::test_what_a_failure_looks_like")
    assert run.returncode == 1, run.stdout
    assert "register_irq returned -22 (expected 0); 1 of 1 returns differ." in run.stdout
    assert "ktrace trace" in run.stdout and "ret=0xffffffea (-22)" in run.stdout
