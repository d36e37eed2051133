"""``--ktrace-ssh-identity``: a private key for SSH targets, tried first, like ``ssh -i``; with an ssh_config that
names no key for the host, it is the only way in."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_ktrace._errors import TargetError
from pytest_ktrace.backends._base import Read

pytest_plugins = ["pytester"]


@pytest.fixture
def keyless_config(sshd_server: Any, tmp_path: Path) -> Path:
    """An ssh_config that knows the sshd's host key and names no key (and no agent is in the environment)."""
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n  UserKnownHostsFile {sshd_server.known_hosts}\n  IdentitiesOnly yes\n")
    return config


def test_the_identity_is_the_key_that_logs_in(
    make_backend: Callable[..., Any], sshd_server: Any, keyless_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(keyless_config.parent))  # no ~/.ssh/id_* either
    target = f"ktrace-root@127.0.0.1:{sshd_server.port}"
    without = make_backend(target, ssh_config=keyless_config)
    with pytest.raises(TargetError, match="authentication failed for user 'ktrace-root'"):
        without.apply([Read("tracing_on")])
    wrong = make_backend(target, ssh_config=keyless_config, identity=sshd_server.other_key)
    with pytest.raises(TargetError) as refused:
        wrong.apply([Read("tracing_on")])
    assert str(sshd_server.other_key) in str(refused.value) and "--ktrace-ssh-identity" in str(refused.value)
    right = make_backend(target, ssh_config=keyless_config, identity=sshd_server.client_key)
    assert right.apply([Read("tracing_on")])[0].ok


def test_the_option_reaches_an_ssh_target(pytester: pytest.Pytester, sshd_server: Any, keyless_config: Path) -> None:
    pytester.makepyfile(
        test_keyed="""
        def test_exec(ktrace):
            execs = ktrace.tracepoint("sched:sched_process_exec")
            result = ktrace.run(["/bin/true"])
            execs.assert_any_call(filename="/bin/true", pid=result.pid)
        """
    )
    args = [f"--ktrace-host=ktrace-root@127.0.0.1:{sshd_server.port}", f"--ktrace-ssh-config={keyless_config}"]
    result = pytester.runpytest(*args, f"--ktrace-ssh-identity={sshd_server.client_key}")
    result.assert_outcomes(passed=1)
    missing = pytester.runpytest(*args, "--ktrace-ssh-identity=no_such_key")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(
        [f"ERROR: pytest-ktrace: --ktrace-ssh-identity='no_such_key': no such file ({pytester.path / 'no_such_key'})"]
    )
