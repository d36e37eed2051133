"""Names, not offsets, in the probe factories, on this machine: fetch arguments written as C resolved from
``/sys/kernel/btf/vmlinux`` into the line the session would write (this kernel has no kprobes, so nothing is
armed here: tests/guests/test_btf_guests.py and examples/test_setup_irq.py arm them in the Debian guests), the
return type of kretprobes, the BTF of remote targets cached on disk, modules, the record/replay of resolutions,
and the errors, which name what would have been valid.

A stub target (:class:`Files`) serves synthetic BTF (tests/btf/test_btf.py's writer) for what this kernel does not
have: modules, duplicate static functions, a kernel without BTF, a "remote" target whose files cross a wire.
"""

from __future__ import annotations

import errno
import hashlib
import json
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from test_btf import BtfWriter

from pytest_ktrace import UnsupportedFetchArg
from pytest_ktrace._identity import RunIdentity
from pytest_ktrace._session import TraceSession
from pytest_ktrace.backends._base import RunResult, TargetInfo
from pytest_ktrace.backends._local import LocalBackend
from pytest_ktrace.btf import (
    BadMemberAccess,
    BtfTypes,
    BtfUnavailable,
    FetchargError,
    FetchargTypeError,
    FetchargUnsupported,
    Kind,
    UnknownFunction,
    UnknownMember,
    UnknownParameter,
)
from pytest_ktrace.btf._names import (
    CACHE_ENV,
    KALLSYMS,
    NOTES,
    VMLINUX,
    btf_cache_dir,
    build_id,
    forget_module,
    is_btf_expression,
    kernel_btf,
)
from pytest_ktrace.fake._backend import FakeBackend
from pytest_ktrace.recording._cassette import Cassette, StaleCassette
from pytest_ktrace.recording._player import Player
from pytest_ktrace.recording._recorder import RecordingBackend
from pytest_ktrace.snapshots._snapshot import load_snapshot

pytest_plugins = ["pytester"]

HERE_VMLINUX = Path(VMLINUX)
needs_btf = pytest.mark.skipif(not HERE_VMLINUX.exists(), reason="this kernel has no /sys/kernel/btf/vmlinux")


@pytest.fixture(scope="module")
def vmlinux() -> BtfTypes:
    if not HERE_VMLINUX.exists():
        pytest.skip("this kernel has no /sys/kernel/btf/vmlinux")
    return BtfTypes.from_file(HERE_VMLINUX)


def session_on(backend: Any) -> TraceSession:
    return TraceSession(backend, RunIdentity.current(), 1)


def args_of(view: Any) -> dict[str, str]:
    return dict(view.spec.fetchargs)


class Local(LocalBackend):
    """This machine with some tracefs features taken away (an older kernel's view)."""

    def __init__(self, *, without: Sequence[str] = ()) -> None:
        super().__init__()
        self.without = frozenset(without)

    def describe(self) -> TargetInfo:
        info = super().describe()
        return TargetInfo(info.name, info.backend, info.release, info.arch, info.tracefs, info.features - self.without)


class Files:
    """A target that is nothing but files (and a ``/proc/kallsyms`` that ``grep`` searches). ``local=False`` makes
    it a remote target as far as the BTF cache is concerned. Never applies tracefs operations: nothing is armed."""

    def __init__(
        self,
        files: dict[str, bytes],
        *,
        local: bool = True,
        release: str = "6.1.0-stub",
        arch: str = "x86_64",
        features: Sequence[str] = ("argN", "kprobes"),
        kallsyms: str = "",
        tools: bool = True,
    ) -> None:
        self.files = dict(files)
        self.files_are_local = local
        self.kallsyms = kallsyms
        self.tools = tools
        self.info = TargetInfo("stub", "stub", release, arch, "/sys/kernel/tracing", frozenset(features))
        self.fetches: list[str] = []
        self.runs: list[list[str]] = []

    name = "stub"
    round_trips = 0

    def describe(self) -> TargetInfo:
        return self.info

    def fetch_file(self, path: str) -> bytes:
        self.fetches.append(path)
        if path not in self.files:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return self.files[path]

    def run(self, argv: Sequence[str], **_: Any) -> RunResult:
        argv = list(argv)
        self.runs.append(argv)
        if not self.tools:
            return RunResult(tuple(argv), 127, "", f"sh: {argv[0]}: not found\n", 0, 0.0)
        if argv[:4] == ["grep", "-w", "-F", "-e"] and argv[5] == KALLSYMS:
            lines = [line for line in self.kallsyms.splitlines() if argv[4] in line.replace("\t", " ").split()]
            return RunResult(tuple(argv), 0 if lines else 1, "".join(f"{line}\n" for line in lines), "", 0, 0.0)
        if argv[0] == "sha256sum" and argv[1] in self.files:
            return RunResult(
                tuple(argv), 0, f"{hashlib.sha256(self.files[argv[1]]).hexdigest()}  {argv[1]}\n", "", 0, 0
            )
        return RunResult(tuple(argv), 1, "", f"{argv[0]}: cannot do that here\n", 0, 0.0)

    def apply(self, ops: Any, **_: Any) -> Any:
        raise AssertionError(f"a stub target has no tracefs: {ops}")

    def defer(self, ops: Any) -> None:
        raise AssertionError("nothing to defer")

    def close(self) -> None:
        pass


