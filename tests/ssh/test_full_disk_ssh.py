"""A target whose disk is full, for real: its /tmp is a tiny tmpfs filled to the last byte (an sshd in a private
mount namespace, see ``SshServer(full_tmp=...)`` in sshd.py).

Only a command given ``stdin`` needs disk on the target (its stdin file): that one fails as a
:class:`TargetDiskFull` naming the host, the file and "No space left on device", and leaves no part of the file
behind. Everything else (describe, tracefs batches, probes, runs, teardown) writes only to tracefs and works as
on any target.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import ktrace_tests_sshd as harness  # tests/ssh/sshd.py, loaded by conftest.py
import pytest

from ktrace_testing import ours, tracefs_state
from pytest_ktrace import DiskFull, KtraceError, TargetDiskFull, TargetError
from pytest_ktrace.backends import _shell
from pytest_ktrace.backends._base import Mkdir, Read, Rmdir, Write
from pytest_ktrace.backends.ssh._backend import SshBackend

pytest_plugins = ["pytester"]

TRACEFS = Path("/sys/kernel/tracing")
PAGE = os.sysconf("SC_PAGE_SIZE")
MISSING_TMPDIR = "/nonexistent/ktrace-tmp"


def _mounts_named(name: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if name in line.split()]


def _leftovers(server: Any) -> list[str]:
    return sorted(name for name in os.listdir(server.target_tmp) if name.startswith(".ktrace-stdin"))


def _free_blocks(server: Any) -> int:
    return os.statvfs(server.target_tmp).f_bavail


@pytest.fixture(scope="module")
def full_server(sshd_server: Any) -> Iterator[Any]:
    """An sshd (same users and aliases as ``sshd_server``) whose sessions see a 64 KiB /tmp that is full."""
    workdir = Path(tempfile.mkdtemp(prefix="ktrace-sshd-full-"))
    workdir.chmod(0o755)
    server = harness.SshServer(
        workdir / "srv",
        full_tmp="64k",
        extra_config=[f"Match User {harness.NOSUDO}", f"  SetEnv TMPDIR={MISSING_TMPDIR}"],
    )
    try:
        server.start()
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    pid = server.proc.pid
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        # the tmpfs lived only in sshd's mount namespace: gone with its last process, never seen out here
        assert not Path(f"/proc/{pid}").exists()
        assert _mounts_named(harness.FULL_TMP_SOURCE) == []


@pytest.fixture
def full_backend(full_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[SshBackend]:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    backend = SshBackend("ktrace-test", ssh_config=full_server.ssh_config)
    try:
        yield backend
    finally:
        backend.close()


@contextmanager
def _room(server: Any, nbytes: int) -> Iterator[None]:
    """Free ``nbytes`` of the target's full /tmp for a while (shortening the filler file), then fill it again."""
    filler = server.target_tmp / ".ktrace-filler"
    size = filler.stat().st_size
    os.truncate(filler, size - nbytes)
    try:
        yield
    finally:
        with open(filler, "ab") as handle:
            handle.write(b"\0" * nbytes)
        assert filler.stat().st_size == size and _free_blocks(server) == 0


def test_the_target_tmp_is_really_full_and_only_there(full_server: Any) -> None:
    assert _free_blocks(full_server) == 0
    assert os.statvfs(full_server.target_tmp).f_blocks == 64 * 1024 // os.statvfs(full_server.target_tmp).f_frsize
    assert os.statvfs("/tmp").f_bavail > 0  # this machine's /tmp is untouched
    assert _mounts_named(harness.FULL_TMP_SOURCE) == []  # the tmpfs is not visible outside the namespace
    listing = full_server.ssh_cli("ktrace-test", "df -P /tmp | tail -1")
    assert listing.returncode == 0 and listing.stdout.split()[0] == harness.FULL_TMP_SOURCE, listing


