"""Which target a test runs against, resolved from marker > ``ktrace_config`` fixture > command line > ini, and
per-run backend state."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pytest

from ._boards import split_hosts
from ._choices import KERNEL_LOG_POLICIES, LOST_POLICIES, SCOPES, VM_ARCHES
from ._errors import KtraceError, hide_for_ktrace_errors
from ._identity import RunIdentity, stale_owner
from ._labgrid._request import COORDINATOR_ENV, DEFAULT_TIMEOUT_S, LabgridRequest, parse_coordinator, parse_tags
from .backends._base import Backend, Rmdir, Write

if TYPE_CHECKING:
    from ._warm import ParkedProbes

__all__ = ["MARKER_KEYS", "RunState", "TargetSpec", "resolve_target", "state_key"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

# key -> (command-line dest, ini name, default, kind)
_SETTINGS: dict[str, tuple[str, str, Any, str]] = {
    "backend": ("ktrace_backend", "ktrace_backend", None, "str"),
    "host": ("ktrace_host", "ktrace_host", None, "str"),
    "vm": ("ktrace_vm", "ktrace_vm", None, "str"),
    "vm_kernel": ("ktrace_vm_kernel", "ktrace_vm_kernel", None, "path"),
    "vm_modules": ("ktrace_vm_modules", "ktrace_vm_modules", None, "path"),
    "tracefs": ("ktrace_tracefs", "ktrace_tracefs", None, "str"),
    "sudo": ("ktrace_sudo", "ktrace_sudo", False, "bool"),
    "ssh_config": ("ktrace_ssh_config", "ktrace_ssh_config", None, "str"),
    "accept_new_host_key": ("ktrace_accept_new_host_key", "ktrace_accept_new_host_key", False, "bool"),
    "ssh_identity": ("ktrace_ssh_identity", "ktrace_ssh_identity", None, "path"),
    "labgrid": ("ktrace_labgrid", "ktrace_labgrid", None, "str"),
    "labgrid_tags": ("ktrace_labgrid_tags", "ktrace_labgrid_tags", None, "str"),
    "labgrid_place": ("ktrace_labgrid_place", "ktrace_labgrid_place", None, "str"),
    "labgrid_timeout": ("ktrace_labgrid_timeout", "ktrace_labgrid_timeout", DEFAULT_TIMEOUT_S, "float"),
    "scope": ("ktrace_scope", "ktrace_scope", "all", "str"),
    "timeout": ("ktrace_timeout", "ktrace_timeout", 60.0, "float"),
    "buffer_kb": ("ktrace_buffer_kb", "ktrace_buffer_kb", None, "int"),
    "snapshot": ("ktrace_snapshot", "ktrace_snapshot", None, "str"),
    "lost": ("ktrace_lost", "ktrace_lost", "fail", "str"),
    "stream": ("ktrace_stream", "ktrace_stream", False, "bool"),
    "keep": ("ktrace_keep_events", "ktrace_keep_events", 100_000, "int"),
    "strict": ("ktrace_strict", "ktrace_strict", False, "bool"),
    "kernel_log": ("ktrace_kernel_log", "ktrace_kernel_log", "fail", "str"),
    "fresh_probes": ("ktrace_fresh_probes", "ktrace_fresh_probes", False, "bool"),
}
MARKER_KEYS = frozenset(_SETTINGS)
DEFAULT_CLEAN_AFTER_S = 6 * 3600.0  # a run whose heartbeat is older is dead: no test runs this long without one


@dataclass(frozen=True)
class TargetSpec:
    """Where and how a test traces. ``backend`` is ``local``, ``ssh``, ``vm`` or a third-party name."""

    backend: str = "local"
    host: Optional[str] = None
    vm: Optional[str] = None
    vm_kernel: Optional[str] = None  # a kernel the user built, booted in the vm instead of Debian's (absolute path)
    vm_modules: Optional[str] = None  # its `make modules_install INSTALL_MOD_PATH=` tree (absolute path)
    tracefs: Optional[str] = None
    sudo: bool = False
    ssh_config: Optional[str] = None
    accept_new_host_key: bool = False
    snapshot: Optional[str] = None  # the fake backend's target snapshot (a shipped name or a file)
    ssh_identity: Optional[str] = None  # a private key tried first (absolute path)
    labgrid_place: Optional[str] = None  # the labgrid place this SSH target is (its NetworkService)
    ssh_password: Optional[str] = field(default=None, repr=False)  # that NetworkService's password, if it has one

    @property
    def label(self) -> str:
        if self.labgrid_place:
            return f"labgrid:{self.labgrid_place}"
        if self.backend == "vm":
            return f"vm:{self.vm}:{Path(self.vm_kernel).name}" if self.vm_kernel else f"vm:{self.vm}"
        if self.backend == "fake":
            # a snapshot file is named by its file name: NAME.json.gz
            name = Path(self.snapshot).name.removesuffix(".json.gz") if self.snapshot else "(snapshot of each cassette)"
            return f"fake:{name}"
        return self.host if self.backend == "ssh" and self.host else self.backend


@dataclass(frozen=True)
class TestSettings:
    target: TargetSpec
    scope: str = "all"
    timeout: Optional[float] = 60.0
    buffer_kb: Optional[int] = None
    boards: tuple[str, ...] = ()  # --ktrace-host=a,b: the pool the test leases one board from
    lost: str = "fail"  # what count assertions do when the kernel lost events
    stream: bool = False  # events streamed from trace_pipe into bounded memory
    keep: int = 100_000  # stream mode: events kept per probe (counts stay exact)
    strict: bool = False  # an unmet ktrace_requires fails the test instead of skipping it
    kernel_log: str = "fail"  # what a kernel splat during the test does: fail it, warn, or nothing (off)
    labgrid: Optional[LabgridRequest] = None  # the test reserves a place through a labgrid coordinator
    fresh_probes: bool = False  # the test arms and removes its own probes in an instance of its own (no parking)

    @property
    def parks_probes(self) -> bool:
        """Whether the test traces in the run's instance, where probes stay armed between tests (``_warm``):
        not on a board leased per test (the next holder gets it clean), nor when the test changes the instance."""
        return not (
            self.fresh_probes
            or self.boards
            or self.labgrid is not None
            or self.target.labgrid_place
            or self.scope != "all"
            or self.stream
            or self.buffer_kb
        )


MAX_BUFFER_KB = 1 << 30  # 1 TiB per CPU: anything larger is a typo (the kernel would fail the allocation)
_KINDS = {
    "bool": "boolean (true/false)",
    "float": "number",
    "int": "integer",
    "str": "string",
    "path": "path (a string or os.PathLike)",
}


def _named(key: str, value: Any, source: str) -> str:
    """How the value is shown in an error: as the user wrote it (``--ktrace-timeout='abc'``, ``ini
    ktrace_timeout='abc'``, ``test_x.py::test_it: @pytest.mark.ktrace(timeout='abc')``)."""
    if source.startswith(("--", "ini ")):
        return f"{source}={value!r}"
    return f"{source}({key}={value!r})"


def _parse(kind: str, value: Any, *, strict: bool) -> Any:
    """``strict`` (a marker, a Python value): no coercion from other types except numbers for numbers."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if strict and not isinstance(value, (str, int)):
            raise TypeError(value)
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(value)
    if kind in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(value)
        if kind == "float":
            return float(value)
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(value)
            return int(value)
        return int(value)
    if kind == "path" and isinstance(value, os.PathLike):
        return os.fspath(value)
    if strict and not isinstance(value, str):
        raise TypeError(value)
    return str(value)


