"""The SQL of the cleanup workflow: bounded purge batches, the quarantine release rules, and the
database statistics, on PostgreSQL and SQLite alike.

Why raw SQL and not ``QuerySet.delete()``: the ORM's delete collects related objects in Python
(and loads rows to emulate cascades and signals); a purge must stay a set-based statement whose
cost does not depend on what the rows point to. The log tables point to each other without
database constraints (``db_constraint=False``), so a plain ``DELETE`` of delivery logs neither
cascades to nor waits on the tracking rows that outlive them.

A purge walks its table in the order of the age column, using that column's index: each batch
finds the value ``batch size`` rows further on, then deletes the rows up to it (see
:func:`delete_batch`). A batch therefore costs O(batch size) whatever the table's size, and never
goes back over rows earlier batches deleted. That matters: deleted rows stay in the indexes as dead
entries until VACUUM, and as long as *any* transaction older than the purge is open on the server
PostgreSQL cannot even mark them dead, so a purge restarting from the oldest row at each batch
(``... ORDER BY age LIMIT n``) slows down batch after batch. Measured with a long transaction open
in another database: 88 ms for the first batch of 20,000, 660 ms for the fiftieth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, connections, models

from campaign.models import Delivery, DeliveryLog, FailureReason, FailureType, LogStatus, Quarantine
from workflows.sql import db_date, db_datetime, table

#: What the ``statistics`` property may ask for. ``vacuum_analyze`` makes the space of the purged
#: rows reusable and refreshes the planner statistics; ``analyze`` only refreshes the statistics.
STATISTICS_MODES = ("vacuum_analyze", "analyze", "none")


def column(model: type[models.Model], field_name: str) -> str:
    """The quoted column of a field, qualified by its table (safe inside correlated subqueries)."""
    return f"{table(model)}.{connection.ops.quote_name(model._meta.get_field(field_name).column)}"


@dataclass(frozen=True)
class Selection:
    """Rows of one table: a SQL predicate over the table's own columns, and its parameters."""

    model: type[models.Model]
    where: str = "1 = 1"
    params: Sequence[Any] = field(default_factory=tuple)

    @property
    def table(self) -> str:
        return table(self.model)

    @property
    def pk(self) -> str:
        return column(self.model, self.model._meta.pk.name)

    def narrowed(self, where: str, params: Sequence[Any] = ()) -> Selection:
        """These rows that also match ``where``."""
        return Selection(self.model, f"({self.where}) AND ({where})", (*self.params, *params))


@dataclass(frozen=True)
class Walk:
    """Where a pass over a table has got to. Rows are taken in the order of one column (the age
    column, or the primary key); ``value`` is where the next batch starts (``inclusive`` or not).
    A run of equal values too long for one batch is walked by id: ``tie_id`` is then the last id
    deleted among the rows equal to ``value``."""

    value: Any
    inclusive: bool = True
    tie_id: int | None = None


def _by_pk(selection: Selection, order_by: str) -> bool:
    return order_by == selection.model._meta.pk.name


def _first_value_at(selection: Selection, column_sql: str, offset: int) -> Any:
    """The value of ``column_sql`` at position ``offset`` of ``selection`` in that column's order,
    or None when the selection is shorter. On the age column this is an index(-only) scan of
    ``offset`` entries: no sort, no join."""
    sql = f"SELECT {column_sql} FROM {selection.table} WHERE {selection.where} ORDER BY {column_sql} LIMIT 1 OFFSET %s"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*selection.params, offset])
        row = cursor.fetchone()
    return None if row is None else row[0]


def _delete(selection: Selection) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {selection.table} WHERE {selection.where}", list(selection.params))
        return cursor.rowcount


def _db_value(model: type[models.Model], field_name: str, value: Any) -> Any:
    """A value read back from the database, ready to be a parameter again (SQLite compares text)."""
    field_ = model._meta.get_field(field_name)
    if isinstance(field_, models.DateTimeField):
        return db_datetime(value)
    if isinstance(field_, models.DateField):
        return db_date(value)
    return value