def synthetic_kernel() -> tuple[bytes, bytes]:
    """(vmlinux BTF, split BTF of module ``mymod``): vmlinux has ``dev_open(struct dev *d, unsigned int flags)``
    and two static ``dup`` functions with different prototypes; mymod has ``mod_xmit(struct mod_dev *md)``."""
    w = BtfWriter()
    i32 = w.int_("int", 4, signed=True)
    u32 = w.int_("unsigned int", 4)
    u64 = w.int_("long long unsigned int", 8)
    char = w.int_("char", 1)
    name = w.ptr(w.modifier(Kind.CONST, char))
    dev = w.struct("dev", 24, [("id", i32, 0, 0), ("flags", u32, 32, 0), ("name", name, 64, 0), ("bytes", u64, 128, 0)])
    dev_ptr = w.ptr(dev)
    w.func("dev_open", w.func_proto(i32, [("d", dev_ptr), ("flags", u32)]))
    w.func("dup", w.func_proto(i32, [("a", i32), ("d", dev_ptr)]), linkage=0)
    w.func("dup", w.func_proto(i32, [("d", dev_ptr)]), linkage=0)
    base_blob = w.blob()
    base = BtfTypes.load(base_blob, name="vmlinux")
    m = BtfWriter(base)
    base_dev_ptr = base.ids_named("dev")[0]
    mod_dev = m.struct("mod_dev", 16, [("queue", i32, 0, 0), ("dev", m.ptr(base_dev_ptr), 64, 0)])
    m.func("mod_xmit", m.func_proto(i32, [("md", m.ptr(mod_dev))]))
    m.func("mod_close", m.func_proto(0, [("md", m.ptr(mod_dev))]))
    return base_blob, m.blob()


def notes_with_build_id(build: bytes, *, big_endian: bool = False) -> bytes:
    """ELF notes as /sys/kernel/notes has them: a Xen-ish note first, then NT_GNU_BUILD_ID."""
    e = ">" if big_endian else "<"
    other = struct.pack(f"{e}III", 4, 4, 6) + b"Xen\0" + b"\x01\x02\x03\x04"
    return other + struct.pack(f"{e}III", 4, len(build), 3) + b"GNU\0" + build


# ------------------------------------------------------------------------------------------------------------
# which fetch arguments are names
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("irq", True),
        ("desc->irq_data.irq", True),
        ("new->name:string", True),
        ("_private", True),
        ("$retval->name:string", True),
        ("$arg2->irq_data.irq", True),
        ("$arg2 .x", True),
        ("$arg1:u32", False),
        ("$arg1", False),
        ("$retval", False),
        ("$retval:s32", False),
        ("$comm", False),
        ("$stack0", False),
        ("%x0:u32", False),
        ("+0(+80($arg3)):string", False),
        ("-8(%sp)", False),
        ("@jiffies", False),
        ("\\1", False),
        ("12", False),
    ],
)
def test_what_is_a_name(text: str, named: bool) -> None:
    assert is_btf_expression(text) is named


# ------------------------------------------------------------------------------------------------------------
# this machine's BTF, through the ktrace fixture (nothing is armed: the kernel here has no kprobes)
# ------------------------------------------------------------------------------------------------------------


@needs_btf
def test_names_become_the_offsets_of_this_kernel(ktrace, vmlinux: BtfTypes) -> None:
    entry = ktrace.kprobe(
        "__setup_irq", irq="irq", name="new->name:string", depth="desc->depth", inner="desc->irq_data.irq"
    )
    irq_data = vmlinux.locate("irq_desc", "irq_data.irq").byte_offset
    depth = vmlinux.locate("irq_desc", "depth").byte_offset
    name = vmlinux.locate("irqaction", "name").byte_offset
    assert vmlinux.func("__setup_irq").param_names == ("irq", "desc", "new")
    expected = f"__setup_irq irq=$arg1:u32 name=+0(+{name}($arg3)):string depth=+{depth}($arg2):u32"
    line = entry.spec.render()
    assert line.endswith(f"{expected} inner=+{irq_data}($arg2):u32"), line
    assert line.startswith(f"p:{ktrace.identity.group}/p___setup_irq_")
    # the struct layout of this 6.18 kernel, as pahole prints it (irq_data.irq at 92, irqaction.name at 80)
    assert (irq_data, name) == (92, 80) or ktrace.target.release[:4] != "6.18"