@pytest.mark.parametrize("size", [1, 200_000], ids=["one-byte", "200k"])
def test_stdin_on_a_full_tmp_names_host_file_and_enospc(full_backend: SshBackend, full_server: Any, size: int) -> None:
    marker = full_server.workdir / f"ran-{size}"  # visible on both sides: the server's own directory
    with pytest.raises(TargetDiskFull) as info:
        full_backend.run(["touch", str(marker)], stdin="x" * size)
    err = info.value
    text = str(err)
    assert isinstance(err, TargetError) and isinstance(err, DiskFull) and isinstance(err, KtraceError)
    assert err.host == "ktrace-test" and "on ktrace-test" in text
    assert "No space left on device (ENOSPC)" in text and err.cause == "ENOSPC"
    assert err.path.startswith("/tmp/.ktrace-stdin.") and err.path in text
    assert err.command == "touch " + str(marker)
    assert "the command was not run" in text
    assert not marker.exists()
    assert _leftovers(full_server) == []
    assert _free_blocks(full_server) == 0


def test_a_write_that_fails_half_way_leaves_no_part_of_the_file(full_backend: SshBackend, full_server: Any) -> None:
    # 8 KiB free, 64 KiB of stdin: cat writes two pages, then ENOSPC; what it wrote must go again
    with _room(full_server, 2 * PAGE):
        assert _free_blocks(full_server) == 2
        with pytest.raises(TargetDiskFull, match="No space left on device"):
            full_backend.run(["cat"], stdin="y" * (64 * 1024))
        assert _leftovers(full_server) == []
        assert _free_blocks(full_server) == 2  # the two pages written are free again
        # stdin that fits still works: the failure was the lack of space and nothing else
        fits = full_backend.run(["cat"], stdin="z" * 1000)
        assert fits.returncode == 0 and fits.stdout == "z" * 1000
        assert _leftovers(full_server) == []  # removed by the child once it had it open


def test_other_stdin_failures_are_target_errors_with_the_shells_reason(full_server: Any) -> None:
    # not a full disk: for this user the server sets TMPDIR to a directory that does not exist
    backend = SshBackend("ktrace-test-nosudo", ssh_config=full_server.ssh_config)
    try:
        with pytest.raises(TargetError) as info:
            backend.run(["true"], stdin="x")
    finally:
        backend.close()
    err = info.value
    assert not isinstance(err, DiskFull)
    assert err.host == "ktrace-test-nosudo" and "on ktrace-test-nosudo" in str(err)
    assert f"to {MISSING_TMPDIR}/.ktrace-stdin." in str(err) and "the command was not run" in str(err)
    assert "nonexistent" in str(err).lower().split(": ", 2)[-1], str(err)  # the shell's own words for it


def test_only_stdin_needs_disk(full_backend: SshBackend, full_server: Any, instance: str, uprobe_group: str,
                               true_probe_point: str) -> None:  # fmt: skip
    info = full_backend.describe()
    assert info.tracefs == str(TRACEFS)
    event = f"{uprobe_group}/full"
    armed = full_backend.apply(
        [
            Mkdir(instance),
            Write("uprobe_events", f"p:{event} {true_probe_point}"),
            Write(f"{instance}/events/{event}/enable", "1"),
        ],
        stop_on_error=True,
    )
    assert [r.ok for r in armed] == [True, True, True], armed
    run = full_backend.run(
        [true_probe_point.split(":")[0]], pid_files=[f"{instance}/set_event_pid"], after=[Read(f"{instance}/trace")]
    )
    assert run.returncode == 0 and run.pid > 0
    assert f"true-{run.pid} " in run.after[0].data and " full: (" in run.after[0].data, run.after[0].data
    # teardown writes to tracefs only: it works with /tmp full
    undone = full_backend.apply(
        [Write(f"{instance}/events/{event}/enable", "0"), Write("uprobe_events", f"-:{event}"), Rmdir(instance)]
    )
    assert [r.ok for r in undone] == [True, True, True], undone
    assert f"{event} " not in (TRACEFS / "uprobe_events").read_text()
    assert not (TRACEFS / instance).exists()
    assert _leftovers(full_server) == [] and _free_blocks(full_server) == 0


