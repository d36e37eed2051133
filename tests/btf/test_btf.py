"""BTF parser and fetcharg resolver: names, not offsets.

Real data first: this machine's ``/sys/kernel/btf/vmlinux`` is checked against two independent readers of the
same layout, the kernel itself (every tracepoint's ``trace_event_raw_<event>`` struct against the offsets, sizes
and signedness in ``events/*/*/format``) and pahole (every struct and union it prints, member by member). The
Debian 6.1 guest kernels' BTF (read from the images the guests boot, x86_64 ELF and arm64 raw ``Image``) and one of
their modules' split BTF get the same pahole comparison when the guest cache exists.

Then a tiny BTF writer (:class:`BtfWriter`) builds synthetic blobs for what real kernels rarely or never contain
(old-style bitfields, enum64 negatives, big-endian, loops, struct arguments by value) and for hostile input.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_ktrace._errors import KtraceError, UnsupportedFetchArg
from pytest_ktrace.btf import (
    BadMemberAccess,
    BtfFormatError,
    BtfTypes,
    BtfUnavailable,
    FetchargError,
    FetchargSyntaxError,
    FetchargTooLong,
    FetchargTypeError,
    FetchargUnsupported,
    FuncInfo,
    Kind,
    UnknownFunction,
    UnknownMember,
    UnknownParameter,
    UnknownType,
    argument_slots,
    bitfield_type,
    btf_from_elf,
    btf_from_kernel_image,
    find_btf_blob,
    load_kernel_btf,
    native_btf_args,
    native_fetcharg,
    parse_expression,
    resolve,
    resolve_fetcharg,
    resolve_return,
)
from pytest_ktrace.btf._kinds import Array, Composite, Enum, Int, Ptr

VMLINUX = Path("/sys/kernel/btf/vmlinux")
TRACEFS = Path("/sys/kernel/tracing")
GUESTS = Path.home() / ".cache" / "pytest-ktrace" / "guests"
_SCALE = max(1, int(os.environ.get("KTRACE_HOSTILE_SCALE", "1")))


# ------------------------------------------------------------------------------------------------------------
# a tiny BTF writer (the format is simple: a header, u32 records, a string table)
# ------------------------------------------------------------------------------------------------------------


class BtfWriter:
    """Builds a BTF blob type by type. ``base`` makes it split BTF: ids continue after the base's, string offsets
    after the base's string section, and the own string section does not start with NUL (as pahole writes it)."""

    def __init__(self, base: Optional[BtfTypes] = None, *, big_endian: bool = False) -> None:
        self.base = base
        self.endian = ">" if big_endian else "<"
        self.strings = bytearray() if base is not None else bytearray(b"\0")
        self.str_start = base.end_str if base is not None else 0
        self.next_id = base.end_id if base is not None else 1
        self.words: list[int] = []
        self._offsets: dict[str, int] = {}

    def s(self, name: str) -> int:
        if not name:
            return 0
        if name not in self._offsets:
            self._offsets[name] = self.str_start + len(self.strings)
            self.strings += name.encode() + b"\0"
        return self._offsets[name]

    def add(
        self, kind: int, name: str, size_or_type: int, extra: Sequence[int] = (), vlen: int = 0, kflag: bool = False
    ) -> int:
        self.words += [self.s(name), (int(kflag) << 31) | (kind << 24) | vlen, size_or_type, *extra]
        self.next_id += 1
        return self.next_id - 1

    def int_(
        self, name: str, size: int, *, signed: bool = False, bits: Optional[int] = None, offset: int = 0, enc: int = 0
    ) -> int:
        encoding = enc | (1 if signed else 0)
        return self.add(1, name, size, [(encoding << 24) | (offset << 16) | (size * 8 if bits is None else bits)])

    def ptr(self, target: int) -> int:
        return self.add(2, "", target)

    def array(self, elem: int, nelems: int, index: int = 0) -> int:
        return self.add(3, "", 0, [elem, index, nelems])

    def struct(
        self,
        name: str,
        size: int,
        members: Sequence[tuple[str, int, int, int]],
        *,
        union: bool = False,
        kflag: Optional[bool] = None,
    ) -> int:
        """members: (name, type, bit offset, bitfield size); kflag defaults to "has a bitfield"."""
        flag = any(m[3] for m in members) if kflag is None else kflag
        extra: list[int] = []
        for member_name, member_type, bit_offset, bitfield in members:
            extra += [self.s(member_name), member_type, (bitfield << 24 | bit_offset) if flag else bit_offset]
        return self.add(5 if union else 4, name, size, extra, vlen=len(members), kflag=flag)

    def enum(self, name: str, size: int, values: Sequence[tuple[str, int]], *, signed: bool = False) -> int:
        extra: list[int] = []
        for value_name, value in values:
            extra += [self.s(value_name), value & 0xFFFFFFFF]
        return self.add(6, name, size, extra, vlen=len(values), kflag=signed)

    def enum64(self, name: str, size: int, values: Sequence[tuple[str, int]], *, signed: bool = False) -> int:
        extra: list[int] = []
        for value_name, value in values:
            value &= (1 << 64) - 1
            extra += [self.s(value_name), value & 0xFFFFFFFF, value >> 32]
        return self.add(19, name, size, extra, vlen=len(values), kflag=signed)

    def fwd(self, name: str, *, union: bool = False) -> int:
        return self.add(7, name, 0, kflag=union)

    def typedef(self, name: str, target: int) -> int:
        return self.add(8, name, target)

    def modifier(self, kind: Kind, target: int, name: str = "") -> int:
        return self.add(int(kind), name, target)

    def func_proto(self, ret: int, params: Sequence[tuple[str, int]], *, variadic: bool = False) -> int:
        extra: list[int] = []
        for param_name, param_type in params:
            extra += [self.s(param_name), param_type]
        if variadic:
            extra += [0, 0]
        return self.add(13, "", ret, extra, vlen=len(params) + int(variadic))

    def func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self.add(12, name, proto, vlen=linkage)

    def var(self, name: str, target: int, linkage: int = 1) -> int:
        return self.add(14, name, target, [linkage])

    def datasec(self, name: str, size: int, entries: Sequence[tuple[int, int, int]]) -> int:
        extra = [x for entry in entries for x in entry]
        return self.add(15, name, size, extra, vlen=len(entries))

    def float_(self, name: str, size: int) -> int:
        return self.add(16, name, size)

    def decl_tag(self, name: str, target: int, component: int = -1) -> int:
        return self.add(17, name, target, [component & 0xFFFFFFFF])

    def blob(self) -> bytes:
        types = struct.pack(f"{self.endian}{len(self.words)}I", *self.words)
        header = struct.pack(f"{self.endian}HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return header + types + bytes(self.strings)

    def load(self, **kwargs: Any) -> BtfTypes:
        return BtfTypes.load(self.blob(), self.base, **kwargs)


def sample_writer(big_endian: bool = False) -> tuple[BtfWriter, dict[str, int]]:
    """A small kernel-like BTF: ints, char, a struct with an anonymous union and bitfields, a function."""
    w = BtfWriter(big_endian=big_endian)
    ids: dict[str, int] = {}
    ids["int"] = w.int_("int", 4, signed=True)
    ids["uint"] = w.int_("unsigned int", 4)
    ids["char"] = w.int_("char", 1)
    ids["u8"] = w.typedef("u8", w.int_("unsigned char", 1))
    ids["ulong"] = w.int_("long unsigned int", 8)
    ids["const_char"] = w.modifier(Kind.CONST, ids["char"])
    ids["str"] = w.ptr(ids["const_char"])
    ids["fwd_dev"] = w.fwd("dev")
    ids["dev_ptr"] = w.ptr(ids["fwd_dev"])
    ids["name16"] = w.array(ids["char"], 16, ids["int"])
    ids["inner"] = w.struct("", 8, [("lo", ids["uint"], 0, 0), ("hi", ids["uint"], 32, 0)])
    ids["anon_union"] = w.struct("", 8, [("whole", ids["ulong"], 0, 0), ("", ids["inner"], 0, 0)], union=True)
    ids["handler_proto"] = w.func_proto(ids["int"], [("", ids["int"]), ("", w.ptr(0))])
    ids["handler_t"] = w.typedef("handler_t", w.ptr(ids["handler_proto"]))
    ids["dev"] = w.struct(
        "dev",
        48,
        [
            ("id", ids["int"], 0, 0),
            ("up", ids["uint"], 32, 1),
            ("mode", ids["uint"], 33, 3),
            ("", ids["anon_union"], 64, 0),
            ("name", ids["name16"], 128, 0),
            ("label", ids["str"], 256, 0),
            ("handler", ids["handler_t"], 320, 0),
        ],
    )
    ids["proto"] = w.func_proto(ids["int"], [("d", ids["dev_ptr"]), ("flags", ids["uint"]), ("buf", w.ptr(ids["u8"]))])
    ids["func"] = w.func("dev_open", ids["proto"])
    ids["find"] = w.func("dev_find", w.func_proto(ids["dev_ptr"], [("id", ids["int"])]))
    return w, ids


# ------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def vmlinux() -> BtfTypes:
    if not VMLINUX.exists():
        pytest.skip(f"{VMLINUX} missing (kernel without CONFIG_DEBUG_INFO_BTF)")
    return BtfTypes.from_file(VMLINUX)


@pytest.fixture(scope="session")
def pahole() -> str:
    path = shutil.which("pahole")
    if path is None:
        pytest.skip("pahole not installed (Debian package: dwarves)")
    return path


def run_pahole(pahole: str, *args: str) -> str:
    done = subprocess.run([pahole, *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"pahole {' '.join(args)} failed: {done.stderr[-2000:]}"
    return done.stdout


_PAHOLE_MEMBER = re.compile(r"^(?P<decl>[^/{}]*?);\s*/\*\s*(?P<off>\d+)(?::\s*(?P<bit>\d+))?\s+(?P<size>\d+)\s*\*/\s*$")
_PAHOLE_CLOSE = re.compile(
    r"^\s*\}(?:\s*__attribute__\(\(.*?\)\))*\s*(?P<pointer>\*[\s*]*)?(?P<name>\w+)?(?P<dims>(?:\[\d*\])*)(?:\s*:\s*(?P<width>\d+))?\s*;\s*"
    r"(?:/\*\s*(?P<off>\d+)(?::\s*(?P<bit>\d+))?\s+(?P<size>\d+)\s*\*/)?\s*$"
)
_PAHOLE_OPEN = re.compile(r"^\s*(?P<qualifier>(?:const|volatile)\s+)?(?P<kw>struct|union|enum)\b[^;]*\{\s*$")


def parse_pahole(text: str) -> Iterator[tuple[str, str, list[tuple[str, int, int, int]]]]:
    """Yield (keyword, name, members) for every top-level struct/union pahole printed. Members are
    (path, absolute bit offset, bitfield width or 0, size in bytes); members of inline anonymous structs keep
    their bare name (C finds them so), members of inline named ones get ``name.`` (``name[0].`` for arrays)."""
    top: Optional[tuple[str, str]] = None
    frames: list[tuple[str, list[tuple[str, int, int, int]]]] = []
    for line in text.splitlines():
        if top is None:
            match = re.match(r"^(struct|union) (\w+) \{$", line)
            if match:
                top = (match.group(1), match.group(2))
                frames = [("struct", [])]
            continue
        assert not re.match(r"^(struct|union) \w+ \{$", line), f"pahole parser lost track before {line!r}"
        opened = _PAHOLE_OPEN.match(line)
        if opened:
            # pahole 1.24 prints "const struct { ... };" without the member's name: skip what it cannot name
            frames.append(("qualified" if opened.group("qualifier") else opened.group("kw"), []))
            continue
        closed = _PAHOLE_CLOSE.match(line)
        if closed:
            keyword, members = frames.pop()
            if not frames:
                yield top[0], top[1], members
                top = None
                continue
            name = closed.group("name")
            if keyword == "qualified" and not name:
                continue
            if keyword != "enum" and not closed.group("pointer"):  # a pointer's pointee members are not ours
                prefix = f"{name}{'[0]' * closed.group('dims').count('[')}." if name else ""
                frames[-1][1].extend((prefix + path, bits, width, size) for path, bits, width, size in members)
            if name and closed.group("off") is not None:
                bits = int(closed.group("off")) * 8 + int(closed.group("bit") or 0)
                frames[-1][1].append((name, bits, int(closed.group("width") or 0), int(closed.group("size"))))
            continue
        if frames and frames[-1][0] == "enum":
            continue
        member = _PAHOLE_MEMBER.match(line)
        if member is None:
            continue
        decl = re.sub(r"\s*__attribute__\(\(.*\)\)", "", member.group("decl")).strip()
        width = 0
        pointer = re.search(r"\(\s*\*\s*(?:const\s+)?(\w+)", decl)
        if pointer:
            name = pointer.group(1)
        else:
            bitfield = re.search(r":\s*(\d+)$", decl)
            if bitfield:
                width = int(bitfield.group(1))
                decl = decl[: bitfield.start()].strip()
            name = re.sub(r"(\[\d*\])+$", "", decl).split()[-1].lstrip("*")
        bits = int(member.group("off")) * 8 + int(member.group("bit") or 0)
        frames[-1][1].append((name, bits, width, int(member.group("size"))))


def compare_with_pahole(btf: BtfTypes, text: str, *, minimum: int) -> tuple[int, int, list[str]]:
    """(structs compared, members compared, mismatches) of every struct/union pahole printed against the
    same-named definitions in ``btf`` (a mismatch only if *no* definition of that name agrees: BTF holds several
    structs of one name when files define them differently)."""
    structs = members = 0
    mismatches: list[str] = []
    for keyword, name, printed in parse_pahole(text):
        kind = Kind.UNION if keyword == "union" else Kind.STRUCT
        candidates = [c for c in btf.find(name, (kind,)) if isinstance(c, Composite)]
        problems: list[str] = []
        for candidate in candidates:
            problems = []
            for path, bits, width, size in printed:
                try:
                    location = btf.locate(candidate.id, path)
                    ours = (location.bit_offset, location.bitfield_size, btf.sizeof(location.type))
                except KtraceError as exc:
                    problems.append(f"{keyword} {name}.{path}: {exc}")
                    continue
                if ours != (bits, width, size):
                    problems.append(
                        f"{keyword} {name}.{path}: ours (bit, width, size) {ours}, pahole {(bits, width, size)}"
                    )
            if not problems:
                break
        if not candidates:
            problems = [f"{keyword} {name}: not found"]
        structs += 1
        members += len(printed)
        mismatches += problems
    assert structs >= minimum, f"only {structs} structs parsed from pahole's output: the parser broke"
    return structs, members, mismatches


def pahole_offsets(pahole: str, btf_path: str, struct_name: str, *extra: str) -> dict[str, tuple[int, int, int]]:
    text = run_pahole(pahole, *extra, "-C", struct_name, btf_path)
    parsed = list(parse_pahole(text))
    assert parsed, f"pahole printed no {struct_name}"
    return {path: (bits, width, size) for path, bits, width, size in parsed[0][2]}


def expect_error(kind: type[BaseException], call: Callable[[], object], *needles: str) -> str:
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------------------------------
# this machine's vmlinux against the kernel's tracefs formats and pahole
# ------------------------------------------------------------------------------------------------------------


def test_vmlinux_loads_whole_and_finds_by_name(vmlinux: BtfTypes) -> None:
    """(How fast: benchmarks/bench_btf.py, load and lookups next to reading the same bytes.)"""
    assert len(vmlinux) > 50_000
    assert vmlinux.func("__setup_irq").name == "__setup_irq"
    found = vmlinux.find("irq_desc", (Kind.STRUCT,))
    assert found is not None and vmlinux.find("irq_desc", (Kind.STRUCT,)) == found


_FORMAT_FIELD = re.compile(
    r"^\s*field:(?P<decl>.+?);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);"
)


def test_tracepoint_structs_match_tracefs_formats(vmlinux: BtfTypes) -> None:
    """Every event whose name has exactly one ``trace_event_raw_<event>`` struct: each format field's offset, size
    and signedness equal to the BTF member's (common_* fields are ``ent.*``, __data_loc/__rel_loc fields their
    u32 ``__data_loc_<name>``)."""
    formats = list(TRACEFS.glob("events/*/*/format"))
    if not formats:
        pytest.skip(f"no tracefs event formats under {TRACEFS}")
    by_event: dict[str, list[Path]] = collections.defaultdict(list)
    for format_file in formats:
        by_event[format_file.parent.name].append(format_file)
    events = fields = 0
    mismatches: list[str] = []
    for event, paths in sorted(by_event.items()):
        candidates = vmlinux.find(f"trace_event_raw_{event}", (Kind.STRUCT,))
        if len(paths) != 1 or len(candidates) != 1:
            continue  # DEFINE_EVENT instances share their class's struct; ftrace/syscall events have none
        raw_struct = candidates[0]
        try:
            text = paths[0].read_text()
        except OSError:
            continue  # removed meanwhile (a dynamic event of a concurrent test run)
        events += 1
        for line in text.splitlines():
            match = _FORMAT_FIELD.match(line)
            if match is None:
                continue
            decl = match.group("decl").strip()
            pointer = re.search(r"\(\*\s*(\w+)\)", decl)
            name = pointer.group(1) if pointer else re.sub(r"(\[[^\]]*\])+$", "", decl).split()[-1].lstrip("*")
            if name.startswith("common_"):
                member = "ent." + name[len("common_") :]
            elif decl.startswith(("__data_loc", "__rel_loc")):
                member = f"{decl.split()[0]}_{name}"
            else:
                member = name
            fields += 1
            try:
                location = vmlinux.locate(raw_struct.id, member)
            except KtraceError as exc:
                mismatches.append(f"{event}: {decl}: {exc}")
                continue
            element = vmlinux.resolve(location.type)
            while isinstance(element, Array):
                element = vmlinux.resolve(element.elem)
            signed = int(element.signed) if isinstance(element, (Int, Enum)) else 0
            ours = (location.bit_offset, vmlinux.sizeof(location.type), signed)
            kernel = (int(match.group("off")) * 8, int(match.group("size")), int(match.group("signed")))
            if ours != kernel:
                mismatches.append(f"{event}: {decl}: BTF (bit offset, size, signed) {ours}, tracefs {kernel}")
    assert events >= 200 and fields >= 1000, f"only {events} events / {fields} fields compared"
    assert not mismatches, f"{len(mismatches)} of {fields} fields differ:\n" + "\n".join(mismatches[:50])


def test_every_struct_matches_pahole(vmlinux: BtfTypes, pahole: str) -> None:
    """pahole's dump of the whole vmlinux BTF (~10k structs and unions, nested anonymous members, bitfields,
    arrays of inline structs): every member's bit offset, bitfield width and size equal ours."""
    text = run_pahole(pahole, str(VMLINUX))
    structs, members, mismatches = compare_with_pahole(vmlinux, text, minimum=3000)
    assert members > 50_000
    assert not mismatches, f"{len(mismatches)} of {members} members in {structs} structs differ:\n" + "\n".join(
        mismatches[:50]
    )


@pytest.mark.parametrize(
    ("name", "expected_paths"),
    [
        ("irq_desc", ["irq_data", "action", "name", "irq_common_data"]),
        ("irqaction", ["handler", "name", "thread", "irq"]),
        ("task_struct", ["pid", "comm", "mm", "flags"]),
        ("sk_buff", ["len", "pkt_type", "cloned", "headers.pkt_type", "dev", "cb"]),  # bitfields, anonymous unions
        ("perf_event_attr", ["disabled", "exclude_kernel", "sample_period", "config", "__reserved_1"]),
        ("bpf_attr", ["map_type", "prog_type", "insns"]),  # a union
    ],
)
def test_selected_structs_match_pahole(vmlinux: BtfTypes, pahole: str, name: str, expected_paths: list[str]) -> None:
    offsets = pahole_offsets(pahole, str(VMLINUX), name)
    for path in expected_paths:
        assert path in offsets, f"pahole shows no {name}.{path}: {sorted(offsets)[:40]}"
    for path, (bits, width, size) in offsets.items():
        location = vmlinux.locate(name, path)
        assert (location.bit_offset, location.bitfield_size, vmlinux.sizeof(location.type)) == (bits, width, size), path
    if name == "bpf_attr":
        assert vmlinux.struct("union bpf_attr").is_union


def test_functions_and_kallsyms(vmlinux: BtfTypes) -> None:
    setup_irq = vmlinux.func("__setup_irq")
    assert setup_irq.param_names == ("irq", "desc", "new")
    assert [vmlinux.type_name(p.type) for p in setup_irq.params] == [
        "unsigned int",
        "struct irq_desc *",
        "struct irqaction *",
    ]
    assert vmlinux.type_name(setup_irq.ret) == "int"
    assert setup_irq.signature() == "int __setup_irq(unsigned int irq, struct irq_desc *desc, struct irqaction *new)"
    request = vmlinux.func("request_threaded_irq")
    assert request.param_names == ("irq", "handler", "thread_fn", "irqflags", "devname", "dev_id")
    assert vmlinux.type_name(request.params[4].type) == "const char *"
    handler = vmlinux.resolve(request.params[1].type)  # irq_handler_t: irqreturn_t (*)(int, void *)
    assert isinstance(handler, Ptr)
    assert vmlinux.type_name(handler.target) == "irqreturn_t (int, void *)"
    assert vmlinux.func("vfs_read").param_names == ("file", "buf", "count", "pos")
    assert vmlinux.type_name(vmlinux.func("vfs_read").params[1].type) == "char *"
    # BTF functions are real kernel functions: nearly all are in kallsyms (the rest are renamed clones)
    symbols = set()
    with open("/proc/kallsyms") as kallsyms:
        for line in kallsyms:
            fields = line.split()
            if len(fields) >= 3 and fields[1] in "tTwW":
                symbols.add(fields[2])
    names = vmlinux.names((Kind.FUNC,))
    assert {"__setup_irq", "request_threaded_irq", "vfs_read"} <= symbols
    present = sum(name in symbols for name in names) / len(names)
    assert len(names) > 20_000 and present > 0.95, f"{present:.1%} of {len(names)} BTF functions in kallsyms"


def test_unknown_function_suggests(vmlinux: BtfTypes) -> None:
    message = expect_error(UnknownFunction, lambda: vmlinux.func("setup_irqq"), "setup_irqq", "__setup_irq")
    assert "inlined" in message
    expect_error(UnknownType, lambda: vmlinux.struct("irq_dsc"), "irq_desc")


# ------------------------------------------------------------------------------------------------------------
# the resolver on the real kernel
# ------------------------------------------------------------------------------------------------------------


def test_resolve_setup_irq(vmlinux: BtfTypes, pahole: str) -> None:
    desc = pahole_offsets(pahole, str(VMLINUX), "irq_desc")
    irq_data = pahole_offsets(pahole, str(VMLINUX), "irq_data")
    action = pahole_offsets(pahole, str(VMLINUX), "irqaction")
    task = pahole_offsets(pahole, str(VMLINUX), "task_struct")
    f = vmlinux.func("__setup_irq")
    assert resolve_fetcharg(f, "irq", "x86_64") == "$arg1:u32"  # unsigned int irq
    assert resolve_fetcharg(f, "$arg1", "x86_64") == "$arg1:u32"
    assert resolve_fetcharg(f, "irq:s32", "x86_64") == "$arg1:s32"
    offset = (desc["irq_data"][0] + irq_data["irq"][0]) // 8
    assert resolve_fetcharg(f, "desc->irq_data.irq", "x86_64") == f"+{offset}($arg2):u32"
    assert resolve_fetcharg(f, " desc -> irq_data . irq ", "x86_64") == f"+{offset}($arg2):u32"
    assert resolve_fetcharg(f, "$arg2->irq_data.irq", "arm64") == f"+{offset}($arg2):u32"
    assert resolve_fetcharg(f, "new->name:string", "x86_64") == f"+0(+{action['name'][0] // 8}($arg3)):string"
    assert resolve_fetcharg(f, "desc->name:string", "x86_64") == f"+0(+{desc['name'][0] // 8}($arg2)):string"
    assert resolve_fetcharg(f, "new->name:x64", "x86_64") == f"+{action['name'][0] // 8}($arg3):x64"
    assert resolve_fetcharg(f, "desc->action->handler", "x86_64") == (
        f"+{action['handler'][0] // 8}(+{desc['action'][0] // 8}($arg2)):symbol"
    )
    assert resolve_fetcharg(f, "desc->action->irq", "x86_64") == (
        f"+{action['irq'][0] // 8}(+{desc['action'][0] // 8}($arg2)):u32"
    )
    assert resolve_fetcharg(f, "new->thread->comm:string", "x86_64") == (
        f"+{task['comm'][0] // 8}(+{action['thread'][0] // 8}($arg3)):string"
    )
    assert resolve_fetcharg(f, "new->thread->comm[1]:char", "x86_64") == (
        f"+{task['comm'][0] // 8 + 1}(+{action['thread'][0] // 8}($arg3)):char"
    )
    assert (
        resolve_fetcharg(f, "new->thread->pid", "x86_64")
        == f"+{task['pid'][0] // 8}(+{action['thread'][0] // 8}($arg3)):s32"
    )
    assert resolve_fetcharg(f, "desc->kstat_irqs", "x86_64") == f"+{desc['kstat_irqs'][0] // 8}($arg2):x64"
    assert resolve_fetcharg(f, "desc", "x86_64") == "$arg2:x64"
    assert resolve_fetcharg(f, "$retval", "x86_64", entry=False) == "$retval:s32"
    assert resolve_fetcharg(f, "desc->depth", "x86_64", entry=False) == f"+{desc['depth'][0] // 8}($arg2):u32"
    assert resolve_return(f) == "s32"
    detailed = resolve(f, "new->name:string", "x86_64")
    assert (detailed.fetch_type, detailed.c_type, detailed.explicit, detailed.base) == (
        "string",
        "const char *",
        True,
        "$arg3",
    )
    assert detailed.param is not None and detailed.param.name == "new"


def test_resolve_bitfields_against_pahole(vmlinux: BtfTypes, pahole: str) -> None:
    skb = pahole_offsets(pahole, str(VMLINUX), "sk_buff")
    attr = pahole_offsets(pahole, str(VMLINUX), "perf_event_attr")
    func = vmlinux.func("skb_checksum_help")
    assert func.param_names == ("skb",)
    for member in ("pkt_type", "cloned", "ip_summed", "csum_level"):
        bits, width, size = skb[member]
        unit = size * 8
        expected = f"+{bits // unit * size}($arg1):b{width}@{bits % unit}/{unit}"
        assert resolve_fetcharg(func, f"skb->{member}", "x86_64") == expected, member
    perf = vmlinux.func("perf_event_alloc") if vmlinux.find("perf_event_alloc") else None
    if perf is not None and "attr" in perf.param_names:
        bits, width, size = attr["exclude_kernel"]
        slot = argument_slots(perf, "x86_64")[perf.param("attr").index].register
        assert (
            resolve_fetcharg(perf, "attr->exclude_kernel", "x86_64")
            == f"+{bits // 64 * 8}($arg{slot}):b1@{bits % 64}/64"
        )
    message = expect_error(FetchargTypeError, lambda: resolve(func, "skb->pkt_type:u8", "x86_64"), "bitfield")
    assert "leave the type out" in message


def test_resolve_errors_say_what_is_valid(vmlinux: BtfTypes) -> None:
    f = vmlinux.func("__setup_irq")
    expect_error(UnknownParameter, lambda: resolve(f, "irqq", "x86_64"), "'irq'", "irq, desc, new", "__setup_irq(")
    expect_error(UnknownMember, lambda: resolve(f, "desc->irqdata", "x86_64"), "irq_data", "its members:")
    expect_error(BadMemberAccess, lambda: resolve(f, "desc.irq_data", "x86_64"), "use '->'", "desc->irq_data")
    expect_error(BadMemberAccess, lambda: resolve(f, "desc->irq_data->irq", "x86_64"), "use '.'", "desc->irq_data.irq")
    expect_error(BadMemberAccess, lambda: resolve(f, "irq->x", "x86_64"), "unsigned int", "not a pointer")
    expect_error(BadMemberAccess, lambda: resolve(f, "desc->depth.x", "x86_64"), "not a struct or union")
    expect_error(BadMemberAccess, lambda: resolve(f, "desc->depth[2]", "x86_64"), "cannot be indexed")
    expect_error(FetchargTypeError, lambda: resolve(f, "desc->name", "x86_64"), "':string'", "':x64'")
    expect_error(FetchargTypeError, lambda: resolve(f, "new->thread->comm", "x86_64"), "':string'", "':u8[16]'")
    expect_error(FetchargTypeError, lambda: resolve(f, "desc->irq_data", "x86_64"), "pick a member", "irq, hwirq")
    expect_error(FetchargTypeError, lambda: resolve(f, "desc->depth:string", "x86_64"), "char *")
    expect_error(FetchargError, lambda: resolve(f, "$retval", "x86_64"), "return probes")
    expect_error(FetchargSyntaxError, lambda: resolve(f, "desc->", "x86_64"), "member name after '->'", "^")
    expect_error(FetchargSyntaxError, lambda: resolve(f, "desc-name", "x86_64"), "'-' must be followed by '>'")
    expect_error(FetchargSyntaxError, lambda: resolve(f, "irq:float", "x86_64"), "unknown type 'float'")
    expect_error(UnknownParameter, lambda: resolve(f, "$arg4", "x86_64"), "no parameter in $arg4", "desc=$arg2")
    expect_error(BadMemberAccess, lambda: resolve(f, "new->thread->comm[16]:char", "x86_64"), "out of range")
    too_deep = "new->thread->mm->owner->mm->owner->mm->owner->mm->owner->pid"
    expect_error(FetchargTooLong, lambda: resolve(f, too_deep, "x86_64"), "63")
    assert resolve(f, too_deep, "x86_64", max_len=None).text.count("(") == 10  # one load per ->
    assert issubclass(FetchargTooLong, UnsupportedFetchArg)
    for error in (UnknownParameter, UnknownMember, BadMemberAccess, FetchargTypeError, FetchargSyntaxError):
        assert issubclass(error, KtraceError)
    message = str(BtfUnavailable.for_target("guest", "no /sys/kernel/btf/vmlinux", arch="x86_64", expr="desc->irq"))
    assert "$arg1" in message and "%di" in message and "pahole" in message and "desc->irq" in message


def test_resolve_strings_and_dentries(vmlinux: BtfTypes, pahole: str) -> None:
    dentry = pahole_offsets(pahole, str(VMLINUX), "dentry")
    qstr = pahole_offsets(pahole, str(VMLINUX), "qstr")
    file = pahole_offsets(pahole, str(VMLINUX), "file")
    path = pahole_offsets(pahole, str(VMLINUX), "path")
    name_offset = (dentry["d_name"][0] + qstr["name"][0]) // 8
    dentry_offset = (file["f_path"][0] + path["dentry"][0]) // 8
    read = vmlinux.func("vfs_read")
    assert resolve_fetcharg(read, "file:%pD", "x86_64") == f"+0(+{name_offset}(+{dentry_offset}($arg1))):string"
    assert (
        resolve_fetcharg(read, "file->f_path.dentry:%pd", "x86_64")
        == f"+0(+{name_offset}(+{dentry_offset}($arg1))):string"
    )
    assert resolve_fetcharg(read, "buf:ustring", "x86_64") == "+0($arg2):ustring"
    assert resolve_fetcharg(read, "count", "x86_64") == "$arg3:u64"
    assert resolve_fetcharg(read, "pos", "x86_64") == "$arg4:x64"
    assert resolve_fetcharg(read, "pos[0]", "x86_64") == "+0($arg4):s64"  # loff_t *pos: index a pointer
    expect_error(FetchargTypeError, lambda: resolve(read, "file:%pd", "x86_64"), "struct dentry *")


def test_native_form(vmlinux: BtfTypes) -> None:
    f = vmlinux.func("__setup_irq")
    btf_kernel = frozenset({"btf", "argN", "argN_on_return"})
    assert native_fetcharg(f, "desc->irq_data.irq", "x86_64", features=btf_kernel) == "desc->irq_data.irq:u32"
    assert native_fetcharg(f, "new->name:string", "x86_64", features=btf_kernel) == "new->name:string"
    assert native_fetcharg(f, "irq", "x86_64", features=btf_kernel) == "irq:u32"
    assert native_fetcharg(f, "$retval", "x86_64", features=btf_kernel, entry=False) == "$retval:s32"
    assert native_fetcharg(f, "desc->irq_data.irq", "x86_64", features=frozenset({"argN"})) is None  # 6.1
    assert native_fetcharg(f, "irq", "x86_64", features=frozenset({"btf"}), entry=False) is None
    assert native_fetcharg(f, "$arg2->depth", "x86_64", features=btf_kernel) is None
    assert native_fetcharg(f, "new->thread->comm[1]:char", "x86_64", features=btf_kernel) is None
    skb = vmlinux.func("skb_checksum_help")
    assert native_fetcharg(skb, "skb->pkt_type", "x86_64", features=btf_kernel) is None  # bitfield: computed form
    with pytest.raises(UnknownMember):
        native_fetcharg(f, "desc->nope", "x86_64", features=btf_kernel)
    assert native_btf_args("\t           <argname>[->field[->field|.field...]],\n")
    readme = TRACEFS / "README"
    if readme.exists():  # this 6.18 host has no kprobe_events: no BTF args line
        assert native_btf_args(readme.read_text()) == ("<argname>" in readme.read_text())
    assert not native_btf_args("\t           $stack<index>, $stack, $retval, $comm, $arg<N>,\n")


def test_resolve_return_types(vmlinux: BtfTypes) -> None:
    assert resolve_return(vmlinux.func("__setup_irq")) == "s32"
    assert (
        resolve_return(vmlinux.func("__kmalloc_noprof" if vmlinux.find("__kmalloc_noprof") else "__kmalloc")) == "x64"
    )
    void_funcs = [n for n in ("free_irq", "kfree", "synchronize_rcu") if vmlinux.find(n, (Kind.FUNC,))]
    voids = [vmlinux.func(n) for n in void_funcs if vmlinux.func(n).returns_void]
    assert voids, "no void function found"
    expect_error(FetchargTypeError, lambda: resolve_return(voids[0]), "returns void")
    bool_func = vmlinux.func("capable")
    assert vmlinux.type_name(bool_func.ret) == "bool" and resolve_return(bool_func) == "u8"


# ------------------------------------------------------------------------------------------------------------
# Debian 6.1 guests: BTF from the kernel images and a module's split BTF
# ------------------------------------------------------------------------------------------------------------


def guest_kernel(arch: str) -> Path:
    """The kernel of the Debian 6.1 guest image (built here if the guest tests have not built it yet)."""
    from pytest_ktrace.guests import build_image

    return build_image(arch).kernel


@pytest.fixture(scope="module", params=["x86_64", "arm64"])
def guest_btf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, BtfTypes]:
    arch = request.param
    image = guest_kernel(arch)
    blob = btf_from_kernel_image(image.read_bytes())
    path = tmp_path_factory.mktemp(f"btf-{arch}") / "vmlinux.btf"
    path.write_bytes(blob)
    return arch, path, BtfTypes.load(blob, name=f"6.1-{arch}")


def test_guest_btf_matches_pahole(guest_btf: tuple[str, Path, BtfTypes], pahole: str) -> None:
    arch, path, btf = guest_btf
    _, _, mismatches = compare_with_pahole(btf, run_pahole(pahole, str(path)), minimum=3000)
    assert not mismatches, "\n".join(mismatches[:50])
    desc = pahole_offsets(pahole, str(path), "irq_desc")
    irq_data = pahole_offsets(pahole, str(path), "irq_data")
    f = btf.func("__setup_irq")
    offset = (desc["irq_data"][0] + irq_data["irq"][0]) // 8
    assert resolve_fetcharg(f, "desc->irq_data.irq", arch) == f"+{offset}($arg2):u32"


def test_guest_image_sources() -> None:
    elf = guest_kernel("x86_64").read_bytes()
    assert elf[:4] == b"\x7fELF"
    assert btf_from_elf(elf) == btf_from_kernel_image(elf)
    raw = guest_kernel("arm64").read_bytes()
    assert raw[:4] != b"\x7fELF"
    blob = find_btf_blob(raw)
    assert BtfTypes.load(blob).func("__setup_irq").param_names == ("irq", "desc", "new")
    import gzip

    start = raw.find(blob)
    around = raw[max(0, start - 100_000) : start + len(blob) + 100_000]  # an image slice: compressing 33 MB is slow
    assert btf_from_kernel_image(gzip.compress(around, compresslevel=1)) == blob  # Debian's arm64 vmlinuz is gzip
    with pytest.raises(BtfUnavailable):
        find_btf_blob(raw[:1_000_000])


@pytest.fixture(scope="module")
def e1000_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    debs = sorted((GUESTS / "debs" / "amd64").glob("linux-image-6.1.0-*.deb"))  # 6.12's modules are .ko.xz
    if not debs or shutil.which("dpkg-deb") is None:
        pytest.skip("no Debian linux-image .deb in the guest cache (or no dpkg-deb)")
    out = tmp_path_factory.mktemp("modules")
    dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE)
    subprocess.run(
        ["tar", "-x", "-C", str(out), "--wildcards", "*/e1000/e1000.ko"], stdin=dpkg.stdout, check=True, timeout=120
    )
    assert dpkg.wait(timeout=60) == 0
    found = list(out.rglob("e1000.ko"))
    assert found, "e1000.ko not in the .deb"
    return found[0]


def test_module_split_btf(e1000_module: Path, pahole: str, tmp_path: Path) -> None:
    image = guest_kernel("x86_64")
    base_path = tmp_path / "vmlinux.btf"
    base_path.write_bytes(btf_from_kernel_image(image.read_bytes()))
    base = BtfTypes.from_file(base_path, name="vmlinux")
    module = load_kernel_btf(e1000_module, base)
    assert module.start_id == base.end_id and module.start_str == base.end_str
    func = module.func("e1000_clean_rx_irq")
    assert func.param_names == ("adapter", "rx_ring", "work_done", "work_to_do")
    assert module.type_name(func.params[0].type) == "struct e1000_adapter *"
    assert module.struct("e1000_adapter").id >= module.start_id
    assert module.func("__setup_irq").id < module.start_id  # base functions are found through the split BTF
    adapter = pahole_offsets(pahole, str(e1000_module), "e1000_adapter", "-F", "btf", "--btf_base", str(base_path))
    hw = pahole_offsets(pahole, str(e1000_module), "e1000_hw", "-F", "btf", "--btf_base", str(base_path))
    net_device = pahole_offsets(pahole, str(base_path), "net_device")
    assert resolve_fetcharg(func, "adapter->hw.get_link_status", "x86_64") == (
        f"+{(adapter['hw'][0] + hw['get_link_status'][0]) // 8}($arg1):u8"
    )
    assert resolve_fetcharg(func, "adapter->netdev->name:string", "x86_64") == (
        f"+{net_device['name'][0] // 8}(+{adapter['netdev'][0] // 8}($arg1)):string"
    )
    text = run_pahole(pahole, "-F", "btf", "--btf_base", str(base_path), str(e1000_module))
    _, _, mismatches = compare_with_pahole(module, text, minimum=20)
    assert not mismatches, "\n".join(mismatches[:50])
    with pytest.raises(BtfFormatError, match="split BTF"):
        BtfTypes.load(btf_from_elf(e1000_module.read_bytes()))


@pytest.fixture(scope="module")
def example_driver() -> dict[str, Path]:
    """examples/driver's ktbar.ko for each guest kernel, with BTF written against that kernel's (a build of
    scripts/build-example-driver, which reuses its last build while nothing changed)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "build-example-driver"
    out = subprocess.run([str(script)], capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {arch: Path(ko) for arch, ko in re.findall(r"^ktbar\.ko for (\S+) \(.*?\).*?: (\S+)$", out.stdout, re.M)}


def test_example_driver_split_btf(
    guest_btf: tuple[str, Path, BtfTypes], example_driver: dict[str, Path], pahole: str
) -> None:
    arch, base_path, base = guest_btf
    ko = example_driver[arch]
    module = load_kernel_btf(ko, base, name="ktbar")
    # numbered as the kernel numbers a module's BTF: ids after the base's last, string offsets after its strings
    assert module.start_id == base.end_id and module.start_str == base.end_str
    assert module.string(module.start_str), "a split string section starts with a name, not the empty string"
    func = module.func("ktbar_request")
    assert func.id >= module.start_id and func.linkage == "static"
    assert func.signature() == "int ktbar_request(unsigned int irq, const char *irq_name)"
    assert resolve_fetcharg(func, "irq", arch) == "$arg1:u32"
    assert resolve_fetcharg(func, "irq_name:string", arch) == "+0($arg2):string"
    assert resolve_return(func) == "s32"
    # the module's own types refer to the kernel's: its trace event's record starts with struct trace_entry
    record = module.struct("trace_event_raw_ktbar_request")
    assert record.id >= module.start_id
    entry = record.members[0]
    assert (entry.name, module.type_name(entry.type)) == ("ent", "struct trace_entry") and entry.type < module.start_id
    module.check_references()
    printed = pahole_offsets(pahole, str(ko), record.name, "-F", "btf", "--btf_base", str(base_path))
    assert {name: bits for name, (bits, _, _) in printed.items()} == {
        member.name: member.bit_offset for member in record.members
    }


def test_split_btf_written_against_another_kernel_does_not_fit(
    guest_btf: tuple[str, Path, BtfTypes], example_driver: dict[str, Path], pahole: str, tmp_path: Path
) -> None:
    arch, _, base = guest_btf
    if not VMLINUX.exists():
        pytest.skip(f"{VMLINUX} missing: no other kernel's BTF to write the module's against")
    objcopy = shutil.which("aarch64-linux-gnu-objcopy" if arch == "arm64" else "objcopy")
    assert objcopy, "binutils for the arch are part of the dev setup (scripts/bootstrap)"
    wrong = tmp_path / "ktbar.ko"
    subprocess.run([objcopy, "--remove-section", ".BTF", str(example_driver[arch]), str(wrong)], check=True)
    env = {**os.environ, "LLVM_OBJCOPY": objcopy}
    done = subprocess.run([pahole, "-J", "--btf_base", str(VMLINUX), str(wrong)], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert load_kernel_btf(wrong, BtfTypes.from_file(VMLINUX)).func("ktbar_request").param_names == ("irq", "irq_name")
    with pytest.raises(BtfFormatError, match=r"does not exist|past the string section"):
        load_kernel_btf(wrong, base).check_references()  # this machine's kernel is not the guest's


# ------------------------------------------------------------------------------------------------------------
# synthetic BTF: every kind, old-style bitfields, endianness, split, calling conventions
# ------------------------------------------------------------------------------------------------------------


def test_synthetic_every_kind() -> None:
    w, ids = sample_writer()
    e32 = w.enum("state", 4, [("OFF", 0), ("ERR", -1)], signed=True)
    e64 = w.enum64("big", 8, [("HUGE", 1 << 40), ("NEG", -5)], signed=True)
    u64e = w.enum("flags", 4, [("HIGH", 0x80000000)])
    volatile = w.modifier(Kind.VOLATILE, ids["int"])
    restrict = w.modifier(Kind.RESTRICT, w.ptr(ids["int"]))
    tagged = w.ptr(w.modifier(Kind.TYPE_TAG, ids["int"], "rcu"))
    float_id = w.float_("double", 8)
    var = w.var("counter", ids["int"])
    sec = w.datasec(".data..percpu", 16, [(var, 0, 4)])
    tag = w.decl_tag("noinline", ids["func"], -1)
    w.func("dev_printf", w.func_proto(ids["int"], [("fmt", ids["str"])], variadic=True))
    btf = w.load(name="sample")
    assert btf.type(0).kind is Kind.UNKN and btf.type_name(0) == "void"
    state = btf.type(e32)
    assert isinstance(state, Enum) and state.signed and state.values == (("OFF", 0), ("ERR", -1))
    big = btf.type(e64)
    assert isinstance(big, Enum) and big.kind is Kind.ENUM64 and big.values == (("HUGE", 1 << 40), ("NEG", -5))
    flags = btf.type(u64e)
    assert isinstance(flags, Enum) and not flags.signed and flags.values == (("HIGH", 0x80000000),)
    assert btf.type_name(volatile) == "volatile int" and btf.resolve(volatile).id == ids["int"]
    assert btf.type_name(restrict) == "int * restrict"
    assert btf.type_name(tagged) == "int *" and btf.resolve(btf.type(tagged).target).id == ids["int"]  # type: ignore[attr-defined]
    assert btf.type(float_id).kind is Kind.FLOAT and btf.sizeof(float_id) == 8
    assert btf.type(sec).vars == ((var, 0, 4),)  # type: ignore[attr-defined]
    assert btf.type(tag).component_idx == -1  # type: ignore[attr-defined]
    info = btf.func("dev_printf")
    assert info.variadic and info.param_names == ("fmt",)
    assert info.signature() == "int dev_printf(const char *fmt, ...)"
    assert btf.type_name(ids["name16"]) == "char[16]"
    assert btf.type_name(ids["handler_t"]) == "handler_t"
    assert btf.type_name(btf.resolve(ids["handler_t"]).id) == "int (*)(int, void *)"
    pointer_to_array = w.ptr(ids["name16"])
    assert BtfTypes.load(w.blob()).type_name(pointer_to_array) == "char (*)[16]"
    assert btf.ptr_size == 8 and len(btf) == btf.end_id - 1
    assert btf.find("dev", (Kind.FWD,))[0].kind is Kind.FWD
    assert [t.id for t in btf.iter_types()] == list(btf.own_ids)


def test_synthetic_members_bitfields_and_fwd() -> None:
    w, _ = sample_writer()
    btf = w.load()
    dev = btf.struct("dev")
    assert [m.name for m in dev.members] == ["id", "up", "mode", "", "name", "label", "handler"]
    table = btf.member_table(dev.id)
    assert list(table) == ["id", "up", "mode", "whole", "lo", "hi", "name", "label", "handler"]  # anonymous searched
    assert (table["hi"].bit_offset, table["up"].bitfield_size, table["mode"].bit_offset) == (96, 1, 33)
    assert btf.locate("dev", "name[3]").bit_offset == 128 + 24
    f = btf.func("dev_open")
    # d is a pointer to the *forward declaration* of struct dev: resolved to the definition by name
    assert btf.resolve(btf.resolve(f.params[0].type).target).id == dev.id  # type: ignore[attr-defined]
    assert resolve_fetcharg(f, "d->id", "x86_64") == "+0($arg1):s32"
    assert resolve_fetcharg(f, "d->up", "x86_64") == "+4($arg1):b1@0/32"
    assert resolve_fetcharg(f, "d->mode", "x86_64") == "+4($arg1):b3@1/32"
    assert resolve_fetcharg(f, "d->hi", "x86_64") == "+12($arg1):u32"
    assert resolve_fetcharg(f, "d->whole", "x86_64") == "+8($arg1):u64"
    assert resolve_fetcharg(f, "d->name:string", "x86_64") == "+16($arg1):string"
    assert resolve_fetcharg(f, "d->label:string", "x86_64") == "+0(+32($arg1)):string"
    assert resolve_fetcharg(f, "d->handler", "x86_64") == "+40($arg1):symbol"
    assert resolve_fetcharg(f, "buf", "x86_64") == "$arg3:x64"  # u8 *: bytes, not text
    assert resolve_fetcharg(f, "buf:string", "x86_64") == "+0($arg3):string"
    assert resolve_fetcharg(f, "buf[2]", "x86_64") == "+2($arg3):u8"
    assert resolve_fetcharg(f, "d->name[2]:u8[4]", "x86_64") == "+18($arg1):u8[4]"
    expect_error(FetchargTypeError, lambda: resolve(f, "flags:u8[4]", "x86_64"), "register")
    # a forward declaration without definition
    w2 = BtfWriter()
    fwd = w2.fwd("opaque")
    w2.func("use", w2.func_proto(0, [("o", w2.ptr(fwd))]))
    lone = w2.load().func("use")
    expect_error(BadMemberAccess, lambda: resolve(lone, "o->x", "x86_64"), "only declares")
    expect_error(UnknownType, lambda: w2.load().struct("opaque"), "forward-declared")
    assert resolve_fetcharg(lone, "o", "x86_64") == "$arg1:x64"


def test_return_values_and_duplicate_names() -> None:
    w, ids = sample_writer()
    w.func("dev_open", w.func_proto(0, []))  # a second static function of the same name, in another file
    btf = w.load()
    find = btf.func("dev_find")
    assert resolve_fetcharg(find, "$retval", "arm64", entry=False) == "$retval:x64"
    assert resolve_fetcharg(find, "$retval->label:string", "arm64", entry=False) == "+0(+32($retval)):string"
    assert resolve_fetcharg(find, "$retval->mode", "arm64", entry=False) == "+4($retval):b3@1/32"
    assert resolve_fetcharg(find, "id", "arm64", entry=False) == "$arg1:s32"  # entry value, Linux 6.9+
    features = {"btf", "argN", "argN_on_return"}
    assert native_fetcharg(find, "$retval->label:string", "arm64", features=features, entry=False) == (
        "$retval->label:string"
    )
    expect_error(FetchargTypeError, lambda: resolve(find, "$retval->label", "arm64", entry=False), "':string'")
    both = btf.funcs("dev_open")
    assert [f.param_names for f in both] == [("d", "flags", "buf"), ()]
    assert btf.func("dev_open") == both[0] and both[0].id == ids["func"]
    assert btf.func("dev_open").returns_void is False and both[1].returns_void
    expect_error(FetchargTypeError, lambda: resolve_return(both[1]), "returns void")


def test_old_style_bitfields() -> None:
    """Pre-kind_flag encoding: the member offset is plain, the bitfield is an INT with bits < size*8 and its own
    bit offset (which adds to the member's)."""
    w = BtfWriter()
    uint = w.int_("unsigned int", 4)
    three = w.int_("unsigned int", 4, bits=3, offset=2)
    holder = w.struct("holder", 8, [("a", uint, 0, 0), ("b", three, 32, 0)], kflag=False)
    w.func("f", w.func_proto(0, [("h", w.ptr(holder))]))
    btf = w.load()
    member = btf.member(holder, "b")
    assert member is not None and (member.bit_offset, member.bitfield_size) == (34, 3)
    assert resolve_fetcharg(btf.func("f"), "h->b", "x86_64") == "+4($arg1):b3@2/32"
    assert btf.member(holder, "a").bitfield_size == 0  # type: ignore[union-attr]


def test_bitfield_containers() -> None:
    assert bitfield_type(38 + 320, 1, 8) == (40, "b1@38/64")  # perf_event_attr.sigtrap-like
    assert bitfield_type(5, 2, 1) == (0, "b2@5/8")
    assert bitfield_type(30, 4, 4) == (3, "b4@6/16")  # crosses its u32 unit (packed struct): read from its byte
    assert bitfield_type(7, 57, 8) == (0, "b57@7/64")
    assert bitfield_type(9, 3, 0) == (1, "b3@1/8")  # declared size unknown
    with pytest.raises(FetchargUnsupported):
        bitfield_type(7, 58, 8)


def test_big_endian_blob_parses_the_same() -> None:
    little, _ = sample_writer()
    big, _ = sample_writer(big_endian=True)
    le, be = little.load(), big.load()
    assert be.big_endian and not le.big_endian
    for type_id in le.own_ids:
        assert be.type(type_id) == le.type(type_id)
    f = be.func("dev_open")
    assert resolve_fetcharg(f, "d->hi", "s390x") == "+12($arg1):u32"
    expect_error(FetchargUnsupported, lambda: resolve(f, "d->up", "s390x"), "big-endian")


def test_split_btf_synthetic() -> None:
    base_writer, ids = sample_writer()
    base = base_writer.load(name="vmlinux")
    split = BtfWriter(base)
    dev_ptr = split.ptr(ids["dev"])
    mod_struct = split.struct("mod_priv", 16, [("dev", dev_ptr, 0, 0), ("count", ids["uint"], 64, 0)])
    split.func("mod_probe", split.func_proto(ids["int"], [("priv", split.ptr(mod_struct)), ("label", ids["str"])]))
    module = split.load(name="mod")
    assert module.start_id == base.end_id and dev_ptr == base.end_id and mod_struct == base.end_id + 1
    assert module.type(ids["dev"]) is base.type(ids["dev"])  # base ids are the base's objects
    f = module.func("mod_probe")
    assert f.signature() == "int mod_probe(struct mod_priv *priv, const char *label)"
    assert resolve_fetcharg(f, "priv->dev->hi", "x86_64") == "+12(+0($arg1)):u32"
    assert resolve_fetcharg(f, "priv->count", "arm64") == "+8($arg1):u32"
    assert resolve_fetcharg(f, "label:string", "x86_64") == "+0($arg2):string"
    assert module.func("dev_open").id == ids["func"]  # found in the base
    assert module.struct("dev").id == ids["dev"]
    assert module.type(mod_struct).name == "mod_priv" and module.string(base.end_str) == "dev"  # split's 1st string
    expect_error(BtfFormatError, lambda: BtfTypes.load(split.blob()), "split BTF", "base=")
    expect_error(BtfFormatError, lambda: BtfTypes.load(split.blob(), "vmlinux"), "base must be a BtfTypes")  # type: ignore[arg-type]
    module.check_references()
    # a module written against a bigger base: its ids point past this one's end
    stray = BtfWriter(base)
    stray.func("mod_stray", stray.func_proto(ids["int"], [("p", stray.ptr(base.end_id + 40))]))
    expect_error(
        BtfFormatError,
        stray.load(name="stray").check_references,
        f"type id {base.end_id} (ptr (anonymous)) refers to type id {base.end_id + 40}, which does not exist",
    )


def struct_arg_btf() -> tuple[BtfTypes, dict[str, FuncInfo]]:
    w = BtfWriter()
    long_ = w.int_("long int", 8, signed=True)
    int128 = w.int_("__int128", 16, signed=True)
    small = w.struct("pair", 16, [("a", long_, 0, 0), ("b", long_, 64, 0)])
    tiny = w.struct("pte", 8, [("val", long_, 0, 0)])
    large = w.struct("blob", 24, [("x", long_, 0, 0), ("y", long_, 64, 0), ("z", long_, 128, 0)])
    aligned = w.struct("wide", 16, [("v", int128, 0, 0)])
    funcs = {
        "pair_then_int": w.func("pair_then_int", w.func_proto(0, [("a", long_), ("p", small), ("n", long_)])),
        "large_then_int": w.func("large_then_int", w.func_proto(0, [("b", large), ("n", long_)])),
        "tiny": w.func("tiny", w.func_proto(0, [("t", tiny), ("n", long_)])),
        "wide": w.func("wide", w.func_proto(0, [("a", long_), ("w", aligned), ("n", long_)])),
        "many": w.func("many", w.func_proto(0, [(f"a{i}", long_) for i in range(9)])),
        "i128": w.func("i128", w.func_proto(0, [("a", long_), ("v", int128), ("n", long_)])),
    }
    btf = w.load()
    return btf, {name: btf.func(name) for name in funcs}


@pytest.mark.parametrize(
    ("func", "arch", "registers"),
    [
        ("pair_then_int", "x86_64", [1, 2, 4]),
        ("pair_then_int", "arm64", [1, 2, 4]),
        ("pair_then_int", "riscv64", [1, 2, 4]),
        ("large_then_int", "x86_64", [None, 1]),  # > 16 bytes: on the stack
        ("large_then_int", "arm64", [1, 2]),  # > 16 bytes: by reference
        ("tiny", "x86_64", [1, 2]),
        ("wide", "arm64", [1, 3, 5]),  # 16-byte aligned: even register pair
        ("wide", "x86_64", [1, 2, 4]),
        ("many", "x86_64", [1, 2, 3, 4, 5, 6, None, None, None]),
        ("many", "arm64", [1, 2, 3, 4, 5, 6, 7, 8, None]),
        ("i128", "arm64", [1, 3, 5]),
        ("i128", "x86_64", [1, 2, 4]),
        ("pair_then_int", "mips", [1, 2, None]),  # unknown arch: unknowable after a struct
    ],
)
def test_argument_slots(func: str, arch: str, registers: list[Optional[int]]) -> None:
    _, funcs = struct_arg_btf()
    assert [slot.register for slot in argument_slots(funcs[func], arch)] == registers


def test_struct_arguments_in_resolver() -> None:
    _, funcs = struct_arg_btf()
    assert resolve_fetcharg(funcs["pair_then_int"], "n", "x86_64") == "$arg4:s64"
    expect_error(FetchargUnsupported, lambda: resolve(funcs["pair_then_int"], "p.a", "x86_64"), "by value")
    expect_error(FetchargTypeError, lambda: resolve(funcs["pair_then_int"], "p", "x86_64"), "pick a member")
    assert resolve_fetcharg(funcs["large_then_int"], "b.y", "arm64") == "+8($arg1):s64"  # by reference
    expect_error(FetchargUnsupported, lambda: resolve(funcs["large_then_int"], "b.y", "x86_64"), "stack")
    expect_error(FetchargUnsupported, lambda: resolve(funcs["many"], "a6", "x86_64"), "stack", "6 argument registers")
    expect_error(UnknownParameter, lambda: resolve(funcs["pair_then_int"], "$arg3", "x86_64"), "second register of 'p'")
    assert resolve_fetcharg(funcs["pair_then_int"], "$arg4", "x86_64") == "$arg4:s64"
    assert native_fetcharg(funcs["pair_then_int"], "n", "x86_64", features={"btf"}) is None  # kernel would use $arg3
    assert native_fetcharg(funcs["pair_then_int"], "a", "x86_64", features={"btf"}) == "a:s64"
    expect_error(FetchargTypeError, lambda: resolve(funcs["i128"], "v", "x86_64"), "wider than any fetch type")


def test_expression_grammar() -> None:
    parsed = parse_expression(" desc -> irq_data . irq [ 0x3 ] : x32 ")
    assert (parsed.base, parsed.steps, parsed.type) == ("desc", (("->", "irq_data"), (".", "irq"), ("[", "3")), "x32")
    assert parsed.body == "desc->irq_data.irq[3]"
    assert parse_expression("$retval->name:string").base == "$retval"
    assert parse_expression("x:b3@2/32").type == "b3@2/32"
    for bad in (
        "",
        "->x",
        "a->",
        "a.",
        "a[",
        "a[-1]",
        "a[x]",
        "a b",
        "a:",
        "a:u7",
        "$arg0",
        "$foo",
        "a->1b",
        "a:string:u8",
        "é",
    ):
        with pytest.raises(FetchargSyntaxError):
            parse_expression(bad)


# ------------------------------------------------------------------------------------------------------------
# hostile input
# ------------------------------------------------------------------------------------------------------------


def exercise(btf: BtfTypes) -> None:
    """Every query a caller could make, over every type of a (possibly corrupt) blob; each type on its own, so
    one broken record does not hide the others. KtraceErrors are the expected outcome, anything else fails."""
    for type_id in list(btf.own_ids)[:400]:
        with contextlib.suppress(KtraceError):
            t = btf.type(type_id)
            btf.type_name(type_id)
            with contextlib.suppress(KtraceError):
                btf.sizeof(type_id)
            if isinstance(btf.resolve(type_id), Composite):
                btf.member_table(type_id)
            if t.kind is Kind.FUNC:
                f = btf.func(t.name)
                argument_slots(f, "arm64")
                for expr in [*f.param_names, *(f"{p}->x" for p in f.param_names), "$retval"]:
                    with contextlib.suppress(KtraceError):
                        resolve(f, expr, "x86_64", entry=expr != "$retval")
    for name in ("dev", "dev_open", "x"):
        with contextlib.suppress(KtraceError):
            btf.func(name)
            btf.struct(name)


def check_hostile(data: bytes, base: Optional[BtfTypes] = None) -> None:
    try:
        btf = BtfTypes.load(data, base)
        exercise(btf)
    except KtraceError as exc:
        assert str(exc), "an error without a message"
    # anything else (IndexError, struct.error, RecursionError, ...) propagates and fails the test


HOSTILE = settings(max_examples=300 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HOSTILE
@given(cut=st.integers(min_value=0, max_value=2000))
def test_truncated_blobs(cut: int) -> None:
    blob = sample_writer()[0].blob()
    check_hostile(blob[: min(cut, len(blob))])


@HOSTILE
@given(data=st.data())
def test_mutated_blobs(data: st.DataObject) -> None:
    blob = bytearray(sample_writer()[0].blob())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] = data.draw(st.integers(0, 255))
    check_hostile(bytes(blob))


@HOSTILE
@given(data=st.data())
def test_mutated_words(data: st.DataObject) -> None:
    """Whole 32-bit words of the type section replaced with extreme values: ids, vlens, offsets out of range."""
    blob = bytearray(sample_writer()[0].blob())
    words = (len(blob) - 24) // 4
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, words - 1))
        value = data.draw(
            st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x0D000005, 0x04000003, 0x08000000, 2000])
        )
        struct.pack_into("<I", blob, 24 + index * 4, value)
    check_hostile(bytes(blob))