@needs_btf
def test_return_values_are_typed_from_btf(ktrace, vmlinux: BtfTypes) -> None:
    assert args_of(ktrace.kretprobe("__setup_irq")) == {"ret": "$retval:s32"}  # int
    assert args_of(ktrace.kretprobe("__setup_irq", ret="$retval")) == {"ret": "$retval:s32"}
    assert args_of(ktrace.kretprobe("vfs_read")) == {"ret": "$retval:s64"}  # ssize_t
    assert args_of(ktrace.kretprobe("capable")) == {"ret": "$retval:u8"}  # bool
    assert args_of(ktrace.kretprobe("filp_open")) == {"ret": "$retval:x64"}  # struct file *
    assert args_of(ktrace.kretprobe("kstrdup")) == {"ret": "$retval:x64"}  # char *: the address
    assert vmlinux.func("kfree").returns_void
    void = ktrace.kretprobe("kfree")
    assert args_of(void) == {}  # nothing to record
    with pytest.raises(TypeError, match="return assertions need a kretprobe/uretprobe recording"):
        void.assert_returned(0)
    # given types and other fields stay as written
    assert args_of(ktrace.kretprobe("vfs_read", ret="$retval:x32")) == {"ret": "$retval:x32"}
    assert args_of(ktrace.kretprobe("vfs_read", rv="$retval")) == {"rv": "$retval:s64"}
    assert args_of(ktrace.kretprobe("vfs_read", ret="$comm")) == {"ret": "$comm"}
    assert args_of(ktrace.kretprobe("vfs_read", who="$comm")) == {"ret": "$retval:s64", "who": "$comm"}
    # a member of what the function returns: the ret field is recorded beside it
    f_flags = vmlinux.locate("file", "f_flags").byte_offset
    opened = ktrace.kretprobe("filp_open", flags="$retval->f_flags")
    assert args_of(opened) == {"ret": "$retval:x64", "flags": f"+{f_flags}($retval):u32"}
    assert opened.spec.return_field == "ret"
    # an entry probe's $retval is the kernel's to refuse (examples/test_setup_irq.py checks its error_log)
    assert args_of(ktrace.kprobe("__setup_irq", bad="$retval")) == {"bad": "$retval"}


@needs_btf
def test_raw_fetchargs_are_unchanged(ktrace) -> None:
    raw = {"irq": "$arg1:u32", "name": "+0(+80($arg3)):string", "di": "%di", "j": "@jiffies", "who": "$comm"}
    assert args_of(ktrace.kprobe("__setup_irq", **raw)) == raw
    assert args_of(ktrace.kprobe("__setup_irq", "$arg1:u32")) == {"arg1": "$arg1:u32"}
    mixed = ktrace.kprobe("__setup_irq", "irq", name="new->name:string", raw="$arg2:x64")
    assert args_of(mixed)["arg1"] == "$arg1:u32" and args_of(mixed)["raw"] == "$arg2:x64"


@needs_btf
def test_entry_arguments_on_return_probes_where_the_kernel_keeps_them(ktrace) -> None:
    assert "argN_on_return" in ktrace.target.features  # Linux 6.9+
    assert args_of(ktrace.kretprobe("__setup_irq", irq="irq")) == {"ret": "$retval:s32", "irq": "$arg1:u32"}
    older = session_on(Local(without=["argN_on_return"]))
    with pytest.raises(UnsupportedFetchArg, match=r"irq='irq' reads a parameter of __setup_irq\(\) \(\$arg1:u32\)"):
        older.kretprobe("__setup_irq", irq="irq")
    with pytest.raises(UnsupportedFetchArg, match=r"ktrace.kprobe\('__setup_irq', irq='irq'\)"):
        older.kretprobe("__setup_irq", irq="irq")


@needs_btf
def test_kernels_without_argN_get_the_registers() -> None:
    session = session_on(Local(without=["argN", "argN_on_return"]))
    probe = session.kprobe("__setup_irq", irq="irq", name="new->name:string")
    assert args_of(probe) == {"irq": "%di:u32", "name": "+0(+80(%dx)):string"}


@needs_btf
def test_names_at_an_offset_are_refused(ktrace) -> None:
    with pytest.raises(FetchargUnsupported, match=r"vfs_read\+0x10 is 0x10 bytes in"):
        ktrace.kprobe("vfs_read+0x10", file="file")
    assert args_of(ktrace.kprobe("vfs_read+0x10", di="%di")) == {"di": "%di"}  # registers are the way there
    assert args_of(ktrace.kprobe("vfs_read+0", file="file")) == {"file": "$arg1:x64"}


@needs_btf
def test_errors_name_what_is_valid(ktrace) -> None:
    with pytest.raises(UnknownParameter, match=r"x='irqq': __setup_irq\(\) has no parameter 'irqq' \(did you mean"):
        ktrace.kprobe("__setup_irq", x="irqq")
    with pytest.raises(UnknownParameter, match=r"its parameters: irq, desc, new\n  int __setup_irq\(unsigned int"):
        ktrace.kprobe("__setup_irq", x="irqq")
    with pytest.raises(UnknownMember, match=r"x='desc->nope': desc is struct irq_desc, which has no member 'nope'"):
        ktrace.kprobe("__setup_irq", x="desc->nope")
    with pytest.raises(UnknownMember, match=r"is struct irq_data, .*\n  its members: mask, irq, hwirq, "):
        ktrace.kprobe("__setup_irq", x="desc->irq_data.nope")
    with pytest.raises(BadMemberAccess, match=r"use '->' \(desc->depth\)"):
        ktrace.kprobe("__setup_irq", x="desc.depth")
    with pytest.raises(BadMemberAccess, match=r"not a pointer: use '\.' \(desc->irq_data\.irq\)"):
        ktrace.kprobe("__setup_irq", x="desc->irq_data->irq")
    with pytest.raises(FetchargTypeError, match=r"add ':string' to read the text it points to \('new->name:string'\)"):
        ktrace.kprobe("__setup_irq", x="new->name")
    with pytest.raises(UnknownFunction, match=r"no function '__setup_irqq' in the BTF of vmlinux; close matches: "):
        ktrace.kprobe("__setup_irqq", irq="irq")
    with pytest.raises(UnknownFunction, match=r"no loaded module has it either \(/proc/kallsyms\)"):
        ktrace.kprobe("__setup_irqq", irq="irq")
    # a module that is not loaded: the names wait for it (load_module() reads them from its .ko) until arming
    waiting = ktrace.kprobe("nosuchmod:nosuch_fn", x="x")
    assert args_of(waiting) == {"x": "x"}
    with pytest.raises(BtfUnavailable, match=r"module nosuchmod is not loaded on local, so its BTF is not there, and"):
        ktrace.arm()
    # a misspelled function without names is the kernel's to refuse, at arm(), as before
    assert args_of(ktrace.kprobe("__setup_irqq", irq="$arg1")) == {"irq": "$arg1"}


