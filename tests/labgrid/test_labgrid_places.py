"""Tests on places of a real labgrid lab (coordinator and exporter on 127.0.0.1, see conftest.py): each test
reserves, acquires and releases its place through the coordinator, and traces this machine's kernel over SSH."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]
LAB_MODULE = Path(__file__).with_name("lab.py")

# An inner test that traces an exec on its place and checks, through the coordinator, that the place it runs on is
# acquired by this machine's owner for a reservation while it runs.
ON_PLACE = f"""
import importlib.util
import json
import os
import sys

import pytest

spec = importlib.util.spec_from_file_location("lab_view", {str(LAB_MODULE)!r})
lab_view = sys.modules["lab_view"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab_view)


@pytest.mark.parametrize("n", range(2))
def test_exec_on_a_place(ktrace, ktrace_target, n):
    execs = ktrace.tracepoint("sched:sched_process_exec")
    result = ktrace.run(["/bin/true"])
    execs.assert_any_call(filename="/bin/true", pid=result.pid)
    place = ktrace_target.settings.target.labgrid_place
    lab = lab_view.Lab(None, port=int(os.environ["LAB_PORT"]))
    seen = lab.places()[place]
    assert seen.acquired == lab_view.my_owner() and seen.reservation
    with open(os.environ["PLACES_LOG"], "a") as log:
        log.write(json.dumps([place, seen.reservation, ktrace_target.backend.local_port]) + "\\n")
"""


def _log(pytester: pytest.Pytester) -> list[tuple[Any, ...]]:
    path = pytester.path / "places.log"
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []


def _run(pytester: pytest.Pytester, lab: object, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_on_place=ON_PLACE)
    port = lab.port if lab is not None else 0  # type: ignore[attr-defined]
    env = {"LAB_PORT": str(port), "PLACES_LOG": str(pytester.path / "places.log")}
    for key, value in {**env, **_with_labgrid_plugin()}.items():
        pytester._monkeypatch.setenv(key, value)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def _with_labgrid_plugin() -> dict[str, str]:
    """The environment of a pytest process that loads labgrid's own plugin too (tests/conftest.py leaves it out
    of pytester's runs, for their inline ones): every run here has both plugins in one process."""
    return {"PYTEST_ADDOPTS": os.environ.get("PYTEST_ADDOPTS", "").replace("-p no:labgrid", "").strip()}


def _idle(lab: object) -> None:
    """Every place released, every reservation cancelled."""
    assert all(place.acquired is None for place in lab.places().values()), lab.places()  # type: ignore[attr-defined]
    assert lab.reservations() == [], lab.reservations()  # type: ignore[attr-defined]


def test_a_suite_runs_on_a_place_chosen_by_tags(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str], sshd_server: object
) -> None:
    junit = pytester.path / "junit.xml"
    result = _run(
        pytester,
        loop_lab,
        f"--ktrace-labgrid={loop_lab.address}",  # type: ignore[attr-defined]
        "--ktrace-labgrid-tags=lab=loop,slot=b",
        *ssh_args,
        f"--junitxml={junit}",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"ktrace: backend ssh, target a labgrid tags lab=loop,slot=b at {loop_lab.address}: *",  # type: ignore[attr-defined]
            f"ktrace: labgrid:loop-b (backend ssh): Linux {platform.release()} {platform.machine()}; *2 test(s)",
        ]
    )
    runs = _log(pytester)
    assert [place for place, *_ in runs] == ["loop-b", "loop-b"]
    assert runs[0][1] != runs[1][1], "each test reserves anew"
    assert runs[0][2] is not None and runs[0][2] == runs[1][2], "the SSH connection to the place is kept"
    props = [
        {p.get("name"): p.get("value") for p in case.iter("property")} for case in ET.parse(junit).iter("testcase")
    ]
    assert [(p["ktrace_target"], p["ktrace_labgrid_place"]) for p in props] == [("labgrid:loop-b", "loop-b")] * 2
    assert props[0]["ktrace_host"] == f"ktrace-root@127.0.0.1:{sshd_server.port}"  # type: ignore[attr-defined]
    _idle(loop_lab)


