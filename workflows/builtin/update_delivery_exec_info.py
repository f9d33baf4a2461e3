"""updateDeliveryExecInfo — Update delivery execution.

Why it exists: the sending and tracking sides only ever append raw rows (SendingFeedback,
TrackingHit, InboundSms). Everything downstream — indicators, aggregates, reports, KPI sharing —
reads the consolidated logs, and this workflow is the *only* writer of DeliveryLog status and
failure fields and of TrackingLog rows. It also keeps the quarantine and the denylist (the rules of
an address's state are in :mod:`workflows.builtin.update_delivery_exec_info_quarantine`), the
opt-out blocklist and the delivery execution states.

Invariants it keeps:

- **Exactly once.** Each raw table is read through a cursor on its id, in bounded batches; a
  batch's effects (log updates, quarantine rows, tracking rows, blocklist flags), the advanced
  cursor and the counters commit as one unit of work (``ctx.batches``: one transaction, fenced by
  the run's lease), so a crash anywhere loses nothing and counts nothing twice, and a run that lost
  its lease commits nothing. Each activity stops at the highest id it saw when it began, so a busy
  sending side cannot keep a run going forever.
- **Delivery states need no cursor.** Cancelling the pending logs past their validity and
  finishing the deliveries that are done are conditional updates, idempotent by themselves: the
  cancellation runs in bounded cursor-less batches until a short one, the finishing in one unit,
  each committing with its counter.
- **Batch boundaries do not matter.** For a log, the last ``delivered`` or ``bounce`` feedback
  (highest id) wins, and ``deferred`` and ``complaint`` feedback never change it; the quarantine
  is replayed error by error (bounces, complaints, opt-out replies), in raw id order, from the
  state stored before the batch; the logs an address's denylisting fails are those still pending
  after the batch's own feedback, and a later answer about them wins as any later feedback does.
  So an interrupted run followed by a rerun ends exactly where an uninterrupted run ends.
- **One regex dialect.** Bounce texts are qualified in Python with the rules compiled once per
  run. Python's ``re`` is what validates a BounceRule's pattern (``BounceRule.clean``), so a pattern
  means the same thing everywhere (PostgreSQL's dialect reads ``\\b`` as a backspace, for one). Only
  the bounces and complaints of a batch (a bounded, small share of it) reach Python; everything
  else is set-based SQL over the batch's id range. SMS replies, few and short, are read into
  Python whole, a batch at a time, to be compared with the opt-out keywords.
- **"Changed since" contract.** Every DeliveryLog change sets ``updated_at`` to the current time;
  TrackingLog rows are append-only (ids increase). updateDeliveryIndicators and reportingAggregates
  rely on both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime

from django.db import connection
from django.db.models import Max
from django.utils import timezone

from campaign.models import (
    BounceRule,
    Channel,
    Delivery,
    DeliveryLog,
    FailureReason,
    FailureType,
    InboundSms,
    LogStatus,
    Profile,
    SendingFeedback,
    TrackingHit,
    TrackingLog,
    UrlType,
)
from workflows.builtin.update_delivery_exec_info_quarantine import (
    DEFAULT_OPT_OUT_KEYWORDS,
    DENYLISTING,
    AddressEvent,
    Qualification,
    QuarantinePolicy,
    fail_pending_logs,
    normalised_phone,
    normalised_reply,
    opt_out_keywords,
    update_quarantine,
)
from workflows.context import ActivityContext, Batch
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.errors import PermanentError
from workflows.properties import DurationProperty, IntegerProperty, WordListProperty
from workflows.sql import db_datetime, table

WORKFLOW_ID = "updateDeliveryExecInfo"

#: Cursor names in ``Workflow.cursors``: the last consolidated SendingFeedback / TrackingHit /
#: InboundSms id.
FEEDBACK_CURSOR = "sending_feedback_id"
HITS_CURSOR = "tracking_hit_id"
INBOUND_SMS_CURSOR = "inbound_sms_id"

#: Raw rows per batch. 20,000 feedback rows carry ~2,000 bounces into Python (a few MB) and update
#: as many logs in well under a second on PostgreSQL, so a batch holds its row locks briefly
#: while the per-batch overhead (cursor write, lease check, statement planning) stays below 2%.
DEFAULT_BATCH_SIZE = 20_000

#: Counter of a bounce, by its failure type.
BOUNCE_COUNTERS = {FailureType.SOFT: "soft_bounces", FailureType.HARD: "hard_bounces", FailureType.IGNORED: "ignored_bounces"}

#: The blocklist flag an opt-out sets, per delivery channel (a fixed mapping: never build a column
#: name from data).
BLOCKLIST_COLUMN = {
    Channel.EMAIL: "blocklisted_email",
    Channel.SMS: "blocklisted_sms",
    Channel.PUSH: "blocklisted_push",
}


# --------------------------------------------------------------------------------------------
# Bounce qualification
# --------------------------------------------------------------------------------------------

#: What a bounce that no rule matches becomes: soft, reason "not defined".
UNQUALIFIED = Qualification(FailureType.SOFT, FailureReason.NONE)


class BounceRules:
    """The BounceRules of one run, compiled once, tried in priority order (lower first, then id)."""

    def __init__(self, rules: Sequence[tuple[re.Pattern[str], Qualification]]) -> None:
        self._rules = rules

    @classmethod
    def load(cls) -> BounceRules:
        """Compile every rule; an invalid pattern is a configuration error that fails the run (its
        bounces must not be silently qualified by the next rule)."""
        compiled = []
        for rule in BounceRule.objects.order_by("priority", "id"):
            try:
                pattern = re.compile(rule.pattern, re.IGNORECASE)
            except re.error as error:
                raise PermanentError(f"bounce rule #{rule.pk} has an invalid pattern {rule.pattern!r}: {error}") from None
            compiled.append((pattern, Qualification(rule.failure_type, rule.failure_reason)))
        return cls(compiled)

    def __len__(self) -> int:
        return len(self._rules)

    def qualify(self, error_text: str) -> Qualification:
        """The first rule whose pattern occurs anywhere in the text, case-insensitively."""
        for pattern, qualification in self._rules:
            if pattern.search(error_text):
                return qualification
        return UNQUALIFIED


# --------------------------------------------------------------------------------------------
# SQL helpers
# --------------------------------------------------------------------------------------------

def _json_rows(alias: str, columns: Sequence[str]) -> str:
    """A FROM item reading a JSON array of arrays (one ``%s`` parameter) as typed rows: one parameter
    whatever the batch size, on both backends."""
    if connection.vendor == "postgresql":
        fields = ", ".join(f"(e.value->>{i})::bigint AS {name}" for i, name in enumerate(columns))
        return f"(SELECT {fields} FROM json_array_elements(%s::json) AS e(value)) AS {alias}"
    fields = ", ".join(f"CAST(json_extract(e.value, '$[{i}]') AS INTEGER) AS {name}" for i, name in enumerate(columns))
    return f"(SELECT {fields} FROM json_each(%s) AS e) AS {alias}"


def batch_range(model: type, *, after: int, up_to: int, limit: int) -> tuple[int, int]:
    """(rows, last id) of the next ``limit`` rows of ``model`` with ``after < id <= up_to``: the
    batch is then the id range (after, last id]."""
    sql = (f"SELECT COUNT(*), MAX(id) FROM (SELECT id FROM {table(model)} "
           "WHERE id > %s AND id <= %s ORDER BY id LIMIT %s) AS batch")
    with connection.cursor() as cursor:
        cursor.execute(sql, [after, up_to, limit])
        rows, last = cursor.fetchone()
    return rows, (last if last is not None else after)


# --------------------------------------------------------------------------------------------
# Activity 1: SendingFeedback → DeliveryLog, quarantine
# --------------------------------------------------------------------------------------------

def _update_logs(*, after: int, up_to: int, qualified: dict[int, Qualification], now: datetime) -> int:
    """Apply the winning feedback of each log in the id range (after, up_to]: the last delivered or
    bounce row (deferred and complaint rows never change a log). Returns the number of logs updated."""
    feedback, logs = table(SendingFeedback), table(DeliveryLog)
    payload = json.dumps([[fid, q.failure_type, q.failure_reason] for fid, q in qualified.items()])
    # No WITH prefix: Python's sqlite3 reports a row count only for statements starting with UPDATE.
    # The range on ``f`` repeats the one on ``winner``: without it PostgreSQL merge-joins the whole
    # feedback index from its start, a cost that grows with every batch.
    # On PostgreSQL the log table is partitioned: joined as a whole, it is read in full (a hash join
    # over every partition) however small the batch. The ids computed first (an InitPlan) let each
    # partition be probed through its primary key instead. SQLite's plain table is probed by id anyway.
    by_id = ""
    params = [db_datetime(now), after, up_to, payload, after, up_to]
    if connection.vendor == "postgresql":
        by_id = f"""AND {logs}.id = ANY(ARRAY(
                SELECT delivery_log_id FROM {feedback}
                WHERE id > %s AND id <= %s AND outcome IN ('delivered', 'bounce')))"""
        params += [after, up_to]
    sql = f"""
        UPDATE {logs} SET
            status = CASE WHEN f.outcome = 'delivered' THEN {LogStatus.SENT} ELSE {LogStatus.FAILED} END,
            failure_type = COALESCE(q.failure_type, {FailureType.NONE}),
            failure_reason = COALESCE(q.failure_reason, {FailureReason.NONE}),
            error_text = CASE WHEN f.outcome = 'delivered' THEN '' ELSE f.error_text END,
            updated_at = %s
        FROM (
                SELECT MAX(id) AS id FROM {feedback}
                WHERE id > %s AND id <= %s AND outcome IN ('delivered', 'bounce')
                GROUP BY delivery_log_id
            ) AS winner
            JOIN {feedback} AS f ON f.id = winner.id
            LEFT JOIN {_json_rows("q", ("feedback_id", "failure_type", "failure_reason"))} ON q.feedback_id = f.id
        WHERE {logs}.id = f.delivery_log_id
            AND f.id > %s AND f.id <= %s
            {by_id}
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _outcome_counts(*, after: int, up_to: int) -> dict[str, int]:
    sql = f"SELECT outcome, COUNT(*) FROM {table(SendingFeedback)} WHERE id > %s AND id <= %s GROUP BY outcome"
    with connection.cursor() as cursor:
        cursor.execute(sql, [after, up_to])
        return dict(cursor.fetchall())


