"""How many round trips a test costs over SSH: its arming travels with its first command, and a test that takes
back the probes an earlier test parked arms them in that same round trip."""

from __future__ import annotations

import itertools
from pathlib import Path

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


def test_a_test_costs_three_round_trips_and_arming_rides_with_the_command(backend: SshBackend, probed: Path) -> None:
    identity = RunIdentity.current()
    serials = itertools.count(1)
    parked = ParkedProbes(backend, lambda: identity.instance(next(serials)))
    backend.describe()
    elf_copies: dict[str, tuple[str, Path]] = {}
    trips = []
    try:
        for _ in range(3):
            before = backend.round_trips
            session = TraceSession(backend, identity, next(serials), elf_cache=elf_copies, parked=parked)
            try:
                _two_probe_test(session, str(probed))
            finally:
                assert not session.teardown()
            trips.append(backend.round_trips - before)
    finally:
        assert not parked.close()
    # the file checked for change (stat), then arming + command + trace in one script, then teardown's last look;
    # the first test also fetches the ELF file
    assert trips[1:] == [3, 3], trips
    assert ours_in_this_process(tracefs_state()) == []
