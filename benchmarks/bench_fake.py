"""The fake backend's cost: per-test overhead, and a suite of fake tests under pytest-xdist (1, 2, 4 workers).

Usage: .venv/bin/python benchmarks/bench_fake.py [--rounds 50] [--tests 200]

- per test: what the ktrace fixture does for a two-probe test on FakeBackend(debian-6.1-arm64): define, arm,
  inject one entry and one return event, assert, tear down; side by side with the same test on the local backend
  (uprobes on tests/prog/probed.c) for scale;
- suite: --tests copies of a replayed test (the examples' recorded __setup_irq cassette) run by pytest with
  -n 0/2/4, wall time and tests/s, so a suite of thousands of tests can be sized.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ktrace_testing import build_probed  # noqa: E402
from pytest_ktrace._identity import RunIdentity  # noqa: E402
from pytest_ktrace._session import TraceSession  # noqa: E402
from pytest_ktrace.backends._local import LocalBackend  # noqa: E402
from pytest_ktrace.fake._backend import FakeBackend  # noqa: E402
from pytest_ktrace.snapshots._snapshot import load_snapshot  # noqa: E402


def per_test_fake(rounds: int) -> list[float]:
    backend = FakeBackend(load_snapshot("debian-6.1-arm64"))
    identity = RunIdentity.current()
    times = []
    for serial in range(1, rounds + 1):
        started = time.perf_counter()
        session = TraceSession(backend, identity, serial)
        setup = session.kprobe("__setup_irq", irq="%x0:u32", name="+0(+80(%x2)):string")
        done = session.kretprobe("__setup_irq")
        session.inject(setup, irq=16, name="rtc-pl031")
        session.inject(done, ret=0)
        setup.assert_called_once_with(irq=16, name="rtc-pl031")
        done.assert_returned(0)
        assert not session.teardown()
        times.append(time.perf_counter() - started)
    return times


def per_test_local(rounds: int, binary: str) -> list[float]:
    backend = LocalBackend()
    identity = RunIdentity.current()
    times = []
    for serial in range(1, rounds + 1):
        started = time.perf_counter()
        session = TraceSession(backend, identity, serial)
        entry = session.uprobe(binary, "setup_thing", irq="$arg1:s32")
        done = session.uretprobe(binary, "setup_thing")
        session.run([binary, "setup", "eth2", "30"])
        entry.assert_called_once_with(irq=30)
        done.assert_returned(0)
        assert not session.teardown()
        times.append(time.perf_counter() - started)
    return times


def suite(workers: int, tests: int, scratch: Path) -> float:
    suite_dir = scratch / f"suite{workers}"
    shutil.rmtree(suite_dir, ignore_errors=True)
    (suite_dir / "cassettes").mkdir(parents=True)
    recorded = ROOT / "examples" / "cassettes" / "test_setup_irq" / "test_rebind_registers_the_irq_arm64.json"
    body = (ROOT / "examples" / "test_setup_irq.py").read_text()
    for index in range(tests):
        name = f"test_replay_{index}"
        (suite_dir / f"{name}.py").write_text(body)
        target = suite_dir / "cassettes" / name
        target.mkdir()
        shutil.copy(recorded, target / "test_rebind_registers_the_irq_arm64.json")
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--ktrace-backend=fake",
        "-k",
        "rebind_registers and arm64",
    ]
    if workers:
        args += ["-n", str(workers)]
    started = time.perf_counter()
    run = subprocess.run(args, cwd=suite_dir, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if run.returncode != 0 or f"{tests} passed" not in run.stdout:
        raise SystemExit(f"suite with -n {workers} failed:\n{run.stdout[-3000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--tests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ktrace-bench-fake-") as scratch:
        binary = str(build_probed(Path(scratch)))
        fake = statistics.median(per_test_fake(args.rounds))
        local = statistics.median(per_test_local(min(args.rounds, 20), binary))
        print("per-test overhead (2 probes: define, arm, trigger, assert, teardown), median")
        print(f"  fake (inject)      {fake * 1e3:8.2f} ms")
        print(f"  local (uprobes)    {local * 1e3:8.2f} ms   fake is {local / fake:.0f}x faster")
        print(f"\nsuite of {args.tests} replayed cassette tests (pytest wall time incl. startup)")
        base = None
        for workers in (0, 2, 4):
            elapsed = suite(workers, args.tests, Path(scratch))
            base = base or elapsed
            rate = args.tests / elapsed
            print(f"  -n {workers}: {elapsed:6.2f} s  {rate:7.1f} tests/s  speed-up {base / elapsed:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