def test_a_suite_runs_on_a_place_named_with_the_coordinator_from_lg_coordinator(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LG_COORDINATOR", loop_lab.address)  # type: ignore[attr-defined]
    result = _run(pytester, loop_lab, "--ktrace-labgrid-place=loop-a", *ssh_args)
    result.assert_outcomes(passed=2)
    assert [place for place, *_ in _log(pytester)] == ["loop-a", "loop-a"]
    _idle(loop_lab)


def test_the_option_wins_over_lg_coordinator(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LG_COORDINATOR", f"127.0.0.1:{lab_harness().free_port()}")  # nothing listens there
    result = _run(
        pytester,
        loop_lab,
        f"--ktrace-labgrid={loop_lab.address}",  # type: ignore[attr-defined]
        "--ktrace-labgrid-place=loop-a",
        *ssh_args,
    )
    result.assert_outcomes(passed=2)


def test_a_proxy_in_the_environment_is_not_used(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC sends its calls through $http_proxy unless told not to: here nothing listens at the proxy's address
    dead_proxy = f"http://127.0.0.1:{lab_harness().free_port()}"
    for name in ("http_proxy", "https_proxy", "grpc_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    result = _run(
        pytester,
        loop_lab,
        f"--ktrace-labgrid={loop_lab.address}",  # type: ignore[attr-defined]
        "--ktrace-labgrid-tags=slot=a",
        *ssh_args,
    )
    result.assert_outcomes(passed=2)


def test_an_unreachable_coordinator_is_named_with_its_cause_and_fails_the_rest_at_once(
    pytester: pytest.Pytester, ssh_args: list[str]
) -> None:
    pytest.importorskip("labgrid")
    address = f"127.0.0.1:{lab_harness().free_port()}"
    result = _run(pytester, None, f"--ktrace-labgrid={address}", "--ktrace-labgrid-tags=lab=loop", *ssh_args)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            f"pytest-ktrace: CoordinatorUnreachable: cannot reach the labgrid coordinator at {address}: "
            "*Connection refused",
            f"pytest-ktrace: CoordinatorUnreachable: cannot reach the labgrid coordinator at {address}: "
            "*Connection refused (at this run's first test that needed it)",
        ]
    )


def test_no_place_with_the_tags_names_the_tags_and_the_places(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str]
) -> None:
    address = loop_lab.address  # type: ignore[attr-defined]
    result = _run(pytester, loop_lab, f"--ktrace-labgrid={address}", "--ktrace-labgrid-tags=arch=sparc", *ssh_args)
    result.assert_outcomes(errors=2)
    machine = platform.machine()
    result.stdout.fnmatch_lines(
        [
            f"pytest-ktrace: NoMatchingPlace: no labgrid place at {address} has tags arch=sparc; the "
            f"places there: loop-a (arch={machine}, lab=loop, slot=a), loop-b (arch={machine}, lab=loop, slot=b)",
        ]
    )
    named = _run(pytester, loop_lab, f"--ktrace-labgrid={address}", "--ktrace-labgrid-place=loop-c", *ssh_args)
    named.assert_outcomes(errors=2)
    named.stdout.fnmatch_lines([f"*NoMatchingPlace: no labgrid place at {address} has name loop-c; the places*"])
    _idle(loop_lab)


def test_a_place_held_too_long_times_out_naming_who_holds_it(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str]
) -> None:
    owner = lab_harness().my_owner()
    alice = owner.split("/")[0] + "/alice"
    loop_lab.client("-p", "loop-a", "acquire", env={"LG_USERNAME": "alice"})  # type: ignore[attr-defined]
    result = _run(
        pytester,
        loop_lab,
        f"--ktrace-labgrid={loop_lab.address}",  # type: ignore[attr-defined]
        "--ktrace-labgrid-place=loop-a",
        "--ktrace-labgrid-timeout=4",
        *ssh_args,
    )
    result.assert_outcomes(errors=2)
    result.stderr.fnmatch_lines(
        [
            "pytest-ktrace: test_on_place.py::test_exec_on_a_place[[]0]: waiting for a labgrid place with name "
            f"loop-a at {loop_lab.address} (* of 4 s): loop-a acquired by {alice}",  # type: ignore[attr-defined]
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "pytest-ktrace: ReservationTimeout: no labgrid place with name loop-a at "
            f"{loop_lab.address} was free within 4 s (--ktrace-labgrid-timeout); loop-a acquired by {alice}",  # type: ignore[attr-defined]
            "*ReservationTimeout: *; loop-a acquired by * (an earlier test of this run waited already: the rest "
            "fail at once)",
        ]
    )
    assert "test_exec_on_a_place[[]1]: waiting" not in result.stderr.str()
    assert loop_lab.places()["loop-a"].acquired == alice  # type: ignore[attr-defined]
    assert loop_lab.reservations() == []  # type: ignore[attr-defined]
    loop_lab.client("-p", "loop-a", "release", env={"LG_USERNAME": "alice"})  # type: ignore[attr-defined]