@HOSTILE
@given(garbage=st.binary(max_size=200))
def test_garbage_blobs(garbage: bytes) -> None:
    check_hostile(garbage)
    check_hostile(struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(garbage), len(garbage), 0) + garbage)


def test_loops_and_wrong_types() -> None:
    w = BtfWriter()
    a = w.next_id
    w.typedef("a", a + 1)
    w.typedef("b", a)  # a -> b -> a
    looped = w.load()
    expect_error(BtfFormatError, lambda: looped.resolve(a), "loop")
    w2 = BtfWriter()
    s = w2.next_id
    w2.struct("", 4, [("", s, 0, 0)])  # an anonymous member that is itself
    w2.func("f", w2.func_proto(0, [("p", w2.ptr(s))]))
    nested = w2.load()
    expect_error(BtfFormatError, lambda: nested.member_table(s), "nested")
    expect_error(BtfFormatError, lambda: resolve(nested.func("f"), "p->x", "x86_64"), "nested")
    w3 = BtfWriter()
    w3.func("g", 99)  # prototype id out of range
    expect_error(BtfFormatError, lambda: w3.load().func("g"), "out of range")
    w4 = BtfWriter()
    arr = w4.next_id
    w4.array(arr, 2)  # an array of itself
    expect_error(BtfFormatError, lambda: w4.load().sizeof(arr), "deep")
    expect_error(BtfFormatError, lambda: w4.load().type_name(arr), "deep")
    btf = sample_writer()[0].load()
    expect_error(KtraceError, lambda: btf.func(3), "str")  # type: ignore[arg-type]
    expect_error(KtraceError, lambda: btf.type("1"), "int")  # type: ignore[arg-type]
    expect_error(KtraceError, lambda: resolve("dev_open", "d", "x86_64"), "FuncInfo")  # type: ignore[arg-type]
    expect_error(KtraceError, lambda: resolve(btf.func("dev_open"), None, "x86_64"), "str")  # type: ignore[arg-type]
    expect_error(BtfFormatError, lambda: BtfTypes.load("not bytes"), "bytes")  # type: ignore[arg-type]
    blob = bytearray(sample_writer()[0].blob())
    blob[24 + 7] = 25  # kind 25 in the first record's info
    expect_error(BtfFormatError, lambda: BtfTypes.load(bytes(blob)), "unknown kind 25")
    expect_error(BtfFormatError, lambda: BtfTypes.load(bytes(blob[:40])), "runs past")
    expect_error(BtfUnavailable, lambda: BtfTypes.from_file("/nonexistent/btf"), "$arg1")
    expect_error(BtfUnavailable, lambda: btf_from_elf(b"\x7fELF\x02\x01" + bytes(58)), ".BTF")  # no sections
    expect_error(BtfFormatError, lambda: btf_from_elf(b"\x7fELF" + bytes(60)), "ELF class 0")
    expect_error(BtfFormatError, lambda: btf_from_elf(b"\x7fELF\x02\x01" + bytes(20)), "not an ELF")


