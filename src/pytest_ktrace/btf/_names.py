"""Names, not offsets: kprobe fetch arguments written as C, resolved against the target's BTF.

::

    entry = ktrace.kprobe("__setup_irq", irq="irq", name="new->name:string", inner="desc->irq_data.irq")
    done = ktrace.kretprobe("__setup_irq")         # ret=$retval:s32: int, from the BTF, so -22 prints -22

Which fetch arguments are names: a value that starts with an identifier (``irq``, ``desc->irq_data.irq``,
``new->name:string``), or ``$retval``/``$argN`` followed by ``->``, ``.`` or ``[`` (``$retval->name:string``).
They are resolved by :func:`pytest_ktrace.btf.resolve` into ``$argN``/``+OFFSET(...)`` chains with a type from
the C type, then go through the session's usual ``$argN`` -> register rewrite. Everything else (``$arg1:u32``,
``%x0``, ``+0(+80($arg3)):string``, ``@jiffies``, ``$comm``...) is kernel syntax and passes through unchanged.

Return probes (kretprobe): ``$retval`` without a type gets the function's return type (``int`` -> ``s32``,
``long`` -> ``s64``, ``bool`` -> ``u8``, pointers -> ``x64``), and so does the ``ret`` field a kretprobe records
when no fetch argument reads ``$retval`` (a ``void`` function records none). Without BTF both keep the old
meaning (``$retval`` as the kernel types it, ``ret=$retval:s32``). Parameters on a return probe need a kernel
that saves entry arguments (``argN_on_return``, 6.9+); elsewhere it is an
:class:`~pytest_ktrace._errors.UnsupportedFetchArg` that says to use an entry probe. Uprobes and tracepoints are
not touched (user binaries have no kernel BTF).

Where the BTF comes from, read once per target and run:

* a local target: ``/sys/kernel/btf/vmlinux``;
* SSH targets and the qemu guests: the same file fetched over the connection (:meth:`FileFetching.fetch_file
  <pytest_ktrace.backends._base.FileFetching.fetch_file>`), cached on disk as
  ``~/.cache/pytest-ktrace/btf/<release>-<build id>.btf`` (``$XDG_CACHE_HOME`` is honoured,
  ``$KTRACE_BTF_CACHE_DIR`` replaces the directory; the build id is read from ``/sys/kernel/notes``, else the
  file's ``sha256sum`` on the target is the key), so a later run costs one small read;
* modules: ``ktrace.kprobe("virtio_net:start_xmit", ...)`` reads ``/sys/kernel/btf/virtio_net`` (split BTF on
  the vmlinux base); a function that is not in vmlinux is looked up in ``/proc/kallsyms`` to find its module. A
  module that is not loaded yet has no BTF there (:class:`~.errors.ModuleNotLoaded`): the probe's names wait,
  and ``ktrace.load_module()`` resolves them from the ``.BTF`` section of the ``.ko`` it loads, just before it
  arms the probes (:meth:`~pytest_ktrace._probe_builder.ProbeBuilder.complete`). The kernel's module BTF is kept
  until a load or unload by the plugin (:func:`forget_module`); a ``.ko``'s is kept per file content.

The fake backend has no BTF (target snapshots carry no kernel types; a test's BTF is megabytes): replaying a
cassette, the names resolve from the cassette's ``btf`` section, which :class:`~pytest_ktrace.recording._recorder.
RecordingBackend` fills as the test resolves them on hardware (``--ktrace-record``). A name the cassette did
not record makes it stale; without a cassette a name is a :class:`~pytest_ktrace.btf.BtfUnavailable` that
says how to write the argument without BTF.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import struct
import threading
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional, Protocol, Union, cast

from .._errors import KtraceError, UnsupportedFetchArg, hide_for_ktrace_errors
from .._files import write_atomic
from ..backends._base import Backend, FileFetching, Read, SharedFilesystem, TargetInfo, capable
from . import _errors as btf_errors
from ._blob import BtfTypes, FuncInfo
from ._errors import (
    BtfError,
    BtfFormatError,
    BtfUnavailable,
    FetchargError,
    FetchargTypeError,
    FetchargUnsupported,
    ModuleNotLoaded,
    UnknownFunction,
    module_btf_hint,
    no_btf_hint,
)
from ._fetcharg import resolve, resolve_return
from ._kinds import Kind, Ptr
from ._sources import btf_from_elf

__all__ = [
    "CACHE_ENV",
    "KALLSYMS",
    "NOTES",
    "VMLINUX",
    "KernelBtf",
    "btf_cache_dir",
    "build_id",
    "forget_module",
    "is_btf_expression",
    "kernel_btf",
    "kernel_fetchargs",
]

__tracebackhide__ = hide_for_ktrace_errors  # errors point at the test line that wrote the name

VMLINUX = "/sys/kernel/btf/vmlinux"
NOTES = "/sys/kernel/notes"
KALLSYMS = "/proc/kallsyms"
CACHE_ENV = "KTRACE_BTF_CACHE_DIR"

_NAME = re.compile(r"[A-Za-z_]")
_TYPED_BASE = re.compile(r"\$(?:retval|arg[1-9][0-9]*)\s*(?:->|\.|\[)")
_LOCATION = re.compile(
    r"(?:(?P<mod>[A-Za-z0-9_-]+):)?(?P<sym>[A-Za-z_.$][A-Za-z0-9_.$]*)(?:\+(?P<off>0x[0-9a-fA-F]+|[0-9]+))?"
)
_MODULE = re.compile(r"[A-Za-z0-9_-]+")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_AT_ENTRY, _AT_RETURN, _RETURNS = "at entry", "at return", "returns"
_FUNC_KINDS = (Kind.FUNC,)
_NOTHING_LOADING: Mapping[str, Path] = MappingProxyType({})


def is_btf_expression(text: str) -> bool:
    """Whether a fetch argument is a name to resolve from BTF (``irq``, ``desc->irq_data.irq``,
    ``$retval->name:string``) rather than kernel syntax (``$arg1``, ``%x0``, ``+8($arg2)``, ``@sym``, ``\\1``)."""
    return isinstance(text, str) and bool(_NAME.match(text) or _TYPED_BASE.match(text))


def btf_cache_dir() -> Path:
    """Where BTF fetched from remote targets is kept: ``$KTRACE_BTF_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/pytest-ktrace/btf`` (``~/.cache/pytest-ktrace/btf``)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "pytest-ktrace" / "btf"


