"""Target snapshots: snapshots of this machine and of a booted arm64 guest, storage, shipped files, the CLI."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from pytest_ktrace._errors import KtraceError, MissingTool, TracefsUnavailable
from pytest_ktrace.backends._base import Read, Write
from pytest_ktrace.backends._local import LocalBackend
from pytest_ktrace.backends.ssh._backend import SshBackend
from pytest_ktrace.guests import RunningGuest, boot, qemu_available
from pytest_ktrace.snapshots._snapshot import (
    KernelSnapshot,
    load_snapshot,
    parse_available_events,
    parse_blacklist,
    parse_dynamic_events,
    parse_kallsyms,
    shipped_snapshots,
    snapshot,
)

SHIPPED = ("debian-6.1-arm64", "debian-6.1-x86_64", "debian-6.12-arm64", "debian-6.12-x86_64")
CLI = Path(sys.executable).with_name("pytest-ktrace")


def _kallsyms_text_names() -> tuple[set[str], set[str]]:
    """An independent reading of /proc/kallsyms: (text names, names seen more than once)."""
    seen: set[str] = set()
    dups: set[str] = set()
    for match in re.finditer(r"^\S+ [Tt] (\S+)", Path("/proc/kallsyms").read_text(), re.M):
        (dups if match.group(1) in seen else seen).add(match.group(1))
    return seen, dups


@pytest.fixture(scope="module")
def local() -> LocalBackend:
    backend = LocalBackend()
    try:
        backend.describe()
    except TracefsUnavailable as exc:
        pytest.skip(f"no usable local tracefs: {exc}")
    if os.geteuid() != 0:
        pytest.skip("reading /proc/kallsyms symbol addresses and every format file needs root")
    return backend


@pytest.fixture(scope="module")
def local_snapshot(local: LocalBackend) -> KernelSnapshot:
    return snapshot(local, "here")


# --- the local snapshot --------------------------------------------------------------------------------------


def test_local_snapshot_matches_describe(local: LocalBackend, local_snapshot: KernelSnapshot) -> None:
    info = local.describe()
    assert local_snapshot.name == "here"
    assert local_snapshot.release == info.release == os.uname().release
    assert local_snapshot.arch == info.arch == os.uname().machine
    assert local_snapshot.features == info.features
    assert local_snapshot.readme == Path(info.tracefs, "README").read_text()
    assert local_snapshot.source == "local"
    assert local_snapshot.created.endswith("+00:00")


def test_local_snapshot_symbols(local_snapshot: KernelSnapshot) -> None:
    names, dups = _kallsyms_text_names()
    # a module loaded or unloaded in between could change a few; this machine's set is otherwise stable
    assert len(local_snapshot.symbols ^ names) < 50
    assert local_snapshot.duplicate_symbols <= local_snapshot.symbols
    assert len(local_snapshot.duplicate_symbols ^ dups) < 10
    for name in ("vfs_read", "__setup_irq", "do_sys_openat2", "schedule"):
        assert local_snapshot.has_symbol(name), name
    assert not local_snapshot.has_symbol("no_such_function_ktrace")
    assert not any(s.startswith("[") or s.endswith("]") for s in local_snapshot.symbols)
    # data symbols (types d/D/b/B/r/R) are not text
    data = set(re.findall(r"^\S+ [dDbBrR] (\S+)$", Path("/proc/kallsyms").read_text(), re.M)) - names
    assert data and not any(local_snapshot.has_symbol(name) for name in data)


def test_local_snapshot_events(local: LocalBackend, local_snapshot: KernelSnapshot) -> None:
    tracefs = Path(local.describe().tracefs)
    available = parse_available_events((tracefs / "available_events").read_text())

    def kernel_own(events: object) -> set[str]:
        # probes of other pytest-ktrace runs (xdist workers) come and go while the snapshot is taken
        return {event for event in events if not event.startswith("ktrace_")}  # type: ignore[attr-defined]

    assert kernel_own(local_snapshot.events) == kernel_own(available)
    switch = (tracefs / "events/sched/sched_switch/format").read_text()
    assert local_snapshot.events["sched/sched_switch"] == switch
    assert "field:char prev_comm[16]" in switch
    assert local_snapshot.has_event("sched:sched_switch")
    for event in ("syscalls/sys_enter_openat", "irq/irq_handler_entry"):
        if (tracefs / "events" / event / "format").exists():
            assert local_snapshot.events[event] == (tracefs / "events" / event / "format").read_text()


def test_local_blacklist_unknown_without_debugfs(local_snapshot: KernelSnapshot) -> None:
    readable = os.access("/sys/kernel/debug/kprobes/blacklist", os.R_OK)
    assert (local_snapshot.blacklist is not None) == readable
    if local_snapshot.blacklist is None:
        assert not local_snapshot.is_blacklisted("do_int3")
    # a snapshot never mounts debugfs on its own
    assert os.listdir("/sys/kernel/debug") == [] or readable


def test_snapshot_costs_few_round_trips(local: LocalBackend) -> None:
    backend = LocalBackend()
    backend.describe()
    before = backend.round_trips
    snapshot(backend, "rt")
    assert backend.round_trips - before <= 2  # one run() (+ after reads) and one apply() of every format


# --- storage --------------------------------------------------------------------------------------------------


def test_save_load_round_trip(local_snapshot: KernelSnapshot, tmp_path: Path) -> None:
    path = tmp_path / "here.json.gz"
    local_snapshot.save(path)
    loaded = KernelSnapshot.load(path)
    assert loaded == local_snapshot
    assert hash(loaded) == hash(local_snapshot)
    assert loaded.events["sched/sched_switch"] == local_snapshot.events["sched/sched_switch"]
    # deterministic: the same snapshot always writes the same bytes, and it is gzip-compressed sorted JSON
    again = tmp_path / "again.json.gz"
    loaded.save(again)
    assert again.read_bytes() == path.read_bytes()
    data = json.loads(gzip.decompress(path.read_bytes()))
    assert data["format"] == 2
    # the text symbols are stored once, in address order, with the distances between their starts
    assert data["symbols"] is None and loaded.text is not None
    assert list(loaded.text.starts) == sorted(loaded.text.starts)
    assert loaded.text.starts == local_snapshot.text.starts  # type: ignore[union-attr]
    assert list(data["events"]) == sorted(data["events"])
    assert path.stat().st_size < 2_000_000
    assert not list(tmp_path.glob(".*.tmp"))


def test_snapshot_coerces_and_is_immutable() -> None:
    p = KernelSnapshot(
        name="tiny",
        release="6.1.0",
        arch="aarch64",
        features={"kprobes"},  # type: ignore[arg-type]
        readme="",
        symbols={"a", "b"},  # type: ignore[arg-type]
        duplicate_symbols=set(),  # type: ignore[arg-type]
        blacklist=["b"],  # type: ignore[arg-type]
        events={"x/y": "name: y\n"},
    )
    assert isinstance(p.symbols, frozenset) and isinstance(p.blacklist, frozenset)
    assert p.is_blacklisted("b") and not p.is_blacklisted("a")
    with pytest.raises(TypeError):
        p.events["x/z"] = ""  # type: ignore[index]
    assert KernelSnapshot.from_json(p.to_json()) == p


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json.gz"
    junk.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(KtraceError, match="not a snapshot"):
        KernelSnapshot.load(junk)
    old = tmp_path / "old.json.gz"
    old.write_bytes(gzip.compress(json.dumps({"format": 99}).encode()))
    with pytest.raises(KtraceError, match="format 99"):
        KernelSnapshot.load(old)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"format": 1, "name": "x"}))
    with pytest.raises(KtraceError, match="not a valid snapshot"):
        KernelSnapshot.load(partial)
    with pytest.raises(KtraceError, match="cannot read"):
        KernelSnapshot.load(tmp_path / "absent.json.gz")


# --- parsers --------------------------------------------------------------------------------------------------


def test_parsers() -> None:
    kallsyms = (
        "ffffffff81000000 T _stext\n"
        "ffffffff81000010 t dup\n"
        "ffffffff81000020 t dup\n"
        "ffffffff81000030 D some_data\n"
        "ffffffffc0000000 t virtnet_poll\t[virtio_net]\n"
        "ffffffffc0000010 T dup\t[virtio_net]\n"
    )
    symbols, dups = parse_kallsyms(kallsyms)
    assert symbols == {"_stext", "dup", "virtnet_poll"}
    assert dups == {"dup"}
    assert parse_blacklist("0xffff0001-0xffff0010\tdo_int3\n0xc0-0xd0\tmod_fn\t[mod]\n\n") == {"do_int3", "mod_fn"}
    assert parse_available_events("sched:sched_switch\nkprobes:p_x\n\nbad\n") == ["kprobes/p_x", "sched/sched_switch"]
    assert parse_dynamic_events("p:kprobes/p_x vfs_read\nr:grp/ret do_x $retval\np:ungrouped foo\n") == {
        "kprobes/p_x",
        "grp/ret",
    }


# --- shipped snapshots -----------------------------------------------------------------------------------------


def test_shipped_snapshots_are_shipped() -> None:
    shipped = shipped_snapshots()
    assert tuple(shipped) == SHIPPED
    for name, path in shipped.items():
        assert path.name == f"{name}.json.gz"
        assert path.stat().st_size < 1_200_000, (name, path.stat().st_size)


@pytest.mark.parametrize("name", SHIPPED)
def test_builtin_snapshot_loads(name: str) -> None:
    p = load_snapshot(name)
    assert p.name == name
    assert p.arch == {"arm64": "aarch64"}.get(name.rsplit("-", 1)[1], name.rsplit("-", 1)[1])
    assert p.has_symbol("__setup_irq") and p.has_symbol("vfs_read")
    assert "sched/sched_switch" in p.events and "prev_comm" in p.events["sched/sched_switch"]
    assert "tracing mini-HOWTO" in p.readme
    assert {"uprobes", "instances", "error_log"} <= p.features
    series = name.split("-")[1]
    assert p.release.startswith(f"{series}.") and p.version == tuple(map(int, series.split(".")))
    assert "kprobes" in p.features and "argN" in p.features
    assert p.blacklist and len(p.blacklist) > 100
    assert p.source.startswith("ssh ktrace-vm-")
    # captured with the kernel's text layout and its answers (scripts/capture-snapshots)
    assert p.text is not None and p.text.span_of_name("__setup_irq") is not None
    assert p.answers == {"filter_trailing_operator": "rejected"}


def test_debian_blacklists_hold_the_arch_entry_code() -> None:
    x86 = load_snapshot("debian-6.1-x86_64")
    arm = load_snapshot("debian-6.1-arm64")
    assert x86.is_blacklisted("do_int3") and x86.is_blacklisted("asm_exc_divide_error")
    assert arm.is_blacklisted("kprobe_breakpoint_handler") or any("el1" in s for s in arm.blacklist or ())
    assert arm.has_symbol("el0_svc") and not x86.has_symbol("el0_svc")


def test_load_snapshot_by_path(tmp_path: Path) -> None:
    copy = tmp_path / "mine.json.gz"
    copy.write_bytes(shipped_snapshots()["debian-6.1-arm64"].read_bytes())
    assert load_snapshot(str(copy)) == load_snapshot("debian-6.1-arm64")


def test_load_snapshot_unknown_name_lists_shipped() -> None:
    with pytest.raises(KtraceError) as info:
        load_snapshot("debian-9-sparc")
    message = str(info.value)
    assert "debian-9-sparc" in message
    for name in SHIPPED:
        assert name in message


# --- the CLI --------------------------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert CLI.exists(), f"{CLI} is not installed (pip install -e .)"
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def test_cli_snapshot_local(local: LocalBackend, tmp_path: Path) -> None:
    out = tmp_path / "x.json.gz"
    proc = _cli("snapshot", "--name", "x", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "symbols" in proc.stdout
    p = KernelSnapshot.load(out)
    assert p.name == "x" and p.release == os.uname().release and p.has_symbol("vfs_read")
    # default output: NAME.json.gz in the working directory
    proc = _cli("snapshot", "--name", "dflt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert KernelSnapshot.load(tmp_path / "dflt.json.gz").name == "dflt"


def test_cli_snapshots_lists_the_shipped_ones(tmp_path: Path) -> None:
    proc = _cli("snapshots", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "RELEASE", "ARCH", "SYMBOLS", "EVENTS", "BLACKLIST"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert tuple(sorted(rows)) == SHIPPED
    assert rows["debian-6.1-arm64"][2] == "aarch64"
    assert int(rows["debian-6.1-x86_64"][3]) > 10_000


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("snapshots", "debian-9-sparc"), "unknown snapshot debian-9-sparc"),
        (("snapshot", "--name", "x", "--sudo"), "need --host"),
        (("snapshot", "--name", "x", "-o", "/nonexistent/dir/x.json.gz"), "cannot write snapshot"),
    ],
)
def test_cli_errors_are_one_line(args: tuple[str, ...], expected: str, local: LocalBackend, tmp_path: Path) -> None:
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("pytest-ktrace: error: ") and expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_usage_errors(tmp_path: Path) -> None:
    proc = _cli("snapshot", "--vm", "sparc", "--name", "x", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli(cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# --- a real arm64 guest over SSH ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def arm64_guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGuest]:
    reason = qemu_available("arm64")
    if reason is not None:
        pytest.skip(reason)
    try:
        guest = boot("arm64", workdir=tmp_path_factory.mktemp("snapshot-vm-arm64"))
    except MissingTool as missing:
        pytest.skip(f"cannot build/boot the arm64 guest: {missing}")
    try:
        yield guest
    finally:
        guest.shutdown()


@pytest.fixture
def arm64(arm64_guest: RunningGuest) -> Iterator[SshBackend]:
    with SshBackend(arm64_guest.host_alias, ssh_config=arm64_guest.ssh_config_path) as backend:
        yield backend


def _guest_cat(backend: SshBackend, path: str) -> str:
    result = backend.run(["cat", path])
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.guest
def test_arm64_guest_snapshot(arm64: SshBackend, arm64_guest: RunningGuest) -> None:
    info = arm64.describe()
    # a probe someone left defined is target state, not kernel: the snapshot leaves it out
    define = arm64.apply([Write("kprobe_events", "p:ktrace_prof/probe1 vfs_read\n")])
    assert define[0].ok, define[0].error
    try:
        before = arm64.round_trips
        p = snapshot(arm64, "arm64-now")
        assert arm64.round_trips - before == 2
    finally:
        arm64.apply([Write("kprobe_events", "-:ktrace_prof/probe1\n")])
    assert "ktrace_prof/probe1" not in p.events
    assert p.release == info.release == arm64_guest.image.kernel_release
    assert p.arch == "aarch64" and p.features == info.features and "kprobes" in p.features
    assert p.source == f"ssh {arm64_guest.host_alias}"

    kallsyms = _guest_cat(arm64, "/proc/kallsyms")
    assert (p.symbols, p.duplicate_symbols) == parse_kallsyms(kallsyms)
    for name in ("__setup_irq", "vfs_read", "el0_svc", "do_el0_svc"):
        assert p.has_symbol(name), name
    # the kernel's own layout: where __setup_irq starts, as kallsyms lists it
    setup_irq = next(line.split()[0] for line in kallsyms.splitlines() if line.endswith(" __setup_irq"))
    assert p.text is not None and p.text.span_of_name("__setup_irq")[0] == int(setup_irq, 16)  # type: ignore[index]
    assert p.answer("filter_trailing_operator") == "rejected" == p.answers["filter_trailing_operator"]
    assert "virtnet_poll" in p.symbols  # a module's text symbol, without its [virtio_net] suffix

    for event in ("sched/sched_switch", "irq/irq_handler_entry", "syscalls/sys_enter_openat"):
        assert p.events[event] == _guest_cat(arm64, f"/sys/kernel/tracing/events/{event}/format"), event
    assert p.readme == _guest_cat(arm64, "/sys/kernel/tracing/README")

    assert p.blacklist is not None and len(p.blacklist) > 100
    assert p.blacklist == parse_blacklist(_guest_cat(arm64, "/sys/kernel/debug/kprobes/blacklist"))
    assert p.is_blacklisted("do_debug_exception") or p.is_blacklisted("kprobe_breakpoint_handler")
    assert not p.is_blacklisted("vfs_read")


@pytest.mark.guest
def test_arm64_guest_snapshot_mounts_debugfs_only_when_asked(arm64: SshBackend) -> None:
    assert arm64.run(["umount", "/sys/kernel/debug"]).returncode == 0
    try:
        assert arm64.run(["ls", "-A", "/sys/kernel/debug"]).stdout == ""
        assert snapshot(arm64, "no-debugfs").blacklist is None
        with_mount = snapshot(arm64, "debugfs", mount_debugfs=True)
        assert with_mount.blacklist is not None and len(with_mount.blacklist) > 100
        # and it put things back the way they were: unmounted
        assert arm64.run(["ls", "-A", "/sys/kernel/debug"]).stdout == ""
    finally:
        arm64.run(["sh", "-c", "mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug"])
    assert arm64.apply([Read("available_events")])[0].ok
