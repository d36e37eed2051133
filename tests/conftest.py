from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ktrace_testing import build_probed


@pytest.fixture(scope="session")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/prog/probed.c built with gcc -O0 -g (PIE), named `probed` (its comm in traces)."""
    out = tmp_path_factory.mktemp("prog")
    target = out / "probed"
    shutil.copy2(build_probed(out), target)
    return target
