"""The markers pytest-ktrace registers: their names and help lines (kept apart so the plugin loads them cheaply)."""

from __future__ import annotations

__all__ = ["REQUIRES", "REQUIRES_HELP", "SETTINGS", "SETTINGS_HELP"]

SETTINGS = "ktrace"
SETTINGS_HELP = (
    "ktrace(host=, vm=, vm_kernel=, vm_modules=, backend=, snapshot=, tracefs=, sudo=, scope=, timeout=, buffer_kb=, "
    "lost=, stream=, keep=, strict=, kernel_log=): per-test settings; they override the command line and the ini file"
)
REQUIRES = "ktrace_requires"
REQUIRES_HELP = (
    "ktrace_requires(kprobes=, uprobes=, btf=, arch=, kernel=, symbols=, events=): what the test needs of its "
    "target (e.g. kprobes=True, arch='arm64', kernel='>=6.1,<6.13', symbols=['__setup_irq'], "
    "events=['irq:irq_handler_entry']); unmet needs skip the test with the reason (fail it with --ktrace-strict)"
)
