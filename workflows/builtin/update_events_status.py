"""updateEventsStatus — Update events status.

Routes pending real-time events to their published template and copies the delivery outcome back
to each event. Three activities, in this order:

1. ``expire_events``: a ``pending`` event older than ``expiry_hours`` becomes ``too_old``; it is
   never routed (its message would arrive too late to mean anything).
2. ``copy_delivery_outcomes``: a ``pending_delivery`` event whose delivery log reached a final
   status takes it: log 1 → ``sent``, 2 → ``delivery_failed``, 0 or 7 → ``ignored``.
3. ``route_events``: a ``pending`` event goes to the most recently published MessageTemplate of
   its event type and channel: its DeliveryLog (status 6, pending) is created on that template's
   execution delivery of the month, and it becomes ``pending_delivery``; with no published
   template it becomes ``not_taken_into_account``.

Copying runs before routing so that each run looks only at events routed by earlier runs: the
logs this run creates are pending anyway.

Why the copy walks ``pending_delivery`` events (by id) rather than delivery logs changed since a
cursor: events in ``pending_delivery`` are few at any time (the sending side finalises a log in
minutes, and mcSynch_local archives final events), while the changed logs of a 10-minute window
include every marketing message sent meanwhile. Reading the log's status directly also needs no
safety margin and does not depend on every log writer keeping ``updated_at`` exact. The price: an
event whose log stays pending (a sending backlog) is looked at again by every run until it is final.

Exactly once: every batch writes its effects and its cursor in one transaction (``ctx.batches``).
Each statement re-checks the event's status, so a rerun (or a batch replayed after a crash) finds
nothing left to do for the events already done. Routing claims its batch first (row locks on
PostgreSQL; SQLite has a single writer), inserts a log only for an event still ``pending`` without
one, and links it in the same transaction: an event never gets two logs.

Batches are id ranges (or, for expiry, ``(created_at, id)`` ranges) of the events in the status
concerned, and every cursor restarts at each run from where the work is (the lowest id in that
status): an event whose id is below ids already processed (a transaction that committed late, an
event set back to ``pending`` in the admin) is never left behind. An event that becomes visible
in the middle of a batch is left as it is, for the next batch or run, never misrouted.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import F
from django.utils import timezone

from campaign.models import Channel, Delivery, DeliveryLog, Event, EventStatus, LogStatus, MessageTemplate
from workflows.context import ActivityContext, Batch
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.properties import DurationProperty, IntegerProperty
from workflows.sql import db_datetime, from_db_datetime

#: Events routed or expired per batch. Each routed event costs a log insert and an event update:
#: 5,000 keeps a batch's transaction under a second (its row locks never block the event API,
#: which only inserts; on SQLite the API waits for the batch), while the per-batch overhead
#: (cursor, counters, lease check, template lookup) stays a few percent.
DEFAULT_BATCH_SIZE = 5_000

#: Events pending delivery checked per batch. Most of them are only read (their log is still
#: pending), so a batch can be larger for the same transaction time.
DEFAULT_CHECK_BATCH_SIZE = 20_000

#: Default age after which a pending event is too old to be sent: one day.
DEFAULT_EXPIRY_HOURS = 24

#: The event status a final delivery log status gives.
OUTCOMES = {
    LogStatus.SENT: EventStatus.SENT,
    LogStatus.FAILED: EventStatus.DELIVERY_FAILED,
    LogStatus.IGNORED: EventStatus.IGNORED,
    LogStatus.CANCELLED: EventStatus.IGNORED,
}

EVENTS = Event._meta.db_table
LOGS = DeliveryLog._meta.db_table
DELIVERIES = Delivery._meta.db_table


def _pairs_table(alias: str, *, with_delivery: bool) -> str:
    """A FROM item reading a JSON array of ``{"event_type", "channel"[, "delivery_id"]}`` (one
    ``%s`` parameter, whatever the number of pairs)."""
    if connection.vendor == "postgresql":
        columns = "event_type text, channel text" + (", delivery_id bigint" if with_delivery else "")
        return f"json_to_recordset(%s::json) AS {alias}({columns})"
    delivery = ", json_extract(value, '$.delivery_id') AS delivery_id" if with_delivery else ""
    return (f"(SELECT json_extract(value, '$.event_type') AS event_type, json_extract(value, '$.channel') AS channel"
            f"{delivery} FROM json_each(%s)) AS {alias}")


def _first_id(status: str) -> int:
    """The lowest id among the events in ``status``, minus one (0 when there is none): where a
    run's cursor starts. ``GROUP BY`` keeps PostgreSQL from reading it as "the first row of the
    primary key that has this status", a walk from the oldest event when those in the status are
    the newest; grouped, it reads the status index (or scans, when most events are in it)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT MIN(id) FROM {EVENTS} WHERE status = %s GROUP BY status", [status])
        row = cursor.fetchone()
    return row[0] - 1 if row else 0


