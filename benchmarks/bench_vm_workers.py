"""--ktrace-vm under xdist: a guest per worker, or one guest shared by the workers? Measured, not guessed.

Usage (root, qemu installed):  .venv/bin/python benchmarks/bench_vm_workers.py [--tests 12] [--arch x86_64]

A suite of N kprobe tests (each rebinds a device so the guest kernel runs __setup_irq) runs three ways, wall
clock from pytest's start to its end, guest boots included:
- serial:    -n 0 --ktrace-vm=ARCH              one guest, one worker
- per-worker: -n 2 --ktrace-vm=ARCH             each worker boots its own guest (what the plugin does)
- shared:    -n 2 --ktrace-host=<one guest>     both workers on one guest booted beforehand (its boot added)
Prints each time and the ratios to serial.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pytest_ktrace.guests import boot, build_image  # noqa: E402

SUITE = """
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_setup_irq(ktrace, n):
    done = ktrace.kretprobe("__setup_irq", ret="$retval:s32")
    ktrace.run(["ktrace-trigger-setup-irq"])
    done.assert_returned(0)
"""


def _pytest(directory: Path, *args: str) -> float:
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    elapsed = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"pytest {' '.join(args)} failed:\n{run.stdout[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=12)
    parser.add_argument("--arch", default="x86_64", choices=("x86_64", "arm64"))
    args = parser.parse_args()
    build_image(args.arch)  # built once, outside every measurement
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        (directory / "test_vm.py").write_text(SUITE.format(tests=args.tests))
        serial = _pytest(directory, f"--ktrace-vm={args.arch}")
        per_worker = _pytest(directory, "-n", "2", f"--ktrace-vm={args.arch}")
        started = time.monotonic()
        guest = boot(args.arch, workdir=directory / "guest")
        booted = time.monotonic() - started
        try:
            shared = booted + _pytest(
                directory,
                "-n",
                "2",
                f"--ktrace-host={guest.host_alias}",
                f"--ktrace-ssh-config={guest.ssh_config_path}",
            )
        finally:
            guest.shutdown()
    print(f"{args.tests} kprobe tests on the {args.arch} guest (TCG), wall clock with boots:")
    for name, seconds in (
        ("serial (-n 0)", serial),
        ("a guest per worker (-n 2)", per_worker),
        ("one shared guest (-n 2)", shared),
    ):
        print(f"  {name:28s} {seconds:7.1f} s   {serial / seconds:5.2f}x serial")


if __name__ == "__main__":
    main()