def test_the_plugin_on_a_full_target(full_server: Any, pytester: pytest.Pytester, probed: Path) -> None:
    # the binary must be where the target sees it: its /tmp (where pytest keeps `probed`) is another filesystem
    binary = full_server.workdir / "probed"
    shutil.copy2(probed, binary)
    pytester.makepyfile(
        test_full=f"""
        import pytest
        from pytest_ktrace import TargetDiskFull

        BIN = {str(binary)!r}

        def test_probes_and_runs_work_and_stdin_fails_clearly(ktrace):
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "2"])
            probe.assert_call_count(3)
            with pytest.raises(TargetDiskFull) as info:
                ktrace.run(["cat"], stdin="data" * 10000)
            assert "No space left on device" in str(info.value)
            ktrace.run([BIN, "fib", "3"])
            probe.assert_call_count(3 + 5)

        def test_an_unexpected_full_disk_reads_clearly(ktrace):
            probe = ktrace.uprobe(BIN, "fib")
            ktrace.run(["cat"], stdin="data")
        """
    )
    before = ours(tracefs_state())
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--ktrace-host=ktrace-test", f"--ktrace-ssh-config={full_server.ssh_config}"
    )
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    assert "TargetDiskFull: could not write the stdin of 'cat' to /tmp/.ktrace-stdin." in text, text
    assert "on ktrace-test: No space left on device (ENOSPC)" in text
    assert "ssh.py" not in text and "_shell.py" not in text  # our frames are hidden: the message carries it all
    assert set(ours(tracefs_state())) <= set(before)  # probes and instances of both tests removed
    assert _leftovers(full_server) == [] and _free_blocks(full_server) == 0


# --- the script itself, under dash and busybox ash, with TMPDIR on a full tmpfs -------------------------------


