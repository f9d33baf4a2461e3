"""``python manage.py benchmark --scale-curve``: does an incremental run stay the same size as the
tables grow?

A workflow that reads only what changed should spend as long on 10,000 new rows whether a million or
a hundred thousand rows came before them. One that scans a whole table (or every partition of a log
table) somewhere in its incremental path grows with the base instead, which the single-scale
benchmark cannot tell apart from a slow machine. So for each case, at each base size: fill the
scratch database, run the workflow in full (its time per row), add the same fixed increment of new
rows and run it again, a few times; the figure is the ratio of the incremental run's time on the
largest base to that on the smallest (1.0 = independent of the base).

No SQL bound is timed here: the single-scale benchmark does that, and at the largest bases it would
double the time of the curve.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.core.management import call_command
from django.db import connection

from campaign.bulk_load import analyze
from campaign.partitions import ensure_partitions
from workflows.benchmarks import BenchmarkCase
from workflows.benchmarks.runner import run_workflow_process

#: The base sizes measured by default. 10,000,000 is not among them: on this project's 2-core
#: machine the whole curve takes about 10 minutes at 1,000,000 rows (filling and running in full
#: dominate, in proportion to the base), so over an hour at 10,000,000; pass it where the machine allows.
DEFAULT_SIZES = (100_000, 1_000_000)
#: New source rows before each incremental run: 1% of the smallest default base, 0.1% of the largest.
DEFAULT_INCREMENT = 10_000
#: Incremental runs at each base size, each after its own increment; their median is the figure.
#: One run of a fraction of a second is mostly the machine's noise.
DEFAULT_INCREMENTAL_RUNS = 3
#: The growth ratio an incremental workflow should stay within (largest base / smallest base).
TARGET_GROWTH = 1.5


@dataclass
class ScalePoint:
    """One base size of one case."""

    base_rows: int
    full_seconds: float
    incremental_seconds: list[float]

    @property
    def full_us_per_row(self) -> float:
        return self.full_seconds / self.base_rows * 1_000_000

    @property
    def incremental_median(self) -> float:
        return statistics.median(self.incremental_seconds)


@dataclass
class ScaleCurve:
    workflow: str
    increment: int
    points: list[ScalePoint]

    @property
    def growth(self) -> float | None:
        """Incremental time on the largest base over that on the smallest; None with one size or a
        zero time at the smallest."""
        if len(self.points) < 2 or not self.points[0].incremental_median:
            return None
        return self.points[-1].incremental_median / self.points[0].incremental_median

    def as_json(self) -> dict[str, Any]:
        return {
            "case": "scaleCurve",
            "workflow": self.workflow,
            "increment": self.increment,
            "points": [{**asdict(point), "full_us_per_row": round(point.full_us_per_row, 3),
                        "incremental_median": round(point.incremental_median, 3)} for point in self.points],
            "growth": round(self.growth, 2) if self.growth is not None else None,
        }


def check_sizes(sizes: Iterable[int], *, increment: int, runs: int) -> list[int]:
    """The base sizes, ascending and distinct; a ValueError says what is wrong with them."""
    ordered = sorted(set(sizes))
    if not ordered:
        raise ValueError("give at least one base size")
    if ordered[0] < 100:
        raise ValueError(f"base sizes must be at least 100 rows (got {ordered[0]:,})")
    if increment < 1:
        raise ValueError(f"the increment must be at least 1 row (got {increment:,})")
    if runs < 1:
        raise ValueError(f"at least one incremental run per size (got {runs})")
    return ordered


def run_scale_curve(case: BenchmarkCase, *, sizes: Sequence[int], increment: int, seed: int,
                    runs: int = DEFAULT_INCREMENTAL_RUNS) -> ScaleCurve:
    """Measure ``case`` at each base size in ``sizes`` (ascending); each size starts from an empty
    database. Every run goes through :func:`run_workflow_process`, a fresh process as a worker."""
    points = []
    for base_rows in sizes:
        call_command("flush", interactive=False, verbosity=0)  # also recreates the workflows (post_migrate)
        case.populate(rows=base_rows, seed=seed)
        # The cases load history dated before the partitions made ahead of time: give each month
        # its partition, as the partition maintenance does, so the base is partitioned as in production.
        ensure_partitions()
        analyze()
        full_seconds, _peak = run_workflow_process(case.workflow_id, case.properties())
        if case.settle():
            run_workflow_process(case.workflow_id, case.properties())
        vacuum()
        incremental = []
        for run in range(runs):
            case.add_increment(rows=increment, seed=seed + 1 + run)
            analyze()
            seconds, _peak = run_workflow_process(case.workflow_id, case.properties())
            incremental.append(round(seconds, 3))
        points.append(ScalePoint(base_rows=base_rows, full_seconds=round(full_seconds, 3), incremental_seconds=incremental))
    return ScaleCurve(workflow=case.workflow_id, increment=increment, points=points)


def vacuum() -> None:
    """PostgreSQL: what autovacuum does in the hours after a full run rewrote most of a table. The
    full run leaves a dead row version behind every row it updated or deleted (a million at the
    largest base), which an index scan of the next run would step over: a state of the first
    minutes after a catch-up, not of the incremental runs that follow it in production."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


def scale_curve_lines(curves: Sequence[ScaleCurve]) -> list[str]:
    """The curves as a table: per base size, the full run's time per row and the incremental runs;
    per case, the growth of the incremental run from the smallest base to the largest."""
    if not curves:
        return []
    increment = curves[0].increment
    runs = len(curves[0].points[0].incremental_seconds) if curves[0].points else 0
    lines = [
        f"scale curve: increment {increment:,} new rows, median of {runs} incremental run{'s' if runs != 1 else ''} per base",
        f"{'workflow':<26}{'base rows':>12}{'full s':>9}{'µs/row':>9}{'incr s':>8}  incremental runs",
    ]
    for curve in curves:
        for index, point in enumerate(curve.points):
            name = curve.workflow if index == 0 else ""
            runs_text = ", ".join(f"{seconds:.3f}" for seconds in point.incremental_seconds)
            lines.append(f"{name:<26}{point.base_rows:>12,}{point.full_seconds:>9.2f}{point.full_us_per_row:>9.1f}"
                         f"{point.incremental_median:>8.3f}  {runs_text}")
        if curve.growth is not None:
            smallest, largest = curve.points[0].base_rows, curve.points[-1].base_rows
            verdict = "within" if curve.growth <= TARGET_GROWTH else "ABOVE"
            lines.append(f"{'':<26}incremental growth {largest:,} / {smallest:,} base: {curve.growth:.2f}x "
                         f"({verdict} the target {TARGET_GROWTH}x)")
    return lines
