"""Benchmark case ``cleanup_partitions`` (PostgreSQL): expired delivery logs removed by dropping
their partitions, against one ``DELETE`` of the same rows, with a writer inserting meanwhile.

The data: ``rows`` delivery logs spread over five whole monthly partitions past the 180-day
retention (created and last updated 7 to 11 months ago), 1% more in the partition at the retention
edge (past retention too, so purged row by row), and 1% live logs of today. The same data is loaded
twice: once for the cleanup workflow, run in a child process as a worker runs it (its duration as
the engine measures it, the run's fixed cost included), once for the single ``DELETE ... WHERE
updated_at < cutoff`` an operator would type (committed, inside the timing). Both must leave the
same rows.

During the workflow's run a writer inserts live delivery logs one at a time on a connection of its
own; the worst latency of an insert is reported: the DETACH of a partition holds the table's lock
only for a catalogue change, and waits at most one second for it.

The measured run uses ``statistics=none``: the DELETE does not VACUUM either.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, connections, transaction
from django.utils import timezone

from campaign import partitions
from campaign.bulk_load import analyze, load
from campaign.models import Campaign, Delivery, DeliveryLog, LogStatus
from workflows.benchmarks.runner import BenchmarkError, run_workflow_process
from workflows.builtin.cleanup_retention import DELIVERY_LOGS
from workflows.models import ActivityRun, WorkflowLog, WorkflowRun

CASE_NAME = "cleanup_partitions"

LOG_COLUMNS = ("delivery_id", "address", "variant", "status", "failure_type", "failure_reason", "error_text",
               "created_at", "updated_at")

#: Whole expired months, the oldest first as months before the retention edge's month.
EXPIRED_MONTHS = 5


@dataclass
class PartitionCleanupResult:
    workflow: str
    rows: int
    seconds: float
    delete_seconds: float
    speedup: float  # the DELETE's time over the workflow's
    partitions_dropped: int
    rows_purged_by_row: int
    worst_insert_ms: float
    inserts: int
    same_result: bool
    slowest_activities: list[tuple[str, float]]
    drop_timing: str  # from the journal: the DETACH units and the DROP

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run_partition_cleanup(*, rows: int) -> PartitionCleanupResult:
    """Load, run the workflow (with the writer), reload, run the DELETE; compare."""
    if connection.vendor != "postgresql":
        raise BenchmarkError(f"{CASE_NAME} needs PostgreSQL: SQLite keeps the log tables as plain tables")
    now = timezone.now()
    cutoff = now - timedelta(days=DELIVERY_LOGS.default_days)
    edge = partitions.period_start(cutoff, "month")
    months = _months_before(edge, EXPIRED_MONTHS)

    _load(rows, months=months, edge=edge, now=now)
    writer = Writer(Delivery.objects.order_by("-id").values_list("id", flat=True).first())
    writer.start()
    try:
        seconds, _peak = run_workflow_process("cleanup", {"statistics": "none"})
    finally:
        writer.stop()
    run = WorkflowRun.objects.filter(workflow_id="cleanup").order_by("-id").first()
    activities = ActivityRun.objects.filter(run=run).values_list("name", "started_at", "finished_at", "counters")
    slowest = sorted(((name, (end - start).total_seconds()) for name, start, end, _ in activities if end),
                     key=lambda item: -item[1])[:6]
    counters = {name: found for name, _, _, found in activities}["purge_delivery_logs"]
    dropped = (WorkflowLog.objects.filter(run=run, activity="purge_delivery_logs", message__startswith="Dropped")
               .values_list("message", flat=True).first() or "")
    after_workflow = _fingerprint(cutoff, writer.addresses)

    _load(rows, months=months, edge=edge, now=now)
    with transaction.atomic():
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(DeliveryLog._meta.db_table)} WHERE updated_at < %s",
                           [cutoff])
    delete_seconds = time.perf_counter() - started
    after_delete = _fingerprint(cutoff, set())

    return PartitionCleanupResult(
        workflow=CASE_NAME, rows=rows, seconds=round(seconds, 3), delete_seconds=round(delete_seconds, 3),
        speedup=round(delete_seconds / seconds, 2) if seconds else 0.0,
        partitions_dropped=counters.get("delivery_logs_partitions_dropped", 0),
        rows_purged_by_row=counters.get("delivery_logs_removed", 0),
        worst_insert_ms=round(writer.worst * 1000, 1), inserts=writer.inserts,
        same_result=after_workflow == after_delete,
        slowest_activities=[(name, round(spent, 3)) for name, spent in slowest],
        drop_timing=dropped.rpartition("; ")[2].rstrip("."),
    )


def _months_before(month: datetime, count: int) -> list[datetime]:
    starts = [month]
    for _ in range(count):
        previous = starts[-1] - timedelta(days=1)
        starts.append(previous.replace(day=1))
    return sorted(starts[1:])


def _load(rows: int, *, months: list[datetime], edge: datetime, now: datetime) -> None:
    """Empty the delivery logs and fill them again: ``rows`` over ``months`` (each with a partition
    of its own, as the daily maintenance leaves them), 1% at the edge, 1% live."""
    table = DeliveryLog._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {connection.ops.quote_name(table)}")
    existing = partitions.partitions(table)
    for start in [*months, edge]:
        end = partitions.next_period(start, "month")
        if period := partitions.uncovered(start, end, existing):
            partitions.create_partition(table, "created_at", *period)
    campaign = Campaign.objects.create(label="benchmark")
    delivery = Delivery.objects.create(label="benchmark cleanup by partition", campaign=campaign,
                                       state=Delivery.State.FINISHED, started_at=months[0], finished_at=months[0])
    per_month = max(1, rows // len(months))
    spacing = timedelta(days=28) / per_month  # within the month, however many rows

    def expired() -> Any:
        for index in range(rows):
            month = months[min(index // per_month, len(months) - 1)]
            at = month + spacing * (index % per_month)
            yield (delivery.pk, f"r{index}@example.com", "", LogStatus.SENT, 0, 0, "", at, at)

    load(DeliveryLog, LOG_COLUMNS, expired())
    edge_rows, edge_span = max(1, rows // 100), max(timedelta(0), now - timedelta(days=DELIVERY_LOGS.default_days + 1) - edge)
    load(DeliveryLog, LOG_COLUMNS, (
        (delivery.pk, f"edge{i}@example.com", "", LogStatus.SENT, 0, 0, "", edge + edge_span * i / edge_rows,
         edge + edge_span * i / edge_rows) for i in range(edge_rows)))
    load(DeliveryLog, LOG_COLUMNS, ((delivery.pk, f"live{i}@example.com", "", LogStatus.SENT, 0, 0, "", now, now)
                                    for i in range(max(1, rows // 100))))
    analyze()


def _fingerprint(cutoff: datetime, written: set[str]) -> tuple[int, int, str]:
    """(expired rows left, rows kept, a digest of the kept rows' addresses), the writer's rows
    aside. Addresses, not ids: the second load takes new ids from the sequence."""
    table = connection.ops.quote_name(DeliveryLog._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FILTER (WHERE updated_at < %s), COUNT(*) FILTER (WHERE updated_at >= %s), "
                       f"md5(COALESCE(string_agg(address, ',' ORDER BY address) FILTER (WHERE updated_at >= %s), '')) "
                       f"FROM {table} WHERE NOT (address = ANY(%s))", [cutoff, cutoff, cutoff, list(written)])
        expired, kept, digest = cursor.fetchone()
    return expired, kept, digest


class Writer:
    """Inserts one live delivery log at a time on a connection of its own, in autocommit, and
    keeps the worst latency of an insert."""

    def __init__(self, delivery_id: int) -> None:
        self.delivery_id = delivery_id
        self.worst = 0.0
        self.inserts = 0
        self.addresses: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="benchmark-writer")
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        if self._error is not None:
            raise BenchmarkError(f"the concurrent writer failed: {self._error}")

    def _write(self) -> None:
        own = connections.create_connection("default")
        try:
            own.set_autocommit(True)
            table = own.ops.quote_name(DeliveryLog._meta.db_table)
            with own.cursor() as cursor:
                while not self._stop.is_set():
                    address = f"writer{self.inserts}@example.com"
                    moment = datetime.now(UTC)
                    started = time.perf_counter()
                    cursor.execute(
                        f"INSERT INTO {table} (delivery_id, address, variant, status, failure_type, failure_reason, "
                        "error_text, created_at, updated_at) VALUES (%s, %s, '', %s, 0, 0, '', %s, %s)",
                        [self.delivery_id, address, LogStatus.SENT, moment, moment],
                    )
                    self.worst = max(self.worst, time.perf_counter() - started)
                    self.inserts += 1
                    self.addresses.add(address)
                    time.sleep(0.002)
        except BaseException as error:  # reported by stop(), in the main thread
            self._error = error
        finally:
            own.close()
