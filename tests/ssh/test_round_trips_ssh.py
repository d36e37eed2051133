"""How many round trips a test costs over SSH: its arming travels with its first command, a test that takes back
the probes an earlier test parked arms them in that same round trip, and its teardown (the last look, the parking
filters) travels first in the next test's round trip."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

from ktrace_testing import ours_in_this_process, tracefs_state
from pytest_ktrace._identity import RunIdentity
from pytest_ktrace._session import TraceSession
from pytest_ktrace._warm import ParkedProbes
from pytest_ktrace.backends.ssh._backend import SshBackend


def _two_probe_test(session: TraceSession, binary: str) -> None:
    entry = session.uprobe(binary, "setup_thing", irq="$arg1:s32", name="+0($arg2):string")
    done = session.uretprobe(binary, "setup_thing")
    session.run([binary, "setup", "eth2", "30"])
    entry.assert_called_once_with(irq=30, name="eth2")
    done.assert_returned(0)


def _tracepoint_test(session: TraceSession, _: str) -> None:
    opened = session.tracepoint("syscalls:sys_enter_openat", filter='filename ~ "*ktrace-round-trip*"')
    session.run(["cat", "/nonexistent/ktrace-round-trip"])
    opened.assert_called()


def _trips_per_test(backend: SshBackend, binary: str, test: Callable[[TraceSession, str], None]) -> list[int]:
    identity = RunIdentity.current()
    serials = itertools.count(1)
    parked = ParkedProbes(backend, lambda: identity.instance(next(serials)))
    backend.describe()
    elf_copies: dict[str, tuple[str, Path]] = {}
    trips = []
    try:
        for _ in range(3):
            before = backend.round_trips
            session = TraceSession(
                backend, identity, next(serials), elf_cache=elf_copies, parked=parked, owner=f"test {len(trips)}"
            )
            try:
                test(session, binary)
            finally:
                assert not session.teardown()
            trips.append(backend.round_trips - before)
    finally:
        assert not parked.close()
    assert ours_in_this_process(tracefs_state()) == []
    return trips


def test_a_uprobe_test_costs_two_round_trips(backend: SshBackend, probed: Path) -> None:
    # the file checked for change (stat: a uprobe holds the inode it was defined on), then one script: the previous
    # test's teardown, this test's arming, the command, the trace; the first test also fetches the ELF file
    assert _trips_per_test(backend, str(probed), _two_probe_test)[1:] == [2, 2]


def test_a_kernel_probe_test_costs_one_round_trip(backend: SshBackend, probed: Path) -> None:
    assert _trips_per_test(backend, str(probed), _tracepoint_test) == [1, 1, 1]
