"""updateDeliveryExecInfo — Update delivery execution.

Why it exists: the sending and tracking sides only ever append raw rows (SendingFeedback,
TrackingHit). Everything downstream — indicators, aggregates, reports, KPI sharing — reads the
consolidated logs, and this workflow is the *only* writer of DeliveryLog status and failure fields
and of TrackingLog rows. It also keeps the quarantine, the opt-out blocklist and the delivery
execution states.

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
  (highest id) wins, and ``deferred`` feedback never changes a log (it *stays* pending); the
  quarantine is replayed error by error, in feedback id order, from the state stored before the
  batch. So an interrupted run followed by a rerun ends exactly where an uninterrupted run ends.
- **One regex dialect.** Bounce texts are qualified in Python with the rules compiled once per
  run. Python's ``re`` is what validates a BounceRule's pattern (``BounceRule.clean``), so a pattern
  means the same thing everywhere (PostgreSQL's dialect reads ``\\b`` as a backspace, for one). Only
  the bounces of a batch (a bounded, small share of it) reach Python; everything else is set-based
  SQL over the batch's id range.
- **"Changed since" contract.** Every DeliveryLog change sets ``updated_at`` to the current time;
  TrackingLog rows are append-only (ids increase). updateDeliveryIndicators and reportingAggregates
  rely on both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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
    LogStatus,
    Profile,
    Quarantine,
    SendingFeedback,
    TrackingHit,
    TrackingLog,
    UrlType,
)
from workflows.context import ActivityContext, Batch
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.errors import PermanentError
from workflows.properties import DurationProperty, IntegerProperty
from workflows.sql import db_datetime, table

WORKFLOW_ID = "updateDeliveryExecInfo"

#: Cursor names in ``Workflow.cursors``: the last consolidated SendingFeedback / TrackingHit id.
FEEDBACK_CURSOR = "sending_feedback_id"
HITS_CURSOR = "tracking_hit_id"

#: Raw rows per batch. 20,000 feedback rows carry ~2,000 bounces into Python (a few MB) and update
#: as many logs in well under a second on PostgreSQL, so a batch holds its row locks briefly
#: while the per-batch overhead (cursor write, lease check, statement planning) stays below 2%.
DEFAULT_BATCH_SIZE = 20_000

#: Existing quarantine rows are read per batch in chunks of this many addresses (SQLite accepts at
#: most 32,766 parameters a statement; smaller chunks keep each statement cheap to plan).
ADDRESS_CHUNK = 500

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

@dataclass(frozen=True)
class Qualification:
    failure_type: int
    failure_reason: int


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
# Quarantine
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuarantinePolicy:
    """Soft errors count only when ``error_interval`` after the last significant one; the
    address is quarantined at the ``threshold``-th; the count restarts when the last significant
    error is older than ``counter_reset``. A hard error quarantines at once."""

    error_interval: timedelta
    counter_reset: timedelta
    threshold: int

    @classmethod
    def from_properties(cls, properties: dict[str, Any]) -> QuarantinePolicy:
        return cls(
            error_interval=timedelta(days=properties["error_interval_days"]),
            counter_reset=timedelta(days=properties["counter_reset_days"]),
            threshold=properties["quarantine_threshold"],
        )


#: Statuses no bounce changes: the address is already excluded, and its row says why.
SETTLED_STATUSES = (Quarantine.Status.QUARANTINED, Quarantine.Status.DENYLISTED)


@dataclass(frozen=True)
class QuarantineState:
    """One (address, channel)'s quarantine row, as the replay sees it; ``status`` None = no row yet."""

    status: str | None = None
    error_count: int = 0
    first_error_at: datetime | None = None
    last_error_at: datetime | None = None
    failure_type: int = FailureType.NONE
    failure_reason: int = FailureReason.NONE
    error_text: str = ""


def apply_error(
    state: QuarantineState, *, at: datetime, qualification: Qualification, error_text: str, policy: QuarantinePolicy
) -> tuple[QuarantineState, bool]:
    """The state after one bounce at ``at``, and whether the bounce counted (was significant).
    Ignored failures and addresses already quarantined or denylisted are left as they are; a
    ``valid`` (released) address starts counting afresh."""
    if qualification.failure_type == FailureType.IGNORED or state.status in SETTLED_STATUSES:
        return state, False
    fresh = state.status in (None, Quarantine.Status.VALID)
    last = None if fresh else state.last_error_at
    reset = last is not None and at - last > policy.counter_reset
    significant = (
        qualification.failure_type == FailureType.HARD or last is None or reset or at - last >= policy.error_interval
    )
    count = (0 if fresh or reset else state.error_count) + (1 if significant else 0)
    quarantined = qualification.failure_type == FailureType.HARD or count >= policy.threshold
    return QuarantineState(
        status=Quarantine.Status.QUARANTINED if quarantined else Quarantine.Status.ERRONEOUS,
        error_count=count,
        first_error_at=at if fresh or reset or state.first_error_at is None else state.first_error_at,
        last_error_at=at if significant else last,
        failure_type=qualification.failure_type,
        failure_reason=qualification.failure_reason,
        error_text=error_text,
    ), significant


@dataclass(frozen=True)
class Bounce:
    """One bounce of a batch, with what the quarantine needs of its log and delivery."""

    feedback_id: int
    error_text: str
    received_at: datetime
    address: str
    channel: str


QUARANTINE_FIELDS = ("status", "error_count", "first_error_at", "last_error_at", "failure_type", "failure_reason", "error_text")


