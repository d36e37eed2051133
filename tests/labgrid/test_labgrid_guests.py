"""The qemu guests as places of a real labgrid lab: kprobes (which this machine's kernel lacks) run through labgrid.

The x86_64 and arm64 guests are booted once for the module and exported by a labgrid exporter as places
``guest-x86_64`` and ``guest-arm64`` (tags ``kind=guest``, ``arch=<arch>``), each a ``NetworkService`` at the
guest's forwarded SSH port. As in a lab, one key logs in to every board (it is authorised in both guests and given
with ``--ktrace-ssh-identity``), and the boards' host keys are pinned in a known_hosts (the keys the guests printed
on their consoles). Each test has a coordinator of its own; the guests keep running between tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_ktrace._errors import MissingTool
from pytest_ktrace.guests import qemu_available

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.guest

LAB_MODULE = Path(__file__).with_name("lab.py")


def _lab_harness() -> Any:
    return sys.modules["ktrace_tests_lab"]  # loaded by conftest.py, as lab_guests.py is


lab_guests: Any = sys.modules["ktrace_tests_lab_guests"]
ARCHES: tuple[str, ...] = lab_guests.ARCHES
RELEASE_SUFFIX: dict[str, str] = lab_guests.RELEASE_SUFFIX


@pytest.fixture(scope="module")
def guest_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Both guests booted (one after the other) for the whole module, shut down at its end."""
    if not (_lab_harness().BIN / "labgrid-coordinator").exists():
        pytest.skip("labgrid is not installed in this venv: pip install -e '.[labgrid]' (scripts/bootstrap)")
    for arch in ARCHES:
        unavailable = qemu_available(arch)
        if unavailable is not None:
            pytest.skip(unavailable)
    try:
        pool = lab_guests.start_guest_pool(tmp_path_factory.mktemp("lab-guests"))
    except MissingTool as missing:
        pytest.skip(f"cannot build/boot the guests: {missing}")
    try:
        yield pool
    finally:
        pool.shutdown()


@pytest.fixture
def guest_lab(lab: Any, guest_pool: Any) -> Any:
    """A coordinator of this test's own, exporting both guests as places."""
    guest_pool.export(lab)
    return lab


def _with_labgrid_plugin() -> dict[str, str]:
    """Every run here has labgrid's own plugin loaded too (tests/conftest.py leaves it out of pytester's runs)."""
    return {"PYTEST_ADDOPTS": os.environ.get("PYTEST_ADDOPTS", "").replace("-p no:labgrid", "").strip()}


def _assert_all_clean(lab: Any, pool: Any) -> None:
    """Every place released, every reservation cancelled, nothing of ours left in either guest."""
    assert {name: place.acquired for name, place in lab.places().items()} == {f"guest-{arch}": None for arch in ARCHES}
    assert lab.reservations() == []
    assert pool.leftovers() == {arch: [] for arch in ARCHES}


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- a kprobe suite on the place its tags choose -----------------------------------------------------------------

KPROBES = f"""
import importlib.util
import json
import os
import signal
import sys
import time

spec = importlib.util.spec_from_file_location("lab_view", {str(LAB_MODULE)!r})
lab_view = sys.modules["lab_view"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab_view)


def _note(ktrace, ktrace_target, entered):
    place = ktrace_target.settings.target.labgrid_place
    lab = lab_view.Lab(None, port=int(os.environ["LAB_PORT"]))
    held = lab.places()[place]
    (mine,) = [r for r in lab.reservations() if r.token == held.reservation]
    assert (held.acquired, mine.state, mine.place) == (lab_view.my_owner(), 2, place)
    with open(os.environ["PLACES_LOG"], "a") as log:
        log.write(json.dumps({{
            "place": place, "pid": os.getpid(), "token": held.reservation, "arch": ktrace.arch,
            "release": ktrace.target.release, "entered": entered, "left": time.time(),
        }}) + "\\n")


def test_kprobe_sees_an_irq_set_up(ktrace, ktrace_target):
    entered = time.time()
    setup = ktrace.kprobe("__setup_irq", irq="$arg1:u32")
    ktrace.run(["ktrace-trigger-setup-irq"])
    setup.assert_called()
    _note(ktrace, ktrace_target, entered)


def test_kretprobe_sees_it_return_zero(ktrace, ktrace_target):
    entered = time.time()
    done = ktrace.kretprobe("__setup_irq", ret="$retval:s32")
    ktrace.run(["ktrace-trigger-setup-irq"])
    done.assert_returned(0)
    _note(ktrace, ktrace_target, entered)
"""


def _run(pytester: pytest.Pytester, lab: Any, pool: Any, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_guest_kprobes=KPROBES)
    env = {"LAB_PORT": str(lab.port), "PLACES_LOG": str(pytester.path / "places.log"), **_with_labgrid_plugin()}
    for key, value in env.items():
        pytester._monkeypatch.setenv(key, value)
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--ktrace-labgrid={lab.address}", *pool.ssh_args, *args, timeout=600
    )