def _convert(key: str, kind: str, value: Any, source: str) -> Any:
    if value is None:
        return None
    what = _named(key, value, source)
    try:
        converted = _parse(kind, value, strict=not source.startswith(("--", "ini ")))
    except (TypeError, ValueError, OverflowError):
        raise pytest.UsageError(f"pytest-ktrace: {what} is not a valid {_KINDS[kind]}") from None
    if key in ("timeout", "labgrid_timeout") and not (math.isfinite(converted) and converted > 0):
        raise pytest.UsageError(f"pytest-ktrace: {what}: the timeout must be a finite number of seconds > 0")
    if key in _LABGRID_PARSERS and converted:
        try:
            _LABGRID_PARSERS[key](converted)
        except ValueError as exc:
            raise pytest.UsageError(f"pytest-ktrace: {what}: {exc}") from None
    if key == "buffer_kb" and not 1 <= converted <= MAX_BUFFER_KB:
        raise pytest.UsageError(f"pytest-ktrace: {what}: buffer_kb must be an integer in 1..{MAX_BUFFER_KB} (KiB)")
    return converted


def _place_name(text: str) -> str:
    if not text.strip() or any(c.isspace() or c == "," for c in text):
        raise ValueError("a place name has no spaces or ','")
    return text


_LABGRID_PARSERS: dict[str, Any] = {
    "labgrid": parse_coordinator,
    "labgrid_tags": parse_tags,
    "labgrid_place": _place_name,
}


