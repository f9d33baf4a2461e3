"""The log tables' time partitions: the period arithmetic everywhere, the layout on PostgreSQL."""

from __future__ import annotations

import time
import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from campaign import partitions
from campaign.models import DeliveryLog, EventHistory, InboundSms, TrackingHit
from campaign.partitions import AHEAD, Partition, missing_periods, next_period, period_start, uncovered
from tests import factories
from tests.db_locks import holding_lock


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- periods (no database) ---------------------------------------------------------------------

@pytest.mark.parametrize(("interval", "moment", "start", "end"), [
    ("month", utc(2026, 12, 31, 23, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
    ("month", utc(2027, 1, 1), utc(2027, 1, 1), utc(2027, 2, 1)),
    ("week", utc(2026, 12, 6, 12), utc(2026, 11, 30), utc(2026, 12, 7)),  # a Sunday: its week began on Monday
    ("day", utc(2026, 3, 29, 1, 30), utc(2026, 3, 29), utc(2026, 3, 30)),
])
def test_a_period_starts_at_its_first_utc_instant_and_ends_where_the_next_starts(interval, moment, start, end):
    assert period_start(moment, interval) == start
    assert next_period(start, interval) == end


def test_periods_are_utc_whatever_the_time_zone_of_the_moment():
    paris_new_year = datetime(2027, 1, 1, 0, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))  # still 2026 in UTC
    assert period_start(paris_new_year, "month") == utc(2026, 12, 1)


def test_an_unknown_interval_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown partition interval 'year'"):
        period_start(utc(2026, 1, 1), "year")


def test_missing_periods_run_from_the_current_period_to_three_months_ahead():
    now = utc(2026, 12, 4, 10)
    wanted = missing_periods([], now=now, interval="month")
    assert [start for start, _ in wanted] == [utc(2026, 12, 1), utc(2027, 1, 1), utc(2027, 2, 1), utc(2027, 3, 1)]
    assert wanted[-1][0] <= now + AHEAD < wanted[-1][1]


def test_periods_already_covered_are_skipped_and_a_partly_covered_one_is_cut_to_its_free_part():
    months = [Partition("dec", utc(2026, 12, 1), utc(2027, 1, 1)), Partition("default")]
    weeks = missing_periods(months, now=utc(2026, 12, 4), interval="week")
    # The weeks of 30 November and 28 December straddle the month partition: only their days
    # outside it are free.
    assert weeks[:3] == [(utc(2026, 11, 30), utc(2026, 12, 1)), (utc(2027, 1, 1), utc(2027, 1, 4)),
                         (utc(2027, 1, 4), utc(2027, 1, 11))]
    assert uncovered(utc(2026, 12, 7), utc(2026, 12, 14), months) is None
    assert uncovered(utc(2026, 11, 28), utc(2026, 12, 5), months) == (utc(2026, 11, 28), utc(2026, 12, 1))


# -- the layout on PostgreSQL ---------------------------------------------------------------------

@pytest.fixture
def postgres(is_postgres):
    if not is_postgres:
        pytest.skip("SQLite keeps plain tables")


def default_rows(model) -> int:
    return partitions.default_partition_rows(model._meta.db_table)


def partition_of(model, pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT tableoid::regclass::text FROM {model._meta.db_table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_every_log_table_is_partitioned_by_its_time_column_with_the_key_including_it(postgres):
    now = datetime.now(UTC)
    for table in partitions.PARTITIONED_TABLES:
        assert partitions.is_partitioned(table.table), table.table
        layout = partitions.partitions(table.table)
        assert layout[-1] == Partition(f"{table.table}_default")
        covered = [part for part in layout if not part.is_default]
        assert covered[0].start <= now and covered[-1].end > now + AHEAD, "current period to three months ahead"
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
                           "AND contype = 'p'", [table.table])
            assert cursor.fetchone() == (f"PRIMARY KEY (id, {table.column})",)


@pytest.mark.django_db
def test_a_row_lands_in_the_partition_of_its_period_and_one_outside_them_in_the_default(postgres):
    recent = factories.DeliveryLogFactory()
    ancient = factories.DeliveryLogFactory(created_at=utc(2001, 5, 17))

    assert partition_of(DeliveryLog, recent.pk) == partitions.partition_name(
        "campaign_deliverylog", period_start(recent.created_at, "month"))
    assert partition_of(DeliveryLog, ancient.pk) == "campaign_deliverylog_default"
    assert DeliveryLog.objects.get(pk=ancient.pk).created_at == utc(2001, 5, 17), "read like any other row"


@pytest.mark.django_db
def test_maintenance_gives_rows_of_the_default_partition_a_partition_of_their_own(postgres, settings):
    settings.LOG_PARTITION_INTERVAL = "month"
    ancient = [factories.DeliveryLogFactory(created_at=utc(2001, 5, day)) for day in (1, 31)]
    other = factories.DeliveryLogFactory(created_at=utc(2001, 7, 2))
    assert default_rows(DeliveryLog) == 3

    done = partitions.ensure_partitions()

    assert done.created == ["campaign_deliverylog_p20010501", "campaign_deliverylog_p20010701"]
    assert done.rows_moved == 3 and done.busy == []
    assert default_rows(DeliveryLog) == 0
    assert {partition_of(DeliveryLog, log.pk) for log in ancient} == {"campaign_deliverylog_p20010501"}
    assert partition_of(DeliveryLog, other.pk) == "campaign_deliverylog_p20010701"
    assert partitions.ensure_partitions().created == [], "a second pass has nothing to do"


@pytest.mark.django_db
def test_partitions_are_kept_three_months_ahead_of_any_date(postgres, settings):
    settings.LOG_PARTITION_INTERVAL = "week"
    later = datetime.now(UTC) + timedelta(days=400)

    done = partitions.ensure_partitions(now=later)

    created_for_hits = [name for name in done.created if name.startswith("campaign_trackinghit_")]
    assert len(created_for_hits) in (14, 15), "every week from the current one to 92 days ahead"
    hit = factories.TrackingHitFactory(hit_at=later + timedelta(days=60))
    assert partition_of(TrackingHit, hit.pk) != "campaign_trackinghit_default"


@pytest.mark.django_db
def test_detaching_and_dropping_a_partition_removes_its_rows_only(postgres):
    old = factories.InboundSmsFactory(received_at=utc(2002, 3, 3))
    kept = factories.InboundSmsFactory()
    partitions.ensure_partitions()

    partitions.detach_and_drop("campaign_inboundsms", "campaign_inboundsms_p20020301")

    assert not InboundSms.objects.filter(pk=old.pk).exists()
    assert InboundSms.objects.filter(pk=kept.pk).exists()
    assert "campaign_inboundsms_p20020301" not in {part.name for part in partitions.partitions("campaign_inboundsms")}


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_maintenance_gives_up_on_a_table_it_cannot_lock_within_a_second_and_does_the_others(postgres):
    with holding_lock("LOCK TABLE campaign_trackinghit_default IN ACCESS EXCLUSIVE MODE"):
        started = time.monotonic()
        done = partitions.ensure_partitions(now=datetime.now(UTC) + timedelta(days=800))
        waited = time.monotonic() - started

    assert done.busy == ["campaign_trackinghit"], (waited, done)
    assert any(name.startswith("campaign_deliverylog_") for name in done.created)
    assert not any(name.startswith("campaign_trackinghit_") for name in done.created)
    assert waited < 15, "one lock timeout per busy table, not a wait for the lock's holder"
    retried = partitions.ensure_partitions(now=datetime.now(UTC) + timedelta(days=800)).created
    assert retried and all(name.startswith("campaign_trackinghit_") for name in retried), "tried again next time"
    for name in done.created + retried:  # committed: leave the layout as the other tests expect it
        partitions.detach_and_drop(name.rsplit("_p", 1)[0], name)


@pytest.mark.django_db
def test_rebuilding_keeps_rows_ids_indexes_and_the_sequence_position(postgres):
    logs = [factories.InboundSmsFactory(received_at=utc(2003, 1, 9)), factories.InboundSmsFactory()]
    table = partitions.by_label("campaign.InboundSms")

    def indexes() -> set[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [table.table])
            return {row[0] for row in cursor.fetchall()}

    before = indexes()
    partitions.rebuild(table, partitioned=False)
    assert not partitions.is_partitioned(table.table)
    assert indexes() == before
    partitions.rebuild(table, partitioned=True)

    assert partitions.is_partitioned(table.table)
    assert indexes() == before
    assert sorted(InboundSms.objects.values_list("id", flat=True)) == [log.pk for log in logs]
    assert partition_of(InboundSms, logs[0].pk) == "campaign_inboundsms_p20030101", "a partition for each period with rows"
    assert factories.InboundSmsFactory().pk > logs[-1].pk, "new ids continue after the copied ones"


@pytest.mark.django_db
def test_an_archived_event_lands_in_the_partition_of_its_archiving(postgres):
    archived = factories.EventHistoryFactory(created_at=utc(2001, 1, 1))

    assert partition_of(EventHistory, archived.pk) == partitions.partition_name(
        "campaign_eventhistory", period_start(archived.archived_at, "month"))
