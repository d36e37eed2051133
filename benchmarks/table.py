"""The performance table of docs/explanation/performance.md, regenerated from the benchmarks' RESULT lines.

Usage:  .venv/bin/python benchmarks/table.py [--only NAME ...] [--skip NAME ...] [--timeout SECONDS] [--check]

Runs each selected benchmark as ``.venv/bin/python benchmarks/NAME.py ARGS`` (the arguments of its row's command,
none for a benchmark the table has no row of yet), reads its RESULT lines (``_results.parse_results``) and
rewrites the table between ``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->``: one row per figure,
the plugin's value next to the baseline measured in the same run, and their ratio. A benchmark that emits no
RESULT lines yet, failed, timed out or was not selected keeps its previous rows; rows written by hand (from
before the benchmark emitted RESULT lines) say they were not regenerated.

``--check`` runs nothing: it checks that every row's command names a benchmark that exists, and that every
benchmark that emits RESULT lines has rows.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).parent))

from _results import Result, parse_results

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
DOC = ROOT / "docs" / "explanation" / "performance.md"
START = "<!-- bench-table:start -->"
END = "<!-- bench-table:end -->"
HEADER = ("what", "command", "plugin", "baseline (same run)", "ratio")
NOT_REGENERATED = "not regenerated (no RESULT lines yet)"
PYTHON = ".venv/bin/python"
_COMMAND = re.compile(r"`(?:\S*python3?\s+)?benchmarks/(?P<name>[A-Za-z0-9_]+)\.py(?P<args>[^`]*)`")


@dataclass
class Row:
    cells: tuple[str, str, str, str, str]

    @property
    def benchmark(self) -> Optional[str]:
        """The benchmark its command runs (``bench_x``), if it names one."""
        match = _COMMAND.search(self.cells[1])
        return match.group("name") if match else None

    @property
    def args(self) -> list[str]:
        match = _COMMAND.search(self.cells[1])
        return shlex.split(match.group("args")) if match else []


# -- the document ------------------------------------------------------------------------------------------------


def split_doc(text: str) -> tuple[str, list[str], str]:
    """The text before the table (up to and including the start marker's line), the table's lines, and the
    rest (from the end marker's line). ValueError if the markers are missing or out of order."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"{DOC.name}: no table between {START} and {END}")
    head_end = text.index("\n", start) + 1
    return text[:head_end], text[head_end:end].strip("\n").splitlines(), text[end:]


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table line (``\\|`` is a pipe inside a cell)."""
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def parse_rows(lines: Sequence[str]) -> list[Row]:
    """The table's rows (not its header and separator). Rows of the old three-column table (what, command,
    result) become rows of this one marked as not regenerated."""
    rows = []
    for line in lines:
        if not line.strip().startswith("|"):
            continue
        cells = _cells(line)
        if [cell.lower() for cell in cells] in ([*HEADER], ["what", "command", "result"]):
            continue
        if all(set(cell) <= set("-: ") for cell in cells):
            continue
        if len(cells) == 3:
            cells = [cells[0], cells[1], cells[2], "—", NOT_REGENERATED]
        if len(cells) != len(HEADER):
            raise ValueError(f"a table row with {len(cells)} cells, not {len(HEADER)}: {line}")
        rows.append(Row((cells[0], cells[1], cells[2], cells[3], cells[4])))
    return rows


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: Sequence[Row]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "| " + " | ".join("---" for _ in HEADER) + " |"]
    lines += ["| " + " | ".join(_escape(cell) for cell in row.cells) + " |" for row in rows]
    return lines


def write_doc(path: Path, results: dict[str, tuple[list[str], list[Result]]]) -> None:
    """The table of ``path`` with the rows of ``results`` regenerated (read again now: rows edited by hand while
    the benchmarks ran are kept)."""
    head, lines, tail = split_doc(path.read_text())
    rows = regenerate(parse_rows(lines), results)
    path.write_text(head + "\n" + "\n".join(render(rows)) + "\n\n" + tail)  # blank lines: a table of its own


# -- figures -----------------------------------------------------------------------------------------------------


def number(value: float) -> str:
    """A figure with three significant digits, without exponents: 0.00123, 1.18, 2, 972, 1350, 12.3k, 1.2M."""
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e4:
        return f"{value / 1e3:.3g}k"
    if size >= 100:
        return f"{value:.0f}"
    text = f"{value:.3g}"
    return f"{float(text):.12f}".rstrip("0").rstrip(".") if "e" in text else text


def command_of(name: str, args: Sequence[str]) -> str:
    return "`" + " ".join([PYTHON, f"benchmarks/{name}.py", *map(shlex.quote, args)]) + "`"


def result_row(result: Result, command: str) -> Row:
    what = result.metric + (" (higher is better)" if result.better == "higher" else "")
    if result.note:
        what += f"; {result.note}"
    ratio = result.ratio
    return Row(
        (
            what,
            command,
            f"{number(result.value)} {result.unit}",
            f"{result.baseline}: {number(result.baseline_value)} {result.unit}",
            f"{number(ratio)}x" if ratio is not None else "—",
        )
    )


def regenerate(rows: Sequence[Row], results: dict[str, tuple[list[str], list[Result]]]) -> list[Row]:
    """The table with the rows of each benchmark in ``results`` (name -> its arguments and RESULTs) replaced by
    rows of its new figures, in place of its first old row; the others kept; new benchmarks at the end."""
    out: list[Row] = []
    placed: set[str] = set()
    for row in rows:
        name = row.benchmark
        if name is None or name not in results or not results[name][1]:
            out.append(row)
            continue
        if name not in placed:
            placed.add(name)
            args, found = results[name]
            out += [result_row(result, command_of(name, args)) for result in found]
    for name, (args, found) in results.items():
        if name not in placed and found:
            out += [result_row(result, command_of(name, args)) for result in found]
    return out


# -- the benchmarks ----------------------------------------------------------------------------------------------


def benchmark_files() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BENCHMARKS.glob("bench_*.py"))}


def emits_results(path: Path) -> bool:
    """Whether the benchmark reports RESULT lines (it uses ``_results.emit``)."""
    text = path.read_text()
    return bool(re.search(r"^from _results import .*\bemit\b", text, re.M)) and "emit(" in text


def check(rows: Sequence[Row], files: dict[str, Path]) -> list[str]:
    """What is wrong with the table: rows naming no benchmark or one that does not exist, benchmarks that emit
    RESULT lines without a row."""
    problems = []
    named = set()
    for row in rows:
        name = row.benchmark
        if name is None:
            problems.append(f"row {row.cells[0]!r}: its command names no benchmarks/NAME.py")
        elif name not in files:
            problems.append(f"row {row.cells[0]!r}: benchmarks/{name}.py does not exist")
        else:
            named.add(name)
    for name, path in files.items():
        if emits_results(path) and name not in named:
            problems.append(f"benchmarks/{name}.py emits RESULT lines but has no row in the table")
    return problems


def run_benchmark(name: str, args: Sequence[str], timeout: float) -> Optional[str]:
    """Run one benchmark, its output shown as it comes; its stdout, or None if it failed or timed out."""
    python = str(ROOT / PYTHON) if (ROOT / PYTHON).exists() else sys.executable
    command = [python, str(BENCHMARKS / f"{name}.py"), *args]
    print(f"== {name}: {' '.join(shlex.quote(part) for part in command)}", flush=True)
    # A session of its own: on a timeout the whole group goes (sshd, qemu, pytest workers the benchmark started).
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            print(f"   {line}", end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        reader.join(timeout=5)
        print(f"== {name}: timed out after {timeout:.0f} s; its rows are kept", flush=True)
        return None
    reader.join()
    elapsed = time.monotonic() - started
    if child.returncode != 0:
        print(f"== {name}: exit status {child.returncode} after {elapsed:.0f} s; its rows are kept", flush=True)
        return None
    print(f"== {name}: done in {elapsed:.0f} s", flush=True)
    return "".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this benchmark")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME", help="do not run this benchmark")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds each benchmark may take (1800)")
    parser.add_argument("--check", action="store_true", help="check the table against the benchmarks, run nothing")
    parser.add_argument("--doc", type=Path, default=DOC, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _, lines, _ = split_doc(args.doc.read_text())
    rows = parse_rows(lines)
    files = benchmark_files()
    if args.check:
        problems = check(rows, files)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    names = [name.removesuffix(".py") for name in args.only] or list(files)
    unknown = [name for name in [*names, *args.skip] if name.removesuffix(".py") not in files]
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)} (known: {', '.join(files)})")
    skipped = {name.removesuffix(".py") for name in args.skip}
    row_args = {}
    for row in rows:
        if row.benchmark is not None:
            row_args.setdefault(row.benchmark, row.args)
    results: dict[str, tuple[list[str], list[Result]]] = {}
    for name in names:
        if name in skipped:
            continue
        output = run_benchmark(name, row_args.get(name, []), args.timeout)
        found = parse_results(output) if output is not None else []
        if output is not None and not found:
            print(f"== {name}: no RESULT lines; its rows are kept", flush=True)
        results[name] = (row_args.get(name, []), found)
    write_doc(args.doc, results)
    regenerated = [name for name, (_, found) in results.items() if found]
    print(
        f"{args.doc.relative_to(ROOT) if args.doc.is_relative_to(ROOT) else args.doc}: rows of "
        f"{', '.join(regenerated) or 'no benchmark'} regenerated"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
