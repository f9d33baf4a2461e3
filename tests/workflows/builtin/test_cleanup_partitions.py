"""cleanup on partitioned log tables (PostgreSQL): the first activity keeps partitions ahead;
expired partitions are detached whole when the row purge would empty them, and their tables (with
any an earlier run left detached) dropped by a later activity, before old deliveries are purged;
the edge partition and the partitions holding a row still within retention or not yet consolidated
are purged row by row, a partition that cannot be locked in a second falls back to the row purge, a
dry run changes nothing, and a run that loses its lease after a DETACH leaves the partition
attached. On SQLite the same runs remove the same rows, with no partition in sight."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.models import F

from campaign import partitions
from campaign.models import Delivery, DeliveryLog, SendingFeedback, TrackingLog
from tests.db_locks import holding_lock
from tests.factories import DeliveryLogFactory, SendingFeedbackFactory, TrackingLogFactory
from workflows import commands
from workflows.builtin import cleanup
from workflows.builtin.update_delivery_exec_info import FEEDBACK_CURSOR
from workflows.context import RunFence, unit_committing
from workflows.models import ActivityRun, LogLevel, RunStatus, Workflow, WorkflowLog, WorkflowRun

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)  # delivery and tracking logs' cutoff: 2025-12-17 12:00
LOGS, TRACKING, FEEDBACK = "campaign_deliverylog", "campaign_trackinglog", "campaign_sendingfeedback"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def frozen(time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


@pytest.fixture
def postgres(is_postgres):
    if not is_postgres:
        pytest.skip("SQLite keeps plain tables")


def run_cleanup(**overrides: Any) -> WorkflowRun:
    # statistics=none: the VACUUM runs on a connection of its own, which would wait for the locks
    # of the partitions a test's transaction created.
    return commands.run_now("cleanup", actor="test", sync=True, overrides={"statistics": "none", **overrides})


def counters(run: WorkflowRun, activity: str) -> dict[str, int]:
    return ActivityRun.objects.get(run=run, name=activity).counters


def journal(run: WorkflowRun, activity: str, level: str | None = None) -> str:
    entries = WorkflowLog.objects.filter(run=run, activity=activity)
    if level is not None:
        entries = entries.filter(level=level)
    return "\n".join(entries.order_by("id").values_list("message", flat=True))


def attached(table: str) -> set[str]:
    return {part.name for part in partitions.partitions(table)}


def exists(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        return cursor.fetchone()[0]


def consolidated_up_to(feedback_id: int) -> None:
    Workflow.objects.filter(pk="updateDeliveryExecInfo").update(cursors={FEEDBACK_CURSOR: feedback_id})


@pytest.fixture
def committed_layout(postgres) -> Iterator[None]:
    """For tests whose DDL commits: drop afterwards the partitions and tables they made."""
    before = {table.table: attached(table.table) for table in partitions.PARTITIONED_TABLES}
    yield
    for table in partitions.PARTITIONED_TABLES:
        for name in attached(table.table) - before[table.table]:
            partitions.detach_and_drop(table.table, name)
    for name in partitions.detached_partitions():
        partitions.drop(name)


# -- the first activity ------------------------------------------------------------------------------------------

def test_maintenance_is_the_first_activity():
    assert cleanup.definition.activity_names[0] == "maintain_partitions"


@pytest.mark.django_db
def test_maintenance_creates_partitions_ahead_and_for_rows_in_the_default_one(frozen, postgres):
    log = DeliveryLogFactory(created_at=utc(2025, 10, 5), updated_at=utc(2026, 6, 1))  # kept: updated recently

    run = run_cleanup()

    assert run.status == RunStatus.SUCCEEDED, run.reason
    found = counters(run, "maintain_partitions")
    assert found["rows_moved_from_default"] == 1
    assert found["partitions_created"] >= 1
    assert f"{LOGS}_p20251001" in attached(LOGS)
    for table in partitions.PARTITIONED_TABLES:  # the current month and three ahead, made now or earlier
        assert {partitions.partition_name(table.table, utc(2026, month, 1)) for month in (6, 7, 8, 9)} <= attached(table.table)
    assert DeliveryLog.objects.filter(pk=log.pk).exists()
    assert "Created" in journal(run, "maintain_partitions")


@pytest.mark.django_db
def test_maintenance_does_nothing_on_sqlite_and_says_so(frozen, is_postgres):
    if is_postgres:
        pytest.skip("PostgreSQL partitions its log tables")
    run = run_cleanup()

    assert counters(run, "maintain_partitions") == {}
    assert journal(run, "maintain_partitions").startswith("No partitions to maintain: SQLite keeps")


# -- expired partitions go whole, the rest row by row ------------------------------------------------------------

@pytest.mark.django_db
def test_whole_expired_partitions_are_detached_then_dropped_and_the_edge_one_is_purged_row_by_row(frozen, postgres):
    october = [DeliveryLogFactory(created_at=utc(2025, 10, day), updated_at=utc(2025, 10, day + 1)) for day in (3, 20)]
    november_old = DeliveryLogFactory(created_at=utc(2025, 11, 3), updated_at=utc(2025, 11, 4))
    november_updated = DeliveryLogFactory(created_at=utc(2025, 11, 4), updated_at=utc(2026, 6, 1))
    december_old = DeliveryLogFactory(created_at=utc(2025, 12, 1), updated_at=utc(2025, 12, 2))  # edge partition
    december_young = DeliveryLogFactory(created_at=utc(2025, 12, 20), updated_at=utc(2025, 12, 20))
    tracking = TrackingLogFactory(delivery_log=october[0], tracked_at=utc(2026, 5, 1))

    run = run_cleanup()

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert f"{LOGS}_p20251001" not in attached(LOGS) and not exists(f"{LOGS}_p20251001"), "detached, then dropped"
    assert {f"{LOGS}_p20251101", f"{LOGS}_p20251201"} <= attached(LOGS)
    assert set(DeliveryLog.objects.values_list("pk", flat=True)) == {november_updated.pk, december_young.pk}
    assert not DeliveryLog.objects.filter(pk__in=[november_old.pk, december_old.pk]).exists()
    assert TrackingLog.objects.filter(pk=tracking.pk).exists(), "tracking rows outlive their logs"
    assert counters(run, "purge_delivery_logs") == {
        "delivery_logs_partitions_detached": 1, "delivery_logs_partition_rows_estimated": 2, "delivery_logs_removed": 2,
    }
    messages = journal(run, "purge_delivery_logs")
    assert (f"Detached 1 whole partition(s) of delivery logs, about 2 rows (planner estimate): "
            f"{LOGS}_p20251001 (~2) in ") in messages
    assert "ms; their tables are dropped by drop_detached_partitions." in messages
    assert f"Kept {LOGS}_p20251101 whole: a row of it has updated_at 2026-06-01" in messages
    assert counters(run, "drop_detached_partitions") == {"detached_partitions_dropped": 1}
    assert f"ms: {LOGS}_p20251001." in journal(run, "drop_detached_partitions")


def test_detached_tables_are_dropped_after_the_last_log_purge_and_before_old_deliveries_go():
    names = cleanup.definition.activity_names
    log_purges = [name for name in names if name.startswith("purge_") and name.endswith(
        ("delivery_logs", "tracking_logs", "sending_feedback", "tracking_hits", "inbound_sms", "archived_events"))]
    assert len(log_purges) == len(partitions.PARTITIONED_TABLES)
    assert max(map(names.index, log_purges)) < names.index("drop_detached_partitions") < names.index("purge_old_deliveries")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_delivery_whose_logs_filled_a_detached_partition_can_be_purged_in_the_same_run(frozen, committed_layout):
    # A detached table keeps its foreign key to the delivery (deferred: checked when the unit
    # commits, hence a committing test): dropped first, it no longer holds the delivery back.
    old = DeliveryLogFactory(created_at=utc(2023, 3, 5), updated_at=utc(2023, 3, 6))
    Delivery.objects.filter(pk=old.delivery_id).update(state=Delivery.State.FINISHED, finished_at=utc(2023, 3, 6))

    run = run_cleanup(purge_deliveries=True)

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert counters(run, "purge_delivery_logs")["delivery_logs_partitions_detached"] == 1
    assert counters(run, "drop_detached_partitions") == {"detached_partitions_dropped": 1}
    assert not Delivery.objects.filter(pk=old.delivery_id).exists()
    assert partitions.detached_partitions() == []


@pytest.mark.django_db
def test_a_partition_holding_a_row_not_yet_consolidated_is_kept_whole(frozen, postgres):
    february = SendingFeedbackFactory(received_at=utc(2025, 2, 10))
    march_read = SendingFeedbackFactory(received_at=utc(2025, 3, 10))
    march_unread = SendingFeedbackFactory(received_at=utc(2025, 3, 11))
    consolidated_up_to(march_read.pk)

    run = run_cleanup()

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert f"{FEEDBACK}_p20250201" not in attached(FEEDBACK)
    assert f"{FEEDBACK}_p20250301" in attached(FEEDBACK)
    assert list(SendingFeedback.objects.values_list("pk", flat=True)) == [march_unread.pk]
    assert counters(run, "purge_sending_feedback") == {
        "sending_feedback_partitions_detached": 1, "sending_feedback_partition_rows_estimated": 1,
        "sending_feedback_removed": 1,
    }
    assert f"Kept {FEEDBACK}_p20250301 whole: it holds rows updateDeliveryExecInfo has not consolidated yet" \
        in journal(run, "purge_sending_feedback")
    assert february.pk < march_read.pk


@pytest.mark.django_db
def test_nothing_goes_whole_or_by_row_before_the_raw_rows_are_consolidated(frozen, postgres):
    row = SendingFeedbackFactory(received_at=utc(2025, 2, 10))

    run = run_cleanup()

    assert SendingFeedback.objects.filter(pk=row.pk).exists()
    assert f"{FEEDBACK}_p20250201" in attached(FEEDBACK)
    assert counters(run, "purge_sending_feedback") == {"sending_feedback_removed": 0}


# -- dry run -------------------------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_dry_run_names_the_partitions_it_would_detach_and_changes_nothing(frozen, postgres):
    whole = [TrackingLogFactory(tracked_at=utc(2025, 9, day)) for day in (1, 2)]
    edge = TrackingLogFactory(tracked_at=utc(2025, 12, 1))
    partitions.ensure_partitions(now=NOW)  # a dry run maintains nothing: the partitions exist already
    layout = attached(TRACKING)

    run = run_cleanup(dry_run=True)

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert attached(TRACKING) == layout
    assert TrackingLog.objects.filter(pk__in=[*(row.pk for row in whole), edge.pk]).count() == 3
    assert counters(run, "purge_tracking_logs") == {
        "tracking_logs_partitions_to_detach": 1, "tracking_logs_partition_rows_estimated": 2,
        "tracking_logs_to_remove": 1,  # the edge row: the partition's rows are counted once, above
    }
    assert (f"Dry run: would detach 1 whole partition(s) of tracking logs, about 2 rows (planner estimate): "
            f"{TRACKING}_p20250901 (~2).") in journal(run, "purge_tracking_logs")
    assert journal(run, "maintain_partitions").startswith("Dry run: partitions left as they are.")
    assert journal(run, "drop_detached_partitions").startswith("Dry run: no detached table to drop.")


# -- leftovers and fencing -----------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_table_left_detached_by_an_earlier_run_is_dropped_by_the_next(frozen, postgres):
    kept = TrackingLogFactory(tracked_at=utc(2026, 6, 1))
    TrackingLogFactory(tracked_at=utc(2025, 9, 1))
    partitions.ensure_partitions(now=NOW)
    with transaction.atomic():
        partitions.detach(TRACKING, f"{TRACKING}_p20250901")  # a crash came before the DROP
    assert partitions.detached_partitions() == [f"{TRACKING}_p20250901"]

    dry = run_cleanup(dry_run=True)

    assert journal(dry, "drop_detached_partitions").startswith(
        f"Dry run: would drop 1 detached table(s): {TRACKING}_p20250901.")
    assert exists(f"{TRACKING}_p20250901")

    run = run_cleanup()

    assert not exists(f"{TRACKING}_p20250901")
    assert partitions.detached_partitions() == []
    assert counters(run, "drop_detached_partitions") == {"detached_partitions_dropped": 1}
    assert f"ms: {TRACKING}_p20250901." in journal(run, "drop_detached_partitions")
    assert list(TrackingLog.objects.values_list("pk", flat=True)) == [kept.pk]


@pytest.mark.django_db
def test_a_run_that_loses_its_lease_after_a_detach_leaves_the_partition_attached(frozen, postgres):
    rows = [TrackingLogFactory(tracked_at=utc(2025, 9, day)) for day in (1, 2)]
    partitions.ensure_partitions(now=NOW)
    seen_detached = []

    def take_the_lease_over(**kwargs: Any) -> None:
        if f"{TRACKING}_p20250901" not in attached(TRACKING) and not seen_detached:
            seen_detached.append(kwargs["unit"])
            Workflow.objects.filter(pk="cleanup").update(lease_token=F("lease_token") + 1)

    unit_committing.connect(take_the_lease_over, sender=RunFence, dispatch_uid="take_the_lease_over")
    try:
        run = run_cleanup()
    finally:
        unit_committing.disconnect(sender=RunFence, dispatch_uid="take_the_lease_over")

    assert seen_detached, "the lease was lost between the DETACH and the unit's commit"
    assert run.status != RunStatus.SUCCEEDED
    assert f"{TRACKING}_p20250901" in attached(TRACKING)
    assert TrackingLog.objects.filter(pk__in=[row.pk for row in rows]).count() == 2


# -- a partition locked by someone else ----------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_partition_that_cannot_be_locked_in_a_second_is_purged_row_by_row(frozen, committed_layout):
    busy = TrackingLogFactory(tracked_at=utc(2025, 9, 1))
    kept = TrackingLogFactory(tracked_at=utc(2026, 6, 1))
    partitions.ensure_partitions(now=NOW)

    with holding_lock(f"LOCK TABLE {TRACKING}_p20250901 IN ACCESS SHARE MODE"):  # a long report reading it
        run = run_cleanup()

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert f"{TRACKING}_p20250901" in attached(TRACKING), "left attached"
    assert list(TrackingLog.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not TrackingLog.objects.filter(pk=busy.pk).exists(), "its rows purged row by row"
    assert counters(run, "purge_tracking_logs") == {"tracking_logs_removed": 1}
    assert (f"Could not detach {TRACKING}_p20250901 within 1s (busy): its rows are purged row by row instead."
            in journal(run, "purge_tracking_logs", LogLevel.WARNING))


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("deadlock_timeout", ["1s", "100ms"], ids=["lock timeout", "deadlock detected"])
def test_a_writer_updating_a_delivery_then_inserting_its_log_outlasts_a_detach_that_would_deadlock_with_it(
        frozen, committed_layout, deadlock_timeout):
    """The DETACH holds the log table and then needs the deliveries table (its foreign key's
    triggers); a writer holding a delivery and then inserting a log closes the cycle. The DETACH
    gives way, whether its lock timeout ends the wait or PostgreSQL's deadlock check (run sooner
    here by a shorter ``deadlock_timeout`` on cleanup's connection), its partition goes row by row,
    and the writer commits."""
    expired = DeliveryLogFactory(created_at=utc(2025, 10, 3), updated_at=utc(2025, 10, 4))
    delivery_id = expired.delivery_id
    partitions.ensure_partitions(now=NOW)
    writer: dict[str, Any] = {}
    holding_delivery = threading.Event()

    def write() -> None:
        other = connections.create_connection("default")
        try:
            other.set_autocommit(False)
            with other.cursor() as cursor:
                cursor.execute("UPDATE campaign_delivery SET label = label WHERE id = %s", [delivery_id])
                holding_delivery.set()
                for _ in range(200):  # until the DETACH waits for the deliveries table (at most 10 s)
                    cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = "
                                   "'campaign_delivery'::regclass")
                    if cursor.fetchone()[0]:
                        break
                    time.sleep(0.05)
                started = time.monotonic()
                cursor.execute(
                    f"INSERT INTO {LOGS} (delivery_id, address, variant, status, failure_type, failure_reason, "
                    "error_text, created_at, updated_at) VALUES (%s, 'writer@example.com', '', 0, 0, 0, '', %s, %s)",
                    [delivery_id, NOW, NOW])
                writer["waited"] = time.monotonic() - started
            other.commit()
            writer["committed"] = True
        except Exception as error:  # reported by the assertions below
            writer["error"] = error
        finally:
            other.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        assert holding_delivery.wait(10)
        with connection.cursor() as cursor:
            cursor.execute("SET deadlock_timeout = %s", [deadlock_timeout])
        run = run_cleanup()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET deadlock_timeout")
        thread.join(30)
        assert not thread.is_alive(), "the writer did not finish within 30 s"

    assert writer.get("committed"), writer.get("error")
    assert writer["waited"] < 2
    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert f"{LOGS}_p20251001" in attached(LOGS), "left attached"
    assert not DeliveryLog.objects.filter(pk=expired.pk).exists(), "its rows purged row by row"
    assert DeliveryLog.objects.filter(address="writer@example.com").exists()
    assert f"Could not detach {LOGS}_p20251001" in journal(run, "purge_delivery_logs", LogLevel.WARNING)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_detached_tables_that_cannot_be_locked_in_a_second_are_left_for_the_next_run(frozen, committed_layout):
    kept = TrackingLogFactory(tracked_at=utc(2026, 6, 1))
    TrackingLogFactory(tracked_at=utc(2025, 9, 1))
    partitions.ensure_partitions(now=NOW)
    with transaction.atomic():
        partitions.detach(TRACKING, f"{TRACKING}_p20250901")  # an earlier run's, say

    with holding_lock(f"LOCK TABLE {TRACKING}_p20250901 IN ACCESS SHARE MODE"):  # someone reading it still
        busy = run_cleanup()

    assert busy.status == RunStatus.SUCCEEDED, busy.reason
    assert exists(f"{TRACKING}_p20250901"), "left for the next run"
    assert counters(busy, "drop_detached_partitions") == {"detached_partitions_dropped": 0}
    assert (f"Could not drop {TRACKING}_p20250901 within 1s (busy): their rows are out of the log tables already; "
            "the next run drops them.") in journal(busy, "drop_detached_partitions", LogLevel.WARNING)
    assert list(TrackingLog.objects.values_list("pk", flat=True)) == [kept.pk]

    run = run_cleanup()

    assert not exists(f"{TRACKING}_p20250901")
    assert counters(run, "drop_detached_partitions") == {"detached_partitions_dropped": 1}


# -- SQLite: the same rows go, row by row --------------------------------------------------------------------------

@pytest.mark.django_db
def test_on_sqlite_the_same_rows_go_row_by_row(frozen, is_postgres):
    if is_postgres:
        pytest.skip("the PostgreSQL path is the tests above")
    expired = DeliveryLogFactory(created_at=utc(2025, 10, 3), updated_at=utc(2025, 10, 4))
    kept = DeliveryLogFactory(created_at=utc(2025, 11, 4), updated_at=utc(2026, 6, 1))

    run = run_cleanup()

    assert list(DeliveryLog.objects.values_list("pk", flat=True)) == [kept.pk]
    assert counters(run, "purge_delivery_logs") == {"delivery_logs_removed": 1}
    assert not DeliveryLog.objects.filter(pk=expired.pk).exists()