def _setting(config: pytest.Config, marker_kwargs: dict[str, Any], key: str) -> Any:
    return _sourced_setting(config, marker_kwargs, key)[0]


def _sourced_setting(config: pytest.Config, marker_kwargs: dict[str, Any], key: str) -> tuple[Any, str]:
    """A setting's value and where it came from, as :func:`_named` shows it."""
    dest, ini, default, kind = _SETTINGS[key]
    if key in marker_kwargs:
        return _convert(key, kind, marker_kwargs[key], "@pytest.mark.ktrace"), "@pytest.mark.ktrace"
    cli = config.getoption(dest, default=None)
    if cli is not None:
        source = "--" + dest.replace("_", "-")
        return _convert(key, kind, cli, source), source
    raw = config.getini(ini)
    if raw not in (None, "", []):
        return _convert(key, kind, raw, f"ini {ini}"), f"ini {ini}"
    return default, ""


def _path_setting(config: pytest.Config, marker_kwargs: dict[str, Any], key: str) -> tuple[Optional[str], str]:
    """An absolute path and where it was set: a relative one is taken from where pytest was started (command
    line), the ini file's directory (ini) or the rootdir (marker, ``ktrace_config``)."""
    value, source = _sourced_setting(config, marker_kwargs, key)
    if not value:
        return None, ""
    path = Path(str(value)).expanduser()
    if not path.is_absolute():
        if source.startswith("--"):
            base = Path(config.invocation_params.dir)
        elif source.startswith("ini ") and config.inipath is not None:
            base = Path(config.inipath).parent
        else:
            base = Path(config.rootpath)
        path = base / path
    return os.path.normpath(path), _named(key, value, source)


def _vm_kernel_arch(kernel: str, named: str) -> str:
    """The arch of a user's kernel file, read from its header (cheap, remembered per file version)."""
    from ._errors import GuestKernelError
    from .guests._kernel_files import inspect_kernel

    try:
        return inspect_kernel(Path(kernel)).arch
    except GuestKernelError as exc:
        raise pytest.UsageError(f"pytest-ktrace: {named}: {exc}") from None


def validate_marker(
    nodeid: str, kwargs: dict[str, Any], args: tuple[Any, ...], source: str = "@pytest.mark.ktrace"
) -> None:
    """Refuse, at collection, a marker whose arguments are unknown or whose values are of the wrong type or out
    of range (the error names the test and the argument). ``source`` names where they come from (the marker, or
    the ``ktrace_config`` fixture, which takes the same keys)."""
    if args:
        raise pytest.UsageError(f"{nodeid}: {source} takes keyword arguments only ({', '.join(sorted(MARKER_KEYS))})")
    unknown = sorted(set(kwargs) - MARKER_KEYS)
    if unknown:
        raise pytest.UsageError(
            f"{nodeid}: {source} got unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(MARKER_KEYS))}"
        )
    for key, value in kwargs.items():
        _convert(key, _SETTINGS[key][3], value, f"{nodeid}: {source}")
    if "lost" in kwargs and kwargs["lost"] not in LOST_POLICIES:
        raise pytest.UsageError(f"{nodeid}: {source}(lost={kwargs['lost']!r}): use 'fail' or 'warn'")
    if "scope" in kwargs and kwargs["scope"] not in SCOPES:
        raise pytest.UsageError(f"{nodeid}: {source}(scope={kwargs['scope']!r}): use 'all' or 'run'")
    if "keep" in kwargs and not (isinstance(kwargs["keep"], int) and kwargs["keep"] >= 1):
        raise pytest.UsageError(f"{nodeid}: {source}(keep={kwargs['keep']!r}): use an int >= 1")
    if "kernel_log" in kwargs and kwargs["kernel_log"] not in KERNEL_LOG_POLICIES:
        raise pytest.UsageError(
            f"{nodeid}: {source}(kernel_log={kwargs['kernel_log']!r}): use one of {', '.join(KERNEL_LOG_POLICIES)}"
        )
    if "vm" in kwargs and kwargs["vm"] not in VM_ARCHES:
        raise pytest.UsageError(f"{nodeid}: {source}(vm={kwargs['vm']!r}): use one of {', '.join(VM_ARCHES)}")


