"""``manage.py benchmark``'s engine fixed-cost and event ingestion cases: their figures, their tables,
and a real run of each at a small count in its own process (scratch database, worker or gunicorn,
broker of this test run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from workflows.benchmarks.event_ingestion import CASE_NAME as INGESTION_CASE
from workflows.benchmarks.event_ingestion import EventIngestionResult, Load, requests_for_rows
from workflows.benchmarks.fixed_cost import CASE_NAME, POLL_INTERVAL_S, FixedCostResult, Latency, percentile
from workflows.management.commands.benchmark import TARGET_ADDED_P50_MS, fixed_cost_lines, ingestion_lines
from workflows.worker_process import current_database_url

RUNS = 5


def result(*, bare: Latency | None, workflow: Latency | None, skipped: str = "") -> FixedCostResult:
    return FixedCostResult(
        runs=RUNS, database="postgresql", broker="redis" if bare else "filesystem", poll_period_ms=1.2 if bare else None,
        bare_task=bare, noop_workflow=workflow, worker_skipped=skipped,
        activity_call=Latency(p50_ms=0.0, p95_ms=0.01), noop_run_in_process=Latency(p50_ms=12.5, p95_ms=20.0),
        round_trips_per_run=29, load_average=0.5,
    )


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(value) for value in range(20, 0, -1)]  # 20 … 1, unsorted on purpose

    assert percentile(values, 0.50) == 10.0
    assert percentile(values, 0.95) == 19.0
    assert percentile([7.0], 0.95) == 7.0


def test_latency_is_reported_in_milliseconds_and_the_difference_is_of_the_percentiles() -> None:
    bare = Latency.of([0.004] * 19 + [0.010])
    workflow = Latency.of([0.020] * 10 + [0.030] * 10)

    assert (bare.p50_ms, bare.p95_ms) == (4.0, 4.0)
    assert (workflow.p50_ms, workflow.p95_ms) == (20.0, 30.0)
    assert workflow.minus(bare) == Latency(p50_ms=16.0, p95_ms=26.0)


def test_the_table_gives_both_kinds_their_difference_the_target_and_the_polling_resolution() -> None:
    lines = fixed_cost_lines(result(bare=Latency(p50_ms=4.0, p95_ms=6.0), workflow=Latency(p50_ms=19.5, p95_ms=31.0)))
    text = "\n".join(lines)

    assert f"{RUNS} runs of each kind on postgresql, broker redis" in lines[0]
    assert f"polled every {POLL_INTERVAL_S * 1000:g} ms: one look per 1.20 ms measured" in text
    added = next(line for line in lines if line.strip().startswith("added by the engine"))
    assert added.split()[4:6] == ["15.50", "25.00"]
    assert added.endswith(f"target: at most {TARGET_ADDED_P50_MS} ms p50 added on PostgreSQL")
    in_process_added = [line for line in lines if line.strip().startswith("added by the engine")][1]
    assert in_process_added.split()[4:6] == ["12.50", "19.99"]


def test_the_table_says_why_the_worker_figures_are_missing() -> None:
    lines = fixed_cost_lines(result(bare=None, workflow=None, skipped="the embedded filesystem broker is polled"))

    assert "through a worker: not measured (the embedded filesystem broker is polled)" in lines
    assert not any("target" in line for line in lines)
    in_process = next(line for line in lines if line.strip().startswith("no-op workflow (run_now, sync=True)"))
    assert in_process.endswith("29 database round trips per run")


def test_an_unknown_case_is_refused_naming_the_fixed_cost_case() -> None:
    with pytest.raises(CommandError, match=CASE_NAME):
        call_command("benchmark", "--only", "noSuchWorkflow", stdout=StringIO(), stderr=StringIO())


@pytest.mark.worker
def test_the_fixed_cost_case_measures_a_noop_workflow_against_a_bare_task(db: None, tmp_path: Path) -> None:
    """Run as CI runs it: a process of its own, on this test run's database engine and broker."""
    url = f"sqlite:///{tmp_path / 'campaign.sqlite3'}" if connection.vendor == "sqlite" else current_database_url()
    env = {**os.environ, "DATABASE_URL": url, "VAR_DIR": str(tmp_path), "SECRET_KEY": settings.SECRET_KEY}
    completed = subprocess.run(
        [sys.executable, "manage.py", "benchmark", "--only", CASE_NAME, "--runs", str(RUNS), "--json"],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=300, check=False,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    [case] = json.loads(completed.stdout)
    assert (case["case"], case["runs"], case["database"]) == (CASE_NAME, RUNS, connection.vendor)
    assert case["poll_interval_ms"] == POLL_INTERVAL_S * 1000

    in_process = case["in_process"]
    assert 0 < in_process["noop_workflow"]["p50_ms"] <= in_process["noop_workflow"]["p95_ms"]
    assert in_process["activity_call"]["p50_ms"] < in_process["noop_workflow"]["p50_ms"]
    # Claim, run and activity rows, journal, release: each at least one statement.
    assert in_process["round_trips_per_run"] >= 8
    assert in_process["added"]["p50_ms"] == pytest.approx(
        in_process["noop_workflow"]["p50_ms"] - in_process["activity_call"]["p50_ms"], abs=0.011)

    if urlsplit(settings.CELERY_BROKER_URL).scheme == "filesystem":
        assert case["through_worker"] is None
        assert "filesystem broker" in case["through_worker_skipped"]
    else:
        worker = case["through_worker"]
        bare, workflow = worker["bare_task"], worker["noop_workflow"]
        assert 0 < bare["p50_ms"] <= bare["p95_ms"]
        # The engine's bookkeeping is several committed statements the bare task does not make.
        assert bare["p50_ms"] < workflow["p50_ms"] <= workflow["p95_ms"]
        assert worker["added"]["p50_ms"] == pytest.approx(workflow["p50_ms"] - bare["p50_ms"], abs=0.011)
        assert case["poll_period_ms"] >= case["poll_interval_ms"]
    if connection.vendor == "sqlite":
        assert not (tmp_path / "benchmark.sqlite3").exists(), "the scratch database is dropped afterwards"


# --- eventIngestion ------------------------------------------------------------------------------


def load(*, endpoint: str = "POST /api/events/benchmark.single.8", clients: int = 8, requests: int = 400,
         events: int = 400, lost: int = 0, duplicated: int = 0, refused: int = 0) -> Load:
    return Load(endpoint=endpoint, clients=clients, requests=requests, events=events, seconds=1.0, p50_ms=12.0,
                p95_ms=30.0, p99_ms=45.0, client_cpu_share=0.1, server_cpu_share=1.2, refused=refused, lost=lost,
                duplicated=duplicated)


def test_the_ingestion_table_gives_throughput_percentiles_cpu_and_integrity() -> None:
    result = EventIngestionResult(
        database="postgresql", config="gunicorn.conf.py", workers=2, threads=8,
        single=[load(), load(endpoint="POST /api/events/benchmark.single.32", clients=32, lost=1)],
        batch=None, batch_skipped="the batch endpoint is not deployed", load_average=1.0)

    lines = ingestion_lines(result)

    assert lines[0].startswith(f"{INGESTION_CASE}: gunicorn 2 workers x 8 threads")
    assert lines[2].split()[-9:] == ["400", "400", "400", "12.0", "30.0", "45.0", "0.10", "1.20", "none"]
    assert lines[3].endswith("0 refused, 1 lost, 0 duplicated")
    assert "  batch: not measured (the batch endpoint is not deployed)" in lines
    assert not result.intact


def test_ingestion_requests_scale_with_rows_and_keep_a_floor() -> None:
    assert requests_for_rows(100_000) == 5_000
    assert requests_for_rows(2_000) == 100


def test_the_ingestion_case_loads_real_gunicorn_and_loses_nothing(db: None, tmp_path: Path) -> None:
    """As CI runs it: its own process, a scratch database, gunicorn with the project's configuration."""
    url = f"sqlite:///{tmp_path / 'campaign.sqlite3'}" if connection.vendor == "sqlite" else current_database_url()
    env = {**os.environ, "DATABASE_URL": url, "VAR_DIR": str(tmp_path), "SECRET_KEY": settings.SECRET_KEY}
    completed = subprocess.run(
        [sys.executable, "manage.py", "benchmark", "--only", INGESTION_CASE, "--rows", "1000", "--requests", "60",
         "--json"],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=300, check=False,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    [case] = json.loads(completed.stdout)
    assert (case["case"], case["database"]) == (INGESTION_CASE, connection.vendor)
    assert [single["clients"] for single in case["single"]] == [8, 32]
    measured = [*case["single"], case["batch"]]
    for figures in measured:
        assert (figures["refused"], figures["lost"], figures["duplicated"]) == (0, 0, 0), figures["problems"]
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
        assert figures["requests_per_s"] > 0
    assert case["single"][0]["requests"] == 60
    assert case["batch"]["events"] == 8 * 500, "at least one full batch per client"
