"""Benchmark case for mcSynch_local: moving final events older than the delay to the archive.

The data is a backlog of three days of events (as after the workflow was paused over a weekend),
ids in arrival order: about 87% of them final and processed more than an hour ago (to archive),
the rest pending, awaiting delivery, or processed in the last half hour (to keep). One final event
in twenty never got a ``processed_at`` and is aged on ``created_at``.

The increment (1% of the scale) is an hour of traffic that has since become old enough.

The SQL bound is the two statements an administrator would type: ``INSERT INTO eventhistory
SELECT ... WHERE <final and old>`` then ``DELETE FROM event WHERE <the same>``. The fingerprint
(counts and sums of both tables, archived rows per status) must come out the same.

The runner rolls the bound back, then runs the workflow on the same tables. A rolled-back INSERT
leaves its rows behind as dead tuples until a VACUUM, so the workflow would insert the very same ids
past 870,000 dead index entries, checking each (4 to 6 s of a 20 s run, measured). On PostgreSQL
the bound therefore starts with a TRUNCATE of the archive, which is empty at that point (the output
is unchanged): a rolled-back TRUNCATE puts the table's original, clean files back.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from campaign.bulk_load import load
from campaign.models import FINAL_EVENT_STATUSES, Event, EventHistory, EventStatus
from workflows.benchmarks import BenchmarkCase, register
from workflows.builtin.mc_synch_local import archived_columns

#: The workflow's default delay (property ``delay_minutes``).
DELAY = timedelta(minutes=60)
BACKLOG = timedelta(days=3)
#: The batch size measured (the workflow's default is 5,000; see ``properties``).
CATCH_UP_BATCH_SIZE = 20_000
#: Share of the events that arrived in the last half hour (kept live). Nothing arrives between
#: two hours and half an hour ago, so the SQL bound and the workflow, run minutes apart, agree on
#: which events are older than the delay.
RECENT_PERCENT = 3

EVENT_FIELDS = ("event_type", "channel", "payload", "email", "phone", "status", "template_id", "delivery_log_id",
                "created_at", "processed_at", "updated_at")

#: (status, share) of events; the final ones are processed within four minutes of their arrival.
STATUS_SHARES = (
    (EventStatus.SENT, 0.72),
    (EventStatus.DELIVERY_FAILED, 0.04),
    (EventStatus.IGNORED, 0.03),
    (EventStatus.NOT_TAKEN_INTO_ACCOUNT, 0.06),
    (EventStatus.TOO_OLD, 0.05),
    (EventStatus.PENDING_DELIVERY, 0.06),
    (EventStatus.PENDING, 0.04),
)
EVENT_TYPES = ("order_confirmation", "password_reset", "back_in_stock", "cart_reminder")


def _events(
    *, count: int, first: datetime, last: datetime, seed: int, statuses: tuple[tuple[str, float], ...],
) -> Iterator[tuple[Any, ...]]:
    """Event rows in ``EVENT_FIELDS`` order, arriving evenly from ``first`` to ``last``."""
    rng = random.Random(seed)
    names, weights = [status for status, _ in statuses], [share for _, share in statuses]
    span = (last - first).total_seconds()
    for index in range(count):
        created = first + timedelta(seconds=span * index / count)
        status = rng.choices(names, weights)[0]
        final = status in FINAL_EVENT_STATUSES
        processed = created + timedelta(seconds=rng.randint(1, 240)) if final and rng.random() > 0.05 else None
        channel = "sms" if rng.random() < 0.2 else "email"
        yield (
            rng.choice(EVENT_TYPES), channel,
            {"order": index, "amount": round(rng.uniform(5, 500), 2), "items": rng.randint(1, 9)},
            f"buyer{index % 50_000}@example.com" if channel == "email" else "",
            f"+336{index % 100_000_000:08d}" if channel == "sms" else "",
            status, None, rng.randint(1, 10_000_000) if status in (EventStatus.SENT, EventStatus.DELIVERY_FAILED) else None,
            created, processed, processed or created,
        )


class McSynchLocalCase(BenchmarkCase):
    workflow_id = "mcSynch_local"

    def populate(self, *, rows: int, seed: int) -> None:
        now = timezone.now()
        recent = max(1, rows * RECENT_PERCENT // 100)
        load(Event, EVENT_FIELDS, _events(count=rows - recent, first=now - BACKLOG, last=now - 2 * DELAY, seed=seed,
                                          statuses=STATUS_SHARES))
        load(Event, EVENT_FIELDS, _events(count=recent, first=now - DELAY / 2, last=now - timedelta(minutes=5),
                                          seed=seed + 1, statuses=STATUS_SHARES))

    def add_increment(self, *, rows: int, seed: int) -> None:
        now = timezone.now()
        final_only = tuple((status, share) for status, share in STATUS_SHARES if status in FINAL_EVENT_STATUSES)
        load(Event, EVENT_FIELDS, _events(count=rows, first=now - 3 * DELAY, last=now - 2 * DELAY, seed=seed,
                                          statuses=final_only))

    def properties(self) -> dict[str, Any]:
        """A backlog of a million events is what an operator catches up with larger batches: at
        20,000 events a batch still commits in well under a second, and the per-batch cost
        (commit, cursor, counters, lease check) is paid 44 times instead of 175."""
        return {"batch_size": CATCH_UP_BATCH_SIZE}

    def sql_bound(self) -> None:
        columns = ", ".join(archived_columns())
        statuses = ", ".join(f"'{status}'" for status in FINAL_EVENT_STATUSES)
        old_and_final = f"status IN ({statuses}) AND COALESCE(processed_at, created_at) < %s"
        now = timezone.now()
        cutoff = connection.ops.adapt_datetimefield_value(now - DELAY)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # The archive is empty here, so this changes no output; it makes the rollback that
                # follows restore the archive's files as they were, instead of leaving 870,000 dead
                # rows with the very ids the workflow inserts next (each insert would then check one).
                cursor.execute(f"TRUNCATE {EventHistory._meta.db_table}")
            cursor.execute(
                f"INSERT INTO {EventHistory._meta.db_table} ({columns}, archived_at) "
                f"SELECT {columns}, %s FROM {Event._meta.db_table} WHERE {old_and_final}",
                [connection.ops.adapt_datetimefield_value(now), cutoff],
            )
            cursor.execute(f"DELETE FROM {Event._meta.db_table} WHERE {old_and_final}", [cutoff])

    def fingerprint(self) -> Any:
        """Both tables' counts and id sums, and per archived status: count, ids, processed_at
        present, delivery logs, text lengths (payload included) and the range of arrival times."""
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*), COALESCE(SUM(id), 0) FROM {Event._meta.db_table}")
            live = cursor.fetchone()
            cursor.execute(
                f"SELECT status, COUNT(*), SUM(id), COUNT(processed_at), COALESCE(SUM(delivery_log_id), 0), "
                f"SUM(LENGTH(email) + LENGTH(phone) + LENGTH(event_type) + LENGTH(CAST(payload AS TEXT))), "
                f"MIN(created_at), MAX(created_at) "
                f"FROM {EventHistory._meta.db_table} GROUP BY status ORDER BY status"
            )
            archived = [tuple(str(value) for value in row) for row in cursor.fetchall()]
            cursor.execute(f"SELECT COUNT(*), COUNT(DISTINCT id) FROM {EventHistory._meta.db_table}")
            distinct = cursor.fetchone()
        return {"live": tuple(live), "archived": archived, "archive_ids": tuple(distinct)}


register(McSynchLocalCase())