def delete_batch(selection: Selection, *, order_by: str, after: Walk | None, limit: int) -> tuple[int, Walk | None]:
    """Delete the next batch (at most ``limit`` rows) of ``selection``, oldest first by
    ``order_by``; returns (rows deleted, where the next batch starts), ``None`` when nothing is left.

    Two statements: find the value of the row ``limit`` rows after the walk's position (an index
    scan of ``limit`` entries), then delete the rows from the position up to that value, which the
    same index finds. The delete re-checks the selection's predicate on every row, so a row
    that stopped matching meanwhile (a log updated by a concurrent writer) is kept. A batch can
    delete nothing (its rows were all equal to the boundary): the walk then goes on by id.
    """
    pk = selection.pk
    if after is not None and after.tie_id is not None:
        return _delete_tie_batch(selection, order_by=order_by, value=after.value, after_id=after.tie_id, limit=limit)
    order = pk if _by_pk(selection, order_by) else column(selection.model, order_by)
    rest = selection if after is None else selection.narrowed(f"{order} {'>=' if after.inclusive else '>'} %s", (after.value,))
    # The row just past the batch: everything before it is at most ``limit`` rows.
    boundary = _first_value_at(rest, order, limit)
    if boundary is None:
        return _delete(rest), None
    if not _by_pk(selection, order_by):
        boundary = _db_value(selection.model, order_by, boundary)
    removed = _delete(rest.narrowed(f"{order} < %s", (boundary,)))
    if removed or _by_pk(selection, order_by):
        return removed, Walk(boundary)
    # More than ``limit`` rows share the boundary's value: walk them by id.
    return _delete_tie_batch(selection, order_by=order_by, value=boundary, after_id=0, limit=limit)


def _delete_tie_batch(selection: Selection, *, order_by: str, value: Any, after_id: int,
                      limit: int) -> tuple[int, Walk | None]:
    ties = selection.narrowed(f"{column(selection.model, order_by)} = %s AND {selection.pk} > %s", (value, after_id))
    last_id = _first_value_at(ties, selection.pk, limit - 1)
    if last_id is None:
        return _delete(ties), Walk(value, inclusive=False)
    return _delete(ties.narrowed(f"{selection.pk} <= %s", (last_id,))), Walk(value, tie_id=last_id)


def relax_durability() -> None:
    """PostgreSQL: commit this transaction without waiting for its WAL to reach the disk
    (``synchronous_commit = off``, this transaction only; read at commit, so it may come after the
    delete). A purge batch may be lost in a server
    crash with no harm: its rows are simply still there for the next run, and the counters that
    commit with it are lost with it, so they never disagree. The batch no longer waits for an
    fsync, and neither do the writers sharing the WAL with it."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")


def count(selection: Selection) -> int:
    """How many rows ``selection`` holds (dry runs: one aggregate, no row reaches Python)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {selection.table} WHERE {selection.where}", list(selection.params))
        return cursor.fetchone()[0]


def first_ids(selection: Selection, *, order_by: str, limit: int, after: int | None = None) -> list[int]:
    """The ids of the first ``limit`` rows of ``selection`` by ``order_by`` (a bounded list),
    optionally only those with an id above ``after``."""
    if after is not None:
        selection = selection.narrowed(f"{selection.pk} > %s", (after,))
    sql = (f"SELECT {selection.pk} FROM {selection.table} WHERE {selection.where} "
           f"ORDER BY {column(selection.model, order_by)} LIMIT %s")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*selection.params, limit])
        return [row[0] for row in cursor.fetchall()]


def in_ids(model: type[models.Model], field_name: str, ids: Sequence[int]) -> Selection:
    """Rows of ``model`` whose ``field_name`` is one of ``ids`` (a bounded batch of ids)."""
    return Selection(model, f"{column(model, field_name)} IN ({', '.join(['%s'] * len(ids))})", tuple(ids))


def delete_all(selection: Selection) -> int:
    """Delete every row of ``selection``: only for selections bounded by a batch of ids."""
    return _delete(selection)


# --------------------------------------------------------------------------------------------
# Quarantine release
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReleaseRule:
    """One reason to release an erroneous address; ``where`` is evaluated on the quarantine row."""

    counter: str
    description: str
    where: str
    params: Sequence[Any]


def release_rules(*, soft_error_before: datetime, mailbox_full_before: datetime) -> list[ReleaseRule]:
    """The release rules, in the order they apply (a row counts under the first it meets).

    Mailbox full is a soft error with its own, longer delay, so the soft-error rule leaves it to
    its own rule. Only ``erroneous`` rows are ever considered (see :func:`erroneous_addresses`).
    """
    logs, deliveries = table(DeliveryLog), table(Delivery)
    address, channel = column(Quarantine, "address"), column(Quarantine, "channel")
    last_error = column(Quarantine, "last_error_at")
    failure_type, failure_reason = column(Quarantine, "failure_type"), column(Quarantine, "failure_reason")
    later_success = (
        f"EXISTS (SELECT 1 FROM {logs} JOIN {deliveries} ON {column(Delivery, 'id')} = {column(DeliveryLog, 'delivery')} "
        f"WHERE {column(DeliveryLog, 'address')} = {address} AND {column(Delivery, 'channel')} = {channel} "
        f"AND {column(DeliveryLog, 'status')} = {LogStatus.SENT} AND {column(DeliveryLog, 'updated_at')} > {last_error})"
    )
    return [
        ReleaseRule("quarantine_released_after_success",
                    "a message to the address was delivered after its last error", later_success, ()),
        ReleaseRule("quarantine_released_soft_errors",
                    "soft errors other than mailbox full, last error older than the soft-error delay",
                    f"{failure_type} = {FailureType.SOFT} AND {failure_reason} <> {FailureReason.MAILBOX_FULL} "
                    f"AND {last_error} < %s", (db_datetime(soft_error_before),)),
        ReleaseRule("quarantine_released_mailbox_full",
                    "mailbox full, last error older than the mailbox-full delay",
                    f"{failure_reason} = {FailureReason.MAILBOX_FULL} AND {last_error} < %s",
                    (db_datetime(mailbox_full_before),)),
    ]