# -------------------------------------------------------------------------------------------------------------
# reading files on the target
# -------------------------------------------------------------------------------------------------------------


def _fetch(backend: Backend, path: str) -> bytes:
    """The bytes of ``path`` on the target: the backend's ``fetch_file``, else ``cat`` through ``run``."""
    if isinstance(backend, FileFetching):
        data = backend.fetch_file(path)
        if not isinstance(data, (bytes, bytearray)):
            raise KtraceError(f"{type(backend).__name__}.fetch_file({path!r}) returned {type(data).__name__}")
        return bytes(data)
    result = backend.run(["cat", "--", path])
    if result.returncode != 0:
        text = result.stderr.strip()
        code = errno.ENOENT if "No such file" in text else errno.EIO
        raise OSError(code, text or f"cat exited {result.returncode}", path)
    return result.stdout.encode("utf-8", "surrogateescape")


def _unreadable(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
        return f"{path} does not exist"
    return f"cannot read {path}: {exc.strerror or exc}"


def build_id(notes: bytes) -> Optional[str]:
    """The GNU build id (hex) in the ELF notes of ``/sys/kernel/notes``, if there is one."""
    for endian in ("<", ">"):
        pos = 0
        while pos + 12 <= len(notes):
            namesz, descsz, kind = struct.unpack_from(endian + "III", notes, pos)
            if namesz > 256 or descsz > 4096:
                break  # not this byte order (or not notes at all)
            name_at = pos + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            end = desc_at + (descsz + 3) // 4 * 4
            if end > len(notes):
                break
            if kind == 3 and notes[name_at : name_at + namesz].rstrip(b"\0") == b"GNU" and descsz:
                return notes[desc_at : desc_at + descsz].hex()
            pos = end
    return None


# -------------------------------------------------------------------------------------------------------------
# the BTF of one target
# -------------------------------------------------------------------------------------------------------------


@dataclass
class KernelBtf:
    """The BTF of one target: vmlinux (loaded on first use) and the modules' split BTF (on demand). Failures are
    remembered too, so a target without BTF is asked once. ``source`` says where vmlinux's BTF came from (a
    path on the target, or the local cache file it was read from); ``fetched`` counts the bytes that crossed."""

    info: TargetInfo
    local: bool
    cache_dir: Optional[Path] = None
    source: str = ""
    fetched: int = 0
    _vmlinux: Optional[BtfTypes] = field(default=None, repr=False, compare=False)
    _vmlinux_error: str = field(default="", repr=False, compare=False)
    # module name -> its BTF or why there is none; function -> the modules /proc/kallsyms places it in
    _modules: dict[str, Union[BtfTypes, str]] = field(default_factory=dict, repr=False, compare=False)
    _homes: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)
    # (module name, sha256 of a local module file) -> its BTF or why there is none
    _files: dict[tuple[str, str], Union[BtfTypes, str]] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def _unavailable(self, reason: str, expr: str = "") -> BtfUnavailable:
        return BtfUnavailable.for_target(self.info.name, reason, arch=self.info.arch, expr=expr)

    def vmlinux(self, backend: Backend, *, expr: str = "") -> BtfTypes:
        """The kernel's own BTF; :class:`~pytest_ktrace.btf.BtfUnavailable` (with the positional fallback) if
        the target has none."""
        with self._lock:
            if self._vmlinux is None and not self._vmlinux_error:
                try:
                    self._vmlinux = self._load_vmlinux(backend)
                except OSError as exc:
                    reason = _unreadable(VMLINUX, exc)
                    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
                        reason += " (kernel built without CONFIG_DEBUG_INFO_BTF?)"
                    self._vmlinux_error = reason
                except BtfFormatError as exc:
                    self._vmlinux_error = f"{VMLINUX} is not usable BTF: {exc}"
            if self._vmlinux is None:
                raise self._unavailable(self._vmlinux_error, expr)
            return self._vmlinux

    def _load_vmlinux(self, backend: Backend) -> BtfTypes:
        if self.local or self.cache_dir is None:
            data = _fetch(backend, VMLINUX)
            self.fetched += len(data)
            self.source = VMLINUX
            return BtfTypes.load(data, name="vmlinux")
        path = self._cache_path(backend)
        if path is not None and path.is_file():
            try:
                btf = BtfTypes.load(path.read_bytes(), name="vmlinux")
            except (OSError, BtfFormatError):
                with contextlib.suppress(OSError):
                    path.unlink()  # damaged: fetched again below
            else:
                self.source = str(path)
                return btf
        data = _fetch(backend, VMLINUX)
        self.fetched += len(data)
        btf = BtfTypes.load(data, name="vmlinux")  # checked before it is cached
        self.source = f"{self.info.name}:{VMLINUX}"
        if path is not None:
            try:
                write_atomic(path, data, what="BTF cache file")
            except KtraceError as exc:  # a full disk costs the next run a fetch, not this test
                warnings.warn(f"pytest-ktrace: {exc}; the BTF of {self.info.name} is used uncached", stacklevel=2)
            else:
                self.source = str(path)
        return btf

    def _cache_path(self, backend: Backend) -> Optional[Path]:
        """``<cache>/<release>-<build id>.btf``; the build id from ``/sys/kernel/notes``, else the sha256 of
        the BTF computed on the target (None when neither can be had: fetched every run)."""
        assert self.cache_dir is not None
        release = _SAFE.sub("_", self.info.release) or "unknown"
        try:
            key = build_id(_fetch(backend, NOTES))
        except OSError:
            key = None
        if key is None:
            digest = backend.run(["sha256sum", VMLINUX])
            words = digest.stdout.split()
            if digest.returncode != 0 or not words or not re.fullmatch(r"[0-9a-f]{64}", words[0]):
                return None
            key = f"sha256-{words[0]}"
        return self.cache_dir / f"{release}-{key}.btf"

    def module(self, backend: Backend, name: str, *, expr: str = "") -> BtfTypes:
        """The split BTF of module ``name`` (``/sys/kernel/btf/<name>``) on the vmlinux base;
        :class:`~.errors.ModuleNotLoaded` when the module is not loaded (not remembered: it may be soon)."""
        base = self.vmlinux(backend, expr=expr)
        with self._lock:
            known = self._modules.get(name)
            if known is None:
                path = f"/sys/kernel/btf/{name}"
                if not _MODULE.fullmatch(name):
                    known = f"{name!r} is not a module name"
                else:
                    try:
                        data = _fetch(backend, path)
                        self.fetched += len(data)
                        known = BtfTypes.load(data, base, name=name)
                    except OSError as exc:
                        known = _unreadable(path, exc)
                        if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
                            known = self._why_no_module_btf(backend, name, expr)
                    except BtfFormatError as exc:
                        known = f"{path} is not usable BTF: {exc}"
                self._modules[name] = known
            if isinstance(known, str):
                raise BtfUnavailable.for_target(f"module {name}", known, arch=self.info.arch, expr=expr)
            return known

    def _why_no_module_btf(self, backend: Backend, name: str, expr: str) -> str:
        """Why ``/sys/kernel/btf/<name>`` does not exist: raises :class:`~.errors.ModuleNotLoaded` when the
        module is not loaded, else says that it has no BTF and how to give it some."""
        try:
            _fetch(backend, f"/sys/module/{name}/initstate")  # loadable modules only; built-in ones have none
        except OSError:
            raise ModuleNotLoaded(
                f"cannot resolve {expr!r}: module {name} is not loaded on {self.info.name}, so its BTF "
                f"(/sys/kernel/btf/{name}) is not there",
                module=name,
            ) from None
        return (
            f"it is loaded on {self.info.name} but /sys/kernel/btf/{name} does not exist: it was built without BTF, "
            f'or the kernel dropped BTF that did not match its own ("failed to validate module [{name}] BTF" in '
            f"its log), or the kernel has no CONFIG_DEBUG_INFO_BTF_MODULES\n{module_btf_hint(name)}"
        )

    def module_file(self, backend: Backend, name: str, ko: Path, *, expr: str = "") -> BtfTypes:
        """The split BTF in the ``.BTF`` section of the module file ``ko`` (a module about to be loaded), on the
        target's vmlinux BTF. Parsed once per content: a rebuilt file is read again."""
        base = self.vmlinux(backend, expr=expr)
        try:
            data = Path(ko).read_bytes()
        except OSError as exc:
            raise BtfUnavailable.for_target(
                f"module {name}", f"cannot read {ko}: {exc.strerror or exc}", arch=self.info.arch, expr=expr
            ) from None
        key = (name, hashlib.sha256(data).hexdigest())
        with self._lock:
            known = self._files.get(key)
            if known is None:
                known = self._file_btf(name, ko, data, base)
                self._files[key] = known
        if isinstance(known, str):
            raise BtfUnavailable.for_target(f"module {name}", known, arch=self.info.arch, expr=expr)
        return known

    def _file_btf(self, name: str, ko: Path, data: bytes, base: BtfTypes) -> Union[BtfTypes, str]:
        try:
            blob = btf_from_elf(data, what=str(ko))
        except BtfUnavailable:
            return f"{ko} has no .BTF section (built without BTF)\n{module_btf_hint(name)}"
        except BtfFormatError as exc:
            return f"{ko} is not a module file: {exc}"
        try:
            btf = BtfTypes.load(blob, base, name=name)
            btf.check_references()  # what the kernel checks before it takes a module's BTF
        except BtfFormatError as exc:
            return (
                f"the BTF in {ko} does not fit the BTF of {self.info.name}'s kernel ({exc}): it was written against "
                f"another kernel's BTF\n{module_btf_hint(name)}"
            )
        return btf

    def forget_module(self, name: str) -> None:
        """Module ``name`` was loaded or unloaded: its BTF, and where functions are, are read again when needed."""
        with self._lock:
            self._modules.pop(name, None)
            self._homes.clear()

    def _homes_of(self, backend: Backend, function: str) -> tuple[str, ...]:
        """The modules whose ``/proc/kallsyms`` entries define ``function`` ("" for vmlinux itself)."""
        with self._lock:
            if function not in self._homes:
                found: list[str] = []
                result = backend.run(["grep", "-w", "-F", "-e", function, KALLSYMS])
                for line in result.stdout.splitlines():
                    words = line.split()
                    if len(words) >= 3 and words[2] == function:
                        home = words[3].strip("[]") if len(words) > 3 else ""
                        if home not in found:
                            found.append(home)
                if result.returncode not in (0, 1) and self.local:
                    # no grep: the modules' BTF on this machine, searched directly
                    with contextlib.suppress(OSError):
                        for entry in sorted(os.listdir("/sys/kernel/btf")):
                            if entry != "vmlinux" and _MODULE.fullmatch(entry):
                                with contextlib.suppress(BtfError):
                                    if self.module(backend, entry).funcs(function):
                                        found.append(entry)
                self._homes[function] = tuple(found)
            return self._homes[function]

    def functions(
        self, backend: Backend, function: str, module: Optional[str], *, ko: Optional[Path] = None, expr: str = ""
    ) -> list[FuncInfo]:
        """Every BTF function ``function`` (static functions of different files may share a name) in
        ``module`` (from the module file ``ko`` when the test is loading it from there), or in vmlinux, or else
        in the module ``/proc/kallsyms`` places it in."""
        vmlinux = self.vmlinux(backend, expr=expr)
        if module:
            if ko is not None:
                btf = self.module_file(backend, module, ko, expr=expr)
            else:
                btf = self.module(backend, module, expr=expr)
            own = [f for f in btf.funcs(function) if f.id >= btf.start_id]
            if own:
                return own
            close = [
                name
                for name in btf.suggest(function, _FUNC_KINDS)
                if any(f.id >= btf.start_id for f in btf.funcs(name))
            ]
            hint = f"; close matches in {module}: {', '.join(close)}" if close else ""
            raise UnknownFunction(
                f"no function {function!r} in the BTF of module {module}{hint}", name=function, close=close
            )
        found = vmlinux.funcs(function)
        if found:
            return found
        homes = self._homes_of(backend, function)
        for home in homes:
            if home:
                with contextlib.suppress(BtfError):
                    own = [f for f in self.module(backend, home, expr=expr).funcs(function) if f.id >= vmlinux.end_id]
                    if own:
                        return own
        try:
            vmlinux.func(function)
        except UnknownFunction as exc:
            if "" in homes:
                where = (
                    f"{function} is in the kernel's symbol table ({KALLSYMS}) but not in its BTF: written in "
                    "assembly or a compiler-made copy, it has no C prototype"
                )
            elif homes:
                where = f"{KALLSYMS} places it in module(s) {', '.join(homes)}, whose BTF does not have it"
            else:
                where = (
                    f"no loaded module has it either ({KALLSYMS}); a function of a module that is not loaded yet is "
                    "probed as 'module:function'"
                )
            raise UnknownFunction(
                f"{exc}\n  {where}; on {self.info.name}, name its arguments by position instead ($arg1, ...)",
                name=function,
                close=exc.close,
            ) from None
        raise AssertionError("unreachable: funcs() and func() disagree")  # pragma: no cover