def record_errors(events: list[tuple[AddressEvent, Qualification]], *, policy: QuarantinePolicy,
                  now: datetime) -> dict[str, int]:
    """Replay a batch's errors on the quarantine; fail the pending logs of the addresses it put on
    the denylist. Returns the counters."""
    update = update_quarantine(events, policy=policy)
    counters = dict(update.counters)
    counters["logs_denylisted"] = fail_pending_logs(keys=update.denylisted, now=now) if update.denylisted else 0
    return counters


def consolidate_sending_feedback(ctx: ActivityContext) -> None:
    """SendingFeedback → DeliveryLog status and failure fields; bounces and spam complaints →
    quarantine and denylist."""
    rules = BounceRules.load()
    policy = QuarantinePolicy.from_properties(ctx.properties)
    up_to = SendingFeedback.objects.aggregate(last=Max("id"))["last"] or 0
    start = ctx.get_cursor(FEEDBACK_CURSOR, 0)
    ctx.set_progress_total(SendingFeedback.objects.filter(id__gt=start, id__lte=up_to).count())

    def step(cursor: int, limit: int) -> Batch:
        rows, last = batch_range(SendingFeedback, after=cursor, up_to=up_to, limit=limit)
        if not rows:
            return Batch(rows=0, cursor=cursor)
        now = timezone.now()
        # Bounces and complaints whose log exists (the join drops those about purged logs).
        errors = (
            SendingFeedback.objects
            .filter(id__gt=cursor, id__lte=last, outcome__in=(SendingFeedback.Outcome.BOUNCE, SendingFeedback.Outcome.COMPLAINT))
            .order_by("id")
            .values_list("outcome", "id", "error_text", "received_at", "delivery_log__address", "delivery_log__delivery__channel")
        )
        cache: dict[str, Qualification] = {}  # per batch: the same text often bounces many times
        events: list[tuple[AddressEvent, Qualification]] = []
        bounces: dict[int, Qualification] = {}
        for outcome, *values in errors:
            event = AddressEvent(*values)
            if outcome == SendingFeedback.Outcome.COMPLAINT:
                events.append((event, DENYLISTING))
                continue
            if event.error_text not in cache:
                cache[event.error_text] = rules.qualify(event.error_text)
            bounces[event.raw_id] = cache[event.error_text]
            events.append((event, cache[event.error_text]))
        updated = _update_logs(after=cursor, up_to=last, qualified=bounces, now=now)
        counters = {f"feedback_{outcome}": n for outcome, n in _outcome_counts(after=cursor, up_to=last).items()}
        counters["logs_updated"] = updated
        for qualification in bounces.values():
            kind = BOUNCE_COUNTERS.get(qualification.failure_type, "other_bounces")
            counters[kind] = counters.get(kind, 0) + 1
        complaints = len(events) - len(bounces)
        counters["complaints_without_log"] = counters.get("feedback_complaint", 0) - complaints
        counters.update(record_errors(events, policy=policy, now=now))
        return Batch(rows=rows, cursor=last, counters=counters)

    consumed = ctx.batches(FEEDBACK_CURSOR, step, batch_size=ctx.properties["batch_size"])
    ctx.log(f"Consolidated {consumed} feedback rows with {len(rules)} bounce rules (up to feedback #{up_to}).")


