"""``manage.py benchmark``'s cleanup-by-partition case: refused on SQLite, its table, and a real run
at a small count in its own process (PostgreSQL, scratch database)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from workflows.benchmarks.cleanup_partitions import CASE_NAME, PartitionCleanupResult
from workflows.management.commands.benchmark import partition_lines
from workflows.worker_process import current_database_url


def test_the_table_gives_both_comparisons_the_whole_run_and_the_writers_worst_wait() -> None:
    lines = partition_lines(PartitionCleanupResult(
        workflow=CASE_NAME, rows=1_000_000, seconds=0.25, purge_seconds=0.04, drop_seconds=0.08, delete_seconds=0.5,
        vacuum_seconds=0.7, speedup=12.5, speedup_with_space=10.0, partitions_detached=5, rows_purged_by_row=10_000,
        worst_insert_ms=12.5, inserts=200, same_result=True, slowest_activities=[("drop_detached_partitions", 0.08)],
        detach_timing="17 ms"))

    assert lines[0] == (f"{CASE_NAME}: 1,000,000 expired delivery logs; purge_delivery_logs 0.040 s (5 partitions "
                        "detached in 17 ms, 10,000 edge rows purged row by row), one DELETE 0.500 s: 12.5x faster; "
                        "same rows left: yes")
    assert lines[1] == ("  space given back too: + drop_detached_partitions 0.080 s, against + VACUUM of the emptied "
                        "partitions 0.700 s: 10.0x faster")
    assert lines[2] == "  whole cleanup run 0.25 s; slowest activities: drop_detached_partitions 0.08 s"
    assert "worst 12.5 ms" in lines[3]


@pytest.mark.django_db
def test_the_case_is_refused_on_sqlite_by_name() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL runs the case")
    with pytest.raises(CommandError, match=f"{CASE_NAME} needs PostgreSQL"):
        call_command("benchmark", "--only", CASE_NAME, stdout=StringIO(), stderr=StringIO())


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_case_detaches_the_expired_partitions_and_leaves_the_rows_the_delete_leaves(tmp_path: Path) -> None:
    """Run as CI would: a process of its own, on this test run's PostgreSQL."""
    env = {**os.environ, "DATABASE_URL": current_database_url(), "VAR_DIR": str(tmp_path),
           "SECRET_KEY": settings.SECRET_KEY}
    completed = subprocess.run(
        [sys.executable, "manage.py", "benchmark", "--only", CASE_NAME, "--partition-rows", "1000", "--json"],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=300, check=False,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    [case] = json.loads(completed.stdout)
    assert case["workflow"] == CASE_NAME and case["rows"] == 1000
    assert case["same_result"] is True
    assert (case["partitions_detached"], case["rows_purged_by_row"]) == (5, 10), "five whole months, 1% at the edge"
    assert case["inserts"] > 0 and case["worst_insert_ms"] < 1000
    assert 0 < case["purge_seconds"] < case["seconds"] and 0 < case["drop_seconds"] < case["seconds"]
    assert case["delete_seconds"] > 0 and case["vacuum_seconds"] > 0
    assert case["detach_timing"].endswith(" ms")
