"""kpiSharing — KPI sharing with Analytics.

Why it exists: the analytics service shows the email KPIs of each delivery per day next to the
site's own figures. Every 15 minutes this workflow pushes what changed in the email
DeliveryAggregate rows (kept by reportingAggregates) of the look-back window.

The service **adds** what it receives (see :mod:`campaign.integrations.analytics`), so a day
whose figures changed is pushed as an increment: its aggregate minus what the service was already
told, which the ``SharedKpi`` ledger remembers per (day, delivery). Pushing the aggregate itself
would count the first figures twice as soon as a day changes again.

Invariants:

- **Nothing counted twice, nothing lost.** A batch is computed, then saved as the *pending* batch
  of the ``KpiShareState`` row (next to the ledger) by one unit of work, before it is sent; the
  push itself runs outside any transaction. Once the service acknowledged it (``accepted`` = its
  row count), one unit adds it to the ledger, moves the watermark past its rows, clears the
  pending batch and journals it. A crash, a failed push or a lost lease leaves the pending batch in
  place, and the next run (of this workflow or of kpiReconciliation) first resends exactly that
  batch, same id, same rows, which the service applies at most once.
- **Fenced.** Every write is a unit of work, which commits only while the run holds its lease. A
  run that lost its lease after the service applied a batch records nothing; the batch stays
  pending and the next run resends it, which the service answers without applying it again.
  Recording an acknowledgement locks the state row and records only the batch still pending: of
  two runs acknowledging one batch, one adds it to the ledger.
- **The ledger holds still under a pending batch.** A new batch is computed only when none is
  pending, and kpiReconciliation resends the pending one before it writes the ledger, so the
  totals a batch id was computed from are still the ledger's when the batch is recorded.
- **Which rows.** Email aggregates of the days ``today - lookback_days`` .. today whose
  ``updated_at`` (when their counters last changed) is after the watermark, in ``(updated_at, id)``
  order, ``batch_size`` source rows per batch. Each run starts ``CHANGE_MARGIN`` before the
  watermark, so a row stamped just before a concurrent commit is still seen; a row seen twice has
  nothing left to push (its ledger row already matches) and costs one comparison.
- **Batch ids are content-derived** (:func:`campaign.integrations.analytics.batch_id_for`): the
  rows' increments and the totals they start from.
- kpiReconciliation declares that it never runs at the same time as this workflow
  (``exclusive_with``): the engine refuses the claim of either while the other holds its lease,
  and the refused run waits (re-queued) for ``wait_for_exclusive_s``, then is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from campaign.integrations import analytics
from campaign.integrations.analytics import COUNTERS, AnalyticsClient, KpiRow
from campaign.integrations.http import get_account
from campaign.models import Channel, Delivery, DeliveryAggregate, KpiShareState, SharedKpi
from workflows.context import ActivityContext, SkipRun
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.models import LogLevel, WorkflowLog
from workflows.properties import DurationProperty, IntegerProperty

SHARING_ID = "kpiSharing"

#: About two months: a late open or bounce of last month's deliveries is still shared.
DEFAULT_LOOKBACK_DAYS = 62
#: Rows per push: a body of ~150 kB, answered in well under a second by a typical collector, and a
#: pending batch small enough to keep in one row of ``KpiShareState``. The maximum bounds both.
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 1000

#: How far before the watermark each run starts reading: more than any aggregate transaction lasts
#: or any two workers' clocks differ, so a row stamped before a concurrent commit is not skipped.
CHANGE_MARGIN = timedelta(minutes=5)

#: The channel whose aggregates are shared, and the key of its ``KpiShareState`` row.
SHARED_CHANNEL = Channel.EMAIL

#: The protocol's counter → the DeliveryAggregate column it comes from.
AGGREGATE_COLUMNS = {
    "sent": "sent", "delivered": "delivered", "opened": "opens", "unique_opens": "unique_opens",
    "clicked": "clicks", "unique_clicks": "unique_clicks", "unsubscribed": "unsubscribes", "bounces": "bounces",
}

Key = tuple[date, int]  # (day, delivery id)
Position = tuple[datetime, int]  # (updated_at, aggregate id)


# -- the account ----------------------------------------------------------------------------------
def analytics_client() -> AnalyticsClient:
    """The client of the enabled analytics account; no such account skips the run."""
    account = get_account(analytics.KIND)
    if account is None:
        raise SkipRun(f"no enabled {analytics.KIND} account")
    return AnalyticsClient(account)


# -- local figures --------------------------------------------------------------------------------
def email_aggregates() -> QuerySet[DeliveryAggregate]:
    return DeliveryAggregate.objects.filter(channel=SHARED_CHANNEL)


_ROW_FIELDS = ("id", "updated_at", "day", "delivery_id", "delivery__label", "delivery__campaign_id",
               "delivery__campaign__label", *AGGREGATE_COLUMNS.values())


def aggregate_values(queryset: QuerySet[DeliveryAggregate]) -> QuerySet:
    return queryset.values(*_ROW_FIELDS)


def kpi_row(values: Mapping[str, Any]) -> KpiRow:
    """An aggregate (a row of :func:`aggregate_values`) as a row of totals in the protocol's terms."""
    return KpiRow(
        date=values["day"], campaign_id=values["delivery__campaign_id"],
        campaign_label=values["delivery__campaign__label"] or "", delivery_id=values["delivery_id"],
        delivery_label=values["delivery__label"],
        **{name: values[column] for name, column in AGGREGATE_COLUMNS.items()},
    )


