"""The retention rules of cleanup, and the one way rows past a rule are purged.

Why it exists: every purge activity of cleanup shares the same few decisions, kept here so that
they cannot differ from one table to the next:

- **What is past retention.** One :class:`AgeRule` per table, each with its retention property:
  a row goes when its age column is strictly older than ``now - retention``; a table whose age
  column is a date (the daily aggregates) loses a day once its whole day is past. The engine's own
  journal and runs follow each workflow's ``history_days`` instead (:func:`purge_workflow_history`).
- **The floor.** :func:`cutoff` refuses any cutoff closer to now than :data:`MINIMUM_AGE` (1 day),
  whatever a property says, so a value that escaped validation cannot empty a table.
- **Bounded units.** :func:`purge` deletes in batches of the table's batch size, one unit of work
  each, until a short batch, through the engine's one unit-of-work primitive
  (:mod:`workflows.context`); deleting is idempotent, so it keeps no cursor between runs.
- **Dry run.** The same call counts instead (counters ``<name>_to_remove``), with read-only queries.

The SQL itself is :mod:`workflows.builtin.cleanup_purges`'s; the activities and the workflow's
definition are :mod:`workflows.builtin.cleanup`'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import models
from django.utils import timezone

from campaign.models import (
    AppSubscription,
    Delivery,
    DeliveryAggregate,
    DeliveryLog,
    Event,
    EventHistory,
    ForecastLog,
    InboundSms,
    Quarantine,
    SendingFeedback,
    TrackingHit,
    TrackingLog,
)
from workflows import metrics
from workflows.builtin import cleanup_purges as purges
from workflows.builtin.cleanup_purges import Selection, column
from workflows.builtin.update_delivery_exec_info import WORKFLOW_ID as EXEC_INFO_ID
from workflows.context import ActivityContext, Batch, cursors_of
from workflows.errors import PermanentError
from workflows.models import ActivityRun, LogLevel, RunStatus, Workflow, WorkflowLog, WorkflowRun
from workflows.sql import db_date, db_datetime

#: The floor under every retention: nothing younger than this is ever removed.
MINIMUM_AGE = timedelta(days=1)

#: Longest retention accepted, in days (100 years: far beyond any policy, far from date overflow).
MAXIMUM_RETENTION_DAYS = 36_500

#: A run brings along about this many rows (one per activity, plus any journal entry left), so runs
#: go ``batch_size // ROWS_PER_RUN`` at a time and a batch stays near ``batch_size`` rows.
ROWS_PER_RUN = 10

#: Finished runs only: a queued, running or paused run is never purged, however old.
FINAL_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED, RunStatus.SKIPPED)


# --------------------------------------------------------------------------------------------
# Retention rules
# --------------------------------------------------------------------------------------------

def cutoff(now: datetime, days: int, *, what: str) -> datetime:
    """``now - days``; refuses anything that would remove rows younger than :data:`MINIMUM_AGE`."""
    if timedelta(days=days) < MINIMUM_AGE:
        raise PermanentError(f"refusing to purge {what} younger than {MINIMUM_AGE.days} day (retention {days} days)")
    return now - timedelta(days=days)


@dataclass(frozen=True)
class AgeRule:
    """Rows of ``model`` whose ``age_field`` is older than the retention property ``retention``."""

    name: str  # counters <name>_removed / <name>_to_remove
    model: type[models.Model]
    age_field: str
    retention: str
    default_days: int
    what: str
    help: str
    log_table: bool = False
    whole_days: bool = False  # ``age_field`` is a date: a day ages from its end

    def batch_size(self, ctx: ActivityContext) -> int:
        return ctx.properties["log_batch_size" if self.log_table else "batch_size"]

    def expired(self, ctx: ActivityContext, now: datetime) -> tuple[Selection, str]:
        """The expired rows, and the boundary in words for the journal."""
        days = ctx.properties[self.retention]
        before = cutoff(now, days, what=self.what)
        age = column(self.model, self.age_field)
        if self.whole_days:
            # The day D ends at D+1 00:00: it is past retention when D+1 00:00 <= cutoff, i.e.
            # D < the cutoff's date.
            first_kept = timezone.localdate(before)
            return (Selection(self.model, f"{age} < %s", (db_date(first_kept),)),
                    f"days before {first_kept:%Y-%m-%d} ({days} days)")
        return (Selection(self.model, f"{age} < %s", (db_datetime(before),)),
                f"{self.age_field} before {before:%Y-%m-%d %H:%M:%S} UTC ({days} days)")


DELIVERY_LOGS = AgeRule("delivery_logs", DeliveryLog, "updated_at", "delivery_logs_days", 180, "delivery logs",
                        "Delivery logs not updated for this many days are removed (their tracking rows stay).",
                        log_table=True)
TRACKING_LOGS = AgeRule("tracking_logs", TrackingLog, "tracked_at", "tracking_logs_days", 180, "tracking logs",
                        "Tracking logs older than this many days are removed.", log_table=True)
SENDING_FEEDBACK = AgeRule("sending_feedback", SendingFeedback, "received_at", "sending_feedback_days", 30,
                           "raw sending feedback rows",
                           "Raw sending feedback older than this many days is removed, once consolidated.",
                           log_table=True)
TRACKING_HITS = AgeRule("tracking_hits", TrackingHit, "hit_at", "tracking_hits_days", 30, "raw tracking hits",
                        "Raw tracking hits older than this many days are removed, once consolidated.", log_table=True)
INBOUND_SMS = AgeRule("inbound_sms", InboundSms, "received_at", "inbound_sms_days", 30, "raw SMS replies",
                      "Raw SMS replies older than this many days are removed, once consolidated.", log_table=True)
EVENTS = AgeRule("events", Event, "created_at", "events_days", 30, "events",
                 "Real-time events created more than this many days ago are removed.")
ARCHIVED_EVENTS = AgeRule("archived_events", EventHistory, "archived_at", "archived_events_days", 180,
                          "archived events", "Archived events archived more than this many days ago are removed.")
DELIVERY_AGGREGATES = AgeRule("delivery_aggregates", DeliveryAggregate, "day", "delivery_aggregates_days", 360,
                              "delivery aggregates", "Daily aggregates of days older than this many days are removed.",
                              whole_days=True)
FORECAST_LOGS = AgeRule("forecast_logs", ForecastLog, "computed_at", "forecast_logs_days", 7, "forecast logs",
                        "Forecast logs not recomputed for this many days are removed.", log_table=True)
DELIVERIES = AgeRule("deliveries", Delivery, "finished_at", "deliveries_days", 730, "finished or failed deliveries",
                     "With purge_deliveries on, finished or failed deliveries that ended more than this many days ago "
                     "are removed, with their logs, tracking logs, aggregates and forecast logs.")
APP_SUBSCRIPTIONS = AgeRule("app_subscriptions", AppSubscription, "updated_at", "app_subscriptions_days", 180,
                            "disabled app subscriptions",
                            "Disabled app subscriptions not updated for this many days are removed.")

RELEASED_QUARANTINE = AgeRule("released_quarantine", Quarantine, "updated_at", "released_quarantine_days", 7,
                              "released quarantine rows",
                              "Quarantine rows released (status valid) and not updated since, for this many days, are "
                              "removed: the address is deliverable, the row only kept its history.")

RETENTIONS = (DELIVERY_LOGS, TRACKING_LOGS, SENDING_FEEDBACK, TRACKING_HITS, INBOUND_SMS, EVENTS, ARCHIVED_EVENTS,
              DELIVERY_AGGREGATES, FORECAST_LOGS, DELIVERIES, APP_SUBSCRIPTIONS, RELEASED_QUARANTINE)


# --------------------------------------------------------------------------------------------
# Purging what is past a rule
# --------------------------------------------------------------------------------------------

def dry_run(ctx: ActivityContext) -> bool:
    return ctx.properties["dry_run"]


def counter_name(ctx: ActivityContext, name: str) -> str:
    return f"{name}_to_remove" if dry_run(ctx) else f"{name}_removed"


def purge(ctx: ActivityContext, selection: Selection, *, name: str, order_by: str, batch_size: int) -> int:
    """Delete the rows of ``selection`` in batches of ``batch_size``, oldest first by ``order_by``,
    one unit of work each (a dry run counts them instead); returns how many.

    The pass remembers where its last batch ended only in memory (a cursor-less ``ctx.batches``):
    deleting is idempotent, so a pass resumed after a pause or a crash starts again from the oldest
    row still there. Between batches the run renews its lease and obeys pause and stop.
    """
    counter = counter_name(ctx, name)
    ctx.declare(counter)
    if dry_run(ctx):
        found = purges.count(selection)
        ctx.count(counter, found)  # read-only: saved with the activity's end
        return found

    def step(position: purges.Walk | None, limit: int) -> Batch:
        removed, following = purges.delete_batch(selection, order_by=order_by, after=position, limit=limit)
        # An empty batch too: its unit then writes only the lease and the counters, and a run that
        # finds nothing in most tables would otherwise wait for one disk flush per table.
        purges.relax_durability()
        return Batch(rows=removed, cursor=following, counters={counter: removed}, done=following is None)

    return ctx.batches(None, step, start=None, batch_size=batch_size)


def journal_removed(ctx: ActivityContext, removed: int, what: str) -> None:
    """One journal line per purge that removed something (or would have, in a dry run); when
    nothing went, the engine's "Done" line with its zero counters says so."""
    if removed or dry_run(ctx):
        verb = "Dry run: would remove" if dry_run(ctx) else "Removed"
        ctx.log(f"{verb} {removed:,} {what}.")