# --------------------------------------------------------------------------------------------
# Activity 2: InboundSms → denylist
# --------------------------------------------------------------------------------------------

def consolidate_sms_replies(ctx: ActivityContext) -> None:
    """InboundSms → an opt-out keyword puts the sender's number on the SMS denylist; any other
    reply is consumed without effect."""
    policy = QuarantinePolicy.from_properties(ctx.properties)
    keywords = opt_out_keywords(ctx.properties["opt_out_keywords"])
    up_to = InboundSms.objects.aggregate(last=Max("id"))["last"] or 0
    start = ctx.get_cursor(INBOUND_SMS_CURSOR, 0)
    ctx.set_progress_total(InboundSms.objects.filter(id__gt=start, id__lte=up_to).count())

    def step(cursor: int, limit: int) -> Batch:
        rows, last = batch_range(InboundSms, after=cursor, up_to=up_to, limit=limit)
        if not rows:
            return Batch(rows=0, cursor=cursor)
        replies = InboundSms.objects.filter(id__gt=cursor, id__lte=last).order_by("id").values_list(
            "id", "text", "received_at", "phone",
        )
        events = [
            (AddressEvent(reply_id, text, received_at, number, Channel.SMS), DENYLISTING)
            for reply_id, text, received_at, phone in replies
            if normalised_reply(text) in keywords and (number := normalised_phone(phone))
        ]
        numbers = sorted({event.address for event, _ in events})
        known = set(Profile.objects.filter(phone__in=numbers).values_list("phone", flat=True)) if numbers else set()
        counters = {
            "sms_replies": rows,
            "sms_opt_outs": len(events),
            "sms_replies_ignored": rows - len(events),
            "sms_opt_outs_unknown_number": sum(1 for event, _ in events if event.address not in known),
        }
        counters.update(record_errors(events, policy=policy, now=timezone.now()))
        return Batch(rows=rows, cursor=last, counters=counters)

    consumed = ctx.batches(INBOUND_SMS_CURSOR, step, batch_size=ctx.properties["batch_size"])
    ctx.log(f"Consolidated {consumed} SMS replies with {len(keywords)} opt-out keywords (up to reply #{up_to}).")