def test_uprobes_and_tracepoints_do_not_touch_btf(probed: Path) -> None:
    backend = LocalBackend()
    session = session_on(backend)
    try:
        entry = session.uprobe(str(probed), "setup_thing", irq="$arg1:s32", name="+0($arg2):string")
        done = session.uretprobe(str(probed), "setup_thing")
        execs = session.tracepoint("sched:sched_process_exec")
        assert args_of(done) == {"ret": "$retval:s32"}  # the old default: user binaries have no kernel BTF
        session.run([str(probed), "setup", "eth2", "30"])
        entry.assert_called_once_with(irq=30, name="eth2")
        done.assert_returned(0)
        execs.assert_any_call(filename=str(probed))
    finally:
        report = session.teardown()
    assert not report.failures
    from pytest_ktrace.btf import _names as names

    assert names._TARGETS.get(backend) is None, "the BTF was loaded for probes that do not need it"


# ------------------------------------------------------------------------------------------------------------
# no BTF: a kernel without it, the fake backend without a cassette
# ------------------------------------------------------------------------------------------------------------


def test_a_kernel_without_btf_says_how_to_do_without() -> None:
    target = Files({})
    session = session_on(target)
    with pytest.raises(BtfUnavailable) as info:
        session.kprobe("__setup_irq", irq="irq")
    message = str(info.value)
    assert message.startswith(
        "cannot resolve 'irq': no BTF for stub: /sys/kernel/btf/vmlinux does not exist (kernel built without "
        "CONFIG_DEBUG_INFO_BTF?)"
    ), message
    assert "name arguments by position: $arg1, $arg2, ... or their registers (on x86_64: %di, %si" in message
    assert "'+OFFSET($arg2):u32'" in message and "pahole -C <struct> vmlinux" in message
    # what worked without BTF still does: raw arguments, the s32 default, an untyped $retval
    assert args_of(session.kretprobe("__setup_irq")) == {"ret": "$retval:s32"}
    assert args_of(session.kretprobe("__setup_irq", ret="$retval")) == {"ret": "$retval"}
    assert args_of(session.kprobe("__setup_irq", irq="$arg1:u32")) == {"irq": "$arg1:u32"}
    assert target.fetches == [VMLINUX], "a target without BTF is asked once"


def test_the_fake_without_a_cassette_has_no_btf() -> None:
    session = session_on(FakeBackend(load_snapshot("debian-6.1-arm64")))
    with pytest.raises(BtfUnavailable) as info:
        session.kprobe("__setup_irq", irq="irq")
    message = str(info.value)
    assert "the fake backend has no BTF" in message and "--ktrace-record" in message
    assert "(on arm64: %x0, %x1" in message
    assert args_of(session.kretprobe("__setup_irq")) == {"ret": "$retval:s32"}
    assert args_of(session.kretprobe("__setup_irq", ret="$retval")) == {"ret": "$retval"}


# ------------------------------------------------------------------------------------------------------------
# modules, duplicate static functions, kallsyms (synthetic BTF)
# ------------------------------------------------------------------------------------------------------------


def module_target(**kwargs: Any) -> Files:
    base, module = synthetic_kernel()
    kallsyms = (
        "ffffffff81000000 T dev_open\n"
        "ffffffff81000100 t dup\nffffffff81000200 t dup\n"
        "ffffffff81000300 T entry_SYSCALL_64\n"
        "ffffffffc0001000 t mod_xmit\t[mymod]\n"
        "ffffffffc0001100 t mod_xmit.cold\t[mymod]\n"
        "ffffffffc0002000 t mod_close\t[mymod]\n"
    )
    return Files({VMLINUX: base, "/sys/kernel/btf/mymod": module}, kallsyms=kallsyms, **kwargs)


def test_module_functions_by_name_and_through_kallsyms() -> None:
    target = module_target()
    session = session_on(target)
    direct = session.kprobe("mymod:mod_xmit", queue="md->queue", dev="md->dev->name:string", id="md->dev->id")
    assert direct.spec.render().endswith(
        " mymod:mod_xmit queue=+0($arg1):s32 dev=+0(+8(+8($arg1))):string id=+0(+8($arg1)):s32"
    )
    assert direct.spec.display == "mod_xmit"
    found = session.kprobe("mod_xmit", queue="md->queue")  # not in vmlinux: kallsyms names the module
    assert args_of(found) == {"queue": "+0($arg1):s32"}
    assert args_of(session.kretprobe("mymod:mod_xmit")) == {"ret": "$retval:s32"}
    assert args_of(session.kretprobe("mod_close")) == {}  # void, found through kallsyms too
    assert target.fetches.count("/sys/kernel/btf/mymod") == 1, "a module's BTF is fetched once"
    assert sum(argv[0] == "grep" for argv in target.runs) == 2, "kallsyms is searched once per function"
    with pytest.raises(UnknownFunction, match=r"no function 'mod_xmitt' in the BTF of module mymod; close .*mod_xmit"):
        session.kprobe("mymod:mod_xmitt", queue="md->queue")
    with pytest.raises(UnknownFunction, match="no function 'dev_open' in the BTF of module mymod"):
        session.kprobe("mymod:dev_open", d="d")  # a vmlinux function is not the module's
    with pytest.raises(UnknownFunction, match=r"entry_SYSCALL_64 is in the kernel's symbol table .* no C prototype"):
        session.kprobe("entry_SYSCALL_64", x="regs")
    with pytest.raises(UnknownMember, match=r"struct mod_dev, which has no member 'queu' \(did you mean 'queue'"):
        session.kprobe("mod_xmit", q="md->queu")


