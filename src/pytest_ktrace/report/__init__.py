"""What a run leaves behind for people and CI: everything here reads a finished test, none of it touches a target.

* ``_section``: the ``ktrace trace`` report section of a test, and the per-run report directory;
* ``_html``: the report directory's ``index.html``;
* ``_timeline``: entries and returns paired into calls, rendered as the section's timeline;
* ``_flamegraphs``: SVG flame graphs of ``ktrace.profile()`` blocks;
* ``_provenance``: JUnit properties naming the target and the probes;
* ``_artifacts``: files a test attached;
* ``_ci_outputs``: the ``--ktrace-json`` file and pytest-html extras.
"""