def _vm_kernel_settings(
    config: pytest.Config, kwargs: dict[str, Any], vm: Optional[str]
) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(kernel, modules tree, arch) of a vm target: the arch is the user kernel's own, and a vm of another arch
    set beside it is a usage error naming both."""
    kernel, kernel_named = _path_setting(config, kwargs, "vm_kernel")
    modules, modules_named = _path_setting(config, kwargs, "vm_modules")
    if kernel is None:
        if modules is not None:
            raise pytest.UsageError(
                f"pytest-ktrace: {modules_named} needs a kernel of that build (--ktrace-vm-kernel=PATH): the "
                "stock Debian kernel brings its own modules"
            )
        return None, None, vm
    arch = _vm_kernel_arch(kernel, kernel_named)
    if vm is not None and vm != arch:
        _, vm_source = _sourced_setting(config, kwargs, "vm")
        raise pytest.UsageError(
            f"pytest-ktrace: {_named('vm', vm, vm_source)} asks for an {vm} guest, but {kernel_named} is an "
            f"{arch} kernel; drop one of them"
        )
    return kernel, modules, arch


def _level(source: str) -> int:
    """How specific a setting's source is: a marker (or ``ktrace_config``) 0, the command line 1, ini 2."""
    return 1 if source.startswith("--") else 2 if source.startswith("ini ") else 0


def _labgrid_choice(config: pytest.Config, kwargs: dict[str, Any], values: dict[str, Any]) -> Optional[LabgridRequest]:
    """The labgrid place a test asks for, if its most specific target setting is ``labgrid_tags`` or
    ``labgrid_place`` (``--ktrace-backend=fake`` replaces it like every real target). Two kinds of target given at
    the same level (tags and a place, a place and a host) are a usage error naming both."""
    asked = {key: _sourced_setting(config, kwargs, key) for key in ("labgrid_tags", "labgrid_place")}
    asked = {key: (value, source) for key, (value, source) in asked.items() if value}
    backend, backend_source = _sourced_setting(config, kwargs, "backend")
    if not asked or backend == "fake":
        return None
    key = min(asked, key=lambda name: _level(asked[name][1]))
    value, source = asked[key]
    named = _named(key, value, source)
    rivals = [(other, *_sourced_setting(config, kwargs, other)) for other in ("labgrid_tags", "labgrid_place")]
    rivals += [(other, *_sourced_setting(config, kwargs, other)) for other in ("host", "vm", "vm_kernel")]
    for other, other_value, other_source in rivals:
        if other != key and other_value and _level(other_source) == _level(source):
            raise pytest.UsageError(
                f"pytest-ktrace: {_named(other, other_value, other_source)} and {named}: a test runs on one "
                "target (a host, a vm, a labgrid place by tags, or one by name); drop one of them"
            )
        if other_value and _level(other_source) < _level(source):
            return None  # a more specific setting names another target
    if backend not in (None, "ssh") and _level(backend_source) <= _level(source):
        raise pytest.UsageError(
            f"pytest-ktrace: {_named('backend', backend, backend_source)} and {named}: a labgrid place is reached "
            "over SSH; drop one of them"
        )
    return LabgridRequest(
        _coordinator(config, kwargs, named),
        tags=parse_tags(value) if key == "labgrid_tags" else (),
        place=value if key == "labgrid_place" else None,
        timeout=values["labgrid_timeout"],
    )