def test_a_place_without_a_network_service_is_named_and_handed_back(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str]
) -> None:
    power = {"model": "gude", "host": "127.0.0.1", "index": 1}
    loop_lab.export("power", {"bare": {"NetworkPowerPort": power}})  # type: ignore[attr-defined]
    loop_lab.add_place("bare", "power/bare/NetworkPowerPort", {"lab": "power"})  # type: ignore[attr-defined]
    result = _run(
        pytester,
        loop_lab,
        f"--ktrace-labgrid={loop_lab.address}",  # type: ignore[attr-defined]
        "--ktrace-labgrid-tags=lab=power",
        *ssh_args,
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "pytest-ktrace: PlaceWithoutNetworkService: labgrid place bare has no NetworkService resource "
            "to reach it over SSH (its resources: power/bare/NetworkPowerPort/NetworkPowerPort); *",
        ]
    )
    _idle(loop_lab)


def test_the_place_of_a_network_service_with_a_password_offers_it(
    pytester: pytest.Pytester, loop_lab: object, sshd_server: object, tmp_path: Path
) -> None:
    # The sshd takes keys only: the failed login lists every way that was tried, the place's password among them.
    service = {"address": "127.0.0.1", "port": sshd_server.port, "username": "ktrace-root", "password": "secret"}  # type: ignore[attr-defined]
    loop_lab.export("pw", {"loop-pw": {"NetworkService": service}})  # type: ignore[attr-defined]
    loop_lab.add_place("loop-pw", "pw/loop-pw/NetworkService", {"lab": "pw"})  # type: ignore[attr-defined]
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n  UserKnownHostsFile {sshd_server.known_hosts}\n  IdentitiesOnly yes\n")  # type: ignore[attr-defined]
    result = _run(
        pytester,
        loop_lab,
        f"--ktrace-labgrid={loop_lab.address}",  # type: ignore[attr-defined]
        "--ktrace-labgrid-tags=lab=pw",
        f"--ktrace-ssh-config={config}",
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        ["*authentication failed for user 'ktrace-root'*tried: password from the target's password*"]
    )
    _idle(loop_lab)


def lab_harness() -> Any:
    import sys

    return sys.modules["ktrace_tests_lab"]


def test_a_place_taken_from_under_the_reservation_is_named_with_its_holder(loop_lab: object, tmp_path: Path) -> None:
    from pytest_ktrace import PlaceAcquiredElsewhere
    from pytest_ktrace._labgrid._client import CoordinatorClient
    from pytest_ktrace._labgrid._places import PlaceBroker
    from pytest_ktrace._labgrid._records import HoldingRecords
    from pytest_ktrace._labgrid._request import LabgridRequest

    client = CoordinatorClient(loop_lab.address)  # type: ignore[attr-defined]
    client.start()
    records = HoldingRecords(tmp_path / "records")
    broker = PlaceBroker(client, records, progress=print, warn=print)
    wanted = LabgridRequest(client.address, place="loop-a")
    try:
        record = broker.wait(wanted, broker.reserve(wanted), "test")
        assert record.place == "loop-a"
        # labgrid-client of the same user on the same machine: the coordinator lets it acquire a reserved place
        loop_lab.client("-p", "loop-a", "acquire")  # type: ignore[attr-defined]
        with pytest.raises(PlaceAcquiredElsewhere) as caught:
            broker.acquire(record)
    finally:
        client.close()
    owner = lab_harness().my_owner()
    assert (caught.value.place, caught.value.holder) == ("loop-a", owner)
    assert f"labgrid place loop-a, allocated to this test's reservation {record.token}, was acquired by {owner}" in str(
        caught.value
    )
    assert loop_lab.places()["loop-a"].acquired == owner, "the other client keeps its place"  # type: ignore[attr-defined]
    assert loop_lab.reservations() == [], "the test's reservation is cancelled"  # type: ignore[attr-defined]
    assert list(records.directory.glob("*.json")) == []
    loop_lab.client("-p", "loop-a", "release")  # type: ignore[attr-defined]


