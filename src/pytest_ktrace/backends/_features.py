"""Feature detection shared by every backend: what a tracefs offers, judged from its files and README."""

from __future__ import annotations

from typing import Mapping

__all__ = ["FEATURE_FILES", "MOUNT_HINT", "features_from", "readme_features"]

MOUNT_HINT = "mount -t tracefs nodev /sys/kernel/tracing"

# feature -> a tracefs path whose existence means the kernel has it
FEATURE_FILES: Mapping[str, str] = {
    "kprobes": "kprobe_events",
    "uprobes": "uprobe_events",
    "dynamic_events": "dynamic_events",
    "instances": "instances",
    "fields": "options/fields",
    "set_event_pid": "set_event_pid",
    "error_log": "error_log",
    "printk_console": "events/printk/console",  # the kernel log, read as an event of the test's instance
}


def features_from(present: Mapping[str, bool], readme: str) -> frozenset[str]:
    """``present`` maps every FEATURE_FILES path to whether it exists; ``readme`` is tracefs's README text."""
    found = {feature for feature, path in FEATURE_FILES.items() if present.get(path)}
    return frozenset(found) | readme_features(readme)


def readme_features(readme: str) -> frozenset[str]:
    """What tracefs's README says the kernel has (a snapshot taken before a feature was detected has its README)."""
    found = set()
    # trace.c lists the hist trigger only with CONFIG_HIST_TRIGGERS, which also gives every event a hist file
    if "hist trigger\t- If set" in readme:
        found.add("hist")
    if "$arg<N>" in readme:
        found.add("argN")
        # 6.9+ documents "$arg<N>" on the kernel return probe line too (entry data fetched at return)
        if any("return probes support" in line and "$arg<N>" in line for line in readme.splitlines()):
            found.add("argN_on_return")
    if "<argname>" in readme or "$arg*" in readme:
        found.add("btf")
    return frozenset(found)
