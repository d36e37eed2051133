"""The BTF of an SSH target (this machine through a loopback sshd): ``SshBackend.fetch_file`` is byte-exact, the
names resolve exactly as on the local backend, and the BTF is cached on disk by the kernel's build id."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_ktrace._identity import RunIdentity
from pytest_ktrace._session import TraceSession
from pytest_ktrace.backends._local import LocalBackend
from pytest_ktrace.btf import BtfUnavailable
from pytest_ktrace.btf._names import CACHE_ENV, NOTES, VMLINUX, build_id, kernel_btf


def test_fetch_file_is_byte_exact(backend: Any, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    every_byte = bytes(range(256)) * 3 + b"\nKTF0123456789abcdef0123456789abcdef END\n\xff\xfe\x00"  # no final newline
    target = tmp_path / "blob"
    target.write_bytes(every_byte)
    assert backend.fetch_file(str(target)) == every_byte
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert backend.fetch_file(str(empty)) == b""
    with pytest.raises(FileNotFoundError) as info:
        backend.fetch_file(str(tmp_path / "missing"))
    assert info.value.filename == str(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        backend.fetch_file(str(tmp_path))
    if Path(VMLINUX).exists():
        assert backend.fetch_file(VMLINUX) == Path(VMLINUX).read_bytes()


@pytest.mark.skipif(not Path(VMLINUX).exists(), reason="this kernel has no /sys/kernel/btf/vmlinux")
def test_names_over_ssh_match_the_local_backend_and_are_cached(
    make_backend: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    names = {"irq": "irq", "name": "new->name:string", "inner": "desc->irq_data.irq", "depth": "desc->depth"}
    local = TraceSession(LocalBackend(), RunIdentity.current(), 1).kprobe("__setup_irq", **names)
    first = make_backend()
    remote = TraceSession(first, RunIdentity.current(), 1).kprobe("__setup_irq", **names)
    assert remote.spec.fetchargs == local.spec.fetchargs
    [cached] = list(tmp_path.iterdir())
    assert cached.name == f"{first.describe().release}-{build_id(Path(NOTES).read_bytes())}.btf"
    assert cached.read_bytes() == Path(VMLINUX).read_bytes()
    assert kernel_btf(first).fetched == len(cached.read_bytes())
    second = make_backend()  # the next run's backend: the BTF does not cross again
    assert TraceSession(second, RunIdentity.current(), 1).kretprobe("__setup_irq").spec.fetchargs == (
        ("ret", "$retval:s32"),
    )
    assert kernel_btf(second).fetched == 0 and kernel_btf(second).source == str(cached)


def test_a_target_without_btf_over_ssh(make_backend: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make_backend()
    real = backend.fetch_file
    monkeypatch.setattr(backend, "fetch_file", lambda path: real(path.replace("/btf/", "/no-btf/")))
    session = TraceSession(backend, RunIdentity.current(), 1)
    with pytest.raises(BtfUnavailable) as info:
        session.kprobe("__setup_irq", irq="irq")
    assert str(info.value).startswith(
        f"cannot resolve 'irq': no BTF for {backend.name}: {VMLINUX} does not exist (kernel built without"
    ), str(info.value)
    assert session.kretprobe("__setup_irq").spec.fetchargs == (("ret", "$retval:s32"),)