# --------------------------------------------------------------------------------------------
# Activity 3: TrackingHit → TrackingLog, opt-outs
# --------------------------------------------------------------------------------------------

def _insert_tracking_logs(*, after: int, up_to: int) -> int:
    """One TrackingLog per hit whose delivery log exists (the delivery is denormalised from it)."""
    sql = f"""
        INSERT INTO {table(TrackingLog)} (delivery_log_id, delivery_id, url_type, url, tracked_at)
        SELECT h.delivery_log_id, l.delivery_id, h.url_type, h.url, h.hit_at
        FROM {table(TrackingHit)} AS h JOIN {table(DeliveryLog)} AS l ON l.id = h.delivery_log_id
        WHERE h.id > %s AND h.id <= %s
        ORDER BY h.id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [after, up_to])
        return cursor.rowcount


def _apply_opt_outs(*, after: int, up_to: int, now: datetime) -> int:
    """Set the blocklist flag of the delivery's channel on the profile of each opt-out hit."""
    profiles = table(Profile)
    blocklisted = 0
    with connection.cursor() as cursor:
        for channel, column in BLOCKLIST_COLUMN.items():
            cursor.execute(
                f"""
                UPDATE {profiles} SET {column} = %s, updated_at = %s
                WHERE {column} = %s AND id IN (
                    SELECT l.profile_id
                    FROM {table(TrackingHit)} AS h
                        JOIN {table(DeliveryLog)} AS l ON l.id = h.delivery_log_id
                        JOIN {table(Delivery)} AS d ON d.id = l.delivery_id
                    WHERE h.id > %s AND h.id <= %s AND h.url_type = {UrlType.OPT_OUT}
                        AND d.channel = %s AND l.profile_id IS NOT NULL
                )
                """,
                [True, db_datetime(now), False, after, up_to, channel.value],
            )
            blocklisted += cursor.rowcount
    return blocklisted


