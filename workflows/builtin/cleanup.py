"""cleanup — Database cleanup.

Why it exists: delivery logs, tracking logs, raw feedback and hits, events and the engine's own
journal grow without bound. Every day at 04:00 this workflow removes what is past its retention,
releases the quarantined addresses that deserve another chance, then refreshes the database
statistics of the tables it thinned.

Invariants it keeps:

- **Bounded batches, one short unit of work each.** A purge deletes at most ``log_batch_size``
  (20,000) rows of a log table, ``batch_size`` (5,000) of any other, per unit, oldest first (see
  :mod:`workflows.builtin.cleanup_purges`), until a short batch. Each unit is one transaction, its
  counters and progress included, committed by the engine only while the run holds its lease
  (:mod:`workflows.context`). Nothing else waits longer than one batch; a crash or a lost lease
  loses at most the batch not yet committed, and the next run finds those rows still there.
  Deleting is idempotent, so a purge keeps no cursor between runs: its position lives in memory.
- **Retention boundary.** A row goes when its age column is strictly older than
  ``now - retention`` (``now`` read when the activity starts): one second older it goes, one
  second younger it stays. A daily aggregate goes once its whole day (instance time zone) is
  older than that.
- **Minimum age.** Nothing younger than :data:`MINIMUM_AGE` (1 day) is ever removed: retention
  properties refuse values below 1 day, and :func:`cutoff` refuses a cutoff closer to now, so a
  value that escaped validation cannot empty a table.
- **Only consolidated raw rows.** SendingFeedback and TrackingHit rows are removed only up to
  updateDeliveryExecInfo's cursors: a row that workflow has not read yet is kept, however old.
- **Tracking rows outlive their logs.** TrackingLog points to DeliveryLog without a database
  constraint: purging a delivery log neither deletes, locks nor changes its tracking rows (kept
  360 days against 180), and nothing here writes a delivery's indicators.
- **Ordered activities.** If one fails, the later ones do not run (the engine stops at the first
  failure) and the journal names the activity that failed and those that did not run.
- **Dry run.** ``dry_run=true`` counts what would go (counters ``<table>_to_remove`` and
  ``quarantine_to_release_*``) with read-only queries; a row two rules would remove is counted once,
  by the activity that would remove it first. A count outside any unit is saved with the
  activity's end.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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
    Quarantine,
    SendingFeedback,
    TrackingHit,
    TrackingLog,
)
from workflows import metrics
from workflows.builtin import cleanup_purges as purges
from workflows.builtin.cleanup_purges import Selection, column
from workflows.builtin.update_delivery_exec_info import FEEDBACK_CURSOR, HITS_CURSOR
from workflows.builtin.update_delivery_exec_info import WORKFLOW_ID as EXEC_INFO_ID
from workflows.context import ActivityContext, Batch, LeaseLost, RunHalted, cursors_of
from workflows.definition import Activity, Schedule, WorkflowDefinition, register
from workflows.errors import PermanentError, describe
from workflows.models import ActivityMode, ActivityRun, LogLevel, RunStatus, Workflow, WorkflowLog, WorkflowRun
from workflows.properties import BooleanProperty, ChoiceProperty, DurationProperty, IntegerProperty

WORKFLOW_ID = "cleanup"

#: The floor under every retention: nothing younger than this is ever removed.
MINIMUM_AGE = timedelta(days=1)

#: Longest retention accepted, in days (100 years: far beyond any policy, far from date overflow).
MAXIMUM_RETENTION_DAYS = 36_500

#: Rows per batch for the log tables (delivery logs, tracking logs, raw feedback and hits, forecast
#: logs): narrow rows, deleted 20,000 at a time in ~50 ms on PostgreSQL (a million in ~2-2.5 s), so
#: each transaction and its row locks are short, while 50 commits per million rows cost little next
#: to the deletes themselves.
DEFAULT_LOG_BATCH_SIZE = 20_000

#: Rows per batch for everything else (events with their JSON payloads, aggregates, deliveries,
#: subscriptions, the journal, runs, quarantine rows): wider rows or costlier predicates.
DEFAULT_BATCH_SIZE = 5_000

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
            return (Selection(self.model, f"{age} < %s", (purges.db_date(first_kept),)),
                    f"days before {first_kept:%Y-%m-%d} ({days} days)")
        return (Selection(self.model, f"{age} < %s", (purges.db_datetime(before),)),
                f"{self.age_field} before {before:%Y-%m-%d %H:%M:%S} UTC ({days} days)")


DELIVERY_LOGS = AgeRule("delivery_logs", DeliveryLog, "updated_at", "delivery_logs_days", 180, "delivery logs",
                        "Delivery logs not updated for this many days are removed (their tracking rows stay).",
                        log_table=True)
TRACKING_LOGS = AgeRule("tracking_logs", TrackingLog, "tracked_at", "tracking_logs_days", 360, "tracking logs",
                        "Tracking logs older than this many days are removed.", log_table=True)
SENDING_FEEDBACK = AgeRule("sending_feedback", SendingFeedback, "received_at", "sending_feedback_days", 30,
                           "raw sending feedback rows",
                           "Raw sending feedback older than this many days is removed, once consolidated.",
                           log_table=True)
TRACKING_HITS = AgeRule("tracking_hits", TrackingHit, "hit_at", "tracking_hits_days", 30, "raw tracking hits",
                        "Raw tracking hits older than this many days are removed, once consolidated.", log_table=True)
EVENTS = AgeRule("events", Event, "created_at", "events_days", 30, "events",
                 "Real-time events created more than this many days ago are removed.")
ARCHIVED_EVENTS = AgeRule("archived_events", EventHistory, "archived_at", "archived_events_days", 360,
                          "archived events", "Archived events archived more than this many days ago are removed.")
DELIVERY_AGGREGATES = AgeRule("delivery_aggregates", DeliveryAggregate, "day", "delivery_aggregates_days", 360,
                              "delivery aggregates", "Daily aggregates of days older than this many days are removed.",
                              whole_days=True)
FORECAST_LOGS = AgeRule("forecast_logs", ForecastLog, "computed_at", "forecast_logs_days", 7, "forecast logs",
                        "Forecast logs not recomputed for this many days are removed.", log_table=True)
DELIVERIES = AgeRule("deliveries", Delivery, "finished_at", "deliveries_days", 730, "finished or failed deliveries",
                     "Finished or failed deliveries that ended more than this many days ago are removed, with their "
                     "logs, tracking logs, aggregates and forecast logs.")
APP_SUBSCRIPTIONS = AgeRule("app_subscriptions", AppSubscription, "updated_at", "app_subscriptions_days", 180,
                            "disabled app subscriptions",
                            "Disabled app subscriptions not updated for this many days are removed.")

RETENTIONS = (DELIVERY_LOGS, TRACKING_LOGS, SENDING_FEEDBACK, TRACKING_HITS, EVENTS, ARCHIVED_EVENTS,
              DELIVERY_AGGREGATES, FORECAST_LOGS, DELIVERIES, APP_SUBSCRIPTIONS)

#: Counter name prefix (``<name>_removed``) → the table it counts (to know which tables to vacuum).
COUNTED_TABLES: dict[str, type[models.Model]] = {
    **{rule.name: rule.model for rule in RETENTIONS},
    "journal_entries": WorkflowLog,
    "workflow_runs": WorkflowRun,
    "activity_runs": ActivityRun,
}


# --------------------------------------------------------------------------------------------
# Shared machinery
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


def purge_expired(ctx: ActivityContext, rule: AgeRule) -> None:
    selection, boundary = rule.expired(ctx, timezone.now())
    removed = purge(ctx, selection, name=rule.name, order_by=rule.age_field, batch_size=rule.batch_size(ctx))
    journal_removed(ctx, removed, f"{rule.what} with {boundary}")


def purge_consolidated(ctx: ActivityContext, rule: AgeRule, cursor: str) -> None:
    """Like :func:`purge_expired`, but only rows updateDeliveryExecInfo has consolidated
    (``id <=`` its cursor ``cursor``): an unconsolidated row stays, however old."""
    cursors = cursors_of(EXEC_INFO_ID)
    consolidated = cursors.get(cursor)
    if not isinstance(consolidated, int) or isinstance(consolidated, bool):
        ctx.declare(counter_name(ctx, rule.name))
        ctx.log(f"Kept all {rule.what}: {EXEC_INFO_ID} has not consolidated any yet (no cursor {cursor!r}).")
        return
    expired, boundary = rule.expired(ctx, timezone.now())
    selection = expired.narrowed(f"{expired.pk} <= %s", (consolidated,))
    removed = purge(ctx, selection, name=rule.name, order_by=rule.age_field, batch_size=rule.batch_size(ctx))
    journal_removed(ctx, removed, f"{rule.what} consolidated by {EXEC_INFO_ID} (id up to {consolidated:,}) with {boundary}")


def stops_the_run_on_failure(activity: Activity) -> Activity:
    """Journal which activity failed and which will therefore not run, then let the error reach
    the engine, which fails the run there."""

    @functools.wraps(activity)
    def wrapper(ctx: ActivityContext) -> None:
        try:
            activity(ctx)
        except (RunHalted, LeaseLost):
            raise  # paused, stopped, or taken over by another run: not a failure of this activity
        except Exception as error:
            names = definition.activity_names
            later = names[names.index(activity.__name__) + 1:]
            ctx.log(f"Activity {activity.__name__} failed: {describe(error)}. The later activities did not run: "
                    f"{', '.join(later) if later else 'none (it was the last)'}.", level=LogLevel.ERROR)
            raise

    return wrapper


# --------------------------------------------------------------------------------------------
# Activities, in order
# --------------------------------------------------------------------------------------------

def purge_delivery_logs(ctx: ActivityContext) -> None:
    """Delivery logs not updated within the retention. Their tracking rows stay as they are."""
    purge_expired(ctx, DELIVERY_LOGS)


def purge_tracking_logs(ctx: ActivityContext) -> None:
    purge_expired(ctx, TRACKING_LOGS)


def purge_sending_feedback(ctx: ActivityContext) -> None:
    purge_consolidated(ctx, SENDING_FEEDBACK, FEEDBACK_CURSOR)


def purge_tracking_hits(ctx: ActivityContext) -> None:
    purge_consolidated(ctx, TRACKING_HITS, HITS_CURSOR)


def purge_events(ctx: ActivityContext) -> None:
    """Events still in the live table a month after they arrived: mcSynch_local archives final
    events within the hour, so these are the ones that never got anywhere."""
    purge_expired(ctx, EVENTS)


def purge_archived_events(ctx: ActivityContext) -> None:
    purge_expired(ctx, ARCHIVED_EVENTS)


def purge_delivery_aggregates(ctx: ActivityContext) -> None:
    purge_expired(ctx, DELIVERY_AGGREGATES)


def purge_forecast_logs(ctx: ActivityContext) -> None:
    """Forecast rows not recomputed for a week: forecasting rewrites the rows of every delivery in
    its horizon each day, so an old ``computed_at`` means the delivery left the forecast."""
    purge_expired(ctx, FORECAST_LOGS)


@dataclass(frozen=True)
class Dependent:
    """Rows pointing to a delivery (``field``) that must go before it; ``rule`` is the retention
    rule that also purges that table on its own, if any (so a dry run counts each row once)."""

    model: type[models.Model]
    field: str
    name: str  # counters <name>_removed / <name>_to_remove
    rule: AgeRule | None

    def of(self, delivery_ids: str) -> str:
        return f"{column(self.model, self.field)} {delivery_ids}"

    def batch_size(self, ctx: ActivityContext) -> int:
        return self.rule.batch_size(ctx) if self.rule else ctx.properties["batch_size"]


#: The tables pointing to Delivery that have their own retention rule, in purge order.
OWN_RULES = {TrackingLog: TRACKING_LOGS, DeliveryLog: DELIVERY_LOGS, DeliveryAggregate: DELIVERY_AGGREGATES,
             ForecastLog: FORECAST_LOGS}


def delivery_dependents() -> list[Dependent]:
    """Every model whose rows cascade from a delivery, read from the models (so a table added later,
    like the shared KPI rows, goes with its delivery instead of blocking the delete): the tables
    with their own rule first, in :data:`OWN_RULES` order, then the others by name."""
    cascading = [rel for rel in Delivery._meta.related_objects if rel.on_delete is models.CASCADE]
    dependents = [
        Dependent(rel.related_model, rel.field.name,
                  OWN_RULES[rel.related_model].name if rel.related_model in OWN_RULES
                  else str(rel.related_model._meta.verbose_name_plural).lower().replace(" ", "_"),
                  OWN_RULES.get(rel.related_model))
        for rel in cascading
    ]
    order = list(OWN_RULES)
    return sorted(dependents, key=lambda d: (order.index(d.model) if d.model in order else len(order), d.name))


def keeping_relations() -> list[Any]:
    """Relations that forbid deleting a delivery they point to (``PROTECT``: an A/B test's winner,
    whose link guarantees the winner is never sent twice). Such deliveries are kept."""
    return [rel for rel in Delivery._meta.related_objects if rel.on_delete is models.PROTECT]


def expired_deliveries(ctx: ActivityContext, now: datetime) -> tuple[Selection, str]:
    """Finished or failed deliveries past retention, except those another row protects."""
    ended, boundary = DELIVERIES.expired(ctx, now)
    expired = ended.narrowed(f"{column(Delivery, 'state')} IN (%s, %s)", (Delivery.State.FINISHED, Delivery.State.FAILED))
    for rel in keeping_relations():
        referring = column(rel.related_model, rel.field.name)
        expired = expired.narrowed(f"{column(Delivery, 'id')} NOT IN (SELECT {referring} FROM "
                                   f"{purges.table(rel.related_model)} WHERE {referring} IS NOT NULL)")
    return expired, boundary


def purge_old_deliveries(ctx: ActivityContext) -> None:
    """Finished or failed deliveries past retention: first the rows that cascade from them
    (tracking logs, logs, aggregates, forecast logs, ...), each in bounded batches, then the
    delivery rows."""
    now = timezone.now()
    expired, boundary = expired_deliveries(ctx, now)
    dependents = delivery_dependents()
    names = [DELIVERIES.name, *(dependent.name for dependent in dependents)]
    ctx.declare(*(counter_name(ctx, name) for name in names))
    removed: Counter[str] = Counter()
    if dry_run(ctx):
        removed = _count_delivery_purge(ctx, expired, dependents, now)
        for name in names:
            ctx.count(counter_name(ctx, name), removed[name])  # read-only: saved with the activity's end
    else:
        page_size = DELIVERIES.batch_size(ctx)
        after = 0
        while True:
            page = purges.first_ids(expired, order_by="id", limit=page_size, after=after)
            for delivery_id in page:
                removed.update(_purge_delivery(ctx, delivery_id, expired, dependents))
            if len(page) < page_size:
                break
            after = page[-1]
    details = ", ".join(f"{removed[d.name]:,} {d.name.replace('_', ' ')}" for d in dependents)
    journal_removed(ctx, sum(removed[name] for name in names),
                    f"rows: {removed[DELIVERIES.name]:,} {DELIVERIES.what} with {boundary}, and with them {details}")


def _purge_delivery(ctx: ActivityContext, delivery_id: int, expired: Selection,
                    dependents: list[Dependent]) -> Counter[str]:
    """One delivery: its dependents in bounded batches, then one last unit deleting whatever was
    written for it meanwhile and the delivery row itself."""
    removed: Counter[str] = Counter()
    for dependent in dependents:
        removed[dependent.name] += purge(ctx, Selection(dependent.model, dependent.of("= %s"), (delivery_id,)),
                                         name=dependent.name, order_by="id", batch_size=dependent.batch_size(ctx))

    def last_rows_and_delivery() -> Counter[str]:
        purges.relax_durability()
        # A row written for the delivery since its batches (a late tracking row) goes too, in this
        # unit: it would otherwise block the delete.
        done: Counter[str] = Counter()
        for dependent in dependents:
            done[dependent.name] = purges.delete_all(Selection(dependent.model, dependent.of("= %s"), (delivery_id,)))
        done[DELIVERIES.name] = purges.delete_all(expired.narrowed(f"{column(Delivery, 'id')} = %s", (delivery_id,)))
        for name, count in done.items():
            ctx.count(counter_name(ctx, name), count)
        ctx.advance(done[DELIVERIES.name])
        return done

    removed.update(ctx.unit(last_rows_and_delivery))
    return removed


def _count_delivery_purge(ctx: ActivityContext, expired: Selection, dependents: list[Dependent],
                          now: datetime) -> Counter[str]:
    """Dry run: the expired deliveries and the dependents not already counted by their own rule."""
    counts: Counter[str] = Counter({DELIVERIES.name: purges.count(expired)})
    modes = Workflow.objects.filter(pk=WORKFLOW_ID).values_list("activity_modes", flat=True).first() or {}
    for dependent in dependents:
        of_expired = Selection(dependent.model, dependent.of(f"IN (SELECT {column(Delivery, 'id')} FROM {expired.table} "
                                                             f"WHERE {expired.where})"), tuple(expired.params))
        rule = dependent.rule
        if rule and modes.get(f"purge_{rule.name}", ActivityMode.NORMAL) != ActivityMode.DISABLED:
            own, _ = rule.expired(ctx, now)
            of_expired = of_expired.narrowed(f"NOT ({own.where})", own.params)
        counts[dependent.name] = purges.count(of_expired)
    return counts


def purge_app_subscriptions(ctx: ActivityContext) -> None:
    """Disabled push subscriptions not updated within the retention; enabled ones always stay."""
    expired, boundary = APP_SUBSCRIPTIONS.expired(ctx, timezone.now())
    selection = expired.narrowed(f"{column(AppSubscription, 'disabled')} = %s", (True,))
    removed = purge(ctx, selection, name=APP_SUBSCRIPTIONS.name, order_by="updated_at",
                    batch_size=APP_SUBSCRIPTIONS.batch_size(ctx))
    journal_removed(ctx, removed, f"{APP_SUBSCRIPTIONS.what} with {boundary}")


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
        before = purges.db_datetime(cutoff(now, history_days, what=f"the history of {workflow_id}"))
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


def release_quarantine(ctx: ActivityContext) -> None:
    """Erroneous addresses get another chance (status ``valid``, error count 0): after a later
    successful delivery, after ``soft_error_release_days`` without a soft error, after
    ``mailbox_full_release_days`` for a full mailbox. Quarantined and denylisted never are."""
    now = timezone.now()
    rules = purges.release_rules(
        soft_error_before=cutoff(now, ctx.properties["soft_error_release_days"], what="soft errors"),
        mailbox_full_before=cutoff(now, ctx.properties["mailbox_full_release_days"], what="mailbox-full errors"),
    )
    counter = {rule.counter: rule.counter.replace("released", "to_release") if dry_run(ctx) else rule.counter
               for rule in rules}
    ctx.declare(*counter.values())
    released: Counter[str] = Counter({rule.counter: 0 for rule in rules})
    erroneous = purges.erroneous_addresses()

    def step(after: int, limit: int) -> Batch:
        """The erroneous rows of the next id range (after, last]: released, or counted in a dry run."""
        rows, last = purges.next_id_range(erroneous, after=after, limit=limit)
        if rows and dry_run(ctx):
            found = purges.count_releasable(rules, after=after, up_to=last)
        elif rows:
            found = {rule.counter: purges.release(rule, after=after, up_to=last, now=now) for rule in rules}
        else:
            found = {}
        released.update(found)  # read only once the batches return, all committed
        return Batch(rows=rows, cursor=last, counters={counter[name]: count for name, count in found.items()})

    # The position (the last id examined) lives in memory: releasing is idempotent, so a resumed
    # run simply examines the rows again.
    ctx.batches(None, step, start=0, batch_size=ctx.properties["batch_size"])
    if sum(released.values()) or dry_run(ctx):
        verb = "Dry run: would release" if dry_run(ctx) else "Released"
        ctx.log(f"{verb} {sum(released.values()):,} erroneous addresses: "
                + "; ".join(f"{released[rule.counter]:,} because {rule.description}" for rule in rules) + ".")


def update_statistics(ctx: ActivityContext) -> None:
    """PostgreSQL ``VACUUM ANALYZE`` (or ``ANALYZE``) of the tables this run thinned; SQLite
    ``ANALYZE``. Nothing for ``statistics=none``, a dry run, or a run that removed nothing."""
    mode = ctx.properties["statistics"]
    if mode == "none":
        ctx.log("Statistics left as they are (statistics=none).")
        return
    if dry_run(ctx):
        ctx.log("Dry run: nothing was removed, statistics left as they are.")
        return
    tables = tables_thinned(ctx.run)
    if not tables:
        ctx.log("Nothing was removed or released: statistics left as they are.")
        return
    # PostgreSQL refuses VACUUM inside a transaction block, and a unit of work is one; a long
    # statement inside a unit would also leave the unit's session idle in its transaction, which
    # PostgreSQL ends after a lease period. So each statement runs outside any unit, as the items
    # of ``ctx.each`` are produced (refresh_statistics uses a connection of its own in autocommit),
    # and the unit that follows it only counts the table refreshed. The engine's boundary between
    # two units (lease, pause, stop) therefore comes between two tables, as for any batch.
    def refreshed() -> Iterator[str]:
        for model in tables:
            yield purges.refresh_statistics(model, mode=mode)

    statements: list[str] = []

    def count_refreshed(statement: str) -> dict[str, int]:
        statements.append(statement)
        return {"tables_refreshed": 1}

    ctx.each(refreshed(), count_refreshed)
    ctx.log(f"Refreshed statistics: {'; '.join(statements)}.")


def tables_thinned(run: WorkflowRun) -> list[type[models.Model]]:
    """The tables this run removed rows from (or released quarantine rows of), in a fixed order."""
    totals: Counter[str] = Counter()
    for counters in ActivityRun.objects.filter(run=run).values_list("counters", flat=True):
        totals.update({name: value for name, value in counters.items() if isinstance(value, int)})
    counted = {**COUNTED_TABLES, **{dependent.name: dependent.model for dependent in delivery_dependents()}}
    tables = [model for name, model in counted.items() if totals.get(f"{name}_removed", 0) > 0]
    if any(value > 0 for name, value in totals.items() if name.startswith("quarantine_released")):
        tables.append(Quarantine)
    return list(dict.fromkeys(tables))


definition = register(WorkflowDefinition(
    id=WORKFLOW_ID,
    label="Database cleanup",
    description="Purges logs, events, aggregates and workflow history past their retention, releases quarantined addresses, "
                "then refreshes database statistics.",
    schedule=Schedule("0 4 * * *"),
    activities=tuple(stops_the_run_on_failure(activity) for activity in (
        purge_delivery_logs,
        purge_tracking_logs,
        purge_sending_feedback,
        purge_tracking_hits,
        purge_events,
        purge_archived_events,
        purge_delivery_aggregates,
        purge_forecast_logs,
        purge_old_deliveries,
        purge_app_subscriptions,
        purge_workflow_history,
        release_quarantine,
        update_statistics,
    )),
    properties=(
        *(DurationProperty(rule.retention, rule.default_days, help=rule.help, minimum=MINIMUM_AGE.days,
                           maximum=MAXIMUM_RETENTION_DAYS, unit="days") for rule in RETENTIONS),
        DurationProperty("soft_error_release_days", 10, minimum=MINIMUM_AGE.days, maximum=MAXIMUM_RETENTION_DAYS, unit="days",
                         help="An erroneous address whose last soft error (other than mailbox full) is older than this "
                              "is released."),
        DurationProperty("mailbox_full_release_days", 30, minimum=MINIMUM_AGE.days, maximum=MAXIMUM_RETENTION_DAYS,
                         unit="days", help="An erroneous address whose mailbox was full more than this many days ago "
                                           "is released."),
        IntegerProperty("log_batch_size", DEFAULT_LOG_BATCH_SIZE, minimum=1, maximum=1_000_000, unit="rows",
                        help="Rows deleted per transaction in the log tables (delivery, tracking, forecast logs, raw "
                             "feedback and hits)."),
        IntegerProperty("batch_size", DEFAULT_BATCH_SIZE, minimum=1, maximum=1_000_000, unit="rows",
                        help="Rows deleted (or quarantine rows examined) per transaction in the other tables."),
        ChoiceProperty("statistics", "vacuum_analyze", choices=purges.STATISTICS_MODES,
                       help="Last activity: PostgreSQL VACUUM ANALYZE of the purged tables, ANALYZE only, or nothing "
                            "(SQLite: ANALYZE for both)."),
        BooleanProperty("dry_run", False, help="Count what would be removed or released, change nothing."),
    ),
    # A first run over a large backlog (then VACUUM of big tables) can take hours; each committed
    # batch stays done if the limit is hit, and the next run continues.
    soft_time_limit_s=3 * 3600,
    hard_time_limit_s=3 * 3600 + 300,
    batch_size=DEFAULT_BATCH_SIZE,
))