def _next_range(status: str, after: int, limit: int, *, lock: bool = False) -> tuple[int, int]:
    """(how many, last id) of the next ``limit`` events in ``status`` after id ``after``; with
    ``lock``, those rows stay locked until the batch's transaction ends (PostgreSQL; SQLite has a
    single writer)."""
    lock_clause = " FOR UPDATE" if lock and connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*), MAX(id) FROM (SELECT id FROM {EVENTS} WHERE status = %s AND id > %s"
            f" ORDER BY id LIMIT %s{lock_clause}) AS batch",
            [status, after, limit],
        )
        count, last = cursor.fetchone()
    return count, last or after


# --- 1. expiry ----------------------------------------------------------------------------------


def expire_batch(*, after: list[Any] | None, cutoff: datetime, limit: int) -> Batch:
    """The next ``limit`` pending events created before ``cutoff``, in ``(created_at, id)`` order
    after ``after``, → ``too_old``.

    A keyset on the (status, created_at) index: each batch starts where the last one ended
    instead of walking again the index entries of the rows it already changed (which stay in the
    index until vacuumed).
    """
    now = db_datetime(timezone.now())
    position, parameters = "", []
    if after is not None:
        after_at = db_datetime(datetime.fromisoformat(after[0]))
        position = " AND created_at >= %s AND (created_at > %s OR id > %s)"
        parameters = [after_at, after_at, after[1]]
    sql = f"""
        UPDATE {EVENTS} SET status = %s, processed_at = %s, updated_at = %s
        WHERE status = %s AND id IN (
            SELECT id FROM {EVENTS} WHERE status = %s AND created_at < %s{position}
            ORDER BY created_at, id LIMIT %s
        )
        RETURNING created_at, id
    """
    with connection.cursor() as db:
        db.execute(sql, [EventStatus.TOO_OLD, now, now, EventStatus.PENDING, EventStatus.PENDING,
                         db_datetime(cutoff), *parameters, limit])
        expired = [(from_db_datetime(created_at), event_id) for created_at, event_id in db.fetchall()]
    if not expired:
        return Batch(rows=0, cursor=after)
    last_at, last_id = max(expired)
    return Batch(rows=len(expired), cursor=[last_at.isoformat(), last_id], counters={"too_old": len(expired)})


def expire_events(ctx: ActivityContext) -> None:
    """Pending events created before now - ``expiry_hours`` → ``too_old``."""
    cutoff = timezone.now() - timedelta(hours=ctx.properties["expiry_hours"])
    ctx.unit(lambda: ctx.set_cursor("expire", None))
    expired = ctx.batches("expire", lambda after, limit: expire_batch(after=after, cutoff=cutoff, limit=limit),
                          start=None, batch_size=ctx.properties["batch_size"])
    ctx.log(f"{expired} pending events created before {cutoff.isoformat()} are too old.")


# --- 2. delivery outcomes -----------------------------------------------------------------------


_OUTCOME_CASE = " ".join(f"WHEN {log_status} THEN '{event_status}'" for log_status, event_status in OUTCOMES.items())
_FINAL_LOG_STATUSES = ", ".join(str(int(status)) for status in OUTCOMES)