def local_totals(*, date_from: date, date_to: date) -> dict[Key, KpiRow]:
    """The email aggregates of these days (both included), by (day, delivery)."""
    queryset = email_aggregates().filter(day__gte=date_from, day__lte=date_to).order_by("day", "delivery_id")
    return {(values["day"], values["delivery_id"]): kpi_row(values) for values in aggregate_values(queryset)}


# -- the ledger: what the service was told --------------------------------------------------------
def ledger_of(keys: Iterable[Key]) -> dict[Key, dict[str, int]]:
    """The ledger rows of these (day, delivery) pairs; a pair without one was told nothing (zeros)."""
    keys = set(keys)
    if not keys:
        return {}
    days = [day for day, _ in keys]
    queryset = SharedKpi.objects.filter(
        day__gte=min(days), day__lte=max(days), delivery_id__in=sorted({delivery for _, delivery in keys})
    ).values("day", "delivery_id", *COUNTERS)
    ledger = {}
    for values in queryset:  # a superset of the keys, bounded by the batch's deliveries × days
        key = (values["day"], values["delivery_id"])
        if key in keys:
            ledger[key] = {name: values[name] for name in COUNTERS}
    return ledger


def write_ledger(totals: Mapping[Key, Mapping[str, int]]) -> None:
    """Set these ledger rows to these totals (insert or update). A delivery deleted meanwhile has
    no ledger any more (its rows went with it) and gets none."""
    existing = set(Delivery.objects.filter(pk__in=sorted({delivery for _, delivery in totals})).values_list("pk", flat=True))
    ledger = [SharedKpi(day=day, delivery_id=delivery, **dict(counters))
              for (day, delivery), counters in totals.items() if delivery in existing]
    if ledger:
        SharedKpi.objects.bulk_create(
            ledger, update_conflicts=True, unique_fields=["day", "delivery"], update_fields=[*COUNTERS, "updated_at"],
        )


def add_to_ledger(rows: Sequence[KpiRow]) -> None:
    """Add acknowledged increments to the ledger (call inside the acknowledging unit of work)."""
    ledger = ledger_of(row.key for row in rows)
    zeros = dict.fromkeys(COUNTERS, 0)
    write_ledger({row.key: {name: ledger.get(row.key, zeros)[name] + getattr(row, name) for name in COUNTERS}
                  for row in rows})


def increments(totals: Sequence[KpiRow]) -> tuple[list[KpiRow], dict[Key, dict[str, int]]]:
    """What to push for these local totals: each one minus its ledger row, the rows with nothing
    to add left out; and the ledger values they start from (for the batch id)."""
    ledger = ledger_of(row.key for row in totals)
    zeros = dict.fromkeys(COUNTERS, 0)
    rows = []
    for total in totals:
        told = ledger.get(total.key, zeros)
        row = KpiRow(total.date, total.campaign_id, total.campaign_label, total.delivery_id, total.delivery_label,
                     **{name: getattr(total, name) - told[name] for name in COUNTERS})
        if not row.is_zero():
            rows.append(row)
    return rows, {row.key: ledger.get(row.key, zeros) for row in rows}