class Arming(Files):
    """A :class:`Files` target that takes the first arming batch, keeps it, and stops the test there."""

    class Stopped(Exception):
        pass

    batches: list[list[Any]]

    def apply(self, ops: Any, **_: Any) -> Any:
        self.batches = [*getattr(self, "batches", []), list(ops)]
        raise self.Stopped()

    def probe_lines(self) -> list[str]:
        return [op.data for batch in self.batches for op in batch if getattr(op, "path", "") == "kprobe_events"]


def module_file(tmp_path: Path, name: str, btf: bytes | None) -> Path:
    """A module file as Kbuild and pahole leave it: an ELF object with ``.modinfo`` (``name=``) and ``.BTF``."""
    import shutil
    import subprocess

    gcc, objcopy = shutil.which("gcc"), shutil.which("objcopy")
    assert gcc and objcopy, "gcc and binutils are part of the dev setup (scripts/bootstrap)"
    source = tmp_path / f"{name}.c"
    source.write_text("int placeholder;\n")
    ko = tmp_path / f"{name}.ko"
    subprocess.run([gcc, "-c", "-o", str(ko), str(source)], check=True, timeout=60)
    (tmp_path / "modinfo").write_bytes(f"license=GPL\0name={name}\0".encode())
    sections = ["--add-section", f".modinfo={tmp_path / 'modinfo'}"]
    if btf is not None:
        (tmp_path / "btf").write_bytes(btf)
        sections += ["--add-section", f".BTF={tmp_path / 'btf'}"]
    subprocess.run([objcopy, *sections, str(ko)], check=True, timeout=60)
    return ko


def test_names_of_a_module_not_loaded_yet_wait_for_arming() -> None:
    base, _ = synthetic_kernel()
    target = Files({VMLINUX: base})  # mymod is not loaded: no /sys/kernel/btf/mymod, no /sys/module/mymod
    session = session_on(target)
    entry = session.kprobe("mymod:mod_xmit", queue="md->queue")
    done = session.kretprobe("mymod:mod_xmit", q="md->queue")
    assert args_of(entry) == {"queue": "md->queue"}, "kept as written until the module's BTF is there"
    assert "/sys/module/mymod/initstate" in target.fetches
    with pytest.raises(BtfUnavailable) as info:
        session.arm()
    message = str(info.value)
    assert message.startswith(f"kprobe 'mymod:mod_xmit' defined at {__file__}:"), message
    assert "module mymod is not loaded on stub, so its BTF is not there, and this test did not load it" in message
    assert "ktrace.load_module('path/to/mymod.ko')" in message
    assert args_of(done) == {"ret": "$retval:s32", "q": "md->queue"}
    with pytest.raises(UnknownFunction, match=r"a function of a module that is not loaded yet is probed as 'module:"):
        session.kprobe("mod_xmit", queue="md->queue")  # the kernel refuses a plain name it cannot find


def test_load_module_reads_the_names_from_the_ko(tmp_path: Path) -> None:
    base, module = synthetic_kernel()
    ko = module_file(tmp_path, "mymod", module)
    target = Arming({VMLINUX: base})
    session = session_on(target)
    entry = session.kprobe("mymod:mod_xmit", queue="md->queue", dev="md->dev->name:string")
    done = session.kretprobe("mymod:mod_xmit")
    where = entry.where(queue=1)  # a view made before the names are resolved sees them too
    asked = list(target.fetches)
    with pytest.raises(Arming.Stopped):
        session.load_module(ko)  # arms the probes (the first batch), then would push and insmod the file
    # registers, not $argN: the kernel takes no $argN on a module function before the module is loaded
    assert args_of(entry) == {"queue": "+0(%di):s32", "dev": "+0(+8(+8(%di))):string"}
    assert where.spec is entry.spec and done.spec.return_field == "ret"
    lines = target.probe_lines()
    assert any(line.endswith(" mymod:mod_xmit queue=+0(%di):s32 dev=+0(+8(+8(%di))):string") for line in lines)
    assert any(line.endswith(" mymod:mod_xmit ret=$retval:s32") for line in lines), lines
    assert target.fetches == asked, "the module is being loaded from that file: the target is not asked again"


def test_a_rebuilt_ko_is_read_again(tmp_path: Path) -> None:
    base_blob, _ = synthetic_kernel()
    base = BtfTypes.load(base_blob, name="vmlinux")
    target = Arming({VMLINUX: base_blob})
    offsets = []
    for build, queue_bits in enumerate((0, 32)):
        m = BtfWriter(base)
        i32 = base.ids_named("int")[0]
        mod_dev = m.struct("mod_dev", 16, [("queue", i32, queue_bits, 0)])
        m.func("mod_xmit", m.func_proto(i32, [("md", m.ptr(mod_dev))]))
        folder = tmp_path / f"build{build}"
        folder.mkdir()
        ko = module_file(folder, "mymod", m.blob())
        session = session_on(target)  # the next test, same target: one KernelBtf
        entry = session.kprobe("mymod:mod_xmit", queue="md->queue")
        with pytest.raises(Arming.Stopped):
            session.load_module(ko)
        offsets.append(args_of(entry)["queue"])
    assert offsets == ["+0(%di):s32", "+4(%di):s32"]


