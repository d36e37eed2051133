"""The values the options accept and the defaults their help shows: plain constants, so that the plugin declares
its options without importing what resolves them (``_targets``, ``recording``, ``_labgrid``)."""

from __future__ import annotations

__all__ = [
    "FLAMEGRAPH_MODES",
    "KERNEL_LOG_POLICIES",
    "LABGRID_DEFAULT_PORT",
    "LABGRID_DEFAULT_TIMEOUT_S",
    "LOST_POLICIES",
    "RECORD_MODES",
    "SCOPES",
    "VM_ARCHES",
]

SCOPES = ("all", "run")
FLAMEGRAPH_MODES = ("none", "failed", "all")
LOST_POLICIES = ("fail", "warn")
KERNEL_LOG_POLICIES = ("fail", "warn", "off")
VM_ARCHES = ("x86_64", "arm64")
RECORD_MODES = ("none", "once", "rewrite")
LABGRID_DEFAULT_PORT = 20408  # labgrid's own default
LABGRID_DEFAULT_TIMEOUT_S = 3600.0
