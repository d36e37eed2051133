"""What loading the plugin costs a pytest run that traces nothing.

Usage:  .venv/bin/python benchmarks/bench_import.py [--rounds 15]

Times `python -c "import pytest"` against `python -c "import pytest_ktrace.plugin"` (which imports pytest too),
each in a fresh interpreter, and a whole `pytest --collect-only` of a one-test file with and without the plugin
(`-p no:ktrace`). Prints medians and the plugin's share.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _median(command: list[str], rounds: int, cwd: Path) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        (where / "test_plain.py").write_text("def test_plain():\n    pass\n")
        python = [sys.executable, "-c"]
        bare = _median([*python, "import pytest"], args.rounds, where)
        plugin = _median([*python, "import pytest_ktrace.plugin"], args.rounds, where)
        pytest_run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"]
        without = _median([*pytest_run, "-p", "no:ktrace"], args.rounds, where)
        with_plugin = _median(pytest_run, args.rounds, where)
    print(f"import pytest                       {bare * 1000:7.1f} ms")
    print(f"import pytest_ktrace.plugin         {plugin * 1000:7.1f} ms   (+{(plugin - bare) * 1000:.1f} ms)")
    print(f"pytest --collect-only, no plugin    {without * 1000:7.1f} ms")
    print(f"pytest --collect-only, with plugin  {with_plugin * 1000:7.1f} ms   ({with_plugin / without:.2f}x)")


if __name__ == "__main__":
    main()