BARRIER = """
import json
import os
import time

import pytest


@pytest.mark.parametrize("n", range(4))
def test_on_one_of_two_places(ktrace, ktrace_target, worker_id, n):
    entered = time.time()
    execs = ktrace.tracepoint("sched:sched_process_exec")
    result = ktrace.run(["/bin/true"])
    execs.assert_any_call(filename="/bin/true", pid=result.pid)
    mark = os.path.join(os.environ["BARRIER"], worker_id)
    if not os.path.exists(mark):  # each worker's first test waits until the other worker is inside a test too
        open(mark, "w").close()
        deadline = time.time() + 120
        while len(os.listdir(os.environ["BARRIER"])) < 2:
            assert time.time() < deadline, "the other worker never held a place at the same time"
            time.sleep(0.05)
    place = ktrace_target.settings.target.labgrid_place
    with open(os.environ["PLACES_LOG"], "a") as log:
        log.write(json.dumps([place, worker_id, entered, time.time()]) + "\\n")
"""


def test_two_xdist_workers_share_two_places_without_overlap(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str]
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_two_places=BARRIER)
    (pytester.path / "barrier").mkdir()
    pytester._monkeypatch.setenv("BARRIER", str(pytester.path / "barrier"))
    pytester._monkeypatch.setenv("PLACES_LOG", str(pytester.path / "places.log"))
    for key, value in _with_labgrid_plugin().items():
        pytester._monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        f"--ktrace-labgrid={loop_lab.address}",  # type: ignore[attr-defined]
        "--ktrace-labgrid-tags=lab=loop",
        *ssh_args,
        timeout=300,
    )
    result.assert_outcomes(passed=4)
    runs = [json.loads(line) for line in (pytester.path / "places.log").read_text().splitlines()]
    assert {place for place, *_ in runs} == {"loop-a", "loop-b"}
    for place in ("loop-a", "loop-b"):
        spans = sorted((entered, left) for name, _, entered, left in runs if name == place)
        assert all(left <= next_entered for (_, left), (next_entered, _) in zip(spans, spans[1:])), spans
    _idle(loop_lab)


HOLD = """
import os
import time


def test_holds_its_place(ktrace, ktrace_target):
    ktrace.tracepoint("sched:sched_process_exec")
    ktrace.arm()
    with open(os.environ["READY"], "w") as ready:
        ready.write(ktrace_target.settings.target.labgrid_place)
    time.sleep(600)
"""


def test_a_killed_run_leaves_its_place_acquired_and_the_next_run_releases_it(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str]
) -> None:
    pytester.makepyfile(test_holds=HOLD)
    ready = pytester.path / "ready"
    args = [f"--ktrace-labgrid={loop_lab.address}", "--ktrace-labgrid-place=loop-a", *ssh_args]  # type: ignore[attr-defined]
    env = {**os.environ, **_with_labgrid_plugin(), "READY": str(ready)}
    held = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_holds.py", *args],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lab_harness().wait_until(ready.exists, 120, "the first run holding its place")
        token = loop_lab.places()["loop-a"].reservation  # type: ignore[attr-defined]
        assert loop_lab.places()["loop-a"].acquired == lab_harness().my_owner()  # type: ignore[attr-defined]
    finally:
        held.send_signal(signal.SIGKILL)
        held.wait(timeout=30)
    time.sleep(1)  # labgrid never releases it: still acquired, still reserved, a second after its client died
    assert loop_lab.places()["loop-a"].acquired == lab_harness().my_owner()  # type: ignore[attr-defined]
    assert [(r.token, r.place) for r in loop_lab.reservations()] == [(token, "loop-a")]  # type: ignore[attr-defined]

    result = _run(pytester, loop_lab, "-W", "always", *args, "test_on_place.py")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"*pytest-ktrace: released labgrid place loop-a at {loop_lab.address}, left acquired by a run that ended "  # type: ignore[attr-defined]
            f"without releasing it (pid {held.pid}, reservation {token})",
        ]
    )
    result.stdout.fnmatch_lines(["*pytest-ktrace removed leftovers of an earlier crashed run on labgrid:loop-a: *"])
    assert not [name for name in os.listdir("/sys/kernel/tracing/instances") if f"_{held.pid}_" in name]
    _idle(loop_lab)


LG_ENV_CONFTEST = """
import os

import pytest


@pytest.fixture
def ktrace_config(target):
    # labgrid's target (from --lg-env) handed to pytest-ktrace: its NetworkService is the SSH target
    service = target.get_resource("NetworkService")
    if service.password:
        os.environ["KTRACE_SSH_PASSWORD"] = service.password
    return {"host": f"{service.username}@{service.address}:{service.port}"}
"""

LG_ENV_TEST = """
def test_traces_labgrids_target(ktrace, target, request):
    assert request.config.pluginmanager.has_plugin("labgrid")
    execs = ktrace.tracepoint("sched:sched_process_exec")
    result = ktrace.run(["/bin/true"])
    execs.assert_any_call(filename="/bin/true", pid=result.pid)
    assert ktrace.target.name == target.get_resource("NetworkService").address
"""


