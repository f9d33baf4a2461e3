"""updateDeliveryIndicators — Update delivery indicators.

Recomputes the indicator fields of the deliveries whose logs or tracking changed since the last
run, from the source rows (DeliveryLog, TrackingLog, and Quarantine for the failed logs' addresses),
never by adding increments: recomputing a delivery twice gives the same figures, so every batch is
safe to redo. The fields are the platform's published indicator tables — the email table for
email and SMS, the push table for push — with their formulas (``campaign.indicators`` holds the
codes they count; ``docs/workflows/updateDeliveryIndicators.md`` the table).

What "changed" means (the contract with updateDeliveryExecInfo, the only writer of both tables):
a DeliveryLog whose ``updated_at`` is after the timestamp watermark, or a TrackingLog whose ``id``
is after the id watermark. The work between two watermarks is a *pass*, kept in the workflow's
cursors so that an interrupted run (crash, pause, stop) is continued by the next one:

- ``pass``: the pass's window, written once when it opens: ``opened_at``, ``full``,
  ``logs_after`` (the timestamp watermark), ``tracking_after`` / ``tracking_until`` (the id range).
- ``pass_deliveries`` (full pass) / ``pass_changes`` (incremental pass): keyset positions.
- ``logs_updated_at`` / ``tracking_id``: the watermarks, moved when the pass closes (together with
  clearing ``pass``, in one transaction).

A *full* pass (first run, or ``recompute_all``) walks the Delivery table by id and recomputes
every delivery that has logs or tracking. An *incremental* pass walks the changed rows themselves
in keyset order — logs by ``(updated_at, id)``, then tracking by ``id`` — so its cost follows the
changed rows and the deliveries they belong to, not the size of the tables. A delivery met again
later in the same pass is not recomputed twice: its ``indicators_updated_at`` is already after
the pass opened, and anything that changed it since will be seen by the next pass.

Commit-order race: a log's ``updated_at`` is set before its transaction commits, so a run can miss
a row stamped just before it looked. The next timestamp watermark is therefore the pass's opening
time minus :data:`LOG_TIMESTAMP_SAFETY_MARGIN`; the few deliveries changed inside that margin are
recomputed once more, which is harmless. TrackingLog ids need no margin: their only writer runs
one batch at a time, so a visible id is never preceded by an id still in flight.

Each batch recomputes its deliveries, advances its keyset position and adds its counters in one
transaction (:meth:`ActivityContext.batches`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, Exists, Max, OuterRef, Q, QuerySet
from django.utils import timezone

from campaign.indicators import CLICK_URL_TYPES, OPEN_EVIDENCE_URL_TYPES, REASON_INDICATORS
from campaign.models import Channel, Delivery, DeliveryLog, FailureType, LogStatus, Quarantine, TrackingLog, UrlType
from campaign.rates import percent
from workflows.context import ActivityContext, Batch, BatchStep
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.properties import BooleanProperty, IntegerProperty
from workflows.sql import db_datetime, nth_key

#: How far before a pass's opening the next timestamp watermark is set. It must exceed the longest
#: transaction of updateDeliveryExecInfo (one batch: seconds) plus the clock skew between workers;
#: the cost is recomputing, once more, the deliveries changed within the margin.
LOG_TIMESTAMP_SAFETY_MARGIN = timedelta(minutes=5)

#: Source rows (logs + tracking rows) a full-pass batch aims to read. A delivery is recomputed
#: from all its rows at once, so the number of deliveries per batch adapts to their size as the
#: pass goes (deliveries of 2,500 messages: about 100 per batch; of 1,000,000: one). 500,000 rows
#: is about half a second of aggregation: few enough commits that they are noise, short enough a
#: transaction for the writers of those tables.
DEFAULT_SOURCE_ROWS_PER_BATCH = 500_000
#: The most a full-pass batch may be set to read: about ten seconds of aggregation, already a long
#: transaction for the writers of the log tables.
MAX_SOURCE_ROWS_PER_BATCH = 10_000_000
#: The size assumed for a delivery before any was measured (sizes the pass's first batch).
ASSUMED_ROWS_PER_DELIVERY = 5_000
#: At most this many deliveries per batch (the length of the IN lists), however small they are.
MAX_DELIVERIES_PER_BATCH = 1_000

#: Changed rows (logs, then tracking rows) read per batch in an incremental pass; the deliveries
#: they belong to, usually a handful, are recomputed in the same transaction. At most 30,000: the
#: ids of those deliveries go into IN lists, and SQLite takes at most 32,766 parameters.
DEFAULT_CHANGED_ROWS_PER_BATCH = 20_000

#: Indicator fields counted from the logs alone. A delivery whose logs were all purged keeps them.
LOG_FIELDS = (
    "to_deliver", "delivered", "bounces", "hard_bounces", "soft_bounces", "bounces_by_reason",
    *REASON_INDICATORS, "quarantine",
)
#: The fields this workflow owns on Delivery, all written by every recomputation.
INDICATOR_FIELDS = (
    "to_deliver", "sent", "delivered", "bounces", "hard_bounces", "soft_bounces", "bounces_by_reason",
    *REASON_INDICATORS, "quarantine",
    "opens", "unique_opens", "clicks", "unique_clicks", "unsubscribes", "mirror_pages", "impressions",
    "delivered_rate", "bounce_rate", "hard_bounce_rate", "soft_bounce_rate", "denylist_rate", "quarantine_rate",
    "rejected_rate", "open_rate", "unique_open_rate", "click_through_rate", "unsubscribe_rate", "mirror_page_rate",
    "reactivity", "indicators_updated_at",
)

#: Deliveries written per UPDATE statement (39 parameters each: well under SQLite's 32,766).
UPDATE_SLICE = 500

_HUNDRED_PERCENT = Decimal("100.00")
#: The largest value of the rate columns that may exceed 100 % (8 digits, 2 decimals).
_RATE_COLUMN_MAX = Decimal("999999.99")


def percentage(numerator: int, denominator: int) -> Decimal:
    """``numerator / denominator`` in percent, two decimals, rounded half up; 0 when the
    denominator is 0. For a share of the denominator (unique recipients, logs): capped at 100, as
    above it only comes from inconsistent source rows (tracking of a log since purged)."""
    return min(percent(numerator, denominator), _HUNDRED_PERCENT)


def event_percentage(numerator: int, denominator: int) -> Decimal:
    """The same for a count of repeated events over the delivered messages (the platform's Open
    rate, unsubscribe and mirror-page rates, a push's click-through): not a share, so it may exceed
    100; only bounded by its column."""
    return min(percent(numerator, denominator), _RATE_COLUMN_MAX)


# -- recomputation --------------------------------------------------------------------------------

@dataclass
class _LogCounts:
    logs: int = 0
    to_deliver: int = 0
    delivered: int = 0
    bounces: int = 0
    hard_bounces: int = 0
    soft_bounces: int = 0
    bounces_by_reason: dict[str, int] = field(default_factory=dict)
    by_indicator: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASON_INDICATORS, 0))
    quarantine: int = 0

    @classmethod
    def stored(cls, values: Sequence[Any]) -> _LogCounts:
        """The counts as stored on the delivery (``LOG_FIELDS`` order): kept when no log is left."""
        stored = dict(zip(LOG_FIELDS, values, strict=True))
        return cls(
            to_deliver=stored["to_deliver"], delivered=stored["delivered"], bounces=stored["bounces"],
            hard_bounces=stored["hard_bounces"], soft_bounces=stored["soft_bounces"],
            bounces_by_reason=stored["bounces_by_reason"], by_indicator={name: stored[name] for name in REASON_INDICATORS},
            quarantine=stored["quarantine"],
        )


@dataclass
class _TrackingCounts:
    """Per delivery, from its tracking rows."""

    rows: int = 0
    open_rows: int = 0  # rows of url type 2 (open pixel)
    pixel_openers: int = 0  # logs with a row of url type 2
    openers: int = 0  # logs with a row proving an open (OPEN_EVIDENCE_URL_TYPES)
    clicks: int = 0
    clickers: int = 0
    unsubscribes: int = 0
    mirror_pages: int = 0
    impressions: int = 0


def _log_counts(delivery_ids: Sequence[int]) -> dict[int, _LogCounts]:
    """One grouped scan of the deliveries' logs (a few groups per delivery), rolled up here."""
    groups = (
        DeliveryLog.objects.filter(delivery_id__in=delivery_ids)
        .order_by()
        .values_list("delivery_id", "status", "failure_type", "failure_reason")
        .annotate(logs=Count("*"))
    )
    counts: dict[int, _LogCounts] = defaultdict(_LogCounts)
    for delivery_id, status, failure_type, failure_reason, logs in groups:
        row = counts[delivery_id]
        row.logs += logs
        if status != LogStatus.IGNORED:
            row.to_deliver += logs
        if status == LogStatus.SENT:
            row.delivered += logs
        elif status == LogStatus.FAILED:
            row.bounces += logs
            if failure_type == FailureType.HARD:
                row.hard_bounces += logs
            elif failure_type == FailureType.SOFT:
                row.soft_bounces += logs
            reason = str(failure_reason)
            row.bounces_by_reason[reason] = row.bounces_by_reason.get(reason, 0) + logs
            for name, (code, required_type) in REASON_INDICATORS.items():
                if failure_reason == code and required_type in (None, failure_type):
                    row.by_indicator[name] += logs
    return counts


def _quarantined_counts(delivery_ids: Sequence[int]) -> dict[int, int]:
    """Failed logs whose address is in quarantine on the delivery's channel: a probe of the
    quarantine's (address, channel) index per failed log, read through the (delivery, status) index."""
    logs, deliveries, quarantine = (DeliveryLog._meta.db_table, Delivery._meta.db_table, Quarantine._meta.db_table)
    placeholders = ", ".join(["%s"] * len(delivery_ids))
    sql = f"""
        SELECT l.delivery_id, COUNT(*)
        FROM {logs} l
            JOIN {deliveries} d ON d.id = l.delivery_id
            JOIN {quarantine} q ON q.address = l.address AND q.channel = d.channel
        WHERE l.delivery_id IN ({placeholders}) AND l.status = {LogStatus.FAILED:d} AND q.status = %s
        GROUP BY l.delivery_id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [*delivery_ids, Quarantine.Status.QUARANTINED.value])
        return dict(cursor.fetchall())


def _tracking_counts(delivery_ids: Sequence[int]) -> dict[int, _TrackingCounts]:
    """Counts by type and distinct delivery logs, in one scan through the delivery-id index. Rows
    are counted by their ``delivery_id`` and the distinct counts by ``delivery_log_id``, so
    tracking of a purged log still counts. (Three COUNT(DISTINCT) in one grouped scan cost less
    than grouping by delivery log first: PostgreSQL sorts each delivery's few values in memory.)"""
    table = TrackingLog._meta.db_table
    placeholders = ", ".join(["%s"] * len(delivery_ids))
    opening = ", ".join(str(int(code)) for code in OPEN_EVIDENCE_URL_TYPES)
    clicking = ", ".join(str(int(code)) for code in CLICK_URL_TYPES)
    sql = f"""
        SELECT delivery_id, COUNT(*),
               SUM(CASE WHEN url_type = {UrlType.OPEN:d} THEN 1 ELSE 0 END),
               COUNT(DISTINCT CASE WHEN url_type = {UrlType.OPEN:d} THEN delivery_log_id END),
               COUNT(DISTINCT CASE WHEN url_type IN ({opening}) THEN delivery_log_id END),
               SUM(CASE WHEN url_type IN ({clicking}) THEN 1 ELSE 0 END),
               COUNT(DISTINCT CASE WHEN url_type IN ({clicking}) THEN delivery_log_id END),
               SUM(CASE WHEN url_type = {UrlType.OPT_OUT:d} THEN 1 ELSE 0 END),
               SUM(CASE WHEN url_type = {UrlType.MIRROR_PAGE:d} THEN 1 ELSE 0 END),
               SUM(CASE WHEN url_type = {UrlType.IMPRESSION:d} THEN 1 ELSE 0 END)
        FROM {table}
        WHERE delivery_id IN ({placeholders})
        GROUP BY delivery_id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, list(delivery_ids))
        return {row[0]: _TrackingCounts(*(int(value) for value in row[1:])) for row in cursor.fetchall()}


def _tracking_indicators(tracking: _TrackingCounts, *, channel: str) -> dict[str, int]:
    """The tracking-based counts of the platform's table: the email table (email and SMS), or
    the push table, which has no implied opens."""
    if channel == Channel.PUSH:
        opens, unique_opens = tracking.open_rows, tracking.pixel_openers
    else:
        opens = tracking.open_rows + tracking.openers - tracking.pixel_openers
        unique_opens = tracking.openers
    return {
        "opens": opens, "unique_opens": unique_opens, "clicks": tracking.clicks, "unique_clicks": tracking.clickers,
        "unsubscribes": tracking.unsubscribes, "mirror_pages": tracking.mirror_pages, "impressions": tracking.impressions,
    }


@dataclass(frozen=True)
class Recomputed:
    deliveries: int  # written (a delivery deleted meanwhile is skipped)
    source_rows: int  # logs and tracking rows read


def recompute_indicators(*, delivery_ids: Sequence[int], now: datetime) -> Recomputed:
    """Recompute every indicator field of these deliveries from their logs and tracking.

    A delivery with no log left (all purged by cleanup) keeps its log-based counts: indicators
    computed earlier stay as they were, only the tracking-based ones move.
    """
    if not delivery_ids:
        return Recomputed(deliveries=0, source_rows=0)
    log_counts = _log_counts(delivery_ids)
    quarantined = _quarantined_counts(delivery_ids)
    tracking_counts = _tracking_counts(delivery_ids)
    kept = Delivery.objects.filter(pk__in=delivery_ids).order_by("pk").values_list("pk", "channel", *LOG_FIELDS)
    rows = []
    for delivery_id, channel, *stored in kept:
        logs = log_counts.get(delivery_id)
        if logs is None:
            logs = _LogCounts.stored(stored)
        else:
            logs.quarantine = quarantined.get(delivery_id, 0)
        tracking = _tracking_indicators(tracking_counts.get(delivery_id, _TrackingCounts()), channel=channel)
        sent, delivered = logs.delivered + logs.bounces, logs.delivered
        push = channel == Channel.PUSH
        rows.append({
            "id": delivery_id,
            "to_deliver": logs.to_deliver,
            "sent": sent,
            "delivered": delivered,
            "bounces": logs.bounces,
            "hard_bounces": logs.hard_bounces,
            "soft_bounces": logs.soft_bounces,
            "bounces_by_reason": logs.bounces_by_reason,
            **logs.by_indicator,
            "quarantine": logs.quarantine,
            **tracking,
            "delivered_rate": percentage(delivered, sent),
            "bounce_rate": percentage(logs.bounces, sent),
            "hard_bounce_rate": percentage(logs.hard_bounces, sent),
            "soft_bounce_rate": percentage(logs.soft_bounces, sent),
            "denylist_rate": percentage(logs.by_indicator["on_denylist"], sent),
            "quarantine_rate": percentage(logs.quarantine, sent),
            "rejected_rate": percentage(logs.by_indicator["rejected"], sent),
            "open_rate": event_percentage(tracking["opens"], delivered),
            "unique_open_rate": percentage(tracking["unique_opens"], delivered),
            "click_through_rate": (event_percentage(tracking["clicks"], delivered) if push
                                   else percentage(tracking["unique_clicks"], delivered)),
            "unsubscribe_rate": event_percentage(tracking["unsubscribes"], delivered),
            "mirror_page_rate": event_percentage(tracking["mirror_pages"], delivered),
            "reactivity": percentage(tracking["unique_clicks"], tracking["unique_opens"]),
            "indicators_updated_at": now,
        })
    _write_indicators(rows)
    source_rows = sum(c.logs for c in log_counts.values()) + sum(c.rows for c in tracking_counts.values())
    return Recomputed(deliveries=len(rows), source_rows=source_rows)


def _write_indicators(rows: Sequence[dict[str, Any]]) -> None:
    """``UPDATE ... FROM (VALUES ...)``, one statement per slice of deliveries. (The ORM's
    bulk_update spends milliseconds of Python per row building CASE expressions: more than the
    aggregation before it.)"""
    table = Delivery._meta.db_table
    columns = ("id", *INDICATOR_FIELDS)
    as_json = "::jsonb" if connection.vendor == "postgresql" else ""
    assignments = ", ".join(
        f"{name} = v.{name}{as_json if name == 'bounces_by_reason' else ''}" for name in INDICATOR_FIELDS
    )
    row_placeholder = "(" + ", ".join(["%s"] * len(columns)) + ")"

    def value(row: dict[str, Any], name: str) -> Any:
        if name == "bounces_by_reason":
            return json.dumps(row[name], sort_keys=True)
        if name == "indicators_updated_at":
            return db_datetime(row[name])
        return row[name]

    with connection.cursor() as cursor:
        for start in range(0, len(rows), UPDATE_SLICE):
            chunk = rows[start:start + UPDATE_SLICE]
            cursor.execute(
                f"WITH v ({', '.join(columns)}) AS (VALUES {', '.join([row_placeholder] * len(chunk))}) "
                f"UPDATE {table} SET {assignments} FROM v WHERE {table}.id = v.id",
                [value(row, name) for row in chunk for name in columns],
            )


def _not_recomputed_since(delivery_ids: Iterable[int], moment: datetime) -> list[int]:
    """Those of ``delivery_ids`` whose indicators were not recomputed at or after ``moment``."""
    ids = sorted(set(delivery_ids))
    if not ids:
        return []
    return list(
        Delivery.objects.filter(pk__in=ids)
        .filter(Q(indicators_updated_at__isnull=True) | Q(indicators_updated_at__lt=moment))
        .order_by("pk").values_list("pk", flat=True)
    )


# -- passes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """What one pass covers; stored as the ``pass`` cursor while the pass is open."""

    opened_at: datetime
    full: bool
    logs_after: datetime | None
    tracking_after: int
    tracking_until: int

    def as_cursor(self) -> dict[str, Any]:
        return {
            "opened_at": self.opened_at.isoformat(),
            "full": self.full,
            "logs_after": self.logs_after.isoformat() if self.logs_after else None,
            "tracking_after": self.tracking_after,
            "tracking_until": self.tracking_until,
        }

    def first_changes(self) -> dict[str, Any]:
        """The incremental pass's starting position (see :func:`_changed_rows_step`)."""
        return {"logs": [self.logs_after.isoformat() if self.logs_after else None, 0], "tracking": self.tracking_after}

    @classmethod
    def from_cursor(cls, value: dict[str, Any]) -> Window:
        return cls(
            opened_at=datetime.fromisoformat(value["opened_at"]),
            full=bool(value["full"]),
            logs_after=datetime.fromisoformat(value["logs_after"]) if value["logs_after"] else None,
            tracking_after=int(value["tracking_after"]),
            tracking_until=int(value["tracking_until"]),
        )


def _open_pass(ctx: ActivityContext) -> Window:
    """Continue the pass an earlier run left open, or open the next one."""
    cursors = ctx.cursors()
    stored = cursors.get("pass")
    if stored and (stored["full"] or not ctx.properties["recompute_all"]):
        window = Window.from_cursor(stored)
        ctx.log(f"Continuing the pass opened at {window.opened_at.isoformat()}.")
        return window

    logs_watermark = cursors.get("logs_updated_at")
    window = Window(
        opened_at=timezone.now(),
        full=logs_watermark is None or ctx.properties["recompute_all"],
        logs_after=datetime.fromisoformat(logs_watermark) if logs_watermark else None,
        tracking_after=int(cursors.get("tracking_id") or 0),
        tracking_until=TrackingLog.objects.aggregate(last=Max("id"))["last"] or 0,
    )
    first_take = ctx.properties["source_rows_per_batch"] // ASSUMED_ROWS_PER_DELIVERY
    def open_pass() -> None:
        ctx.set_cursors({
            "pass": window.as_cursor(),
            "pass_deliveries": {"after": 0, "take": min(max(first_take, 1), MAX_DELIVERIES_PER_BATCH)},
            "pass_changes": window.first_changes(),
        })
        if window.full:
            ctx.log("Full pass: every delivery with logs or tracking.")
        else:
            ctx.log(f"Incremental pass: logs updated after {window.logs_after.isoformat()}, "
                    f"tracking rows {window.tracking_after + 1} to {window.tracking_until}.")

    ctx.unit(open_pass)
    return window


def _close_pass(ctx: ActivityContext, window: Window) -> None:
    """Move the watermarks past what the pass covered and clear it, in one write."""
    ctx.set_cursors({
        "logs_updated_at": (window.opened_at - LOG_TIMESTAMP_SAFETY_MARGIN).isoformat(),
        "tracking_id": window.tracking_until,
        "pass": None,
    })


def _every_delivery_step(rows_per_batch: int) -> BatchStep:
    """Full pass: the next deliveries, by id, that have logs or tracking, as many as should add up
    to ``rows_per_batch`` source rows judging by the size of those recomputed so far.

    Position: ``{"after": last delivery id, "take": deliveries for the next batch}``. Run with a
    limit of 1: every batch recomputes at least one delivery, and one that finds none ends the pass.
    """
    has_logs = Exists(DeliveryLog.objects.filter(delivery_id=OuterRef("pk")))
    has_tracking = Exists(TrackingLog.objects.filter(delivery_id=OuterRef("pk")))

    def step(position: dict[str, int], limit: int) -> Batch:
        take = position["take"]
        ids = list(
            Delivery.objects.filter(pk__gt=position["after"]).filter(has_logs | has_tracking)
            .order_by("pk").values_list("pk", flat=True)[:take]
        )
        done = recompute_indicators(delivery_ids=ids, now=timezone.now())
        if done.source_rows:
            take = round(len(ids) * rows_per_batch / done.source_rows)
        take = min(max(take, 1), MAX_DELIVERIES_PER_BATCH)
        return Batch(rows=len(ids), cursor={"after": ids[-1] if ids else position["after"], "take": take},
                     counters={"deliveries": done.deliveries})

    return step


def _next_batch(rest: QuerySet, order: tuple[str, ...], limit: int) -> tuple[dict[int, int], tuple[Any, ...] | None]:
    """The first ``limit`` rows of ``rest`` in ``order``: how many each delivery has, and the key
    of the last one when the batch is full (``None``: the batch drained ``rest``).

    The database groups the batch, so 20,000 changed rows cost one scan and a handful of result
    rows, not 20,000 rows to fetch and convert; only a full batch costs a second probe for its end.
    """
    ordered = rest.order_by(*order)
    sql, params = ordered.values("delivery_id")[:limit].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT delivery_id, COUNT(*) FROM ({sql}) batch GROUP BY delivery_id", params)
        counts = dict(cursor.fetchall())
    if sum(counts.values()) < limit:
        return counts, None
    return counts, nth_key(rest, limit, order)


def _changed_rows_step(window: Window) -> BatchStep:
    """Incremental pass: the window's changed logs in (updated_at, id) order, then its new
    tracking rows by id, ``limit`` rows a batch. A batch that drains the logs fills up with
    tracking rows, so a small pass is one batch and each of its deliveries is recomputed once.

    Position: ``{"logs": [updated_at, id] of the last log read, or null once they are drained,
    "tracking": id of the last tracking row read}``.
    """
    logs_in_window = DeliveryLog.objects.filter(updated_at__lte=window.opened_at)

    def step(position: dict[str, Any], limit: int) -> Batch:
        deliveries: dict[int, int] = {}
        logs, tracking = position["logs"], position["tracking"]
        changed_logs = new_tracking = 0
        if logs is not None:
            after_at, after_id = datetime.fromisoformat(logs[0]), int(logs[1])
            rest = logs_in_window.filter(updated_at__gte=after_at).filter(Q(updated_at__gt=after_at) | Q(pk__gt=after_id))
            deliveries, last = _next_batch(rest, ("updated_at", "pk"), limit)
            changed_logs = sum(deliveries.values())
            logs = [last[0].isoformat(), last[1]] if last else None
        if logs is None and changed_logs < limit:
            rest = TrackingLog.objects.filter(pk__gt=tracking, pk__lte=window.tracking_until)
            new, last = _next_batch(rest, ("pk",), limit - changed_logs)
            new_tracking = sum(new.values())
            tracking = last[0] if last else window.tracking_until
            deliveries.update(new)
        done = recompute_indicators(delivery_ids=_not_recomputed_since(deliveries, window.opened_at), now=timezone.now())
        rows = changed_logs + new_tracking
        return Batch(rows=rows, cursor={"logs": logs, "tracking": tracking}, done=rows < limit,
                     counters={"changed_logs": changed_logs, "new_tracking": new_tracking, "deliveries": done.deliveries})

    return step


def recompute_changed_deliveries(ctx: ActivityContext) -> None:
    """Open (or continue) a pass, recompute its deliveries batch by batch, close it."""
    window = _open_pass(ctx)
    if window.full:
        rows_per_batch = ctx.properties["source_rows_per_batch"]
        ctx.batches("pass_deliveries", _every_delivery_step(rows_per_batch), batch_size=1)
    else:
        ctx.batches("pass_changes", _changed_rows_step(window), start=window.first_changes(),
                    batch_size=ctx.properties["changed_rows_per_batch"])
    ctx.unit(lambda: _close_pass(ctx, window))


definition = register(WorkflowDefinition(
    id="updateDeliveryIndicators",
    label="Update delivery indicators",
    description="Recomputes the KPIs of the deliveries whose logs or tracking changed since the last run.",
    schedule=Schedule("0 * * * *"),
    activities=(recompute_changed_deliveries,),
    properties=(
        IntegerProperty(
            "source_rows_per_batch", DEFAULT_SOURCE_ROWS_PER_BATCH, minimum=1, maximum=MAX_SOURCE_ROWS_PER_BATCH, unit="rows",
            help="Full pass (first run, or recompute_all): logs and tracking rows read per transaction; "
                 "the number of deliveries per batch adapts to their size (at least one).",
        ),
        IntegerProperty(
            "changed_rows_per_batch", DEFAULT_CHANGED_ROWS_PER_BATCH, minimum=1, maximum=30_000, unit="rows",
            help="Changed delivery logs or new tracking rows read per transaction in an incremental pass; "
                 "their deliveries are recomputed in the same transaction.",
        ),
        BooleanProperty(
            "recompute_all", False,
            help="Recompute every delivery with logs or tracking, not only the changed ones "
                 "(e.g. once, with --set, after a data repair).",
        ),
    ),
    expire_s=3600,  # a late message is dropped: the next slot does the same work
))
