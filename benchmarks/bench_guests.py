"""Benchmark the qemu guests: cold vs cached image build, and boot-to-SSH-ready time per arch.

Usage: .venv/bin/python benchmarks/bench_guests.py [--arch x86_64 --arch arm64] [--runs 3] [--no-cold]

"cold" builds into an empty cache directory (so it includes downloading the .debs with apt-get); "cached" is
the second call on that cache. Per boot it reports ``boot_seconds`` (qemu start until the guest's SSH server
answers through the forward) and the time until a paramiko session has run ``true`` (connect + key exchange +
auth + one exec), each as the median over ``--runs`` boots.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import paramiko

from pytest_ktrace.guests import ARCHES, GuestImage, boot, build_image, qemu_available


def time_builds(arch: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="ktrace-bench-cache-") as cache:
        started = time.monotonic()
        build_image(arch, cache_dir=Path(cache))
        cold = time.monotonic() - started
        started = time.monotonic()
        build_image(arch, cache_dir=Path(cache))
        cached = time.monotonic() - started
    return cold, cached


def time_boot(arch: str, image: GuestImage) -> tuple[float, float]:
    started = time.monotonic()
    with boot(arch, image=image) as guest:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.load_host_keys(str(guest.known_hosts_path))
        client.connect(
            guest.host,
            port=guest.port,
            username=guest.user,
            key_filename=str(guest.key_path),
            allow_agent=False,
            look_for_keys=False,
        )
        try:
            _, stdout, _ = client.exec_command("true")
            status = stdout.channel.recv_exit_status()
        finally:
            client.close()
        if status != 0:
            raise RuntimeError(f"`true` exited {status} in the {arch} guest")
        return guest.boot_seconds, time.monotonic() - started


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--arch", action="append", choices=ARCHES, help="repeatable; default: all")
    parser.add_argument("--runs", type=int, default=3, help="boots per arch (median reported)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold build (it downloads ~70 MB)")
    args = parser.parse_args(argv)
    for arch in args.arch or ARCHES:
        unavailable = qemu_available(arch)
        if unavailable is not None:
            print(f"{arch}: skipped ({unavailable})")
            continue
        if not args.no_cold:
            cold, cached = time_builds(arch)
            print(f"{arch}: build cold {cold:.2f}s (incl. .deb download), cached {cached * 1000:.2f}ms")
        image = build_image(arch)
        samples = [time_boot(arch, image) for _ in range(args.runs)]
        ready = statistics.median(sample[0] for sample in samples)
        session = statistics.median(sample[1] for sample in samples)
        print(
            f"{arch}: boot to SSH-ready {ready:.2f}s, to first exec {session:.2f}s "
            f"(median of {args.runs}; all ready: {', '.join(f'{s[0]:.2f}' for s in samples)})"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
