"""Time partitions of the log tables, on PostgreSQL.

Why: the log tables grow by the day and are purged on retention rules. Deleting a month of logs row
by row costs time in proportion to the rows, bloats the table and its indexes, and competes with the
day's writes; with the table range-partitioned by its time column, the month is one partition that
cleanup detaches and drops in a metadata operation.

Layout, for each table of :data:`PARTITIONED_TABLES`:

- One partition per period of ``settings.LOG_PARTITION_INTERVAL`` (``month``, ``week`` starting on
  Monday, or ``day``; periods are in UTC), named ``<table>_p<YYYYMMDD>`` after its first day.
- A default partition, ``<table>_default``, catches any row no period takes (dated before the oldest
  partition, or beyond the newest). It should stay empty: ``/healthz`` reports the rows it holds.
- Partitions exist ahead of time: :func:`ensure_partitions` (run after ``migrate`` and by the cleanup
  workflow's first activity) keeps the current period and the next :data:`AHEAD` covered, so a write
  never waits for a partition. Creating one moves any rows the default partition holds in its period
  into it, then attaches it, so rows written out of range find their period once it exists.
- The primary key is ``(id, <time column>)``: PostgreSQL wants the partition key in every unique
  constraint. Ids stay unique, drawn from the table's one identity sequence; Django still sees
  ``id`` as the primary key.

Every DDL statement here waits at most :data:`LOCK_TIMEOUT` for its locks and gives up otherwise
(the next call tries again), so a writer queued behind it is never held up longer than that.

SQLite keeps plain tables: the same models, the same queries above this module, and every function
here does nothing there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.utils import timezone


@dataclass(frozen=True)
class PartitionedTable:
    """A log table partitioned by ``column``, the time column its retention ages rows on (or the
    one its rows are created with, when the retention's column changes over a row's life)."""

    label: str  # app_label.ModelName
    table: str
    column: str


PARTITIONED_TABLES = (
    PartitionedTable("campaign.DeliveryLog", "campaign_deliverylog", "created_at"),
    PartitionedTable("campaign.TrackingLog", "campaign_trackinglog", "tracked_at"),
    PartitionedTable("campaign.SendingFeedback", "campaign_sendingfeedback", "received_at"),
    PartitionedTable("campaign.TrackingHit", "campaign_trackinghit", "hit_at"),
    PartitionedTable("campaign.InboundSms", "campaign_inboundsms", "received_at"),
    PartitionedTable("campaign.EventHistory", "campaign_eventhistory", "archived_at"),
)

INTERVALS = ("month", "week", "day")

#: How far ahead partitions are kept: the current period and every period starting within this.
AHEAD = timedelta(days=92)

#: The longest any statement here waits for a lock (PostgreSQL's ``lock_timeout``).
LOCK_TIMEOUT = "1s"

_BOUND = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    """One partition of a table: its period ``[start, end)``, or the default one (both None)."""

    name: str
    start: datetime | None = None
    end: datetime | None = None

    @property
    def is_default(self) -> bool:
        return self.start is None


@dataclass
class Maintenance:
    """What :func:`ensure_partitions` did: partitions created, rows moved out of the default
    partitions into them, and the tables it could not lock in time (tried again next time)."""

    created: list[str] = field(default_factory=list)
    rows_moved: int = 0
    busy: list[str] = field(default_factory=list)


def enabled(using: BaseDatabaseWrapper | None = None) -> bool:
    return (using or connection).vendor == "postgresql"


def by_label(label: str) -> PartitionedTable:
    return next(table for table in PARTITIONED_TABLES if table.label == label)


# --------------------------------------------------------------------------------------------
# Periods
# --------------------------------------------------------------------------------------------

def period_start(moment: datetime, interval: str) -> datetime:
    """The first instant (UTC) of the period of ``interval`` that holds ``moment``."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "month":
        return day.replace(day=1)
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "day":
        return day
    raise ValueError(f"unknown partition interval {interval!r}: expected one of {', '.join(INTERVALS)}")


def next_period(start: datetime, interval: str) -> datetime:
    if interval == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start + timedelta(days=7 if interval == "week" else 1)


def partition_name(table: str, start: datetime) -> str:
    return f"{table}_p{start:%Y%m%d}"


def default_partition_name(table: str) -> str:
    return f"{table}_default"


