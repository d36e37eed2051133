"""``ktrace.push()`` and binary ``stdin`` through a real OpenSSH server on 127.0.0.1 (the target is this machine,
so the outer test sees the files the suite left, or did not leave)."""

from __future__ import annotations

import pytest

from test_target_files import SUITE, check_files_afterwards


def test_push_and_binary_stdin_over_ssh(pytester: pytest.Pytester, sshd_server) -> None:
    pytester.makepyfile(test_pushing=SUITE)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-s", "--ktrace-host=ktrace-test", f"--ktrace-ssh-config={sshd_server.ssh_config}"
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["ktrace: ktrace-test (backend ssh): *"])
    check_files_afterwards(result.stdout.str())
