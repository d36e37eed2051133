"""Session fixtures for the qemu guest tests: one image and one booted guest per arch for the whole session."""

from __future__ import annotations

import time
from typing import Iterator

import paramiko
import pytest
from guest_helpers import connect, process_is_gone

from pytest_ktrace._errors import MissingTool
from pytest_ktrace.guests import ARCHES, GuestImage, RunningGuest, boot, build_image, qemu_available


@pytest.fixture(scope="session", params=ARCHES)
def arch(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="session")
def first_build_seconds() -> dict[str, float]:
    return {}


@pytest.fixture(scope="session")
def guest_image(arch: str, first_build_seconds: dict[str, float]) -> GuestImage:
    started = time.monotonic()
    try:
        image = build_image(arch)
    except MissingTool as missing:
        pytest.skip(f"cannot build the {arch} guest image: {missing}")
    first_build_seconds[arch] = time.monotonic() - started
    return image


@pytest.fixture(scope="session")
def running_guest(
    arch: str, guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGuest]:
    unavailable = qemu_available(arch)
    if unavailable is not None:
        pytest.skip(unavailable)
    guest = boot(arch, image=guest_image, workdir=tmp_path_factory.mktemp(f"vm-{arch}"))
    try:
        yield guest
    finally:
        guest.shutdown()
        guest.shutdown()  # idempotent
        assert process_is_gone(guest.pid), f"qemu pid {guest.pid} still exists after shutdown()"
        assert not guest.is_running()


@pytest.fixture(scope="session")
def ssh(running_guest: RunningGuest) -> Iterator[paramiko.SSHClient]:
    client = connect(running_guest)
    try:
        yield client
    finally:
        client.close()
