"""A full disk on the controller, for real: a tiny tmpfs filled to the last byte, mounted in a private mount
namespace (``unshare --mount``) of a subprocess, so this machine never sees it and it ends with that process.

What pytest-ktrace writes here (cassettes, the files of :mod:`pytest_ktrace._files`) fails with a
:class:`~pytest_ktrace._errors.DiskFull` naming the file and "no space left on device", and leaves nothing
half-written: no partial cassette a later replay could trust, no temporary file, no half line in known_hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ktrace_testing import ours, tracefs_state

pytest_plugins = ["pytester"]

PAGE = os.sysconf("SC_PAGE_SIZE")
TMPFS_NAME = "ktrace-full-disk"

# $1 the mount point, $2 a report file outside it, $3 a directory whose files are copied in first (or ""),
# $4 bytes to leave free; then the command. The report gets its exit status, the tmpfs's free blocks and the
# sha256 of every file on it but the filler.
_IN_FULL_TMPFS = r"""set -e
mount -t tmpfs -o size=2m "$KT_NAME" "$1"
[ -z "$3" ] || cp -a "$3/." "$1/"
dd if=/dev/zero of="$1/.filler" bs=4096 >/dev/null 2>&1 || true
[ "$4" = 0 ] || truncate -s "-$4" "$1/.filler"
m=$1 r=$2
shift 4
set +e
"$@"
rc=$?
{ echo "rc=$rc"; echo "free=$(stat -f -c %a "$m")"; cd "$m"; find . -type f ! -name .filler -exec sha256sum {} +
} >"$r"
exit "$rc"
"""


def _need_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs in a private mount namespace")
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed: apt-get install util-linux", pytrace=False)


def _mounts_named(name: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if name in line.split()]


def in_full_tmpfs(
    mount_point: Path, command: list[str], *, cwd: Path, seed: Path | None = None, free: int = 0,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], int, int, dict[str, str]]:  # fmt: skip
    """Run ``command`` with a full 2 MiB tmpfs on ``mount_point`` (``free`` bytes left, ``seed``'s files put in
    before filling): (the process, its exit status, free blocks after, {file on the tmpfs: sha256})."""
    mount_point.mkdir(parents=True, exist_ok=True)
    report = cwd / f".report-{os.getpid()}-{len(os.listdir(cwd))}"
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_FULL_TMPFS, "sh",
         str(mount_point), str(report), str(seed or ""), str(free), *command],
        cwd=cwd,
        env={**os.environ, **(env or {}), "KT_NAME": TMPFS_NAME},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = report.read_text().splitlines()
    report.unlink()
    rc = int(lines[0].split("=")[1])
    free_blocks = int(lines[1].split("=")[1])
    files = {name[2:] if name.startswith("./") else name: digest for digest, name in (ln.split() for ln in lines[2:])}
    assert _mounts_named(TMPFS_NAME) == [], "the tmpfs must end with its namespace"
    assert not any(mount_point.iterdir()), "nothing was written to the real directory under the mount"
    return proc, rc, free_blocks, files


# --- cassettes --------------------------------------------------------------------------------------------


_RECORDED = """
def test_one(ktrace):
    probe = ktrace.uprobe(BIN, "fib")
    ktrace.run([BIN, "fib", "2"])
    probe.assert_call_count(3)