def test_labgrids_own_plugin_hands_its_target_over(
    pytester: pytest.Pytester, sshd_server: object, ssh_args: list[str]
) -> None:
    pytest.importorskip("labgrid")
    service = {"address": "127.0.0.1", "port": sshd_server.port, "username": "ktrace-root"}  # type: ignore[attr-defined]
    lines = ["targets:", "  main:", "    resources:", "      NetworkService:"]
    lines += [f"        {key}: {value}" for key, value in service.items()]
    (pytester.path / "env.yaml").write_text("\n".join(lines) + "\n")
    pytester.makeconftest(LG_ENV_CONFTEST)
    pytester.makepyfile(test_handed_over=LG_ENV_TEST)
    for key, value in _with_labgrid_plugin().items():
        pytester._monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--lg-env=env.yaml", *ssh_args, timeout=300)
    result.assert_outcomes(passed=1)


SHARED = f"""
import importlib.util
import json
import os
import sys
import time

import pytest

spec = importlib.util.spec_from_file_location("lab_view", {str(LAB_MODULE)!r})
lab_view = sys.modules["lab_view"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab_view)


@pytest.mark.parametrize("n", range(4))
def test_shares_the_pool(ktrace, ktrace_target, n):
    entered = time.time()
    result = ktrace.run(["sleep", "0.3"])
    assert result.returncode == 0
    place = ktrace_target.settings.target.labgrid_place
    lab = lab_view.Lab(None, port=int(os.environ["LAB_PORT"]))
    held = lab.places()[place]
    (mine,) = [r for r in lab.reservations() if r.token == held.reservation]
    assert (held.acquired, mine.state, mine.place) == (lab_view.my_owner(), 2, place)
    with open(os.environ["PLACES_LOG"], "a") as log:
        log.write(json.dumps([place, os.getpid(), held.reservation, entered, time.time()]) + "\\n")
"""


def test_two_concurrent_runs_with_two_workers_each_share_two_places_without_overlap(
    pytester: pytest.Pytester, loop_lab: object, ssh_args: list[str]
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_shared=SHARED)
    log = pytester.path / "places.log"
    env = {
        **os.environ,
        **_with_labgrid_plugin(),
        "LAB_PORT": str(loop_lab.port),  # type: ignore[attr-defined]
        "PLACES_LOG": str(log),
    }
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", "test_shared.py"]
    argv += [f"--ktrace-labgrid={loop_lab.address}", "--ktrace-labgrid-tags=lab=loop", *ssh_args]  # type: ignore[attr-defined]
    runs = [
        subprocess.Popen(argv, cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    held = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(held) == 8 and {place for place, *_ in held} == {"loop-a", "loop-b"}
    assert len({token for _, _, token, _, _ in held}) == 8, "a reservation per test"
    assert len({pid for _, pid, *_ in held}) == 4, "both workers of both runs held places"
    for place in ("loop-a", "loop-b"):
        spans = sorted((entered, left) for name, _, _, entered, left in held if name == place)
        assert all(left <= next_entered for (_, left), (next_entered, _) in zip(spans, spans[1:])), spans
    _idle(loop_lab)


def test_a_restarted_coordinator_gets_a_new_session(lab: object) -> None:
    from pytest_ktrace import CoordinatorUnreachable
    from pytest_ktrace._labgrid._client import CoordinatorClient

    lab.client("-p", "before", "create")  # type: ignore[attr-defined]
    client = CoordinatorClient(lab.address)  # type: ignore[attr-defined]
    client.start()
    try:
        assert set(client.places()) == {"before"}
        lab.stop()  # type: ignore[attr-defined]
        lab_harness().wait_until(lambda: _stream_ended(client), 30, "the client seeing its coordinator gone")
        with pytest.raises(CoordinatorUnreachable, match="went away"):
            client.places()
        with pytest.raises(CoordinatorUnreachable, match="Connection refused"):
            client.reconnect_if_gone()
        lab.restart()  # type: ignore[attr-defined]
        assert client.reconnect_if_gone()
        lab.client("-p", "after", "create")  # type: ignore[attr-defined]
        assert "after" in client.places(), "the new session follows the coordinator's places"
        assert not client.reconnect_if_gone()
    finally:
        client.close()


def _stream_ended(client: Any) -> bool:
    from pytest_ktrace import CoordinatorUnreachable

    try:
        client.places()
    except CoordinatorUnreachable:
        return True
    return False
