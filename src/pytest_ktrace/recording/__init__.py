"""Record on a target, replay anywhere: cassettes wrap any backend while recording and feed the fake when replaying.

* ``_cassette``: the cassette file, the recording backend, the player, the record modes and the ``Tape`` that
  picks one of them for a test.
"""