@pytest.fixture(params=["dash", "busybox"])
def target_shell(request: pytest.FixtureRequest) -> Callable[[Path], list[str]]:
    """argv of a target shell with TMPDIR set: dash with this machine's tools, or busybox ash with only its
    applets."""
    if request.param == "dash":
        dash = shutil.which("dash")
        if dash is None:
            pytest.skip("dash is missing")
        return lambda tmpdir: ["env", f"TMPDIR={tmpdir}", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", dash, "-s"]
    bindir: Path = request.getfixturevalue("busybox_bin")
    return lambda tmpdir: ["env", "-i", f"TMPDIR={tmpdir}", f"PATH={bindir}", str(bindir / "sh"), "-s"]


# $1 the tmpfs mount point, $2 a report file outside it, $3 a directory whose files go in before filling (or ""),
# $4 bytes to leave free, then the command. The report: its exit status, free blocks, sha256 of each file but the
# filler.
_IN_FULL_TMPFS = r"""set -e
mount -t tmpfs -o size=64k ktrace-full-script "$1"
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
"""


def _in_full_tmpfs(
    mount_point: Path, command: list[str], *, seed: Path | None = None, free: int = 0, stdin: bytes = b""
) -> tuple[subprocess.CompletedProcess[bytes], int, int, dict[str, str]]:
    """Run ``command`` with a full 64 KiB tmpfs on ``mount_point`` in a private mount namespace: (the process,
    its exit status, the tmpfs's free blocks after it, {file left on the tmpfs: sha256})."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed: apt-get install util-linux", pytrace=False)
    mount_point.mkdir()
    report = mount_point.with_name(mount_point.name + ".report")
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_FULL_TMPFS, "sh",
         str(mount_point), str(report), str(seed or ""), str(free), *command],
        input=stdin,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert report.exists(), proc.stderr
    rc_line, free_line, *lines = report.read_text().splitlines()
    files = {name.removeprefix("./"): digest for digest, name in (line.split() for line in lines)}
    assert _mounts_named("ktrace-full-script") == [] and not any(mount_point.iterdir())
    return proc, int(rc_line.split("=")[1]), int(free_line.split("=")[1]), files


@pytest.mark.parametrize("free", [0, 8192], ids=["full", "8k-free"])
def test_stdin_script_on_a_full_tmpdir(target_shell: Callable[[Path], list[str]], tmp_path: Path, free: int) -> None:
    mount_point = tmp_path / "full"
    nonce = _shell.new_nonce()
    script = _shell.render_run(["cat"], nonce, stdin="s" * 65536)
    proc, rc, free_blocks, files = _in_full_tmpfs(
        mount_point, target_shell(mount_point), free=free, stdin=script.encode()
    )
    out = _shell.parse_run(proc.stdout, nonce)
    assert out.complete and out.started and out.returncode is None and out.child is None  # not run
    assert out.stdin_error is not None, (proc.stdout, proc.stderr)
    path, error = out.stdin_error
    assert path.startswith(f"{mount_point}/.ktrace-stdin.")
    assert _shell.errno_from_text(error) == ("ENOSPC", "No space left on device"), error
    assert rc == 0
    assert files == {}  # no part of the stdin file is left
    assert free_blocks == free // PAGE  # what was written of it is free again


_SAVE_HOST_KEY = r"""
import json, sys
from pathlib import Path
from pytest_ktrace.backends.ssh._backend import SshBackend
from pytest_ktrace._errors import DiskFull

backend = SshBackend("ktrace-test", ssh_config=Path(sys.argv[1]), accept_new_host_key=True)
try:
    backend.describe()
    print(json.dumps({"ok": True}))
except DiskFull as exc:
    print(json.dumps({"type": type(exc).__name__, "error": str(exc), "path": exc.path}))
finally:
    backend.close()
"""


def test_accepting_a_host_key_into_a_full_known_hosts(sshd_server: Any, tmp_path: Path) -> None:
    disk = tmp_path / "home-ssh"
    seed = tmp_path / "seed"
    seed.mkdir()
    head = b"# someone's known_hosts, one page long"
    mine = head + b"." * (PAGE - len(head) - 1) + b"\n"  # exactly a page: appending needs a new one
    (seed / "known_hosts").write_bytes(mine)
    config = tmp_path / "ssh_config"
    config.write_text(
        Path(sshd_server.ssh_config).read_text().replace(str(sshd_server.known_hosts), str(disk / "known_hosts"))
    )
    env_python = [sys.executable, "-c", _SAVE_HOST_KEY, str(config)]
    proc, rc, free, files = _in_full_tmpfs(disk, ["env", "-u", "SSH_AUTH_SOCK", *env_python], seed=seed)
    assert rc == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["type"] == "DiskFull" and result["path"] == str(disk / "known_hosts")
    assert result["error"] == (
        f"cannot write the new host key of [127.0.0.1]:{sshd_server.port} to {disk}/known_hosts: "
        "no space left on device (ENOSPC); the file is as it was"
    )
    assert files == {"known_hosts": hashlib.sha256(mine).hexdigest()} and free == 0


def test_the_local_copy_of_a_remote_binary_on_a_full_controller_disk(
    sshd_server: Any, pytester: pytest.Pytester, probed: Path
) -> None:
    # the controller's TMPDIR is full: the uprobe needs a local copy of the remote ELF file to read its symbols
    pytester.makepyfile(
        test_copy=f"""
        def test_uprobe(ktrace):
            probe = ktrace.uprobe({str(probed)!r}, "fib")
            ktrace.run([{str(probed)!r}, "fib", "2"])
            probe.assert_call_count(3)
        """
    )
    disk = pytester.path / "controller-tmp"
    before = ours(tracefs_state())
    command = [
        "env", "-u", "SSH_AUTH_SOCK", f"TMPDIR={disk}", sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
        "-s", "-q", "test_copy.py", "--ktrace-host=ktrace-test", f"--ktrace-ssh-config={sshd_server.ssh_config}",
    ]  # fmt: skip
    # one page free: Python checks a temporary directory by writing 4 bytes to it (and skips one that is full)
    proc, rc, free, files = _in_full_tmpfs(disk, command, free=PAGE)
    out = proc.stdout.decode()
    assert rc == 1, out[-3000:]
    assert f"cannot write the local copy of ktrace-test:{probed} at {disk}/ktrace-elf-" in out, out[-3000:]
    assert "no space left on device (ENOSPC); the partial file was removed" in out
    assert "Traceback" not in out and "OSError" not in out
    assert files == {} and free == 1
    assert set(ours(tracefs_state())) <= set(before)
