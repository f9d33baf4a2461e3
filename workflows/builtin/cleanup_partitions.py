"""Cleanup of the partitioned log tables: partitions kept ahead, and expired ones removed whole.

Why it exists: on PostgreSQL the log tables are range-partitioned by time
(:mod:`campaign.partitions`). Deleting a month of logs row by row costs time in proportion to its
rows, leaves dead index entries for VACUUM and competes with the day's writes; a partition whose
whole period is past retention can instead be detached, a catalogue change whatever its size, and
its table dropped. This module holds cleanup's first activity (partition maintenance), the
detaching of whole partitions that each log purge does before its row-by-row pass, and the
activity that drops the detached tables.

Invariants it keeps:

- **Only what the row purge would remove.** A partition goes whole only when the row purge would
  remove every row it holds: its period ends at or before the retention cutoff (so every row is
  older by the partition column); for DeliveryLog, whose retention reads ``updated_at`` rather than
  the ``created_at`` it is partitioned by, no row was updated since the cutoff; for the raw tables
  (SendingFeedback, TrackingHit, InboundSms), no row lies beyond updateDeliveryExecInfo's cursor, so
  a partition holding a row not yet consolidated stays. Both checks read one end of an index. The
  row purges do nothing else for the rows they delete (no archive, no quarantine release, no
  cascade: the logs point to each other without database constraints), so neither does this. The
  partition at the retention edge, and any partition failing a check, are left to the row purge.
- **One lease-fenced unit per partition.** The DETACH runs inside a unit of work
  (:mod:`workflows.context`), with its counters: a run that lost its lease commits nothing, and the
  partition stays attached. Its lock wait is bounded at one second
  (:data:`campaign.partitions.LOCK_TIMEOUT`), so a writer queued behind it waits little more than
  that; a partition whose lock is not had in time is journaled as a warning and purged row by row
  by the pass that follows. Once detached, its rows are out of the table, as a DELETE would leave
  them: what remains is to give back the space.
- **Detach now, drop once.** Dropping a table frees its files, which takes the system time in
  proportion to their size, and its commit waits for the disk. So the purges only detach, and one
  later activity drops every detached table, of all log tables, in one ``DROP TABLE``; that
  activity also drops what a crashed or busy run left detached. It comes before the purge of old
  deliveries: a detached table keeps its foreign keys to deliveries and profiles, which would
  refuse to let a delivery go.
- **Plain DETACH.** PostgreSQL refuses ``DETACH ... CONCURRENTLY`` on a table with a default
  partition, and every log table has one; the plain form's lock is held only for the catalogue
  change and the unit's bookkeeping.
- **Counts from the catalogue.** The rows of a detached partition are the planner's estimate
  (``pg_class.reltuples``), hence the counter ``<name>_partition_rows_estimated``; counting them
  exactly would read the whole partition, which is what detaching it avoids.
- **Dry run.** Reports the partitions that would go and their estimated rows, changes nothing, and
  the row purge's count then leaves their rows out (a row is counted once).

SQLite keeps plain tables: everything here does nothing there, and says so once in the journal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from django.db import OperationalError
from django.utils import timezone

from campaign import partitions
from campaign.partitions import Partition, PartitionedTable
from workflows.builtin import cleanup_purges as purges
from workflows.builtin.cleanup_retention import AgeRule, cutoff, dry_run
from workflows.builtin.update_delivery_exec_info import WORKFLOW_ID as EXEC_INFO_ID
from workflows.context import ActivityContext, cursors_of
from workflows.models import LogLevel


def partition_counters(ctx: ActivityContext, name: str) -> tuple[str, str]:
    """The counters of the partitions of rule ``name``: (partitions, their estimated rows)."""
    partitions_counter = f"{name}_partitions_to_detach" if dry_run(ctx) else f"{name}_partitions_detached"
    return partitions_counter, f"{name}_partition_rows_estimated"


# --------------------------------------------------------------------------------------------
# First activity: partitions ahead
# --------------------------------------------------------------------------------------------

def maintain(ctx: ActivityContext) -> None:
    """Partitions from the current period to three months ahead on every partitioned table, rows
    found in a default partition moved into theirs. A dry run changes nothing.

    Outside any unit of work, as the statistics step's VACUUM is: the creations are each their own
    short transaction (:func:`campaign.partitions.ensure_partitions`), safe to repeat and to run
    beside writers; only the counters commit as a unit, so a run that lost its lease records
    nothing.
    """
    if not partitions.enabled():
        ctx.log("No partitions to maintain: SQLite keeps the log tables as plain tables.")
        return
    if dry_run(ctx):
        ctx.log("Dry run: partitions left as they are.")
        return
    ctx.declare("partitions_created", "rows_moved_from_default")
    done = partitions.ensure_partitions()

    def record() -> None:
        ctx.count("partitions_created", len(done.created))
        ctx.count("rows_moved_from_default", done.rows_moved)

    ctx.unit(record)
    if done.created:
        ctx.log(f"Created {len(done.created)} partition(s): {', '.join(done.created)}"
                + (f"; moved {done.rows_moved:,} rows out of the default partitions into them." if done.rows_moved else "."))
    if done.busy:
        ctx.log(f"Could not lock within {partitions.LOCK_TIMEOUT}: {', '.join(done.busy)}; tried again at the next run.",
                level=LogLevel.WARNING)


# --------------------------------------------------------------------------------------------
# Expired partitions, removed whole
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    partition: Partition
    rows: int
    exact: bool


def detach_expired_partitions(ctx: ActivityContext, rule: AgeRule, *, cursor: str | None = None,
                              now: datetime | None = None) -> list[str]:
    """Detach the partitions of ``rule``'s table that the row purge would empty (see the module's
    invariants); ``cursor`` is updateDeliveryExecInfo's cursor bounding a raw table. Their tables
    are dropped later, by :func:`drop_detached`.

    Returns the partitions a dry run counted (the row purge's count must leave their rows out);
    after a real run there is nothing to leave out, the partitions are out of the table.
    """
    table = _partitioned(rule)
    if table is None:
        return []
    before = cutoff(now or timezone.now(), ctx.properties[rule.retention], what=rule.what)
    consolidated = None
    if cursor is not None:
        consolidated = consolidated_up_to(cursor)
        if consolidated is None:
            return []  # the row purge keeps every row and says why
    candidates = [found for part in partitions.expired_partitions(table.table, before)
                  if (found := _candidate(ctx, rule, table, part, before=before, consolidated=consolidated))]
    partitions_counter, rows_counter = partition_counters(ctx, rule.name)
    if not candidates:
        return []
    if dry_run(ctx):
        ctx.count(partitions_counter, len(candidates))  # read-only: saved with the activity's end
        ctx.count(rows_counter, sum(found.rows for found in candidates))
        _journal(ctx, rule, candidates, verb="Dry run: would detach")
        return [found.partition.name for found in candidates]
    started = time.perf_counter()
    detached = [found for found in candidates if _detach(ctx, rule, table, found)]
    if detached:
        _journal(ctx, rule, detached, verb="Detached",
                 timing=f" in {(time.perf_counter() - started) * 1000:.0f} ms; their tables are dropped by "
                        "drop_detached_partitions")
    return []


def consolidated_up_to(cursor: str) -> int | None:
    """updateDeliveryExecInfo's cursor ``cursor``: the last raw row it consolidated, or None."""
    value = cursors_of(EXEC_INFO_ID).get(cursor)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _partitioned(rule: AgeRule) -> PartitionedTable | None:
    if not partitions.enabled():
        return None
    table = next((table for table in partitions.PARTITIONED_TABLES if table.table == rule.model._meta.db_table), None)
    return table if table is not None and partitions.is_partitioned(table.table) else None


def _candidate(ctx: ActivityContext, rule: AgeRule, table: PartitionedTable, part: Partition, *,
               before: datetime, consolidated: int | None) -> Candidate | None:
    """``part`` with its estimated rows, if the row purge would remove every row of it; None (and
    why, in the journal) otherwise."""
    age_column = rule.model._meta.get_field(rule.age_field).column
    if age_column != table.column:
        newest = partitions.column_max(part.name, age_column)
        if newest is not None and newest >= before:
            ctx.log(f"Kept {part.name} whole: a row of it has {rule.age_field} {newest:%Y-%m-%d %H:%M:%S} UTC, within "
                    "retention; its expired rows are purged row by row.")
            return None
    if consolidated is not None:
        last_id = partitions.column_max(part.name, rule.model._meta.pk.column)
        if last_id is not None and last_id > consolidated:
            ctx.log(f"Kept {part.name} whole: it holds rows {EXEC_INFO_ID} has not consolidated yet (ids above "
                    f"{consolidated:,}); its consolidated rows are purged row by row.")
            return None
    rows, exact = partitions.estimated_rows(part.name)
    return Candidate(part, rows, exact)


def _detach(ctx: ActivityContext, rule: AgeRule, table: PartitionedTable, found: Candidate) -> bool:
    """Detach ``found`` in one fenced unit with its counters; False when its lock was not had in
    time (left attached, for the row purge)."""
    partitions_counter, rows_counter = partition_counters(ctx, rule.name)
    name = found.partition.name

    def detach() -> bool:
        # A server crash may lose this commit: the partition is then still attached, its counters
        # lost with it, and the next run detaches it again (see relax_durability).
        purges.relax_durability()
        try:
            partitions.detach(table.table, name)
        except OperationalError as error:
            if not partitions.is_busy(error):
                raise
            return False
        ctx.count(partitions_counter, 1)
        ctx.count(rows_counter, found.rows)
        ctx.advance(found.rows)
        return True

    if not ctx.unit(detach):
        ctx.log(f"Could not detach {name} within {partitions.LOCK_TIMEOUT} (busy): its rows are purged row by row "
                "instead.", level=LogLevel.WARNING)
        return False
    return True


def _journal(ctx: ActivityContext, rule: AgeRule, found: list[Candidate], *, verb: str, timing: str = "") -> None:
    rows = sum(one.rows for one in found)
    exact = all(one.exact for one in found)
    details = ", ".join(f"{one.partition.name} ({'' if one.exact else '~'}{one.rows:,})" for one in found)
    ctx.log(f"{verb} {len(found)} whole partition(s) of {rule.what}, {'' if exact else 'about '}{rows:,} rows"
            f"{'' if exact else ' (planner estimate)'}: {details}{timing}.")


# --------------------------------------------------------------------------------------------
# Detached tables, dropped together
# --------------------------------------------------------------------------------------------

def drop_detached(ctx: ActivityContext) -> None:
    """Drop every table detached from a log table: those the purges of this run detached, and any
    an earlier run left (a crash between the two, a drop that could not lock in time). One
    ``DROP TABLE`` of them all (:func:`campaign.partitions.drop`), so the commit waits for the disk
    once. A table that cannot be locked within the bounded wait is left, with a warning, for the
    next run. A dry run changes nothing and names what it would drop.

    Outside any unit of work, as the statistics step's VACUUM is: a detached table is part of no
    table any more, nobody reads or writes it, and dropping it late (or twice: ``IF EXISTS``) is
    harmless; only the counter commits as a unit, so a run that lost its lease records nothing.
    """
    if not partitions.enabled():
        ctx.log("No detached partitions to drop: SQLite keeps the log tables as plain tables.")
        return
    detached = partitions.detached_partitions()
    if dry_run(ctx):
        ctx.log(f"Dry run: would drop {len(detached)} detached table(s): {', '.join(detached)}." if detached
                else "Dry run: no detached table to drop.")
        return
    ctx.declare("detached_partitions_dropped")
    if not detached:
        return
    started = time.perf_counter()
    try:
        partitions.drop(*detached)
    except OperationalError as error:
        if not partitions.is_busy(error):
            raise
        ctx.log(f"Could not drop {', '.join(detached)} within {partitions.LOCK_TIMEOUT} (busy): their rows are out of "
                "the log tables already; the next run drops them.", level=LogLevel.WARNING)
        return
    spent = time.perf_counter() - started
    ctx.unit(lambda: ctx.count("detached_partitions_dropped", len(detached)))
    ctx.log(f"Dropped {len(detached)} detached table(s) in {spent * 1000:.0f} ms: {', '.join(detached)}.")