# -- the sharing state, written by either KPI workflow ------------------------------------------
@dataclass(frozen=True)
class PendingBatch:
    """A batch saved to be sent and not acknowledged yet: resent exactly as it is."""

    batch_id: str
    rows: list[dict[str, Any]]  # wire rows
    watermark: Position  # (updated_at, id) of its last source row

    @classmethod
    def of(cls, state: KpiShareState | None) -> PendingBatch | None:
        if state is None or not state.pending_batch_id:
            return None
        return cls(state.pending_batch_id, list(state.pending_rows), state.pending_watermark)

    def kpi_rows(self) -> list[KpiRow]:
        return [KpiRow.from_json(item) for item in self.rows]


def share_state() -> KpiShareState | None:
    """The sharing state as committed (None until the first batch)."""
    return KpiShareState.objects.filter(channel=SHARED_CHANNEL).first()


def locked_share_state() -> KpiShareState:
    """Inside a unit of work: the sharing state (created if missing), its row locked until the
    commit, so that two runs (one of them stale) move it one after the other."""
    state, _ = KpiShareState.objects.select_for_update().get_or_create(channel=SHARED_CHANNEL)
    return state


def set_pending(state: KpiShareState, batch: PendingBatch | None) -> None:
    state.pending_batch_id = batch.batch_id if batch else ""
    state.pending_rows = batch.rows if batch else []
    state.pending_watermark_updated_at, state.pending_watermark_aggregate_id = batch.watermark if batch else (None, None)


def move_watermark(state: KpiShareState, reached: Position) -> None:
    """Move the watermark to ``reached``, never back."""
    if state.watermark is None or reached > state.watermark:
        state.watermark_updated_at, state.watermark_aggregate_id = reached


# -- pushing -------------------------------------------------------------------------------------
def push_pending(ctx: ActivityContext, client: AnalyticsClient, batch: PendingBatch, *, resent: bool) -> None:
    """Send a saved batch (outside any transaction); once acknowledged, record it in one unit. A
    failure raises, leaving it pending."""
    accepted = client.push_kpis(batch_id=batch.batch_id, rows=batch.kpi_rows())
    ctx.unit(lambda: record_acknowledged(ctx, batch, accepted=accepted, resent=resent), halting=False)


def record_acknowledged(ctx: ActivityContext, batch: PendingBatch, *, accepted: int, resent: bool) -> None:
    """Inside a unit: add the acknowledged batch to the ledger, move the watermark past its source
    rows, clear it and journal it, if it is still the pending batch."""
    state = locked_share_state()
    if state.pending_batch_id != batch.batch_id:
        ctx.log(f"Batch {batch.batch_id} was already recorded as acknowledged; nothing to record.")
        return
    rows = batch.kpi_rows()
    add_to_ledger(rows)
    move_watermark(state, batch.watermark)
    set_pending(state, None)
    state.save()
    days = sorted({row.date for row in rows})
    ctx.log(f"{'Resent' if resent else 'Pushed'} batch {batch.batch_id}: {len(rows)} rows, {days[0]} .. {days[-1]}; "
            f"accepted {accepted}.")
    ctx.count("batches_resent" if resent else "batches_pushed")
    ctx.count("rows_pushed", len(rows))


def flush_pending(ctx: ActivityContext, client: AnalyticsClient) -> bool:
    """Resend the pending batch, if any (same id, same rows), and record it. True if there was one."""
    batch = PendingBatch.of(share_state())
    if batch is None:
        return False
    ctx.log(f"Batch {batch.batch_id} ({len(batch.rows)} rows) was not acknowledged by an earlier "
            "attempt: resending it as it was.")
    push_pending(ctx, client, batch, resent=True)
    return True


