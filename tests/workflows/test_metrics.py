"""/metrics: Prometheus text computed from the runs in the database, optionally behind a token."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from workflows import commands, metrics
from workflows.models import RunStatus, SchedulerHeartbeat, Trigger, Workflow, WorkflowRun, WorkflowState

pytestmark = pytest.mark.django_db

Samples = dict[tuple[str, frozenset], float]


def scrape(client, **headers: str) -> Samples:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return parse(response.content.decode())


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def make_run(workflow_id: str, status: str, *, duration_s: float | None, rows: int = 0,
             finished_at: datetime.datetime | None = None) -> WorkflowRun:
    finished = finished_at or (timezone.now() if duration_s is not None else None)
    return WorkflowRun.objects.create(
        workflow_id=workflow_id, trigger=Trigger.SCHEDULE, status=status, duration_s=duration_s, progress_done=rows,
        started_at=finished - datetime.timedelta(seconds=duration_s) if finished else timezone.now(), finished_at=finished,
    )


@pytest.fixture
def cleanup_runs() -> dict[str, datetime.datetime]:
    """Five runs of cleanup, one of billing; returns the last success time of cleanup."""
    last_success = datetime.datetime(2030, 5, 6, 4, 1, 40, tzinfo=datetime.UTC)
    make_run("cleanup", RunStatus.SUCCEEDED, duration_s=3.0, rows=10, finished_at=last_success - datetime.timedelta(days=1))
    make_run("cleanup", RunStatus.SUCCEEDED, duration_s=100.0, rows=20, finished_at=last_success)
    make_run("cleanup", RunStatus.FAILED, duration_s=2000.0, rows=5, finished_at=last_success + datetime.timedelta(days=1))
    make_run("cleanup", RunStatus.SKIPPED, duration_s=0.01)
    make_run("cleanup", RunStatus.RUNNING, duration_s=None, rows=7)
    make_run("billing", RunStatus.SUCCEEDED, duration_s=4000.0, rows=1)
    return {"last_success": last_success}


def test_metrics_count_runs_by_workflow_and_status(client, cleanup_runs) -> None:
    samples = scrape(client)

    assert value(samples, "workflow_runs_total", workflow="cleanup", status="succeeded") == 2
    assert value(samples, "workflow_runs_total", workflow="cleanup", status="failed") == 1
    assert value(samples, "workflow_runs_total", workflow="cleanup", status="skipped") == 1
    assert value(samples, "workflow_runs_total", workflow="cleanup", status="running") == 1
    assert value(samples, "workflow_runs_total", workflow="cleanup", status="queued") == 0
    assert value(samples, "workflow_runs_total", workflow="billing", status="succeeded") == 1
    # A workflow without runs still has its series, so rate() starts from zero.
    assert value(samples, "workflow_runs_total", workflow="forecasting", status="succeeded") == 0


def test_metrics_duration_histogram_matches_the_runs_that_executed(client, cleanup_runs) -> None:
    samples = scrape(client)

    def bucket(le: str) -> float:
        return value(samples, "workflow_run_duration_seconds_bucket", workflow="cleanup", le=le)

    # Durations 3, 100 and 2000 s; the 0.01 s skipped run and the unfinished run are left out.
    assert [bucket(le) for le in ("1.0", "5.0", "15.0", "60.0", "300.0", "900.0", "1800.0", "3600.0", "+Inf")] == [
        0, 1, 1, 1, 2, 2, 2, 3, 3,
    ]
    assert value(samples, "workflow_run_duration_seconds_count", workflow="cleanup") == 3
    assert value(samples, "workflow_run_duration_seconds_sum", workflow="cleanup") == pytest.approx(2103.0)
    assert value(samples, "workflow_run_duration_seconds_bucket", workflow="billing", le="3600.0") == 0
    assert value(samples, "workflow_run_duration_seconds_bucket", workflow="billing", le="+Inf") == 1


def test_metrics_last_success_and_rows_processed(client, cleanup_runs) -> None:
    samples = scrape(client)

    assert value(samples, "workflow_last_success_timestamp_seconds", workflow="cleanup") \
        == cleanup_runs["last_success"].timestamp()
    assert value(samples, "workflow_rows_processed_total", workflow="cleanup") == 10 + 20 + 5 + 7
    assert ("workflow_last_success_timestamp_seconds", frozenset({("workflow", "forecasting")})) not in samples


def test_counters_never_go_down_when_cleanup_purges_old_runs(client) -> None:
    Workflow.objects.filter(pk="billing").update(history_days=3)
    long_ago = timezone.now() - datetime.timedelta(days=10)
    make_run("billing", RunStatus.SUCCEEDED, duration_s=40.0, rows=100, finished_at=long_ago)
    make_run("billing", RunStatus.FAILED, duration_s=2.0, rows=1, finished_at=long_ago)
    make_run("billing", RunStatus.SUCCEEDED, duration_s=20.0, rows=10)  # recent: kept
    billing = {key: sample for key, sample in scrape(client).items() if ("workflow", "billing") in key[1]}

    cleanup = commands.run_now("cleanup", actor="test", sync=True)

    assert cleanup.counters["workflow_runs_removed"] == 2
    assert WorkflowRun.objects.filter(workflow_id="billing").count() == 1
    after = scrape(client)
    assert {key: after[key] for key in billing} == billing
    assert value(after, "workflow_rows_processed_total", workflow="billing") == 111
    assert value(after, "workflow_runs_total", workflow="cleanup", status="succeeded") == 1
    # Purged again later, the tally keeps adding up.
    WorkflowRun.objects.filter(workflow_id="billing").update(finished_at=long_ago)
    commands.run_now("cleanup", actor="test", sync=True)
    assert not WorkflowRun.objects.filter(workflow_id="billing").exists()
    final = scrape(client)
    assert value(final, "workflow_runs_total", workflow="billing", status="succeeded") == 2
    assert value(final, "workflow_run_duration_seconds_sum", workflow="billing") == pytest.approx(62.0)
    assert value(final, "workflow_last_success_timestamp_seconds", workflow="billing") == long_ago.timestamp()


def test_metrics_state_gauges_and_consecutive_errors(client) -> None:
    Workflow.objects.filter(pk="billing").update(state=WorkflowState.PAUSED, consecutive_errors=3)

    samples = scrape(client)

    assert value(samples, "workflow_state", workflow="billing", state="paused") == 1
    assert value(samples, "workflow_state", workflow="billing", state="started") == 0
    assert value(samples, "workflow_state", workflow="billing", state="stopped") == 0
    assert value(samples, "workflow_state", workflow="cleanup", state="started") == 1
    assert value(samples, "workflow_consecutive_errors", workflow="billing") == 3
    assert value(samples, "workflow_consecutive_errors", workflow="cleanup") == 0


def test_metrics_expose_the_beat_heartbeat(client) -> None:
    beat_at = datetime.datetime(2030, 5, 6, 9, 30, tzinfo=datetime.UTC)
    SchedulerHeartbeat.objects.create(pk=1, beat_at=beat_at)

    samples = scrape(client)

    assert value(samples, "workflow_beat_last_tick_timestamp_seconds") == beat_at.timestamp()


def test_metrics_cost_a_fixed_number_of_queries_whatever_the_number_of_runs(cleanup_runs) -> None:
    with CaptureQueriesContext(connection) as few_runs:
        metrics.render()
    for _ in range(20):
        make_run("kpiSharing", RunStatus.SUCCEEDED, duration_s=12.0)
    with CaptureQueriesContext(connection) as more_runs:
        text = metrics.render().decode()

    assert len(more_runs) == len(few_runs) <= 6  # workflows, tallies, runs, beat heartbeat, lease, processes
    assert value(parse(text), "workflow_runs_total", workflow="kpiSharing", status="succeeded") == 20


def test_metrics_are_open_when_no_token_is_set(client, settings) -> None:
    settings.METRICS_TOKEN = ""

    assert client.get("/metrics").status_code == 200


def test_metrics_require_the_bearer_token_when_one_is_set(client, settings) -> None:
    settings.METRICS_TOKEN = "scrape-me-0123456789"

    missing = client.get("/metrics")
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me-wrong")
    basic = client.get("/metrics", HTTP_AUTHORIZATION="Basic scrape-me-0123456789")
    samples = scrape(client, HTTP_AUTHORIZATION="Bearer scrape-me-0123456789")

    assert missing.status_code == 401
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert wrong.status_code == 401
    assert basic.status_code == 401
    assert b"workflow_runs_total" not in wrong.content
    assert value(samples, "workflow_runs_total", workflow="cleanup", status="succeeded") == 0


def test_metrics_token_setting_is_read_at_each_request(client, settings) -> None:
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 200

    settings.METRICS_TOKEN = "rotated-token"

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer rotated-token").status_code == 200


def test_metrics_refuse_other_methods_than_get(client) -> None:
    assert client.post("/metrics").status_code == 405
