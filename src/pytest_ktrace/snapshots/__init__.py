"""Kernel snapshots: what a kernel accepts and offers (symbols, events, features, grammar answers), captured once
from a live target with ``pytest-ktrace snapshot`` and read by the fake backend and by replay.

* ``_snapshot``: :class:`KernelSnapshot`, its capture and the snapshots shipped in ``data/``;
* ``_kallsyms``: the kernel text layout (symbol names in address order) a snapshot carries.
"""
