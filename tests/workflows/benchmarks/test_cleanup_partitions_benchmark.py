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


def test_the_table_gives_both_times_the_speedup_and_the_writers_worst_wait() -> None:
    lines = partition_lines(PartitionCleanupResult(
        workflow=CASE_NAME, rows=1_000_000, seconds=0.25, delete_seconds=2.5, speedup=10.0, partitions_dropped=5,
        rows_purged_by_row=10_000, worst_insert_ms=12.5, inserts=200, same_result=True,
        slowest_activities=[("purge_delivery_logs", 0.12)], drop_timing="detached in 20 ms, dropped in 40 ms"))

    assert lines[0] == (f"{CASE_NAME}: 1,000,000 expired delivery logs; cleanup run 0.25 s (5 partitions dropped, "
                        "10,000 edge rows purged row by row), one DELETE 2.50 s: 10.0x faster; same rows left: yes")
    assert "partitions detached in 20 ms, dropped in 40 ms" in lines[1]
    assert "worst 12.5 ms" in lines[2]


@pytest.mark.django_db
def test_the_case_is_refused_on_sqlite_by_name() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL runs the case")
    with pytest.raises(CommandError, match=f"{CASE_NAME} needs PostgreSQL"):
        call_command("benchmark", "--only", CASE_NAME, stdout=StringIO(), stderr=StringIO())


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_case_drops_the_expired_partitions_and_leaves_the_rows_the_delete_leaves(tmp_path: Path) -> None:
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
    assert (case["partitions_dropped"], case["rows_purged_by_row"]) == (5, 10), "five whole months, 1% at the edge"
    assert case["inserts"] > 0 and case["worst_insert_ms"] < 1000
    assert case["seconds"] > 0 and case["delete_seconds"] > 0
    assert case["drop_timing"].startswith("detached in ")
