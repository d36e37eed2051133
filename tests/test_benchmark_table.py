"""benchmarks/table.py: the performance table in the docs against the benchmarks, and the table regenerated from
RESULT lines (canned ones, and tiny benchmarks run for real)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


table = _load("ktrace_bench_table", ROOT / "benchmarks" / "table.py")
results = sys.modules["_results"]  # the module table.py reads RESULT lines with

OLD_TABLE = """\
# Performance

<!-- bench-table:start -->

| what | command | result |
| --- | --- | --- |
| per-test overhead | `.venv/bin/python benchmarks/bench_per_test.py` | local 140 ms |
| qemu guests | `.venv/bin/python benchmarks/bench_vm_workers.py --tests 40 --arch x86_64` (and `--arch arm64`) | 29 s |
| loading the plugin | `.venv/bin/python benchmarks/bench_import.py` | about 6 ms |

<!-- bench-table:end -->

## What the figures mean
"""


def _result(**changes: Any) -> Any:
    fields: dict[str, Any] = {
        "benchmark": "bench_import",
        "metric": "import",
        "value": 1.25,
        "unit": "ms",
        "baseline": "import pytest",
        "baseline_value": 125.0,
    }
    fields.update(changes)
    return results.Result(**fields)


def test_the_docs_table_names_existing_benchmarks_and_every_one_that_reports() -> None:
    _, lines, _ = table.split_doc(table.DOC.read_text())
    rows = table.parse_rows(lines)
    assert rows
    assert table.check(rows, table.benchmark_files()) == []


def test_check_from_the_command_line() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table.py"), "--check"], capture_output=True)
    assert done.returncode == 0, done.stderr


def test_check_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "bench_reports.py").write_text("from _results import Result, emit\n\nemit(Result(...))\n")
    (tmp_path / "bench_quiet.py").write_text("print('figures for people only')\n")
    files = {path.stem: path for path in tmp_path.iterdir()}
    rows = table.parse_rows(
        [
            "| a | `.venv/bin/python benchmarks/bench_quiet.py` | 1 ms |",
            "| b | `.venv/bin/python benchmarks/bench_gone.py --rounds 3` | 2 ms |",
            "| c | see elsewhere | 3 ms |",
        ]
    )
    assert table.check(rows, files) == [
        "row 'b': benchmarks/bench_gone.py does not exist",
        "row 'c': its command names no benchmarks/NAME.py",
        "benchmarks/bench_reports.py emits RESULT lines but has no row in the table",
    ]


def test_parse_results_reads_only_result_lines() -> None:
    first, second = _result(), _result(metric="run", value=980.0, baseline_value=990.5, note="CPU time")
    text = "\n".join(
        [
            "import pytest    125.0 ms",
            results.PREFIX + json.dumps(first.__dict__),
            "a RESULT in the middle of a line is prose",
            results.PREFIX + json.dumps(second.__dict__),
        ]
    )
    assert results.parse_results(text) == [first, second]


def test_old_rows_are_kept_marked_and_a_benchmarks_rows_are_replaced_in_place() -> None:
    _, lines, _ = table.split_doc(OLD_TABLE)
    rows = table.parse_rows(lines)
    assert [row.benchmark for row in rows] == ["bench_per_test", "bench_vm_workers", "bench_import"]
    assert rows[1].args == ["--tests", "40", "--arch", "x86_64"]
    assert all(row.cells[3:] == ("—", table.NOT_REGENERATED) for row in rows)

    new = table.regenerate(
        rows,
        {
            "bench_per_test": ([], [_result(benchmark="bench_per_test", metric="a", value=2.0, baseline_value=1.0)]),
            "bench_import": ([], []),  # ran without RESULT lines: its row stays
            "bench_new": (
                ["--fast"],
                [
                    _result(benchmark="bench_new", metric="x|y", value=1.5e6, unit="lines/s", better="higher"),
                    _result(benchmark="bench_new", metric="z", baseline_value=0.0, note="n"),
                ],
            ),
        },
    )
    assert [row.cells for row in new] == [
        ("a", "`.venv/bin/python benchmarks/bench_per_test.py`", "2 ms", "import pytest: 1 ms", "2x"),
        rows[1].cells,
        rows[2].cells,
        (
            "x|y (higher is better)",
            "`.venv/bin/python benchmarks/bench_new.py --fast`",
            "1.5M lines/s",
            "import pytest: 125 lines/s",
            "12k" + "x",
        ),
        ("z; n", "`.venv/bin/python benchmarks/bench_new.py --fast`", "1.25 ms", "import pytest: 0 ms", "—"),
    ]
    rendered = table.render(new)
    assert rendered[0] == "| what | command | plugin | baseline (same run) | ratio |"
    assert "x\\|y (higher is better)" in rendered[5]
    assert [row.cells for row in table.parse_rows(rendered)] == [row.cells for row in new]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (0.0000123, "0.0000123"),
        (0.00123, "0.00123"),
        (1.18, "1.18"),
        (2.0, "2"),
        (12.34, "12.3"),
        (99.96, "100"),
        (972.4, "972"),
        (1349.6, "1350"),
        (12345, "12.3k"),
        (1.2e6, "1.2M"),
    ],
)
def test_numbers_have_three_significant_digits(value: float, text: str) -> None:
    assert table.number(value) == text


def test_a_document_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="bench-table:start"):
        table.split_doc("# Performance\n\n| what | command | result |\n")


def test_a_run_regenerates_what_reported_and_keeps_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real benchmarks (tiny ones) run by the script: one reports, one prints prose only, one outlives its
    timeout; the document around the table is left as it was."""
    benchmarks = tmp_path / "benchmarks"
    benchmarks.mkdir()
    line = results.PREFIX + json.dumps(_result(benchmark="bench_fast", metric="fast", value=3.0).__dict__)
    (benchmarks / "bench_fast.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            print("args", sys.argv[1:])
            print({line!r})
            """
        )
    )
    (benchmarks / "bench_prose.py").write_text("print('42 ms, for people')\n")
    (benchmarks / "bench_slow.py").write_text("import time\ntime.sleep(60)\n")
    doc = tmp_path / "performance.md"
    doc.write_text(
        OLD_TABLE.replace("bench_per_test.py", "bench_fast.py --rounds 2")
        .replace("bench_vm_workers.py --tests 40 --arch x86_64", "bench_slow.py")
        .replace("bench_import.py", "bench_prose.py")
    )
    before = doc.read_text()
    monkeypatch.setattr(table, "BENCHMARKS", benchmarks)
    assert table.main(["--doc", str(doc), "--timeout", "3"]) == 0
    text = doc.read_text()
    assert text.split("<!-- bench-table:start -->")[0] == before.split("<!-- bench-table:start -->")[0]
    assert text.split("<!-- bench-table:end -->")[1] == before.split("<!-- bench-table:end -->")[1]
    rows = table.parse_rows(table.split_doc(text)[1])
    assert [row.cells[0] for row in rows] == ["fast", "qemu guests", "loading the plugin"]
    assert rows[0].cells[1:] == (
        "`.venv/bin/python benchmarks/bench_fast.py --rounds 2`",
        "3 ms",
        "import pytest: 125 ms",
        "0.024x",
    )
    assert rows[1].cells[4] == rows[2].cells[4] == table.NOT_REGENERATED

    assert table.main(["--doc", str(doc), "--only", "bench_fast"]) == 0  # the same figures: the same document
    assert doc.read_text() == text
