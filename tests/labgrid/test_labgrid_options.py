"""The labgrid options as settings: parsed, checked and resolved like every target setting, before anything is
reached (no coordinator needed here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ktrace._labgrid._request import LabgridRequest, parse_coordinator, parse_tags

pytest_plugins = ["pytester"]

HEADER_TEST = "def test_nothing():\n    pass\n"


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("lab", "lab:20408"),
        ("lab.example.org:1234", "lab.example.org:1234"),
        (" 10.0.0.2 ", "10.0.0.2:20408"),
        ("[fd00::2]:20409", "[fd00::2]:20409"),
        ("[fd00::2]", "[fd00::2]:20408"),
    ],
)
def test_a_coordinator_address_gets_labgrids_default_port(text: str, address: str) -> None:
    assert parse_coordinator(text) == address


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no host name"),
        (":20408", "no host name"),
        ("lab:", "no port after ':'"),
        ("lab:http", "port 'http' is not a number in 1..65535"),
        ("lab:70000", "port '70000' is not a number in 1..65535"),
        ("fd00::2", "write an IPv6 address as [ADDRESS]:PORT"),
        ("[fd00::2", "write an IPv6 address as [ADDRESS]:PORT"),
    ],
)
def test_a_bad_coordinator_address_is_refused_naming_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace(".", r"\.")):
        parse_coordinator(text)


def test_tags_are_pairs_sorted_by_key() -> None:
    assert parse_tags("slot=b, arch=arm64,slot=b") == (("arch", "arm64"), ("slot", "b"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("arm64", "'arm64' is not KEY=VALUE"),
        ("Arch=arm64", "tag key 'Arch' must be lower case"),
        ("a=1", "tag key 'a' must be lower case"),
        ("arch=", "tag 'arch' needs a value"),
        ("arch=arm 64", "tag 'arch' needs a value"),
        ("arch=arm64,,lab=a", "'' is not KEY=VALUE"),
        ("arch=arm64,arch=x86_64", "tag 'arch' is given twice"),
    ],
)
def test_bad_tags_are_refused_naming_the_part(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_tags(text)


def test_a_request_filters_by_tags_or_by_the_place_name() -> None:
    by_tags = LabgridRequest("lab:20408", tags=(("arch", "arm64"),))
    by_name = LabgridRequest("lab:20408", place="rpi4")
    assert (by_tags.filters, by_tags.wanted) == ({"arch": "arm64"}, "tags arch=arm64")
    assert (by_name.filters, by_name.wanted) == ({"name": "rpi4"}, "name rpi4")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--ktrace-labgrid=lab", "--ktrace-labgrid-tags=arm64"],
            "pytest-ktrace: --ktrace-labgrid-tags='arm64': 'arm64' is not KEY=VALUE",
        ),
        (
            ["--ktrace-labgrid=lab:0", "--ktrace-labgrid-tags=arch=arm64"],
            "pytest-ktrace: --ktrace-labgrid='lab:0': port '0' is not a number in 1..65535",
        ),
        (
            ["--ktrace-labgrid=lab", "--ktrace-labgrid-tags=arch=arm64", "--ktrace-labgrid-place=rpi4"],
            "pytest-ktrace: --ktrace-labgrid-place='rpi4' and --ktrace-labgrid-tags='arch=arm64': a test runs on one "
            "target (a host, a vm, a labgrid place by tags, or one by name); drop one of them",
        ),
        (
            ["--ktrace-labgrid=lab", "--ktrace-labgrid-tags=arch=arm64", "--ktrace-host=board"],
            "pytest-ktrace: --ktrace-host='board' and --ktrace-labgrid-tags='arch=arm64': a test runs on one target *",
        ),
        (
            ["--ktrace-labgrid-place=rpi4"],
            "pytest-ktrace: --ktrace-labgrid-place='rpi4' needs a labgrid coordinator: --ktrace-labgrid=HOST[:PORT] "
            "(ini ktrace_labgrid) or $LG_COORDINATOR",
        ),
        (
            ["--ktrace-labgrid=lab", "--ktrace-labgrid-place=rpi4", "--ktrace-backend=local"],
            "pytest-ktrace: --ktrace-backend='local' and --ktrace-labgrid-place='rpi4': a labgrid place is reached "
            "over SSH; drop one of them",
        ),
        (
            ["--ktrace-labgrid=lab", "--ktrace-labgrid-place=rpi4", "--ktrace-labgrid-timeout=0"],
            "pytest-ktrace: --ktrace-labgrid-timeout='0': the timeout must be a finite number of seconds > 0",
        ),
        (
            ["--ktrace-labgrid=lab", "--ktrace-labgrid-place=two words"],
            "pytest-ktrace: --ktrace-labgrid-place='two words': a place name has no spaces or ','",
        ),
    ],
)
def test_bad_labgrid_settings_are_one_usage_error(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(test_header=HEADER_TEST)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_a_bad_lg_coordinator_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LG_COORDINATOR", "lab:port")
    pytester.makepyfile(test_header=HEADER_TEST)
    result = pytester.runpytest("--ktrace-labgrid-tags=lab=a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-ktrace: $LG_COORDINATOR='lab:port': port 'port' is not a number *"])


def test_the_header_names_the_coordinator_and_what_each_test_reserves(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LG_COORDINATOR", "elsewhere:1")
    pytester.makepyfile(test_header=HEADER_TEST)
    result = pytester.runpytest("--ktrace-labgrid=lab.example.org", "--ktrace-labgrid-tags=lab=a,arch=arm64")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "ktrace: backend ssh, target a labgrid tags arch=arm64,lab=a at lab.example.org:20408: each test reserves "
            "and acquires one, released after it"
        ]
    )


def test_a_coordinator_alone_leaves_the_target_as_it_was(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_header=HEADER_TEST)
    result = pytester.runpytest("--ktrace-labgrid=lab.example.org")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["ktrace: backend local, target local: *"])


def test_the_most_specific_target_setting_wins(pytester: pytest.Pytester) -> None:
    """A marker's place beats the command line's tags and host; a marker's host beats the command line's tags;
    ``ktrace_config``'s target gives way to the marker's of any kind; --ktrace-backend=fake replaces them all."""
    pytester.makeconftest(
        """
        import pytest
        from pytest_ktrace._fixtures import _settings

        @pytest.fixture
        def settings(request, ktrace_config):
            return _settings(request, ktrace_config)
        """
    )
    pytester.makepyfile(
        test_layers="""
        import pytest

        @pytest.fixture
        def ktrace_config():
            return {"labgrid_tags": "lab=b"}

        def test_directory(settings):
            assert (settings.labgrid.tags, settings.target.host) == ((("lab", "b"),), None)

        @pytest.mark.ktrace(labgrid_place="rpi4")
        def test_place_marker(settings):
            assert (settings.labgrid.place, settings.labgrid.tags) == ("rpi4", ())

        @pytest.mark.ktrace(host="board2")
        def test_host_marker(settings):
            assert (settings.labgrid, settings.target.host) == (None, "board2")

        @pytest.mark.ktrace(labgrid_place="rpi4", labgrid_tags="lab=c")
        def test_both_in_one_marker(settings):
            pass
        """
    )
    result = pytester.runpytest("--ktrace-labgrid=lab", "--ktrace-labgrid-tags=lab=a", "-rf")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*test_both_in_one_marker*labgrid_place='rpi4'* and *labgrid_tags='lab=c'*: a test runs on one target*"]
    )
    faked = pytester.runpytest(
        "--ktrace-labgrid=lab", "--ktrace-labgrid-tags=lab=a", "--ktrace-backend=fake", "-k", "directory"
    )
    faked.assert_outcomes(failed=1)  # the fake replaces the place: settings.labgrid is None


def test_a_marker_with_bad_tags_is_an_error_of_that_test_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marker="""
        import pytest

        @pytest.mark.ktrace(labgrid_tags="arch")
        def test_bad(ktrace):
            pass

        def test_good():
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_bad: @pytest.mark.ktrace(labgrid_tags='arch'): 'arch' is not KEY=VALUE"])


def test_without_labgrid_a_place_is_a_usage_error_saying_how_to_install_it(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    # a labgrid package without its client hides the installed one: as if labgrid were not installed
    shadow = tmp_path / "shadow" / "labgrid"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    pytester._monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    pytester.makepyfile(test_header=HEADER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:labgrid", "--ktrace-labgrid=lab", "--ktrace-labgrid-tags=lab=a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-ktrace: labgrid tags lab=a at lab:20408: labgrid is not installed: "
            "pip install 'pytest-ktrace[labgrid]'"
        ]
    )
