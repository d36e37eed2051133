"""The built-in backends, offered as ordinary ``trylast`` hook implementations so other plugins come first."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import pytest

from .._errors import hide_for_ktrace_errors
from ._base import Backend

if TYPE_CHECKING:
    from .._targets import TargetSpec

__all__ = ["NAMES", "pytest_ktrace_make_backend"]

NAMES = ("local", "ssh", "vm", "fake")

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals


@pytest.hookimpl(trylast=True)
def pytest_ktrace_make_backend(config: pytest.Config, target: TargetSpec) -> Optional[Backend]:
    if target.backend == "local":
        from ._local import LocalBackend

        return LocalBackend(target.tracefs)
    if target.backend == "ssh" and target.host:
        from .ssh._backend import SshBackend

        return SshBackend(
            target.host,
            ssh_config=Path(target.ssh_config).expanduser() if target.ssh_config else None,
            sudo=target.sudo,
            accept_new_host_key=target.accept_new_host_key,
            tracefs=target.tracefs,
            identity=Path(target.ssh_identity) if target.ssh_identity else None,
            password=target.ssh_password,
        )
    if target.backend == "vm" and target.vm:
        return _boot_vm(config, target)
    if target.backend == "fake":
        from .._errors import KtraceError
        from ..fake._backend import FakeBackend
        from ..snapshots._snapshot import load_snapshot, shipped_snapshots

        if not target.snapshot:
            raise KtraceError(
                "the fake backend imitates a target snapshot: pass --ktrace-snapshot=NAME or a file from "
                f"`pytest-ktrace snapshot` (shipped: {', '.join(shipped_snapshots())}); a test with a cassette "
                "uses the snapshot it was recorded on"
            )
        return FakeBackend(load_snapshot(target.snapshot))
    return None


def _boot_vm(config: pytest.Config, target: TargetSpec) -> Backend:
    """Boot a disposable guest once per run and reach it like any SSH board; powered off at the run's end. Its
    kernel is Debian's, or the user's (``vm_kernel``, checked before it boots) with its modules tree."""
    from .. import guests
    from .._targets import state_key
    from .ssh._backend import SshBackend

    arch = target.vm or ""
    reason = guests.qemu_available(arch)
    if reason is not None:
        from .._errors import MissingTool

        raise MissingTool(f"cannot boot the {arch} guest: {reason}")
    image = None
    if target.vm_kernel:
        modules = Path(target.vm_modules) if target.vm_modules else None
        image = guests.build_user_image(Path(target.vm_kernel), modules, arch=arch)
    guest = guests.boot(arch, image=image)
    config.stash[state_key()].closers.append(guest.shutdown)
    return SshBackend(guest.host_alias, ssh_config=guest.ssh_config_path)
