"""mcSynch_local: final events older than the delay move from Event to EventHistory, exactly once.

Expected results are computed here in plain Python from the rows as they were created (the final
statuses are spelled out, not imported), then compared field by field with what the run left.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from campaign.models import DeliveryLog, Event, EventHistory, EventStatus
from tests import factories
from tests.workflows.helpers import TEST_LEASE_SECONDS, fail_on_call, wait_for
from workflows import commands
from workflows.builtin import mc_synch_local
from workflows.leases import ABANDONED
from workflows.models import LogLevel, RunStatus, Workflow, WorkflowLog, WorkflowRun
from workflows.worker_process import WorkerProcess, current_database_url

WORKFLOW_ID = "mcSynch_local"

#: Written out rather than imported: the test says which statuses are final.
FINAL = {"sent", "ignored", "delivery_failed", "not_taken_into_account", "too_old"}

#: The copied columns, by field name.
FIELDS = ("event_type", "channel", "payload", "email", "phone", "status", "template_id", "delivery_log_id",
          "created_at", "processed_at")

#: (created minutes ago, processed minutes ago or None): each combination, for every status.
AGES = [
    (180, 120),   # processed two hours ago: old enough
    (180, 10),    # created long ago, processed ten minutes ago: not yet (age = processed_at)
    (30, 20),     # recent
    (240, None),  # never stamped as processed, created four hours ago: aged on created_at
    (15, None),   # never stamped, recent
    (61, 59),     # just inside the delay
]


def run(**overrides: Any) -> WorkflowRun:
    return commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides=overrides or None)


def snapshot(model: type[Event] | type[EventHistory]) -> dict[int, dict[str, Any]]:
    return {row["id"]: row for row in model.objects.values("id", *FIELDS)}


def make_events(now: datetime) -> dict[int, dict[str, Any]]:
    """Every status at every age, some with a template and a delivery log; returns them by id."""
    template = factories.MessageTemplateFactory()
    log = factories.DeliveryLogFactory()
    for index, status in enumerate(EventStatus.values):
        for position, (created_ago, processed_ago) in enumerate(AGES):
            factories.EventFactory(
                status=status,
                channel="sms" if position % 2 else "email",
                phone=f"+3361234{index}{position}",
                payload={"order": index * 10 + position, "items": [{"sku": "A-1", "qty": position}]},
                template=template if position % 3 == 0 else None,
                delivery_log_id=log.pk if status in FINAL else None,
                created_at=now - timedelta(minutes=created_ago),
                processed_at=None if processed_ago is None else now - timedelta(minutes=processed_ago),
            )
    return snapshot(Event)


def expected_archive(events: dict[int, dict[str, Any]], *, now: datetime, delay: timedelta) -> set[int]:
    def age(event: dict[str, Any]) -> datetime:
        return event["processed_at"] or event["created_at"]

    return {event_id for event_id, event in events.items() if event["status"] in FINAL and age(event) < now - delay}


def state_without_archive_time() -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    return snapshot(Event), snapshot(EventHistory)


@pytest.fixture
def events(db) -> dict[int, dict[str, Any]]:
    return make_events(timezone.now())


# --- What moves, field by field ---------------------------------------------------------------


def test_archives_exactly_the_final_events_older_than_the_delay_with_every_field(events):
    started = timezone.now()
    expected = expected_archive(events, now=started, delay=timedelta(minutes=60))
    assert len(expected) == 5 * 2, "two ages old enough, for each of the five final statuses"

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    archived = snapshot(EventHistory)
    assert set(archived) == expected
    for event_id in expected:
        assert archived[event_id] == events[event_id], f"event {event_id} copied with every field"
    assert snapshot(Event) == {event_id: row for event_id, row in events.items() if event_id not in expected}
    archived_at = set(EventHistory.objects.values_list("archived_at", flat=True))
    assert all(started <= moment <= timezone.now() for moment in archived_at)
    assert result.counters["archived"] == len(expected)


def test_live_plus_archived_is_constant_and_no_id_is_in_both_tables(events):
    result = run(batch_size=4)

    assert result.status == RunStatus.SUCCEEDED, result.reason
    live = set(Event.objects.values_list("id", flat=True))
    archived = list(EventHistory.objects.values_list("id", flat=True))
    assert len(archived) == len(set(archived)), "no duplicate ids in the archive"
    assert live.isdisjoint(archived)
    assert live | set(archived) == set(events)


def test_a_second_run_moves_nothing_and_changes_nothing(events):
    run()
    after_first = state_without_archive_time()
    archived_at = dict(EventHistory.objects.values_list("id", "archived_at"))

    second = run()

    assert second.status == RunStatus.SUCCEEDED
    assert second.counters["archived"] == 0
    assert state_without_archive_time() == after_first
    assert dict(EventHistory.objects.values_list("id", "archived_at")) == archived_at


def test_the_delay_property_decides_what_is_old_enough(events):
    now = timezone.now()
    expected = expected_archive(events, now=now, delay=timedelta(minutes=5))
    assert len(expected) > len(expected_archive(events, now=now, delay=timedelta(minutes=60)))

    result = run(delay_minutes=5)

    assert result.status == RunStatus.SUCCEEDED
    assert set(EventHistory.objects.values_list("id", flat=True)) == expected


def test_an_event_finalised_after_a_run_is_archived_by_the_next(events):
    run()
    pending = Event.objects.filter(status=EventStatus.PENDING, created_at__lt=timezone.now() - timedelta(hours=2)).first()
    Event.objects.filter(pk=pending.pk).update(status=EventStatus.TOO_OLD, processed_at=timezone.now() - timedelta(hours=2))

    run()

    assert EventHistory.objects.filter(pk=pending.pk, status=EventStatus.TOO_OLD).exists()
    assert not Event.objects.filter(pk=pending.pk).exists()


def test_pending_events_are_never_archived_however_old(db):
    old = timezone.now() - timedelta(days=30)
    pending = [factories.EventFactory(status=status, created_at=old, processed_at=old)
               for status in (EventStatus.PENDING, EventStatus.PENDING_DELIVERY)]

    run()

    assert set(Event.objects.values_list("id", flat=True)) == {event.pk for event in pending}
    assert not EventHistory.objects.exists()


# --- Batches, crashes and reruns ----------------------------------------------------------------


def test_a_run_interrupted_between_batches_then_rerun_ends_like_an_uninterrupted_run(events, monkeypatch):
    expected = expected_archive(events, now=timezone.now(), delay=timedelta(minutes=60))
    monkeypatch.setattr(mc_synch_local, "archive_range", fail_on_call(3, mc_synch_local.archive_range))

    crashed = run(batch_size=4)

    assert crashed.status == RunStatus.FAILED and "simulated crash" in crashed.reason
    archived = set(EventHistory.objects.values_list("id", flat=True))
    assert archived == set(sorted(expected)[:8]), "two committed batches of 4 events, nothing of the third"
    assert set(Event.objects.values_list("id", flat=True)) == set(events) - archived
    assert crashed.counters["archived"] == 8

    monkeypatch.undo()
    rerun = run(batch_size=4)

    assert rerun.status == RunStatus.SUCCEEDED
    assert snapshot(EventHistory) == {event_id: events[event_id] for event_id in expected}
    assert snapshot(Event) == {event_id: row for event_id, row in events.items() if event_id not in expected}
    assert rerun.counters["archived"] == len(expected) - 8


def test_a_crash_after_a_batch_wrote_rolls_the_whole_batch_back(events, monkeypatch):
    real = mc_synch_local.archive_range

    def write_then_crash(**kwargs: Any) -> Any:
        real(**kwargs)
        raise RuntimeError("crash after the copy and the delete, before the commit")

    monkeypatch.setattr(mc_synch_local, "archive_range", write_then_crash)

    crashed = run()

    assert crashed.status == RunStatus.FAILED
    assert not EventHistory.objects.exists(), "the copy of the failed batch was rolled back with it"
    assert snapshot(Event) == events, "and so was the delete"


def test_an_id_already_in_the_archive_keeps_the_live_event_and_warns(events):
    expected = expected_archive(events, now=timezone.now(), delay=timedelta(minutes=60))
    clash = min(expected)
    factories.EventHistoryFactory(id=clash, event_type="restored_from_backup")

    result = run()

    assert result.status == RunStatus.SUCCEEDED
    assert Event.objects.filter(pk=clash).exists(), "never deleted on the strength of another row"
    assert EventHistory.objects.get(pk=clash).event_type == "restored_from_backup", "the archive row is untouched"
    assert set(EventHistory.objects.values_list("id", flat=True)) == expected
    assert result.counters["already_in_history"] == 1 and result.counters["archived"] == len(expected) - 1
    warning = WorkflowLog.objects.get(run=result, level=LogLevel.WARNING)
    assert f"ids {clash})" in warning.message


def test_the_cursor_restarts_at_each_run_so_lower_ids_finalised_later_are_not_skipped(events):
    run(batch_size=4)
    assert Workflow.objects.get(pk=WORKFLOW_ID).cursors[mc_synch_local.CURSOR] > 0
    lowest_pending = Event.objects.filter(status=EventStatus.PENDING).order_by("id").first()
    Event.objects.filter(pk=lowest_pending.pk).update(status=EventStatus.SENT, processed_at=timezone.now() - timedelta(days=1))

    run(batch_size=4)

    assert EventHistory.objects.filter(pk=lowest_pending.pk).exists()


# --- Admin --------------------------------------------------------------------------------------


def test_the_admin_lists_live_and_archived_events_with_their_status_and_filters_by_status(events, client):
    run()
    client.force_login(factories.SuperUserFactory())
    live_page = client.get(reverse("admin:campaign_event_changelist"), {"status__exact": "pending"})
    archive_page = client.get(reverse("admin:campaign_eventhistory_changelist"), {"status__exact": "too_old"})

    assert live_page.status_code == archive_page.status_code == 200
    live_rows = list(live_page.context["cl"].result_list)
    archived_rows = list(archive_page.context["cl"].result_list)
    assert {row.pk for row in live_rows} == {i for i, e in events.items() if e["status"] == "pending"}
    assert {row.pk for row in archived_rows} == set(EventHistory.objects.filter(status="too_old").values_list("id", flat=True))
    assert archived_rows
    assert "Too old" in archive_page.content.decode() and "Pending" in live_page.content.decode()


# --- A real worker killed mid-run ---------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_worker_killed_mid_run_loses_and_duplicates_no_event_and_the_rerun_finishes(settings):
    settings.WORKFLOW_LEASE_SECONDS = TEST_LEASE_SECONDS
    now = timezone.now()
    old, recent = now - timedelta(hours=3), now - timedelta(minutes=5)
    log = DeliveryLog.objects.create(delivery=factories.DeliveryFactory(), address="x@example.com")
    statuses = ["sent", "delivery_failed", "too_old", "pending", "ignored", "not_taken_into_account"]
    Event.objects.bulk_create(
        Event(event_type="order_confirmation", email=f"buyer{n}@example.com", payload={"n": n},
              status=statuses[n % len(statuses)], delivery_log_id=log.pk, created_at=old,
              processed_at=recent if n % 10 == 0 else old)
        for n in range(600)
    )
    events = snapshot(Event)
    expected = expected_archive(events, now=now, delay=timedelta(minutes=60))
    Workflow.objects.filter(pk=WORKFLOW_ID).update(properties={"batch_size": 10, "throttle_ms": 100})

    worker = WorkerProcess(queues=["celery"], env={
        "SECRET_KEY": settings.SECRET_KEY,
        "DATABASE_URL": current_database_url(),
        "WORKFLOW_LEASE_SECONDS": str(TEST_LEASE_SECONDS),
    }).start()
    try:
        dead = commands.run_now(WORKFLOW_ID, actor="test")
        wait_for(lambda: EventHistory.objects.count() >= 100, what="a few batches archived by the worker")
        worker.kill()
    finally:
        worker.stop()

    archived_when_killed = EventHistory.objects.count()
    assert 100 <= archived_when_killed < len(expected), "killed mid-run"
    assert Event.objects.count() + archived_when_killed == len(events), "nothing lost or doubled at the kill"
    assert WorkflowRun.objects.get(pk=dead.pk).status == RunStatus.RUNNING, "the dead run could record nothing"

    time.sleep(TEST_LEASE_SECONDS + 0.5)
    Workflow.objects.filter(pk=WORKFLOW_ID).update(properties={"batch_size": 10})
    rerun = run()

    assert rerun.status == RunStatus.SUCCEEDED, rerun.reason
    dead.refresh_from_db()
    assert (dead.status, dead.reason) == (RunStatus.FAILED, ABANDONED)
    archived = list(EventHistory.objects.values_list("id", flat=True))
    assert len(archived) == len(set(archived)), "no duplicate ids in the archive"
    assert Event.objects.count() + len(archived) == len(events)
    assert snapshot(EventHistory) == {event_id: events[event_id] for event_id in expected}
    assert snapshot(Event) == {event_id: row for event_id, row in events.items() if event_id not in expected}
    assert rerun.counters["archived"] == len(expected) - archived_when_killed