"""


def _pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *args]


def test_recording_onto_a_full_disk_names_the_cassette_and_leaves_none(pytester: pytest.Pytester, probed: Path) -> None:
    _need_namespaces()
    pytester.makepyfile(test_rec=f"BIN = {str(probed)!r}\n" + textwrap.dedent(_RECORDED))
    cassettes = pytester.path / "cassettes"
    before = ours(tracefs_state())
    proc, rc, free, files = in_full_tmpfs(cassettes, _pytest("test_rec.py", "--ktrace-record"), cwd=pytester.path)
    out = proc.stdout
    assert rc == 1, out
    assert "1 passed, 1 error" in out, out[-3000:]
    path = cassettes / "test_rec" / "test_one.json"
    assert f"cannot write cassette {path}: no space left on device (ENOSPC); nothing of it was left behind" in out
    assert "Traceback" not in out and "OSError" not in out and "_files.py" not in out, out[-3000:]
    assert files == {}  # no cassette, no temporary file: only the (empty) directory it would have gone into
    assert free == 0
    assert set(ours(tracefs_state())) <= set(before)  # the test's probes were removed before the cassette write


def test_a_failed_rewrite_keeps_the_previous_cassette_whole(pytester: pytest.Pytester, probed: Path) -> None:
    _need_namespaces()
    pytester.makepyfile(test_rec=f"BIN = {str(probed)!r}\n" + textwrap.dedent(_RECORDED))
    first = subprocess.run(
        _pytest("test_rec.py", "--ktrace-record"), cwd=pytester.path, capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stdout[-3000:]
    recorded = pytester.path / "cassettes"
    old = hashlib.sha256((recorded / "test_rec" / "test_one.json").read_bytes()).hexdigest()
    snapshots = {
        str(path.relative_to(recorded)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (recorded / "_targets").glob("*.json.gz")
    }
    assert len(snapshots) == 1  # the recording kernel's snapshot, beside the cassettes
    seed = pytester.path / "seed"
    recorded.rename(seed)
    # the rewrite fails on the full disk; the replay afterwards (same namespace) still trusts the whole old one
    both = ["sh", "-c", f'{" ".join(_pytest("test_rec.py", "--ktrace-record"))}; r=$?; '
            f'{" ".join(_pytest("test_rec.py", "--ktrace-backend=fake"))} || exit 99; exit "$r"']  # fmt: skip
    proc, rc, free, files = in_full_tmpfs(recorded, both, cwd=pytester.path, seed=seed)
    out = proc.stdout
    assert rc == 1, out[-3000:]
    path = recorded / "test_rec" / "test_one.json"
    assert f"cannot write cassette {path}: no space left on device (ENOSPC); the previous version is unchanged" in out
    # byte for byte the old cassette and the kernel snapshot recorded with it, and no temporary file
    assert files == {"test_rec/test_one.json": old, **snapshots}
    assert out.count(" passed") == 2 and "1 passed, 1 error" in out, out[-3000:]  # the replay passed
    assert free == 0


# --- the write helpers, one by one ------------------------------------------------------------------------

_HELPERS = r"""
import json, os, sys
from pathlib import Path
from pytest_ktrace._files import append_atomic, write_atomic, write_private_temp
from pytest_ktrace._errors import DiskFull

d = Path(sys.argv[1])
result = {}

def attempt(name, call):
    try:
        call()
        result[name] = "ok"
    except DiskFull as exc:
        result[name] = {"error": str(exc), "path": exc.path}

attempt("write_new", lambda: write_atomic(d / "new.json", b"n" * 20000, what="cassette"))
attempt("write_over", lambda: write_atomic(d / "old.json", b"o" * 20000, what="cassette"))
attempt("append", lambda: append_atomic(d / "known_hosts", b"k" * 20000, what="the host key to"))
attempt("append_new", lambda: append_atomic(d / "fresh", b"f" * 20000, what="the host key to"))
attempt("temp", lambda: write_private_temp(b"t" * 20000, prefix="ktrace-elf-", what="copy of /bin/x"))
attempt("small", lambda: write_atomic(d / "small.json", b"s" * 100, what="cassette"))
print(json.dumps(result))
"""


def test_each_write_helper_on_a_nearly_full_disk(tmp_path: Path) -> None:
    _need_namespaces()
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "old.json").write_text("the old cassette\n")
    (seed / "known_hosts").write_bytes(b"#" + b"x" * (PAGE - 2) + b"\n")  # ends on a page: appends need a new one
    disk = tmp_path / "disk"
    proc, rc, free, files = in_full_tmpfs(
        disk,
        [sys.executable, "-c", _HELPERS, str(disk)],
        cwd=tmp_path,
        seed=seed,
        free=2 * PAGE,  # room for a part of each write: every one fails half-way, not at once
        env={"TMPDIR": str(disk)},
    )
    assert rc == 0, proc.stderr
    result = json.loads(proc.stdout)
    nospace = "no space left on device (ENOSPC)"
    assert result["write_new"]["error"] == (
        f"cannot write cassette {disk}/new.json: {nospace}; nothing of it was left behind"
    )
    assert result["write_over"]["error"] == (
        f"cannot write cassette {disk}/old.json: {nospace}; the previous version is unchanged"
    )
    assert result["append"]["error"] == (
        f"cannot write the host key to {disk}/known_hosts: {nospace}; the file is as it was"
    )
    assert result["append_new"]["path"] == f"{disk}/fresh"
    assert result["temp"]["error"].startswith(f"cannot write copy of /bin/x {disk}/ktrace-elf-")
    assert result["temp"]["error"].endswith(f"{nospace}; the partial file was removed")
    assert result["small"] == "ok"  # what fits is still written
    sha = hashlib.sha256
    assert files == {
        "old.json": sha(b"the old cassette\n").hexdigest(),
        "known_hosts": sha(b"#" + b"x" * (PAGE - 2) + b"\n").hexdigest(),
        "small.json": sha(b"s" * 100).hexdigest(),
    }
    assert free == 1  # every partial write was undone; small.json took one page of the two