# --------------------------------------------------------------------------------------------
# Reading the layout
# --------------------------------------------------------------------------------------------

def is_partitioned(table: str) -> bool:
    if not enabled():
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s)", [table])
        return cursor.fetchone() is not None


def partitions(table: str) -> list[Partition]:
    """The partitions of ``table``, oldest period first, the default one last."""
    with bounded_wait() as cursor:  # pg_get_expr opens each partition: it waits for their locks
        cursor.execute(
            "SELECT child.relname, pg_get_expr(child.relpartbound, child.oid) FROM pg_inherits "
            "JOIN pg_class child ON child.oid = pg_inherits.inhrelid "
            "WHERE pg_inherits.inhparent = to_regclass(%s)", [table],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound)
        found.append(Partition(name) if match is None else
                     Partition(name, _timestamp(match.group(1)), _timestamp(match.group(2))))
    return sorted(found, key=lambda part: (part.is_default, part.start or datetime.min.replace(tzinfo=UTC)))


def _timestamp(literal: str) -> datetime:
    value = datetime.fromisoformat(literal)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def default_partition_rows(table: str, *, limit: int = 1_000_000) -> int:
    """Rows in the default partition of ``table``, counted up to ``limit`` (a bounded scan)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM {_quoted(default_partition_name(table))} LIMIT %s) AS rows",
                       [limit])
        return cursor.fetchone()[0]


def partitioned_tables() -> list[PartitionedTable]:
    """The tables of :data:`PARTITIONED_TABLES` that are partitioned in this database (none on SQLite)."""
    return [table for table in PARTITIONED_TABLES if is_partitioned(table.table)]


# --------------------------------------------------------------------------------------------
# Creating partitions
# --------------------------------------------------------------------------------------------

def ensure_partitions(*, now: datetime | None = None, interval: str | None = None) -> Maintenance:
    """On every partitioned table, create the partitions missing from the current period to
    :data:`AHEAD`, and one for each period of which the default partition holds rows (moving them
    in). Safe to repeat and to run concurrently with writers."""
    done = Maintenance()
    now = now or timezone.now()
    interval = interval or settings.LOG_PARTITION_INTERVAL
    for table in partitioned_tables():
        try:
            periods = periods_to_create(partitions(table.table), periods_in_default(table, interval),
                                        now=now, interval=interval)
            for start, end in periods:
                done.rows_moved += create_partition(table.table, table.column, start, end)
                done.created.append(partition_name(table.table, start))
        except OperationalError as error:
            if not is_busy(error):
                raise
            done.busy.append(table.table)
    return done


def periods_to_create(existing: list[Partition], row_starts: Iterable[datetime], *, now: datetime,
                      interval: str) -> list[tuple[datetime, datetime]]:
    """The periods ``[start, end)`` to give a partition, oldest first: those missing from the
    period of ``now`` to :data:`AHEAD`, and the uncovered part of each period starting at one of
    ``row_starts`` (periods that hold rows with nowhere better to go)."""
    periods = missing_periods(existing, now=now, interval=interval)
    periods += [period for start in row_starts
                if (period := uncovered(start, next_period(start, interval), [*existing, *_as_partitions(periods)]))]
    return sorted(periods)


def missing_periods(existing: Iterable[Partition], *, now: datetime, interval: str) -> list[tuple[datetime, datetime]]:
    """The periods ``[start, end)`` from the period of ``now`` to :data:`AHEAD` that no partition
    covers, each cut down to its uncovered part (one partly covered when the interval changed)."""
    existing, wanted = list(existing), []
    start = period_start(now, interval)
    while start <= now + AHEAD:
        end = next_period(start, interval)
        if period := uncovered(start, end, [*existing, *_as_partitions(wanted)]):
            wanted.append(period)
        start = end
    return wanted


def uncovered(start: datetime, end: datetime, existing: Iterable[Partition]) -> tuple[datetime, datetime] | None:
    """The part of ``[start, end)`` that begins where ``existing`` partitions stop covering it and
    ends where the next one begins; None when nothing of it is free."""
    ranges = sorted((part.start, part.end) for part in existing if not part.is_default)
    for covered_start, covered_end in ranges:
        if covered_start <= start < covered_end:
            start = covered_end
    for covered_start, _ in ranges:
        if start < covered_start < end:
            end = covered_start
    return (start, end) if start < end else None


def _as_partitions(periods: Iterable[tuple[datetime, datetime]]) -> list[Partition]:
    return [Partition("", start, end) for start, end in periods]


def periods_in_default(table: PartitionedTable, interval: str) -> list[datetime]:
    """The first instants of the periods the default partition of ``table`` holds rows of (one
    scan of the default partition, which is normally empty)."""
    with bounded_wait() as cursor:
        return period_starts(cursor, default_partition_name(table.table), table.column, interval)


def period_starts(cursor: CursorWrapper, relation: str, column: str, interval: str) -> list[datetime]:
    """The first instants of the periods ``relation`` holds rows of, by ``column`` (one scan)."""
    cursor.execute(f"SELECT DISTINCT date_trunc(%s, {_quoted(column)} AT TIME ZONE 'UTC') FROM {_quoted(relation)}",
                   [interval])
    return sorted(row[0].replace(tzinfo=UTC) for row in cursor.fetchall())


def create_partition(table: str, column: str, start: datetime, end: datetime, *, parent: str | None = None) -> int:
    """Create the partition of ``table`` for ``[start, end)`` and attach it; returns how many rows
    it took over from the default partition.

    One transaction: the new table is made like the parent, the default partition's rows of the
    period are moved into it, and it is attached (``ATTACH PARTITION`` locks the parent only in
    SHARE UPDATE EXCLUSIVE mode, which reads and writes do not wait for; a CHECK constraint of the
    period, dropped right after, spares it a scan of the new partition). ``parent`` is the
    partitioned table's current name when it differs from ``table`` (while a migration builds it).
    """
    parent = parent or table
    name, default = _quoted(partition_name(table, start)), _quoted(default_partition_name(table))
    check = _quoted(f"{partition_name(table, start)}_period")
    col = _quoted(column)
    bounds = [start, end]
    with bounded_wait() as cursor:
        cursor.execute(f"CREATE TABLE {name} (LIKE {_quoted(parent)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {default} WHERE {col} >= %s AND {col} < %s RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved", bounds,
        )
        moved = cursor.rowcount
        cursor.execute(f"ALTER TABLE {name} ADD CONSTRAINT {check} CHECK ({col} >= %s AND {col} < %s)", bounds)
        cursor.execute(f"ALTER TABLE {_quoted(parent)} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", bounds)
        cursor.execute(f"ALTER TABLE {name} DROP CONSTRAINT {check}")
    return moved


# --------------------------------------------------------------------------------------------
# Dropping partitions
# --------------------------------------------------------------------------------------------

def expired_partitions(table: str, cutoff: datetime) -> list[Partition]:
    """The partitions of ``table`` whose whole period ends at or before ``cutoff``, oldest first:
    every row they can hold is older than ``cutoff`` by the partition column. The default
    partition never is (it may hold any date)."""
    return [part for part in partitions(table) if not part.is_default and part.end <= cutoff]


def column_max(partition: str, column: str) -> Any:
    """The largest value of ``column`` in ``partition`` (None when it is empty). Meant for an
    indexed column: PostgreSQL reads it at the end of the index, whatever the partition's size."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT MAX({_quoted(column)}) FROM {_quoted(partition)}")
        return cursor.fetchone()[0]


