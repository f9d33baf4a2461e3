"""kpiSharing against a real analytics service on loopback (pytest-httpserver, tests/workflows/fake_analytics.py).

The service adds what it receives, so the one check that matters is: after any sequence of runs,
failures and resends, the service's totals equal the local email aggregates of the window, computed
here independently from the rows the test created.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from werkzeug import Response

from campaign.integrations import analytics
from campaign.models import Channel, DeliveryAggregate, ExternalAccount, KpiShareState, LogStatus, UrlType
from tests.factories import DeliveryFactory, DeliveryLogFactory, TrackingLogFactory
from tests.workflows.fake_analytics import (
    APPLY_THEN_FAIL,
    COLUMN,
    COUNTERS,
    TOKEN,
    TOKEN_ENV,
    aggregate,
    expected_batch_id,
    ledger,
    local_window_totals,
    today,
    wire_row,
)
from workflows import commands
from workflows.builtin import kpi_sharing
from workflows.context import RunFence, unit_committing
from workflows.engine import RunRequest, TransientRunError, execute
from workflows.models import RunStatus, Trigger, Workflow, WorkflowLog, WorkflowRun, WorkflowState

WORKFLOW_ID = "kpiSharing"


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def rows(deliveries) -> list[DeliveryAggregate]:
    """Five email rows in the window (two with the same updated_at), an SMS row, an email row too old."""
    base = timezone.now() - timedelta(hours=2)
    created = [
        aggregate(deliveries["news"], 3, updated=base, seed=1),
        aggregate(deliveries["news"], 2, updated=base + timedelta(minutes=1), seed=2),
        aggregate(deliveries["reminder"], 2, updated=base + timedelta(minutes=1), seed=3),
        aggregate(deliveries["receipt"], 1, updated=base + timedelta(minutes=2), seed=4),
        aggregate(deliveries["reminder"], 0, updated=base + timedelta(minutes=3), seed=5),
    ]
    aggregate(deliveries["sms"], 2, updated=base, seed=6)
    aggregate(deliveries["news"], 70, updated=base, seed=7)
    return created


def watermark() -> tuple[Any, int] | None:
    """(updated_at, id) of the last source row the service acknowledged, as stored."""
    state = KpiShareState.objects.filter(channel="email").first()
    return state.watermark if state else None


def pending() -> dict[str, Any] | None:
    """The batch saved and not acknowledged yet, as stored: its id and wire rows."""
    state = KpiShareState.objects.filter(channel="email").first()
    if state is None or not state.pending_batch_id:
        return None
    return {"batch_id": state.pending_batch_id, "rows": state.pending_rows}


def position(row: DeliveryAggregate) -> tuple[Any, int]:
    row.refresh_from_db()
    return row.updated_at, row.pk


def run(**overrides: object) -> WorkflowRun:
    return commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides=overrides or None)


def journal(run: WorkflowRun) -> list[str]:
    return list(WorkflowLog.objects.filter(run=run).order_by("id").values_list("message", flat=True))


def touch(row: DeliveryAggregate, **columns: int) -> None:
    """Change an aggregate as reportingAggregates would: new counters, a new updated_at."""
    for name, value in columns.items():
        setattr(row, name, value)
    row.updated_at = timezone.now()
    row.save()


# -- success paths -------------------------------------------------------------------------------
def test_first_run_pushes_the_window_email_rows_with_the_exact_body_and_headers(service, rows, httpserver):
    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    ordered = sorted(rows, key=lambda row: (row.updated_at, row.pk))
    body_rows = [wire_row(row) for row in ordered]
    assert service.posts == [{"batch_id": expected_batch_id(body_rows), "rows": body_rows}]
    request, _ = httpserver.log[-1]
    assert request.method == "POST" and request.path == "/kpis"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert service.counters() == local_window_totals()
    assert ledger() == local_window_totals()
    assert watermark() == position(ordered[-1])
    assert pending() is None
    assert result.counters == {"rows_read": 5, "batches_pushed": 1, "rows_pushed": 5}
    assert any(line.startswith(f"Pushed batch {expected_batch_id(body_rows)}: 5 rows") for line in journal(result))


def test_rows_are_cut_in_batches_in_updated_at_then_id_order(service, rows):
    result = run(batch_size=2)

    assert result.status == RunStatus.SUCCEEDED, result.reason
    ordered = sorted(rows, key=lambda row: (row.updated_at, row.pk))
    assert [[(row["date"], row["delivery_id"]) for row in body["rows"]] for body in service.posts] == [
        [(row.day.isoformat(), row.delivery_id) for row in ordered[start:start + 2]] for start in (0, 2, 4)
    ]
    assert service.counters() == local_window_totals()
    assert result.counters["batches_pushed"] == 3


def test_a_changed_day_is_pushed_as_its_increment_only(service, rows):
    run()
    news_day_3 = rows[0]
    before = {name: getattr(news_day_3, COLUMN[name]) for name in COUNTERS}
    touch(news_day_3, opens=news_day_3.opens + 3, unique_opens=news_day_3.unique_opens + 1, bounces=news_day_3.bounces - 2)

    second = run()

    assert second.status == RunStatus.SUCCEEDED, second.reason
    increment = {**dict.fromkeys(COUNTERS, 0), "opened": 3, "unique_opens": 1, "bounces": -2}
    pushed = wire_row(news_day_3, **increment)
    assert service.posts[1:] == [{
        "batch_id": expected_batch_id([pushed], {(pushed["date"], pushed["delivery_id"]): before}), "rows": [pushed],
    }]
    assert service.counters() == local_window_totals()
    assert ledger() == local_window_totals()


def test_the_same_increment_twice_gets_two_batch_ids_and_counts_twice(service, rows):
    run()
    touch(rows[1], opens=rows[1].opens + 1)
    run()
    touch(rows[1], opens=rows[1].opens + 1)
    run()

    assert [body["rows"][0]["opened"] for body in service.posts[1:]] == [1, 1]
    assert service.posts[1]["batch_id"] != service.posts[2]["batch_id"]
    assert service.counters() == local_window_totals()


def test_a_run_with_nothing_changed_sends_nothing(service, rows):
    run()
    second = run()

    assert second.status == RunStatus.SUCCEEDED
    assert len(service.posts) == 1
    assert second.counters.get("batches_pushed", 0) == 0


def test_rows_read_again_in_the_change_margin_are_not_pushed_twice_and_a_late_row_is_caught(service, rows, deliveries):
    run()
    # Committed late by a concurrent writer: stamped before the watermark, within the margin.
    late = aggregate(deliveries["receipt"], 4, updated=rows[-1].updated_at - timedelta(seconds=30), seed=8)

    second = run()

    assert second.status == RunStatus.SUCCEEDED, second.reason
    assert [body["rows"] for body in service.posts[1:]] == [[wire_row(late)]]
    assert service.counters() == local_window_totals()
    assert watermark() == position(rows[-1])  # never moved back


def test_lookback_days_bounds_the_days_shared(service, rows):
    result = run(lookback_days=2)

    assert result.status == RunStatus.SUCCEEDED
    assert {row["date"] for body in service.posts for row in body["rows"]} == {
        (today() - timedelta(days=days)).isoformat() for days in (0, 1, 2)
    }
    assert service.counters() == local_window_totals(lookback_days=2)


def test_a_run_paused_between_batches_continues_where_it_stopped(service, rows, monkeypatch):
    push = analytics.AnalyticsClient.push_kpis

    def push_then_pause(self, **kwargs):
        accepted = push(self, **kwargs)
        if len(service.posts) == 1:
            commands.pause(WORKFLOW_ID, actor="test")
        return accepted

    monkeypatch.setattr(analytics.AnalyticsClient, "push_kpis", push_then_pause)
    halted = run(batch_size=2)
    assert halted.status == RunStatus.PAUSED and len(service.posts) == 1

    # The acknowledged batch was recorded before the pause was obeyed: nothing is pending.
    assert pending() is None

    Workflow.objects.filter(pk=WORKFLOW_ID).update(state=WorkflowState.STARTED)
    continued = execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SHELL, run_id=halted.pk))

    assert continued.status == RunStatus.SUCCEEDED, continued.reason
    assert len(service.posts) == 3 and len({body["batch_id"] for body in service.posts}) == 3
    assert service.counters() == local_window_totals()
    assert ledger() == local_window_totals() and pending() is None


# -- failures: nothing advances, the same batch goes again ---------------------------------------
def test_a_push_failing_after_one_accepted_batch_resends_only_the_unacknowledged_one(service, rows, waits):
    service.script("POST", None, *[Response("busy", status=500)] * 4)  # batch 1 accepted, then 4 attempts fail

    failed = run(batch_size=3)

    assert failed.status == RunStatus.FAILED
    assert "answered 500 (after 4 attempts)" in failed.reason
    assert len(waits) == 3 and all(0 <= wait <= 30 for wait in waits)  # backoff between the 4 attempts
    first_batch, second_batch = service.posts[0], service.posts[1]
    assert service.posts[1:] == [second_batch] * 4  # the same batch, retried as it was
    ordered = sorted(rows, key=lambda row: (row.updated_at, row.pk))
    assert watermark() == position(ordered[2])  # past batch 1 only
    assert pending()["batch_id"] == second_batch["batch_id"]
    assert ledger() == {key: value for key, value in local_window_totals().items()
                        if key in {(row["date"], row["delivery_id"]) for row in first_batch["rows"]}}

    again = run(batch_size=3)

    assert again.status == RunStatus.SUCCEEDED, again.reason
    assert service.posts[5:] == [second_batch]  # only what was not acknowledged, same id, same rows
    assert service.counters() == local_window_totals()
    assert again.counters["batches_resent"] == 1 and again.counters["rows_pushed"] == 2
    assert "batches_pushed" not in again.counters  # rows read again in the margin had nothing to add
    assert pending() is None


def test_a_lost_acknowledgement_is_resent_with_the_same_id_and_counted_once_even_if_the_day_changed(service, rows):
    service.script("POST", APPLY_THEN_FAIL, *[Response("busy", status=500)] * 3)
    failed = run()
    assert failed.status == RunStatus.FAILED
    lost = service.posts[0]
    touch(rows[0], opens=rows[0].opens + 5)  # the day changes before the resend

    again = run()

    assert again.status == RunStatus.SUCCEEDED, again.reason
    assert service.posts[4] == lost  # resent as it was, not recomputed
    assert service.posts[5]["rows"] == [wire_row(rows[0], **{**dict.fromkeys(COUNTERS, 0), "opened": 5})]
    assert service.counters() == local_window_totals()  # the lost batch was applied once


def worker_died() -> None:
    """What the engine finds after a worker was killed mid-run: a run left running, no live lease."""
    WorkflowRun.objects.filter(workflow_id=WORKFLOW_ID, status=RunStatus.RUNNING).update(status=RunStatus.FAILED)
    Workflow.objects.filter(pk=WORKFLOW_ID).update(lease_holder=None, lease_until=None)


def test_a_crash_after_the_batch_was_saved_resends_the_same_batch(service, rows, monkeypatch):
    real_push = analytics.AnalyticsClient.push_kpis

    def crash(self, **kwargs):
        raise KeyboardInterrupt("worker killed")

    monkeypatch.setattr(analytics.AnalyticsClient, "push_kpis", crash)
    with pytest.raises(KeyboardInterrupt):
        run()
    saved = pending()
    assert service.posts == [] and ledger() == {}
    worker_died()
    monkeypatch.setattr(analytics.AnalyticsClient, "push_kpis", real_push)

    again = run()

    assert again.status == RunStatus.SUCCEEDED, again.reason
    assert service.posts[0]["batch_id"] == saved["batch_id"] and service.posts[0]["rows"] == saved["rows"]
    assert service.counters() == local_window_totals()


@pytest.mark.parametrize("moment", ["after the answer", "inside the acknowledging unit"])
def test_a_crash_between_the_push_and_its_acknowledgement_resends_the_batch_and_the_service_applies_it_once(
    service, rows, monkeypatch, moment,
):
    real_push = analytics.AnalyticsClient.push_kpis

    def push_then_die(self, **kwargs):
        real_push(self, **kwargs)
        raise KeyboardInterrupt("worker killed")

    def die_before_commit(sender, *, workflow_id, unit, **kwargs):
        if workflow_id == WORKFLOW_ID and unit == 2:  # unit 1 saved the batch, unit 2 records it
            raise KeyboardInterrupt("worker killed")

    if moment == "after the answer":
        monkeypatch.setattr(analytics.AnalyticsClient, "push_kpis", push_then_die)
    else:
        unit_committing.connect(die_before_commit, sender=RunFence, dispatch_uid="die_before_commit")
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        unit_committing.disconnect(dispatch_uid="die_before_commit", sender=RunFence)
    applied = service.posts[0]
    assert service.counters() == local_window_totals()  # the service has it ...
    assert pending() == {"batch_id": applied["batch_id"], "rows": applied["rows"]}  # ... the instance does not know
    assert ledger() == {} and watermark() is None
    worker_died()
    monkeypatch.setattr(analytics.AnalyticsClient, "push_kpis", real_push)

    again = run()

    assert again.status == RunStatus.SUCCEEDED, again.reason
    assert service.posts == [applied, applied]  # the same id and rows, answered without applying them again
    assert service.counters() == local_window_totals()
    assert ledger() == local_window_totals()
    assert pending() is None
    assert watermark() == position(max(rows, key=lambda row: (row.updated_at, row.pk)))
    assert again.counters == {"batches_resent": 1, "rows_pushed": 5, "rows_read": 5}


def test_a_run_that_lost_its_lease_after_the_service_applied_a_batch_records_nothing_and_its_successor_resends_it(
    service, rows, monkeypatch,
):
    real_push = analytics.AnalyticsClient.push_kpis
    successors: list[WorkflowRun] = []

    def push_then_lose_the_lease(self, **kwargs):
        accepted = real_push(self, **kwargs)
        monkeypatch.setattr(analytics.AnalyticsClient, "push_kpis", real_push)
        # Frozen past its lease after the answer: the next run takes the workflow over meanwhile.
        Workflow.objects.filter(pk=WORKFLOW_ID).update(lease_until=timezone.now() - timedelta(seconds=1))
        successors.append(run())
        return accepted

    monkeypatch.setattr(analytics.AnalyticsClient, "push_kpis", push_then_lose_the_lease)
    late = run()

    successor = successors[0]
    assert successor.status == RunStatus.SUCCEEDED, successor.reason
    assert successor.counters["batches_resent"] == 1
    assert late.status == RunStatus.FAILED and late.reason == "lease lost"
    assert service.posts == [service.posts[0]] * 2  # the successor resent the same batch
    assert service.counters() == local_window_totals()
    assert ledger() == local_window_totals()  # recorded once, by the successor
    assert pending() is None
    assert not WorkflowLog.objects.filter(run=late, message__contains="acknowledged").exists()


def test_5xx_after_every_attempt_is_transient_and_a_4xx_permanent_for_the_engine(service, rows):
    """With retries allowed (a Celery run), a transient failure hands the run back to Celery for a
    later attempt; a permanent one ends it."""
    service.script("POST", *[Response("busy", status=503)] * 4, Response("bad request", status=400))
    queued = WorkflowRun.objects.create(workflow_id=WORKFLOW_ID, trigger=Trigger.SCHEDULE)

    with pytest.raises(TransientRunError):
        execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SCHEDULE, run_id=queued.pk, retry_allowed=True))
    queued.refresh_from_db()
    assert queued.reason.endswith("(transient; will retry)")

    permanent = execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SCHEDULE, retry_allowed=True))
    assert permanent.status == RunStatus.FAILED and "answered 400" in permanent.reason
    assert not permanent.reason.endswith("(transient; will retry)")
    assert watermark() is None and ledger() == {}


def test_a_client_error_fails_permanently_with_the_reason_and_advances_nothing(service, rows):
    service.script("POST", Response('{"error": "unknown campaign"}', status=400, content_type="application/json"))

    result = run()

    assert result.status == RunStatus.FAILED
    assert "POST kpis answered 400" in result.reason and "unknown campaign" in result.reason
    assert len(service.posts) == 1  # a 4xx is not retried
    assert watermark() is None
    assert pending()["batch_id"] == service.posts[0]["batch_id"]
    assert ledger() == {}


@pytest.mark.parametrize(("answer", "reason"), [
    (Response('{"accepted": "x"}', content_type="application/json"), "'accepted' must be an integer"),
    (Response("<html>ok</html>", content_type="text/html"), "not JSON"),
    (Response('{"ok": true}', content_type="application/json"), "no 'accepted' in the answer"),
    (Response("[5]", content_type="application/json"), "expected an object, got a list"),
    (Response('{"accepted": 3}', content_type="application/json"), "accepted 3 of the 5 rows"),
    (Response('{"accepted": true}', content_type="application/json"), "'accepted' must be an integer"),
])
def test_a_malformed_acknowledgement_fails_the_run_and_advances_nothing(service, rows, answer, reason):
    service.script("POST", answer)

    result = run()

    assert result.status == RunStatus.FAILED
    assert reason in result.reason
    assert watermark() is None
    assert pending()["batch_id"] == service.posts[0]["batch_id"]
    assert ledger() == {}
    assert len(service.posts) == 1


def test_retry_after_of_a_429_is_waited_for(service, rows, waits):
    service.script("POST", Response("slow down", status=429, headers={"Retry-After": "7"}))

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert waits == [7.0]
    assert len(service.posts) == 2 and service.posts[0] == service.posts[1]
    assert service.counters() == local_window_totals()


def test_a_timeout_is_retried_then_fails_as_transient(service, rows, waits):
    ExternalAccount.objects.update(timeout_s=0.2)

    answered: list[int] = []

    def slow(request):
        time.sleep(0.5)
        answered.append(1)
        return Response('{"accepted": 5}', content_type="application/json")

    service.script("POST", *[slow] * 4)

    result = run()

    assert result.status == RunStatus.FAILED
    assert "ReadTimeout" in result.reason and "after 4 attempts" in result.reason
    assert watermark() is None and ledger() == {}
    deadline = time.monotonic() + 10  # the one-thread server is still answering the abandoned attempts
    while len(answered) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)


# -- account and token ---------------------------------------------------------------------------
def test_skipped_without_an_analytics_account(db, rows, httpserver):
    result = run()

    assert result.status == RunStatus.SKIPPED
    assert result.reason == "no enabled analytics account"
    assert httpserver.log == []


def test_skipped_when_the_account_is_disabled(service, rows, httpserver):
    ExternalAccount.objects.update(enabled=False)

    result = run()

    assert result.status == RunStatus.SKIPPED
    assert result.reason == "no enabled analytics account"
    assert httpserver.log == []


def test_an_unset_token_variable_fails_naming_the_variable(service, rows, monkeypatch, httpserver):
    monkeypatch.delenv(TOKEN_ENV)

    result = run()

    assert result.status == RunStatus.FAILED
    assert TOKEN_ENV in result.reason and "not set" in result.reason
    assert httpserver.log == []


def test_an_account_saved_before_the_token_rules_fails_permanently_before_any_request(service, rows, monkeypatch,
                                                                                        httpserver):
    monkeypatch.setenv("SECRET_KEY", "instance-secret-never-sent-91c3")
    # As a row saved before the rules: update() does not call clean().
    ExternalAccount.objects.filter(name="analytics").update(token_env="SECRET_KEY")

    result = execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SCHEDULE, retry_allowed=True))

    assert result.status == RunStatus.FAILED and not result.reason.endswith("(transient; will retry)")
    assert result.reason.startswith("analytics: token variable SECRET_KEY refused: the token variable must be named "
                                    "CAMPAIGN_TOKEN_<NAME>")
    assert "instance-secret" not in result.reason
    assert httpserver.log == []


def test_the_token_never_appears_in_the_reason_or_the_journal(service, rows):
    service.script("POST", lambda request: Response(f"bad credentials: {request.headers['Authorization']}", status=401))

    result = run()

    assert result.status == RunStatus.FAILED and "answered 401" in result.reason
    assert TOKEN not in result.reason
    assert not WorkflowLog.objects.filter(message__contains=TOKEN).exists()
    assert not WorkflowRun.objects.filter(reason__contains=TOKEN).exists()


def test_discard_pending_drops_the_batch_and_the_next_run_recomputes_it(service, rows):
    service.script("POST", Response("no", status=422))
    run()
    dropped = pending()["batch_id"]

    assert kpi_sharing.discard_pending(actor="ops") == dropped
    again = run()

    assert again.status == RunStatus.SUCCEEDED
    assert service.posts[-1]["batch_id"] == dropped  # same aggregates, same ledger: the same batch
    assert service.counters() == local_window_totals()
    assert WorkflowLog.objects.filter(workflow_id=WORKFLOW_ID, message__contains=f"{dropped} (5 rows) discarded by ops").exists()


def test_what_is_pushed_follows_the_platforms_formulas_with_the_protocols_keys_only(service):
    """From logs and tracking rows through reportingAggregates to the service: ``opened`` is the
    Open indicator (open-pixel hits plus one implied open per recipient who interacted without the
    pixel), clicks count url types 1, 10 and 11, and a row carries the protocol's keys, no others."""
    delivery = DeliveryFactory(label="Platform formulas", channel=Channel.EMAIL)
    sent_at = timezone.now() - timedelta(minutes=30)
    pixel, clicked_only, mirrored, _ = (
        DeliveryLogFactory(delivery=delivery, profile=None, status=LogStatus.SENT, created_at=sent_at, updated_at=sent_at)
        for _ in range(4)
    )
    for log, url_type in ((pixel, UrlType.OPEN), (pixel, UrlType.OPEN), (clicked_only, UrlType.OTHER_CLICK_10),
                          (mirrored, UrlType.MIRROR_PAGE)):
        TrackingLogFactory(delivery_log=log, url_type=url_type, tracked_at=sent_at)
    assert commands.run_now("reportingAggregates", actor="test", sync=True).status == RunStatus.SUCCEEDED

    assert run().status == RunStatus.SUCCEEDED

    # 2 open rows + 3 recipients with an open, a click or a mirror page − 1 with an open row.
    assert service.counters()[(timezone.localdate(sent_at).isoformat(), delivery.pk)] == {
        "sent": 4, "delivered": 4, "opened": 4, "unique_opens": 3, "clicked": 1, "unique_clicks": 1,
        "unsubscribed": 0, "bounces": 0,
    }
    assert all(set(row) == set(analytics.ROW_KEYS) for post in service.posts for row in post["rows"])