# backend -> its KernelBtf, for as long as the backend (one per target and run) lives
_TARGETS: weakref.WeakKeyDictionary[Any, KernelBtf] = weakref.WeakKeyDictionary()
_TARGETS_LOCK = threading.Lock()


def kernel_btf(backend: Backend) -> KernelBtf:
    """The :class:`KernelBtf` of ``backend``'s target, made once per backend (so once per target and run)."""
    with _TARGETS_LOCK:
        try:
            known = _TARGETS.get(backend)
        except TypeError:  # a backend that cannot be weakly referenced: cached nowhere
            known = None
        if known is None:
            local = isinstance(backend, SharedFilesystem) and backend.files_are_local
            known = KernelBtf(backend.describe(), local, None if local else btf_cache_dir())
            with contextlib.suppress(TypeError):
                _TARGETS[backend] = known
        return known


# -------------------------------------------------------------------------------------------------------------
# resolvers: the target's BTF, a recording of it, a replay of that recording, or nothing (the fake)
# -------------------------------------------------------------------------------------------------------------


class _Resolver(Protocol):
    def fetcharg(self, function: str, module: Optional[str], expr: str, entry: bool) -> str: ...

    def return_type(self, function: str, module: Optional[str]) -> Optional[str]: ...


def _return_type(func: FuncInfo) -> Optional[str]:
    """The fetch type of ``func``'s return value, "" for void, None when it has none (a struct by value)."""
    if func.returns_void:
        return ""
    try:
        return resolve_return(func)
    except FetchargTypeError:
        resolved = func.btf.resolve(func.ret)
        if isinstance(resolved, Ptr):  # char *: the address, as the kernel would print it
            return f"x{func.btf.ptr_size * 8}"
        return None