#: Beyond this many rows, a partition never analysed is not counted to the end (see :func:`estimated_rows`).
COUNT_LIMIT = 100_000


def estimated_rows(partition: str) -> tuple[int, bool]:
    """(rows, exact) of ``partition`` without scanning it: the planner's estimate
    (``pg_class.reltuples``, kept by ANALYZE and autovacuum), or, for a partition never analysed
    (``reltuples`` -1), a count stopped at :data:`COUNT_LIMIT` rows (exact below it, a lower
    bound at it). Counting a whole partition before dropping it would cost as much as reading it,
    which is what dropping it whole avoids."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", [partition])
        row = cursor.fetchone()
        if row is not None and row[0] >= 0:
            return int(row[0]), False
        cursor.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM {_quoted(partition)} LIMIT %s) AS rows", [COUNT_LIMIT])
        counted = cursor.fetchone()[0]
        return counted, counted < COUNT_LIMIT


def detach(table: str, partition: str) -> None:
    """Detach ``partition`` from ``table``, in the caller's transaction (a savepoint of it).

    Not ``DETACH ... CONCURRENTLY``: PostgreSQL refuses it on a table with a default partition. The
    plain form takes the parent's ACCESS EXCLUSIVE lock, but only for a catalogue change; waiting
    at most :data:`LOCK_TIMEOUT` for it bounds how long a writer queued behind it can wait, and the
    lock is held until the caller's transaction ends, which should therefore be short. A partition
    with foreign keys also has their triggers made on the tables they point to (SHARE ROW EXCLUSIVE
    there: writes to deliveries and profiles wait for the same short while). Raises
    ``OperationalError`` (:func:`is_busy`) when the lock is not had in time; the savepoint is then
    rolled back and the caller's transaction goes on.
    """
    with bounded_wait() as cursor:
        cursor.execute(f"ALTER TABLE {_quoted(table)} DETACH PARTITION {_quoted(partition)}")


def drop(*detached: str) -> None:
    """Drop tables once detached, together.

    Together: a transaction that drops tables always waits at its commit for the WAL to reach the
    disk (PostgreSQL removes their files right after, so the commit must not be lost), and on a
    busy disk that wait is most of the cost of a drop; one ``DROP TABLE`` of them all waits once.

    Nobody reads or writes these tables any more, but their foreign keys have triggers on the tables
    they point to (deliveries, profiles), and removing a trigger takes that table's ACCESS
    EXCLUSIVE lock: a plain ``DROP TABLE`` would take those locks in one transaction, holding one
    while waiting for the next, which a writer holding them in the other order turns into a
    deadlock (measured: the writer's insert was the one cancelled). So each foreign key is dropped
    first, in a transaction per table pointed to (the detached tables and that one table locked),
    then the tables, which then lock nothing else. Called inside a transaction, a single ``DROP
    TABLE``: its locks last until that transaction ends whatever the split. Every lock wait is
    bounded at :data:`LOCK_TIMEOUT`; ``OperationalError`` (:func:`is_busy`) when a lock is not had
    in time: the tables are then left for :func:`detached_partitions` to find. A table already gone
    (dropped meanwhile by a run that had lost its lease, say) is no error.
    """
    if not detached:
        return
    if not connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SELECT confrelid, conrelid::regclass::text, conname FROM pg_constraint "
                           "WHERE conrelid = ANY(%s::regclass[]) AND contype = 'f' ORDER BY confrelid, conname",
                           [list(detached)])
            foreign_keys = cursor.fetchall()
        for target in dict.fromkeys(target for target, _, _ in foreign_keys):
            # A server crash may undo this commit: the table is then a leftover still, dropped next time.
            with bounded_wait(durable=False) as cursor:
                for _, table, key in (fk for fk in foreign_keys if fk[0] == target):
                    cursor.execute(f"ALTER TABLE IF EXISTS {_quoted(table)} DROP CONSTRAINT IF EXISTS {_quoted(key)}")
    with bounded_wait() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {', '.join(_quoted(name) for name in detached)}")


def detach_and_drop(table: str, partition: str) -> None:
    """Detach ``partition`` from ``table`` (one transaction, see :func:`detach`), then drop it (a second)."""
    with transaction.atomic():
        detach(table, partition)
    drop(partition)


def detached_partitions() -> list[str]:
    """Tables named like a partition of a partitioned log table (``<table>_p<YYYYMMDD>``) that are
    attached to nothing: detached by cleanup, whose purges detach expired partitions and whose later
    activity drops them (or the next run's, after a crash or a lock not had in time). Their rows
    are out of the table already; nothing but cleanup makes such a table."""
    names = [table.table for table in partitioned_tables()]
    if not names:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r' "
            "AND NOT relispartition AND substring(relname from '^(.*)_p[0-9]{8}$') = ANY(%s) ORDER BY relname",
            [names],
        )
        return [row[0] for row in cursor.fetchall()]


# --------------------------------------------------------------------------------------------
# Converting a table (migrations)
# --------------------------------------------------------------------------------------------

def rebuild(table: PartitionedTable, *, partitioned: bool, now: datetime | None = None) -> None:
    """Rebuild ``table`` as a partitioned table (or back as a plain one), keeping its rows, columns,
    defaults, checks, identity sequence position, indexes and foreign keys.

    For a migration: it copies every row, under a lock that stops writers for as long as that
    takes. Partitions are made for every period that holds a row, the current one and those up to
    :data:`AHEAD`. No foreign key may point *into* the table (PostgreSQL would need the partition
    key in it): the log tables are referenced without database constraints.
    """
    name, interval = table.table, settings.LOG_PARTITION_INTERVAL
    building = f"{name}_rebuilt"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text FROM pg_constraint WHERE confrelid = to_regclass(%s) AND contype = 'f'", [name],
        )
        referencing = [row[0] for row in cursor.fetchall()]
        if referencing:
            raise RuntimeError(f"cannot rebuild {name}: foreign keys of {', '.join(referencing)} point to it")
        cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'", [name])
        primary_key = cursor.fetchone()[0]
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s AND indexname <> %s",
            [name, primary_key],
        )
        indexes = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'f'",
            [name],
        )
        foreign_keys = cursor.fetchall()
        col = _quoted(table.column)
        cursor.execute(
            f"CREATE TABLE {_quoted(building)} (LIKE {_quoted(name)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            f"INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMMENTS)" + (f" PARTITION BY RANGE ({col})" if partitioned else ""),
        )
        if partitioned:
            cursor.execute(f"CREATE TABLE {_quoted(default_partition_name(name))} PARTITION OF {_quoted(building)} DEFAULT")
            periods = periods_to_create([], period_starts(cursor, name, table.column, interval),
                                        now=now or timezone.now(), interval=interval)
            for start, end in periods:
                create_partition(name, table.column, start, end, parent=building)
        cursor.execute(f"INSERT INTO {_quoted(building)} SELECT * FROM {_quoted(name)}")
        cursor.execute(f"DROP TABLE {_quoted(name)}")
        cursor.execute(f"ALTER TABLE {_quoted(building)} RENAME TO {_quoted(name)}")
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [name])
        sequence = cursor.fetchone()[0]
        if sequence is not None:
            cursor.execute(f"ALTER SEQUENCE {sequence} RENAME TO {_quoted(f'{name}_id_seq')}")
            cursor.execute(f"SELECT setval(pg_get_serial_sequence(%s, 'id'), COALESCE(MAX(id), 0) + 1, false) "
                           f"FROM {_quoted(name)}", [name])
        key = f"id, {col}" if partitioned else "id"
        cursor.execute(f"ALTER TABLE {_quoted(name)} ADD CONSTRAINT {_quoted(primary_key)} PRIMARY KEY ({key})")
        for statement in indexes:
            cursor.execute(statement)
        for constraint, definition in foreign_keys:
            cursor.execute(f"ALTER TABLE {_quoted(name)} ADD CONSTRAINT {_quoted(constraint)} {definition}")


@contextmanager
def bounded_wait(*, durable: bool = True) -> Iterator[CursorWrapper]:
    """A cursor in a transaction (a savepoint inside one) whose statements wait at most
    :data:`LOCK_TIMEOUT` for a lock, then fail with ``lock_not_available`` (see :func:`is_busy`).
    Inside an outer transaction, the outer one's own timeout is back once the block ends; a
    transaction of its own simply ends with its setting. ``durable=False`` (a transaction of its
    own only) commits without waiting for the WAL to reach the disk: for a change that a server
    crash may undo without harm."""
    outermost = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if outermost:  # one round trip: SET LOCAL ends with the transaction
            cursor.execute("SELECT set_config('lock_timeout', %s, true), set_config('synchronous_commit', %s, true)",
                           [LOCK_TIMEOUT, "on" if durable else "off"])
            yield cursor
            return
        cursor.execute("SELECT current_setting('lock_timeout')")
        previous = cursor.fetchone()[0]
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        yield cursor
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [previous])


def is_busy(error: OperationalError) -> bool:
    """The error is PostgreSQL giving up on a lock after :data:`LOCK_TIMEOUT`, or choosing this
    statement as the victim of a deadlock. A DETACH locks the log table, then the tables its
    foreign keys point to; a writer that updated a delivery and then inserts a log closes a cycle
    with it. PostgreSQL looks for one after ``deadlock_timeout`` (1 s by default, the same as
    :data:`LOCK_TIMEOUT`), so either error may end the wait: both mean "give way, try later"."""
    return getattr(error.__cause__, "pgcode", None) in ("55P03", "40P01")  # lock_not_available, deadlock_detected


def _quoted(name: str) -> str:
    return connection.ops.quote_name(name)
