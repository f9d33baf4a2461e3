"""Run benchmark cases: the workflow in a child process (as a worker would run it, with its own
peak memory) against the minimal SQL on the same data, then the incremental run.

Everything happens in a scratch database created for the benchmark and dropped afterwards, so a
benchmark never touches the instance's data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction

from campaign.bulk_load import analyze
from workflows.benchmarks import BenchmarkCase
from workflows.worker_process import current_database_url


@dataclass
class Result:
    workflow: str
    rows: int
    seconds: float
    sql_seconds: float
    ratio: float
    peak_rss_mb: float
    incremental_seconds: float
    same_result: bool

    def as_json(self) -> dict[str, Any]:
        """The keys every benchmark case reports, plus ``same_result`` (the workflow's output matched the SQL's)."""
        return asdict(self)


class BenchmarkError(Exception):
    pass


def scratch_database(*, keep: bool = False) -> tuple[str, str]:
    """Create the scratch database and connect to it; returns (old name, scratch name)."""
    old_name = connection.settings_dict["NAME"]
    if connection.vendor == "sqlite":
        scratch = str(settings.VAR_DIR / "benchmark.sqlite3")
    else:
        scratch = f"benchmark_{old_name}"
    connection.settings_dict.setdefault("TEST", {})["NAME"] = scratch
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False, keepdb=keep)
    return old_name, scratch


def drop_scratch_database(old_name: str) -> None:
    connection.creation.destroy_test_db(old_name, verbosity=0)


def run_case(case: BenchmarkCase, *, rows: int, seed: int) -> Result:
    call_command("flush", interactive=False, verbosity=0)  # also recreates the workflows (post_migrate)
    case.populate(rows=rows, seed=seed)
    analyze()

    with transaction.atomic():
        started = time.perf_counter()
        case.sql_bound()
        if connection.vendor == "postgresql":
            # The bound is rolled back, so deferred foreign-key checks would never run; the
            # workflow pays them at each commit. Check them now, inside the timing.
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        sql_seconds = time.perf_counter() - started
        expected = case.fingerprint()
        transaction.set_rollback(True)

    seconds, peak_rss_mb = run_workflow_process(case.workflow_id, case.properties())
    same_result = case.fingerprint() == expected

    if case.settle():
        run_workflow_process(case.workflow_id, case.properties())
    case.add_increment(rows=max(1, rows // 100), seed=seed + 1)
    analyze()
    incremental_seconds, incremental_rss_mb = run_workflow_process(case.workflow_id, case.properties())

    return Result(
        workflow=case.workflow_id,
        rows=rows,
        seconds=round(seconds, 3),
        sql_seconds=round(sql_seconds, 3),
        ratio=round(seconds / sql_seconds, 2) if sql_seconds else 0.0,
        peak_rss_mb=round(max(peak_rss_mb, incremental_rss_mb), 1),
        incremental_seconds=round(incremental_seconds, 3),
        same_result=same_result,
    )


def run_workflow_process(workflow_id: str, properties: dict[str, Any]) -> tuple[float, float]:
    """Run the workflow once in a fresh child process (:mod:`workflows.benchmarks.child`); returns
    (run seconds as the engine measured them, the child's own peak resident memory in MB)."""
    arguments = [sys.executable, "-m", "workflows.benchmarks.child", workflow_id, json.dumps(properties)]
    env = {**os.environ, "DATABASE_URL": current_database_url(), "SECRET_KEY": settings.SECRET_KEY}
    completed = subprocess.run(arguments, cwd=settings.BASE_DIR, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise BenchmarkError(f"{workflow_id} could not run: {completed.stderr.strip()[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    run = result["run"]
    if run["status"] != "succeeded":
        raise BenchmarkError(f"{workflow_id} run #{run['run_id']} {run['status']}: {run['reason']}")
    return float(run["duration_s"]), float(result["peak_rss_mb"])