def erroneous_addresses() -> Selection:
    """The only quarantine rows ever released: quarantined and denylisted ones are never touched."""
    return Selection(Quarantine, f"{column(Quarantine, 'status')} = %s", (Quarantine.Status.ERRONEOUS,))


def next_id_range(selection: Selection, *, after: int, limit: int) -> tuple[int, int]:
    """(rows, last id) of the next ``limit`` rows of ``selection`` with ``id > after``: the batch is
    the id range (after, last id]."""
    sql = (f"SELECT COUNT(*), MAX(batch.id) FROM (SELECT {selection.pk} AS id FROM {selection.table} "
           f"WHERE {selection.pk} > %s AND ({selection.where}) ORDER BY {selection.pk} LIMIT %s) AS batch")
    with connection.cursor() as cursor:
        cursor.execute(sql, [after, *selection.params, limit])
        rows, last = cursor.fetchone()
    return rows, (last if last is not None else after)


def release(rule: ReleaseRule, *, after: int, up_to: int, now: datetime) -> int:
    """Release (status ``valid``, error count 0) the erroneous rows of the id range meeting ``rule``."""
    erroneous = erroneous_addresses()
    pk = erroneous.pk
    sql = (f"UPDATE {erroneous.table} SET status = %s, error_count = 0, updated_at = %s "
           f"WHERE {pk} > %s AND {pk} <= %s AND ({erroneous.where}) AND ({rule.where})")
    with connection.cursor() as cursor:
        cursor.execute(sql, [Quarantine.Status.VALID, db_datetime(now), after, up_to, *erroneous.params, *rule.params])
        return cursor.rowcount


def count_releasable(rules: Sequence[ReleaseRule], *, after: int, up_to: int) -> dict[str, int]:
    """What :func:`release` would do, rule after rule, on the id range, without changing anything."""
    erroneous = erroneous_addresses()
    cases = " ".join(f"WHEN ({rule.where}) THEN {index}" for index, rule in enumerate(rules))
    sql = (f"SELECT rule, COUNT(*) FROM (SELECT CASE {cases} END AS rule FROM {erroneous.table} "
           f"WHERE {erroneous.pk} > %s AND {erroneous.pk} <= %s AND ({erroneous.where})) AS classified "
           "WHERE rule IS NOT NULL GROUP BY rule")
    params = [*(p for rule in rules for p in rule.params), after, up_to, *erroneous.params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = dict(cursor.fetchall())
    return {rule.counter: found.get(index, 0) for index, rule in enumerate(rules)}


# --------------------------------------------------------------------------------------------
# Database statistics
# --------------------------------------------------------------------------------------------

def refresh_statistics(model: type[models.Model], *, mode: str) -> str:
    """``VACUUM ANALYZE`` (or ``ANALYZE``) one table; returns the statement run ("" for ``none``).

    PostgreSQL refuses VACUUM inside a transaction block, so the statement goes through a
    connection of its own in autocommit, whatever the caller's transaction state. SQLite has no
    per-table VACUUM (its VACUUM rewrites the whole file under an exclusive lock): ``ANALYZE`` of
    the table is what it gets, on the usual connection.
    """
    if mode == "none":
        return ""
    if connection.vendor != "postgresql":
        statement = f"ANALYZE {table(model)}"
        with connection.cursor() as cursor:
            cursor.execute(statement)
        return statement
    statement = f"{'VACUUM ANALYZE' if mode == 'vacuum_analyze' else 'ANALYZE'} {table(model)}"
    own = connections.create_connection(connection.alias)
    try:
        own.set_autocommit(True)
        with own.cursor() as cursor:
            cursor.execute(statement)
    finally:
        own.close()
    return statement
