"""The ``pytest-ktrace`` command: target snapshots for the fake tracefs, and leftovers of killed runs.

    pytest-ktrace snapshot --name NAME [-o FILE]                      # this machine (needs root for kallsyms)
    pytest-ktrace snapshot --host [USER@]HOST[:PORT] [--ssh-config F] [--sudo] --name NAME
    pytest-ktrace snapshot --vm x86_64|arm64 --name NAME               # boots a qemu guest, snapshots, stops it
    pytest-ktrace snapshots [NAME_OR_FILE ...]                          # shipped (or given) snapshots
    pytest-ktrace clean [--host H] [--older-than 1h] [--dry-run]      # leftovers of killed runs on a target

Errors of the plugin (:class:`~pytest_ktrace._errors.KtraceError`) print as one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ._errors import KtraceError
from .backends._base import Backend

__all__ = ["main"]

_PROG = "pytest-ktrace"
EXIT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description="pytest-ktrace tools: target snapshots, leftovers.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    snap = commands.add_parser(
        "snapshot",
        help="take a snapshot of a target (local by default)",
        description="Take a snapshot of a target: kallsyms, kprobe blacklist, event formats, tracefs README.",
    )
    where = _ssh_arguments(snap)
    where.add_argument("--vm", choices=("x86_64", "arm64"), help="boot a qemu guest of this arch and snapshot it")
    snap.add_argument(
        "--vm-kernel", metavar="SERIES", help="the guest's Debian kernel series, e.g. 6.12 (default: Debian's default)"
    )
    snap.add_argument(
        "--mount-debugfs",
        action="store_true",
        help="mount debugfs on the target if it is not mounted, to read the kprobe blacklist (implied by --vm)",
    )
    snap.add_argument("--name", required=True, help="snapshot name, e.g. debian-6.1-arm64")
    snap.add_argument("-o", "--output", metavar="FILE", type=Path, help="where to write it (default: NAME.json.gz)")

    clean = commands.add_parser(
        "clean",
        help="list and remove what killed pytest-ktrace runs left on a target (local by default)",
        description="Remove the probes and instances of runs whose owner record on the target has had no "
        "heartbeat for --older-than (or that the target outlived by a reboot). Names without an owner record "
        "and runs with a recent heartbeat are listed, never touched.",
    )
    _ssh_arguments(clean)
    clean.add_argument(
        "--older-than",
        metavar="DURATION",
        default="1h",
        help="a run whose last heartbeat is older is dead (default 1h; e.g. 90s, 30m, 6h, 2d)",
    )
    clean.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")

    listing = commands.add_parser(
        "snapshots",
        help="list the shipped snapshots (or the given ones)",
        description="List the shipped snapshots, or the given shipped names / snapshot files.",
    )
    listing.add_argument("snapshots", nargs="*", metavar="NAME_OR_FILE", help="shipped snapshot names or files")
    return parser


def _ssh_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--host", metavar="[USER@]HOST[:PORT]", help="an SSH target (ssh_config aliases work)")
    parser.add_argument("--ssh-config", metavar="FILE", type=Path, help="ssh_config file to use alone (like ssh -F)")
    parser.add_argument("--sudo", action="store_true", help="run as root on the SSH target through sudo -n")
    parser.add_argument(
        "--accept-new-host-key", action="store_true", help="trust and save an SSH host key seen for the first time"
    )
    return where


def _target_backend(args: argparse.Namespace) -> Backend:
    if (args.ssh_config or args.sudo or args.accept_new_host_key) and not args.host:
        raise KtraceError("--ssh-config, --sudo and --accept-new-host-key need --host")
    if args.host:
        from .backends.ssh._backend import SshBackend

        return SshBackend(
            args.host, ssh_config=args.ssh_config, sudo=args.sudo, accept_new_host_key=args.accept_new_host_key
        )
    from .backends._local import LocalBackend

    return LocalBackend()


def _clean(args: argparse.Namespace) -> int:
    from ._owners import find_leftovers, parse_duration, remove_leftovers

    try:
        older_than = parse_duration(args.older_than)
    except ValueError as exc:
        raise KtraceError(f"--older-than: {exc}") from None
    backend = _target_backend(args)
    try:
        info = backend.describe()
        found = find_leftovers(backend, older_than)
        print(f"target {info.name}: Linux {info.release} {info.arch}")
        for title, records in (("dead runs", found.stale), ("live runs (kept)", found.live)):
            for record in records:
                print(f"  {title}: {record.describe()}")
                objects = [*found.instances.get(record.group, ()), *(e for _, e in found.events.get(record.group, ()))]
                print(f"    {', '.join(objects) or 'nothing left in tracefs'}")
        for name in found.unowned:
            print(f"  no owner record (never touched): {name}")
        if not found.stale:
            print("nothing to remove")
        elif args.dry_run:
            print(f"--dry-run: would remove {len(found.stale)} dead run(s)")
        else:
            for what in remove_leftovers(backend, found):
                print(f"removed {what}")
    finally:
        backend.close()
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from .snapshots._snapshot import snapshot

    if (args.ssh_config or args.sudo or args.accept_new_host_key) and not args.host:
        raise KtraceError("--ssh-config, --sudo and --accept-new-host-key need --host")
    if args.vm_kernel and not args.vm:
        raise KtraceError("--vm-kernel needs --vm")
    output: Path = args.output or Path(f"{args.name}.json.gz")
    if args.vm:
        from .backends.ssh._backend import SshBackend
        from .guests import boot

        print(f"booting a {args.vm} guest...", file=sys.stderr)
        guest = boot(args.vm, kernel=args.vm_kernel)
        try:
            with SshBackend(guest.host_alias, ssh_config=guest.ssh_config_path) as guest_backend:
                taken = snapshot(guest_backend, args.name, mount_debugfs=True)
        finally:
            guest.shutdown()
    else:
        backend = _target_backend(args)
        try:
            taken = snapshot(backend, args.name, mount_debugfs=args.mount_debugfs)
        finally:
            backend.close()
    taken.save(output)
    print(f"{output}: {taken.summary()} ({output.stat().st_size} bytes)")
    return 0


def _snapshots(args: argparse.Namespace) -> int:
    from .snapshots._snapshot import load_snapshot, shipped_snapshots

    wanted: list[str] = args.snapshots or list(shipped_snapshots())
    if not wanted:
        print("no shipped snapshots")
        return 0
    loaded = [load_snapshot(name) for name in wanted]  # every one first: an unknown name prints no partial table
    rows = [("NAME", "RELEASE", "ARCH", "SYMBOLS", "EVENTS", "BLACKLIST")]
    for p in loaded:
        blacklist = "-" if p.blacklist is None else str(len(p.blacklist))
        rows.append((p.name, p.release, p.arch, str(len(p.symbols)), str(len(p.events)), blacklist))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "snapshot":
            return _snapshot(args)
        if args.command == "clean":
            return _clean(args)
        return _snapshots(args)
    except KtraceError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the error's own layout
        print(f"{_PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