def _coordinator(config: pytest.Config, kwargs: dict[str, Any], named: str) -> str:
    """``host:port`` of the coordinator: ``--ktrace-labgrid`` (marker, command line, ini), else $LG_COORDINATOR."""
    value, _ = _sourced_setting(config, kwargs, "labgrid")
    if value:
        return parse_coordinator(value)  # checked when converted
    from_env = os.environ.get(COORDINATOR_ENV, "").strip()
    if not from_env:
        raise pytest.UsageError(
            f"pytest-ktrace: {named} needs a labgrid coordinator: --ktrace-labgrid=HOST[:PORT] (ini ktrace_labgrid) "
            f"or ${COORDINATOR_ENV}"
        )
    try:
        return parse_coordinator(from_env)
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-ktrace: ${COORDINATOR_ENV}={from_env!r}: {exc}") from None


def _backend(kwargs: dict[str, Any], values: dict[str, Any]) -> str:
    backend: Optional[str] = values["backend"]
    wants_vm = "vm" in kwargs or "vm_kernel" in kwargs
    if "backend" not in kwargs and (wants_vm or "host" in kwargs) and backend != "fake":
        # A marker naming a host or a vm picks that kind of target, whatever the command line said, except
        # --ktrace-backend=fake: then every real target is replaced by the fake, replaying the tests' cassettes.
        backend = "vm" if wants_vm else "ssh"
    if backend is None:
        backend = "vm" if values["vm"] or values["vm_kernel"] else "ssh" if values["host"] else "local"
    return backend


def _identity_file(config: pytest.Config, kwargs: dict[str, Any]) -> Optional[str]:
    path, named = _path_setting(config, kwargs, "ssh_identity")
    if path is not None and not os.path.isfile(path):
        raise pytest.UsageError(f"pytest-ktrace: {named}: no such file ({path})")
    return path


def resolve_target(config: pytest.Config, marker_kwargs: Optional[dict[str, Any]] = None) -> TestSettings:
    """Settings of one test: each key from its marker, else the command line, else the ini file."""
    kwargs = marker_kwargs or {}
    values = {key: _setting(config, kwargs, key) for key in _SETTINGS}
    labgrid = _labgrid_choice(config, kwargs, values)
    if labgrid is not None:  # the host is the place's, known once it is acquired
        backend = "ssh"
        values.update(host=None, vm=None, vm_kernel=None, vm_modules=None)
    else:
        backend = _backend(kwargs, values)
    if backend == "ssh" and not values["host"] and labgrid is None:
        raise pytest.UsageError("pytest-ktrace: --ktrace-backend=ssh needs --ktrace-host=[user@]host[:port]")
    vm_kernel = vm_modules = None
    if backend != "fake" and values["vm_modules"] and not values["vm_kernel"]:
        _vm_kernel_settings(config, kwargs, values["vm"])  # raises: modules without their kernel
    if backend == "vm":
        vm_kernel, vm_modules, values["vm"] = _vm_kernel_settings(config, kwargs, values["vm"])
    if backend == "vm" and values["vm"] not in VM_ARCHES:
        raise pytest.UsageError(f"pytest-ktrace: --ktrace-vm must be one of {', '.join(VM_ARCHES)}")
    if values["scope"] not in SCOPES:
        raise pytest.UsageError(f"pytest-ktrace: scope {values['scope']!r} must be 'all' or 'run'")
    target = TargetSpec(
        backend=backend,
        host=values["host"] if backend == "ssh" else None,
        vm=values["vm"] if backend == "vm" else None,
        vm_kernel=vm_kernel,
        vm_modules=vm_modules,
        tracefs=values["tracefs"],
        sudo=bool(values["sudo"]),
        ssh_config=values["ssh_config"],
        accept_new_host_key=bool(values["accept_new_host_key"]),
        snapshot=values["snapshot"] if backend == "fake" else None,
        ssh_identity=_identity_file(config, kwargs) if backend not in ("local", "fake", "vm") else None,
    )
    if backend == "local":
        target = replace(target, sudo=False, ssh_config=None, accept_new_host_key=False)
    try:
        boards = split_hosts(target.host) if target.host and "," in target.host else ()
    except KtraceError as exc:
        raise pytest.UsageError(f"pytest-ktrace: {exc}") from None
    if boards:
        target = replace(target, host=None)
    if values["lost"] not in LOST_POLICIES:
        raise pytest.UsageError(f"pytest-ktrace: lost={values['lost']!r} must be 'fail' or 'warn'")
    if values["keep"] < 1:
        raise pytest.UsageError(f"pytest-ktrace: keep_events={values['keep']!r} must be at least 1")
    if values["kernel_log"] not in KERNEL_LOG_POLICIES:
        raise pytest.UsageError(
            f"pytest-ktrace: kernel_log={values['kernel_log']!r} must be one of {', '.join(KERNEL_LOG_POLICIES)}"
        )
    return TestSettings(
        target,
        values["scope"],
        values["timeout"],
        values["buffer_kb"],
        boards,
        values["lost"],
        stream=bool(values["stream"]),
        keep=values["keep"],
        strict=bool(values["strict"]),
        kernel_log=str(values["kernel_log"]),
        labgrid=labgrid,
        fresh_probes=bool(values["fresh_probes"]),
    )


