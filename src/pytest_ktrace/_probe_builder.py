"""From a factory call (``ktrace.kprobe("__setup_irq", irq="irq")``) to a :class:`~._probes.ProbeSpec` that runs on
the test's target: arguments checked, C names resolved from BTF, ``$argN`` rewritten where the kernel lacks it,
uprobe symbols turned into file offsets, event names made unique in the run's group."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Optional, Union

from . import _elf as elf
from ._arch import normalize_arch, rewrite_argn
from ._checks import check_encodable, check_text, type_name
from ._errors import KtraceError, UnsupportedFetchArg, hide_for_ktrace_errors
from ._identity import RunIdentity
from ._probes import ProbeKind, ProbeSpec, event_name_for
from ._target_files import ElfCopies
from .backends._base import Backend
from .btf._errors import BtfUnavailable, ModuleNotLoaded
from .btf._names import kernel_fetchargs

__all__ = ["CALLER_FIELD", "ProbeBuilder", "check_fetchargs"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

# fullmatch() only: "$" would also match before a trailing newline (a second kernel command)
_TRACEPOINT = re.compile(r"(?P<system>[A-Za-z0-9_.-]+):(?P<event>[A-Za-z0-9_.-]+)")
_KSYM = re.compile(
    r"(?:(?P<mod>[A-Za-z0-9_-]+):)?(?P<sym>[A-Za-z_.$][A-Za-z0-9_.$]*)(?:\+(?P<off>0x[0-9a-fA-F]+|[0-9]+))?"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_FIELDS = frozenset({"__probe_ip", "__probe_ret_ip", "__probe_func"})
_DEFAULT_RETURN = "$retval:s32"
CALLER_FIELD = "__probe_caller"  # a uprobe's direct caller, fetched with the event for its user stack
_CALLER_AT_ENTRY = {"x86_64": "$stack0:x64", "arm64": "%x30:x64"}  # return address at a function's first byte


def check_fetchargs(fetchargs: dict[str, str]) -> None:
    """Refuse what would change the *shape* of the kernel command (the kernel itself judges the rest and
    answers with its own error_log line): names that are not identifiers, whitespace or control characters."""
    for name, text in fetchargs.items():
        if not isinstance(name, str) or not _IDENT.fullmatch(name):
            raise KtraceError(
                f"fetcharg name {name!r} is not a C identifier: the kernel names the event field after it"
            )
        if name.startswith("common_") or name in _RESERVED_FIELDS:
            raise KtraceError(f"fetcharg name {name!r} is reserved by the kernel for its own event fields")
        if not isinstance(text, str) or not text:
            raise KtraceError(f"fetcharg {name}= needs a non-empty string in kernel syntax, got {text!r}")
        if any(ch.isspace() or ord(ch) < 0x20 for ch in text):
            raise KtraceError(
                f"fetcharg {name}={text!r} contains whitespace or control characters: the kernel splits probe "
                "commands on whitespace, so this would become a different command"
            )
        check_encodable(f"fetcharg {name}=", text)


def _definition_site() -> str:
    """file:line of the test code that called a factory (first frame outside this package)."""
    here = os.path.dirname(__file__)
    frame: Optional[FrameType] = sys._getframe(2)  # inspect.stack() would read every frame's source lines
    while frame is not None:
        if not frame.f_code.co_filename.startswith(here):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


def _named_args(args: Sequence[str], fetchargs: dict[str, str]) -> dict[str, str]:
    named = {f"arg{index}": text for index, text in enumerate(args, start=1)}
    for key, text in fetchargs.items():
        if key in named:
            raise KtraceError(f"fetcharg {key!r} given twice")
        named[key] = text
    check_fetchargs(named)
    return named


def _module_missing(spec: ProbeSpec, module: str, target: str, loading: Optional[tuple[str, Optional[Path]]]) -> str:
    head = (
        f"{spec.kind} {spec.location!r} defined at {spec.where or '(unknown)'} names its arguments, and module "
        f"{module} is not loaded on {target}, so its BTF is not there"
    )
    if loading is not None:  # loading[0] is the module: load_module() loads it by name
        return (
            f"{head}; load_module({module!r}) loads it by name, so there is no local .ko to read the names from. "
            f"Load the module's .ko file (ktrace.load_module('path/to/{module}.ko')), or define the probe once the "
            "module is loaded."
        )
    return (
        f"{head}, and this test did not load it (ktrace.load_module) before the probes were armed. Load it with "
        f"ktrace.load_module('path/to/{module}.ko') and the names are read from the file's BTF, or define the probe "
        "once the module is loaded."
    )


def _at_definition(exc: KtraceError, spec: ProbeSpec) -> KtraceError:
    """``exc`` (same class and attributes) saying which probe it is about: raised when the probes are armed, it
    no longer points at the line that defined the probe."""
    where = f"{spec.kind} {spec.location!r} defined at {spec.where or '(unknown)'}"
    moved = copy.copy(exc)
    moved.args = (f"{where}: {exc}",)
    return moved


class ProbeBuilder:
    """Builds the probe definitions of one test (``instance`` is its tracing instance, whose serial makes the
    event names unique in the run's group)."""

    def __init__(
        self, backend: Backend, identity: RunIdentity, instance: str, files: ElfCopies, *, stream: bool
    ) -> None:
        self.backend = backend
        self.identity = identity
        self.files = files
        self.stream = stream
        self._instance_serial = int(instance.rsplit("_", 1)[1])
        self._serial = 0
        self._late: dict[str, dict[str, str]] = {}  # event -> the fetch arguments its module's BTF will resolve

    def kernel_probe(
        self,
        kind: ProbeKind,
        symbol: str,
        args: Sequence[str],
        fetchargs: dict[str, str],
        *,
        filter: Optional[str],
        maxactive: Optional[int] = None,
        stacktrace: object = False,
    ) -> ProbeSpec:
        if not isinstance(symbol, str):
            raise KtraceError(f"{kind} symbol must be a str, got {type_name(symbol)} {symbol!r}")
        match = _KSYM.fullmatch(symbol)
        if not match:
            raise KtraceError(
                f"{kind} target {symbol!r} must be a kernel symbol on a single line, optionally +offset (e.g. "
                "'__setup_irq', 'vfs_read+0x10')"
            )
        if kind == "kretprobe" and match.group("off"):
            raise KtraceError(f"kretprobe {symbol!r}: a return probe attaches to a function entry, not an offset")
        if filter is not None:
            check_text("filter", filter)
        if maxactive is not None and (
            isinstance(maxactive, bool) or not (isinstance(maxactive, int) and 0 < maxactive <= 4096)
        ):
            raise KtraceError(f"maxactive={maxactive!r} must be an int in 1..4096")
        named = _named_args(args, fetchargs)
        try:
            # names (irq="irq", name="new->name:string") resolved from the target's BTF, the return value typed by it
            resolved, default_return = kernel_fetchargs(
                self.backend, kind, symbol, named, default_return=_DEFAULT_RETURN
            )
        except ModuleNotLoaded:
            # 'mod:func' of a module not loaded yet (the kernel accepts the probe and waits for the module): the
            # names are resolved at arming, from the .ko load_module() loads or the module loaded by then
            resolved, default_return, late = named, _DEFAULT_RETURN, True
        else:
            late = False
        spec = ProbeSpec(
            kind=kind,
            group=self.identity.group,
            event=event_name_for(kind, match.group("sym"), self._next_serial()),
            location=symbol,
            fetchargs=tuple(self._adapt(kind, resolved, default_return).items()),
            filter=filter,
            maxactive=maxactive,
            display=match.group("sym"),
            where=_definition_site(),
        )
        spec = self._with_stack(spec, stacktrace)
        if late:
            self._late[spec.event] = named
        return spec

    def complete(self, spec: ProbeSpec, loading: Optional[tuple[str, Optional[Path]]] = None) -> Optional[ProbeSpec]:
        """``spec`` with the names it could not resolve when it was defined resolved now, from its module's BTF:
        the module's own once it is loaded, else the ``.ko`` of ``loading`` (the module load_module() is loading
        and its local file, None when loaded by name). None while another module is being loaded: its probe
        waits for its own module, which it cannot see before."""
        named = self._late.get(spec.event)
        if named is None:
            return spec
        files = {loading[0]: loading[1]} if loading is not None and loading[1] is not None else {}
        module = spec.location.split(":", 1)[0] if ":" in spec.location else ""
        try:
            resolved, default_return = kernel_fetchargs(
                self.backend, spec.kind, spec.location, named, default_return=_DEFAULT_RETURN, loading=files
            )
            # Before its module is loaded the kernel cannot tell that the probe is on a function's entry, and
            # takes no $argN there ("Invalid $-variable specified"): the names were resolved for the entry, so
            # their registers are the same arguments.
            fetchargs = self._adapt(
                spec.kind, resolved, default_return, module_not_loaded=module if module in files else ""
            )
        except ModuleNotLoaded as missing:
            if loading is not None and loading[0] != missing.module:
                return None
            raise BtfUnavailable(_module_missing(spec, missing.module, self.backend.describe().name, loading)) from None
        except KtraceError as exc:
            raise _at_definition(exc, spec) from None
        del self._late[spec.event]
        return dataclasses.replace(spec, fetchargs=tuple(fetchargs.items()))

    def relocate(self, spec: ProbeSpec) -> ProbeSpec:
        """A uprobe placed again from its file as the target has it now (the file was rebuilt: a symbol's offset
        may have moved); one given a file offset stays where it was."""
        path, offset = spec.location.rsplit(":", 1)
        if spec.display == f"{os.path.basename(path)}+{int(offset, 16):#x}":
            return spec
        moved = elf.symbol_file_offset(self.files.local_path(path), spec.display)
        return dataclasses.replace(spec, location=f"{path}:{moved:#x}")

    def user_probe(
        self,
        kind: ProbeKind,
        path: str,
        location: Union[str, int],
        args: Sequence[str],
        fetchargs: dict[str, str],
        *,
        filter: Optional[str],
        stacktrace: object = False,
    ) -> ProbeSpec:
        if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
            raise KtraceError(f"{kind} path must be a str (or a str path-like), got {type_name(path)} {path!r}")
        path = os.fspath(path)
        check_text("uprobe path", path)
        if any(ch.isspace() for ch in path) or not path.startswith("/"):
            raise KtraceError(f"uprobe path {path!r} must be absolute and free of whitespace (the kernel splits on it)")
        if filter is not None:
            check_text("filter", filter)
        if isinstance(location, bool) or not isinstance(location, (int, str)):
            raise KtraceError(
                f"{kind} location must be a symbol name (str) or a file offset (int), got "
                f"{type_name(location)} {location!r}"
            )
        if isinstance(location, int) and not 0 <= location < 2**64:
            raise KtraceError(f"{kind} location {location!r}: a file offset must be in 0..2**64-1")
        if isinstance(location, int):
            offset, display = location, f"{os.path.basename(path)}+{location:#x}"
        else:
            offset, display = elf.symbol_file_offset(self.files.local_path(path), location), location
        spec = ProbeSpec(
            kind=kind,
            group=self.identity.group,
            event=event_name_for(kind, display, self._next_serial()),
            location=f"{path}:{offset:#x}",
            fetchargs=tuple(self._adapt(kind, _named_args(args, fetchargs)).items()),
            filter=filter,
            display=display,
            where=_definition_site(),
        )
        return self._with_stack(spec, stacktrace)

    def tracepoint(self, name: str, *, filter: Optional[str], stacktrace: object = False) -> ProbeSpec:
        if not isinstance(name, str):
            raise KtraceError(f"tracepoint name must be a str 'system:event', got {type_name(name)} {name!r}")
        match = _TRACEPOINT.fullmatch(name)
        if not match or any(part in (".", "..") for part in match.group("system", "event")):
            raise KtraceError(
                f"tracepoint {name!r} must be 'system:event' on a single line, e.g. 'sched:sched_process_exec'"
            )
        if filter is not None:
            check_text("filter", filter)
        spec = ProbeSpec(
            kind="tracepoint",
            group=match.group("system"),
            event=match.group("event"),
            location="",
            filter=filter,
            display=name,
            where=_definition_site(),
        )
        return self._with_stack(spec, stacktrace)

    def _next_serial(self) -> int:
        # Unique within the run's group across tests: instance serial + per-test counter.
        self._serial += 1
        return self._instance_serial * 1000 + self._serial

    def _adapt(
        self,
        kind: ProbeKind,
        named: dict[str, str],
        default_return: Optional[str] = _DEFAULT_RETURN,
        *,
        module_not_loaded: str = "",
    ) -> dict[str, str]:
        """Make fetchargs runnable on this target: ``$argN`` becomes a register where the kernel lacks it, or
        cannot take it (a probe on a function of ``module_not_loaded``)."""
        info = self.backend.describe()
        is_user = kind in ("uprobe", "uretprobe")
        is_return = kind in ("kretprobe", "uretprobe")
        if is_return and default_return and not any(text.startswith("$retval") for text in named.values()):
            named = {"ret": default_return, **named} if "ret" not in named else named
        adapted: dict[str, str] = {}
        for key, text in named.items():
            if "$arg" in text and not text.startswith("$args"):
                if is_return and not (not is_user and info.has("argN_on_return")):
                    raise UnsupportedFetchArg(
                        f"{key}={text}: $argN on a return probe needs a kernel that saves entry arguments "
                        f"(kprobes on Linux 6.9+); {info.name} runs {info.release}. Record it with an entry probe."
                    )
                if is_user:
                    text = rewrite_argn(text, info.arch, why="uprobes do not support $argN")
                elif not info.has("argN"):
                    text = rewrite_argn(text, info.arch, why=f"the kernel of {info.name} has no $argN")
                elif module_not_loaded:
                    why = f"the kernel takes no $argN on a function of module {module_not_loaded} before it is loaded"
                    text = rewrite_argn(text, info.arch, why=why)
            adapted[key] = text
        return adapted

    def _with_stack(self, spec: ProbeSpec, stacktrace: object) -> ProbeSpec:
        if not isinstance(stacktrace, bool):
            raise KtraceError(f"stacktrace= must be True or False, got {type_name(stacktrace)} {stacktrace!r}")
        if not stacktrace:
            return spec
        if self.stream:
            raise KtraceError(
                f"{spec.display}: stacktrace=True is not available in stream mode (stack entries are not "
                "streamed); turn streaming off for this test"
            )
        extra: tuple[tuple[str, str], ...] = ()
        caller = _CALLER_AT_ENTRY.get(normalize_arch(self.backend.describe().arch))
        if spec.kind == "uprobe" and caller is not None:
            # at a function's entry the frame-pointer walk skips the direct caller, whose return address is
            # still in the link register / on top of the stack: fetch it with the event
            extra = ((CALLER_FIELD, caller),)
        return dataclasses.replace(spec, stacktrace=True, fetchargs=spec.fetchargs + extra)