class _TargetResolver:
    """Resolves against the BTF of a real target (a module's from ``loading[module]``, the file the test is
    loading it from, when there is one)."""

    def __init__(self, backend: Backend, loading: Mapping[str, Path]) -> None:
        self.backend = backend
        self.btf = kernel_btf(backend)
        self.arch = backend.describe().arch
        self.loading = loading

    def _functions(self, function: str, module: Optional[str], expr: str = "") -> list[FuncInfo]:
        ko = self.loading.get(module) if module else None
        return self.btf.functions(self.backend, function, module, ko=ko, expr=expr)

    def fetcharg(self, function: str, module: Optional[str], expr: str, entry: bool) -> str:
        funcs = self._functions(function, module, expr)
        distinct = {f.proto_id: f for f in funcs}
        results: dict[str, FuncInfo] = {}
        for func in distinct.values():
            results.setdefault(resolve(func, expr, self.arch, entry=entry).text, func)
        if len(results) > 1:
            variants = "\n".join(f"    {text}  for  {func.signature()}" for text, func in results.items())
            raise FetchargError(
                f"{expr!r}: there are {len(distinct)} functions called {function} with different prototypes, and "
                f"the kernel probes the first in kallsyms:\n{variants}\n  name the module ('mod:{function}') or "
                "write the fetch argument by position",
                expr=expr,
            )
        return next(iter(results))

    def return_type(self, function: str, module: Optional[str]) -> Optional[str]:
        try:
            funcs = self._functions(function, module)
        except ModuleNotLoaded:
            raise  # typed once the module is there
        except BtfError:
            return None
        types = {_return_type(func) for func in funcs}
        return types.pop() if len(types) == 1 else None


