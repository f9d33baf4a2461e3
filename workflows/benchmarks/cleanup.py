"""Benchmark case for cleanup: purging expired delivery logs, against one hand-written DELETE.

The data: ``rows`` delivery logs past the 180-day retention (last updated 200 days ago and later,
in id order, as logs are), 1% young logs that must stay, and ``rows / 10`` tracking rows pointing
to the expired logs, which must stay too (tracking outlives the logs). The bound is the single
statement an operator would type; the workflow deletes the same rows in batches of 20,000, one
transaction each, and its other activities find nothing to do.

On PostgreSQL the logs are loaded into their time partitions, as the daily maintenance leaves them
(otherwise they would wait in the default partition and the run would first move them all): the
expired logs then fill partitions past retention, which cleanup drops whole, and the rest go row by
row. The case ``cleanup_partitions`` measures that removal on its own.

The measured runs use ``statistics=none``: the SQL bound does not VACUUM either, and the cost of the
final VACUUM ANALYZE is reported separately in docs/workflows/cleanup.md. The increment starts from
the table as the full run leaves it in production, where that run ends with the VACUUM ANALYZE of
what it thinned (its ``statistics`` default): without it, the next run's first index probe would
walk the million dead entries the full run left.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from campaign import partitions
from campaign.bulk_load import load
from campaign.models import Campaign, Delivery, DeliveryLog, LogStatus, TrackingLog, UrlType
from workflows.benchmarks import BenchmarkCase, register
from workflows.builtin.cleanup_retention import DELIVERY_LOGS

LOG_COLUMNS = ("delivery_id", "address", "variant", "status", "failure_type", "failure_reason", "error_text",
               "created_at", "updated_at")

#: The expired logs' ages: 200 days and up, far from the 180-day boundary, so the bound and the
#: workflow (run a little later) remove exactly the same rows.
EXPIRED_AGE = timedelta(days=200)


class CleanupCase(BenchmarkCase):
    workflow_id = "cleanup"

    def __init__(self) -> None:
        self._delivery_id = 0

    def populate(self, *, rows: int, seed: int) -> None:
        now = timezone.now()
        campaign = Campaign.objects.create(label="benchmark")
        delivery = Delivery.objects.create(label="benchmark cleanup", campaign=campaign, state=Delivery.State.FINISHED,
                                           started_at=now - EXPIRED_AGE - timedelta(days=1), finished_at=now - EXPIRED_AGE)
        self._delivery_id = delivery.pk
        self._load_expired(rows, seed=seed, oldest=now - EXPIRED_AGE - timedelta(days=30))
        young = now - timedelta(days=1)
        load(DeliveryLog, LOG_COLUMNS, ((delivery.pk, f"young{i}@example.com", "", LogStatus.SENT, 0, 0, "", young, young)
                                        for i in range(max(1, rows // 100))))
        partitions.ensure_partitions()  # PostgreSQL: each log in its period's partition (nothing on SQLite)
        first_log = DeliveryLog.objects.order_by("id").values_list("id", flat=True).first()
        tracked = now - timedelta(days=100)
        step = 10
        load(TrackingLog, ("delivery_log_id", "delivery_id", "url_type", "url", "tracked_at"),
             ((first_log + i * step, delivery.pk, UrlType.OPEN, "", tracked) for i in range(rows // step)))

    def _load_expired(self, rows: int, *, seed: int, oldest: datetime) -> None:
        # Updated in id order, a few seconds apart (how a sending fills the table); ``seed`` shifts
        # the start so two populations differ.
        start = oldest + timedelta(seconds=seed)
        load(DeliveryLog, LOG_COLUMNS, (
            (self._delivery_id, f"r{i}@example.com", "", LogStatus.SENT, 0, 0, "", start + timedelta(seconds=i),
             start + timedelta(seconds=i))
            for i in range(rows)
        ))

    def sql_bound(self) -> None:
        cutoff = timezone.now() - timedelta(days=DELIVERY_LOGS.default_days)
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(DeliveryLog._meta.db_table)} WHERE updated_at < %s",
                           [connection.ops.adapt_datetimefield_value(cutoff)])

    def fingerprint(self) -> Any:
        logs = connection.ops.quote_name(DeliveryLog._meta.db_table)
        tracking = connection.ops.quote_name(TrackingLog._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*), COALESCE(SUM(id), 0) FROM {logs}")
            kept_logs = tuple(cursor.fetchone())
            cursor.execute(f"SELECT COUNT(*), COALESCE(SUM(delivery_log_id), 0) FROM {tracking}")
            kept_tracking = tuple(cursor.fetchone())
        return {"delivery_logs": kept_logs, "tracking_logs": kept_tracking}

    def add_increment(self, *, rows: int, seed: int) -> None:
        if connection.vendor == "postgresql":  # what the full run's own statistics step does by default
            with connection.cursor() as cursor:
                cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(DeliveryLog._meta.db_table)}")
        # Logs that expired since the last run (the next day's share of the table).
        self._load_expired(rows, seed=seed, oldest=timezone.now() - EXPIRED_AGE)

    def properties(self) -> dict[str, Any]:
        return {"statistics": "none"}


register(CleanupCase())
