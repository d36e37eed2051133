"""What loading the plugin costs a pytest run that traces nothing.

Usage:  .venv/bin/python benchmarks/bench_import.py [--rounds 20] [--no-bytecode]

Three figures of CPU time (user + system: less disturbed than the wall clock by the rest of the machine), each
against a baseline measured in the same rounds (interleaved, fresh interpreters, medians):

* importing the plugin (``import pytest_ktrace.plugin`` timed inside an interpreter that has just imported
  pytest) against that ``import pytest``;
* a whole ``pytest`` run of a one-test file that does not use ktrace, with every plugin installed here loaded
  (labgrid's, xdist, pytest-benchmark, ...), against the same run with ``-p no:ktrace``;
* the same with ``--collect-only``.

It also lists the modules the plugin adds to that run. Python's bytecode cache is on (in a temporary
PYTHONPYCACHEPREFIX), as in an installed package; ``--no-bytecode`` compiles every module each time instead, as
with PYTHONDONTWRITEBYTECODE=1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).parent))

from _results import Result, emit

_IMPORT_TIMES = (
    "import time\n"
    "started = time.process_time()\n"
    "import pytest\n"
    "middle = time.process_time()\n"
    "import pytest_ktrace.plugin\n"
    "print(middle - started, time.process_time() - middle)\n"
)
_MODULES_CONFTEST = (
    "import json, os, sys\n"
    "def pytest_unconfigure(config):\n"
    "    out = os.environ.get('BENCH_IMPORT_MODULES')\n"
    "    if out:\n"
    "        with open(out, 'w') as handle:\n"
    "            json.dump(sorted(sys.modules), handle)\n"
)


def _cpu(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """The CPU time (user + system) of one run of ``command``: what it costs, less disturbed than the wall
    clock by whatever else the machine runs meanwhile."""
    child = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, command)
    return usage.ru_utime + usage.ru_stime


def _spread(values: list[float]) -> float:
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[2] - quartiles[0]


def _env(pycache: Optional[Path]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def _added_modules(pytest_run: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
    """The modules a run with the plugin has imported at its end that the run without it has not."""
    found = []
    for extra in ([], ["-p", "no:ktrace"]):
        out = cwd / "modules.json"
        run_env = {**env, "BENCH_IMPORT_MODULES": str(out)}
        subprocess.run([*pytest_run, *extra], cwd=cwd, env=run_env, check=True, capture_output=True)
        found.append(set(json.loads(out.read_text())))
    return sorted(found[0] - found[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--no-bytecode", action="store_true", help="compile every module each time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        (where / "test_plain.py").write_text("def test_plain():\n    pass\n")
        (where / "conftest.py").write_text(_MODULES_CONFTEST)
        env = _env(None if args.no_bytecode else where / "pycache")
        pytest_run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plain.py"]
        collect = [*pytest_run, "--collect-only"]
        subprocess.run(pytest_run, cwd=where, env=env, check=True, capture_output=True)  # writes the bytecode
        added = _added_modules(pytest_run, where, env)

        bare_import, plugin_import = [], []
        runs: dict[str, list[float]] = {"run": [], "run_without": [], "collect": [], "collect_without": []}
        for _ in range(args.rounds):  # interleaved: a slower moment of the machine hits both sides
            out = subprocess.run(
                [sys.executable, "-c", _IMPORT_TIMES], cwd=where, env=env, check=True, capture_output=True, text=True
            ).stdout.split()
            bare_import.append(float(out[0]))
            plugin_import.append(float(out[1]))
            runs["run"].append(_cpu(pytest_run, where, env))
            runs["run_without"].append(_cpu([*pytest_run, "-p", "no:ktrace"], where, env))
            runs["collect"].append(_cpu(collect, where, env))
            runs["collect_without"].append(_cpu([*collect, "-p", "no:ktrace"], where, env))

    ms = {name: statistics.median(values) * 1000 for name, values in runs.items()}
    bare, plugin = statistics.median(bare_import) * 1000, statistics.median(plugin_import) * 1000
    bytecode = "compiled each time" if args.no_bytecode else "bytecode cached"
    print(f"CPU time (user + system), medians of {args.rounds} interleaved rounds, {bytecode}")
    print(f"import pytest                                {bare:7.1f} ms")
    print(f"then import pytest_ktrace.plugin             {plugin:7.1f} ms   ({plugin / bare:.3f}x import pytest)")
    print(f"pytest run, one plain test, -p no:ktrace     {ms['run_without']:7.1f} ms")
    print(
        f"pytest run, one plain test, with the plugin  {ms['run']:7.1f} ms   "
        f"({ms['run'] / ms['run_without']:.3f}x, {ms['run'] - ms['run_without']:+.1f} ms)"
    )
    print(f"pytest --collect-only, -p no:ktrace          {ms['collect_without']:7.1f} ms")
    print(
        f"pytest --collect-only, with the plugin       {ms['collect']:7.1f} ms   "
        f"({ms['collect'] / ms['collect_without']:.3f}x, {ms['collect'] - ms['collect_without']:+.1f} ms)"
    )
    spread = max(_spread(values) for values in runs.values()) * 1000
    print(f"(the whole runs' own spread: interquartile range up to {spread:.0f} ms; a smaller difference is noise)")
    print(f"modules the plugin adds to the run ({len(added)}): {', '.join(added)}")
    note = f"CPU time, {bytecode}; median of {args.rounds} interleaved rounds"
    emit(
        Result(
            benchmark="bench_import",
            metric="import pytest_ktrace.plugin, after import pytest",
            value=round(plugin, 2),
            unit="ms",
            baseline="import pytest in the same interpreter",
            baseline_value=round(bare, 2),
            note=note,
        )
    )
    emit(
        Result(
            benchmark="bench_import",
            metric="whole pytest run of one test that does not use ktrace (every installed plugin loaded)",
            value=round(ms["run"], 1),
            unit="ms",
            baseline="the same run with -p no:ktrace",
            baseline_value=round(ms["run_without"], 1),
            note=f"{note}; the plugin adds {len(added)} modules",
        )
    )
    emit(
        Result(
            benchmark="bench_import",
            metric="pytest --collect-only of that file",
            value=round(ms["collect"], 1),
            unit="ms",
            baseline="the same with -p no:ktrace",
            baseline_value=round(ms["collect_without"], 1),
            note=note,
        )
    )


if __name__ == "__main__":
    main()