def consolidate_tracking_hits(ctx: ActivityContext) -> None:
    """TrackingHit → TrackingLog; opt-out hits → the profile's blocklist flag for the channel."""
    up_to = TrackingHit.objects.aggregate(last=Max("id"))["last"] or 0
    start = ctx.get_cursor(HITS_CURSOR, 0)
    ctx.set_progress_total(TrackingHit.objects.filter(id__gt=start, id__lte=up_to).count())

    def step(cursor: int, limit: int) -> Batch:
        rows, last = batch_range(TrackingHit, after=cursor, up_to=up_to, limit=limit)
        if not rows:
            return Batch(rows=0, cursor=cursor)
        written = _insert_tracking_logs(after=cursor, up_to=last)
        counters = {
            "hits": rows,
            "tracking_logs_written": written,
            "hits_without_log": rows - written,
            "profiles_blocklisted": _apply_opt_outs(after=cursor, up_to=last, now=timezone.now()),
        }
        return Batch(rows=rows, cursor=last, counters=counters)

    consumed = ctx.batches(HITS_CURSOR, step, batch_size=ctx.properties["batch_size"])
    ctx.log(f"Consolidated {consumed} tracking hits (up to hit #{up_to}).")


# --------------------------------------------------------------------------------------------
# Activity 4: delivery execution states
# --------------------------------------------------------------------------------------------