def _function_key(function: str, module: Optional[str]) -> str:
    return f"{module}:{function}" if module else function


class _RecordingResolver:
    """The target's answers, written into the cassette being recorded (errors too: a test that expects one
    replays it)."""

    def __init__(self, inner: _Resolver, btf: dict[str, Any]) -> None:
        self.inner = inner
        self.btf = btf

    def fetcharg(self, function: str, module: Optional[str], expr: str, entry: bool) -> str:
        try:
            text = self.inner.fetcharg(function, module, expr, entry)
        except ModuleNotLoaded:
            raise  # not an answer: asked again once the module is there
        except BtfError as exc:
            self._section(function, module, entry)[expr] = {"error": type(exc).__name__, "message": str(exc)}
            raise
        self._section(function, module, entry)[expr] = text
        return text

    def _section(self, function: str, module: Optional[str], entry: bool) -> dict[str, Any]:
        answers: dict[str, Any] = self.btf.setdefault(_function_key(function, module), {}).setdefault(
            _AT_ENTRY if entry else _AT_RETURN, {}
        )
        return answers

    def return_type(self, function: str, module: Optional[str]) -> Optional[str]:
        found = self.inner.return_type(function, module)
        if found is not None:
            self.btf.setdefault(_function_key(function, module), {})[_RETURNS] = found
        return found


