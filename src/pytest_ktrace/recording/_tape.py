"""One test"s cassette handling: record on a real backend, replay on the fake, nothing otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, cast

from .._errors import hide_for_ktrace_errors
from ..backends._base import Backend, capable
from ._cassette import Cassette, cassette_root
from ._kernels import target_snapshot_ref
from ._player import Player, Replaying
from ._recorder import RecordingBackend

__all__ = ["Tape"]

__tracebackhide__ = hide_for_ktrace_errors


class Tape:
    """One test's cassette handling: record on a real backend, replay on the fake, nothing otherwise.

    Recording also makes sure the cassette root holds a snapshot of the recording kernel (``_targets/``), so the
    cassettes replay anywhere with nothing else: taken once per run and kernel (``snapshotted`` is the run's
    memory of which files it wrote), kept when it exists unless ``rewrite``."""

    def __init__(
        self,
        backend: Backend,
        test_id: str,
        path: Path,
        *,
        record: bool,
        rewrite: bool = False,
        snapshotted: Optional[set[Path]] = None,
    ) -> None:
        self.path = path
        self.recorder: Optional[RecordingBackend] = None
        self.player: Optional[Player] = None
        self._real = backend
        self._rewrite = rewrite
        self._snapshotted = snapshotted if snapshotted is not None else set()
        self._fake = cast(Replaying, backend) if capable(backend, Replaying) else None
        self.backend: Backend = backend
        if self._fake is not None:
            self.player = Player(Cassette.load(path), path) if path.exists() else None
            self._fake.play(self.player)
        elif record:
            self.recorder = RecordingBackend(backend, test_id)
            self.backend = self.recorder
            target = self.recorder.cassette.target
            target["snapshot"] = target_snapshot_ref(str(target["release"]), str(target["arch"]))

    def _save_target_snapshot(self) -> None:
        """The recording kernel's snapshot beside the cassettes, once per run and kernel; taken after the test's
        teardown, so nothing of the test is in it."""
        from ..snapshots._snapshot import snapshot

        assert self.recorder is not None
        ref = str(self.recorder.cassette.target["snapshot"])
        destination = cassette_root(self.path) / ref
        if destination in self._snapshotted or (destination.exists() and not self._rewrite):
            return
        taken = snapshot(self._real, destination.name[: -len(".json.gz")])
        destination.parent.mkdir(parents=True, exist_ok=True)
        taken.save(destination)
        self._snapshotted.add(destination)

    def finish(self) -> None:
        """After the test's teardown: write the recording, or check that the replay went all the way."""
        if self.recorder is not None:
            self.recorder.save(self.path)
            self._save_target_snapshot()
        if self._fake is not None:
            self._fake.play(None)
            if self.player is not None:
                self.player.finish()