@dataclass
class RunState:
    """Everything pytest-ktrace keeps for one run (per xdist worker); lives in ``config.stash``."""

    identity: RunIdentity
    backends: dict[TargetSpec, Backend] = field(default_factory=dict)
    failures: dict[TargetSpec, KtraceError] = field(default_factory=dict)
    serial: int = 0
    closers: list[Any] = field(default_factory=list)
    live: set[Any] = field(default_factory=set)  # TraceSessions not yet torn down (Ctrl-C safety net)
    elf_copies: dict[str, tuple[str, Path]] = field(default_factory=dict)  # remote ELF files fetched this run
    target_snapshots: set[Path] = field(default_factory=set)  # kernel snapshots written beside cassettes this run
    owned: dict[int, tuple[Backend, float]] = field(default_factory=dict)  # targets holding our owner record
    parked: dict[int, ParkedProbes] = field(default_factory=dict)  # the run's instance on each target (by backend)

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def parked_on(self, backend: Backend) -> ParkedProbes:
        """The run's instance on ``backend``'s target, where tests park their probes."""
        from ._warm import ParkedProbes

        parked = self.parked.get(id(backend))
        if parked is None:
            parked = self.parked[id(backend)] = ParkedProbes(
                backend, lambda: self.identity.instance(self.next_serial())
            )
        return parked

    def retire_parked(self) -> list[str]:
        """Every parked probe disabled and removed, each run instance removed; what failed, by owning test."""
        failures: list[str] = []
        for parked in self.parked.values():
            try:
                failures.extend(f"{parked.backend.name}: {failure}" for failure in parked.close())
            except Exception as exc:  # a backend's own failure: still retire the others
                failures.append(f"{parked.backend.name}: {exc}")
        self.parked.clear()
        return failures

    def backend_for(self, config: pytest.Config, target: TargetSpec) -> Backend:
        """The one backend of ``target`` for this run, made by the hook and cleaned of our stale leftovers."""
        if target in self.failures:
            raise self.failures[target]
        if target not in self.backends:
            try:
                backend = config.hook.pytest_ktrace_make_backend(config=config, target=target)
                if backend is None:
                    raise pytest.UsageError(
                        f"pytest-ktrace: no backend called {target.backend!r} (built in: local, ssh, vm, fake)"
                    )
                backend.describe()
                removed = clean_stale(backend, self.identity, older_than_s=clean_after(config))
                unrecorded = self._claim(backend)
            except KtraceError as exc:
                self.failures[target] = exc
                raise
            if unrecorded:
                warnings.warn(
                    pytest.PytestWarning(
                        f"pytest-ktrace could not write its owner record on {target.label} ({unrecorded}): if this "
                        "run is killed, its probes there are left for you to remove"
                    ),
                    stacklevel=2,
                )
            if removed:
                config.issue_config_time_warning(
                    pytest.PytestWarning(
                        f"pytest-ktrace removed leftovers of an earlier crashed run on {target.label}: "
                        + ", ".join(removed)
                    ),
                    stacklevel=2,
                )
            self.backends[target] = backend
            config.hook.pytest_ktrace_target_ready(config=config, target=target, backend=backend)
        return self.backends[target]

    def _claim(self, backend: Backend) -> str:
        """Write this run's owner record on the target (a replaying fake has nothing to own); the problem, if
        the record could not be written."""
        from . import _owners as owners
        from .recording._player import Replaying

        if isinstance(backend, Replaying):
            return ""
        try:
            owners.claim(backend, self.identity)
        except KtraceError as exc:
            return str(exc)
        self.owned[id(backend)] = (backend, time.monotonic())
        return ""

    def keep_alive(self, backend: Backend) -> None:
        """Refresh this run's heartbeat on ``backend``'s target, at most once every owners.HEARTBEAT_S."""
        from . import _owners as owners

        owned = self.owned.get(id(backend))
        if owned is None or time.monotonic() - owned[1] < owners.HEARTBEAT_S:
            return
        with contextlib.suppress(KtraceError):
            owners.heartbeat(backend, self.identity)
        self.owned[id(backend)] = (backend, time.monotonic())

    def close(self) -> None:
        """End of the run: undo tests that never reached their teardown (Ctrl-C), then release targets."""
        for session in list(self.live):
            try:
                failures = list(session.teardown().failures)
            except Exception as exc:
                failures = [str(exc)]
            if failures:
                print(f"pytest-ktrace: could not clean up {session.instance}: {failures}", file=sys.stderr)
        self.live.clear()
        for failure in self.retire_parked():
            print(f"pytest-ktrace: could not retire a parked probe on {failure}", file=sys.stderr)
        from . import _owners as owners

        for backend, _ in self.owned.values():
            with contextlib.suppress(Exception):
                owners.release(backend, self.identity)
        self.owned.clear()
        for backend in self.backends.values():
            with contextlib.suppress(Exception):
                backend.close()
        for _, copy in self.elf_copies.values():
            copy.unlink(missing_ok=True)
        self.elf_copies.clear()
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                closer()
        self.backends.clear()
        self.closers.clear()