@pytest.mark.parametrize("arch", ARCHES)
def test_a_kprobe_suite_runs_on_the_guest_its_arch_tag_chooses(
    pytester: pytest.Pytester, guest_lab: Any, guest_pool: Any, arch: str
) -> None:
    result = _run(pytester, guest_lab, guest_pool, f"--ktrace-labgrid-tags=arch={arch}")
    result.assert_outcomes(passed=2)
    machine = "aarch64" if arch == "arm64" else "x86_64"
    result.stdout.fnmatch_lines(
        [f"ktrace: labgrid:guest-{arch} (backend ssh): Linux 6.1.*{RELEASE_SUFFIX[arch]} {machine}; *2 test(s)"]
    )
    runs = _log(pytester.path / "places.log")
    assert [(run["place"], run["arch"]) for run in runs] == [(f"guest-{arch}", arch)] * 2
    assert all(run["release"].endswith(RELEASE_SUFFIX[arch]) for run in runs), runs
    _assert_all_clean(guest_lab, guest_pool)


# --- two runs sharing both guests ---------------------------------------------------------------------------------

SHARED = (
    KPROBES.split("def test_kprobe_sees_an_irq_set_up")[0]
    + """
import pytest


@pytest.mark.parametrize("n", range(4))
def test_shares_the_guests(ktrace, ktrace_target, n):
    entered = time.time()
    done = ktrace.kretprobe("__setup_irq", ret="$retval:s32")
    ktrace.run(["ktrace-trigger-setup-irq"])
    done.assert_returned(0)
    _note(ktrace, ktrace_target, entered)
"""
)


def test_two_concurrent_runs_with_two_workers_each_share_both_guests_without_overlap(
    pytester: pytest.Pytester, guest_lab: Any, guest_pool: Any
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_shared_guests=SHARED)
    log = pytester.path / "places.log"
    env = {**os.environ, **_with_labgrid_plugin(), "LAB_PORT": str(guest_lab.port), "PLACES_LOG": str(log)}
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", "test_shared_guests.py"]
    argv += [f"--ktrace-labgrid={guest_lab.address}", "--ktrace-labgrid-tags=kind=guest", *guest_pool.ssh_args]
    runs = [
        subprocess.Popen(argv, cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    held = _log(log)
    assert len(held) == 8 and {run["place"] for run in held} == {"guest-x86_64", "guest-arm64"}, held
    assert len({run["token"] for run in held}) == 8, "a reservation per test"
    assert len({run["pid"] for run in held}) == 4, "both workers of both runs held places"
    for run in held:  # every test traced the kernel of the guest its place names
        arch = run["place"].removeprefix("guest-")
        assert (run["arch"], run["release"].endswith(RELEASE_SUFFIX[arch])) == (arch, True), run
    for arch in ARCHES:
        spans = sorted((run["entered"], run["left"]) for run in held if run["place"] == f"guest-{arch}")
        assert all(left <= next_entered for (_, left), (next_entered, _) in zip(spans, spans[1:])), spans
    _assert_all_clean(guest_lab, guest_pool)


# --- a run killed on a guest --------------------------------------------------------------------------------------

HOLD = """
import os
import signal
import time


def test_holds_its_guest(ktrace, ktrace_target):
    ktrace.kprobe("__setup_irq", irq="$arg1:u32")
    ktrace.arm()
    with open(os.environ["READY"], "w") as ready:
        ready.write(ktrace_target.settings.target.labgrid_place)
    time.sleep(600)
"""


def test_a_run_killed_on_a_guest_leaves_its_kprobe_and_the_next_run_removes_it_and_releases_the_place(
    pytester: pytest.Pytester, guest_lab: Any, guest_pool: Any
) -> None:
    pytester.makepyfile(test_holds_guest=HOLD)
    ready = pytester.path / "ready"
    args = [f"--ktrace-labgrid={guest_lab.address}", "--ktrace-labgrid-place=guest-arm64", *guest_pool.ssh_args]
    env = {**os.environ, **_with_labgrid_plugin(), "READY": str(ready)}
    held = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_holds_guest.py", *args],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _lab_harness().wait_until(ready.exists, 300, "the first run holding its guest")
    finally:
        held.send_signal(signal.SIGKILL)
        held.wait(timeout=30)
    left = guest_pool.leftovers()
    assert left["x86_64"] == [] and any(f"_{held.pid}_" in name for name in left["arm64"]), left
    assert guest_lab.places()["guest-arm64"].acquired == _lab_harness().my_owner()

    result = _run(
        pytester, guest_lab, guest_pool, "-W", "always", "--ktrace-labgrid-place=guest-arm64", "test_guest_kprobes.py"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"*pytest-ktrace: released labgrid place guest-arm64 at {guest_lab.address}, left acquired by a run that "
            f"ended without releasing it (pid {held.pid}, *",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*pytest-ktrace removed leftovers of an earlier crashed run on labgrid:guest-arm64: *"]
    )
    _assert_all_clean(guest_lab, guest_pool)
