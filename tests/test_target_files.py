"""Files and input for the target: ``ktrace.push()`` (binary-safe, removed after the test, never replacing a file)
and ``ktrace.run(stdin=bytes)``, on this machine, replayed on the fake, and (tests/ssh) over SSH."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

QUIET = ("-p", "no:cacheprovider")

SUITE = """
import hashlib
import pytest
import pytest_ktrace

DATA = bytes(range(256)) * 64 + b"end"  # every byte value, NUL included


def test_push_and_read_back(ktrace, tmp_path):
    local = tmp_path / "blob.bin"
    local.write_bytes(DATA)
    remote = ktrace.push(local, mode=0o640)
    print("PUSHED", remote)
    assert ktrace.run(["sha256sum", remote], check=True).stdout.split()[0] == hashlib.sha256(DATA).hexdigest()
    assert ktrace.run(["stat", "-c", "%a", remote], check=True).stdout.strip() == "640"


def test_stdin_bytes(ktrace):
    assert ktrace.run(["sha256sum"], stdin=DATA, check=True).stdout.split()[0] == hashlib.sha256(DATA).hexdigest()


def test_an_existing_file_is_left_alone(ktrace, tmp_path):
    keep = tmp_path / "keep"
    keep.write_text("mine")
    print("KEPT", keep)
    (tmp_path / "new").write_bytes(b"new")
    with pytest.raises(pytest_ktrace.KtraceError, match="already exists"):
        ktrace.push(tmp_path / "new", str(keep))
"""


def check_files_afterwards(output: str) -> None:
    """What the suite pushed is gone after its test; the file it refused to replace is still there."""
    pushed = re.findall(r"PUSHED (\S+)", output)
    kept = re.findall(r"KEPT (\S+)", output)
    assert pushed and kept, output
    assert not any(Path(path).exists() for path in pushed)
    assert all(Path(path).read_text() == "mine" for path in kept)


def test_push_and_binary_stdin_on_this_machine(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_pushing=SUITE)
    result = pytester.runpytest(*QUIET, "-s")
    result.assert_outcomes(passed=3)
    check_files_afterwards(result.stdout.str())


def test_push_errors_name_the_argument(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad_push="""
        import pytest, pytest_ktrace

        @pytest.mark.parametrize("args, message", [
            (("/no/such/file",), "cannot read /no/such/file"),
            ((__file__, "relative/path"), "must be an absolute path"),
            ((__file__, "/tmp/x\\ny"), "newline"),
            ((__file__, "/tmp/ktrace-never", 0o17777), "mode"),
        ])
        def test_bad(ktrace, args, message):
            with pytest.raises(pytest_ktrace.KtraceError, match=message):
                ktrace.push(*args[:2], **({"mode": args[2]} if len(args) > 2 else {}))
        """
    )
    pytester.runpytest(*QUIET).assert_outcomes(passed=4)
    assert not Path("/tmp/ktrace-never").exists()


def test_pushes_replay_on_the_fake_and_a_changed_file_is_stale(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_pushing=SUITE)
    recorded = pytester.runpytest(*QUIET, "--ktrace-record", "-k", "read_back or stdin")
    recorded.assert_outcomes(passed=2)
    cassette = (pytester.path / "cassettes" / "test_pushing" / "test_push_and_read_back.json").read_text()
    assert '"kind": "push"' in cassette and '"sha256"' in cassette and "\\u0000" not in cassette
    pytester.runpytest(*QUIET, "--ktrace-backend=fake", "-k", "read_back or stdin").assert_outcomes(passed=2)
    pytester.makepyfile(test_pushing=SUITE.replace('b"end"', 'b"changed"'))
    stale = pytester.runpytest(*QUIET, "--ktrace-backend=fake", "-k", "read_back or stdin")
    stale.assert_outcomes(failed=2, errors=1)  # the push test also stops before its recorded end
    stale.stdout.fnmatch_lines(
        [
            "*cassette is stale*the file pushed changed*",
            "*cassette is stale*the stdin of *sha256sum* changed since the recording",
        ]
    )