def clean_after(config: pytest.Config) -> float:
    """``--ktrace-clean-after`` > ini ``ktrace_clean_after`` > 6h, in seconds."""
    from ._owners import parse_duration

    raw = config.getoption("ktrace_clean_after", default=None) or config.getini("ktrace_clean_after") or ""
    if not raw:
        return DEFAULT_CLEAN_AFTER_S
    try:
        return parse_duration(str(raw))
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-ktrace: --ktrace-clean-after: {exc}") from None


def state_key() -> pytest.StashKey[RunState]:
    return _STATE


_STATE: pytest.StashKey[RunState] = pytest.StashKey[RunState]()


def clean_stale(backend: Backend, me: RunIdentity, *, older_than_s: float = DEFAULT_CLEAN_AFTER_S) -> list[str]:
    """Remove what earlier runs provably left behind (see :mod:`pytest_ktrace._owners`): groups whose owner record
    says the run is dead (a dead pid of this machine, a heartbeat older than ``older_than_s``, a reboot since),
    and names without a record that this machine's dead runs made. Anything else is left alone."""
    from . import _owners as owners
    from .recording._player import Replaying

    found = owners.find_leftovers(backend, older_than_s, me=me, records=not isinstance(backend, Replaying))
    removed = owners.remove_leftovers(backend, found) if found.stale else []
    # runs of this machine without a record (none could be written): their names alone prove them dead
    instances = [name for name in found.unowned_instances if stale_owner(name, me) is not None]
    removals = [
        Write(control, f"-:{name}")
        for control, name in found.unowned_events
        if stale_owner(name.split("/", 1)[0], me) is not None
    ]
    if not instances and not removals:
        return removed
    # Dropping an instance disables what it enabled, so the events can then be removed without EBUSY.
    results = backend.apply([*(Rmdir(f"instances/{name}") for name in instances), *removals])
    return removed + [
        (f"instance {r.op.path}" if isinstance(r.op, Rmdir) else f"event {r.op.data[2:]}")
        for r in results
        if r.ok and isinstance(r.op, (Rmdir, Write))
    ]