def test_a_module_without_btf_says_how_to_give_it_some(tmp_path: Path) -> None:
    base, _ = synthetic_kernel()
    loaded = Files({VMLINUX: base, "/sys/module/mymod/initstate": b"live\n"})
    with pytest.raises(BtfUnavailable) as info:
        session_on(loaded).kprobe("mymod:mod_xmit", queue="md->queue")
    message = str(info.value)
    assert message.startswith(
        "cannot resolve 'md->queue': no BTF for module mymod: it is loaded on stub but /sys/kernel/btf/mymod does "
        "not exist: it was built without BTF"
    ), message
    assert '"Skipping BTF generation\n  for mymod.ko due to unavailability of vmlinux"' in message
    assert "pahole -J --btf_base vmlinux.btf mymod.ko" in message

    ko = module_file(tmp_path, "mymod", None)
    session = session_on(Arming({VMLINUX: base}))
    session.kprobe("mymod:mod_xmit", queue="md->queue")
    with pytest.raises(BtfUnavailable) as info:
        session.load_module(ko)
    message = str(info.value)
    assert message.startswith(f"kprobe 'mymod:mod_xmit' defined at {__file__}:"), message
    assert f"no BTF for module mymod: {ko} has no .BTF section (built without BTF)" in message
    assert "pahole -J --btf_base" in message


def test_a_ko_written_against_another_kernels_btf_is_refused(tmp_path: Path) -> None:
    base_blob, _ = synthetic_kernel()
    base = BtfTypes.load(base_blob, name="vmlinux")
    m = BtfWriter(base)
    i32 = base.ids_named("int")[0]
    m.func("mod_xmit", m.func_proto(i32, [("md", m.ptr(base.end_id + 500))]))  # a type of a bigger kernel's
    ko = module_file(tmp_path, "mymod", m.blob())
    session = session_on(Arming({VMLINUX: base_blob}))
    session.kprobe("mymod:mod_xmit", queue="md->queue")
    with pytest.raises(BtfUnavailable) as info:
        session.load_module(ko)
    message = str(info.value)
    assert f"no BTF for module mymod: the BTF in {ko} does not fit the BTF of stub's kernel" in message, message
    assert "it was written against another kernel's BTF" in message and "pahole -J --btf_base" in message


def test_a_probe_waits_for_its_own_module_while_another_loads(tmp_path: Path) -> None:
    base, _ = synthetic_kernel()
    other = module_file(tmp_path, "other", None)
    target = Arming({VMLINUX: base})
    session = session_on(target)
    entry = session.kprobe("mymod:mod_xmit", queue="md->queue")
    setup = session.kprobe("dev_open", flags="flags")
    with pytest.raises(Arming.Stopped):
        session.load_module(other)  # mymod's probe cannot fire before mymod loads: it is armed with mymod
    assert [line.split()[1] for line in target.probe_lines()] == ["dev_open"]
    assert args_of(entry) == {"queue": "md->queue"} and args_of(setup) == {"flags": "$arg2:u32"}


def test_a_module_loaded_again_is_read_again(tmp_path: Path) -> None:
    target = Arming(module_target().files)
    for _ in range(2):  # the tests of a run share the target's BTF
        session_on(target).kprobe("mymod:mod_xmit", queue="md->queue")
    assert target.fetches.count("/sys/kernel/btf/mymod") == 1
    with pytest.raises(Arming.Stopped):
        session_on(target).load_module(module_file(tmp_path, "mymod", None))  # (would be refused: it is loaded)
    session_on(target).kprobe("mymod:mod_xmit", queue="md->queue")
    assert target.fetches.count("/sys/kernel/btf/mymod") == 2
    forget_module(RecordingBackend(target, "test_x"), "mymod")  # through a recording too
    session_on(target).kprobe("mymod:mod_xmit", queue="md->queue")
    assert target.fetches.count("/sys/kernel/btf/mymod") == 3


def test_names_read_from_a_ko_are_recorded(tmp_path: Path) -> None:
    base, module = synthetic_kernel()
    target = Arming({VMLINUX: base})
    recorder = RecordingBackend(target, "test_x")
    session = session_on(recorder)
    session.kprobe("mymod:mod_xmit", queue="md->queue")
    assert recorder.cassette.btf == {}, "a module not loaded yet is no answer to record"
    with pytest.raises(Arming.Stopped):
        session.load_module(module_file(tmp_path, "mymod", module))
    assert recorder.cassette.btf == {"mymod:mod_xmit": {"at entry": {"md->queue": "+0($arg1):s32"}}}


def test_load_module_by_name_has_no_file_to_read_names_from() -> None:
    base, _ = synthetic_kernel()
    session = session_on(Arming({VMLINUX: base}))
    session.kprobe("mymod:mod_xmit", queue="md->queue")
    with pytest.raises(BtfUnavailable, match=r"load_module\('mymod'\) loads it by name, so there is no local \.ko"):
        session.load_module("mymod")