class _ReplayResolver:
    """What the cassette recorded; a name it does not have makes it stale. Names of a module that the fake's
    kernel has not loaded wait for it, as on the target (so the probe is written as it was recorded)."""

    def __init__(self, player: Any, backend: Backend, loading: Mapping[str, Path]) -> None:
        self.player = player
        self.btf: dict[str, Any] = player.cassette.btf
        self.backend = backend
        self.loading = loading

    def _wait_for(self, module: Optional[str], expr: str) -> None:
        if not module or module in self.loading:
            return
        state = self.backend.apply([Read(f"/sys/module/{module}/initstate", missing_ok=True)])[0]
        if not (state.ok and state.data.strip()):
            raise ModuleNotLoaded(f"cannot resolve {expr!r}: module {module} is not loaded", module=module)

    def fetcharg(self, function: str, module: Optional[str], expr: str, entry: bool) -> str:
        self._wait_for(module, expr)
        key = _function_key(function, module)
        where = _AT_ENTRY if entry else _AT_RETURN
        recorded = self.btf.get(key, {}).get(where, {})
        if not isinstance(recorded, dict) or expr not in recorded:
            known = sorted(recorded) if isinstance(recorded, dict) else []
            raise self.player.stale(
                f"{key} {expr!r} ({where}) was not resolved from BTF when it was recorded"
                + (f" (recorded names {where}: {', '.join(known)})" if known else "")
            )
        answer = recorded[expr]
        if isinstance(answer, str):
            return answer
        if isinstance(answer, dict) and "error" in answer:
            cls = getattr(btf_errors, str(answer["error"]), None)
            if not (isinstance(cls, type) and issubclass(cls, BtfError)):
                cls = BtfError
            raise cls(str(answer.get("message", "")))
        raise self.player.stale(f"{key} {expr!r}: the recorded resolution {answer!r} is not a fetch argument")

    def return_type(self, function: str, module: Optional[str]) -> Optional[str]:
        self._wait_for(module, "$retval")
        found = self.btf.get(_function_key(function, module), {}).get(_RETURNS)
        return found if isinstance(found, str) else None


