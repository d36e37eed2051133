"""labgrid places: what a reservation cycle costs per test, and what a second place buys. Measured, not guessed.

Usage (root, labgrid installed):  .venv/bin/python benchmarks/bench_labgrid.py [--cycles 50] [--tests 8]

A real coordinator and exporter on 127.0.0.1 (tests/labgrid/lab.py) export the loopback sshd (tests/ssh/sshd.py)
as places loop-a and loop-b. Measured:
- a cycle in-process: reserve, wait for the allocation, acquire, read the NetworkService, release, cancel;
- the same suite of small tracepoint tests on the sshd as an SSH host and as a labgrid place: the difference
  per test is what the place costs a test in a pytest run;
- a suite of tests that each keep their place busy for a second, with -n 2, on one place and on two places:
  the speed-up is the ratio of the wall clocks.
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
sys.path.insert(0, str(Path(__file__).parent))

from loopback_sshd import _harness  # noqa: E402

SMALL = """
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_exec(ktrace, n):
    execs = ktrace.tracepoint("sched:sched_process_exec")
    result = ktrace.run(["/bin/true"])
    execs.assert_any_call(filename="/bin/true", pid=result.pid)
"""

BUSY = """
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_busy(ktrace, n):
    ktrace.run(["sleep", "1"])
"""


def _lab_module() -> Any:
    spec = importlib.util.spec_from_file_location("ktrace_bench_lab", ROOT / "tests" / "labgrid" / "lab.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules["ktrace_bench_lab"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def _cycles(address: str, count: int, records: Path) -> list[float]:
    from pytest_ktrace._labgrid._client import CoordinatorClient
    from pytest_ktrace._labgrid._places import PlaceBroker
    from pytest_ktrace._labgrid._records import HoldingRecords
    from pytest_ktrace._labgrid._request import LabgridRequest

    client = CoordinatorClient(address)
    client.start()
    broker = PlaceBroker(client, HoldingRecords(records), progress=print, warn=print)
    wanted = LabgridRequest(address, tags=(("slot", "a"),))
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            broker.hold(wanted, "bench").release()
            times.append(time.perf_counter() - started)
    finally:
        client.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--tests", type=int, default=8)
    args = parser.parse_args()
    sshd, labs = _harness(), _lab_module()
    sshd.ensure_users()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        directory.chmod(0o755)  # sshd reads authorized_keys as the logging-in user
        server = sshd.SshServer(directory / "sshd").start()
        lab = labs.Lab(directory / "lab").start()
        try:
            service = {"address": "127.0.0.1", "port": server.port, "username": sshd.ROOT_ALIAS}
            lab.export("loop", {"loop-a": {"NetworkService": service}, "loop-b": {"NetworkService": service}})
            for slot in ("a", "b"):
                lab.add_place(f"loop-{slot}", f"loop/loop-{slot}/NetworkService", {"lab": "loop", "slot": slot})
            cycles = _cycles(lab.address, args.cycles, directory / "records")
            config = directory / "ssh_config"
            config.write_text(f"Host 127.0.0.1\n  UserKnownHostsFile {server.known_hosts}\n  IdentitiesOnly yes\n")
            ssh = [f"--ktrace-ssh-config={config}", f"--ktrace-ssh-identity={server.client_key}"]
            place = [f"--ktrace-labgrid={lab.address}", *ssh]
            (directory / "test_small.py").write_text(SMALL.format(tests=args.tests * 4))
            host = f"--ktrace-host={sshd.ROOT_ALIAS}@127.0.0.1:{server.port}"
            as_host = _pytest(directory, "test_small.py", host, *ssh)
            as_place = _pytest(directory, "test_small.py", "--ktrace-labgrid-tags=slot=a", *place)
            (directory / "test_busy.py").write_text(BUSY.format(tests=args.tests))
            busy_host = _pytest(directory, "test_busy.py", "-n", "2", host, *ssh)
            one = _pytest(directory, "test_busy.py", "-n", "2", "--ktrace-labgrid-tags=slot=a", *place)
            two = _pytest(directory, "test_busy.py", "-n", "2", "--ktrace-labgrid-tags=lab=loop", *place)
        finally:
            lab.stop()
            server.stop()
    small = args.tests * 4
    print(
        f"reserve + acquire + release + cancel, in-process: median {statistics.median(cycles) * 1000:.1f} ms, "
        f"p90 {sorted(cycles)[int(len(cycles) * 0.9)] * 1000:.1f} ms ({len(cycles)} cycles)"
    )
    print(
        f"{small} small tests: as an SSH host {as_host:.2f} s, as a labgrid place {as_place:.2f} s: "
        f"{(as_place - as_host) / small * 1000:+.0f} ms per test (the run's coordinator session included)"
    )
    print(
        f"{args.tests} tests busy 1 s each, -n 2: one place {one:.2f} s, two places {two:.2f} s: x{one / two:.2f} "
        f"(both workers on the SSH host, unshared: {busy_host:.2f} s)"
    )


if __name__ == "__main__":
    main()