def discard_pending(*, actor: str) -> str | None:
    """For an operator, from the shell: drop the pending batch (one the service refuses for good),
    so that the next run recomputes it from the ledger. Returns the dropped batch id.

    Only when the service is known not to have applied it: if it had, its increments would be
    pushed again under a new id (kpiReconciliation corrects that at its next run)."""
    state = share_state()
    batch = PendingBatch.of(state)
    if batch is None:
        return None
    # Compare-and-set on the batch just read: a run that recorded it meanwhile wins.
    dropped = KpiShareState.objects.filter(pk=state.pk, pending_batch_id=batch.batch_id).update(
        pending_batch_id="", pending_rows=[], pending_watermark_updated_at=None, pending_watermark_aggregate_id=None,
        updated_at=timezone.now(),
    )
    if not dropped:
        return None
    WorkflowLog.objects.create(
        workflow_id=SHARING_ID, level=LogLevel.WARNING,
        message=f"Pending batch {batch.batch_id} ({len(batch.rows)} rows) discarded by {actor}.",
    )
    return batch.batch_id


# -- the activity --------------------------------------------------------------------------------
def changed_aggregates(*, after: Position, first_day: date, limit: int) -> list[dict[str, Any]]:
    """The next ``limit`` email aggregates of the window changed after ``after``, in (updated_at, id) order."""
    moment, last_id = after
    queryset = (
        email_aggregates()
        .filter(day__gte=first_day)
        .filter(Q(updated_at__gt=moment) | Q(updated_at=moment, id__gt=last_id))
        .order_by("updated_at", "id")
    )
    return list(aggregate_values(queryset)[:limit])


@dataclass(frozen=True)
class Staged:
    """What one staging unit did: the source rows it read, where they end, and the batch it saved
    to be sent (None: nothing to add); or the batch it found pending, to be resent first."""

    rows: int
    position: Position
    batch: PendingBatch | None = None
    found_pending: PendingBatch | None = None


def stage_batch(ctx: ActivityContext, *, after: Position, first_day: date, limit: int) -> Staged:
    """Inside a unit: read the next source rows and save their increments as the pending batch
    (saved before it is sent: a resend is this batch); rows with nothing to add move the watermark."""
    state = locked_share_state()
    waiting = PendingBatch.of(state)
    if waiting is not None:  # left by a run that lost its lease meanwhile: the ledger waits for it
        return Staged(rows=0, position=after, found_pending=waiting)
    source = changed_aggregates(after=after, first_day=first_day, limit=limit)
    if not source:
        return Staged(rows=0, position=after)
    position = (source[-1]["updated_at"], source[-1]["id"])
    ctx.count("rows_read", len(source))
    ctx.advance(len(source))
    rows, bases = increments([kpi_row(values) for values in source])
    if not rows:  # already shared, or shared by a reconciliation
        move_watermark(state, position)
        state.save()
        return Staged(rows=len(source), position=position)
    batch = PendingBatch(analytics.batch_id_for(rows, bases=bases), [row.to_json() for row in rows], position)
    set_pending(state, batch)
    state.save()
    return Staged(rows=len(source), position=position, batch=batch)


def share_changed_days(ctx: ActivityContext) -> None:
    client = analytics_client()
    limit = ctx.properties["batch_size"]
    first_day = timezone.localdate() - timedelta(days=ctx.properties["lookback_days"])
    flush_pending(ctx, client)

    state = share_state()
    watermark = state.watermark if state else None
    position: Position = (watermark[0] - CHANGE_MARGIN, 0) if watermark else (datetime.min.replace(tzinfo=UTC), 0)
    while True:
        staged = ctx.unit(lambda after=position: stage_batch(ctx, after=after, first_day=first_day, limit=limit))
        if staged.found_pending is not None:
            push_pending(ctx, client, staged.found_pending, resent=True)
            continue
        if staged.batch is not None:
            push_pending(ctx, client, staged.batch, resent=False)
        position = staged.position
        if staged.rows < limit:
            break


definition = register(WorkflowDefinition(
    id=SHARING_ID,
    label="KPI sharing with Analytics",
    description="Pushes the email KPIs of the days that changed to the analytics service, in idempotent batches.",
    schedule=Schedule("*/15 * * * *"),
    activities=(share_changed_days,),
    properties=(
        DurationProperty("lookback_days", DEFAULT_LOOKBACK_DAYS, minimum=1, maximum=366, unit="days",
                         help="Days shared: today and this many before. Older days are never pushed, even when they change."),
        IntegerProperty("batch_size", DEFAULT_BATCH_SIZE, minimum=1, maximum=MAX_BATCH_SIZE, unit="rows",
                        help="Aggregate rows read per batch; each batch is one push."),
    ),
    expire_s=900,  # a late message is dropped: the next slot does the same work
))