class _NoBtf:
    """The fake backend without a cassette: no kernel types to resolve names with."""

    def __init__(self, info: TargetInfo) -> None:
        self.info = info

    def fetcharg(self, function: str, module: Optional[str], expr: str, entry: bool) -> str:
        raise BtfUnavailable(
            f"cannot resolve {expr!r} ({function}): the fake backend has no BTF ({self.info.name}: target snapshots "
            "carry no kernel types). Record the test once on a real target with --ktrace-record: its cassette "
            "keeps what the kernel's BTF said, and replaying it here resolves the same names.\n"
            + no_btf_hint(self.info.arch)
        )

    def return_type(self, function: str, module: Optional[str]) -> Optional[str]:
        return None


def _resolver_for(backend: Backend, loading: Mapping[str, Path]) -> _Resolver:
    from ..recording._player import Replaying
    from ..recording._recorder import RecordingBackend

    if isinstance(backend, RecordingBackend):
        return _RecordingResolver(_resolver_for(backend.inner, loading), backend.cassette.btf)
    if capable(backend, Replaying):  # the fake backend
        player = cast(Replaying, backend).player
        if player is not None:
            return _ReplayResolver(player, backend, loading)
        return _NoBtf(backend.describe())
    return _TargetResolver(backend, loading)


def forget_module(backend: Backend, name: str) -> None:
    """Module ``name`` was loaded or unloaded on ``backend``'s target: its BTF is read again when next needed."""
    from ..recording._recorder import RecordingBackend

    while isinstance(backend, RecordingBackend):
        backend = backend.inner
    with _TARGETS_LOCK:
        try:
            known = _TARGETS.get(backend)
        except TypeError:
            known = None
    if known is not None:
        known.forget_module(name)