def test_without_grep_the_local_modules_are_searched() -> None:
    target = module_target(tools=False)
    session = session_on(target)
    # Files pretends to be local but its modules are not this machine's: the search of /sys/kernel/btf finds none
    with pytest.raises(UnknownFunction, match="no loaded module has it either"):
        session.kprobe("mod_xmit", queue="md->queue")
    assert args_of(session.kprobe("mymod:mod_xmit", queue="md->queue")) == {"queue": "+0($arg1):s32"}


def test_static_functions_of_one_name_must_agree() -> None:
    session = session_on(module_target())
    with pytest.raises(FetchargError) as info:
        session.kprobe("dup", d="d")
    message = str(info.value)
    assert "there are 2 functions called dup with different prototypes" in message
    assert "$arg2:x64  for  int dup(int a, struct dev *d)" in message
    assert "$arg1:x64  for  int dup(struct dev *d)" in message
    assert args_of(session.kretprobe("dup")) == {"ret": "$retval:s32"}  # both return int: no doubt there


# ------------------------------------------------------------------------------------------------------------
# remote targets: fetched once, cached on disk by build id
# ------------------------------------------------------------------------------------------------------------


def test_build_id_from_kernel_notes() -> None:
    build = bytes(range(20))
    assert build_id(notes_with_build_id(build)) == build.hex()
    assert build_id(notes_with_build_id(build, big_endian=True)) == build.hex()
    assert build_id(b"") is None and build_id(b"\xff" * 64) is None
    assert build_id(notes_with_build_id(b"")[:30]) is None
    if Path(NOTES).exists():
        found = build_id(Path(NOTES).read_bytes())
        assert found is not None and len(found) == 40, found


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert btf_cache_dir() == tmp_path / "xdg" / "pytest-ktrace" / "btf"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert btf_cache_dir() == tmp_path / "mine"


def remote_target(**files: bytes) -> Files:
    base, module = synthetic_kernel()
    contents = {VMLINUX: base, "/sys/kernel/btf/mymod": module, **{k.replace("_", "/"): v for k, v in files.items()}}
    return Files(contents, local=False, release="6.1.0-57-amd64")


def test_remote_btf_is_fetched_once_and_cached_by_build_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "btf"))
    build = bytes.fromhex("6a2b4ac77585b8cf102cba771300e573c8489b69")
    first = Files({**remote_target().files, NOTES: notes_with_build_id(build)}, local=False, release="6.1.0-57-amd64")
    session = session_on(first)
    line = session.kprobe("dev_open", name="d->name:string", flags="flags").spec.render()
    assert line.endswith(" dev_open name=+0(+8($arg1)):string flags=$arg2:u32")
    session.kprobe("dev_open", id="d->id")
    cached = tmp_path / "btf" / f"6.1.0-57-amd64-{build.hex()}.btf"
    assert cached.read_bytes() == first.files[VMLINUX]
    assert first.fetches == [NOTES, VMLINUX], "one target, one fetch"
    assert kernel_btf(first).source == str(cached)

    again = Files(dict(first.files), local=False, release="6.1.0-57-amd64")  # the next run: a new backend
    assert (
        session_on(again)
        .kprobe("dev_open", name="d->name:string")
        .spec.render()
        .endswith(" dev_open name=+0(+8($arg1)):string")
    )
    assert again.fetches == [NOTES], "the cached BTF is used: only the build id crossed"

    cached.write_bytes(b"\x9f\xeb\x01\x00garbage")  # damaged (a crash mid-write cannot do this: write_atomic)
    third = Files(dict(first.files), local=False, release="6.1.0-57-amd64")
    assert args_of(session_on(third).kprobe("dev_open", f="flags")) == {"f": "$arg2:u32"}
    assert third.fetches == [NOTES, VMLINUX] and cached.read_bytes() == first.files[VMLINUX]


def test_without_a_build_id_the_targets_sha256_is_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    target = remote_target()
    assert args_of(session_on(target).kprobe("dev_open", f="flags")) == {"f": "$arg2:u32"}
    digest = hashlib.sha256(target.files[VMLINUX]).hexdigest()
    assert [path.name for path in tmp_path.iterdir()] == [f"6.1.0-57-amd64-sha256-{digest}.btf"]
    assert ["sha256sum", VMLINUX] in target.runs
    nothing = Files(dict(target.files), local=False, tools=False)  # no build id, no sha256sum: fetched, not cached
    assert args_of(session_on(nothing).kprobe("dev_open", f="flags")) == {"f": "$arg2:u32"}
    assert len(list(tmp_path.iterdir())) == 1


