"""The sh scripts of backends/_shell.py, run directly (no SSH) by dash and by busybox ash on the real tracefs.

``busybox`` runs them with PATH holding only busybox applets, as on a minimal board.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from pytest_ktrace.backends import _shell
from pytest_ktrace.backends._base import Mkdir, Op, OpResult, Read, Rmdir, Write

TRACEFS = Path("/sys/kernel/tracing")
needs_tracefs = pytest.mark.skipif(
    os.geteuid() != 0 or not (TRACEFS / "available_events").exists(), reason="needs root and tracefs"
)

Runner = Callable[[str], subprocess.CompletedProcess[bytes]]


@pytest.fixture(params=["dash", "busybox"])
def shell(request: pytest.FixtureRequest, tmp_path: Path) -> Runner:
    """Runs a script as ``sh -s`` does on a target: dash with coreutils, or busybox ash with only applets."""
    if request.param == "dash":
        dash = shutil.which("dash")
        if dash is None:
            pytest.skip("dash is missing")
        argv, env = [dash, "-s"], dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    else:
        bindir: Path = request.getfixturevalue("busybox_bin")
        argv, env = [str(bindir / "sh"), "-s"], {"PATH": str(bindir), "HOME": str(tmp_path)}

    def run(script: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            argv,
            input=script.encode("utf-8", "surrogateescape"),
            capture_output=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )

    run.name = request.param  # type: ignore[attr-defined]
    run.argv = argv  # type: ignore[attr-defined]
    run.env = env  # type: ignore[attr-defined]
    return run


def apply(shell: Runner, ops: list[Op], *, stop_on_error: bool = False) -> list[OpResult]:
    nonce = _shell.new_nonce()
    proc = shell(_shell.render_batch(ops, nonce, stop_on_error=stop_on_error))
    out = _shell.parse_batch(ops, proc.stdout, nonce)
    assert out.started and out.complete, (proc.stdout[-500:], proc.stderr[-500:])
    assert out.tracefs == str(TRACEFS)
    return out.results


# --- pure functions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["", "a", "it's", "'", "''", '$x `y` $(z) \\ " ; & | < > * ? [ ] ~ # !', "new\nline", "é🙂"]
)
def test_quote_is_one_literal_word(value: str) -> None:
    out = subprocess.run(["sh", "-c", f"printf '%s' {_shell.quote(value)}"], capture_output=True, check=True)
    assert out.stdout.decode() == value


def test_quote_refuses_nul() -> None:
    with pytest.raises(ValueError):
        _shell.quote("a\0b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dd: error writing './uprobe_events': Invalid argument\n0+1 records in\n0+0 records out\n", "EINVAL"),
        ("dd: error writing 'x: y': No such file or directory\n", "ENOENT"),
        ("dd: failed to open 'x': Permission denied\n", "EACCES"),
        ("dd: can't open 'x': Permission denied\n", "EACCES"),
        ("mkdir: cannot create directory './instances/a': File exists\n", "EEXIST"),
        ("mkdir: can't create directory './instances/a': File exists\n", "EEXIST"),
        ("rmdir: failed to remove 'x': Device or resource busy\n", "EBUSY"),
        ("rmdir: 'x': Resource busy\n", "EBUSY"),  # musl's words
        ("cat: read error: Invalid argument\n", "EINVAL"),
        ("cat: ./trace_marker: Invalid argument\n", "EINVAL"),
        ("something odd happened\n", ""),
    ],
)
def test_errno_from_text(text: str, expected: str) -> None:
    name, error = _shell.errno_from_text(text)
    assert name == expected
    assert error


def test_every_errno_text_maps_back() -> None:
    import errno

    for number, name in errno.errorcode.items():
        got, _ = _shell.errno_from_text(f"dd: error writing 'f': {os.strerror(number)}\n")
        assert errno.errorcode[getattr(errno, got)] == name or getattr(errno, got) == number


def test_forced_append_on_probe_lists() -> None:
    for path in ("kprobe_events", "uprobe_events", "dynamic_events", "synthetic_events", "x/uprobe_events"):
        assert _shell.forced_append(path)
    for path in ("set_event", "set_event_pid", "trace", "instances/a/trace", "events/x/enable"):
        assert not _shell.forced_append(path)


def test_frames_cannot_be_forged() -> None:
    nonce = _shell.new_nonce()
    other = _shell.new_nonce()
    assert nonce != other and len(nonce) == 35
    fake = f"\n{other} S 0 1\nforged\n{other} END\n".encode()
    ops: list[Op] = [Read("x")]
    output = (
        f"\n{nonce} START\n\n{nonce} T /t\n\n{nonce} B 0\n".encode()
        + fake
        + f"\n{nonce} S 0 0\n\n{nonce} END\n".encode()
    )
    out = _shell.parse_batch(ops, output, nonce)
    assert out.complete and out.results == [OpResult(ops[0], ok=True, data=fake.decode())]


def test_render_kill_refuses_init() -> None:
    for pid in (0, 1, -5):
        with pytest.raises(ValueError):
            _shell.render_kill(pid)


def test_sudo_prompt_detection() -> None:
    assert _shell.sudo_needs_password("sudo: a password is required\n")
    assert not _shell.sudo_needs_password("sh: 1: nope: not found\n")


# --- scripts, run by dash and busybox ---------------------------------------------------------------------


@needs_tracefs
def test_batch_on_an_instance(shell: Runner) -> None:
    inst = f"instances/ktrace_sshtest_sh_{os.getpid()}_{shell.name}"  # type: ignore[attr-defined]
    value = "a'b\"c $retval `id` ; $(echo no) \\ %s\nsecond line"
    try:
        res = apply(
            shell,
            [
                Mkdir(inst),
                Mkdir(inst),
                Write(f"{inst}/trace_marker", value),
                Read(f"{inst}/trace"),
                Read(f"{inst}/set_event_pid"),
                Read(f"{inst}/absent", missing_ok=True),
                Read(f"{inst}/absent"),
                Read("trace_marker"),  # write-only: reading fails
                Rmdir(inst),
                Rmdir(inst),
            ],
        )
        assert [(r.ok, r.errno_name) for r in res] == [
            (True, ""),
            (False, "EEXIST"),
            (True, ""),
            (True, ""),
            (True, ""),
            (True, ""),
            (False, "ENOENT"),
            (False, "EINVAL"),
            (True, ""),
            (False, "ENOENT"),
        ]
        assert res[3].data.split("tracing_mark_write: ", 1)[1] == value + "\n"
        assert res[4].data == ""
    finally:
        if (TRACEFS / inst).exists():
            os.rmdir(TRACEFS / inst)


@needs_tracefs
def test_uprobe_errors(shell: Runner, true_probe_point: str) -> None:
    group = f"ktrace_sshtest_sh_{os.getpid()}"
    event = f"{group}/{shell.name}"  # type: ignore[attr-defined]
    try:
        res = apply(
            shell,
            [
                Write("uprobe_events", f"p:{event} {true_probe_point.split(':')[0]}:0xzz"),
                Write("uprobe_events", f"-:{group}/never"),
                Write("uprobe_events", f"p:{event} {true_probe_point}"),
                Write("uprobe_events", f"p:{event} {true_probe_point}"),
                Read("uprobe_events"),
                Write("uprobe_events", f"-:{event}"),
            ],
        )
        assert [(r.ok, r.errno_name) for r in res] == [
            (False, "EINVAL"),
            (False, "ENOENT"),
            (True, ""),
            (False, "EEXIST"),
            (True, ""),
            (True, ""),
        ]
        assert f"p:{event} " in res[4].data
    finally:
        if event in (TRACEFS / "uprobe_events").read_text():
            fd = os.open(TRACEFS / "uprobe_events", os.O_WRONLY | os.O_APPEND)
            os.write(fd, f"-:{event}".encode())
            os.close(fd)


@needs_tracefs
def test_stop_on_error(shell: Runner) -> None:
    res = apply(shell, [Read("nope"), Read("tracing_on")], stop_on_error=True)
    assert [(r.ok, r.errno_name) for r in res] == [(False, "ENOENT")]
    res = apply(shell, [Read("nope"), Read("tracing_on")])
    assert [r.ok for r in res] == [False, True]


@needs_tracefs
def test_exact_bytes_without_trailing_newline(shell: Runner, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    raw = b"no newline at end \xff\xfe bytes"  # not UTF-8: comes back through surrogateescape
    blob.write_bytes(raw)
    [res] = apply(shell, [Read(str(blob))])
    assert res.data.encode("utf-8", "surrogateescape") == raw
    [wrote] = apply(shell, [Write(str(blob), res.data)])
    assert wrote.ok and blob.read_bytes() == raw + raw  # appended, not truncated


@needs_tracefs
def test_large_write_is_one_syscall(shell: Runner, tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is missing")
    target = tmp_path / "big"
    target.write_text("")
    value = "z" * 70000  # far over PIPE_BUF: printf feeds the pipe in pieces, dd must gather a full block
    nonce = _shell.new_nonce()
    ops: list[Op] = [Write(str(target), value)]
    log = tmp_path / "strace.log"
    proc = subprocess.run(
        # -ff: one log per process, so a syscall is never split by another process's lines
        [strace, "-ff", "-qq", "-y", "-e", "trace=write", "-o", str(log), *shell.argv],  # type: ignore[attr-defined]
        input=_shell.render_batch(ops, nonce).encode(),
        capture_output=True,
        env=shell.env,  # type: ignore[attr-defined]
        cwd=tmp_path,
        timeout=60,
    )
    assert _shell.parse_batch(ops, proc.stdout, nonce).results[0].ok, proc.stderr
    assert target.read_text() == value
    lines = [line for part in tmp_path.glob("strace.log.*") for line in part.read_text().splitlines()]
    into_file = [line for line in lines if f"{target}>" in line]
    assert len(into_file) == 1 and into_file[0].endswith("= 70000"), into_file


@needs_tracefs
def test_tracefs_not_found(shell: Runner, tmp_path: Path) -> None:
    nonce = _shell.new_nonce()
    ops: list[Op] = [Read("trace")]
    proc = shell(_shell.render_batch(ops, nonce, candidates=[str(tmp_path / "nothing")]))
    out = _shell.parse_batch(ops, proc.stdout, nonce)
    assert out.complete and out.tracefs is None and out.results == []
    assert out.problem is not None and out.problem.reason == "nomount"


@needs_tracefs
def test_tracefs_no_access(shell: Runner) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is missing")
    nonce = _shell.new_nonce()
    ops: list[Op] = [Read("trace")]
    proc = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *shell.argv],  # type: ignore[attr-defined]
        input=_shell.render_batch(ops, nonce, candidates=[str(TRACEFS)]).encode(),
        capture_output=True,
        env=shell.env,  # type: ignore[attr-defined]
        cwd="/",
        timeout=30,
    )
    out = _shell.parse_batch(ops, proc.stdout, nonce)
    assert out.complete and out.problem is not None and out.problem.reason == "noaccess", proc
    assert out.problem.user in ("nobody", "65534") and out.problem.path == str(TRACEFS)


@needs_tracefs
def test_describe_script(shell: Runner) -> None:
    from pytest_ktrace.backends._features import FEATURE_FILES

    nonce = _shell.new_nonce()
    proc = shell(_shell.render_describe(nonce, list(FEATURE_FILES.values())))
    info = _shell.parse_describe(proc.stdout, nonce)
    assert info.complete and info.tracefs == str(TRACEFS)
    assert info.release == os.uname().release and info.arch == os.uname().machine
    assert info.uid == "0" and info.readable and info.writable
    assert info.present == {p for p in FEATURE_FILES.values() if (TRACEFS / p).exists()}
    assert info.readme == (TRACEFS / "README").read_text()


@needs_tracefs
def test_run_script(shell: Runner, tmp_path: Path) -> None:
    inst = f"instances/ktrace_sshtest_run_{os.getpid()}_{shell.name}"  # type: ignore[attr-defined]
    os.mkdir(TRACEFS / inst)
    try:
        stdin = "line 'one'\n$two `three`\nno newline"
        nonce = _shell.new_nonce()
        argv = ["sh", "-c", 'echo "$$"; cat; printf "%s|" "$@"; echo oops >&2; exit 3', "x", "a b", "'c'", "$d"]
        proc = shell(_shell.render_run(argv, nonce, pid_files=[f"{inst}/set_event_pid"], stdin=stdin))
        out = _shell.parse_run(proc.stdout, nonce)
        assert out.complete and out.returncode == 3
        assert out.pid == out.child and out.pid is not None
        assert out.stdout.decode() == f"{out.pid}\n{stdin}a b|'c'|$d|"
        assert proc.stderr == b"oops\n"
        assert (TRACEFS / inst / "set_event_pid").read_text().split() == [str(out.pid)]
        assert not list(Path(tmp_path).glob(".ktrace-stdin*")) and not list(Path("/tmp").glob(".ktrace-stdin.*"))
    finally:
        os.rmdir(TRACEFS / inst)


@needs_tracefs
@pytest.mark.parametrize("changed", [False, True])
def test_run_script_checks_its_files_first(shell: Runner, tmp_path: Path, changed: bool) -> None:
    """A file that is not as the caller last saw it (size, mtime, inode) stops the script before anything is
    applied or run, naming it; files as they were let it go on."""
    same, other = tmp_path / "same", tmp_path / "other"
    same.write_bytes(b"\x7fELF same")
    other.write_bytes(b"\x7fELF other")

    def identity(path: Path) -> str:
        found = os.stat(path)
        return f"{found.st_size} {int(found.st_mtime)} {found.st_ino}"

    expected = [(str(same), identity(same)), (str(other), identity(other))]
    if changed:
        other.write_bytes(b"\x7fELF rebuilt, longer")
    ran = tmp_path / "ran"
    nonce = _shell.new_nonce()
    before = [Read("tracing_on")]
    script = _shell.render_run(["touch", str(ran)], nonce, before=before, unchanged=expected)
    out = _shell.parse_run(shell(script).stdout, nonce, before=before)
    assert out.complete
    if changed:
        assert out.changed == [1] and out.before == [] and out.returncode is None and not ran.exists()
    else:
        assert out.changed == [] and [r.ok for r in out.before] == [True] and out.returncode == 0 and ran.exists()


@needs_tracefs
def test_run_script_missing_program(shell: Runner) -> None:
    nonce = _shell.new_nonce()
    proc = shell(_shell.render_run(["/no/such/prog", "arg"], nonce))
    out = _shell.parse_run(proc.stdout, nonce)
    assert out.complete and out.returncode == 127 and b"/no/such/prog" in proc.stderr


# --- spawn: a command in the background, and its end ---------------------------------------------------------


def _start(shell: Runner, script: str, cwd: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        shell.argv,  # type: ignore[attr-defined]
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=shell.env,  # type: ignore[attr-defined]
        cwd=cwd,
    )
    assert proc.stdin is not None
    proc.stdin.write(script.encode())
    proc.stdin.close()
    return proc


def _read_until(proc: subprocess.Popen[bytes], done: Callable[[bytes], bool], timeout: float = 20.0) -> bytes:
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + timeout
    while not done(out) and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.05)[0]:
            out += os.read(proc.stdout.fileno(), 65536)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


@needs_tracefs
def test_spawn_script_runs_it_in_a_session_of_its_own_and_its_kill_ends_the_group(
    shell: Runner, tmp_path: Path
) -> None:
    inst = f"instances/ktrace_sshtest_spawn_{os.getpid()}_{shell.name}"  # type: ignore[attr-defined]
    os.mkdir(TRACEFS / inst)
    nonce = _shell.new_nonce()
    # deaf to SIGTERM, with a child that is too
    argv = ["sh", "-c", "trap '' TERM; sleep 300 & echo $!; while :; do sleep 0.05; done"]
    proc = _start(shell, _shell.render_spawn(argv, nonce, pid_files=[f"{inst}/set_event_pid"]), tmp_path)
    out, group_ended = b"", False
    try:
        out = _read_until(proc, lambda out: (_shell.parse_run(out, nonce).stdout or b"").endswith(b"\n"))
        started = _shell.parse_run(out, nonce)
        assert started.pid is not None and started.pid == started.child
        pid, child = started.pid, int(started.stdout)
        assert os.getsid(pid) == pid and os.getpgid(child) == pid
        assert f"KTRACE_SPAWN={nonce}".encode() in _environ_once_execed(child)
        assert (TRACEFS / inst / "set_event_pid").read_text().split() == [str(pid)]
        ended = shell(_shell.render_spawn_kill(pid, nonce, grace=0.2, leader_unreaped=True))
        assert ended.stdout.split() == [b"TERM", b"KILL"]
        assert not _alive(pid) and not _alive(child)
        group_ended = True
        out += _read_until(proc, lambda more: b" END\n" in out + more)
        assert _shell.parse_run(out, nonce).returncode == 128 + 9
    finally:
        proc.kill()
        proc.wait()
        leader = _shell.parse_run(out, nonce).pid
        if leader and not group_ended:  # a failed assertion must not leave the group running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader, signal.SIGKILL)
        os.rmdir(TRACEFS / inst)


def _environ_once_execed(pid: int) -> list[bytes]:
    """The environment of ``pid``: empty while the kernel is in the middle of its execve(), so read again then."""
    deadline = time.monotonic() + 5.0
    while True:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        if environ or time.monotonic() > deadline:
            return environ.split(b"\0")
        time.sleep(0.01)


def test_spawn_kill_spares_a_group_without_its_marker(shell: Runner) -> None:
    foreign = subprocess.Popen(["sleep", "300"], start_new_session=True)  # a group the script did not start
    try:
        ended = shell(_shell.render_spawn_kill(foreign.pid, _shell.new_nonce(), grace=0.1, leader_unreaped=False))
        assert ended.returncode == 0 and ended.stdout == b""
        assert foreign.poll() is None
    finally:
        foreign.kill()
        foreign.wait()


@needs_tracefs
def test_spawn_script_missing_program_runs_nothing(shell: Runner) -> None:
    inst = f"instances/ktrace_sshtest_nospawn_{os.getpid()}_{shell.name}"  # type: ignore[attr-defined]
    os.mkdir(TRACEFS / inst)
    try:
        for program in ("/no/such/prog", "no-such-prog"):
            nonce = _shell.new_nonce()
            proc = shell(_shell.render_spawn([program, "arg"], nonce, pid_files=[f"{inst}/set_event_pid"]))
            out = _shell.parse_run(proc.stdout, nonce)
            assert out.not_found and out.pid is None and out.returncode == 127 and out.complete
        assert (TRACEFS / inst / "set_event_pid").read_text().split() == []
    finally:
        os.rmdir(TRACEFS / inst)


def test_spawn_script_needs_setsid(tmp_path: Path) -> None:
    # busybox ash finds its own applets whatever PATH says: a target without setsid has dash and no util-linux
    dash = shutil.which("dash")
    if dash is None:
        pytest.skip("dash is missing")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sh").symlink_to(dash)
    nonce = _shell.new_nonce()
    proc = subprocess.run(
        [dash, "-s"],
        input=_shell.render_spawn(["true"], nonce).encode(),
        capture_output=True,
        env={"PATH": str(bindir)},
        timeout=60,
    )
    out = _shell.parse_run(proc.stdout, nonce)
    assert out.no_setsid and out.complete and out.child is None and out.pid is None
