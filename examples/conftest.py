"""Builds the demo program the examples probe (gcc -O0 -g, once per run)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_driver(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("examples") / "demo_driver"
    source = Path(__file__).parent / "prog" / "demo_driver.c"
    subprocess.run(["gcc", "-O0", "-g", "-o", str(out), str(source)], check=True)
    return str(out)
