"""@pytest.mark.ktrace_requires: marker validation at collection, version specs, detection (once per target, one
round trip) and the skip reasons, on this machine, on the fake, and in a qemu guest."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ktrace_testing import DEV_VM_SNAPSHOT, TRACEFS
from pytest_ktrace._arch import normalize_arch
from pytest_ktrace._errors import ConnectionLost, KtraceError
from pytest_ktrace._requirements import (
    Requirements,
    TargetFacts,
    VersionSpec,
    _parse_config,
    _symbol_names,
    facts_for,
    release_version,
    unmet,
    validate_marker,
)
from pytest_ktrace._targets import TargetSpec
from pytest_ktrace.backends._base import TargetInfo
from pytest_ktrace.backends._local import LocalBackend

pytest_plugins = ["pytester"]

RELEASE = os.uname().release
ARCH = normalize_arch(os.uname().machine)
OTHER_ARCH = "x86_64" if ARCH == "arm64" else "arm64"
HAS_KPROBES = (TRACEFS / "kprobe_events").exists()
HAS_BTF = Path("/sys/kernel/btf/vmlinux").exists()


def _kallsyms_function() -> str:
    """A text symbol of this kernel that is not on the kprobe blacklist."""
    with open("/proc/kallsyms") as kallsyms:
        names = {parts[2] for parts in (line.split() for line in kallsyms) if parts[1] in "Tt" and len(parts) == 3}
    for name in ("schedule", "do_sys_openat2", "vfs_read"):
        if name in names:
            return name
    raise AssertionError("no well-known function in /proc/kallsyms")


# ------------------------------------------------------------------------------------------- version specs


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.1.0-57-amd64", (6, 1, 0)),
        ("6.18.44-fc-v857", (6, 18, 44)),
        ("5.10.120+", (5, 10, 120)),
        ("6.9", (6, 9)),
        ("6.12-rc3", (6, 12)),
        ("vendor-6.1", None),
    ],
)
def test_release_version_is_the_leading_numbers(release: str, version: Any) -> None:
    assert release_version(release) == version


@pytest.mark.parametrize(
    ("spec", "release", "allowed"),
    [
        (">=6.1", "6.1.0-57-amd64", True),
        (">=6.1", "6.0.19", False),
        (">=6.1", "6.18.44-fc-v857", True),
        (">=6.10", "6.9.12", False),  # numerically, not as text
        ("<6.9", "6.8.12", True),
        ("<6.9", "6.9.0", False),
        ("<6.9", "6.9.1", False),
        ("==6.1", "6.1.0-57-amd64", True),
        ("==6.1", "6.1.57", True),  # at the spec's precision: the 6.1 series
        ("==6.1", "6.12.1", False),
        ("!=6.1", "6.1.3", False),
        ("<=6.1", "6.1.57", True),
        (">6.1", "6.1.57", False),
        (">6.1", "6.2.0", True),
        (">=6.1,<6.13", "6.12.9", True),
        (">=6.1,<6.13", "6.13.0", False),
        (">=6.1,<6.13", "5.15.0", False),
        (" >= 6.1 , < 7 ", "6.18.44", True),
        (">=6.1.50", "6.1.0-57-amd64", False),
    ],
)
def test_version_specs_compare_numerically(spec: str, release: str, allowed: bool) -> None:
    version = release_version(release)
    assert version is not None
    assert VersionSpec.parse(spec).allows(version) is allowed


@pytest.mark.parametrize("spec", [">=6.x", "6.1", "", ">=", ">=6.1,", "~=6.1", ">=6..1", "=>6.1", ">=6.1;<7", ">= v6"])
def test_bad_version_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="bad version spec"):
        VersionSpec.parse(spec)


def test_version_spec_text_is_normalised() -> None:
    assert str(VersionSpec.parse(" >= 6.1 , <6.13")) == ">=6.1,<6.13"


# ------------------------------------------------------------------------------------------ marker checking


@pytest.mark.parametrize(
    ("kwargs", "args", "message"),
    [
        ({"kprobes": True, "nosuch": 1}, (), "unknown argument(s) nosuch; known: arch, btf, events, kernel"),
        ({"kprobes": 1}, (), "kprobes=1): kprobes must be True or False, got int"),
        ({"btf": "yes"}, (), "btf must be True or False, got str"),
        ({"arch": 64}, (), "arch must be a name such as 'arm64'"),
        ({"arch": []}, (), "arch must be a name"),
        ({"arch": ["arm64", 3]}, (), "3 is not an arch name"),
        ({"kernel": ">=6.x"}, (), "kernel='>=6.x'): bad version spec '>=6.x'"),
        ({"kernel": 6.1}, (), "kernel must be a version spec string"),
        ({"symbols": "__setup_irq"}, (), "symbols must be a list of names, e.g. symbols=['__setup_irq'], got str"),
        ({"symbols": ["ok", "not a symbol"]}, (), "'not a symbol' is not a kernel symbol"),
        ({"symbols": []}, (), "name at least one"),
        ({"events": ["sched_switch"]}, (), "'sched_switch' is not an event 'system:event'"),
        ({"events": "sched:sched_switch"}, (), "events must be a list of names"),
        ({}, (), "names no requirement"),
        ({}, ("kprobes",), "takes keyword arguments only"),
    ],
)
def test_marker_arguments_are_checked(kwargs: dict[str, Any], args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(pytest.UsageError) as excinfo:
        validate_marker("test_x.py::test_y", kwargs, args)
    assert str(excinfo.value).startswith("test_x.py::test_y: @pytest.mark.ktrace_requires")
    assert message in str(excinfo.value)


def test_valid_marker_arguments_pass() -> None:
    validate_marker(
        "t",
        {
            "kprobes": True,
            "uprobes": False,
            "btf": True,
            "arch": ("aarch64", "amd64"),
            "kernel": ">=6.1,<6.13",
            "symbols": ["__setup_irq", "ext4:ext4_file_open", "__setup_irq.cold"],
            "events": ["irq:irq_handler_entry", "sched/sched_switch"],
        },
        (),
    )


def test_a_bad_marker_is_an_error_of_that_test_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
        import pytest

        def test_fine():
            pass

        @pytest.mark.ktrace_requires(kernel=">=6.x")
        def test_wrong():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)  # the others run: one bad marker does not abort the run
    result.stdout.fnmatch_lines(
        ["*test_bad.py::test_wrong: @pytest.mark.ktrace_requires(kernel='>=6.x'): bad version spec '>=6.x'*"]
    )


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\n@pytest.mark.ktrace_requires(uprobes=True)\ndef test_x(): pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=1)
    assert "ktrace_requires(kprobes=, uprobes=, btf=" in pytester.runpytest("--markers").stdout.str()


# ----------------------------------------------------------------------------------- judging (no target)


def _facts(**kwargs: Any) -> TargetFacts:
    info = TargetInfo("board", "ssh", "6.1.0-57-arm64", "aarch64", "/sys/kernel/tracing", frozenset({"uprobes"}))
    facts = TargetFacts(info, base_loaded=True, symbols_loaded=True)
    for key, value in kwargs.items():
        setattr(facts, key, value)
    return facts


def test_every_unmet_need_is_listed_with_why() -> None:
    config = {"KPROBES": True, "KPROBE_EVENTS": False, "UPROBES": True, "DEBUG_INFO_BTF": False, "TRACING": True}
    facts = _facts(
        config=config,
        btf=False,
        events=frozenset({"sched:sched_switch", "irq:irq_handler_entry"}),
        symbols=frozenset({"__setup_irq", "schedule", "do_int3"}),
        symbols_source="/proc/kallsyms",
        blacklist=frozenset({"do_int3"}),
    )
    requirements = Requirements(
        kprobes=True,
        uprobes=True,
        btf=True,
        arch=("x86_64",),
        kernel=VersionSpec.parse(">=6.9"),
        symbols=("__setup_irq", "__setup_irqq", "do_int3"),
        events=("irq:irq_handler_entry", "sched:sched_swich"),
    )
    assert unmet(requirements, facts) == [
        "no kprobes (kprobe_events missing: CONFIG_KPROBE_EVENTS off)",
        "no BTF (/sys/kernel/btf/vmlinux missing: CONFIG_DEBUG_INFO_BTF off)",
        "arch is arm64 (needs x86_64)",
        "kernel is 6.1.0-57-arm64 (needs >=6.9)",
        "no event sched:sched_swich (close matches: sched:sched_switch)",
        "no symbol __setup_irqq in /proc/kallsyms (close matches: __setup_irq)",
        "do_int3 is blacklisted for kprobes",
    ]
    assert unmet(Requirements(uprobes=True, arch=("arm64",), kernel=VersionSpec.parse("==6.1")), facts) == []


def test_what_cannot_be_checked_is_unmet_and_says_why() -> None:
    facts = _facts(
        btf=None,
        btf_note="the snapshot x does not record it",
        events=None,
        events_note="available_events is not readable",
        symbols=None,
        symbols_note="the detection script could not run",
    )
    requirements = Requirements(kprobes=True, btf=True, symbols=("schedule",), events=("sched:sched_switch",))
    assert unmet(requirements, facts) == [
        "no kprobes (kprobe_events missing)",  # no config known: no guess about why
        "BTF unknown (the snapshot x does not record it)",
        "cannot list events (available_events is not readable)",
        "cannot list kernel symbols (the detection script could not run)",
    ]
    odd = replace_info(facts, release="vendor-kernel")
    assert unmet(Requirements(kernel=VersionSpec.parse(">=6.1")), odd) == [
        "kernel release 'vendor-kernel' has no version number (needs >=6.1)"
    ]


def replace_info(facts: TargetFacts, **changes: Any) -> TargetFacts:
    from dataclasses import replace

    return replace(facts, info=replace(facts.info, **changes))


def test_module_symbols_and_kallsyms_parsing() -> None:
    names = _symbol_names("schedule\ne1000_probe\t[e1000]\nffffffff81000000 T _stext\nffffffff82000000 D data\n")
    assert names == {"schedule", "e1000_probe", "e1000:e1000_probe", "_stext"}
    facts = _facts(symbols=names, symbols_source="/proc/kallsyms", blacklist=frozenset())
    assert unmet(Requirements(symbols=("e1000:e1000_probe", "_stext")), facts) == []
    assert unmet(Requirements(symbols=("data",)), facts) == ["no symbol data in /proc/kallsyms"]


def test_config_parsing_needs_a_real_config() -> None:
    config, source = _parse_config(
        "/proc/config.gz\nCONFIG_TRACING=y\n# CONFIG_KPROBES is not set\nCONFIG_UPROBES=y\nCONFIG_DEBUG_INFO_BTF=m\n"
    )
    assert source == "/proc/config.gz"
    assert config is not None
    assert (config["KPROBES"], config["UPROBES"], config["DEBUG_INFO_BTF"], config["KPROBE_EVENTS"]) == (
        False,
        True,
        True,
        False,  # absent from a readable config: off
    )
    assert _parse_config("")[0] is None
    assert _parse_config("/proc/config.gz\n")[0] is None  # gzip missing on the target: nothing came through


def test_closest_marker_wins_and_lists_add_up(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_merge="""
        import pytest
        from pytest_ktrace._requirements import Requirements

        pytestmark = pytest.mark.ktrace_requires(kprobes=True, arch="arm64", symbols=["a"])

        @pytest.mark.ktrace_requires(kprobes=False, events=["x:y"])
        class TestIt:
            @pytest.mark.ktrace_requires(symbols=["b", "a"], kernel=">=6.1")
            def test_merged(self, request):
                r = Requirements.of(request.node)
                assert (r.kprobes, r.arch, r.symbols, r.events, str(r.kernel)) == (
                    False, ("arm64",), ("a", "b"), ("x:y",), ">=6.1"
                ), r
                raise SystemExit("never reached: arch=arm64 is unmet here")
        """
    )
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-rs", "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.1-x86_64"
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*cannot run this test: arch is x86_64 (needs arm64), no event x:y, no symbol a in *, no symbol b in *"]
    )
    assert "no kprobes" not in result.stdout.str()


# ---------------------------------------------------------------------------- detection: once, one round trip


class _Counting(LocalBackend):
    def __init__(self) -> None:
        super().__init__()
        self.runs: list[list[str]] = []

    def run(self, argv: Any, **kwargs: Any) -> Any:
        self.runs.append(list(argv))
        return super().run(argv, **kwargs)


def test_detection_is_one_round_trip_per_group_and_cached_per_target() -> None:
    backend = _Counting()
    config: Any = SimpleNamespace(stash=pytest.Stash())
    target = TargetSpec()
    backend.describe()
    trips = backend.round_trips
    facts = facts_for(config, target, backend, Requirements(arch=(ARCH,), kernel=VersionSpec.parse(">=1")))
    assert backend.round_trips == trips, "arch and kernel come from describe(): no round trip"
    facts = facts_for(config, target, backend, Requirements(events=("sched:sched_switch",), uprobes=True))
    assert backend.round_trips == trips + 1 and facts.round_trips == 1
    assert "sched:sched_switch" in (facts.events or ()) and facts.btf is HAS_BTF
    assert facts.symbols is None, "symbols are fetched only when a test names some"
    facts = facts_for(config, target, backend, Requirements(symbols=("schedule",)))
    assert backend.round_trips == trips + 2 and facts.round_trips == 2
    assert facts.symbols_source == "/proc/kallsyms" and "schedule" in (facts.symbols or ())
    for _ in range(3):
        again = facts_for(config, target, backend, Requirements(symbols=("x",), events=("a:b",), btf=True))
    assert again is facts and backend.round_trips == trips + 2, "cached for the run"
    assert [argv[:2] for argv in backend.runs] == [["sh", "-c"], ["sh", "-c"]]


def test_first_detection_fetches_everything_a_test_needs_in_one_round_trip() -> None:
    backend = _Counting()
    config: Any = SimpleNamespace(stash=pytest.Stash())
    backend.describe()
    trips = backend.round_trips
    facts = facts_for(
        config, TargetSpec(), backend, Requirements(symbols=("schedule",), events=("sched:sched_switch",))
    )
    assert backend.round_trips == trips + 1
    assert facts.events and facts.symbols and facts.base_loaded and facts.symbols_loaded


class _Refusing(LocalBackend):
    def __init__(self, error: KtraceError) -> None:
        super().__init__()
        self.error = error
        self.runs = 0

    def run(self, argv: Any, **kwargs: Any) -> Any:
        self.runs += 1
        raise self.error


def test_a_backend_that_runs_nothing_still_lists_events_and_says_why_symbols_are_unknown() -> None:
    backend = _Refusing(KtraceError("this backend runs no commands"))
    config: Any = SimpleNamespace(stash=pytest.Stash())
    requirements = Requirements(symbols=("schedule",), events=("sched:sched_switch",))
    facts = facts_for(config, TargetSpec(), backend, requirements)
    assert facts.events and "sched:sched_switch" in facts.events  # read through apply()
    [reason] = unmet(requirements, facts)
    assert reason == (
        "cannot list kernel symbols (the detection script could not run on local: this backend runs no commands)"
    )
    facts_for(config, TargetSpec(), backend, requirements)
    assert backend.runs == 1, "a refusal is an answer: not asked again"


def test_a_lost_connection_is_not_cached() -> None:
    backend = _Refusing(ConnectionLost("link dropped"))
    config: Any = SimpleNamespace(stash=pytest.Stash())
    requirements = Requirements(symbols=("schedule",))
    facts = facts_for(config, TargetSpec(), backend, requirements)
    assert unmet(requirements, facts) == [
        "cannot list kernel symbols (the detection script could not run on local: link dropped)"
    ]
    facts_for(config, TargetSpec(), backend, requirements)
    assert backend.runs == 2, "the next test asks again"


# ------------------------------------------------------------------------------------ this machine, end to end


@pytest.fixture
def suite(pytester: pytest.Pytester, probed: Path) -> pytest.Pytester:
    pytester.makeconftest(
        textwrap.dedent(
            f"""
            import pytest
            BIN = {str(probed)!r}

            @pytest.fixture
            def noisy(tmp_path_factory):
                print("NOISY FIXTURE RAN")
            """
        )
    )
    return pytester


def _outcomes(result: pytest.RunResult) -> dict[str, str]:
    """test name -> PASSED / SKIPPED ... from -rA style lines of `-v` output."""
    out: dict[str, str] = {}
    for line in result.outlines:
        if "::" in line and (" PASSED" in line or " SKIPPED" in line or " FAILED" in line or " ERROR" in line):
            name = line.split("::", 1)[1].split()[0]
            out[name] = line
    return out


def test_on_this_machine_each_need_runs_or_skips_with_its_reason(suite: pytest.Pytester) -> None:
    symbol = _kallsyms_function()
    suite.makepyfile(
        test_local=f"""
        import pytest
        from conftest import BIN

        @pytest.mark.ktrace_requires(kprobes=True)
        def test_kprobes(ktrace, noisy):
            ktrace.kprobe({symbol!r})
            ktrace.run(["true"])

        @pytest.mark.ktrace_requires(uprobes=True)
        def test_uprobes(ktrace):
            fib = ktrace.uprobe(BIN, "fib")
            ktrace.run([BIN, "fib", "2"])
            fib.assert_call_count(3)

        @pytest.mark.ktrace_requires(arch={OTHER_ARCH!r})
        def test_other_arch(noisy):
            pass

        @pytest.mark.ktrace_requires(arch={os.uname().machine!r})
        def test_this_arch_as_uname_spells_it():
            pass

        @pytest.mark.ktrace_requires(kernel=">=3.0")
        def test_new_kernel():
            pass

        @pytest.mark.ktrace_requires(kernel="<3.0")
        def test_old_kernel(ktrace):
            pass

        @pytest.mark.ktrace_requires(events=["sched:sched_switch", "sched/sched_process_exec"])
        def test_real_events(ktrace):
            ktrace.tracepoint("sched:sched_process_exec")
            ktrace.run(["true"])

        @pytest.mark.ktrace_requires(events=["nosuch:event", "sched:sched_swtch"])
        def test_bogus_events():
            pass

        @pytest.mark.ktrace_requires(symbols=[{symbol!r}])
        def test_real_symbol():
            pass

        @pytest.mark.ktrace_requires(symbols=[{symbol + "x"!r}, "ktrace_nosuch_function_at_all"])
        def test_bogus_symbols():
            pass

        @pytest.mark.ktrace_requires(btf=True)
        def test_btf():
            pass
        """
    )
    result = suite.runpytest("-p", "no:cacheprovider", "-v", "-rs", "-s")
    outcomes = _outcomes(result)
    head = f"pytest-ktrace: local (Linux {RELEASE} {ARCH}) cannot run this test: "

    def skipped(name: str, reason: str) -> None:
        line = outcomes[name]
        assert " SKIPPED" in line, line
        assert f"SKIPPED [1] test_local.py:{_line(suite, name)}: {head}{reason}" in result.outlines, (
            name,
            [line for line in result.outlines if "SKIPPED [" in line],
        )

    def passed(name: str) -> None:
        assert " PASSED" in outcomes[name], outcomes[name]

    if HAS_KPROBES:
        passed("test_kprobes")
    else:
        [config_line] = [
            line for line in result.outlines if line.startswith("SKIPPED [1] test_local.py") and "no kprobes" in line
        ]
        assert f"{head}no kprobes (kprobe_events missing" in config_line, config_line
        if Path("/proc/config.gz").exists():
            assert "kprobe_events missing: CONFIG_KPROBE" in config_line  # why, from the kernel config
    passed("test_uprobes")
    skipped("test_other_arch", f"arch is {ARCH} (needs {OTHER_ARCH})")
    passed("test_this_arch_as_uname_spells_it")
    passed("test_new_kernel")
    skipped("test_old_kernel", f"kernel is {RELEASE} (needs <3.0)")
    passed("test_real_events")
    line = outcomes["test_bogus_events"]
    assert " SKIPPED" in line
    [reason] = [line for line in result.outlines if "no event nosuch:event" in line and line.startswith("SKIPPED [")]
    assert f"{head}no event nosuch:event, no event sched:sched_swtch (close matches: sched:sched_switch" in reason, (
        reason
    )
    passed("test_real_symbol")
    [reason] = [line for line in result.outlines if "ktrace_nosuch_function_at_all" in line and "SKIPPED [" in line]
    assert f"no symbol {symbol}x in /proc/kallsyms (close matches: {symbol}" in reason, reason
    assert "no symbol ktrace_nosuch_function_at_all in /proc/kallsyms" in reason
    if HAS_BTF:
        passed("test_btf")
    else:
        skipped("test_btf", "no BTF (/sys/kernel/btf/vmlinux missing*")
    # skipped before the test's fixtures ran: the noisy fixture ran for no skipped test
    assert result.stdout.str().count("NOISY FIXTURE RAN") == (1 if HAS_KPROBES else 0)


def _line(pytester: pytest.Pytester, name: str) -> int:
    """The line pytest reports a test at: its first decorator's (1-based)."""
    lines = (pytester.path / "test_local.py").read_text().splitlines()
    [index] = [i for i, line in enumerate(lines) if line.startswith(f"def {name}(")]
    while index > 0 and lines[index - 1].startswith("@"):
        index -= 1
    return index + 1


