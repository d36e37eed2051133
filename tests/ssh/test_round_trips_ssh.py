"""How many round trips a test costs over SSH: its arming travels with its first command, a test that takes back
the probes an earlier test parked arms them in that same round trip, and its teardown (the last look, the parking
filters) travels first in the next test's round trip."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Callable

from ktrace_testing import build_probed, ours_in_this_process, tracefs_state
from pytest_ktrace._elf import symbol_file_offset
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


def test_a_uprobe_test_costs_one_round_trip(backend: SshBackend, probed: Path) -> None:
    # one script: the uprobe file checked for change (a uprobe holds the inode it was defined on), the previous
    # test's teardown, this test's arming, the command, the trace; the first test also stats and fetches the file
    assert _trips_per_test(backend, str(probed), _two_probe_test)[1:] == [1, 1]


def test_a_file_rebuilt_between_tests_is_read_again_and_its_probes_placed_anew(
    backend: SshBackend, tmp_path: Path
) -> None:
    first, second = build_probed(tmp_path), build_probed(tmp_path, pie=False)
    assert symbol_file_offset(first, "setup_thing") != symbol_file_offset(second, "setup_thing")
    target = tmp_path / "rebuilt" / "probed"
    target.parent.mkdir()
    shutil.copy2(first, target)
    rebuilds = iter([second, first])

    def test_then_rebuild(session: TraceSession, binary: str) -> None:
        _two_probe_test(session, binary)
        replacement = target.with_name("probed.new")  # as a build does: a new file renamed over the old one
        shutil.copy2(next(rebuilds, first), replacement)
        os.utime(replacement, (1, 1))  # an mtime of its own even within the same second
        os.replace(replacement, target)

    trips = _trips_per_test(backend, str(target), test_then_rebuild)
    # the changed file stops the first script before anything is applied; then it is read again (stat, copy)
    # and the probes, placed at the symbol's new offset, armed with the command (the parked ones are not taken)
    assert trips[1:] == [4, 4], trips


def test_a_kernel_probe_test_costs_one_round_trip(backend: SshBackend, probed: Path) -> None:
    assert _trips_per_test(backend, str(probed), _tracepoint_test) == [1, 1, 1]
