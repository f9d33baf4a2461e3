"""kpiReconciliation against a real analytics service on loopback (tests/workflows/fake_analytics.py).

Expected corrections are computed here in plain Python from the rows the test put on each side;
the end state that matters is the service's totals equal to the local email aggregates.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from werkzeug import Response

from campaign.integrations.analytics import AnalyticsClient
from campaign.models import DeliveryAggregate, KpiShareState
from tests.factories import DeliveryFactory
from tests.workflows.fake_analytics import (
    COLUMN,
    COUNTERS,
    aggregate,
    expected_batch_id,
    ledger,
    local_window_totals,
    today,
    wire_row,
)
from workflows import commands, leases
from workflows.builtin import kpi_reconciliation, kpi_sharing
from workflows.engine import Requeue, RunRequest, execute
from workflows.models import RunStatus, Trigger, Workflow, WorkflowLog, WorkflowRun

WORKFLOW_ID = "kpiReconciliation"
UNKNOWN_DELIVERY = 987_654  # a delivery the service has and this instance has not


def run(**overrides: object) -> WorkflowRun:
    return commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides=overrides or None)


def share() -> WorkflowRun:
    return commands.run_now(kpi_sharing.SHARING_ID, actor="test", sync=True)


def journal(run: WorkflowRun) -> list[str]:
    return list(WorkflowLog.objects.filter(run=run).order_by("id").values_list("message", flat=True))


def pushed_rows(bodies: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, int]]:
    return {(row["date"], row["delivery_id"]): {name: row[name] for name in COUNTERS}
            for body in bodies for row in body["rows"]}


def expected_corrections(local: dict, remote: dict) -> dict[tuple[str, int], dict[str, int]]:
    """local - remote per counter, a side without the row counting zeros; all-zero rows left out."""
    corrections = {}
    for key in local.keys() | remote.keys():
        difference = {name: local.get(key, {}).get(name, 0) - remote.get(key, {}).get(name, 0) for name in COUNTERS}
        if any(difference.values()):
            corrections[key] = difference
    return corrections


@pytest.fixture
def skewed(service, deliveries) -> dict[str, Any]:
    """Local rows and service totals that differ in every way a row can."""
    moment = timezone.now() - timedelta(hours=1)
    equal = aggregate(deliveries["news"], 3, updated=moment, seed=1)
    lower = aggregate(deliveries["news"], 2, updated=moment, seed=2)
    missing_remotely = aggregate(deliveries["reminder"], 2, updated=moment, seed=3)
    higher = aggregate(deliveries["receipt"], 1, updated=moment, seed=4)
    aggregate(deliveries["reminder"], 0, updated=moment, seed=5)  # equal too
    aggregate(deliveries["sms"], 2, updated=moment, seed=6)  # not email: never compared
    service.set_total(wire_row(equal))
    service.set_total(wire_row(DeliveryAggregate.objects.get(delivery=deliveries["reminder"], day=today())))
    service.set_total(wire_row(lower, opened=lower.opens - 4, bounces=lower.bounces + 2))
    service.set_total(wire_row(higher, **{name: getattr(higher, COLUMN[name]) + 3 for name in COUNTERS}))
    missing_locally = wire_row(equal)
    missing_locally.update(date=(today() - timedelta(days=5)).isoformat(), opened=7, sent=20, delivered=20)
    service.set_total(missing_locally)
    unknown = {**wire_row(equal), "delivery_id": UNKNOWN_DELIVERY, "delivery_label": "Elsewhere", "campaign_id": None,
               "campaign_label": "", "date": (today() - timedelta(days=40)).isoformat()}
    service.set_total(unknown)
    return {"missing_remotely": missing_remotely, "higher": higher, "lower": lower}


def remote_totals(service) -> dict[tuple[str, int], dict[str, int]]:
    return {key: {name: row[name] for name in COUNTERS} for key, row in service.totals.items()}


def test_pushes_local_minus_remote_for_every_differing_row_and_ends_equal(service, skewed):
    before = remote_totals(service)
    expected = expected_corrections(local_window_totals(), before)

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert pushed_rows(service.posts) == expected
    assert len(expected) == 5  # lower, higher, missing remotely, missing locally, unknown delivery
    higher = skewed["higher"]
    assert expected[(higher.day.isoformat(), higher.delivery_id)] == dict.fromkeys(COUNTERS, -3)  # negative deltas
    for body in service.posts:
        bases = {(row["date"], row["delivery_id"]): before.get((row["date"], row["delivery_id"]), dict.fromkeys(COUNTERS, 0))
                 for row in body["rows"]}
        assert body["batch_id"] == expected_batch_id(body["rows"], bases)
    assert service.counters() == local_window_totals()
    assert ledger() == local_window_totals()
    corrected_lines = [line for line in journal(result) if line.startswith("Corrected ")]
    assert len(corrected_lines) == 5
    assert any(f"delivery {UNKNOWN_DELIVERY} ('Elsewhere')" in line and "the service had" in line for line in corrected_lines)
    missing = skewed["missing_remotely"]
    assert any(f"{missing.day} delivery {missing.delivery_id}" in line and "the service had no row" in line
               for line in corrected_lines)
    assert result.counters["rows_corrected"] == 5 and result.counters["remote_rows_missing"] == 1
    assert result.counters["local_rows_missing"] == 2


def test_labels_of_a_correction_come_from_the_local_row_else_from_the_service(service, skewed):
    run()

    rows = {(row["date"], row["delivery_id"]): row for body in service.posts for row in body["rows"]}
    lower = skewed["lower"]
    identity = ("date", "campaign_id", "campaign_label", "delivery_id", "delivery_label")
    pushed = rows[(lower.day.isoformat(), lower.delivery_id)]
    assert {name: pushed[name] for name in identity} == {name: wire_row(lower)[name] for name in identity}
    unknown = next(row for key, row in rows.items() if key[1] == UNKNOWN_DELIVERY)
    assert (unknown["delivery_label"], unknown["campaign_id"], unknown["campaign_label"]) == ("Elsewhere", None, "")


def test_the_window_is_fetched_in_chunks_of_days_with_the_token(service, skewed, httpserver):
    run(lookback_days=10, days_per_request=4)

    first = today() - timedelta(days=10)
    assert service.gets == [
        {"from": first.isoformat(), "to": (first + timedelta(days=3)).isoformat()},
        {"from": (first + timedelta(days=4)).isoformat(), "to": (first + timedelta(days=7)).isoformat()},
        {"from": (first + timedelta(days=8)).isoformat(), "to": today().isoformat()},
    ]
    assert all(request.headers["Authorization"] == "Bearer analytics-token-3f9c1a7e5b" for request, _ in httpserver.log)
    # the unknown delivery's row (40 days ago) is outside these 10 days: not corrected
    assert all(row["delivery_id"] != UNKNOWN_DELIVERY for body in service.posts for row in body["rows"])


def test_nothing_is_pushed_when_the_totals_are_equal(service, deliveries):
    moment = timezone.now()
    for seed, (name, days_ago) in enumerate([("news", 1), ("reminder", 1), ("receipt", 30)]):
        service.set_total(wire_row(aggregate(deliveries[name], days_ago, updated=moment, seed=seed)))

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert service.posts == []
    assert len(service.gets) == 9  # 63 days, 7 per request
    assert any("nothing to correct" in line for line in journal(result))
    assert ledger() == local_window_totals()  # the ledger now says what the service has


def test_the_journal_lists_fifty_corrections_then_counts_the_rest(service, deliveries):
    moment = timezone.now()
    for seed in range(60):
        aggregate(DeliveryFactory(), seed % 20, updated=moment, seed=seed)

    result = run(batch_size=25, days_per_request=63)  # the whole window (today and 62 days) at once

    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert [len(body["rows"]) for body in service.posts] == [25, 25, 10]
    lines = journal(result)
    assert sum(line.startswith("Corrected ") for line in lines) == kpi_reconciliation.MAX_LISTED_CORRECTIONS
    assert any(line.startswith("… and 10 more corrected rows") for line in lines)
    assert service.counters() == local_window_totals()


@pytest.mark.parametrize(("answer", "reason"), [
    (Response("<html>oops</html>", content_type="text/html"), "not JSON"),
    (Response('{"rows": "none"}', content_type="application/json"), "'rows' must be a list"),
    (Response('{"data": []}', content_type="application/json"), "no 'rows' in the answer"),
    (Response('{"rows": [{"date": "2020-01-01"}]}', content_type="application/json"), "rows[0]: missing campaign_id"),
])
def test_a_malformed_answer_fails_the_run_and_pushes_nothing(service, skewed, answer, reason):
    service.script("GET", answer)

    result = run()

    assert result.status == RunStatus.FAILED
    assert reason in result.reason
    assert service.posts == []
    assert ledger() == {}


def test_a_row_of_the_wrong_shape_or_outside_the_window_fails_the_run(service, skewed):
    bad = wire_row(skewed["lower"], opened="12")
    service.script("GET", Response(f'{{"rows": [{json.dumps(bad)}]}}', content_type="application/json"))
    result = run()
    assert result.status == RunStatus.FAILED and "opened: expected an integer, got '12'" in result.reason

    outside = wire_row(skewed["lower"])
    outside["date"] = (today() + timedelta(days=1)).isoformat()

    def last_chunk(request: Any) -> Response:
        return Response(json.dumps({"rows": [outside]}), content_type="application/json")

    service.script("GET", *[Response('{"rows": []}', content_type="application/json")] * 8, last_chunk)
    result = run()
    assert result.status == RunStatus.FAILED and "is outside the requested" in result.reason
    assert service.posts == [] and ledger() == {}


def test_a_failed_correction_batch_is_not_pushed_twice_by_the_next_run(service, skewed, waits):
    service.script("POST", None, *[Response("down", status=502)] * 4)
    expected = expected_corrections(local_window_totals(), remote_totals(service))

    failed = run(batch_size=2, days_per_request=63)

    assert failed.status == RunStatus.FAILED and "answered 502 (after 4 attempts)" in failed.reason
    acknowledged = pushed_rows(service.posts[:1])
    again = run(batch_size=2, days_per_request=63)

    assert again.status == RunStatus.SUCCEEDED, again.reason
    assert pushed_rows(service.posts[5:]) == {key: value for key, value in expected.items() if key not in acknowledged}
    assert service.counters() == local_window_totals()


def test_a_skewed_service_total_is_fixed_and_sharing_then_pushes_only_new_changes(service, deliveries):
    moment = timezone.now() - timedelta(minutes=30)
    row = aggregate(deliveries["news"], 1, updated=moment, seed=1)
    aggregate(deliveries["reminder"], 1, updated=moment, seed=2)
    assert share().status == RunStatus.SUCCEEDED
    key = (row.day.isoformat(), row.delivery_id)
    service.totals[key]["opened"] += 5  # counted twice on the service's side, say
    service.totals[key]["bounces"] -= 1

    fixed = run()

    assert fixed.status == RunStatus.SUCCEEDED, fixed.reason
    assert pushed_rows(service.posts[1:]) == {key: {**dict.fromkeys(COUNTERS, 0), "opened": -5, "bounces": 1}}
    assert service.counters() == local_window_totals()
    assert share().status == RunStatus.SUCCEEDED
    assert len(service.posts) == 2  # sharing has nothing to add after the reconciliation
    row.opens += 2
    row.updated_at = timezone.now()
    row.save()
    assert share().status == RunStatus.SUCCEEDED
    assert pushed_rows(service.posts[2:]) == {key: {**dict.fromkeys(COUNTERS, 0), "opened": 2}}
    assert service.counters() == local_window_totals()


def test_sharing_s_unacknowledged_batch_is_resent_first(service, skewed, waits):
    service.script("POST", *[Response("down", status=503)] * 4)
    assert share().status == RunStatus.FAILED
    pending = KpiShareState.objects.get(channel="email")

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert service.posts[4]["batch_id"] == pending.pending_batch_id and service.posts[4]["rows"] == pending.pending_rows
    assert KpiShareState.objects.get(channel="email").pending_batch_id == ""
    assert service.counters() == local_window_totals()
    assert ledger() == local_window_totals()


def test_a_reconciliation_refused_while_sharing_runs_waits_re_queued_then_goes_ahead_or_is_skipped(service, skewed):
    sharing_run = WorkflowRun.objects.create(workflow_id=kpi_sharing.SHARING_ID, status=RunStatus.RUNNING)
    assert leases.claim(kpi_sharing.SHARING_ID, sharing_run.pk).won
    queued = WorkflowRun.objects.create(workflow_id=WORKFLOW_ID, trigger=Trigger.SCHEDULE)

    with pytest.raises(Requeue) as waiting:
        execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SCHEDULE, run_id=queued.pk))

    queued.refresh_from_db()
    assert queued.status == RunStatus.QUEUED
    assert f"waiting for kpiSharing (run #{sharing_run.pk})" in queued.reason
    assert 0 < waiting.value.countdown <= 2  # a message sent again shortly, not a sleep in the slot
    budget = waiting.value.wait_until - time.time()
    assert kpi_reconciliation.SHARING_WAIT_S - 5 < budget <= kpi_reconciliation.SHARING_WAIT_S
    assert service.gets == [] and service.posts == []

    # Still refused when its wait is over: skipped, nothing fetched or pushed.
    late = execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SCHEDULE, wait_until=time.time() - 1))
    assert late.status == RunStatus.SKIPPED and late.reason == f"kpiSharing is running (run #{sharing_run.pk})"
    assert service.gets == [] and service.posts == []

    # kpiSharing finishes: the waiting run's next delivery goes ahead.
    leases.release(kpi_sharing.SHARING_ID, sharing_run.pk)
    done = execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SCHEDULE, run_id=queued.pk,
                              wait_until=waiting.value.wait_until))
    assert done.pk == queued.pk and done.status == RunStatus.SUCCEEDED, done.reason
    assert service.counters() == local_window_totals()


def test_a_sharing_run_during_a_reconciliation_waits_then_is_skipped_and_runs_after_it(service, skewed, monkeypatch):
    during: list[Any] = []
    fetch = AnalyticsClient.fetch_kpis

    def fetch_and_share(self, **kwargs):
        if not during:
            with pytest.raises(Requeue) as waiting:
                execute(RunRequest(workflow_id=kpi_sharing.SHARING_ID, trigger=Trigger.SCHEDULE))
            during.append(waiting.value.run.reason)
            during.append(execute(RunRequest(workflow_id=kpi_sharing.SHARING_ID, trigger=Trigger.SCHEDULE,
                                             run_id=waiting.value.run.pk, wait_until=time.time() - 1)))
        return fetch(self, **kwargs)

    monkeypatch.setattr(AnalyticsClient, "fetch_kpis", fetch_and_share)
    result = run(lookback_days=3)

    assert result.status == RunStatus.SUCCEEDED, result.reason
    reason, skipped = during
    assert f"waiting for kpiReconciliation (run #{result.pk})" in reason
    assert skipped.status == RunStatus.SKIPPED and skipped.reason == f"kpiReconciliation is running (run #{result.pk})"
    assert Workflow.objects.get(pk=WORKFLOW_ID).lease_holder is None
    posts = len(service.posts)
    assert share().status == RunStatus.SUCCEEDED
    assert len(service.posts) == posts  # the reconciliation left nothing for kpiSharing to push


def test_a_batch_left_pending_during_a_reconciliation_stops_it_writing_the_ledger_until_resent(
    service, deliveries, monkeypatch,
):
    """A kpiSharing run that outlived its lease may save a batch while a reconciliation runs: that
    batch's id rests on the ledger as it is, so the reconciliation must not rewrite it."""
    moment = timezone.now() - timedelta(minutes=30)
    row = aggregate(deliveries["news"], 1, updated=moment, seed=1)
    aggregate(deliveries["reminder"], 1, updated=moment, seed=2)
    assert share().status == RunStatus.SUCCEEDED
    key = (row.day.isoformat(), row.delivery_id)
    service.totals[key]["opened"] -= 4  # to be corrected
    told = ledger()[key]
    row.opens += 2
    row.updated_at = timezone.now()
    row.save()
    stale = wire_row(row, **{**dict.fromkeys(COUNTERS, 0), "opened": 2})
    stale_id = expected_batch_id([stale], {key: told})
    fetch = AnalyticsClient.fetch_kpis

    def fetch_while_sharing_saves_a_batch(self, **kwargs):
        KpiShareState.objects.filter(channel="email").update(
            pending_batch_id=stale_id, pending_rows=[stale],
            pending_watermark_updated_at=row.updated_at, pending_watermark_aggregate_id=row.pk)
        monkeypatch.setattr(AnalyticsClient, "fetch_kpis", fetch)
        return fetch(self, **kwargs)

    monkeypatch.setattr(AnalyticsClient, "fetch_kpis", fetch_while_sharing_saves_a_batch)
    refused = run(lookback_days=3)

    assert refused.status == RunStatus.FAILED
    assert f"kpiSharing saved batch {stale_id} during the reconciliation" in refused.reason
    assert ledger()[key] == told  # not rewritten under the pending batch

    again = run(lookback_days=3)

    assert again.status == RunStatus.SUCCEEDED, again.reason
    assert [body["batch_id"] for body in service.posts].count(stale_id) == 1
    assert service.counters() == local_window_totals()
    assert ledger() == local_window_totals()
    assert KpiShareState.objects.get(channel="email").pending_batch_id == ""


def test_skipped_without_an_enabled_account(db, httpserver):
    result = run()

    assert result.status == RunStatus.SKIPPED and result.reason == "no enabled analytics account"
    assert httpserver.log == []