def _cancel_expired_batch(*, now: datetime, limit: int) -> int:
    """Cancel up to ``limit`` pending logs of deliveries whose validity has ended."""
    logs = table(DeliveryLog)
    sql = f"""
        UPDATE {logs} SET status = {LogStatus.CANCELLED}, updated_at = %s
        WHERE id IN (
            SELECT l.id FROM {logs} AS l JOIN {table(Delivery)} AS d ON d.id = l.delivery_id
            WHERE l.status = {LogStatus.PENDING} AND d.validity_end < %s
            LIMIT %s
        )
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [db_datetime(now), db_datetime(now), limit])
        return cursor.rowcount


def _finish_deliveries(*, now: datetime) -> int:
    """in_progress → finished when no log is pending and the validity has ended or every log is
    final. A delivery without any log yet is still being prepared: it finishes only once its
    validity has ended. The in_progress deliveries are few (not a growing table): one statement."""
    deliveries, logs = table(Delivery), table(DeliveryLog)
    sql = f"""
        UPDATE {deliveries} SET state = %s, finished_at = %s, updated_at = %s
        WHERE state = %s
            AND NOT EXISTS (SELECT 1 FROM {logs} AS l WHERE l.delivery_id = {deliveries}.id AND l.status = {LogStatus.PENDING})
            AND (validity_end < %s OR EXISTS (SELECT 1 FROM {logs} AS l WHERE l.delivery_id = {deliveries}.id))
    """
    stamp = db_datetime(now)
    with connection.cursor() as cursor:
        cursor.execute(sql, [Delivery.State.FINISHED, stamp, stamp, Delivery.State.IN_PROGRESS, stamp])
        return cursor.rowcount


def update_delivery_states(ctx: ActivityContext) -> None:
    """Cancel pending logs past validity (bounded batches), then finish the deliveries that are done."""
    now = timezone.now()
    cancelled = 0

    def cancel(_: object, limit: int) -> Batch:
        nonlocal cancelled
        batch = _cancel_expired_batch(now=now, limit=limit)
        cancelled += batch
        # rows=0: the run's progress counts raw rows (feedback, hits), and cancelling consumes none;
        # a short batch is the last: nothing is left pending past its validity.
        return Batch(rows=0, counters={"logs_cancelled": batch}, done=batch < limit)

    def finish() -> int:
        finished = _finish_deliveries(now=now)
        ctx.count("deliveries_finished", finished)
        return finished

    ctx.batches(None, cancel, batch_size=ctx.properties["batch_size"])
    finished = ctx.unit(finish)
    ctx.log(f"Cancelled {cancelled} pending logs past their validity; {finished} deliveries finished.")


definition = register(WorkflowDefinition(
    id=WORKFLOW_ID,
    label="Update delivery execution",
    description="Consolidates raw sending feedback, SMS replies and tracking hits into delivery and tracking logs, "
                "qualifies bounces, maintains the quarantine, the denylist and delivery states.",
    schedule=Schedule("*/10 * * * *"),
    activities=(consolidate_sending_feedback, consolidate_sms_replies, consolidate_tracking_hits, update_delivery_states),
    properties=(
        IntegerProperty("batch_size", DEFAULT_BATCH_SIZE, minimum=1, maximum=1_000_000, unit="rows",
                        help="Raw rows consolidated per transaction."),
        DurationProperty("error_interval_days", 1, minimum=0, maximum=365, unit="days",
                         help="A soft error counts toward the quarantine only this long after the last counted one."),
        IntegerProperty("quarantine_threshold", 5, minimum=1, maximum=1000,
                        help="Counted soft errors after which an address is quarantined."),
        DurationProperty("counter_reset_days", 10, minimum=1, maximum=3650, unit="days",
                         help="The error count starts again when the last counted error is older than this."),
        WordListProperty("opt_out_keywords", DEFAULT_OPT_OUT_KEYWORDS, max_length=1000,
                         help="SMS replies that put the sender's number on the denylist, comma-separated. A reply "
                              "matches when it is one of them as a whole, ignoring case, accents, spaces and "
                              "punctuation (\"Stop.\" is STOP)."),
    ),
    batch_size=DEFAULT_BATCH_SIZE,
    expire_s=600,  # a late message is dropped: the next slot does the same work
))
