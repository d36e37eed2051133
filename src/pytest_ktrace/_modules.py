"""Kernel modules a test loads into its target (``ktrace.load_module()``): what a ``.ko`` says about itself,
module parameters as the kernel's parser reads them, and what a failed load or unload means.

A local ``.ko`` is pushed to the target and loaded with ``insmod``; a bare name is loaded with ``modprobe``. The
module joins the test's teardown ledger before it is loaded, and is unloaded after the test's probes and
events are gone and the trace had its last look (unloading a module clears every buffer that recorded its
events; neither a kprobe on its code nor its enabled event stops the kernel from unloading it), then its file
is removed. A module that was loaded before the test is never unloaded by it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from ._errors import KtraceError, hide_for_ktrace_errors

__all__ = ["UNLOAD_SCRIPT", "LoadedModule", "ModuleLoadError", "module_name", "module_params"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")

# rmmod each module in turn; for one that will not go, print what holds it (its holders and reference count)
UNLOAD_SCRIPT = r"""kt_fail=0
for kt_m; do
  if ! rmmod "$kt_m" 2>&1; then
    kt_fail=1
    printf 'holders of %s: %s; refcnt %s\n' "$kt_m" \
      "$(ls "/sys/module/$kt_m/holders" 2>/dev/null | tr '\n' ' ')" "$(cat "/sys/module/$kt_m/refcnt" 2>/dev/null)"
  fi
done
exit $kt_fail
"""


class ModuleLoadError(KtraceError):
    """A module could not be loaded: names the module, the errno and the kernel's own log lines of the load."""

    def __init__(self, message: str, *, module: str = "", errno_name: str = "", kernel_log: str = "") -> None:
        self.module = module
        self.errno_name = errno_name
        self.kernel_log = kernel_log
        super().__init__(message)


ModuleLoadError.__module__ = "pytest_ktrace"  # the name users catch and read in tracebacks


@dataclass(frozen=True)
class LoadedModule:
    """A module of the test: ``name`` as the kernel knows it, the ``params`` it was loaded with, ``path`` its
    file on the target (None when loaded by name), and whether this test loaded it (and so unloads it)."""

    name: str
    params: Mapping[str, object] = field(default_factory=dict)
    path: Optional[str] = None
    ours: bool = True


def module_name(ko: bytes, fallback: str) -> str:
    """The module's name from its ``.modinfo`` (``name=``), else ``fallback`` (the file name) as modpost makes it."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        section = ELFFile(io.BytesIO(ko)).get_section_by_name(".modinfo")
    except ELFError as exc:
        raise KtraceError(f"load_module(): {fallback} is not a kernel module (not ELF: {exc})") from None
    if section is None:
        raise KtraceError(f"load_module(): {fallback} is not a kernel module (it has no .modinfo section)")
    for entry in section.data().split(b"\0"):
        if entry.startswith(b"name="):
            return entry[5:].decode("ascii", "replace")
    return re.sub(r"\.ko(\.\w+)?$", "", fallback).replace("-", "_")


def module_params(params: Mapping[str, object]) -> list[str]:
    """``key=value`` words for ``insmod``/``modprobe``, as the kernel's parameter parser reads them: ints as
    decimal, bools as ``1``/``0``, strings with blanks in double quotes, lists and tuples comma-separated."""
    words = []
    for key, value in params.items():
        if not _PARAM.fullmatch(key):
            raise KtraceError(f"load_module(): {key!r} is not a module parameter name")
        words.append(f"{key}={_param_value(key, value)}")
    return words


def _param_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if any(ch in value for ch in '"\n\0'):
            raise KtraceError(
                f"load_module({key}={value!r}): the kernel's parameter parser cannot take a double quote, newline "
                "or NUL in a value"
            )
        return f'"{value}"' if any(ch.isspace() for ch in value) or not value else value
    if isinstance(value, (list, tuple)) and value:
        items = [_param_value(key, item) for item in value]
        if any("," in item or item.startswith('"') for item in items):
            raise KtraceError(f"load_module({key}={value!r}): an array item cannot hold a comma or a blank")
        return ",".join(items)
    raise KtraceError(f"load_module({key}={value!r}): a parameter is an int, a bool, a str or a non-empty list of them")


def check_module_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KtraceError(f"load_module(): {name!r} is neither a local .ko file nor a module name")
    return name.replace("-", "_")


def load_failure(name: str, argv: Sequence[str], stderr: str, returncode: int, log: Sequence[str]) -> ModuleLoadError:
    """What a failed ``insmod``/``modprobe`` says, with the kernel's lines of that load."""
    from .backends._shell import errno_from_text

    errno_name, text = errno_from_text(stderr)
    shown = "\n".join(f"    {line}" for line in log) or "    (the kernel printed nothing)"
    return ModuleLoadError(
        f"load_module({name}): {argv[0]} failed (exit status {returncode}): {text or stderr.strip()}\n"
        f"  kernel log of the load:\n{shown}",
        module=name,
        errno_name=errno_name,
        kernel_log="\n".join(log),
    )