def test_a_cache_that_cannot_be_written_costs_a_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "btf"))
    target = Files({**remote_target().files, NOTES: notes_with_build_id(b"\x01" * 20)}, local=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert args_of(session_on(target).kprobe("dev_open", f="flags")) == {"f": "$arg2:u32"}
    assert any("cannot write BTF cache file" in str(w.message) and "used uncached" in str(w.message) for w in caught)


def test_local_btf_is_read_in_place_not_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    target = module_target()
    session_on(target).kprobe("dev_open", f="flags")
    assert target.fetches == [VMLINUX] and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------------------
# record and replay
# ------------------------------------------------------------------------------------------------------------


def test_resolutions_are_recorded_and_replayed(tmp_path: Path) -> None:
    recorder = RecordingBackend(module_target(), "test_x")
    session = session_on(recorder)
    entry = session.kprobe("dev_open", name="d->name:string", flags="flags", raw="$arg1:x64")
    done = session.kretprobe("dev_open")
    with pytest.raises(UnknownMember):
        session.kprobe("dev_open", x="d->nope")
    recorded = recorder.cassette.btf
    error = recorded["dev_open"]["at entry"]["d->nope"]
    assert error["message"].startswith("d is struct dev, which has no member 'nope'")
    assert recorded == {
        "dev_open": {
            "at entry": {
                "d->name:string": "+0(+8($arg1)):string",
                "flags": "$arg2:u32",
                "d->nope": {"error": "UnknownMember", "message": error["message"]},
            },
            "returns": "s32",
        }
    }
    path = tmp_path / "cassette.json"
    recorder.save(path)
    assert json.loads(path.read_text())["btf"] == recorded

    fake = FakeBackend(load_snapshot("debian-6.1-x86_64"))
    fake.play(Player(Cassette.load(path), path))
    replay = session_on(fake)
    assert replay.kprobe("dev_open", name="d->name:string", flags="flags", raw="$arg1:x64").spec.fetchargs == (
        entry.spec.fetchargs
    )
    assert replay.kretprobe("dev_open").spec.fetchargs == done.spec.fetchargs == (("ret", "$retval:s32"),)
    with pytest.raises(UnknownMember, match=r"x='d->nope': d is struct dev, which has no member 'nope'"):
        replay.kprobe("dev_open", x="d->nope")
    with pytest.raises(StaleCassette, match=r"cassette is stale: re-record on hardware .*'d->id' \(at entry\) was not"):
        replay.kprobe("dev_open", id="d->id")
    with pytest.raises(StaleCassette, match=r"recorded names at entry: d->name:string, d->nope, flags"):
        replay.kprobe("dev_open", id="d->id")
    # a return type the cassette does not know is the old default (the arm check catches a difference)
    assert replay.kretprobe("mymod:mod_xmit").spec.fetchargs == (("ret", "$retval:s32"),)


def test_a_replay_waits_for_a_module_the_fake_has_not_loaded(tmp_path: Path) -> None:
    recorder = RecordingBackend(module_target(), "test_x")
    session_on(recorder).kprobe("mymod:mod_xmit", queue="md->queue")  # loaded on the target: resolved at once
    path = tmp_path / "cassette.json"
    recorder.save(path)
    fake = FakeBackend(load_snapshot("debian-6.1-x86_64"))
    fake.play(Player(Cassette.load(path), path))
    waiting = session_on(fake).kprobe("mymod:mod_xmit", queue="md->queue")
    assert args_of(waiting) == {"queue": "md->queue"}, "the fake's kernel has no mymod: the names wait, as on a target"
    fake.tracefs.modules.load("mymod", ["mod_xmit"], {})
    assert args_of(session_on(fake).kprobe("mymod:mod_xmit", queue="md->queue")) == {"queue": "+0($arg1):s32"}


# ------------------------------------------------------------------------------------------------------------
# end to end: the error is reported at the test's line
# ------------------------------------------------------------------------------------------------------------


@needs_btf
def test_errors_point_at_the_test_line(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import errno
        import pytest
        from pytest_ktrace.backends._local import LocalBackend

        class NoBtf(LocalBackend):
            def fetch_file(self, path):
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

        @pytest.hookimpl(tryfirst=True)
        def pytest_ktrace_make_backend(config, target):
            if target.backend == "nobtf":
                return NoBtf()
        """
    )
    pytester.makepyfile(
        test_names="""
        import pytest

        def test_unknown_member(ktrace):
            ktrace.kprobe("__setup_irq", irq="irq", inner="desc->irq_data.irqq")

        def test_unknown_parameter(ktrace):
            ktrace.kprobe("__setup_irq", irq="irqs")

        @pytest.mark.ktrace(backend="nobtf")
        def test_no_btf(ktrace):
            done = ktrace.kretprobe("__setup_irq")
            assert dict(done.spec.fetchargs) == {"ret": "$retval:s32"}
            ktrace.kprobe("__setup_irq", irq="irq")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            '>       ktrace.kprobe("__setup_irq", irq="irq", inner="desc->irq_data.irqq")',
            "E       pytest_ktrace.UnknownMember: inner='desc->irq_data.irqq': desc->irq_data is struct "
            "irq_data, which has no member 'irqq' (did you mean 'irq' or 'hwirq'?)",
            "E         its members: mask, irq, hwirq, *",
            "test_names.py:4: UnknownMember",
            '>       ktrace.kprobe("__setup_irq", irq="irqs")',
            "E       pytest_ktrace.UnknownParameter: irq='irqs': __setup_irq() has no parameter 'irqs' (did "
            "you mean 'irq'?); its parameters: irq, desc, new",
            '>       ktrace.kprobe("__setup_irq", irq="irq")',
            "E       pytest_ktrace.BtfUnavailable: cannot resolve 'irq': no BTF for local: "
            "/sys/kernel/btf/vmlinux does not exist (kernel built without CONFIG_DEBUG_INFO_BTF?)",
            "E         Without it, name arguments by position: $arg1, $arg2, ... or their registers (on x86_64: %di*",
        ]
    )
    out = result.stdout.str()
    assert "pytest_ktrace/names.py" not in out and "pytest_ktrace/session.py" not in out, "plugin frames are hidden"
