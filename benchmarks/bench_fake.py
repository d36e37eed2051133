"""The fake backend's cost: the plugin's time per two-probe fake test, and a replayed suite with and without xdist.

Usage: .venv/bin/python benchmarks/bench_fake.py [--rounds 300] [--tests 200] [--repeat 3] [--local]

1. One two-probe test on FakeBackend(debian-6.1-arm64), in this process: what the ``ktrace`` fixture does for
   ``bench_per_test.py``'s injected test (TraceSession, kprobe + kretprobe, one batch to arm, two events
   injected, collected, parsed, asserted, teardown), median over --rounds after a warm-up, in CPU time of the
   test's thread (the fake does no I/O: on an idle machine that is its wall time; on a shared machine it is not
   inflated by other processes). Next to it, from the same run:
   - the floor under it: the same tracefs operations and injections sent straight to the FakeBackend (no
     session, no parsing of the trace and formats, no assertions): what imitating the kernel costs;
   - the same two events appended to a list and checked by a plain Python loop: what a test without a kernel
     model costs;
   and where the plugin's time goes (inside the fake backend, and the rest: session, parser, assertions).
2. A replayed suite: --tests tests in one module, each replaying its own copy of the examples' recorded
   ``__setup_irq`` cassette (arm64), run by pytest with -n 0 and -n 2: wall time including start-up, best of
   --repeat. Each mode is also run with 2 tests, and with 2 tests that use no ktrace fixture: the differences
   give the cost per test, the fixed cost (start-up, collection, workers) and pytest-ktrace's share of it, hence
   the suite size from which -n 2 pays off. The same from the CPU time of all the run's processes, which a
   shared machine does not inflate: how big a suite must be for -n 2 to pay off at best on two idle cores.
   Each with this checkout's environment (every pytest plugin installed in it is loaded, in every worker) and
   with pytest-ktrace and xdist alone. The suites run with bytecode cached, as after ``pip install`` (the
   2-test run without it is shown: this machine sets PYTHONDONTWRITEBYTECODE, and every process then compiles
   what it imports).
--local adds the same two probes as uprobes on this machine's tracefs (root), for scale.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))

from _results import Result, emit  # noqa: E402

from pytest_ktrace._identity import RunIdentity  # noqa: E402
from pytest_ktrace._session import TraceSession  # noqa: E402
from pytest_ktrace.backends._base import Op, OpResult, Write  # noqa: E402
from pytest_ktrace.fake._backend import FakeBackend  # noqa: E402
from pytest_ktrace.snapshots._snapshot import load_snapshot  # noqa: E402

SNAPSHOT = "debian-6.1-arm64"
CASSETTE = ROOT / "examples" / "cassettes" / "test_setup_irq" / "test_rebind_registers_the_irq_arm64.json"
SUITE_MODULE = """
import pytest

DRIVER, DEVICE = "/sys/bus/amba/drivers/rtc-pl031", "9010000.pl031"


@pytest.mark.parametrize("copy", range({tests}))
def test_rebind(ktrace, copy):
    setup = ktrace.kprobe("__setup_irq", irq="$arg1:u32", name="+0(+80($arg3)):string")
    done = ktrace.kretprobe("__setup_irq", ret="$retval:s32")
    result = ktrace.run(["sh", "-c", f'echo "$1" > {{DRIVER}}/unbind && echo "$1" > {{DRIVER}}/bind', "sh", DEVICE])
    assert result.returncode == 0, result.stderr
    setup.assert_any_call(name="rtc-pl031", irq=lambda irq: irq > 0)
    done.assert_returned(0)
    ktrace.assert_order(setup, done)
    ktrace.assert_latency(setup, done, max_us=1_000_000)
"""


PLAIN_MODULE = """
import pytest


@pytest.mark.parametrize("copy", range({tests}))
def test_plain(copy):
    assert copy >= 0
