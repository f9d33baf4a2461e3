"""mcSynch_local — Message Center local archiving.

Why it exists: the live Event table is what the event API writes and updateEventsStatus scans
every ten minutes; it must stay small. Once an event has reached a final status
(``campaign.models.FINAL_EVENT_STATUSES``) nothing will change it again, so after a delay it is
moved to EventHistory, where the admin still shows it and cleanup purges it on its own retention.

What "older than the delay" means: the event's ``processed_at`` (when it reached its final
status) is before ``now - delay_minutes``; an event with no ``processed_at`` (set to a final
status by hand, or by an older version of the routing) is aged on its ``created_at`` instead.
The cut-off and the highest event id are fixed when the activity starts, so a run has a bounded
amount of work: events that become old enough during the run wait for the next hourly run.

Invariants:

- **No event lost or duplicated.** A batch is one id range ``(after, up_to]`` of the live table
  and one transaction, in which every archivable event of the range is copied to EventHistory
  with its id, then deleted from Event. A crash anywhere rolls the whole batch back.
  On PostgreSQL it is one statement, ``WITH moved AS (DELETE ... RETURNING ...) INSERT INTO
  eventhistory SELECT ... FROM moved``: the rows inserted are exactly the rows deleted, as they were
  when deleted (an admin edit committed meanwhile is re-checked by the DELETE, so an event edited
  back to a non-final status stays live). On SQLite it is ``SELECT ... FOR UPDATE`` of the range's
  archivable ids, ``INSERT INTO eventhistory SELECT ... RETURNING id``, then a DELETE of exactly the
  ids the insert returned.
- **An event is in the archive at most once.** The archive keeps the event's id. On PostgreSQL the
  archive is partitioned by ``archived_at``, so no unique constraint can hold the id alone (one
  must include the partition key); both forms above therefore skip an event whose id is already
  archived (``NOT EXISTS`` on the archive's primary-key index, which leads with the id), and the
  DELETE's row locks keep two moves of the same event from both passing that test. If an id is
  somehow already there (a restore from backup, a hand-made row), the live event is *kept* rather
  than deleted on the strength of a row that may be another event; such events are counted as
  ``already_in_history`` and named in the journal for an operator to look at.
- **Keyset on Event.id within a run.** A batch is the id range from the first archivable event
  after the cursor to the ``batch_size``-th, both found by one primary-key range scan; so a batch
  moves ``batch_size`` events (the last one fewer), and a run reads the live table once whatever the share of
  archivable events in it (non-final ones, which stay, are stepped over in the same scan). Moved
  rows are deleted, so nothing needs remembering between runs: each run restarts its cursor at 0.
  Progress and batch sizes are counted in archivable events.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Exists, Max, OuterRef, Q, QuerySet
from django.utils import timezone

from campaign.models import FINAL_EVENT_STATUSES, Event, EventHistory
from workflows.context import ActivityContext, Batch
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.models import LogLevel
from workflows.properties import DurationProperty, IntegerProperty
from workflows.sql import db_datetime

#: Events moved per batch (one transaction): on PostgreSQL 5,000 events take a few tens of
#: milliseconds to copy and delete, so row locks are short, while the per-batch cost (cursor,
#: counters, lease check, commit) stays a small share of the run.
DEFAULT_BATCH_SIZE = 5_000

#: The longest delay accepted, in minutes (30 days): the live table must stay small, and cleanup
#: purges live events after ``events_days`` (30 by default) whether archived or not.
MAXIMUM_DELAY_MINUTES = 30 * 24 * 60

#: Cursor name in ``Workflow.cursors``: the highest Event id done by the run in progress.
CURSOR = "event_id"

#: How many ids a journal warning names when some are already archived.
WARN_IDS_SHOWN = 10


def archivable_events(*, cutoff: datetime) -> QuerySet[Event]:
    """Live events in a final status whose age (``processed_at``, else ``created_at``) is past ``cutoff``."""
    return Event.objects.filter(status__in=FINAL_EVENT_STATUSES).filter(
        Q(processed_at__lt=cutoff) | Q(processed_at__isnull=True, created_at__lt=cutoff)
    )


def archived_columns() -> list[str]:
    """The columns copied from Event to EventHistory: every EventHistory column but ``archived_at``
    (Event's own ``updated_at`` is not archived)."""
    return [field.column for field in EventHistory._meta.concrete_fields if field.name != "archived_at"]


def archive_range(*, after_id: int, up_to_id: int, cutoff: datetime, now: datetime) -> tuple[int, list[int]]:
    """Move the archivable events with ``after_id < id <= up_to_id``; call inside a transaction.
    Returns (events moved, ids left live because they are already in the archive)."""
    in_range = archivable_events(cutoff=cutoff).filter(id__gt=after_id, id__lte=up_to_id)
    if connection.vendor == "postgresql":
        moved = move_in_one_statement(after_id=after_id, up_to_id=up_to_id, cutoff=cutoff, now=now)
        archived = EventHistory.objects.filter(id=OuterRef("id"), id__gt=after_id, id__lte=up_to_id)
        skipped = in_range.filter(Exists(archived))
        return moved, list(skipped.order_by("id").values_list("id", flat=True))
    ids = list(in_range.order_by("id").select_for_update().values_list("id", flat=True))
    moved_ids = copy_to_history(ids, archived_at=now, after_id=after_id, up_to_id=up_to_id)
    delete_live(moved_ids)
    return len(moved_ids), sorted(set(ids) - set(moved_ids))


def not_archived(live_alias: str, *, after_id: int, up_to_id: int) -> str:
    """SQL: the live event ``live_alias`` has no row in the archive. The batch's id range, repeated
    on the archive, lets PostgreSQL read only that range of each archive partition's primary key
    (one range scan) instead of hashing the whole archive, which grows with every run."""
    return (f"NOT EXISTS (SELECT 1 FROM {EventHistory._meta.db_table} archived WHERE archived.id = {live_alias}.id "
            f"AND archived.id > {int(after_id)} AND archived.id <= {int(up_to_id)})")


def move_in_one_statement(*, after_id: int, up_to_id: int, cutoff: datetime, now: datetime) -> int:
    """PostgreSQL: delete the range's archivable events not archived yet and insert what was
    deleted, in one statement."""
    live = Event._meta.db_table
    columns = ", ".join(archived_columns())
    sql = (
        f"WITH moved AS (DELETE FROM {live} WHERE id > %s AND id <= %s AND status = ANY(%s) "
        f"AND (processed_at < %s OR (processed_at IS NULL AND created_at < %s)) "
        f"AND {not_archived(live, after_id=after_id, up_to_id=up_to_id)} "
        f"RETURNING {columns}) "
        f"INSERT INTO {EventHistory._meta.db_table} ({columns}, archived_at) SELECT {columns}, %s FROM moved"
    )
    params: list[Any] = [after_id, up_to_id, [str(status) for status in FINAL_EVENT_STATUSES], cutoff, cutoff, now]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def copy_to_history(ids: list[int], *, archived_at: datetime, after_id: int, up_to_id: int) -> list[int]:
    """``INSERT INTO eventhistory SELECT ... FROM event WHERE id IN (ids)``, skipping ids already
    archived; the ids actually inserted."""
    if not ids:
        return []
    history, live = EventHistory._meta.db_table, Event._meta.db_table
    columns = ", ".join(archived_columns())
    id_list = ", ".join(str(int(event_id)) for event_id in ids)  # ints from the database: no injection
    sql = (
        f"INSERT INTO {history} ({columns}, archived_at) "
        f"SELECT {columns}, %s FROM {live} WHERE id IN ({id_list}) "
        f"AND {not_archived(live, after_id=after_id, up_to_id=up_to_id)} RETURNING id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [db_datetime(archived_at)])
        return [row[0] for row in cursor.fetchall()]


def delete_live(ids: list[int]) -> None:
    if not ids:
        return
    id_list = ", ".join(str(int(event_id)) for event_id in ids)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {Event._meta.db_table} WHERE id IN ({id_list})")


def next_batch(*, after_id: int, highest_id: int, limit: int, cutoff: datetime) -> tuple[int | None, int | None]:
    """(first, end): the ids of the first and of the ``limit``-th archivable event after
    ``after_id`` (the keyset: one primary-key range scan from ``after_id``); ``end`` is None when
    fewer are left up to ``highest_id``, both are None when none is.

    The batch then starts just before ``first`` rather than at ``after_id``: each run walks from id
    0, so the first batch's range would otherwise cover every id ever archived, and the archive
    check, bounded to the range, would read the whole archive."""
    batch = archivable_events(cutoff=cutoff).filter(id__gt=after_id, id__lte=highest_id).order_by("id")
    sql, params = batch.values("id")[:limit].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT MIN(id), MAX(id), COUNT(*) FROM ({sql}) AS batch", params)
        first, last, found = cursor.fetchone()
    return first, (last if found == limit else None)


def archive_events(ctx: ActivityContext) -> None:
    now = timezone.now()
    cutoff = now - timedelta(minutes=ctx.properties["delay_minutes"])
    highest = Event.objects.aggregate(highest=Max("id"))["highest"]
    ctx.count("archived", 0)  # the counter exists even on a run with nothing to do
    if highest is None:
        ctx.log("No live event.")
        return
    ctx.unit(lambda: ctx.set_cursor(CURSOR, 0))  # deleted rows never come back: each run walks the live ids once
    kept_ids: list[int] = []  # the first few, for the journal
    kept_total = 0

    def step(cursor: int, limit: int) -> Batch:
        nonlocal kept_total
        first, batch_end = next_batch(after_id=cursor, highest_id=highest, limit=limit, cutoff=cutoff)
        if first is None:
            return Batch(rows=0, cursor=cursor)
        up_to = highest if batch_end is None else batch_end
        moved, kept = archive_range(after_id=first - 1, up_to_id=up_to, cutoff=cutoff, now=timezone.now())
        counters = {"archived": moved}
        if kept:
            counters["already_in_history"] = len(kept)
            kept_total += len(kept)
            kept_ids.extend(kept[: WARN_IDS_SHOWN - len(kept_ids)])
        # A full batch is ``limit`` events; the last one (no limit-th event left) is what it found.
        return Batch(rows=limit if batch_end is not None else moved + len(kept), cursor=up_to, counters=counters)

    ctx.batches(CURSOR, step, batch_size=ctx.properties["batch_size"], throttle_s=ctx.properties["throttle_ms"] / 1000)
    if kept_total:
        shown = ", ".join(str(event_id) for event_id in kept_ids)
        more = f" and {kept_total - len(kept_ids)} more" if kept_total > len(kept_ids) else ""
        ctx.log(f"{kept_total} final events were left live because their id is already in the archive "
                f"(ids {shown}{more}); compare the two rows and delete the wrong one.", level=LogLevel.WARNING)
    ctx.log(f"{ctx.activity.counters['archived']} final events processed before {cutoff.isoformat(timespec='seconds')} "
            f"moved to the archive (live ids up to {highest} looked at).")


definition = register(WorkflowDefinition(
    id="mcSynch_local",
    label="Message Center local archiving",
    description="Moves processed real-time events older than the delay into the event history, in batches.",
    schedule=Schedule("0 * * * *"),
    activities=(archive_events,),
    properties=(
        DurationProperty("delay_minutes", 60, minimum=0, maximum=MAXIMUM_DELAY_MINUTES, unit="minutes",
                         help="Archive final events processed (else created) more than this many minutes ago."),
        IntegerProperty("batch_size", DEFAULT_BATCH_SIZE, minimum=1, maximum=100_000,
                        help="Events moved per transaction."),
        DurationProperty("throttle_ms", 0, minimum=0, maximum=60_000, unit="ms",
                         help="Pause between batches, to leave the database to other writers."),
    ),
    batch_size=DEFAULT_BATCH_SIZE,
    expire_s=3600,  # a late message is dropped: the next slot does the same work
))
