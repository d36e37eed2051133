"""The fake backend: an in-memory tracefs that follows a kernel snapshot, so suites run without root or a board.

* ``_backend``: :class:`FakeBackend`, the ``Backend`` over the fake tracefs;
* ``_tracefs``: the tracefs file tree and its writes;
* ``_grammar``: probe definitions parsed and rejected as the kernel does, with the kernel's error_log lines;
* ``_filters``: event filters compiled and evaluated as ``trace_events_filter.c`` does;
* ``_formats``: ``format`` files of probe events;
* ``_render``: trace lines printed as ``trace_output.c`` prints them.
"""