def _load_quarantine(keys: set[tuple[str, str]]) -> dict[tuple[str, str], QuarantineState]:
    addresses = sorted({address for address, _ in keys})
    states: dict[tuple[str, str], QuarantineState] = {}
    for start in range(0, len(addresses), ADDRESS_CHUNK):
        rows = Quarantine.objects.filter(address__in=addresses[start:start + ADDRESS_CHUNK]).values_list(
            "address", "channel", *QUARANTINE_FIELDS
        )
        for address, channel, *values in rows:
            if (address, channel) in keys:
                states[(address, channel)] = QuarantineState(**dict(zip(QUARANTINE_FIELDS, values, strict=True)))
    return states


def update_quarantine(
    bounces: Iterable[tuple[Bounce, Qualification]], *, policy: QuarantinePolicy
) -> dict[str, int]:
    """Replay a batch's bounces (in feedback id order) on the stored quarantine and upsert the rows
    that changed. Returns counters."""
    bounces = list(bounces)
    keys = {(bounce.address, bounce.channel) for bounce, _ in bounces}
    before = _load_quarantine(keys)
    after = dict(before)
    significant = 0
    for bounce, qualification in bounces:
        key = (bounce.address, bounce.channel)
        state = after.get(key, QuarantineState())
        after[key], counted = apply_error(
            state, at=bounce.received_at, qualification=qualification, error_text=bounce.error_text, policy=policy
        )
        significant += counted
    changed = {key: state for key, state in after.items() if state.status is not None and state != before.get(key)}
    Quarantine.objects.bulk_create(
        [Quarantine(address=address, channel=channel, **{f: getattr(s, f) for f in QUARANTINE_FIELDS})
         for (address, channel), s in sorted(changed.items())],
        update_conflicts=True,
        unique_fields=["address", "channel"],
        update_fields=[*QUARANTINE_FIELDS, "updated_at"],
    )
    newly_quarantined = sum(
        1 for key, state in changed.items()
        if state.status == Quarantine.Status.QUARANTINED and before.get(key, QuarantineState()).status != state.status
    )
    return {"significant_errors": significant, "quarantine_rows_written": len(changed),
            "addresses_quarantined": newly_quarantined}


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
    bounce row (deferred rows never change a log). Returns the number of logs updated."""
    feedback, logs = table(SendingFeedback), table(DeliveryLog)
    payload = json.dumps([[fid, q.failure_type, q.failure_reason] for fid, q in qualified.items()])
    # No WITH prefix: Python's sqlite3 reports a row count only for statements starting with UPDATE.
    # The range on ``f`` repeats the one on ``winner``: without it PostgreSQL merge-joins the whole
    # feedback index from its start, a cost that grows with every batch.
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
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [db_datetime(now), after, up_to, payload, after, up_to])
        return cursor.rowcount


def _outcome_counts(*, after: int, up_to: int) -> dict[str, int]:
    sql = f"SELECT outcome, COUNT(*) FROM {table(SendingFeedback)} WHERE id > %s AND id <= %s GROUP BY outcome"
    with connection.cursor() as cursor:
        cursor.execute(sql, [after, up_to])
        return dict(cursor.fetchall())


def consolidate_sending_feedback(ctx: ActivityContext) -> None:
    """SendingFeedback → DeliveryLog status and failure fields; bounces → quarantine."""
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
        bounces = [
            Bounce(*values) for values in SendingFeedback.objects
            .filter(id__gt=cursor, id__lte=last, outcome=SendingFeedback.Outcome.BOUNCE)
            .order_by("id")
            .values_list("id", "error_text", "received_at", "delivery_log__address", "delivery_log__delivery__channel")
        ]
        cache: dict[str, Qualification] = {}  # per batch: the same text often bounces many times
        qualified = []
        for bounce in bounces:
            if bounce.error_text not in cache:
                cache[bounce.error_text] = rules.qualify(bounce.error_text)
            qualified.append((bounce, cache[bounce.error_text]))
        updated = _update_logs(after=cursor, up_to=last, qualified={b.feedback_id: q for b, q in qualified}, now=now)
        counters = {f"feedback_{outcome}": n for outcome, n in _outcome_counts(after=cursor, up_to=last).items()}
        counters["logs_updated"] = updated
        for _, qualification in qualified:
            kind = BOUNCE_COUNTERS.get(qualification.failure_type, "other_bounces")
            counters[kind] = counters.get(kind, 0) + 1
        counters.update(update_quarantine(qualified, policy=policy))
        return Batch(rows=rows, cursor=last, counters=counters)

    consumed = ctx.batches(FEEDBACK_CURSOR, step, batch_size=ctx.properties["batch_size"])
    ctx.log(f"Consolidated {consumed} feedback rows with {len(rules)} bounce rules (up to feedback #{up_to}).")


# --------------------------------------------------------------------------------------------
# Activity 2: TrackingHit → TrackingLog, opt-outs
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
# Activity 3: delivery execution states
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
    description="Consolidates raw sending feedback and tracking hits into delivery and tracking logs, qualifies bounces, "
                "maintains the quarantine and delivery states.",
    schedule=Schedule("*/10 * * * *"),
    activities=(consolidate_sending_feedback, consolidate_tracking_hits, update_delivery_states),
    properties=(
        IntegerProperty("batch_size", DEFAULT_BATCH_SIZE, minimum=1, maximum=1_000_000, unit="rows",
                        help="Raw rows consolidated per transaction."),
        DurationProperty("error_interval_days", 1, minimum=0, maximum=365, unit="days",
                         help="A soft error counts toward the quarantine only this long after the last counted one."),
        IntegerProperty("quarantine_threshold", 5, minimum=1, maximum=1000,
                        help="Counted soft errors after which an address is quarantined."),
        DurationProperty("counter_reset_days", 10, minimum=1, maximum=3650, unit="days",
                         help="The error count starts again when the last counted error is older than this."),
    ),
    batch_size=DEFAULT_BATCH_SIZE,
    expire_s=600,  # a late message is dropped: the next slot does the same work
))
