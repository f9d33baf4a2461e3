"""``manage.py benchmark --scale-curve``: the growth figure, the table, the refusals, and a real run
of two workflows at tiny bases in a process of its own (scratch database, this test run's engine)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from workflows.benchmarks import all_cases
from workflows.benchmarks.scale_curve import TARGET_GROWTH, ScaleCurve, ScalePoint, check_sizes, scale_curve_lines
from workflows.worker_process import current_database_url


def curve(small: list[float], large: list[float]) -> ScaleCurve:
    return ScaleCurve(workflow="someWorkflow", increment=50, points=[
        ScalePoint(base_rows=1_000, full_seconds=0.5, incremental_seconds=small),
        ScalePoint(base_rows=10_000, full_seconds=4.0, incremental_seconds=large),
    ])


def test_growth_is_the_median_incremental_time_on_the_largest_base_over_the_smallest() -> None:
    measured = curve(small=[0.10, 0.30, 0.20], large=[0.25, 0.90, 0.30])

    assert measured.points[0].incremental_median == 0.20
    assert measured.points[1].incremental_median == 0.30
    assert measured.growth == pytest.approx(1.5)
    assert measured.points[1].full_us_per_row == pytest.approx(400.0)


def test_one_base_size_has_no_growth() -> None:
    point = ScalePoint(base_rows=500, full_seconds=1.0, incremental_seconds=[0.1])
    single = ScaleCurve(workflow="w", increment=50, points=[point])

    assert single.growth is None
    assert single.as_json()["growth"] is None
    assert not any("growth" in line for line in scale_curve_lines([single]))


def test_the_table_flags_a_growth_above_the_target() -> None:
    lines = scale_curve_lines([curve(small=[0.1], large=[0.2]), curve(small=[0.1], large=[0.12])])

    verdicts = [line for line in lines if "incremental growth" in line]
    assert "2.00x (ABOVE the target" in verdicts[0]
    assert f"1.20x (within the target {TARGET_GROWTH}x)" in verdicts[1]
    assert "10,000 / 1,000 base" in verdicts[0]


def test_sizes_are_sorted_and_bad_arguments_refused() -> None:
    assert check_sizes([2_000, 200, 2_000], increment=50, runs=1) == [200, 2_000]
    with pytest.raises(ValueError, match="at least 100 rows"):
        check_sizes([50, 2_000], increment=50, runs=1)
    with pytest.raises(ValueError, match="increment"):
        check_sizes([200], increment=0, runs=1)
    with pytest.raises(ValueError, match="incremental run"):
        check_sizes([200], increment=10, runs=0)


def test_the_command_refuses_bad_sizes_and_unknown_workflows_before_filling_anything() -> None:
    with pytest.raises(CommandError, match="at least 100 rows"):
        call_command("benchmark", "--scale-curve", "50", stdout=StringIO(), stderr=StringIO())
    with pytest.raises(CommandError, match="noSuchWorkflow"):
        call_command("benchmark", "--scale-curve", "200", "--only", "noSuchWorkflow", stdout=StringIO(), stderr=StringIO())


def test_the_default_curve_leaves_out_the_workflow_that_recounts_its_month() -> None:
    incremental = [workflow_id for workflow_id, case in all_cases().items() if case.incremental]

    assert "billing" not in incremental
    expected = {"updateDeliveryExecInfo", "reportingAggregates", "mcSynch_local", "updateEventsStatus", "abTesting"}
    assert expected <= set(incremental)


def test_a_tiny_curve_runs_each_workflow_in_full_then_after_each_increment(db: None, tmp_path: Path) -> None:
    """Run as an operator would: a process of its own, on this test run's database engine."""
    url = f"sqlite:///{tmp_path / 'campaign.sqlite3'}" if connection.vendor == "sqlite" else current_database_url()
    env = {**os.environ, "DATABASE_URL": url, "VAR_DIR": str(tmp_path), "SECRET_KEY": settings.SECRET_KEY}
    completed = subprocess.run(
        [sys.executable, "manage.py", "benchmark", "--scale-curve", "2000", "200", "--increment", "50", "--runs", "2",
         "--only", "updateEventsStatus", "mcSynch_local", "--json"],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=600, check=False,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    curves = json.loads(completed.stdout)
    assert [item["workflow"] for item in curves] == ["updateEventsStatus", "mcSynch_local"]
    for item in curves:
        assert item["case"] == "scaleCurve" and item["increment"] == 50
        assert [point["base_rows"] for point in item["points"]] == [200, 2000]
        for point in item["points"]:
            # Durations as the engine recorded each run; a run that did not succeed aborts the command.
            assert point["full_seconds"] > 0
            assert len(point["incremental_seconds"]) == 2 and all(seconds > 0 for seconds in point["incremental_seconds"])
        small, large = (statistics.median(point["incremental_seconds"]) for point in item["points"])
        assert item["growth"] == pytest.approx(large / small, abs=0.006)
    if connection.vendor == "sqlite":
        assert not (tmp_path / "benchmark.sqlite3").exists(), "the scratch database is dropped afterwards"
