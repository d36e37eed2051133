"""Cassettes and hist triggers: the trigger is part of the recorded arming (replay checks it), and the hist files
the recording read are what the replay reads, not tables the fake recomputes from the recorded trace (which need
not hold every hit the kernel counted). Recorded and replayed on the fake here; on the guests' kernels by
tests/guests/test_hist_guest.py."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pytest_ktrace._identity import RunIdentity
from pytest_ktrace._session import TraceSession
from pytest_ktrace.fake._backend import FakeBackend
from pytest_ktrace.recording._cassette import Cassette, StaleCassette
from pytest_ktrace.recording._player import Player
from pytest_ktrace.recording._recorder import RecordingBackend
from pytest_ktrace.snapshots._snapshot import load_snapshot

SNAPSHOT = "debian-6.1-x86_64"


def test_a_hist_read_is_recorded_and_replayed_as_read(tmp_path: Path) -> None:
    real = FakeBackend(load_snapshot(SNAPSHOT))  # plays the target: it gets hits the trace never shows
    recorder = RecordingBackend(real, "test_hist")
    session = TraceSession(recorder, RunIdentity.current(), 1)
    read = session.kprobe("vfs_read", fd="$arg1:s32")
    table = session.hist(read, "fd", filter="fd >= 0")
    by_fd = session.count_by(read, "fd")
    session.arm()
    real.tracefs.write(f"{session.instance_path}/tracing_on", "0", append=False)  # counted, not traced
    for fd in (3, 3, 4, -1):
        real.inject(read.spec.event_dir, {"fd": fd})
    session.collect()
    assert table.counter == Counter({3: 2, 4: 1}) and by_fd == Counter({3: 2, 4: 1, -1: 1})
    assert read.call_count == 0
    assert not session.teardown()
    cassette = tmp_path / "test_hist.json"
    recorder.save(cassette)

    steps = json.loads(cassette.read_text())["interactions"]
    armed = [op for step in steps if step["kind"] == "arm" for op in step["ops"]]
    assert ["write", "instances/<instance>/events/<group>/<event:1>/trigger", table.trigger] in armed
    reads = [step["hist"] for step in steps if step["kind"] == "hist"]
    assert reads and all(path.endswith("/events/<group>/<event:1>/hist") for read_ in reads for path in read_)

    # the replay's fake gets no hit at all: what it reads is what the target's kernel printed
    replay = FakeBackend(load_snapshot(SNAPSHOT))
    replay.play(Player(Cassette.load(cassette), cassette))
    again = TraceSession(replay, RunIdentity.current(), 2)
    read = again.kprobe("vfs_read", fd="$arg1:s32")
    table = again.hist(read, "fd", filter="fd >= 0")
    by_fd = again.count_by(read, "fd")
    again.arm()
    again.collect()
    assert table.counter == Counter({3: 2, 4: 1}) and by_fd == Counter({3: 2, 4: 1, -1: 1})
    assert not again.teardown()
    assert replay.player is not None
    replay.player.finish()


def test_a_changed_trigger_makes_the_cassette_stale(tmp_path: Path) -> None:
    real = FakeBackend(load_snapshot(SNAPSHOT))
    recorder = RecordingBackend(real, "test_hist")
    session = TraceSession(recorder, RunIdentity.current(), 1)
    read = session.kprobe("vfs_read", fd="$arg1:s32")
    session.hist(read, "fd")
    session.arm()
    assert not session.teardown()
    cassette = tmp_path / "test_hist.json"
    recorder.save(cassette)

    replay = FakeBackend(load_snapshot(SNAPSHOT))
    replay.play(Player(Cassette.load(cassette), cassette))
    again = TraceSession(replay, RunIdentity.current(), 2)
    read = again.kprobe("vfs_read", fd="$arg1:s32")
    again.hist(read, "fd", size=4096)
    with pytest.raises(StaleCassette, match="the probes changed since the recording"):
        again.arm()
    again.teardown()
