"""The fake backend: an in-memory tracefs that follows a kernel snapshot, so suites run without root or a board.

* ``_backend``: :class:`FakeBackend`, the ``Backend`` over the fake tracefs;
* ``_inject``: ``ktrace.inject()``, synthetic events of a probe checked against its format;
* ``_tracefs``: :class:`FakeTracefs`, the facade over the parts below;
* ``_paths``: the file tree, and which part answers a read, write, ``mkdir`` or ``rmdir`` of a path;
* ``_trace_arrays``: the top level and the instances: ring buffers per CPU, options, ``trace``/``trace_pipe``;
* ``_event_files``: each trace array's ``events/`` files (enable, filter, trigger) and ``set_event``;
* ``_dynevents``: the probe events defined through the ``kprobe_events``/``uprobe_events``/``dynamic_events`` files;
* ``_events``: every event the tracefs knows (tracepoints and probe events), with its ID and format;
* ``_kernel``: what the parts share about the imitated kernel: CPUs, clock, dialect, kallsyms;
* ``_records``: the field values an emitted event records;
* ``_syscall_errors``: :class:`FakeOSError`, a failing system call with the kernel's errno;
* ``_grammar``: probe definitions parsed and rejected as the kernel does, with the kernel's error_log lines;
* ``_filters``: event filters compiled and evaluated as ``trace_events_filter.c`` does;
* ``_formats``: ``format`` files of probe events;
* ``_render``: trace lines printed as ``trace_output.c`` prints them;
* ``_kernel_lib``: the kernel ``lib/`` helpers the parsers share (ctype, kstrto*, argv_split, cpulists, globs).
"""
