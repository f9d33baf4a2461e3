"""Benchmark case ``cleanup_partitions`` (PostgreSQL): expired delivery logs removed by detaching
their partitions, against one ``DELETE`` of the same rows, with a writer inserting meanwhile.

The data: ``rows`` delivery logs spread over five whole monthly partitions past the 180-day
retention (created and last updated 7 to 11 months ago), 1% more (at most 10,000: the edge does
not grow with the history) in the partition at the retention edge (past retention too, so purged
row by row), and as many live logs of today. The same data is loaded twice: once for the cleanup
workflow, run in a child process as a worker runs it, once for the single ``DELETE ... WHERE
updated_at < cutoff`` an operator would type (committed, inside the timing). Both must leave the
same rows.

What is compared, each as the engine or the clock measured it:

- **Rows out of the table.** The activity ``purge_delivery_logs`` (its checks, the DETACH units,
  the edge's row purge) against the DELETE. Neither gives the space back: a DELETE leaves dead
  rows for VACUUM, a DETACH leaves a table to drop.
- **Space given back too.** That activity plus ``drop_detached_partitions`` (the DROP) against
  the DELETE plus a VACUUM of the partitions it emptied.
- **The whole run**, every other activity's bookkeeping included, as context.

During the workflow's run a writer inserts live delivery logs one at a time on a connection of its
own; the worst latency of an insert is reported: the DETACH of a partition holds the table's lock
only for a catalogue change, and waits at most one second for it.

The measured run uses ``statistics=none``: the DELETE is not followed by a VACUUM inside its own
timing either.
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


#: Rows past retention in the partition at the edge: 1% of the expired rows, at most this.
MAX_EDGE_ROWS = 10_000


def edge_size(rows: int) -> int:
    return min(MAX_EDGE_ROWS, max(1, rows // 100))


@dataclass
class PartitionCleanupResult:
    workflow: str
    rows: int
    seconds: float  # the whole cleanup run
    purge_seconds: float  # its activity purge_delivery_logs
    drop_seconds: float  # its activity drop_detached_partitions
    delete_seconds: float
    vacuum_seconds: float  # after the DELETE, of the partitions it emptied
    speedup: float  # the DELETE's time over the purge activity's
    speedup_with_space: float  # DELETE and VACUUM over the purge and drop activities
    partitions_detached: int
    rows_purged_by_row: int
    worst_insert_ms: float
    inserts: int
    same_result: bool
    slowest_activities: list[tuple[str, float]]
    detach_timing: str  # from the journal: the DETACH units together

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run_partition_cleanup(*, rows: int) -> PartitionCleanupResult:
    """Load, run the workflow (with the writer), reload, run the DELETE and the VACUUM; compare."""
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
    spent = {name: (end - start).total_seconds() for name, start, end in
             ActivityRun.objects.filter(run=run, finished_at__isnull=False).values_list("name", "started_at", "finished_at")}
    counters = ActivityRun.objects.get(run=run, name="purge_delivery_logs").counters
    detached = (WorkflowLog.objects.filter(run=run, activity="purge_delivery_logs", message__startswith="Detached")
                .values_list("message", flat=True).first() or "")
    after_workflow = _fingerprint(cutoff, writer.addresses)

    _load(rows, months=months, edge=edge, now=now)
    emptied = [part.name for part in partitions.expired_partitions(DeliveryLog._meta.db_table, edge)]
    with transaction.atomic():
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(DeliveryLog._meta.db_table)} WHERE updated_at < %s",
                           [cutoff])
    delete_seconds = time.perf_counter() - started
    after_delete = _fingerprint(cutoff, set())
    vacuum_seconds = _vacuum(emptied)

    purge, drop = spent.get("purge_delivery_logs", 0.0), spent.get("drop_detached_partitions", 0.0)
    return PartitionCleanupResult(
        workflow=CASE_NAME, rows=rows, seconds=round(seconds, 3), purge_seconds=round(purge, 3),
        drop_seconds=round(drop, 3), delete_seconds=round(delete_seconds, 3), vacuum_seconds=round(vacuum_seconds, 3),
        speedup=round(delete_seconds / purge, 1) if purge else 0.0,
        speedup_with_space=round((delete_seconds + vacuum_seconds) / (purge + drop), 1) if purge + drop else 0.0,
        partitions_detached=counters.get("delivery_logs_partitions_detached", 0),
        rows_purged_by_row=counters.get("delivery_logs_removed", 0),
        worst_insert_ms=round(writer.worst * 1000, 1), inserts=writer.inserts,
        same_result=after_workflow == after_delete,
        slowest_activities=[(name, round(took, 3)) for name, took in sorted(spent.items(), key=lambda item: -item[1])[:6]],
        detach_timing=detached.partition(" in ")[2].partition(";")[0] if " ms;" in detached else "",
    )


def _vacuum(tables: list[str]) -> float:
    """VACUUM ``tables`` (outside any transaction, as it must run), in seconds."""
    if not tables:
        return 0.0
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM {', '.join(connection.ops.quote_name(name) for name in tables)}")
    return time.perf_counter() - started


def _months_before(month: datetime, count: int) -> list[datetime]:
    starts = [month]
    for _ in range(count):
        previous = starts[-1] - timedelta(days=1)
        starts.append(previous.replace(day=1))
    return sorted(starts[1:])


def _load(rows: int, *, months: list[datetime], edge: datetime, now: datetime) -> None:
    """Empty the delivery logs and fill them again: ``rows`` over ``months`` (each with a partition
    of its own, as the daily maintenance leaves them), then the edge's rows, and as many live."""
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
    edge_rows, edge_span = edge_size(rows), max(timedelta(0), now - timedelta(days=DELIVERY_LOGS.default_days + 1) - edge)
    load(DeliveryLog, LOG_COLUMNS, (
        (delivery.pk, f"edge{i}@example.com", "", LogStatus.SENT, 0, 0, "", edge + edge_span * i / edge_rows,
         edge + edge_span * i / edge_rows) for i in range(edge_rows)))
    load(DeliveryLog, LOG_COLUMNS, ((delivery.pk, f"live{i}@example.com", "", LogStatus.SENT, 0, 0, "", now, now)
                                    for i in range(edge_rows)))
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