# -------------------------------------------------------------------------------------------------------------
# the probe factories' step
# -------------------------------------------------------------------------------------------------------------


def _named(exc: FetchargError, key: str, text: str) -> FetchargError:
    """``exc`` (same class) with the fetch argument it is about in front: ``name='new->nam:string': ...``."""
    message = str(exc)
    if message.startswith(f"{text!r}: "):
        message = message[len(text) + 4 :]
    try:
        return type(exc)(f"{key}={text!r}: {message}", expr=exc.expr or text)
    except TypeError:  # a subclass with another constructor: as it was
        return exc


def kernel_fetchargs(
    backend: Backend,
    kind: str,
    location: str,
    named: dict[str, str],
    *,
    default_return: Optional[str],
    loading: Mapping[str, Path] = _NOTHING_LOADING,
) -> tuple[dict[str, str], Optional[str]]:
    """The fetch arguments of a kprobe/kretprobe on ``location`` (``sym``, ``sym+off``, ``mod:sym``) with the
    names resolved from the target's BTF (raw kernel syntax untouched), and the ``ret`` fetch argument a
    kretprobe records when none of them reads ``$retval``: ``$retval:<BTF return type>``, None for a void
    function, ``default_return`` when the type is unknown (no BTF).

    ``loading`` maps a module the test is loading to its local ``.ko``: the names of ``mod:func`` come from that
    file's BTF. :class:`~.errors.ModuleNotLoaded` says the module is neither loaded nor being loaded."""
    is_return = kind == "kretprobe"
    wanted = [key for key, text in named.items() if is_btf_expression(text) or (is_return and text == "$retval")]
    defaulted = is_return and "ret" not in named and not any(text.startswith("$retval") for text in named.values())
    match = _LOCATION.fullmatch(location) if isinstance(location, str) else None
    if (not wanted and not defaulted) or match is None:
        return named, default_return
    module, function, offset = match.group("mod"), match.group("sym"), match.group("off")
    resolver = _resolver_for(backend, loading)
    info = backend.describe()
    resolved: dict[str, str] = {}
    for key, text in named.items():
        if key not in wanted:
            resolved[key] = text
        elif text == "$retval":
            fetch_type = resolver.return_type(function, module)
            resolved[key] = f"$retval:{fetch_type}" if fetch_type else text
        else:
            if offset is not None and int(offset, 0) != 0:
                raise FetchargUnsupported(
                    f"{key}={text!r}: named arguments are read where the function starts, and {location} is "
                    f"{offset} bytes in (the argument registers may hold anything by then); probe {function} "
                    "itself, or read registers (%di, %x0, ...) at the offset",
                    expr=text,
                )
            try:
                fetcharg = resolver.fetcharg(function, module, text, not is_return)
            except FetchargError as exc:
                raise _named(exc, key, text) from None
            if is_return and "$arg" in fetcharg and not info.has("argN_on_return"):
                raise UnsupportedFetchArg(
                    f"{key}={text!r} reads a parameter of {function}() ({fetcharg}) in a return probe: that needs a "
                    f"kernel that saves entry arguments (kprobes on Linux 6.9+), and {info.name} runs "
                    f"{info.release}. Record it with an entry probe: ktrace.kprobe({location!r}, {key}={text!r})"
                )
            resolved[key] = fetcharg
    if is_return and "ret" not in resolved and not any(text.startswith("$retval") for text in resolved.values()):
        fetch_type = resolver.return_type(function, module)
        if fetch_type is not None:
            default_return = f"$retval:{fetch_type}" if fetch_type else None
    return resolved, default_return
