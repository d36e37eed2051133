"""Record on a target, replay anywhere: cassettes wrap any backend while recording and feed the fake when replaying
(the shape of vcrpy and pytest-recording).

* ``_cassette``: the cassette file (one JSON file per test) and the run-specific names it normalises;
* ``_recorder``: :class:`RecordingBackend`, a real backend that writes down what one test did and saw;
* ``_player``: :class:`Player`, a cassette played back to the fake backend, which checks the test against it;
* ``_kernels``: the kernel snapshot a cassette replays on (beside the cassettes, else a shipped one);
* ``_modes``: the record modes (``none``, ``once``, ``rewrite``);
* ``_tape``: :class:`Tape`, one test's choice between recording, replaying and neither.
"""