def copy_outcomes_batch(*, after: int, limit: int) -> Batch:
    """The next ``limit`` pending_delivery events after id ``after``: those whose log is final take
    its outcome.

    Most logs are still pending: each one is looked up by its primary key, and only the events
    whose log is final are touched (their status re-checked). On PostgreSQL it is one statement,
    the lookup written as a lateral subquery that the planner cannot turn into a hash join over
    every final log of the table; SQLite (nested loops only) gets the batch's ids as a JSON list.
    """
    outcome = f"CASE f.status {_OUTCOME_CASE} END"
    with connection.cursor() as db:
        if connection.vendor == "postgresql":
            db.execute(
                f"""
                WITH batch AS MATERIALIZED (
                    SELECT id, delivery_log_id FROM {EVENTS} WHERE status = %(status)s AND id > %(after)s
                    ORDER BY id LIMIT %(limit)s
                ), final AS MATERIALIZED (
                    SELECT b.id, b.delivery_log_id AS log_id, l.status FROM batch AS b
                    CROSS JOIN LATERAL (SELECT status FROM {LOGS} WHERE id = b.delivery_log_id OFFSET 0) AS l
                    WHERE l.status IN ({_FINAL_LOG_STATUSES})
                ), changed AS (
                    UPDATE {EVENTS} AS e SET status = {outcome}, processed_at = %(now)s, updated_at = %(now)s
                    FROM final AS f
                    WHERE e.id = ANY(ARRAY(SELECT id FROM final)) AND e.id = f.id
                        AND e.status = %(status)s AND e.delivery_log_id = f.log_id
                    RETURNING e.status
                )
                SELECT (SELECT COUNT(*) FROM batch), (SELECT MAX(id) FROM batch), changed.status, COUNT(*)
                FROM (SELECT 1) AS one LEFT JOIN changed ON true GROUP BY changed.status
                """,
                {"status": EventStatus.PENDING_DELIVERY, "after": after, "limit": limit,
                 "now": db_datetime(timezone.now())},
            )
            rows = db.fetchall()
            count, last = rows[0][0], rows[0][1]
            changed = {status: n for _, _, status, n in rows if status is not None}
        else:
            db.execute(
                f"SELECT id, delivery_log_id FROM {EVENTS} WHERE status = %s AND id > %s ORDER BY id LIMIT %s",
                [EventStatus.PENDING_DELIVERY, after, limit],
            )
            events = db.fetchall()
            count, last = len(events), events[-1][0] if events else after
            pairs = [[event_id, log_id] for event_id, log_id in events if log_id is not None]
            now = db_datetime(timezone.now())
            db.execute(
                f"""
                WITH final AS (
                    SELECT json_extract(p.value, '$[0]') AS id, l.id AS log_id, l.status
                    FROM json_each(%s) AS p JOIN {LOGS} AS l ON l.id = json_extract(p.value, '$[1]')
                    WHERE l.status IN ({_FINAL_LOG_STATUSES})
                )
                UPDATE {EVENTS} AS e SET status = {outcome}, processed_at = %s, updated_at = %s
                FROM final AS f
                WHERE e.id = f.id AND e.status = %s AND e.delivery_log_id = f.log_id
                RETURNING status
                """,
                [json.dumps(pairs), now, now, EventStatus.PENDING_DELIVERY],
            )
            statuses = [row[0] for row in db.fetchall()]
            changed = {status: statuses.count(status) for status in set(statuses)}
    if not count:
        return Batch(rows=0, cursor=after)
    return Batch(rows=count, cursor=last, counters={str(status): n for status, n in changed.items()})


def copy_delivery_outcomes(ctx: ActivityContext) -> None:
    """``pending_delivery`` events whose log is final take its outcome."""
    ctx.unit(lambda: ctx.set_cursor("outcomes", _first_id(EventStatus.PENDING_DELIVERY)))
    checked = ctx.batches("outcomes", lambda after, limit: copy_outcomes_batch(after=after, limit=limit),
                          batch_size=ctx.properties["check_batch_size"])
    counters = ctx.activity.counters
    ctx.log(
        f"Checked {checked} events pending delivery: {counters.get('sent', 0)} sent, "
        f"{counters.get('delivery_failed', 0)} failed, {counters.get('ignored', 0)} ignored."
    )


# --- 3. routing ---------------------------------------------------------------------------------


def month_bounds(moment: datetime) -> tuple[datetime, datetime]:
    """The month containing ``moment`` in the instance time zone, as aware [start, end)."""
    zone = timezone.get_default_timezone()
    local = timezone.localtime(moment, zone)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    following = (start + timedelta(days=32)).replace(day=1)
    # Made aware from the wall-clock fields, so that each bound gets its own UTC offset (a month
    # may start in winter time and end in summer time).
    return timezone.make_aware(start, zone), timezone.make_aware(following, zone)