def test_a_test_without_the_fixture_is_checked_too_and_an_unknown_backend_fails_it(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_nofixture="""
        import pytest

        @pytest.mark.ktrace_requires(kernel="<3.0")
        def test_old():
            raise AssertionError("must not run")

        @pytest.mark.ktrace(backend="nosuch")
        @pytest.mark.ktrace_requires(uprobes=True)
        def test_nosuch_backend():
            raise AssertionError("must not run")
        """
    )
    result = suite.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            f"SKIPPED [[]1] test_nofixture.py:3: pytest-ktrace: local (Linux {RELEASE} {ARCH}) cannot run this test: "
            f"kernel is {RELEASE} (needs <3.0)",
            "test_nofixture.py::test_nosuch_backend: pytest-ktrace: no backend called 'nosuch'*",
        ]
    )
    assert "During handling" not in result.stdout.str()


def test_detection_runs_once_per_target_for_the_whole_run(suite: pytest.Pytester) -> None:
    symbol = _kallsyms_function()
    suite.makepyfile(
        test_many=f"""
        import pytest
        from pytest_ktrace._requirements import _FACTS

        @pytest.mark.parametrize("n", range(6))
        @pytest.mark.ktrace_requires(symbols=[{symbol!r}], events=["sched:sched_switch"], btf=True)
        def test_needs(n):
            pass

        @pytest.mark.ktrace_requires(symbols=["ktrace_nosuch_fn"])
        def test_zz_report(request):
            pass

        def test_zzz_count(request):
            [facts] = request.config.stash[_FACTS].values()
            print("DETECTION_ROUND_TRIPS", facts.round_trips)
        """
    )
    result = suite.runpytest("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=(7 if HAS_BTF else 1), skipped=(1 if HAS_BTF else 7))
    assert "DETECTION_ROUND_TRIPS 1" in result.stdout.str()


# ------------------------------------------------------------------------------------------------- the fake


def test_on_the_fake_arm64_snapshot_kprobes_and_arm64_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fake="""
        import pytest

        @pytest.mark.ktrace_requires(kprobes=True, arch="arm64", kernel=">=6.1,<6.2", symbols=["__setup_irq"],
                                     events=["irq:irq_handler_entry"])
        def test_arm64(ktrace):
            ktrace.kprobe("__setup_irq", irq="%x0:u32")
            ktrace.arm()

        @pytest.mark.ktrace_requires(arch="aarch64", uprobes=True)
        def test_alias():
            pass

        @pytest.mark.ktrace_requires(arch="x86_64", symbols=["__activate_traps", "__setup_irqx"])
        def test_wrong_arch_and_symbols():
            pass

        @pytest.mark.ktrace_requires(btf=True)
        def test_btf_unknown():
            pass
        """
    )
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-rs", "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.1-arm64"
    )
    result.assert_outcomes(passed=2, skipped=2)
    head = "pytest-ktrace: fake:debian-6.1-arm64 (Linux 6.1.0-57-arm64 arm64) cannot run this test: "
    result.stdout.fnmatch_lines_random(
        [
            f"SKIPPED [[]1] test_fake.py:13: {head}arch is arm64 (needs x86_64), __activate_traps is blacklisted for "
            "kprobes, no symbol __setup_irqx in the kallsyms of snapshot debian-6.1-arm64 (close matches: __setup_irq*",
            f"SKIPPED [[]1] test_fake.py:17: {head}BTF unknown (the snapshot debian-6.1-arm64 does not record whether "
            "/sys/kernel/btf/vmlinux exists)",
        ]
    )


