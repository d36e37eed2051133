"""labgrid places that are qemu guests: what a second place buys a kprobe suite, and what a place costs per test.

Usage (root, labgrid and qemu installed):
    .venv/bin/python benchmarks/bench_labgrid_guests.py [--tests 8] [--rounds 3]

A real coordinator and exporter on 127.0.0.1 (tests/labgrid/lab.py) export the x86_64 and arm64 guests as places
guest-x86_64 and guest-arm64 (tests/labgrid/lab_guests.py: tags kind=guest, arch=<arch>). Measured, each suite a
pytest run of small kretprobe tests (``__setup_irq``, hit by a command in the guest):
- the suite with -n 2 on one place (each arch alone) and on both places (kind=guest): the speed-up is the ratio
  of the wall clocks. On one place the two workers hand it to each other after every test, and the waiting worker
  sees it free only at its next poll of the coordinator (the interval grows to a second), so -n 2 on one place is
  slower than the same place without xdist, and two places can gain more than twice;
- the suite without xdist on the x86_64 guest as a plain SSH host (``--ktrace-host``) and as its labgrid place:
  the difference per test is the reservation, acquire, release and cancel around each test (the run's coordinator
  session included).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SUITE = """
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_setup_irq_returns_zero(ktrace, n):
    done = ktrace.kretprobe("__setup_irq", ret="$retval:s32")
    ktrace.run(["ktrace-trigger-setup-irq"])
    done.assert_returned(0)
"""


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pytest(directory: Path, *args: str) -> float:
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_suite.py", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    elapsed = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"pytest {' '.join(args)} failed:\n{run.stdout[-3000:]}")
    return elapsed


def _timed(runs: dict[str, list[float]], name: str, directory: Path, *args: str) -> None:
    runs.setdefault(name, []).append(_pytest(directory, *args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=8, help="tests per suite (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each suite, the median reported (default 3)")
    args = parser.parse_args()
    labs = _load("ktrace_bench_lab", ROOT / "tests" / "labgrid" / "lab.py")
    lab_guests = _load("ktrace_bench_lab_guests", ROOT / "tests" / "labgrid" / "lab_guests.py")
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        (directory / "test_suite.py").write_text(SUITE.format(tests=args.tests))
        pool = lab_guests.start_guest_pool(directory / "guests")
        lab = labs.Lab(directory / "lab").start()
        try:
            pool.export(lab)
            place = [f"--ktrace-labgrid={lab.address}", *pool.ssh_args]
            # a first run per guest fetches what the plugin caches about its kernel: not what is measured here
            _pytest(directory, "-n", "2", "--ktrace-labgrid-tags=kind=guest", *place)
            runs: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for arch in lab_guests.ARCHES:
                    _timed(runs, arch, directory, "-n", "2", f"--ktrace-labgrid-tags=arch={arch}", *place)
                _timed(runs, "both", directory, "-n", "2", "--ktrace-labgrid-tags=kind=guest", *place)
                _timed(runs, "host", directory, *pool.host_args("x86_64"))
                _timed(runs, "place", directory, "--ktrace-labgrid-tags=arch=x86_64", *place)
        finally:
            lab.stop()
            pool.shutdown()
    median = {name: statistics.median(seconds) for name, seconds in runs.items()}
    both, as_host, as_place = median["both"], median["host"], median["place"]
    alone = {arch: median[arch] for arch in lab_guests.ARCHES}
    ratios = ", ".join(f"x{seconds / both:.2f} over {arch} alone ({seconds:.1f} s)" for arch, seconds in alone.items())
    print(f"median of {args.rounds} round(s) each")
    print(f"{args.tests} kretprobe tests, -n 2: both guests as places {both:.1f} s: {ratios}")
    print(
        f"{args.tests} kretprobe tests on the x86_64 guest: as an SSH host {as_host:.1f} s, as a labgrid place "
        f"{as_place:.1f} s: {(as_place - as_host) / args.tests * 1000:+.0f} ms per test "
        f"(x{as_place / as_host:.2f} the suite); -n 2 on that one place: {alone['x86_64']:.1f} s"
    )


if __name__ == "__main__":
    main()
