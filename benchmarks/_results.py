"""The figures a benchmark reports for the performance table, as one ``RESULT {json}`` line each.

Every figure is the plugin's measurement next to a baseline measured in the same run, so a row reads the same on
a slower machine: the ratio is what the table shows first. ``benchmarks/table.py`` runs the benchmarks, reads
these lines and rewrites the table in ``docs/explanation/performance.md``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Literal, Optional

__all__ = ["Result", "emit", "parse_results"]

PREFIX = "RESULT "


@dataclass(frozen=True)
class Result:
    benchmark: str  # the script's name without .py, e.g. "bench_fake"
    metric: str  # what was measured, e.g. "two-probe test, plugin time"
    value: float  # the plugin's figure
    unit: str  # "ms", "lines/s", "events/s", "round trips", ...
    baseline: str  # what it is compared with, e.g. "the same tracefs writes in a bare Python loop"
    baseline_value: float
    better: Literal["lower", "higher"] = "lower"
    note: str = ""

    @property
    def ratio(self) -> Optional[float]:
        """value / baseline_value (None when the baseline is 0)."""
        return self.value / self.baseline_value if self.baseline_value else None


def emit(result: Result) -> None:
    """Print ``result`` as a RESULT line on stdout (after the benchmark's own human-readable output)."""
    print(PREFIX + json.dumps(asdict(result), sort_keys=True), file=sys.stdout, flush=True)


def parse_results(text: str) -> list[Result]:
    """The RESULT lines of a benchmark's output, in order."""
    results = []
    for line in text.splitlines():
        if line.startswith(PREFIX):
            results.append(Result(**json.loads(line[len(PREFIX) :])))
    return results
