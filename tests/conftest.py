from __future__ import annotations

from pathlib import Path

import pytest

from ktrace_testing import compile_probed


@pytest.fixture(scope="session")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/prog/probed.c built with gcc -O0 -g (PIE); uprobe target with known arguments and returns."""
    return compile_probed(tmp_path_factory.mktemp("prog"))
