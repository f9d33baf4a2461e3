"""reportingAggregates — Reporting aggregates.

Why it exists: reports, the KPI page and KPI sharing read per-day figures; counting them from the
logs at read time would scan millions of rows per report. This workflow keeps one DeliveryAggregate
row per (day, delivery, channel) and rewrites only the (day, delivery) pairs that changed since its
last run. The figures are those of the platform's indicator table (``campaign.indicators``; the
email table for email and SMS, the push table for push), per day.

What a day is (local days of the instance time zone, ``settings.TIME_ZONE``, DST included):

- message counters (``delivered`` = logs in status 1, ``bounces`` = status 2, ``sent`` = both;
  ``hard_bounces``, ``soft_bounces``, ``on_denylist``, ``rejected``, ``quarantine`` among the
  bounces) count on the day of the log's ``created_at``: the send day. It never changes, so a status
  that arrives later (a bounce two days after the send) updates the send day's row, and no row ever
  has to be moved from one day to another;
- the send day's **cohort** counters count what the recipients of the messages delivered that day
  did, whenever they did it (``cohort_opens`` = the Open formula over their tracking rows,
  ``cohort_unique_opens``, ``cohort_clicks``, ``cohort_unique_clicks``, ``cohort_unsubscribes``,
  ``cohort_mirror_pages``): the numerators of the per-day rates over ``delivered``, so a rate over
  unique recipients never exceeds 100 %;
- tracking counters count on the day of the tracking row's ``tracked_at``: ``opens`` (the Open
  formula over that day's rows), ``unique_opens``, ``clicks``, ``unique_clicks``, ``unsubscribes``,
  ``mirror_pages``, ``impressions``. A recipient who opens on two days is unique on each of them,
  so unique counts do not add up over days (the delivery's own indicators hold the overall ones).

The two halves of a row change for different reasons, so they are recomputed separately, each
from all of its own source rows, in two phases of a *pass*:

1. messages: for each delivery with a log updated, or a tracking row added, since the last pass,
   the message and cohort counters of the send days of those logs, from all the delivery's logs of
   those days and their tracking rows (batches of deliveries; the logs of a delivery sit together,
   so this reads them in heap order through the delivery index);
2. tracking: for each local day with a tracking row added since the last pass, the tracking
   counters of every delivery tracked that day, from all that day's tracking rows (batches of days;
   tracking rows are appended in ``tracked_at`` order, so a day range is read in heap order through
   the ``tracked_at`` index).

A pass small enough for one batch of each phase (the usual daily run) does both in one batch, one
transaction. A first pass (no cursor yet) recomputes every delivery, then every day: about the cost
of one ``INSERT … SELECT`` over both tables.

Invariants:

- Recomputed, never incremented: rerunning, or recomputing a pair twice, changes nothing. A row whose
  counters are unchanged is not rewritten (``updated_at`` says when its counters last changed). A
  row exists once some counter was non-zero; a pair whose counters fell back to zero is updated to
  zeros, never deleted nor left stale.
- "Changed" = a DeliveryLog with ``updated_at`` after the timestamp cursor (updateDeliveryExecInfo
  sets it on every change) or a TrackingLog with an id after the id cursor (append-only, written by
  that one workflow, one batch at a time, so ids become visible in order): the first changes its
  send day's message half, the second its tracking day's tracking half and its log's send day's
  message half (the cohort). The timestamp cursor is
  left ``CHANGE_MARGIN`` behind the start of the previous pass, so a log whose transaction committed
  after that start with an earlier ``updated_at`` is still seen; seeing it twice is harmless.
- A pass fixes its window (cursor → now) when it starts; each batch's upsert commits with the
  cursor, which records the last delivery or day done, so a crash or a pause resumes the same pass;
  the window moves on with the pass's last batch.
- Message rows whose logs are gone (purged by cleanup) are never recomputed: the figures computed
  earlier stay as they are, as the delivery indicators do.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db import connection
from django.db.models import Max, Min
from django.utils import timezone

from campaign.indicators import CLICK_URL_TYPES, OPEN_EVIDENCE_URL_TYPES
from campaign.models import (
    Channel,
    Delivery,
    DeliveryAggregate,
    DeliveryLog,
    FailureReason,
    FailureType,
    LogStatus,
    Quarantine,
    TrackingLog,
    UrlType,
)
from workflows.context import ActivityContext, Batch
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.properties import DurationProperty, IntegerProperty
from workflows.sql import db_date, db_datetime

#: How far behind the start of the previous pass the next one looks for updated logs. A writer
#: stamps ``updated_at`` before its transaction commits; any transaction shorter than this is seen.
CHANGE_MARGIN = timedelta(minutes=5)

#: Deliveries per messages batch (one statement, one transaction). A batch reads every sent or
#: bounced log of its deliveries and their tracking rows (the cohort): at ~5,000 messages per
#: delivery, 100 deliveries is ~500,000 logs and as many tracking rows, under a second on
#: PostgreSQL. Fewer, larger batches cost less in per-batch bookkeeping (a dozen statements each:
#: lease, state, cursor, counters).
DEFAULT_DELIVERIES_PER_BATCH = 100
#: Days per tracking batch (one statement, one transaction): two weeks of tracking rows of an
#: instance tracking ~10,000 hits a day is ~150,000 rows, about 0.2 s. A batch reads every
#: tracking row of its days.
DEFAULT_DAYS_PER_BATCH = 14

#: Padding of the UTC range pre-filtering a day's tracking rows: more than any zone's DST shift at
#: midnight. The exact day is then cut by the SQL day expression.
DAY_RANGE_PADDING = timedelta(hours=3)

#: The workflow's one cursor in ``Workflow.cursors``, written by every batch (one statement):
#: ``{"logs_updated_after": ISO timestamp or None (before the first pass), "tracking_id_after": id,
#: "pass": the pass in progress (see new_pass) or None}``.
CURSOR = "changes"
NO_CURSOR = {"logs_updated_after": None, "tracking_id_after": 0, "pass": None}

PHASE_MESSAGES, PHASE_TRACKING = "messages", "tracking"

MESSAGE_STATUSES = (LogStatus.SENT, LogStatus.FAILED)

#: The counters, and the half of the row each belongs to: the messages half (send day, cohort
#: included) and the tracking half (tracking day).
MESSAGE_COUNTERS = ("sent", "delivered", "bounces", "hard_bounces", "soft_bounces", "on_denylist", "rejected",
                    "quarantine", "cohort_opens", "cohort_unique_opens", "cohort_clicks", "cohort_unique_clicks",
                    "cohort_unsubscribes", "cohort_mirror_pages")
TRACKING_COUNTERS = ("opens", "unique_opens", "clicks", "unique_clicks", "unsubscribes", "mirror_pages", "impressions")
COUNTERS = MESSAGE_COUNTERS + TRACKING_COUNTERS


# -- days ------------------------------------------------------------------------------------------
def _local_day_sql(column: str, params: dict[str, Any]) -> str:
    """SQL for the local calendar day of a timestamp column, in the instance time zone.

    The backend's own expression (PostgreSQL ``AT TIME ZONE``; on SQLite the function Django
    registers, which converts with zoneinfo), so both databases agree on DST days.
    """
    sql, values = connection.ops.datetime_cast_date_sql(column, (), timezone.get_default_timezone_name())
    for index, value in enumerate(values):
        name = f"day_tz_{index}"
        sql = sql.replace("%s", f"%({name})s", 1)
        params[name] = value
    return sql


def local_day(moment: datetime) -> date:
    return timezone.localtime(moment, timezone.get_default_timezone()).date()


def utc_ranges(days: Sequence[date]) -> list[tuple[datetime, datetime]]:
    """Padded UTC ranges covering these local days, consecutive days merged (a pre-filter only)."""
    zone = timezone.get_default_timezone()
    ranges: list[tuple[datetime, datetime]] = []
    for day in sorted(days):
        start = datetime.combine(day, time.min, tzinfo=zone) - DAY_RANGE_PADDING
        end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=zone) + DAY_RANGE_PADDING
        if ranges and start <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


# -- the two upserts -------------------------------------------------------------------------------
def _in_list(values: Sequence[int]) -> str:
    return ", ".join(str(int(value)) for value in values)


def _upsert_clause(counters: Sequence[str]) -> str:
    table = DeliveryAggregate._meta.db_table
    assignments = ", ".join(f"{name} = excluded.{name}" for name in (*counters, "updated_at"))
    changed = " OR ".join(f"{table}.{name} <> excluded.{name}" for name in counters)
    return f"ON CONFLICT (day, delivery_id, channel) DO UPDATE SET {assignments} WHERE {changed}"


def _opens_sql(counts: str) -> str:
    """The Open count from a CTE's ``open_rows``, ``pixel`` (logs with an open row) and ``opened``
    (logs with any proof of an open): the email table's formula, or the push table's (open rows)."""
    return (f"CASE WHEN delivery.channel = '{Channel.PUSH.value}' THEN COALESCE({counts}.open_rows, 0) "
            f"ELSE COALESCE({counts}.open_rows + {counts}.opened - {counts}.pixel, 0) END")


def _unique_opens_sql(counts: str) -> str:
    return (f"CASE WHEN delivery.channel = '{Channel.PUSH.value}' THEN COALESCE({counts}.pixel, 0) "
            f"ELSE COALESCE({counts}.opened, 0) END")


def _failed(condition: str) -> str:
    return f"SUM(CASE WHEN status = {LogStatus.FAILED} AND {condition} THEN 1 ELSE 0 END)"


def messages_upsert_sql(*, delivery_ids: Sequence[int], window: dict[str, Any] | None, now: datetime
                        ) -> tuple[str, dict[str, Any]]:
    """Recompute and upsert the message and cohort counters of these deliveries: of every day with
    sent or bounced logs (``window`` None), or of the send days of their logs updated, or tracked
    anew, in the window."""
    params: dict[str, Any] = {"now": db_datetime(now),
                              "quarantined": Quarantine.Status.QUARANTINED.value}
    ids = _in_list(delivery_ids)
    logs, tracking = DeliveryLog._meta.db_table, TrackingLog._meta.db_table
    aggregates, deliveries = DeliveryAggregate._meta.db_table, Delivery._meta.db_table
    log_day = _local_day_sql("created_at", params)
    if window is None:
        pairs = "SELECT day, delivery_id FROM message_counts"
    else:
        params["updated_after"] = db_datetime(datetime.fromisoformat(window["updated_after"]))
        params["updated_until"] = db_datetime(datetime.fromisoformat(window["updated_until"]))
        params["tracking_after"], params["tracking_until"] = window["tracking_after"], window["tracking_until"]
        tracked_log_day = _local_day_sql("l.created_at", params)
        pairs = (f"SELECT {log_day} AS day, delivery_id FROM {logs} WHERE delivery_id IN ({ids})"
                 " AND updated_at > %(updated_after)s AND updated_at <= %(updated_until)s"
                 f" UNION SELECT {tracked_log_day} AS day, l.delivery_id FROM {tracking} t"
                 f" JOIN {logs} l ON l.id = t.delivery_log_id"
                 f" WHERE t.id > %(tracking_after)s AND t.id <= %(tracking_until)s AND t.delivery_id IN ({ids})")
    opening, clicking = _in_list(OPEN_EVIDENCE_URL_TYPES), _in_list(CLICK_URL_TYPES)
    joined_log_day = _local_day_sql("l.created_at", params)
    # Three reads of the deliveries' logs, each through the index that fits it, cost less than one
    # materialised set of them read three times: the counts (every sent or bounced log), the
    # quarantined addresses (failed logs only), the cohort (delivered logs joined to their tracking).
    sql = f"""
        WITH message_counts AS (
            SELECT {log_day} AS day, delivery_id, COUNT(*) AS sent,
                   SUM(CASE WHEN status = {LogStatus.SENT} THEN 1 ELSE 0 END) AS delivered,
                   SUM(CASE WHEN status = {LogStatus.FAILED} THEN 1 ELSE 0 END) AS bounces,
                   {_failed(f"failure_type = {FailureType.HARD}")} AS hard_bounces,
                   {_failed(f"failure_type = {FailureType.SOFT}")} AS soft_bounces,
                   {_failed(f"failure_reason = {FailureReason.ON_DENYLIST} AND failure_type = {FailureType.HARD}")}
                       AS on_denylist,
                   {_failed(f"failure_reason = {FailureReason.REFUSED} AND failure_type = {FailureType.HARD}")} AS rejected
            FROM {logs} WHERE delivery_id IN ({ids}) AND status IN ({_in_list(MESSAGE_STATUSES)})
            GROUP BY 1, 2
        ), quarantined AS (
            SELECT {joined_log_day} AS day, l.delivery_id, COUNT(*) AS quarantine
            FROM {logs} AS l
            JOIN {deliveries} AS ld ON ld.id = l.delivery_id
            JOIN {Quarantine._meta.db_table} AS q
                ON q.address = l.address AND q.channel = ld.channel AND q.status = %(quarantined)s
            WHERE l.delivery_id IN ({ids}) AND l.status = {LogStatus.FAILED}
            GROUP BY 1, 2
        ), cohort_counts AS (
            -- What the recipients of each day's delivered messages did, whenever they did it.
            SELECT {joined_log_day} AS day, l.delivery_id,
                   SUM(CASE WHEN t.url_type = {UrlType.OPEN} THEN 1 ELSE 0 END) AS open_rows,
                   COUNT(DISTINCT CASE WHEN t.url_type = {UrlType.OPEN} THEN l.id END) AS pixel,
                   COUNT(DISTINCT CASE WHEN t.url_type IN ({opening}) THEN l.id END) AS opened,
                   SUM(CASE WHEN t.url_type IN ({clicking}) THEN 1 ELSE 0 END) AS clicks,
                   COUNT(DISTINCT CASE WHEN t.url_type IN ({clicking}) THEN l.id END) AS clicked,
                   COUNT(DISTINCT CASE WHEN t.url_type = {UrlType.OPT_OUT} THEN l.id END) AS unsubscribed,
                   COUNT(DISTINCT CASE WHEN t.url_type = {UrlType.MIRROR_PAGE} THEN l.id END) AS mirrored
            FROM {tracking} AS t JOIN {logs} AS l ON l.id = t.delivery_log_id
            WHERE t.delivery_id IN ({ids}) AND l.delivery_id IN ({ids}) AND l.status = {LogStatus.SENT}
            GROUP BY 1, 2
        ), pairs AS ({pairs})
        INSERT INTO {aggregates} (day, delivery_id, channel, {", ".join(COUNTERS)}, updated_at)
        SELECT pairs.day, pairs.delivery_id, delivery.channel,
               {", ".join(f"COALESCE(m.{name}, 0)" for name in MESSAGE_COUNTERS[:7])}, COALESCE(q.quarantine, 0),
               {_opens_sql("c")}, {_unique_opens_sql("c")}, COALESCE(c.clicks, 0), COALESCE(c.clicked, 0),
               COALESCE(c.unsubscribed, 0), COALESCE(c.mirrored, 0),
               {", ".join("0" for _ in TRACKING_COUNTERS)}, %(now)s
        FROM pairs
        JOIN {deliveries} AS delivery ON delivery.id = pairs.delivery_id
        LEFT JOIN message_counts AS m ON m.day = pairs.day AND m.delivery_id = pairs.delivery_id
        LEFT JOIN quarantined AS q ON q.day = pairs.day AND q.delivery_id = pairs.delivery_id
        LEFT JOIN cohort_counts AS c ON c.day = pairs.day AND c.delivery_id = pairs.delivery_id
        WHERE COALESCE(m.sent, 0) > 0
           OR EXISTS (SELECT 1 FROM {aggregates} AS existing
                      WHERE existing.day = pairs.day AND existing.delivery_id = pairs.delivery_id
                        AND existing.channel = delivery.channel)
        {_upsert_clause(MESSAGE_COUNTERS)}
    """
    return sql, params


def tracking_upsert_sql(*, days: Sequence[date], now: datetime) -> tuple[str, dict[str, Any]]:
    """Recompute and upsert the tracking counters of every delivery on these days: those with
    tracking rows, and those with a row showing tracking counters that no longer have any."""
    params: dict[str, Any] = {"now": db_datetime(now)}
    tracking, aggregates = TrackingLog._meta.db_table, DeliveryAggregate._meta.db_table
    tracking_day = _local_day_sql("tracked_at", params)
    ranges = []
    for index, (start, end) in enumerate(utc_ranges(days)):
        params[f"from_{index}"] = db_datetime(start)
        params[f"to_{index}"] = db_datetime(end)
        ranges.append(f"(tracked_at >= %(from_{index})s AND tracked_at < %(to_{index})s)")
    for index, day in enumerate(days):
        params[f"day_{index}"] = db_date(day)
    day_list = ", ".join(f"%(day_{index})s" for index in range(len(days)))
    some_tracking = " OR ".join(f"{name} > 0" for name in TRACKING_COUNTERS)
    opening, clicking = _in_list(OPEN_EVIDENCE_URL_TYPES), _in_list(CLICK_URL_TYPES)
    sql = f"""
        WITH tracking_counts AS (
            SELECT day, delivery_id, COUNT(*) AS hits,
                   SUM(CASE WHEN url_type = {UrlType.OPEN} THEN 1 ELSE 0 END) AS open_rows,
                   COUNT(DISTINCT CASE WHEN url_type = {UrlType.OPEN} THEN delivery_log_id END) AS pixel,
                   COUNT(DISTINCT CASE WHEN url_type IN ({opening}) THEN delivery_log_id END) AS opened,
                   SUM(CASE WHEN url_type IN ({clicking}) THEN 1 ELSE 0 END) AS clicks,
                   COUNT(DISTINCT CASE WHEN url_type IN ({clicking}) THEN delivery_log_id END) AS unique_clicks,
                   SUM(CASE WHEN url_type = {UrlType.OPT_OUT} THEN 1 ELSE 0 END) AS unsubscribes,
                   SUM(CASE WHEN url_type = {UrlType.MIRROR_PAGE} THEN 1 ELSE 0 END) AS mirror_pages,
                   SUM(CASE WHEN url_type = {UrlType.IMPRESSION} THEN 1 ELSE 0 END) AS impressions
            FROM (SELECT {tracking_day} AS day, delivery_id, url_type, delivery_log_id FROM {tracking}
                  WHERE {" OR ".join(ranges)}) AS hits
            GROUP BY day, delivery_id
        ), pairs AS (
            -- The ranges' padding brings in parts of the neighbouring days: only whole days are kept.
            -- (Filtering here rather than in the scan keeps the planner's estimate of the range right.)
            SELECT day, delivery_id FROM tracking_counts WHERE day IN ({day_list}) AND hits > 0
            UNION
            SELECT day, delivery_id FROM {aggregates} WHERE day IN ({day_list}) AND ({some_tracking})
        )
        INSERT INTO {aggregates} (day, delivery_id, channel, {", ".join(COUNTERS)}, updated_at)
        SELECT pairs.day, pairs.delivery_id, delivery.channel, {", ".join("0" for _ in MESSAGE_COUNTERS)},
               {_opens_sql("t")}, {_unique_opens_sql("t")},
               {", ".join(f"COALESCE(t.{name}, 0)" for name in TRACKING_COUNTERS[2:])}, %(now)s
        FROM pairs
        JOIN {Delivery._meta.db_table} AS delivery ON delivery.id = pairs.delivery_id
        LEFT JOIN tracking_counts AS t ON t.day = pairs.day AND t.delivery_id = pairs.delivery_id
        WHERE true  -- SQLite parses ON CONFLICT after INSERT … SELECT only when the SELECT has a WHERE
        {_upsert_clause(TRACKING_COUNTERS)}
    """
    return sql, params


def execute_upsert(sql: str, params: dict[str, Any]) -> int:
    """Run one upsert statement; returns the rows it inserted or updated."""
    if connection.vendor == "postgresql":
        # Sent with the statement, in one round trip; for this transaction only. Derived rows,
        # written with their cursor in one transaction: if the server crashes before this commit
        # reaches the disk, both are lost together and the next run redoes the batch.
        sql = f"SET LOCAL synchronous_commit = off; {sql}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if connection.vendor == "sqlite":
            cursor.execute("SELECT changes()")  # Python's sqlite3 has no rowcount for a WITH statement
            return cursor.fetchone()[0]
        return max(cursor.rowcount, 0)


def upsert_messages(*, delivery_ids: Sequence[int], window: dict[str, Any] | None, now: datetime) -> int:
    return execute_upsert(*messages_upsert_sql(delivery_ids=delivery_ids, window=window, now=now))


def upsert_tracking(*, days: Sequence[date], now: datetime) -> int:
    return execute_upsert(*tracking_upsert_sql(days=days, now=now))


# -- what a pass visits ----------------------------------------------------------------------------
def deliveries_to_visit(*, window: dict[str, Any] | None, after: int | None) -> list[int]:
    """Deliveries whose message counters a pass recomputes, in id order, after the last one done:
    those with a log updated in the window, or a tracking row added in it (its send day's cohort)."""
    if window is None:
        return list(Delivery.objects.filter(id__gt=after or 0).order_by("id").values_list("id", flat=True))
    changed = set(DeliveryLog.objects
                  .filter(updated_at__gt=datetime.fromisoformat(window["updated_after"]),
                          updated_at__lte=datetime.fromisoformat(window["updated_until"]), delivery_id__gt=after or 0)
                  .order_by().values_list("delivery_id", flat=True).distinct())
    changed.update(TrackingLog.objects
                   .filter(id__gt=window["tracking_after"], id__lte=window["tracking_until"], delivery_id__gt=after or 0)
                   .order_by().values_list("delivery_id", flat=True).distinct())
    return sorted(changed)


def days_to_visit(*, window: dict[str, Any] | None, after: str | None) -> list[date]:
    """Local days whose tracking counters a pass recomputes, in order, after the last one done."""
    last_done = date.fromisoformat(after) if after else date.min
    if window is None:
        span = TrackingLog.objects.aggregate(first=Min("tracked_at"), last=Max("tracked_at"))
        if span["first"] is None:
            return []
        first, last = local_day(span["first"]), local_day(span["last"])
        days = (first + timedelta(days=offset) for offset in range((last - first).days + 1))
        return [day for day in days if day > last_done]
    params: dict[str, Any] = {"after": window["tracking_after"], "until": window["tracking_until"]}
    day_sql = _local_day_sql("tracked_at", params)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT {day_sql} FROM {TrackingLog._meta.db_table} WHERE id > %(after)s AND id <= %(until)s",
                       params)
        days = {value if isinstance(value, date) else date.fromisoformat(value) for (value,) in cursor.fetchall()}
    return sorted(day for day in days if day > last_done)


def new_pass(cursor: dict[str, Any], *, now: datetime) -> dict[str, Any]:
    """A pass from the cursor up to now: logs updated until now, tracking rows up to the last id."""
    tracking_until = TrackingLog.objects.aggregate(last=Max("id"))["last"] or 0
    window = None
    if cursor["logs_updated_after"] is not None:
        window = {
            "updated_after": cursor["logs_updated_after"],
            "updated_until": now.isoformat(),
            "tracking_after": cursor["tracking_id_after"],
            "tracking_until": tracking_until,
        }
    return {"started_at": now.isoformat(), "tracking_until": tracking_until, "window": window,
            "phase": PHASE_MESSAGES, "after": None}


def closed(pass_state: dict[str, Any]) -> dict[str, Any]:
    """The cursor after a completed pass: the window moved past it, no pass in progress."""
    return {
        "logs_updated_after": (datetime.fromisoformat(pass_state["started_at"]) - CHANGE_MARGIN).isoformat(),
        "tracking_id_after": pass_state["tracking_until"],
        "pass": None,
    }


# -- the activity ----------------------------------------------------------------------------------
class PassRunner:
    """Runs the phases of one pass through ``ctx.batches``: a batch's upsert, the cursor (the pass's
    last unit done, or its next phase, or the pass closed) and the counters commit together."""

    def __init__(self, ctx: ActivityContext, cursor: dict[str, Any], pass_state: dict[str, Any], news: str) -> None:
        self.ctx, self.cursor, self.pass_state, self.news = ctx, cursor, pass_state, news
        self.journaled = False

    def journal_once(self) -> None:
        """One journal line per run, written in the run's first transaction."""
        if not self.journaled:
            self.ctx.log(self.news)
            self.journaled = True

    def run_phase(self, *, units: list[Any], upsert: Callable[[list[Any], dict[str, Any]], int], counter: str,
                  batch_size: int, next_pass: dict[str, Any] | None) -> None:
        """Upsert ``units`` in batches; the last batch moves the pass to ``next_pass`` (None: closes it)."""
        phase, done = self.pass_state["phase"], False
        after_phase = {**self.cursor, "pass": next_pass} if next_pass is not None else closed(self.pass_state)
        if not units:
            if next_pass is None:
                def close() -> None:
                    self.journal_once()
                    self.ctx.set_cursor(CURSOR, after_phase)

                self.ctx.unit(close)
            self.pass_state = next_pass
            return

        def step(cursor: dict[str, Any] | None, limit: int) -> Batch:
            nonlocal done
            if done:
                return Batch(rows=0, cursor=None)
            self.journal_once()
            current = (cursor or {}).get("pass") or {}
            if current.get("phase") != phase:  # this phase not recorded yet: this run's state
                current = self.pass_state
            start = 0 if current["after"] is None else bisect.bisect_right(units, _unit(current["after"], units[0]))
            batch = units[start:start + limit]
            counters = {counter: len(batch), "rows_written": upsert(batch, current)}
            if start + len(batch) >= len(units):
                done = True
                return Batch(rows=len(batch), cursor=after_phase, counters=counters)
            return Batch(rows=len(batch), cursor={**self.cursor, "pass": {**current, "after": _cursor_value(batch[-1])}},
                         counters=counters)

        self.ctx.batches(CURSOR, step, start=self.cursor, batch_size=batch_size)
        self.pass_state = next_pass

    def run_in_one_batch(self, *, deliveries: list[int], days: list[date]) -> None:
        """Both phases of a small pass (each within its batch size) in one batch, one transaction."""
        total = len(deliveries) + len(days)

        def step(cursor: dict[str, Any] | None, limit: int) -> Batch:
            self.journal_once()
            now = timezone.now()
            counters = {"rows_written": 0}
            if deliveries:
                counters["deliveries"] = len(deliveries)
                counters["rows_written"] += upsert_messages(delivery_ids=deliveries, window=self.pass_state["window"], now=now)
            if days:
                counters["tracking_days"] = len(days)
                counters["rows_written"] += upsert_tracking(days=days, now=now)
            return Batch(rows=total, cursor=closed(self.pass_state), counters=counters)

        self.ctx.batches(CURSOR, step, start=self.cursor, batch_size=total + 1)  # a short batch: the only one


def _cursor_value(unit: int | date) -> int | str:
    return unit.isoformat() if isinstance(unit, date) else unit


def _unit(value: int | str, like: int | date) -> int | date:
    return date.fromisoformat(value) if isinstance(like, date) else int(value)


def aggregate_changed_days(ctx: ActivityContext) -> None:
    cursor = {**NO_CURSOR, **(ctx.get_cursor(CURSOR) or {})}
    pass_state = cursor["pass"]
    if pass_state is None:  # a new pass is recorded by its first batch: a crash before loses nothing
        pass_state = new_pass(cursor, now=timezone.now())
        window = pass_state["window"]
        news = ("First pass (every delivery, every day)" if window is None else
                f"New pass: logs updated after {window['updated_after']}, tracking rows after id {window['tracking_after']}")
    else:
        news = f"Continuing the pass started at {pass_state['started_at']} ({pass_state['phase']}, after {pass_state['after']})"
    counting_messages = pass_state["phase"] == PHASE_MESSAGES
    deliveries = deliveries_to_visit(window=pass_state["window"], after=pass_state["after"]) if counting_messages else []
    days = days_to_visit(window=pass_state["window"], after=None if counting_messages else pass_state["after"])
    runner = PassRunner(ctx, cursor, pass_state, f"{news}: message counters of {len(deliveries)} deliveries and "
                                                 f"tracking counters of {len(days)} days to recount.")
    deliveries_per_batch, days_per_batch = ctx.properties["deliveries_per_batch"], ctx.properties["days_per_batch"]
    if counting_messages and (deliveries or days) and len(deliveries) <= deliveries_per_batch \
            and len(days) <= days_per_batch:
        runner.run_in_one_batch(deliveries=deliveries, days=days)  # the usual daily run: one transaction
        return
    if deliveries or days:
        ctx.set_progress_total(len(deliveries) + len(days))  # units: deliveries, then days
    if counting_messages:
        runner.run_phase(
            units=deliveries, counter="deliveries", batch_size=deliveries_per_batch,
            upsert=lambda batch, current: upsert_messages(delivery_ids=batch, window=current["window"], now=timezone.now()),
            next_pass={**pass_state, "phase": PHASE_TRACKING, "after": None},
        )
    runner.run_phase(
        units=days, counter="tracking_days", batch_size=days_per_batch,
        upsert=lambda batch, current: upsert_tracking(days=batch, now=timezone.now()), next_pass=None,
    )


definition = register(WorkflowDefinition(
    id="reportingAggregates",
    label="Reporting aggregates",
    description="Upserts the daily per-delivery aggregates for the days that changed since the last run.",
    schedule=Schedule("0 2 * * *"),
    activities=(aggregate_changed_days,),
    properties=(
        IntegerProperty(
            "deliveries_per_batch", DEFAULT_DELIVERIES_PER_BATCH, minimum=1, maximum=1000,
            help="Deliveries whose message counters are recomputed per batch (one transaction). A batch reads "
                 "every sent or bounced log of its deliveries and their tracking rows: lower it if deliveries are very large.",
        ),
        DurationProperty(
            "days_per_batch", DEFAULT_DAYS_PER_BATCH, minimum=1, maximum=366, unit="days",
            help="Days whose tracking counters are recomputed per batch (one transaction). A batch reads every "
                 "tracking row of its days.",
        ),
    ),
    batch_size=DEFAULT_DELIVERIES_PER_BATCH,
))