class MonthDeliveries:
    """Each template's execution delivery of the month (instance time zone): found, or created,
    once per activity run. Lives only as long as the activity: a batch that fails (and takes back
    a delivery it created) fails the activity with it."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, datetime], int] = {}

    def get(self, template: MessageTemplate, *, now: datetime) -> tuple[int, bool]:
        """The delivery's id, and whether it was created just now."""
        start, end = month_bounds(now)
        key = (template.pk, start)
        if key in self._ids:
            return self._ids[key], False
        existing = (
            Delivery.objects.filter(template=template, kind=Delivery.Kind.TRANSACTIONAL,
                                    created_at__gte=start, created_at__lt=end)
            .order_by("id").values_list("id", flat=True).first()
        )
        created = existing is None
        if created:
            existing = Delivery.objects.create(
                label=f"{template.label} — {start:%Y-%m}", kind=Delivery.Kind.TRANSACTIONAL, template=template,
                channel=template.channel, state=Delivery.State.IN_PROGRESS, created_at=now, started_at=now,
            ).pk
        self._ids[key] = existing
        return existing, created


def reopen_deliveries(delivery_ids: list[int], *, now: datetime) -> int:
    """An execution delivery that updateDeliveryExecInfo finished (no log was pending) is in
    progress again when it gets a pending log."""
    return Delivery.objects.filter(pk__in=delivery_ids, state=Delivery.State.FINISHED).update(
        state=Delivery.State.IN_PROGRESS, finished_at=None, updated_at=now,
    )


def latest_templates(pairs: set[tuple[str, str]]) -> dict[tuple[str, str], MessageTemplate]:
    """The most recently published template of each (event type, channel) pair that has one; a
    published template without a publication time ranks last, ties go to the latest created."""
    chosen: dict[tuple[str, str], MessageTemplate] = {}
    candidates = (
        MessageTemplate.objects.filter(published=True, event_type__in={event_type for event_type, _ in pairs})
        .order_by("event_type", "channel", F("published_at").desc(nulls_last=True), "-id")
    )
    for template in candidates:
        pair = (template.event_type, template.channel)
        if pair in pairs and pair not in chosen:
            chosen[pair] = template
    return chosen


#: The log's address: the email or the phone, by channel; push takes whichever the event has.
_ADDRESS = (
    f"CASE e.channel WHEN '{Channel.EMAIL}' THEN e.email WHEN '{Channel.SMS}' THEN e.phone"
    " ELSE COALESCE(NULLIF(e.email, ''), e.phone) END"
)