def test_on_a_fake_snapshot_without_kprobes_kprobes_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fake="""
        import pytest

        @pytest.mark.ktrace_requires(kprobes=True, uprobes=True)
        def test_kprobes(ktrace):
            pass
        """
    )
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-rs", "--ktrace-backend=fake", f"--ktrace-snapshot={DEV_VM_SNAPSHOT}"
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1] test_fake.py:3: pytest-ktrace: fake:dev-vm-6.18-x86_64 (Linux 6.18.44-* x86_64) cannot run "
            "this test: no kprobes (kprobe_events missing)"
        ]
    )


# --------------------------------------------------------------------------------------------- a qemu guest


@pytest.mark.guest
def test_in_a_guest_kprobes_and_its_symbols_are_there(pytester: pytest.Pytester) -> None:
    from pytest_ktrace.guests import qemu_available

    unavailable = qemu_available("x86_64")
    if unavailable is not None:
        pytest.skip(unavailable)
    pytester.makepyfile(
        test_vm="""
        import pytest

        @pytest.mark.ktrace(vm="x86_64")
        @pytest.mark.ktrace_requires(kprobes=True, symbols=["__setup_irq"], arch="amd64", kernel="==6.1")
        def test_setup_irq(ktrace):
            done = ktrace.kretprobe("__setup_irq")
            ktrace.run(["ktrace-trigger-setup-irq"])
            done.assert_returned(0)

        @pytest.mark.ktrace(vm="x86_64")
        @pytest.mark.ktrace_requires(symbols=["__setup_irqx", "do_int3"])
        def test_bogus_and_blacklisted():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1] test_vm.py:10: pytest-ktrace: ktrace-vm-x86_64 (Linux 6.1.0-*-amd64 x86_64) cannot run this "
            "test: no symbol __setup_irqx in /proc/kallsyms (close matches: __setup_irq*), do_int3 is blacklisted "
            "for kprobes"
        ]
    )


# --------------------------------------------------------------------------------------------- strict mode

STRICT_SUITE = """
import pytest

@pytest.mark.ktrace_requires(kprobes=True)
def test_needs_kprobes(ktrace):
    pass

@pytest.mark.ktrace_requires(uprobes=True)
def test_needs_uprobes(ktrace):
    pass

@pytest.mark.ktrace(strict=False)
@pytest.mark.ktrace_requires(kprobes=True)
def test_may_skip(ktrace):
    pass
"""


@pytest.mark.parametrize("how", ["option", "ini"])
def test_strict_fails_what_the_target_cannot_run(pytester: pytest.Pytester, how: str) -> None:
    pytester.makepyfile(test_strict=STRICT_SUITE)
    args = ["-p", "no:cacheprovider", "-rs", "--ktrace-backend=fake", f"--ktrace-snapshot={DEV_VM_SNAPSHOT}"]
    if how == "option":
        args.append("--ktrace-strict")
    else:
        pytester.makeini("[pytest]\nktrace_strict = true\n")
    result = pytester.runpytest(*args)
    # a board that lost kprobes cannot turn the run green by skipping; a marker may still allow the skip
    result.assert_outcomes(passed=1, errors=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_needs_kprobes*",
            "*cannot run this test: no kprobes (kprobe_events missing) (--ktrace-strict: unmet needs fail)",
            "ktrace: fake:dev-vm-6.18-x86_64 (backend fake): Linux 6.18.44-fc-v857 x86_64; features *; 3 test(s), "
            "1 skipped for unmet ktrace_requires (--ktrace-strict fails them), 1 failed for unmet ktrace_requires*",
        ]
    )


def test_without_strict_unmet_needs_skip_and_are_counted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_strict=STRICT_SUITE)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--ktrace-backend=fake", f"--ktrace-snapshot={DEV_VM_SNAPSHOT}"
    )
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["ktrace: fake:dev-vm-6.18-x86_64 (backend fake): *; 3 test(s), 2 skipped for unmet *"])
