"""SshBackend against a real sshd on loopback and this machine's real tracefs (no mocks of paramiko).

The fixtures (conftest.py) start one sshd per session; ``backend`` logs in as ``ktrace-root`` (uid 0, /bin/sh).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_ktrace._errors import CommandTimeout, ConnectionLost, TargetError, TracefsUnavailable
from pytest_ktrace.backends._base import Backend, Mkdir, PreparingRuns, Read, Rmdir, Write
from pytest_ktrace.backends.ssh._backend import SshBackend
from pytest_ktrace.backends.ssh._config import parse_target

TRACEFS = Path("/sys/kernel/tracing")

HOSTILE = [
    "plain",
    "it's a 'quoted' \"double\" value",
    "$retval $arg1 ${HOME} $(id) `id` ; rm -rf /nonexistent ; echo pwned",
    "back\\slash \\n \\0 \\' %s %d %% %n",
    "multi\nline\n\nvalue",
    "no trailing newline",
    "trailing newline\n",
    "tab\tand\r carriage",
    "KTF0123456789abcdef0123456789abcdef S 0 0",
    "\nKTFdeadbeef END\n",
    "unicode: é ü 漢字 🙂",
    "-n",
    "--",
    "",
]


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


# --- describe ---------------------------------------------------------------------------------------------


def test_describe_one_round_trip_and_cached(backend: SshBackend) -> None:
    assert isinstance(backend, Backend)
    info = backend.describe()
    assert backend.round_trips == 1
    assert info.name == "ktrace-test" and info.backend == "ssh"
    assert info.release == os.uname().release
    assert info.arch == os.uname().machine
    assert info.tracefs == str(TRACEFS)
    assert info.has("uprobes") == (TRACEFS / "uprobe_events").exists()
    assert info.has("kprobes") == (TRACEFS / "kprobe_events").exists()
    assert info.has("instances") and info.has("set_event_pid")
    assert info.has("argN") == ("$arg<N>" in (TRACEFS / "README").read_text())
    assert backend.describe() is info
    assert backend.round_trips == 1


def test_describe_explicit_tracefs_not_mounted(make_backend: Callable[..., Any], tmp_path: Path) -> None:
    empty = tmp_path / "no-tracefs-here"
    empty.mkdir()
    b = make_backend(tracefs=str(empty))
    with pytest.raises(TracefsUnavailable) as err:
        b.describe()
    assert "mount -t tracefs nodev /sys/kernel/tracing" in str(err.value)
    assert "ktrace-test" in str(err.value) and err.value.host == "ktrace-test"
    assert b.round_trips == 1


# --- apply ------------------------------------------------------------------------------------------------


def test_instance_ops_in_one_round_trip(backend: SshBackend, instance: str) -> None:
    results = backend.apply(
        [
            Mkdir(instance),
            Write(f"{instance}/trace_marker", "hello from ssh"),
            Read(f"{instance}/trace"),
            Read(f"{instance}/tracing_on"),
            Read(f"{instance}/no_such_file", missing_ok=True),
        ]
    )
    assert backend.round_trips == 1
    assert [r.ok for r in results] == [True] * 5
    assert "tracing_mark_write: hello from ssh" in results[2].data
    assert results[3].data == "1\n"
    assert results[4].data == ""
    assert (TRACEFS / instance).is_dir()
    [gone] = backend.apply([Rmdir(instance)])
    assert gone.ok and not (TRACEFS / instance).exists()
    assert backend.round_trips == 2


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_values_round_trip_through_trace_marker(backend: SshBackend, instance: str, value: str) -> None:
    mkdir, write, read = backend.apply(
        [Mkdir(instance), Write(f"{instance}/trace_marker", value), Read(f"{instance}/trace")]
    )
    assert mkdir.ok and write.ok and read.ok, (write, read)
    if not value:  # no write() at all: nothing is recorded
        assert "tracing_mark_write" not in read.data
        backend.apply([Rmdir(instance)])
        return
    body = read.data.split("tracing_mark_write: ", 1)[1]
    # the kernel appends a newline to a marker that lacks one
    assert body == (value if value.endswith("\n") else value + "\n")
    backend.apply([Rmdir(instance)])


def test_uprobe_on_true_add_list_remove(backend: SshBackend, uprobe_group: str, true_probe_point: str) -> None:
    event = f"{uprobe_group}/t"
    added, listing, fmt = backend.apply(
        [
            Write("uprobe_events", f"p:{event} {true_probe_point}"),
            Read("uprobe_events"),
            Read(f"events/{event}/format"),
        ]
    )
    assert added.ok, added
    assert f"p:{event} " in listing.data
    assert fmt.ok and fmt.data.startswith("name: t\n")
    [removed] = backend.apply([Write("uprobe_events", f"-:{event}")])
    assert removed.ok
    assert event not in (TRACEFS / "uprobe_events").read_text()


def test_errno_names(backend: SshBackend, uprobe_group: str, instance: str, true_probe_point: str) -> None:
    event = f"{uprobe_group}/e"
    res = backend.apply(
        [
            Write("uprobe_events", f"p:{event} {true_probe_point.rsplit(':', 1)[0]}:0xzz"),  # bad offset
            Write("uprobe_events", f"-:{uprobe_group}/never_created"),
            Write("uprobe_events", f"p:{event} {true_probe_point}"),
            Write("uprobe_events", f"p:{event} {true_probe_point}"),  # the exact same probe again
            Mkdir(instance),
            Mkdir(instance),
            Read("no_such_tracefs_file"),
            Write(f"{instance}/events/{event}/enable", "1"),
            Write("uprobe_events", f"-:{event}"),  # enabled: busy
            Write(f"{instance}/events/{event}/enable", "0"),
            Write("uprobe_events", f"-:{event}"),
            Rmdir(instance),
            Rmdir(instance),
        ]
    )
    names = [(r.ok, r.errno_name) for r in res]
    assert names == [
        (False, "EINVAL"),
        (False, "ENOENT"),
        (True, ""),
        (False, "EEXIST"),
        (True, ""),
        (False, "EEXIST"),
        (False, "ENOENT"),
        (True, ""),
        (False, "EBUSY"),
        (True, ""),
        (True, ""),
        (True, ""),
        (False, "ENOENT"),
    ]
    assert res[0].error == "Invalid argument" and res[8].error == os.strerror(16)
    assert backend.round_trips == 1


def test_stop_on_error_ends_the_batch(backend: SshBackend, instance: str, uprobe_group: str) -> None:
    ops = [Write("uprobe_events", f"p:{uprobe_group}/x /nonexistent/binary:0x0"), Mkdir(instance)]
    stopped = backend.apply(ops, stop_on_error=True)
    assert [(r.ok, r.errno_name) for r in stopped] == [(False, "ENOENT")]
    assert not (TRACEFS / instance).exists()
    every = backend.apply(ops)
    assert [r.ok for r in every] == [False, True]
    backend.apply([Rmdir(instance)])
    assert backend.round_trips == 3


def test_probe_lists_are_never_truncated(backend: SshBackend, uprobe_group: str, true_probe_point: str) -> None:
    first, second = f"{uprobe_group}/a", f"{uprobe_group}/b"
    backend.apply([Write("uprobe_events", f"p:{first} {true_probe_point}")])
    # append=False would mean O_TRUNC: for a probe list that would delete every uprobe, so it is refused
    [res] = backend.apply([Write("uprobe_events", f"p:{second} {true_probe_point}", append=False)])
    assert res.ok
    listing = (TRACEFS / "uprobe_events").read_text()
    assert f"p:{first} " in listing and f"p:{second} " in listing


def test_overwrite_write_truncates_other_files(backend: SshBackend, instance: str) -> None:
    backend.apply([Mkdir(instance), Write(f"{instance}/set_event_pid", "1")])
    backend.apply([Write(f"{instance}/set_event_pid", "2")])
    [appended] = backend.apply([Read(f"{instance}/set_event_pid")])
    assert sorted(appended.data.split()) == ["1", "2"]
    backend.apply([Write(f"{instance}/set_event_pid", "3", append=False)])
    [replaced] = backend.apply([Read(f"{instance}/set_event_pid")])
    assert replaced.data.split() == ["3"]
    backend.apply([Rmdir(instance)])


def test_a_large_write_arrives_whole(backend: SshBackend, tmp_path: Path) -> None:
    # over PIPE_BUF, so dd must read a full block (iflag=fullblock) to write it in one go; an absolute path is
    # used as is, which lets a plain file show the bytes (trace_marker would cut an entry at ~4 KiB)
    value = "".join(f"{i:05d}'$\n" for i in range(20000))
    target = tmp_path / "big"
    target.write_text("")
    [write, read] = backend.apply([Write(str(target), value), Read(str(target))])
    assert write.ok and read.ok
    assert target.read_text() == value and read.data == value


# --- run --------------------------------------------------------------------------------------------------


def test_run_prepared_applies_its_batch_and_runs_in_one_round_trip(
    backend: SshBackend, instance: str, tmp_path: Path
) -> None:
    assert isinstance(backend, PreparingRuns)
    ran = tmp_path / "ran"
    result = backend.run_prepared(
        [Mkdir(instance), Write(f"{instance}/trace_marker", "armed before"), Read(f"{instance}/tracing_on")],
        ["sh", "-c", f'touch {ran}; echo "$PWD"'],
        after=[Read(f"{instance}/trace")],
    )
    assert backend.round_trips == 1
    assert [r.ok for r in result.before] == [True] * 3 and result.before[2].data == "1\n"
    assert result.returncode == 0 and ran.exists()
    assert result.stdout.strip() != "/sys/kernel/tracing"  # the command runs where run() would, not in tracefs
    assert "tracing_mark_write: armed before" in result.after[0].data
    backend.apply([Rmdir(instance)])


def test_run_prepared_stops_at_the_first_failure_and_runs_nothing(
    backend: SshBackend, instance: str, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    result = backend.run_prepared(
        [Mkdir(instance), Write(f"{instance}/no_such_file", "1"), Mkdir(f"{instance}-never")],
        ["touch", str(ran)],
        after=[Read("tracing_on")],
    )
    assert backend.round_trips == 1
    assert [r.ok for r in result.before] == [True, False]
    assert result.before[1].errno_name == "EACCES"  # tracefs creates no file on a write
    assert result.returncode == -1 and result.after == () and not ran.exists()
    assert not (TRACEFS / f"{instance}-never").exists()
    backend.apply([Rmdir(instance)])


def test_run_exit_code_stdout_stderr(backend: SshBackend) -> None:
    res = backend.run(["sh", "-c", 'echo out; printf "err no newline" >&2; exit 7'])
    assert backend.round_trips == 1
    assert (res.returncode, res.stdout, res.stderr) == (7, "out\n", "err no newline")
    assert res.pid > 1 and res.duration_s > 0
    assert res.argv == ("sh", "-c", 'echo out; printf "err no newline" >&2; exit 7')
    with pytest.raises(AssertionError):
        res.check()
    assert backend.run(["true"]).check().returncode == 0
    missing = backend.run(["/no/such/program"])
    assert missing.returncode == 127 and "/no/such/program" in missing.stderr
    assert backend.round_trips == 3


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_values_through_run(backend: SshBackend, tmp_path: Path, value: str) -> None:
    tmp_path.chmod(0o755)
    target = tmp_path / "content"
    # as argv (never interpreted by a shell) ...
    echoed = backend.run(["printf", "%s", value])
    assert echoed.stdout == value
    # ... as stdin into a file, and as a file read back
    wrote = backend.run(["sh", "-c", 'cat > "$1"', "sh", str(target)], stdin=value)
    assert wrote.returncode == 0, wrote
    assert target.read_bytes() == value.encode()
    assert backend.run(["cat", str(target)]).stdout == value
    assert backend.round_trips == 3


def test_run_appends_pid_to_pid_files_before_exec(backend: SshBackend, instance: str) -> None:
    backend.apply([Mkdir(instance)])
    res = backend.run(
        ["sh", "-c", 'echo "$$"; cat set_event_pid 2>/dev/null; pwd'], pid_files=[f"{instance}/set_event_pid"]
    )
    lines = res.stdout.splitlines()
    assert lines[0] == str(res.pid)  # the pid is the command's own: the shell exec'ed it
    assert lines[-1] == "/root"  # not the tracefs directory: the login directory
    [pids] = backend.apply([Read(f"{instance}/set_event_pid")])
    assert pids.data.split() == [str(res.pid)]
    assert backend.round_trips == 3
    backend.apply([Rmdir(instance)])


def test_run_pid_file_refused(backend: SshBackend) -> None:
    with pytest.raises(TargetError) as err:
        backend.run(["true"], pid_files=["instances/ktrace_sshtest_none/set_event_pid"])
    assert "ktrace_sshtest_none/set_event_pid" in str(err.value) and "No such file" in str(err.value)
    assert err.value.host == "ktrace-test" and err.value.cause == "ENOENT"


def test_run_timeout_kills_the_process_tree(backend: SshBackend, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    pids = tmp_path / "pids"
    script = f'sleep 300 & echo "$$ $!" > {pids}; wait'
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as err:
        backend.run(["sh", "-c", script], timeout=1.0)
    assert time.monotonic() - started < 10
    assert err.value.host == "ktrace-test" and err.value.timeout == 1.0
    assert "within 1.0 s on ktrace-test" in str(err.value) and "sleep 300" in str(err.value)
    shell_pid, sleep_pid = (int(p) for p in pids.read_text().split())
    assert _wait_gone(shell_pid) and _wait_gone(sleep_pid)
    assert backend.round_trips == 2  # the run and the kill
    assert backend.run(["echo", "still usable"]).stdout == "still usable\n"


# --- connection failures ----------------------------------------------------------------------------------


def _config(tmp_path: Path, server: Any, extra: str, name: str = "alias") -> Path:
    config = tmp_path / f"ssh_config_{name}"
    config.write_text(
        f"Host {name}\n  HostName 127.0.0.1\n  Port {server.port}\n  User ktrace-root\n"
        f"  IdentitiesOnly yes\n  IdentityFile {server.client_key}\n{extra}"
    )
    return config


def test_host_key_unknown_is_refused(make_backend: Callable[..., Any], sshd_server: Any, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    b = make_backend("alias", ssh_config=_config(tmp_path, sshd_server, f"  UserKnownHostsFile {empty}\n"))
    with pytest.raises(TargetError) as err:
        b.describe()
    msg = str(err.value)
    assert err.value.cause == "host key unknown" and err.value.host == "alias"
    assert "--ktrace-accept-new-host-key" in msg and f"ssh -p {sshd_server.port}" in msg
    assert empty.read_text() == ""


def test_accept_new_host_key_saves_it(make_backend: Callable[..., Any], sshd_server: Any, tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    config = _config(tmp_path, sshd_server, f"  UserKnownHostsFile {known}\n")
    b = make_backend("alias", ssh_config=config, accept_new_host_key=True)
    assert b.describe().backend == "ssh"
    assert known.read_text() == sshd_server.known_hosts_line()
    # now known: a second backend without accept-new connects, and the OpenSSH client agrees with the file
    assert make_backend("alias", ssh_config=config).run(["true"]).returncode == 0
    cli = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "alias", "true"], capture_output=True)
    assert cli.returncode == 0, cli.stderr


def test_accept_new_honours_hash_known_hosts(
    make_backend: Callable[..., Any], sshd_server: Any, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    config = _config(tmp_path, sshd_server, f"  UserKnownHostsFile {known}\n  HashKnownHosts yes\n")
    make_backend("alias", ssh_config=config, accept_new_host_key=True).describe()
    assert known.read_text().startswith("|1|")
    assert make_backend("alias", ssh_config=config).run(["true"]).returncode == 0


def test_config_strict_accept_new_and_quoted_paths(
    make_backend: Callable[..., Any], sshd_server: Any, tmp_path: Path
) -> None:
    known = tmp_path / "dir with space" / "known hosts"
    extra = f'  UserKnownHostsFile "{known}"\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking accept-new\n'
    config = _config(tmp_path, sshd_server, extra)
    assert make_backend("alias", ssh_config=config).run(["true"]).returncode == 0
    assert known.read_text() == sshd_server.known_hosts_line()


def test_host_key_changed_is_always_refused(make_backend: Callable[..., Any], sshd_server: Any, tmp_path: Path) -> None:
    other_pub = Path(str(sshd_server.other_key) + ".pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"# first line\n[127.0.0.1]:{sshd_server.port} {other_pub[0]} {other_pub[1]}\n")
    config = _config(tmp_path, sshd_server, f"  UserKnownHostsFile {known}\n")
    for accept in (False, True):
        b = make_backend("alias", ssh_config=config, accept_new_host_key=accept)
        with pytest.raises(TargetError) as err:
            b.describe()
        assert err.value.cause == "host key changed"
        assert f"remove line 2 of {known}" in str(err.value)
    assert len(known.read_text().splitlines()) == 2


def test_wrong_key_names_user_and_keys(
    make_backend: Callable[..., Any], sshd_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cfg"
    config.write_text(
        f"Host alias\n  HostName 127.0.0.1\n  Port {sshd_server.port}\n  User ktrace-root\n"
        f"  IdentitiesOnly yes\n  IdentityFile {sshd_server.other_key}\n"
        f"  IdentityFile {tmp_path / 'absent_key'}\n  UserKnownHostsFile {sshd_server.known_hosts}\n"
    )
    monkeypatch.setenv("KTRACE_SSH_PASSWORD", "not-the-password")
    b = make_backend("alias", ssh_config=config)
    with pytest.raises(TargetError) as err:
        b.apply([Read("tracing_on")])
    msg = str(err.value)
    assert err.value.cause == "authentication failed"
    assert "'ktrace-root'" in msg and str(sshd_server.other_key) in msg and "absent_key (missing)" in msg
    assert "KTRACE_SSH_PASSWORD" in msg


def test_connection_refused(make_backend: Callable[..., Any], sshd_server: Any, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = make_backend(f"127.0.0.1:{port}", ssh_config=sshd_server.ssh_config)
    with pytest.raises(TargetError) as err:
        b.describe()
    assert err.value.cause == "connection refused" and f"127.0.0.1:{port}" in str(err.value)


def test_default_config_files_and_unknown_key(make_backend: Callable[..., Any], sshd_server: Any) -> None:
    # no ssh_config: ~/.ssh/config and /etc/ssh/ssh_config (Include, HashKnownHosts...) are read like ssh does;
    # the test server's key is in no default known_hosts file, so this stops at the host key
    b = make_backend(f"ktrace-root@127.0.0.1:{sshd_server.port}", ssh_config=None)
    with pytest.raises(TargetError) as err:
        b.describe()
    assert err.value.cause == "host key unknown" and "known_hosts" in str(err.value)


def test_dns_failure(make_backend: Callable[..., Any], sshd_server: Any) -> None:
    b = make_backend("root@nonexistent.invalid", ssh_config=sshd_server.ssh_config)
    with pytest.raises(TargetError) as err:
        b.describe()
    assert err.value.cause == "DNS failure" and "nonexistent.invalid" in str(err.value)


def test_connect_timeout(make_backend: Callable[..., Any], sshd_server: Any) -> None:
    import socket

    # a listener that never answers the SSH banner (its backlog holds the connection)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        b = make_backend(f"127.0.0.1:{port}", ssh_config=sshd_server.ssh_config, connect_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(TargetError) as err:
            b.describe()
        assert time.monotonic() - started < 8
    assert err.value.cause == "timeout", err.value


# --- users and sudo ---------------------------------------------------------------------------------------


def test_non_root_without_sudo_says_what_permission(make_backend: Callable[..., Any]) -> None:
    b = make_backend("ktrace-test-nosudo")
    with pytest.raises(TracefsUnavailable) as err:
        b.describe()
    msg = str(err.value)
    assert "ktrace-nosudo" in msg and "--ktrace-sudo" in msg and "permission denied" in msg
    with pytest.raises(TracefsUnavailable):
        b.apply([Read("tracing_on")])
    # run() needs no tracefs unless pid files are given
    assert b.run(["id", "-un"]).stdout == "ktrace-nosudo\n"


def test_sudo_that_would_prompt(make_backend: Callable[..., Any]) -> None:
    b = make_backend("ktrace-test-sudopw", sudo=True)
    with pytest.raises(TargetError) as err:
        b.describe()
    assert err.value.cause == "sudo needs a password"
    assert "NOPASSWD" in str(err.value) and "ktrace-sudopw" in str(err.value)


def test_sudo_that_works(make_backend: Callable[..., Any], instance: str) -> None:
    b = make_backend("ktrace-test-sudo", sudo=True)
    assert b.describe().tracefs == str(TRACEFS)
    made, gone = b.apply([Mkdir(instance), Rmdir(instance)])
    assert made.ok and gone.ok
    assert b.run(["id", "-u"]).stdout == "0\n"
    assert b.round_trips == 3


def test_proxy_jump(make_backend: Callable[..., Any], sshd_server: Any) -> None:
    b = make_backend("ktrace-test-jump")
    assert b.run(["id", "-u"]).stdout == "0\n"
    assert b.describe().tracefs == str(TRACEFS)
    assert b.round_trips == 2


def test_target_forms() -> None:
    assert parse_target("board") == (None, "board", None)
    assert parse_target("pi@board:2222") == ("pi", "board", 2222)
    assert parse_target("[::1]:22") == (None, "::1", 22)
    assert parse_target("root@fe80::1") == ("root", "fe80::1", None)


# --- dropped connections ----------------------------------------------------------------------------------


def test_dropped_connection_mid_call_then_reconnect_applies_deferred(
    backend: SshBackend, sshd_server: Any, instance: str, tmp_path: Path
) -> None:
    backend.apply([Mkdir(instance)])
    tmp_path.chmod(0o755)
    pidfile = tmp_path / "sleeper"
    caught: list[BaseException] = []

    def long_call() -> None:
        try:
            backend.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], timeout=60)
        except BaseException as exc:  # reported to the test thread
            caught.append(exc)

    thread = threading.Thread(target=long_call)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        server_side = sshd_server.pid_of_connection(backend.local_port)
        os.kill(server_side, signal.SIGKILL)  # exactly the sshd process serving this connection
        thread.join(timeout=20)
        assert not thread.is_alive()
    finally:
        if pidfile.exists():
            sleeper = int(pidfile.read_text())
            if _pid_alive(sleeper):
                os.kill(sleeper, signal.SIGKILL)  # the sleep we started, orphaned by the drop
    assert len(caught) == 1 and isinstance(caught[0], ConnectionLost), caught
    assert caught[0].host == "ktrace-test" and "dropped" in str(caught[0])
    # teardown could not run: queue it; the next call reconnects and applies it first
    backend.defer([Rmdir(instance)])
    assert backend.deferred_ops == [Rmdir(instance)]
    before = backend.round_trips
    [state] = backend.apply([Read("tracing_on")])
    assert state.ok and state.data == "1\n"
    assert backend.deferred_ops == []
    assert [r.ok for r in backend.deferred_results] == [True]
    assert not (TRACEFS / instance).exists()
    assert backend.round_trips == before + 2  # the deferred batch, then this one


def test_dropped_between_calls_reconnects_transparently(backend: SshBackend, sshd_server: Any) -> None:
    assert backend.run(["true"]).returncode == 0
    first_port = backend.local_port
    os.kill(sshd_server.pid_of_connection(first_port), signal.SIGKILL)
    time.sleep(0.2)
    assert backend.run(["echo", "back"]).stdout == "back\n"
    assert backend.local_port != first_port


def test_deferred_ops_failures_are_reported_not_raised(backend: SshBackend) -> None:
    backend.defer([Rmdir("instances/ktrace_sshtest_never_made")])
    [res] = backend.apply([Read("tracing_on")])
    assert res.ok
    assert backend.deferred_ops == []
    assert [(r.ok, r.errno_name) for r in backend.deferred_results] == [(False, "ENOENT")]


def test_close_then_reuse(backend: SshBackend) -> None:
    backend.describe()
    backend.close()
    assert backend.local_port is None
    assert backend.apply([Read("tracing_on")])[0].ok