"""


# --- 1. one two-probe test, in this process -----------------------------------------------------------------


# The test's own CPU time: the fake does no I/O and never sleeps, so on an idle machine this is its wall time,
# and on a shared one it is not inflated by the time other processes hold the CPU.
clock = time.thread_time


def timed(fake: FakeBackend) -> list[float]:
    """Count the time spent inside ``fake``'s entry points (the returned one-element list)."""
    spent = [0.0]
    for name in ("apply", "inject_probe", "run", "defer"):
        method = getattr(fake, name)

        def wrapper(*args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
            started = clock()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[0] += clock() - started

        setattr(fake, name, wrapper)
    return spent


def plugin_test(backend: Any, identity: RunIdentity, serial: int) -> None:
    session = TraceSession(backend, identity, serial)
    setup = session.kprobe("__setup_irq", irq="%x0:u32", name="+0(+80(%x2)):string")
    done = session.kretprobe("__setup_irq")
    session.inject(setup, irq=16, name="rtc-pl031")
    session.inject(done, ret=0)
    setup.assert_called_once_with(irq=16, name="rtc-pl031")
    done.assert_returned(0)
    assert not session.teardown()


def recorded_ops(rounds: int) -> list[list[list[Op]]]:
    """The batches the plugin sent for each test of a run of ``rounds`` + 1 tests."""
    fake = FakeBackend(load_snapshot(SNAPSHOT))
    batches: list[list[Op]] = []
    original = fake.apply

    def recording(ops: Sequence[Op], *, stop_on_error: bool = False) -> list[OpResult]:
        batches.append(list(ops))
        return original(ops, stop_on_error=stop_on_error)

    fake.apply = recording  # type: ignore[method-assign]
    identity = RunIdentity.current()
    per_test = []
    for serial in range(1, rounds + 2):
        batches = []
        plugin_test(fake, identity, serial)
        per_test.append(batches)
    return per_test


def bare_fake_test(fake: FakeBackend, batches: list[list[Op]]) -> None:
    """The plugin's tracefs operations for one test, straight to the fake, the two events injected after the
    arming batch; checked just enough to know the fake did the work."""
    traces = []
    for index, batch in enumerate(batches):
        results = fake.apply(batch)
        assert all(result.ok for result in results), [result for result in results if not result.ok]
        traces += [result.data for result in results if result.op.path.endswith("/trace")]
        if index == 0:
            definitions = [op.data for op in batch if isinstance(op, Write) and op.path == "kprobe_events"]
            entry, exit_ = (definition.split(" ", 1)[0].split(":", 1)[1] for definition in definitions)
            fake.inject(entry, {"irq": 16, "name": "rtc-pl031"})
            fake.inject(exit_, {"ret": 0})
    assert any('name="rtc-pl031"' in trace and "ret=0" in trace for trace in traces)


def plain_test() -> None:
    """The two events as dicts in a list, checked by a loop: no kernel model, no trace text."""
    events: list[dict[str, object]] = []
    events.append({"name": "setup", "irq": 16, "irq_name": "rtc-pl031", "pid": 40001})
    events.append({"name": "done", "ret": 0, "pid": 40002})
    calls = [event for event in events if event["name"] == "setup"]
    assert len(calls) == 1 and calls[0]["irq"] == 16 and calls[0]["irq_name"] == "rtc-pl031"
    assert [event["ret"] for event in events if event["name"] == "done"] == [0]


def median_of(run: Callable[[int], None], rounds: int, *, timer: Callable[[], float] = clock) -> float:
    run(0)  # warm-up: imports, caches, the first format read
    times = []
    for index in range(1, rounds + 1):
        started = timer()
        run(index)
        times.append(timer() - started)
    return statistics.median(times)


def per_test(rounds: int) -> dict[str, float]:
    identity = RunIdentity.current()
    fake = FakeBackend(load_snapshot(SNAPSHOT))
    spent = timed(fake)
    inside: list[float] = []

    def plugin_round(index: int) -> None:
        spent[0] = 0.0
        plugin_test(fake, identity, index + 1)
        inside.append(spent[0])

    plugin = median_of(plugin_round, rounds)
    batches = recorded_ops(rounds)
    bare_fake = FakeBackend(load_snapshot(SNAPSHOT))
    bare = median_of(lambda index: bare_fake_test(bare_fake, batches[index]), rounds)
    plain = median_of(lambda index: plain_test(), rounds * 10)
    return {"plugin": plugin, "inside fake": statistics.median(inside[1:]), "bare fake": bare, "plain": plain}


def per_test_local(rounds: int, scratch: Path) -> Optional[float]:
    from ktrace_testing import build_probed
    from pytest_ktrace.backends._local import LocalBackend

    if os.geteuid() != 0 or not Path("/sys/kernel/tracing/uprobe_events").exists():
        print("  (no local uprobes: needs root and tracefs)")
        return None
    binary = str(build_probed(scratch))
    backend = LocalBackend()
    identity = RunIdentity.current()

    def local_round(index: int) -> None:
        session = TraceSession(backend, identity, 100_000 + index)
        entry = session.uprobe(binary, "setup_thing", irq="$arg1:s32")
        done = session.uretprobe(binary, "setup_thing")
        session.run([binary, "setup", "eth2", "30"])
        entry.assert_called_once_with(irq=30)
        done.assert_returned(0)
        assert not session.teardown()

    return median_of(local_round, min(rounds, 20), timer=time.perf_counter)  # it waits for the kernel: wall time


# --- 2. a replayed suite under xdist ------------------------------------------------------------------------


def write_suite(where: Path, tests: int, *, plain: bool = False) -> None:
    """``tests`` replayed tests in one module, each with its own copy of the cassette (``plain``: tests that use
    no ktrace fixture, for pytest's own start-up)."""
    shutil.rmtree(where, ignore_errors=True)
    (where / "cassettes" / "test_replayed").mkdir(parents=True)
    if plain:
        (where / "test_replayed.py").write_text(PLAIN_MODULE.format(tests=tests))
        return
    (where / "test_replayed.py").write_text(SUITE_MODULE.format(tests=tests))
    for copy in range(tests):
        shutil.copy(CASSETTE, where / "cassettes" / "test_replayed" / f"test_rebind_{copy}.json")


# Where the workers' start-up goes: this checkout's environment loads every pytest plugin installed in it
# (hypothesis, labgrid, pytest-html, pytest-benchmark, ...); a CI job with only pytest-ktrace and xdist loads two.
PLUGIN_SETS = {
    "this venv's plugins": ([], {}),
    "pytest-ktrace + xdist only": (
        ["-p", "xdist.plugin", "-p", "pytest_ktrace.plugin"],
        {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    ),
}


CPU_SECONDS: dict[tuple[str, int, str], float] = {}  # (suite dir, workers, plugins) -> least CPU of every process


def run_suite(where: Path, tests: int, workers: int, env: dict[str, str], plugins: list[str]) -> float:
    """Wall time of one pytest run (its CPU time, summed over the controller and the workers, kept aside)."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, "--ktrace-backend=fake"]
    if workers:
        args += ["-n", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(args, cwd=where, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0 or f"{tests} passed" not in run.stdout:
        raise SystemExit(f"the suite of {tests} with -n {workers} failed:\n{run.stdout[-3000:]}{run.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    key = (str(where), workers, " ".join(plugins))
    CPU_SECONDS[key] = min(CPU_SECONDS.get(key, cpu), cpu)
    return elapsed


def suite_times(scratch: Path, tests: int, repeat: int) -> dict[tuple[str, str, int], float]:
    """Best wall time of each suite ("replayed 2", "replayed <tests>", "plain 2") under -n 0 and -n 2, per plugin
    set, with bytecode cached; ("uncached", ...): the 2 replayed tests when every process compiles what it
    imports (this machine's PYTHONDONTWRITEBYTECODE)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")  # bytecode kept out of the source tree
    uncached = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(scratch / "none"))
    suites = {"replayed 2": scratch / "small", f"replayed {tests}": scratch / "big", "plain 2": scratch / "plain"}
    sizes = {"replayed 2": 2, f"replayed {tests}": tests, "plain 2": 2}
    for name, where in suites.items():
        write_suite(where, sizes[name], plain=name.startswith("plain"))
    best: dict[tuple[str, str, int], float] = {}

    def keep(key: tuple[str, str, int], elapsed: float) -> None:
        best[key] = min(best.get(key, elapsed), elapsed)

    for plugins, extra in PLUGIN_SETS.values():
        run_suite(suites["replayed 2"], 2, 2, {**env, **extra}, plugins)  # writes the bytecode
    for _ in range(repeat):
        for label, (plugins, extra) in PLUGIN_SETS.items():
            for workers in (0, 2):
                for name, where in suites.items():
                    keep((label, name, workers), run_suite(where, sizes[name], workers, {**env, **extra}, plugins))
        keep(("uncached", "replayed 2", 0), run_suite(suites["replayed 2"], 2, 0, uncached, []))
    for label, (plugins, _extra) in PLUGIN_SETS.items():
        for workers in (0, 2):
            for name, where in suites.items():
                best[(f"cpu {label}", name, workers)] = CPU_SECONDS[(str(where), workers, " ".join(plugins))]
    return best


def suite_figures(suite: dict[tuple[str, str, int], float], label: str, tests: int) -> dict[str, Any]:
    """Per plugin set: wall times, the cost per test and the fixed cost of each mode, and from which size -n 2
    pays off (by wall time, and at best on two idle cores by CPU time: -n 0 runs on one core, -n 2 can at
    best spread the CPU of its controller and both workers evenly over the two)."""
    big = f"replayed {tests}"
    per = {w: (suite[(label, big, w)] - suite[(label, "replayed 2", w)]) / (tests - 2) for w in (0, 2)}
    fixed = {w: suite[(label, "replayed 2", w)] - 2 * per[w] for w in (0, 2)}
    cpu = {w: suite[(f"cpu {label}", big, w)] for w in (0, 2)}
    cpu_per = {w: (cpu[w] - suite[(f"cpu {label}", "replayed 2", w)]) / (tests - 2) for w in (0, 2)}
    cpu_fixed = {w: cpu[w] - tests * cpu_per[w] for w in (0, 2)}
    gain = cpu_per[0] - cpu_per[2] / 2
    return {
        "n0": suite[(label, big, 0)],
        "n2": suite[(label, big, 2)],
        "per": per,
        "fixed": fixed,
        "plain": {w: suite[(label, "plain 2", w)] for w in (0, 2)},
        "startup": fixed[0] - suite[(label, "plain 2", 0)],
        "pays": max(0.0, (fixed[2] - fixed[0]) / (per[0] - per[2])) if per[2] < per[0] else None,
        "cpu": cpu,
        "cpu_per": cpu_per,
        "cpu_fixed": cpu_fixed,
        "at_best": max(0.0, (cpu_fixed[2] / 2 - cpu_fixed[0]) / gain) if gain > 0 else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--local", action="store_true", help="also time the test as uprobes on this machine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ktrace-bench-fake-") as scratch_dir:
        scratch = Path(scratch_dir)
        one = per_test(args.rounds)
        local = per_test_local(args.rounds, scratch) if args.local else None
        suite = suite_times(scratch, args.tests, args.repeat)

    ms = {key: value * 1e3 for key, value in one.items()}
    rest = ms["plugin"] - ms["inside fake"]
    print(f"one two-probe fake test ({SNAPSHOT}: define, arm, inject 2 events, collect, assert, teardown), median")
    print(f"  plugin time                        {ms['plugin']:8.3f} ms")
    print(f"    inside the fake backend          {ms['inside fake']:8.3f} ms")
    print(f"    session, parser, assertions      {rest:8.3f} ms")
    print(
        f"  bare FakeBackend, same operations  {ms['bare fake']:8.3f} ms"
        f"  plugin / bare {ms['plugin'] / ms['bare fake']:.1f}x"
    )
    print(f"  plain Python list and loop         {ms['plain']:8.4f} ms")
    if local is not None:
        print(f"  local uprobes (wall time), scale   {local * 1e3:8.3f} ms  fake {local / one['plugin']:.0f}x faster")

    tests = args.tests
    print(f"\nreplayed suite: {tests} tests in one module, each its own cassette (wall time, best of {args.repeat})")
    figures = {label: suite_figures(suite, label, tests) for label in PLUGIN_SETS}
    for label, f in figures.items():
        print(f"  {label}:")
        print(f"    -n 0: {f['n0']:6.2f} s  {tests / f['n0']:6.1f} tests/s")
        print(
            f"    -n 2: {f['n2']:6.2f} s  {tests / f['n2']:6.1f} tests/s   -n 2 against -n 0: {f['n0'] / f['n2']:.2f}x"
        )
        print(f"    per test: -n 0 {f['per'][0] * 1e3:.1f} ms, -n 2 {f['per'][2] * 1e3:.1f} ms (the run's wall time)")
        print(
            f"    fixed cost: -n 0 {f['fixed'][0]:.2f} s, -n 2 {f['fixed'][2]:.2f} s; pytest alone (2 tests without"
            f" ktrace) {f['plain'][0]:.2f} s, {f['plain'][2]:.2f} s; pytest-ktrace's start-up in a process"
            f" (imports, snapshot) {f['startup']:.2f} s"
        )
        print(
            f"    -n 2 pays off from about {f['pays']:.0f} tests"
            if f["pays"] is not None
            else "    -n 2 does not pay off at any size here: its tests take no less wall time than -n 0's"
        )
        print(
            f"    CPU of all processes: -n 0 {f['cpu'][0]:.2f} s ({f['cpu_fixed'][0]:.2f} s fixed +"
            f" {f['cpu_per'][0] * 1e3:.1f} ms per test), -n 2 {f['cpu'][2]:.2f} s ({f['cpu_fixed'][2]:.2f} s +"
            f" {f['cpu_per'][2] * 1e3:.1f} ms per test)"
        )
        print(
            f"    on two idle cores, -n 2 could pay off from about {f['at_best']:.0f} tests at best"
            if f["at_best"] is not None
            else "    on two idle cores -n 2 could not pay off: its CPU per test is over twice -n 0's"
        )
    print(
        f"  the 2-test -n 0 run when every process compiles what it imports (PYTHONDONTWRITEBYTECODE):"
        f" {suite[('uncached', 'replayed 2', 0)]:.2f} s"
    )

    emit(
        Result(
            benchmark="bench_fake",
            metric="two-probe fake test (define, arm, inject 2 events, collect, assert, teardown), plugin CPU time",
            value=round(ms["plugin"], 4),
            unit="ms",
            baseline="the same tracefs operations and injections sent straight to FakeBackend",
            baseline_value=round(ms["bare fake"], 4),
            note=(
                f"{ms['inside fake']:.2f} ms of it inside the fake backend, {rest:.2f} ms session, parser and"
                f" assertions; the two events in a list checked by a Python loop: {ms['plain'] * 1e3:.1f} us"
            ),
        )
    )
    emit(
        Result(
            benchmark="bench_fake",
            metric=(
                "the same test, the plugin's own CPU time: its time outside the fake backend (session, probe"
                " definitions, format and trace parsing, assertions, teardown)"
            ),
            value=round(rest, 4),
            unit="ms",
            baseline="the same tracefs operations and injections sent straight to FakeBackend",
            baseline_value=round(ms["bare fake"], 4),
        )
    )
    for label, f in figures.items():
        pays = f"pays off from about {f['pays']:.0f} tests" if f["pays"] is not None else "does not pay off here"
        at_best = (
            f"from {f['at_best']:.0f} at best on two idle cores (CPU time)"
            if f["at_best"] is not None
            else "never on two cores (CPU time)"
        )
        emit(
            Result(
                benchmark="bench_fake",
                metric=f"{tests} replayed cassette tests, -n 2 ({label})",
                value=round(f["n2"], 3),
                unit="s",
                baseline="the same suite with -n 0",
                baseline_value=round(f["n0"], 3),
                note=(
                    f"{f['per'][0] * 1e3:.1f} ms per test with -n 0, {f['per'][2] * 1e3:.1f} ms with -n 2; the second"
                    f" worker adds {f['fixed'][2] - f['fixed'][0]:.2f} s of start-up (pytest-ktrace's share of a"
                    f" process's start-up: {f['startup']:.2f} s): -n 2 {pays}, {at_best}"
                ),
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