def outside(selection: Selection, partitions: Sequence[str]) -> Selection:
    """The rows of ``selection`` that are not in these partitions (PostgreSQL): a dry run counts the
    rows of the partitions it would drop whole apart, so that no row is counted twice."""
    if not partitions:
        return selection
    return selection.narrowed(f"{selection.table}.tableoid <> ALL(%s::regclass[])", (list(partitions),))


def purge_expired(ctx: ActivityContext, rule: AgeRule, *, skipping: Sequence[str] = ()) -> None:
    """Every row past ``rule``; ``skipping``: partitions whose rows a dry run already counted."""
    selection, boundary = rule.expired(ctx, timezone.now())
    selection = outside(selection, skipping)
    removed = purge(ctx, selection, name=rule.name, order_by=rule.age_field, batch_size=rule.batch_size(ctx))
    journal_removed(ctx, removed, f"{rule.what} with {boundary}")


def purge_consolidated(ctx: ActivityContext, rule: AgeRule, cursor: str, *, skipping: Sequence[str] = ()) -> None:
    """Like :func:`purge_expired`, but only rows updateDeliveryExecInfo has consolidated
    (``id <=`` its cursor ``cursor``): an unconsolidated row stays, however old."""
    cursors = cursors_of(EXEC_INFO_ID)
    consolidated = cursors.get(cursor)
    if not isinstance(consolidated, int) or isinstance(consolidated, bool):
        ctx.declare(counter_name(ctx, rule.name))
        ctx.log(f"Kept all {rule.what}: {EXEC_INFO_ID} has not consolidated any yet (no cursor {cursor!r}).")
        return
    expired, boundary = rule.expired(ctx, timezone.now())
    selection = outside(expired.narrowed(f"{expired.pk} <= %s", (consolidated,)), skipping)
    removed = purge(ctx, selection, name=rule.name, order_by=rule.age_field, batch_size=rule.batch_size(ctx))
    journal_removed(ctx, removed, f"{rule.what} consolidated by {EXEC_INFO_ID} (id up to {consolidated:,}) with {boundary}")


