"""cleanup: every table's retention boundary to the second, consolidated-only raw rows, old
deliveries with their dependents, quarantine release rules, a failing activity stopping the later
ones, dry runs, bounded batches, tracking rows surviving their logs, and (PostgreSQL) a concurrent
writer that is never blocked while a large purge runs."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection, connections, models, transaction
from django.utils import timezone

from campaign import partitions
from campaign.models import (
    ABTest,
    AppSubscription,
    Channel,
    Delivery,
    DeliveryAggregate,
    DeliveryLog,
    Event,
    EventHistory,
    FailureReason,
    FailureType,
    ForecastLog,
    InboundSms,
    LogStatus,
    Quarantine,
    SendingFeedback,
    TrackingHit,
    TrackingLog,
)
from tests.factories import (
    ABTestFactory,
    AppSubscriptionFactory,
    DeliveryAggregateFactory,
    DeliveryFactory,
    DeliveryLogFactory,
    EventFactory,
    EventHistoryFactory,
    ForecastLogFactory,
    InboundSmsFactory,
    QuarantineFactory,
    SendingFeedbackFactory,
    TrackingHitFactory,
    TrackingLogFactory,
)
from tests.workflows.admin_helpers import change_url, edit
from workflows import commands
from workflows.builtin import cleanup
from workflows.builtin import cleanup_purges as purges
from workflows.builtin.update_delivery_exec_info import FEEDBACK_CURSOR, HITS_CURSOR, INBOUND_SMS_CURSOR
from workflows.errors import PermanentError
from workflows.models import (
    ActivityRun,
    ActivityStatus,
    LogLevel,
    RunStatus,
    Trigger,
    Workflow,
    WorkflowLog,
    WorkflowRun,
)

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
FINISHED, FAILED = Delivery.State.FINISHED, Delivery.State.FAILED


@pytest.fixture
def frozen(db, time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


@pytest.fixture(scope="module", autouse=True)
def partitions_for_now(django_db_setup, django_db_blocker):
    """PostgreSQL: the partitions of the frozen date exist, committed, as they would in production
    (the first activity keeps them ahead). Made inside a test's transaction instead, they would
    hold their tables' locks until the test ends, and the statistics step's VACUUM, which runs on
    a connection of its own, would wait for them."""
    with django_db_blocker.unblock():
        if partitions.enabled():
            partitions.ensure_partitions(now=NOW)


def run_cleanup(**overrides: Any) -> WorkflowRun:
    """A synchronous run with ``purge_deliveries`` on, so that the tests exercise every purge (it is
    off by default: ``test_deliveries_are_kept_however_old_unless_purge_deliveries_is_on``), and
    ``statistics=none`` unless a test asks: on PostgreSQL a run may create partitions for the old
    rows a test writes, inside the test's transaction, and the VACUUM of those tables (a connection
    of its own) would wait for that transaction. The statistics tests ask for it."""
    return commands.run_now("cleanup", actor="test", sync=True,
                            overrides={"purge_deliveries": True, "statistics": "none", **overrides})


def consolidate_everything() -> None:
    """updateDeliveryExecInfo has read every raw row there is."""
    Workflow.objects.filter(pk="updateDeliveryExecInfo").update(cursors={
        FEEDBACK_CURSOR: SendingFeedback.objects.order_by("-id").values_list("id", flat=True).first() or 0,
        HITS_CURSOR: TrackingHit.objects.order_by("-id").values_list("id", flat=True).first() or 0,
        INBOUND_SMS_CURSOR: InboundSms.objects.order_by("-id").values_list("id", flat=True).first() or 0,
    })


def activity_counters(run: WorkflowRun, name: str) -> dict[str, int]:
    return ActivityRun.objects.get(run=run, name=name).counters


def ago(days: float, *, extra: timedelta = timedelta()) -> datetime:
    return NOW - timedelta(days=days) + extra


# -- every table's boundary ----------------------------------------------------------------------

#: name → (model, retention days, build a row whose age column is the given time).
BOUNDARY_CASES: dict[str, tuple[type[models.Model], int, Callable[[datetime], models.Model]]] = {
    "delivery_logs": (DeliveryLog, 180, lambda at: DeliveryLogFactory(updated_at=at)),
    "tracking_logs": (TrackingLog, 180, lambda at: TrackingLogFactory(tracked_at=at)),
    "sending_feedback": (SendingFeedback, 30, lambda at: SendingFeedbackFactory(received_at=at)),
    "tracking_hits": (TrackingHit, 30, lambda at: TrackingHitFactory(hit_at=at)),
    "inbound_sms": (InboundSms, 30, lambda at: InboundSmsFactory(received_at=at)),
    "events": (Event, 30, lambda at: EventFactory(created_at=at)),
    "archived_events": (EventHistory, 180, lambda at: EventHistoryFactory(archived_at=at)),
    "forecast_logs": (ForecastLog, 7, lambda at: ForecastLogFactory(computed_at=at)),
    "deliveries": (Delivery, 730, lambda at: DeliveryFactory(state=FINISHED, finished_at=at)),
    "app_subscriptions": (AppSubscription, 180, lambda at: AppSubscriptionFactory(disabled=True, updated_at=at)),
    "released_quarantine": (Quarantine, 7, lambda at: released_quarantine_row(updated_at=at)),
}


def released_quarantine_row(*, updated_at: datetime) -> Quarantine:
    """A released (``valid``) quarantine row last updated at ``updated_at`` (``auto_now`` would
    stamp the save, so the time is written afterwards)."""
    row = QuarantineFactory(status=Quarantine.Status.VALID)
    Quarantine.objects.filter(pk=row.pk).update(updated_at=updated_at)
    return row


@pytest.mark.parametrize("name", list(BOUNDARY_CASES))
def test_cleanup_removes_rows_one_second_past_retention_and_keeps_rows_one_second_short(frozen, name):
    model, days, build = BOUNDARY_CASES[name]
    older = build(ago(days, extra=-SECOND))
    younger = build(ago(days, extra=SECOND))
    consolidate_everything()

    run = run_cleanup(purge_deliveries=True)

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert not model.objects.filter(pk=older.pk).exists()
    assert model.objects.filter(pk=younger.pk).exists()
    assert run.counters[f"{name}_removed"] == 1


def test_retention_defaults_are_the_platforms_published_ones():
    """Delivery logs, tracking logs and archived events 6 months (180 days), events 1 month,
    temporary rows (forecasts) 7 days, deliveries kept unless configured; the rest as documented."""
    defaults = {prop.name: prop.default for prop in cleanup.definition.properties}

    assert defaults == {
        "delivery_logs_days": 180, "tracking_logs_days": 180, "sending_feedback_days": 30, "tracking_hits_days": 30,
        "inbound_sms_days": 30, "events_days": 30, "archived_events_days": 180, "delivery_aggregates_days": 360,
        "forecast_logs_days": 7,
        "deliveries_days": 730, "app_subscriptions_days": 180, "released_quarantine_days": 7,
        "soft_error_release_days": 10, "mailbox_full_release_days": 30, "log_batch_size": 20_000, "batch_size": 5_000,
        "statistics": "vacuum_analyze", "purge_deliveries": False, "dry_run": False,
    }


def test_deliveries_are_kept_however_old_unless_purge_deliveries_is_on(frozen):
    ancient = DeliveryFactory(state=FINISHED, finished_at=ago(3650))

    run = commands.run_now("cleanup", actor="test", sync=True, overrides={"statistics": "none"})

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert Delivery.objects.filter(pk=ancient.pk).exists()
    assert run.counters["deliveries_removed"] == 0
    assert "Kept every delivery: purge_deliveries is off" in "\n".join(run.journal.values_list("message", flat=True))


@pytest.mark.parametrize("status", [Quarantine.Status.ERRONEOUS, Quarantine.Status.QUARANTINED,
                                    Quarantine.Status.DENYLISTED])
def test_only_released_quarantine_rows_are_purged(frozen, status):
    row = QuarantineFactory(status=status)
    Quarantine.objects.filter(pk=row.pk).update(updated_at=ago(400))

    run = run_cleanup()

    assert Quarantine.objects.filter(pk=row.pk).exists()
    assert run.counters["released_quarantine_removed"] == 0


def test_a_changed_retention_moves_the_boundary(frozen):
    kept_by_default = DeliveryLogFactory(updated_at=ago(100))

    run_cleanup(delivery_logs_days=99)

    assert not DeliveryLog.objects.filter(pk=kept_by_default.pk).exists()


def test_an_aggregate_day_goes_once_its_last_second_is_past_retention(db, time_machine):
    day = date(2025, 6, 1)
    aggregate = DeliveryAggregateFactory(day=day)
    day_ends = datetime(2025, 6, 2, tzinfo=UTC)  # instance time zone: UTC

    time_machine.move_to(day_ends + timedelta(days=360) - SECOND, tick=False)
    assert run_cleanup().counters["delivery_aggregates_removed"] == 0
    assert DeliveryAggregate.objects.filter(pk=aggregate.pk).exists(), "the day ended one second short of 360 days ago"

    time_machine.move_to(day_ends + timedelta(days=360) + SECOND, tick=False)
    assert run_cleanup().counters["delivery_aggregates_removed"] == 1
    assert not DeliveryAggregate.objects.filter(pk=aggregate.pk).exists()


def test_enabled_app_subscriptions_are_never_purged(frozen):
    enabled = AppSubscriptionFactory(disabled=False, updated_at=ago(1000))

    run_cleanup()

    assert AppSubscription.objects.filter(pk=enabled.pk).exists()


# -- workflow history ------------------------------------------------------------------------------

def make_run(workflow_id: str, *, finished_at: datetime | None, status: str = RunStatus.SUCCEEDED) -> WorkflowRun:
    run = WorkflowRun.objects.create(workflow_id=workflow_id, trigger=Trigger.SCHEDULE, status=status,
                                     started_at=finished_at, finished_at=finished_at)
    ActivityRun.objects.create(run=run, position=0, name="first", status=ActivityStatus.SUCCEEDED)
    ActivityRun.objects.create(run=run, position=1, name="second", status=ActivityStatus.SUCCEEDED)
    # An entry written after the cutoff for an old run (the engine journals a takeover that way):
    # it must go with its run, or the run could not be deleted.
    WorkflowLog.objects.create(workflow_id=workflow_id, run=run, message="late entry", logged_at=NOW - timedelta(hours=1))
    return run


def test_each_workflow_keeps_its_own_history_days_of_journal_and_runs(frozen):
    Workflow.objects.filter(pk="billing").update(history_days=3)
    journal = {
        (workflow_id, kept): WorkflowLog.objects.create(
            workflow_id=workflow_id, message="entry", logged_at=ago(days, extra=SECOND if kept else -SECOND)).pk
        for workflow_id, days in (("abTesting", 30), ("billing", 3)) for kept in (True, False)
    }
    runs = {
        (workflow_id, kept): make_run(workflow_id, finished_at=ago(days, extra=SECOND if kept else -SECOND)).pk
        for workflow_id, days in (("abTesting", 30), ("billing", 3)) for kept in (True, False)
    }
    unfinished = make_run("billing", finished_at=None, status=RunStatus.PAUSED).pk

    run = run_cleanup()

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert set(WorkflowLog.objects.filter(pk__in=journal.values()).values_list("pk", flat=True)) \
        == {pk for (_, kept), pk in journal.items() if kept}
    assert set(WorkflowRun.objects.filter(pk__in=[*runs.values(), unfinished]).values_list("pk", flat=True)) \
        == {pk for (_, kept), pk in runs.items() if kept} | {unfinished}
    removed_runs = [pk for (_, kept), pk in runs.items() if not kept]
    assert not ActivityRun.objects.filter(run_id__in=removed_runs).exists()
    assert not WorkflowLog.objects.filter(run_id__in=removed_runs).exists()
    assert run.counters["workflow_runs_removed"] == 2
    assert run.counters["activity_runs_removed"] == 4
    assert run.counters["journal_entries_removed"] == 2 + 2  # two old entries, two late entries of removed runs


def test_a_history_of_zero_days_written_to_the_database_does_not_wipe_the_journal(frozen):
    Workflow.objects.filter(pk="billing").update(history_days=0)  # bypasses the model's validators
    recent = WorkflowLog.objects.create(workflow_id="billing", message="12 hours ago", logged_at=NOW - timedelta(hours=12))
    old = WorkflowLog.objects.create(workflow_id="billing", message="2 days ago", logged_at=ago(2))

    run = run_cleanup()

    assert WorkflowLog.objects.filter(pk=recent.pk).exists()
    assert not WorkflowLog.objects.filter(pk=old.pk).exists()
    assert WorkflowLog.objects.filter(run=run, level=LogLevel.WARNING, message__contains="billing keeps 0 days").exists()


# -- raw feedback and hits: only what updateDeliveryExecInfo consolidated -------------------------

@pytest.mark.parametrize(("model", "build", "cursor", "name"), [
    (SendingFeedback, lambda: SendingFeedbackFactory(received_at=ago(90)), FEEDBACK_CURSOR, "sending_feedback"),
    (TrackingHit, lambda: TrackingHitFactory(hit_at=ago(90)), HITS_CURSOR, "tracking_hits"),
])
def test_an_unconsolidated_raw_row_is_never_purged_however_old(frozen, model, build, cursor, name):
    first, second, unread = build(), build(), build()
    Workflow.objects.filter(pk="updateDeliveryExecInfo").update(cursors={cursor: second.pk})

    run = run_cleanup()

    assert list(model.objects.values_list("pk", flat=True)) == [unread.pk]
    assert run.counters[f"{name}_removed"] == 2
    assert first.pk < second.pk < unread.pk


def test_raw_rows_stay_while_update_delivery_exec_info_has_no_cursor(frozen):
    feedback, hit = SendingFeedbackFactory(received_at=ago(90)), TrackingHitFactory(hit_at=ago(90))
    Workflow.objects.filter(pk="updateDeliveryExecInfo").update(cursors={})

    run = run_cleanup()

    assert SendingFeedback.objects.filter(pk=feedback.pk).exists() and TrackingHit.objects.filter(pk=hit.pk).exists()
    assert WorkflowLog.objects.filter(run=run, activity="purge_sending_feedback",
                                      message__contains="has not consolidated any yet").exists()


# -- old deliveries and what points to them ---------------------------------------------------------

def delivery_with_dependents(*, state: str, finished_at: datetime) -> Delivery:
    """A delivery whose logs, tracking, aggregates and forecast rows are all young by their own rules."""
    delivery = DeliveryFactory(state=state, finished_at=finished_at)
    logs = [DeliveryLogFactory(delivery=delivery, status=LogStatus.SENT, updated_at=ago(10)) for _ in range(3)]
    for log in logs:
        TrackingLogFactory(delivery_log=log, delivery=delivery, tracked_at=ago(10))
    DeliveryAggregateFactory(delivery=delivery, day=NOW.date() - timedelta(days=10))
    ForecastLogFactory(delivery=delivery, computed_at=ago(1))
    return delivery


def dependents(delivery_id: int) -> tuple[int, int, int, int]:
    return (DeliveryLog.objects.filter(delivery_id=delivery_id).count(),
            TrackingLog.objects.filter(delivery_id=delivery_id).count(),
            DeliveryAggregate.objects.filter(delivery_id=delivery_id).count(),
            ForecastLog.objects.filter(delivery_id=delivery_id).count())


def test_old_finished_and_failed_deliveries_go_with_their_logs_tracking_aggregates_and_forecasts(frozen):
    finished = delivery_with_dependents(state=FINISHED, finished_at=ago(731))
    failed = delivery_with_dependents(state=FAILED, finished_at=ago(731))
    stopped = delivery_with_dependents(state=Delivery.State.STOPPED, finished_at=ago(731))
    recent = delivery_with_dependents(state=FINISHED, finished_at=ago(729))
    winner = delivery_with_dependents(state=FINISHED, finished_at=ago(731))
    ABTestFactory(winner_delivery=winner, status=ABTest.Status.WINNER_SENT)

    run = run_cleanup(log_batch_size=2, batch_size=1)

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert set(Delivery.objects.values_list("pk", flat=True)) >= {stopped.pk, recent.pk, winner.pk}
    assert not Delivery.objects.filter(pk__in=[finished.pk, failed.pk]).exists()
    for gone in (finished, failed):
        assert dependents(gone.pk) == (0, 0, 0, 0)
    for kept in (stopped, recent, winner):
        assert dependents(kept.pk) == (3, 3, 1, 1)
    expected = {"deliveries_removed": 2, "delivery_logs_removed": 6, "tracking_logs_removed": 6,
                "delivery_aggregates_removed": 2, "forecast_logs_removed": 2}
    counters = activity_counters(run, "purge_old_deliveries")
    assert {name: counters.pop(name) for name in expected} == expected
    assert set(counters.values()) <= {0}, "other tables pointing to deliveries had no rows here"


def test_every_table_pointing_to_a_delivery_either_goes_first_or_keeps_the_delivery():
    """Read from the models: a table added later that points to Delivery is purged with it (CASCADE)
    or keeps it (PROTECT); anything else would make the delete fail, and must be decided here."""
    on_delete = {rel.related_model: rel.on_delete for rel in Delivery._meta.related_objects}

    assert set(on_delete.values()) <= {models.CASCADE, models.PROTECT}, on_delete
    assert [d.model for d in cleanup.delivery_dependents()][:4] == [TrackingLog, DeliveryLog, DeliveryAggregate, ForecastLog]
    assert {d.model for d in cleanup.delivery_dependents()} == {m for m, rule in on_delete.items() if rule is models.CASCADE}
    assert [rel.related_model for rel in cleanup.keeping_relations()] == [ABTest]
    assert {rel.related_model for rel in WorkflowRun._meta.related_objects} == {ActivityRun, WorkflowLog}


def test_rows_of_a_table_added_later_that_cascade_from_a_delivery_go_with_it(frozen):
    import campaign.models as domain

    shared_kpi = getattr(domain, "SharedKpi", None)
    if shared_kpi is None:
        pytest.skip("no shared KPI table in this version of the domain")
    old = DeliveryFactory(state=FINISHED, finished_at=ago(731))
    shared_kpi.objects.create(day=NOW.date() - timedelta(days=731), delivery=old, sent=3)

    run = run_cleanup()

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert not Delivery.objects.filter(pk=old.pk).exists()
    assert not shared_kpi.objects.filter(delivery_id=old.pk).exists()
    assert run.counters["shared_kpi_rows_removed"] == 1


# -- tracking rows outlive their delivery logs --------------------------------------------------------

def test_purging_a_delivery_log_leaves_its_tracking_rows_and_the_delivery_indicators_as_they_were(frozen):
    delivery = DeliveryFactory(state=FINISHED, finished_at=ago(200), delivered=1, opens=2, unique_opens=1,
                               open_rate="100.00")
    log = DeliveryLogFactory(delivery=delivery, status=LogStatus.SENT, updated_at=ago(200))
    tracking = [TrackingLogFactory(delivery_log=log, delivery=delivery, tracked_at=ago(170)) for _ in range(2)]
    before = list(TrackingLog.objects.order_by("pk").values())
    indicators = Delivery.objects.filter(pk=delivery.pk).values("delivered", "opens", "unique_opens", "open_rate").get()

    run = run_cleanup()

    assert run.counters["delivery_logs_removed"] == 1
    assert not DeliveryLog.objects.filter(pk=log.pk).exists()
    assert list(TrackingLog.objects.order_by("pk").values()) == before
    assert all(row["delivery_log_id"] == log.pk for row in before) and len(tracking) == 2
    assert Delivery.objects.filter(pk=delivery.pk).values("delivered", "opens", "unique_opens", "open_rate").get() == indicators


def test_no_database_constraint_ties_tracking_rows_to_delivery_logs(db):
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TrackingLog._meta.db_table)
    log_column = TrackingLog._meta.get_field("delivery_log").column

    assert not [name for name, c in constraints.items() if c["foreign_key"] and c["columns"] == [log_column]]
    assert any(c["foreign_key"] for c in constraints.values()), "the delivery FK is there: the check can see FKs"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_tracking_row_pointing_to_a_log_being_deleted_is_written_without_waiting():
    if connection.vendor != "postgresql":
        pytest.skip("row locks of a concurrent delete: PostgreSQL only")
    log = DeliveryLogFactory(updated_at=timezone.now() - timedelta(days=200))
    outcome: dict[str, Any] = {}

    def insert_tracking() -> None:
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL lock_timeout = '1s'")
                started = time.monotonic()
                TrackingLog.objects.create(delivery_log_id=log.pk, delivery_id=log.delivery_id, url_type=2)
                outcome["seconds"] = time.monotonic() - started
        finally:
            connection.close()

    expired = purges.Selection(DeliveryLog, f"{purges.column(DeliveryLog, 'updated_at')} < %s",
                               (purges.db_datetime(timezone.now() - timedelta(days=180)),))
    with transaction.atomic():  # the purge batch is deleted, not yet committed, while the writer runs
        assert purges.delete_batch(expired, order_by="updated_at", after=None, limit=10) == (1, None)
        writer = threading.Thread(target=insert_tracking)
        writer.start()
        writer.join(timeout=10)
    assert outcome.get("seconds", 99) < 1
    assert TrackingLog.objects.filter(delivery_log_id=log.pk).count() == 1
    assert not DeliveryLog.objects.filter(pk=log.pk).exists()


# -- quarantine release ------------------------------------------------------------------------------

def quarantine(address: str, *, status: str = Quarantine.Status.ERRONEOUS, last_error_at: datetime,
               failure_type: int = FailureType.SOFT, failure_reason: int = FailureReason.UNREACHABLE) -> Quarantine:
    return QuarantineFactory(address=address, status=status, error_count=3, last_error_at=last_error_at,
                             first_error_at=last_error_at, failure_type=failure_type, failure_reason=failure_reason)


def released(*rows: Quarantine) -> list[bool]:
    """For each row: was it released (status valid and error count 0)?"""
    fresh = {q.pk: (q.status, q.error_count) for q in Quarantine.objects.filter(pk__in=[r.pk for r in rows])}
    return [fresh[row.pk] == (Quarantine.Status.VALID, 0) for row in rows]


def delivered(address: str, *, at: datetime, channel: str = Channel.EMAIL) -> DeliveryLog:
    return DeliveryLogFactory(delivery=DeliveryFactory(channel=channel), profile=None, address=address,
                              status=LogStatus.SENT, updated_at=at)


def test_an_erroneous_address_is_released_after_a_later_successful_delivery_on_its_channel(frozen):
    # Mailbox full two days ago: no delay rule applies, only a later success can release these.
    later = quarantine("later@example.com", last_error_at=ago(2), failure_reason=FailureReason.MAILBOX_FULL)
    earlier = quarantine("earlier@example.com", last_error_at=ago(2), failure_reason=FailureReason.MAILBOX_FULL)
    other_channel = quarantine("sms@example.com", last_error_at=ago(2), failure_reason=FailureReason.MAILBOX_FULL)
    quarantined = quarantine("q@example.com", status=Quarantine.Status.QUARANTINED, last_error_at=ago(2))
    denylisted = quarantine("d@example.com", status=Quarantine.Status.DENYLISTED, last_error_at=ago(2))
    delivered("later@example.com", at=ago(1))
    delivered("earlier@example.com", at=ago(3))
    delivered("sms@example.com", at=ago(1), channel=Channel.SMS)
    delivered("q@example.com", at=ago(1))
    delivered("d@example.com", at=ago(1))

    run = run_cleanup()

    assert released(later, earlier, other_channel, quarantined, denylisted) == [True, False, False, False, False]
    assert activity_counters(run, "release_quarantine") == {
        "quarantine_released_after_success": 1, "quarantine_released_soft_errors": 0, "quarantine_released_mailbox_full": 0,
    }


def test_soft_errors_are_released_ten_days_after_the_last_error_but_never_when_quarantined_or_denylisted(frozen):
    older = quarantine("older@example.com", last_error_at=ago(10, extra=-SECOND))
    younger = quarantine("younger@example.com", last_error_at=ago(10, extra=SECOND))
    quarantined = quarantine("q@example.com", status=Quarantine.Status.QUARANTINED, last_error_at=ago(100))
    denylisted = quarantine("d@example.com", status=Quarantine.Status.DENYLISTED, last_error_at=ago(100))
    hard = quarantine("hard@example.com", status=Quarantine.Status.QUARANTINED, last_error_at=ago(100),
                      failure_type=FailureType.HARD, failure_reason=FailureReason.USER_UNKNOWN)

    run = run_cleanup()

    assert released(older, younger, quarantined, denylisted, hard) == [True, False, False, False, False]
    assert run.counters["quarantine_released_soft_errors"] == 1


def test_a_full_mailbox_is_released_thirty_days_after_the_last_error_not_ten(frozen):
    older = quarantine("older@example.com", last_error_at=ago(30, extra=-SECOND), failure_reason=FailureReason.MAILBOX_FULL)
    younger = quarantine("younger@example.com", last_error_at=ago(30, extra=SECOND), failure_reason=FailureReason.MAILBOX_FULL)
    quarantined = quarantine("q@example.com", status=Quarantine.Status.QUARANTINED, last_error_at=ago(300),
                             failure_reason=FailureReason.MAILBOX_FULL)
    denylisted = quarantine("d@example.com", status=Quarantine.Status.DENYLISTED, last_error_at=ago(300),
                            failure_reason=FailureReason.MAILBOX_FULL)

    run = run_cleanup()

    assert released(older, younger, quarantined, denylisted) == [True, False, False, False]
    assert run.counters["quarantine_released_mailbox_full"] == 1
    assert run.counters["quarantine_released_soft_errors"] == 0


def test_a_released_address_keeps_its_history_but_counts_errors_afresh(frozen):
    row = quarantine("older@example.com", last_error_at=ago(11))

    run_cleanup()

    row.refresh_from_db()
    assert (row.status, row.error_count, row.last_error_at, row.failure_reason) == (
        Quarantine.Status.VALID, 0, ago(11), FailureReason.UNREACHABLE)
    assert row.updated_at == NOW


# -- a failing activity stops the ones after it ------------------------------------------------------

def test_a_failing_activity_stops_the_later_ones_and_the_journal_says_which(frozen, monkeypatch):
    log = DeliveryLogFactory(updated_at=ago(181))
    event = EventFactory(created_at=ago(31))
    archived = EventHistoryFactory(archived_at=ago(361))
    real_delete = purges.delete_batch

    def failing_on_events(selection: purges.Selection, **options: Any) -> tuple[int, purges.Walk | None]:
        if selection.model is Event:
            raise RuntimeError("disk on fire")
        return real_delete(selection, **options)

    monkeypatch.setattr(purges, "delete_batch", failing_on_events)

    run = run_cleanup()

    assert run.status == RunStatus.FAILED
    assert "disk on fire" in run.reason
    statuses = dict(ActivityRun.objects.filter(run=run).values_list("name", "status"))
    names = cleanup.definition.activity_names
    failed_at = names.index("purge_events")
    assert statuses == {**dict.fromkeys(names[:failed_at], ActivityStatus.SUCCEEDED), "purge_events": ActivityStatus.FAILED}
    assert not DeliveryLog.objects.filter(pk=log.pk).exists(), "the activities before it ran"
    assert Event.objects.filter(pk=event.pk).exists() and EventHistory.objects.filter(pk=archived.pk).exists()
    message = WorkflowLog.objects.get(run=run, activity="purge_events", level=LogLevel.ERROR, message__startswith="Activity")
    assert message.message == (
        "Activity purge_events failed: RuntimeError: disk on fire. The later activities did not run: "
        + ", ".join(names[failed_at + 1:]) + "."
    )


# -- dry run ---------------------------------------------------------------------------------------------

def mixed_dataset() -> None:
    """Something for every activity to remove or release, including rows two rules would remove."""
    for days in (181, 10):
        DeliveryLogFactory(updated_at=ago(days))
    TrackingLogFactory(tracked_at=ago(361))
    SendingFeedbackFactory(received_at=ago(31))
    TrackingHitFactory(hit_at=ago(31))
    InboundSmsFactory(received_at=ago(31))
    EventFactory(created_at=ago(31))
    EventHistoryFactory(archived_at=ago(361))
    DeliveryAggregateFactory(day=NOW.date() - timedelta(days=400))
    ForecastLogFactory(computed_at=ago(8))
    old = delivery_with_dependents(state=FINISHED, finished_at=ago(800))
    DeliveryLogFactory(delivery=old, updated_at=ago(800))  # also past the delivery-log retention
    TrackingLogFactory(delivery=old, delivery_log=DeliveryLog.objects.filter(delivery=old).first(), tracked_at=ago(400))
    DeliveryAggregateFactory(delivery=old, day=NOW.date() - timedelta(days=700))
    AppSubscriptionFactory(disabled=True, updated_at=ago(181))
    WorkflowLog.objects.create(workflow_id="billing", message="old", logged_at=ago(31))
    make_run("billing", finished_at=ago(31))
    quarantine("success@example.com", last_error_at=ago(2), failure_reason=FailureReason.MAILBOX_FULL)
    delivered("success@example.com", at=ago(1))
    quarantine("soft@example.com", last_error_at=ago(11))
    quarantine("full@example.com", last_error_at=ago(31), failure_reason=FailureReason.MAILBOX_FULL)
    released_quarantine_row(updated_at=ago(8))
    consolidate_everything()


def snapshot() -> dict[str, Any]:
    tables = [DeliveryLog, TrackingLog, SendingFeedback, TrackingHit, InboundSms, Event, EventHistory, DeliveryAggregate,
              ForecastLog, Delivery, AppSubscription]
    state: dict[str, Any] = {model.__name__: sorted(model.objects.values_list("pk", flat=True)) for model in tables}
    state["journal"] = sorted(WorkflowLog.objects.exclude(workflow_id="cleanup").values_list("pk", flat=True))
    state["runs"] = sorted(WorkflowRun.objects.exclude(workflow_id="cleanup").values_list("pk", flat=True))
    state["activity_runs"] = sorted(ActivityRun.objects.exclude(run__workflow_id="cleanup").values_list("pk", flat=True))
    state["quarantine"] = sorted(Quarantine.objects.values_list("pk", "status", "error_count", "updated_at"))
    return state


def test_workflow_run_cleanup_dry_run_counts_exactly_what_a_real_run_then_removes_and_changes_nothing(frozen):
    mixed_dataset()
    # PostgreSQL: the old rows' partitions exist, as the daily maintenance leaves them (a dry run
    # maintains nothing): both runs then see the same partitions to detach whole.
    partitions.ensure_partitions()
    before = snapshot()
    out = io.StringIO()

    call_command("workflow", "run", "cleanup", "--sync", "--set", "dry_run=true", "--set", "purge_deliveries=true",
                 "--json", stdout=out)

    dry = json.loads(out.getvalue())
    assert dry["status"] == RunStatus.SUCCEEDED
    assert snapshot() == before
    real = run_cleanup()
    assert snapshot() != before
    as_real = {key.replace("_to_remove", "_removed").replace("quarantine_to_release", "quarantine_released")
               .replace("_partitions_to_detach", "_partitions_detached"): value
               for key, value in dry["counters"].items()}
    maintenance = {"tables_refreshed", "partitions_created", "rows_moved_from_default", "detached_partitions_dropped"}
    assert as_real == {key: value for key, value in real.counters.items() if key not in maintenance}
    others = {f"{d.name}_removed" for d in cleanup.delivery_dependents() if d.rule is None}
    # PostgreSQL: a table whose expired rows all went with their partitions removed none row by row.
    whole = {key.replace("_partitions_detached", "_removed") for key, value in as_real.items()
             if key.endswith("_partitions_detached") and value}
    assert all(value >= 1 for key, value in as_real.items() if key not in others | whole), as_real
    dry_activities = {a["name"]: a["counters"] for a in dry["activities"]}
    assert dry_activities["purge_old_deliveries"]["delivery_logs_to_remove"] == 3, "the 4th went by its own rule"
    assert WorkflowLog.objects.filter(run_id=dry["run_id"], activity="purge_delivery_logs",
                                      message__startswith="Dry run: would remove 2 delivery logs with updated_at before").exists()


# -- batches -----------------------------------------------------------------------------------------------

def test_each_batch_deletes_at_most_the_batch_size_until_a_short_batch(frozen, monkeypatch):
    for index in range(5):
        DeliveryLogFactory(updated_at=ago(200 + index))
    for index in range(3):
        EventFactory(created_at=ago(40 + index))
    calls: list[tuple[str, int, int]] = []
    real_delete = purges.delete_batch

    def spy(selection: purges.Selection, **options: Any) -> tuple[int, purges.Walk | None]:
        removed, position = real_delete(selection, **options)
        calls.append((selection.model.__name__, options["limit"], removed))
        return removed, position

    monkeypatch.setattr(purges, "delete_batch", spy)

    run_cleanup(log_batch_size=2, batch_size=1)

    assert [c for c in calls if c[0] == "DeliveryLog"] == [("DeliveryLog", 2, 2), ("DeliveryLog", 2, 2), ("DeliveryLog", 2, 1)]
    assert [c for c in calls if c[0] == "Event"] == [("Event", 1, 1)] * 3


def expected_survivors() -> dict[str, list[int]]:
    """Computed in Python from the rules, independently of the SQL."""
    return {
        "DeliveryLog": sorted(log.pk for log in DeliveryLog.objects.all() if log.updated_at >= ago(180)),
        "TrackingLog": sorted(t.pk for t in TrackingLog.objects.all() if t.tracked_at >= ago(180)),
        "Event": sorted(e.pk for e in Event.objects.all() if e.created_at >= ago(30)),
    }


def test_a_run_interrupted_between_batches_then_rerun_ends_exactly_as_an_uninterrupted_run(frozen, monkeypatch):
    for index in range(9):
        log = DeliveryLogFactory(updated_at=ago(170 + 3 * index))
        TrackingLogFactory(delivery_log=log, delivery=log.delivery, tracked_at=ago(350 + 3 * index))
        EventFactory(created_at=ago(25 + index))
    expected = expected_survivors()
    calls = 0
    real_delete = purges.delete_batch

    def crash_on_third_batch(selection: purges.Selection, **options: Any) -> tuple[int, purges.Walk | None]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("worker killed")
        return real_delete(selection, **options)

    monkeypatch.setattr(purges, "delete_batch", crash_on_third_batch)
    interrupted = run_cleanup(log_batch_size=2, batch_size=2)
    monkeypatch.setattr(purges, "delete_batch", real_delete)

    assert interrupted.status == RunStatus.FAILED
    assert interrupted.counters["delivery_logs_removed"] == 4, "two committed batches stay done"
    rerun = run_cleanup(log_batch_size=2, batch_size=2)
    assert rerun.status == RunStatus.SUCCEEDED
    assert {name: sorted(model.objects.values_list("pk", flat=True))
            for name, model in (("DeliveryLog", DeliveryLog), ("TrackingLog", TrackingLog), ("Event", Event))} == expected
    removed_in_two_runs = interrupted.counters["delivery_logs_removed"] + rerun.counters["delivery_logs_removed"]
    assert removed_in_two_runs == 9 - len(expected["DeliveryLog"])
    again = run_cleanup(log_batch_size=2, batch_size=2)
    assert {k: v for k, v in again.counters.items() if v} == {}, "a second run finds nothing left to do"


# -- validation of the retention properties -------------------------------------------------------------------

DAY_PROPERTIES = [rule.retention for rule in cleanup.RETENTIONS] + ["soft_error_release_days", "mailbox_full_release_days"]


@pytest.mark.parametrize("name", DAY_PROPERTIES)
def test_a_retention_below_one_day_is_refused(db, name):
    prop = cleanup.definition.get_property(name)

    with pytest.raises(ValidationError, match="at least 1 day, got 0"):
        prop.parse("0")
    with pytest.raises(ValidationError):
        prop.validate(-3)
    assert prop.parse("1") == 1
    with pytest.raises(ValidationError):
        commands.run_now("cleanup", actor="test", sync=True, overrides={name: 0})
    assert not WorkflowRun.objects.filter(workflow_id="cleanup").exists()


def test_the_admin_refuses_a_retention_below_one_day_and_shows_the_default(admin_client):
    page = admin_client.get(change_url("cleanup"))
    field = page.context["adminform"].form.fields["property__tracking_logs_days"]
    assert field.help_text == ("Tracking logs older than this many days are removed. Default: 180 days. "
                               "Accepted: 1 to 36,500 days.")

    response = edit(admin_client, "cleanup", property__tracking_logs_days="0")

    assert response.context["adminform"].form.errors["property__tracking_logs_days"] == [
        "tracking_logs_days: must be at least 1 day, got 0"]
    assert Workflow.objects.get(pk="cleanup").properties == {}
    assert edit(admin_client, "cleanup", property__tracking_logs_days="400").status_code == 302
    assert Workflow.objects.get(pk="cleanup").properties == {"tracking_logs_days": 400}


def test_the_cli_refuses_a_zero_retention_with_a_usage_error(db):
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("workflow", "run", "cleanup", "--sync", "--set", "events_days=0", stderr=err)

    assert exit_info.value.code == 2
    assert "events_days: must be at least 1 day, got 0" in err.getvalue()


def test_a_stored_retention_below_one_day_fails_the_run_and_purges_nothing(frozen):
    Workflow.objects.filter(pk="cleanup").update(properties={"events_days": 0})
    event = EventFactory(created_at=ago(2))

    run = run_cleanup()

    assert run.status == RunStatus.FAILED and "events_days" in run.reason
    assert Event.objects.filter(pk=event.pk).exists()


def test_no_cutoff_closer_to_now_than_the_minimum_age_is_accepted():
    with pytest.raises(PermanentError, match="younger than 1 day"):
        cleanup.cutoff(NOW, 0, what="events")
    assert cleanup.cutoff(NOW, 1, what="events") == NOW - timedelta(days=1)


# -- database statistics --------------------------------------------------------------------------------------

def test_statistics_are_refreshed_for_the_tables_the_run_thinned_only(frozen, is_postgres):
    DeliveryLogFactory(updated_at=ago(200))
    quarantine("soft@example.com", last_error_at=ago(11))

    run = run_cleanup(statistics="vacuum_analyze")

    verb = "VACUUM ANALYZE" if is_postgres else "ANALYZE"
    entry = WorkflowLog.objects.get(run=run, activity="update_statistics", message__startswith="Refreshed").message
    assert entry == (f'Refreshed statistics: {verb} "{DeliveryLog._meta.db_table}"; {verb} "{Quarantine._meta.db_table}".')
    assert activity_counters(run, "update_statistics") == {"tables_refreshed": 2}
    if is_postgres:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            # A partitioned table's statistics are its partitions'.
            cursor.execute("SELECT bool_or(last_vacuum IS NOT NULL), bool_or(last_analyze IS NOT NULL) FROM pg_stat_user_tables "
                           "WHERE relid IN (SELECT relid FROM pg_partition_tree(%s::regclass))", [DeliveryLog._meta.db_table])
            assert cursor.fetchone() == (True, True)


@pytest.mark.parametrize(("mode", "expected"), [("analyze", "Refreshed statistics: ANALYZE"),
                                                ("none", "Statistics left as they are (statistics=none).")])
def test_the_statistics_property_chooses_analyze_only_or_nothing(frozen, mode, expected):
    DeliveryLogFactory(updated_at=ago(200))

    run = run_cleanup(statistics=mode)

    assert WorkflowLog.objects.filter(run=run, activity="update_statistics", message__startswith=expected).exists()


def test_a_run_that_removed_nothing_leaves_statistics_alone(frozen):
    run = run_cleanup(statistics="vacuum_analyze")

    assert activity_counters(run, "update_statistics") == {}
    assert WorkflowLog.objects.filter(run=run, activity="update_statistics", message__startswith="Nothing was removed").exists()


# -- PostgreSQL: a concurrent writer is never blocked -----------------------------------------------------------

#: CI scale; set CLEANUP_CONCURRENCY_ROWS=1000000 for the measurement reported in docs/workflows/cleanup.md.
CONCURRENCY_ROWS = int(os.environ.get("CLEANUP_CONCURRENCY_ROWS", "100000"))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_concurrent_writer_inserting_delivery_logs_never_waits_a_second_while_cleanup_deletes():
    if connection.vendor != "postgresql":
        pytest.skip("lock waits of concurrent writers: measured on PostgreSQL")
    from campaign.bulk_load import analyze, load

    delivery = DeliveryFactory(state=Delivery.State.IN_PROGRESS)
    expired = timezone.now() - timedelta(days=200)
    columns = ("delivery_id", "address", "variant", "status", "failure_type", "failure_reason", "error_text",
               "created_at", "updated_at")
    load(DeliveryLog, columns, ((delivery.pk, f"r{i}@example.com", "", LogStatus.SENT, 0, 0, "", expired,
                                 expired + timedelta(milliseconds=i)) for i in range(CONCURRENCY_ROWS)))
    analyze()
    waits: list[float] = []
    stop = threading.Event()
    insert = (f"INSERT INTO {DeliveryLog._meta.db_table} ({', '.join(columns)}) "
              "VALUES (%s, %s, '', 6, 0, 0, '', now(), now())")

    def writer() -> None:
        try:
            with connections["default"].cursor() as cursor:  # this thread's own connection, autocommit
                while not stop.is_set():
                    started = time.perf_counter()
                    cursor.execute(insert, [delivery.pk, f"new{len(waits)}@example.com"])
                    waits.append(time.perf_counter() - started)
                    time.sleep(0.001)
        finally:
            connections["default"].close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        run = run_cleanup()
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=30)

    assert run.status == RunStatus.SUCCEEDED, run.reason
    # On PostgreSQL the expired logs fill a partition of their own (made by the first activity) and
    # go with it, counted from the catalogue, which counted them exactly as its index was built.
    removed = run.counters["delivery_logs_removed"] + run.counters.get("delivery_logs_partition_rows_estimated", 0)
    assert removed == CONCURRENCY_ROWS
    assert DeliveryLog.objects.count() == len(waits) > 50
    longest = max(waits)
    print(f"\ncleanup removed {CONCURRENCY_ROWS:,} delivery logs in {run.duration_s:.2f} s; concurrent writer: "
          f"{len(waits):,} inserts, longest wait {longest * 1000:.1f} ms, "
          f"p99 {sorted(waits)[int(len(waits) * 0.99)] * 1000:.1f} ms")
    assert longest < 1.0


def test_rows_sharing_the_same_age_are_all_removed_across_batch_boundaries(frozen, monkeypatch):
    """More rows share one age than a batch holds: the walk goes through them by id, neither
    skipping a row nor exceeding the batch size."""
    batches: list[int] = []
    real_delete = purges.delete_batch

    def spy(selection: purges.Selection, **options: Any) -> tuple[int, purges.Walk | None]:
        removed, walk = real_delete(selection, **options)
        batches.append(removed)
        return removed, walk

    monkeypatch.setattr(purges, "delete_batch", spy)
    same_time = ago(200)
    logs = [DeliveryLogFactory(updated_at=same_time) for _ in range(7)] + [DeliveryLogFactory(updated_at=ago(190))]
    young = DeliveryLogFactory(updated_at=ago(1))
    delivery = DeliveryFactory()
    old_day = NOW.date() - timedelta(days=400)
    for index in range(5):
        DeliveryAggregateFactory(delivery=delivery, day=old_day, channel=[Channel.EMAIL, Channel.SMS, Channel.PUSH][index % 3]) \
            if index < 3 else DeliveryAggregateFactory(day=old_day)
    kept_aggregate = DeliveryAggregateFactory(day=NOW.date())

    run = run_cleanup(log_batch_size=2, batch_size=2)

    assert run.counters["delivery_logs_removed"] == len(logs)
    assert list(DeliveryLog.objects.values_list("pk", flat=True)) == [young.pk]
    assert run.counters["delivery_aggregates_removed"] == 5
    assert list(DeliveryAggregate.objects.values_list("pk", flat=True)) == [kept_aggregate.pk]
    assert max(batches) == 2