@HOSTILE
@given(expr=st.text(alphabet=st.sampled_from(list("ab_$rgetvl0129->.[]: x%pdDsu@/")), max_size=30))
def test_hostile_expressions(expr: str) -> None:
    btf = sample_writer()[0].load()
    f = btf.func("dev_open")
    for entry in (True, False):
        try:
            result = resolve(f, expr, "x86_64", entry=entry)
        except FetchargError as exc:
            assert str(exc)
        else:
            assert len(result.text) <= 63 and ":" in result.text


@settings(
    max_examples=40 * _SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(cut=st.integers(min_value=0, max_value=6_000_000))
def test_truncated_vmlinux(vmlinux: BtfTypes, cut: int) -> None:
    data = _vmlinux_bytes()
    try:
        truncated = BtfTypes.load(data[: min(cut, len(data))])
    except BtfFormatError as exc:
        assert re.search("truncated|not BTF", str(exc)), str(exc)
    else:
        assert cut >= len(data)
        assert len(truncated) == len(vmlinux)


_VMLINUX_CACHE: list[bytes] = []


def _vmlinux_bytes() -> bytes:
    if not _VMLINUX_CACHE:
        _VMLINUX_CACHE.append(VMLINUX.read_bytes())
    return _VMLINUX_CACHE[0]