# --------------------------------------------------------------------------------------------
# The engine's history: each workflow's own history_days
# --------------------------------------------------------------------------------------------

def purge_workflow_history(ctx: ActivityContext) -> None:
    """Each workflow's journal entries and finished runs older than its own ``history_days``."""
    now = timezone.now()
    ctx.declare(*(counter_name(ctx, name) for name in ("journal_entries", "workflow_runs", "activity_runs")))
    totals: Counter[str] = Counter()
    for workflow_id, history_days in Workflow.objects.order_by("id").values_list("id", "history_days"):
        if timedelta(days=history_days) < MINIMUM_AGE:
            ctx.log(f"{workflow_id} keeps {history_days} days of history, below the minimum of {MINIMUM_AGE.days} "
                    f"day: purged as if it kept {MINIMUM_AGE.days}.", level=LogLevel.WARNING)
            history_days = MINIMUM_AGE.days
        before = db_datetime(cutoff(now, history_days, what=f"the history of {workflow_id}"))
        journal = Selection(WorkflowLog, f"{column(WorkflowLog, 'workflow')} = %s AND {column(WorkflowLog, 'logged_at')} < %s",
                            (workflow_id, before))
        totals["journal_entries"] += purge(ctx, journal, name="journal_entries", order_by="logged_at",
                                           batch_size=ctx.properties["batch_size"])
        runs = Selection(WorkflowRun, f"{column(WorkflowRun, 'workflow')} = %s AND {column(WorkflowRun, 'finished_at')} < %s "
                                      f"AND {column(WorkflowRun, 'status')} IN ({', '.join(['%s'] * len(FINAL_STATUSES))})",
                         (workflow_id, before, *FINAL_STATUSES))
        totals.update(_purge_runs(ctx, runs, journal=journal))
    journal_removed(ctx, sum(totals.values()), f"rows: {totals['workflow_runs']:,} finished runs (with "
                                               f"{totals['activity_runs']:,} activity rows) and {totals['journal_entries']:,} "
                                               "journal entries older than each workflow's history days")


