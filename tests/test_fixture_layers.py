"""Fixtures in layers: ``ktrace_config`` -> ``ktrace_target`` -> ``ktrace``, each overridable per directory."""

from __future__ import annotations

import textwrap

import pytest

QUIET = ("-p", "no:cacheprovider")

ARM64_FAKE = """
import pytest

@pytest.fixture
def ktrace_config():
    return {"backend": "fake", "snapshot": "debian-6.1-arm64", "timeout": 9}
"""


def _tree(pytester: pytest.Pytester) -> None:
    """``boards/`` points at the fake arm64 kernel through its conftest.py; ``here/`` uses the command line."""
    pytester.mkpydir("boards")
    pytester.mkpydir("here")
    (pytester.path / "boards" / "conftest.py").write_text(ARM64_FAKE)
    (pytester.path / "boards" / "test_board.py").write_text(
        textwrap.dedent(
            """
            import pytest

            def test_on_the_board(ktrace, ktrace_target):
                assert ktrace.arch == "arm64" and ktrace.target.backend == "fake"
                assert ktrace_target.settings.timeout == 9 and ktrace.run_timeout == 9
                assert ktrace_target.backend is ktrace.backend

            @pytest.mark.ktrace(timeout=4)
            def test_marker_wins_over_config(ktrace):
                assert ktrace.run_timeout == 4 and ktrace.arch == "arm64"
            """
        )
    )
    (pytester.path / "here" / "test_here.py").write_text(
        textwrap.dedent(
            """
            def test_command_line_target(ktrace, ktrace_config):
                assert ktrace_config == {}
                assert ktrace.arch == "x86_64" and ktrace.run_timeout == 5
            """
        )
    )


def test_a_conftest_points_its_directory_at_another_target(pytester: pytest.Pytester) -> None:
    _tree(pytester)
    result = pytester.runpytest(
        *QUIET, "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.12-x86_64", "--ktrace-timeout=5"
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["ktrace: fake:debian-6.1-arm64 (backend fake): *", "ktrace: fake:debian-6.12-x86_64 *"]
    )


def test_config_wins_over_the_command_line(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(ARM64_FAKE)
    pytester.makepyfile(
        test_layers="""
        def test_it(ktrace):
            assert ktrace.arch == "arm64" and ktrace.run_timeout == 9
        """
    )
    pytester.runpytest(*QUIET, "--ktrace-snapshot=debian-6.12-x86_64", "--ktrace-timeout=5").assert_outcomes(passed=1)


def test_a_wrong_config_key_fails_the_tests_that_use_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def ktrace_config():
            return {"hots": "board"}
        """
    )
    pytester.makepyfile(
        test_layers="""
        def test_traced(ktrace):
            pass

        def test_untraced():
            pass
        """
    )
    result = pytester.runpytest(*QUIET, "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.12-x86_64")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_traced: ktrace_config got unknown argument(s) hots; known: *"])


def test_a_config_that_is_not_a_dict_is_named(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def ktrace_config():
            return "board"
        """
    )
    pytester.makepyfile(test_layers="def test_traced(ktrace):\n    pass\n")
    result = pytester.runpytest(*QUIET, "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.12-x86_64")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the ktrace_config fixture must return a dict, got 'board'"])


def test_requirements_follow_the_overridden_target(pytester: pytest.Pytester) -> None:
    """``ktrace_requires`` is normally checked before any fixture runs; with an overridden ``ktrace_config`` it is
    checked against the target that fixture names (arm64 here, x86_64 on the command line)."""
    pytester.makeconftest(ARM64_FAKE)
    pytester.makepyfile(
        test_layers="""
        import pytest

        @pytest.mark.ktrace_requires(arch="arm64")
        def test_needs_arm64(ktrace):
            assert ktrace.arch == "arm64"

        @pytest.mark.ktrace_requires(arch="x86_64")
        def test_needs_x86(ktrace):
            pass
        """
    )
    result = pytester.runpytest(*QUIET, "-rs", "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.12-x86_64")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]1[]] test_layers.py:*: * cannot run this test: arch is arm64 (needs x86_64)"]
    )


def test_a_session_can_be_built_on_an_overridden_target(pytester: pytest.Pytester) -> None:
    """``ktrace_target`` is an ordinary fixture: a conftest.py can wrap it (here: count the tests per target)."""
    pytester.makeconftest(
        """
        import pytest

        SEEN = []

        @pytest.fixture
        def ktrace_target(ktrace_target):
            SEEN.append(ktrace_target.label)
            yield ktrace_target

        def pytest_sessionfinish():
            print("targets seen:", SEEN)
        """
    )
    pytester.makepyfile(test_layers="def test_one(ktrace):\n    pass\n\ndef test_two(ktrace):\n    pass\n")
    result = pytester.runpytest(*QUIET, "-s", "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.12-x86_64")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*targets seen: [[]'fake:debian-6.12-x86_64', 'fake:debian-6.12-x86_64'[]]"])