def route_batch(*, after: int, limit: int, deliveries: MonthDeliveries | None = None) -> Batch:
    """The next ``limit`` pending events after id ``after`` get a log on their template's delivery
    of the month, or become ``not_taken_into_account``.

    The batch, an id range, is claimed first (its rows locked on PostgreSQL). Its (type, channel)
    pairs are looked up once; a log is inserted only for an event of the range still ``pending``
    without a log, and the next statement links exactly the logs inserted (their ids are above the
    largest id before the insert). Only events of the pairs known to have no template become
    ``not_taken_into_account``.
    """
    deliveries = deliveries or MonthDeliveries()
    count, last = _next_range(EventStatus.PENDING, after, limit, lock=True)
    if not count:
        return Batch(rows=0, cursor=after)
    now = timezone.now()
    stamp = db_datetime(now)
    pairs = set(
        Event.objects.filter(id__gt=after, id__lte=last, status=EventStatus.PENDING)
        .values_list("event_type", "channel").distinct()
    )
    templates = latest_templates(pairs)
    routes, created = [], 0
    for (event_type, channel), template in templates.items():
        delivery_id, is_new = deliveries.get(template, now=now)
        created += is_new
        routes.append({"event_type": event_type, "channel": channel, "delivery_id": delivery_id})
    unrouted = [{"event_type": event_type, "channel": channel} for event_type, channel in pairs - set(templates)]
    in_range = "e.id > %s AND e.id <= %s AND e.status = %s"

    routed = 0
    with connection.cursor() as db:
        if routes:
            reopen_deliveries([route["delivery_id"] for route in routes], now=now)
            db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {LOGS}")
            log_floor = db.fetchone()[0]
            db.execute(
                f"""
                INSERT INTO {LOGS} (delivery_id, profile_id, address, variant, event_id, status, failure_type,
                                    failure_reason, error_text, created_at, updated_at)
                SELECT r.delivery_id, NULL, {_ADDRESS}, '', e.id, {LogStatus.PENDING}, 0, 0, '', %s, %s
                FROM {EVENTS} AS e JOIN {_pairs_table('r', with_delivery=True)}
                    ON r.event_type = e.event_type AND r.channel = e.channel
                WHERE {in_range} AND e.delivery_log_id IS NULL
                ORDER BY e.id
                """,
                [stamp, stamp, json.dumps(routes), after, last, EventStatus.PENDING],
            )
            db.execute(
                f"""
                UPDATE {EVENTS} AS e
                SET status = %s, template_id = d.template_id, delivery_log_id = l.id, updated_at = %s
                FROM {LOGS} AS l JOIN {DELIVERIES} AS d ON d.id = l.delivery_id
                WHERE l.id > %s AND l.event_id = e.id AND e.status = %s
                """,
                [EventStatus.PENDING_DELIVERY, stamp, log_floor, EventStatus.PENDING],
            )
            routed = db.rowcount
        # What is still pending in the range: an event that already has a log (set back to pending
        # by hand) goes back to pending_delivery, never to a second log; an event of a pair with
        # no published template is not taken into account.
        no_template = (
            f" OR EXISTS (SELECT 1 FROM {_pairs_table('u', with_delivery=False)}"
            " WHERE u.event_type = e.event_type AND u.channel = e.channel)"
        ) if unrouted else ""
        db.execute(
            f"""
            UPDATE {EVENTS} AS e
            SET status = CASE WHEN e.delivery_log_id IS NULL THEN %s ELSE %s END,
                processed_at = CASE WHEN e.delivery_log_id IS NULL THEN %s ELSE e.processed_at END,
                updated_at = %s
            WHERE {in_range} AND (e.delivery_log_id IS NOT NULL{no_template})
            RETURNING {"e." if connection.vendor == "postgresql" else ""}status
            """,
            [EventStatus.NOT_TAKEN_INTO_ACCOUNT, EventStatus.PENDING_DELIVERY, stamp, stamp,
             after, last, EventStatus.PENDING, *([json.dumps(unrouted)] if unrouted else [])],
        )
        rest = [row[0] for row in db.fetchall()]
    counters = {"routed": routed, "relinked": rest.count(EventStatus.PENDING_DELIVERY),
                "not_taken_into_account": rest.count(EventStatus.NOT_TAKEN_INTO_ACCOUNT), "deliveries_created": created}
    return Batch(rows=count, cursor=last, counters={name: n for name, n in counters.items() if n})


def route_events(ctx: ActivityContext) -> None:
    """Pending events → a pending log on their template's delivery of the month, or
    ``not_taken_into_account`` when no published template matches."""
    deliveries = MonthDeliveries()
    ctx.unit(lambda: ctx.set_cursor("route", _first_id(EventStatus.PENDING)))
    processed = ctx.batches("route", lambda after, limit: route_batch(after=after, limit=limit, deliveries=deliveries),
                            batch_size=ctx.properties["batch_size"])
    counters = ctx.activity.counters
    ctx.log(
        f"Routed {counters.get('routed', 0)} of {processed} pending events; "
        f"{counters.get('not_taken_into_account', 0)} had no published template; "
        f"{counters.get('deliveries_created', 0)} execution deliveries created."
    )


definition = register(WorkflowDefinition(
    id="updateEventsStatus",
    label="Update events status",
    description="Routes pending real-time events to their published template and copies the delivery outcome back to each event.",
    schedule=Schedule("*/10 * * * *"),
    activities=(expire_events, copy_delivery_outcomes, route_events),
    properties=(
        DurationProperty("expiry_hours", DEFAULT_EXPIRY_HOURS, minimum=1, maximum=24 * 30, unit="hours",
                         help="A pending event older than this is not sent: it becomes too_old."),
        IntegerProperty("batch_size", DEFAULT_BATCH_SIZE, minimum=1, maximum=100_000,
                        help="Events expired or routed per batch (one transaction each)."),
        IntegerProperty("check_batch_size", DEFAULT_CHECK_BATCH_SIZE, minimum=1, maximum=200_000,
                        help="Events pending delivery checked per batch (one transaction each)."),
    ),
    expire_s=600,  # a late message is dropped: the next slot does the same work
))