def _purge_runs(ctx: ActivityContext, runs: Selection, *, journal: Selection) -> Counter[str]:
    """Runs in batches, each taking its activity rows and any journal entry left along."""
    removed: Counter[str] = Counter()
    if dry_run(ctx):
        of_runs = f"IN (SELECT {runs.pk} FROM {runs.table} WHERE {runs.where})"
        counts = {
            "workflow_runs": purges.count(runs),
            "activity_runs": purges.count(Selection(ActivityRun, f"{column(ActivityRun, 'run')} {of_runs}", runs.params)),
            # Entries the journal purge did not already count.
            "journal_entries": purges.count(Selection(WorkflowLog, f"{column(WorkflowLog, 'run')} {of_runs}", runs.params)
                                            .narrowed(f"NOT ({journal.where})", journal.params)),
        }
        for name, count in counts.items():
            ctx.count(counter_name(ctx, name), count)  # read-only: saved with the activity's end
        return Counter(counts)
    per_batch = max(1, ctx.properties["batch_size"] // ROWS_PER_RUN)

    def step(_position: None, limit: int) -> Batch:
        # Always the oldest runs left: what a batch deleted no longer matches, so no position is kept.
        ids = purges.first_ids(runs, order_by="finished_at", limit=limit)
        purges.relax_durability()  # an empty batch too, as in purge(): one per workflow, most of them empty
        if not ids:
            return Batch(rows=0, done=True)
        metrics.retire(ids)  # their counts stay in /metrics: counters never go down
        counts = {
            "journal_entries": purges.delete_all(purges.in_ids(WorkflowLog, "run", ids)),
            "activity_runs": purges.delete_all(purges.in_ids(ActivityRun, "run", ids)),
            "workflow_runs": purges.delete_all(purges.in_ids(WorkflowRun, "id", ids)),
        }
        removed.update(counts)  # read only once the batches return, all committed
        # Progress counts the runs removed; the loop ends after a short batch of ids.
        return Batch(rows=counts["workflow_runs"], counters={counter_name(ctx, name): count
                                                             for name, count in counts.items()},
                     done=len(ids) < limit)

    ctx.batches(None, step, start=None, batch_size=per_batch)
    return removed
