"""The index pass of the trace parser: the C helper gives exactly the rows of the Python one, on any text."""

from __future__ import annotations

import random
from typing import Callable, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_ktrace import _indexed as indexed_mod
from pytest_ktrace._formats import FormatCatalog
from pytest_ktrace._parse import TraceParser

compiled: Optional[Callable[[str], object]] = indexed_mod._compiled_index()
needs_compiled = pytest.mark.skipif(
    compiled is None, reason="pytest_ktrace._speedups is not built (no C compiler when the plugin was installed)"
)

# the pieces an event header is made of: (the kinds the kernel prints, near misses)
COMMS = (["bash", "  probed", "kworker/0:1H", "a-b", "<idle>", "a b c", "x-", "-", "é-ü"], ["", "a]b", "a-1b", "a\tb"])
PIDS = (["1", "4264"], ["", "x", "1a"])
TGIDS = (["", "(  12) ", "(-----) ", "(12-3) "], ["() ", "(12)", "( x) "])
CPUS = (["[000]", "[1]"], ["[]", "[a]", "[001", "001]"])
FLAGS = (["d..1. ", "..... ", "", "dNh2. ", "123 ", "1.5: "], ["d..1.\t", "x:y "])
STAMPS = (["452.000010", "17"], ["1.", ".5", "", "1.2.3", "\u0663.5"])
NAMES = (["ent", "sched_switch", "1", "é", "tracing_mark_write"], ["a:b", "", "x y"])
BODIES = (["", " a=1", " (0x1) x=2", ": more:", " name=eth 0"], ["\t"])
GAPS = ([" ", "  "], ["", "\t"])


def _pick(rng: random.Random, pieces: tuple[list[str], list[str]]) -> str:
    return rng.choice(pieces[0] if rng.random() < 0.9 else pieces[1])


def _header_line(rng: random.Random) -> str:
    comm, pid, tgid, cpu, flags = (_pick(rng, p) for p in (COMMS, PIDS, TGIDS, CPUS, FLAGS))
    stamp, name, body, gap1, gap2 = (_pick(rng, p) for p in (STAMPS, NAMES, BODIES, GAPS, GAPS))
    return f"{comm}-{pid}{gap1}{tgid}{cpu}{gap2}{flags}{stamp}: {name}:{body}"


def _mutated(rng: random.Random, line: str) -> str:
    if not line or rng.random() < 0.8:
        return line
    i = rng.randrange(len(line))
    return line[:i] + rng.choice(["", "-", "]", " ", ":", "1", "\u00a0", "\x85", "("]) + line[i + 1 :]


@needs_compiled
@pytest.mark.parametrize("seed", range(20))
def test_compiled_rows_are_the_python_rows_on_generated_headers(seed: int) -> None:
    rng = random.Random(seed)
    lines = [_mutated(rng, _header_line(rng)) for _ in range(3000)]
    text = "\n".join(lines) + rng.choice(["", "\n", "\n\n"])
    assert compiled is not None
    want = indexed_mod._index_rows_python(text)
    assert compiled(text) == want
    assert sum(name is not None for name in want[2]) > 300  # the generator makes real headers too


@needs_compiled
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("ab-01 .:[]()\n\t\x1c\x1f\x85\u00a0\u2028\u3000é\u0663xd")), max_size=120))
def test_compiled_rows_are_the_python_rows_on_any_text(text: str) -> None:
    assert compiled is not None
    assert compiled(text) == indexed_mod._index_rows_python(text)


@needs_compiled
@given(st.text(max_size=60))
def test_compiled_rows_are_the_python_rows_on_any_unicode(text: str) -> None:
    assert compiled is not None
    assert compiled(text) == indexed_mod._index_rows_python(text)


@needs_compiled
def test_compiled_rows_reject_non_text() -> None:
    assert compiled is not None
    with pytest.raises(TypeError, match="trace text must be str, got bytes"):
        compiled(b"x-1 [000] 1.0: ev:")


@needs_compiled
def test_compiled_rows_repeat_names_and_heads_as_the_same_objects() -> None:
    """What keeps its allocations down: a recent name or head is handed out again, not copied."""
    assert compiled is not None
    heads, _stamps, names, _bodies = compiled("\n".join(f"bash-42 [001] d..1. {i}.5: ev: x={i}" for i in range(50)))
    assert len({id(n) for n in names}) == 1 and len({id(h) for h in heads}) == 1  # type: ignore[attr-defined]


def test_the_parser_uses_the_compiled_index_when_it_is_built() -> None:
    assert indexed_mod._index_rows is (compiled or indexed_mod._index_rows_python)


def test_the_python_index_parses_as_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the C helper the parser gives the same results (the rest of the suite runs with it)."""
    from test_parse import FAST_FORMATS, _check_against_reference, _fast_text

    monkeypatch.setattr(indexed_mod, "_index_rows", indexed_mod._index_rows_python)
    cat = FormatCatalog(FAST_FORMATS)
    for seed in range(3):
        text = _fast_text(seed, 2000)
        _check_against_reference(TraceParser(cat).parse(text), TraceParser(cat)._parse_slow(text), ["all"])


FAKE_SUITE = """
def test_traced(ktrace):
    probe = ktrace.tracepoint("sched:sched_process_exec")
    ktrace.inject(probe, filename="/bin/true", pid=42, old_pid=42)
    assert probe.called
"""


@pytest.mark.parametrize("built", [True, False])
def test_the_run_says_when_the_parser_ran_without_its_helper(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, built: bool
) -> None:
    if not built:  # as where it could not be built: the parser runs its index pass in Python
        monkeypatch.setattr(indexed_mod, "_index_rows", indexed_mod._index_rows_python)
    elif compiled is None:
        pytest.skip("pytest_ktrace._speedups is not built (no C compiler when the plugin was installed)")
    pytester.makepyfile(test_suite=FAKE_SUITE)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--ktrace-backend=fake", "--ktrace-snapshot=debian-6.12-x86_64"
    )
    result.assert_outcomes(passed=1)
    note = "ktrace: the trace parser ran without its C helper*"
    if built:
        result.stdout.no_fnmatch_line(note)
    else:
        result.stdout.fnmatch_lines([note])
