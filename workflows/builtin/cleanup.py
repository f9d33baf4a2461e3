"""cleanup — Database cleanup.

Why it exists: delivery logs, tracking logs, raw feedback and hits, events and the engine's own
journal grow without bound. Every day at 04:00 this workflow removes what is past its retention,
releases the quarantined addresses that deserve another chance, then refreshes the database
statistics of the tables it thinned.

This module holds the activities, in order, and the definition with its properties; the retention
rules and the purge of what is past them are :mod:`workflows.builtin.cleanup_retention`'s, the
SQL is :mod:`workflows.builtin.cleanup_purges`'s, and the partitions of the log tables (kept
ahead by the first activity, detached whole when past retention, their tables dropped by a later
activity) are :mod:`workflows.builtin.cleanup_partitions`'s.

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
- **Minimum age.** Nothing younger than :data:`~workflows.builtin.cleanup_retention.MINIMUM_AGE`
  (1 day) is ever removed: retention properties refuse values below 1 day, and
  :func:`~workflows.builtin.cleanup_retention.cutoff` refuses a cutoff closer to now, so a value
  that escaped validation cannot empty a table.
- **Only consolidated raw rows.** SendingFeedback, TrackingHit and InboundSms rows are removed only up to
  updateDeliveryExecInfo's cursors: a row that workflow has not read yet is kept, however old.
- **Tracking rows outlive their logs.** TrackingLog points to DeliveryLog without a database
  constraint: purging a delivery log neither deletes, locks nor changes its tracking rows (aged
  on their own ``tracked_at``), and nothing here writes a delivery's indicators.
- **Whole partitions first (PostgreSQL).** A log purge first detaches the partitions whose every
  row it would remove, one fenced unit per DETACH, then purges the rest row by row; a partition
  that cannot be locked within 1 s is purged row by row instead. The detached tables are dropped
  together by ``drop_detached_partitions``, after the last log purge and before the purge of old
  deliveries, which their foreign keys would otherwise hold back.
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
from datetime import datetime
from typing import Any

from django.db import models
from django.utils import timezone

from campaign.models import AppSubscription, Delivery, DeliveryAggregate, DeliveryLog, ForecastLog, Quarantine, TrackingLog
from workflows.builtin import cleanup_partitions as by_partition
from workflows.builtin import cleanup_purges as purges
from workflows.builtin.cleanup_purges import Selection, column
from workflows.builtin.cleanup_retention import (
    APP_SUBSCRIPTIONS,
    ARCHIVED_EVENTS,
    DELIVERIES,
    DELIVERY_AGGREGATES,
    DELIVERY_LOGS,
    EVENTS,
    FORECAST_LOGS,
    INBOUND_SMS,
    MAXIMUM_RETENTION_DAYS,
    MINIMUM_AGE,
    RELEASED_QUARANTINE,
    RETENTIONS,
    SENDING_FEEDBACK,
    TRACKING_HITS,
    TRACKING_LOGS,
    AgeRule,
    counter_name,
    cutoff,
    dry_run,
    journal_removed,
    purge,
    purge_consolidated,
    purge_expired,
    purge_workflow_history,
)
from workflows.builtin.update_delivery_exec_info import FEEDBACK_CURSOR, HITS_CURSOR, INBOUND_SMS_CURSOR
from workflows.context import ActivityContext, Batch, LeaseLost, RunHalted
from workflows.definition import Activity, Schedule, WorkflowDefinition, register
from workflows.errors import describe
from workflows.models import ActivityMode, ActivityRun, LogLevel, Workflow, WorkflowLog, WorkflowRun
from workflows.properties import BooleanProperty, ChoiceProperty, DurationProperty, IntegerProperty
from workflows.sql import table

WORKFLOW_ID = "cleanup"

#: Rows per batch for the log tables (delivery logs, tracking logs, raw feedback and hits, forecast
#: logs): narrow rows, deleted 20,000 at a time in ~50 ms on PostgreSQL (a million in ~2-2.5 s), so
#: each transaction and its row locks are short, while 50 commits per million rows cost little next
#: to the deletes themselves.
DEFAULT_LOG_BATCH_SIZE = 20_000

#: Rows per batch for everything else (events with their JSON payloads, aggregates, deliveries,
#: subscriptions, the journal, runs, quarantine rows): wider rows or costlier predicates.
DEFAULT_BATCH_SIZE = 5_000

#: Counter name prefix (``<name>_removed``) → the table it counts (to know which tables to vacuum).
COUNTED_TABLES: dict[str, type[models.Model]] = {
    **{rule.name: rule.model for rule in RETENTIONS},
    "journal_entries": WorkflowLog,
    "workflow_runs": WorkflowRun,
    "activity_runs": ActivityRun,
}


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

def maintain_partitions(ctx: ActivityContext) -> None:
    """PostgreSQL: partitions of the log tables from the current period to three months ahead.
    Nothing on SQLite."""
    by_partition.maintain(ctx)


# On PostgreSQL each log purge first detaches whole the partitions past retention whose every row
# it would remove (:mod:`workflows.builtin.cleanup_partitions`), then purges what is left row by
# row; drop_detached_partitions drops their tables.

def purge_delivery_logs(ctx: ActivityContext) -> None:
    """Delivery logs not updated within the retention. Their tracking rows stay as they are."""
    purge_expired(ctx, DELIVERY_LOGS, skipping=by_partition.detach_expired_partitions(ctx, DELIVERY_LOGS))


def purge_tracking_logs(ctx: ActivityContext) -> None:
    purge_expired(ctx, TRACKING_LOGS, skipping=by_partition.detach_expired_partitions(ctx, TRACKING_LOGS))


def purge_sending_feedback(ctx: ActivityContext) -> None:
    counted = by_partition.detach_expired_partitions(ctx, SENDING_FEEDBACK, cursor=FEEDBACK_CURSOR)
    purge_consolidated(ctx, SENDING_FEEDBACK, FEEDBACK_CURSOR, skipping=counted)


def purge_tracking_hits(ctx: ActivityContext) -> None:
    counted = by_partition.detach_expired_partitions(ctx, TRACKING_HITS, cursor=HITS_CURSOR)
    purge_consolidated(ctx, TRACKING_HITS, HITS_CURSOR, skipping=counted)


def purge_inbound_sms(ctx: ActivityContext) -> None:
    counted = by_partition.detach_expired_partitions(ctx, INBOUND_SMS, cursor=INBOUND_SMS_CURSOR)
    purge_consolidated(ctx, INBOUND_SMS, INBOUND_SMS_CURSOR, skipping=counted)


def purge_events(ctx: ActivityContext) -> None:
    """Events still in the live table a month after they arrived: mcSynch_local archives final
    events within the hour, so these are the ones that never got anywhere."""
    purge_expired(ctx, EVENTS)


def purge_archived_events(ctx: ActivityContext) -> None:
    purge_expired(ctx, ARCHIVED_EVENTS, skipping=by_partition.detach_expired_partitions(ctx, ARCHIVED_EVENTS))


def drop_detached_partitions(ctx: ActivityContext) -> None:
    """PostgreSQL: the tables of the partitions the purges above detached (and any an earlier run
    left detached), dropped in one statement. Nothing on SQLite."""
    by_partition.drop_detached(ctx)


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
                                   f"{table(rel.related_model)} WHERE {referring} IS NOT NULL)")
    return expired, boundary


def purge_old_deliveries(ctx: ActivityContext) -> None:
    """Finished or failed deliveries past retention, when ``purge_deliveries`` is on (off by
    default: deliveries are kept unless configured): first the rows that cascade from them
    (tracking logs, logs, aggregates, forecast logs, ...), each in bounded batches, then the
    delivery rows."""
    now = timezone.now()
    expired, boundary = expired_deliveries(ctx, now)
    dependents = delivery_dependents()
    names = [DELIVERIES.name, *(dependent.name for dependent in dependents)]
    ctx.declare(*(counter_name(ctx, name) for name in names))
    if not ctx.properties["purge_deliveries"]:
        ctx.log("Kept every delivery: purge_deliveries is off (deliveries are kept unless configured).")
        return
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


def purge_released_quarantine(ctx: ActivityContext) -> None:
    """Quarantine rows in status ``valid`` (released: by the previous activity, by a later
    successful delivery, or by hand) not updated for ``released_quarantine_days``. Erroneous,
    quarantined and denylisted rows never go."""
    expired, boundary = RELEASED_QUARANTINE.expired(ctx, timezone.now())
    selection = expired.narrowed(f"{column(Quarantine, 'status')} = %s", (Quarantine.Status.VALID,))
    removed = purge(ctx, selection, name=RELEASED_QUARANTINE.name, order_by="updated_at",
                    batch_size=RELEASED_QUARANTINE.batch_size(ctx))
    journal_removed(ctx, removed, f"{RELEASED_QUARANTINE.what} with {boundary}")


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
        maintain_partitions,
        purge_delivery_logs,
        purge_tracking_logs,
        purge_sending_feedback,
        purge_tracking_hits,
        purge_inbound_sms,
        purge_events,
        purge_archived_events,
        drop_detached_partitions,
        purge_delivery_aggregates,
        purge_forecast_logs,
        purge_old_deliveries,
        purge_app_subscriptions,
        purge_workflow_history,
        release_quarantine,
        purge_released_quarantine,
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
        BooleanProperty("purge_deliveries", False,
                        help="Off (the default), deliveries are kept however old; on, finished or failed deliveries "
                             "older than deliveries_days are removed with what cascades from them."),
        BooleanProperty("dry_run", False, help="Count what would be removed or released, change nothing."),
    ),
    # A first run over a large backlog (then VACUUM of big tables) can take hours; each committed
    # batch stays done if the limit is hit, and the next run continues.
    soft_time_limit_s=3 * 3600,
    hard_time_limit_s=3 * 3600 + 300,
    batch_size=DEFAULT_BATCH_SIZE,
))
