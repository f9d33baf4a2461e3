"""kpiSharing — KPI sharing with Analytics (SPEC §5).

Why it exists: the analytics service shows the email KPIs of each delivery per day next to the
site's own figures. Every 15 minutes this workflow pushes what changed in the email
DeliveryAggregate rows (kept by reportingAggregates) of the look-back window.

The service **adds** what it receives (see :mod:`campaign.integrations.analytics`), so a day
whose figures changed is pushed as an increment: its aggregate minus what the service was already
told, which the ``SharedKpi`` ledger remembers per (day, delivery). Pushing the aggregate itself
would count the first figures twice as soon as a day changes again.

Invariants:

- **Nothing counted twice, nothing lost.** A batch is computed, then saved as the *pending* batch
  (cursor ``pending``) before it is sent; only after the service acknowledged it (``accepted`` =
  its row count) does one transaction add it to the ledger, move the watermark past its rows,
  clear ``pending`` and journal it. A crash or a failed push leaves ``pending`` in place, and the
  next run (of this workflow or of kpiReconciliation) first resends exactly that batch, same id,
  same rows, which the service applies at most once. No HTTP call is made inside a transaction.
- **Which rows.** Email aggregates of the days ``today - lookback_days`` .. today whose
  ``updated_at`` (when their counters last changed) is after the watermark, in ``(updated_at, id)``
  order, ``batch_size`` source rows per batch. Each run starts ``CHANGE_MARGIN`` before the
  watermark, so a row stamped just before a concurrent commit is still seen; a row seen twice has
  nothing left to push (its ledger row already matches) and costs one comparison.
- **Batch ids are content-derived** (:func:`campaign.integrations.analytics.batch_id_for`): the
  rows' increments and the totals they start from.
- kpiReconciliation borrows this workflow's lease while it runs, so the two never push at once
  (a kpiSharing run meanwhile is skipped, "already running").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from campaign.integrations import analytics
from campaign.integrations.analytics import COUNTERS, AnalyticsClient, KpiRow
from campaign.integrations.http import get_account
from campaign.models import Channel, Delivery, DeliveryAggregate, SharedKpi
from workflows.context import ActivityContext, SkipRun
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.models import LogLevel, Workflow, WorkflowLog
from workflows.properties import IntegerProperty

SHARING_ID = "kpiSharing"

#: About two months: a late open or bounce of last month's deliveries is still shared.
DEFAULT_LOOKBACK_DAYS = 62
#: Rows per push: a body of ~150 kB, answered in well under a second by a typical collector, and a
#: pending batch small enough to keep in the workflow's cursors. The maximum bounds both.
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 1000

#: How far before the watermark each run starts reading: more than any aggregate transaction lasts
#: or any two workers' clocks differ, so a row stamped before a concurrent commit is not skipped.
CHANGE_MARGIN = timedelta(minutes=5)

#: Cursor names in ``Workflow.cursors`` of kpiSharing.
CURSOR_WATERMARK = "watermark"  # [ISO updated_at, aggregate id] of the last acknowledged source row
CURSOR_PENDING = "pending"  # {"batch_id", "rows": [wire rows], "watermark": [...]} or absent

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
    return DeliveryAggregate.objects.filter(channel=Channel.EMAIL)


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
    """Add acknowledged increments to the ledger (call inside the acknowledging transaction)."""
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


# -- kpiSharing's cursors, written by either KPI workflow ----------------------------------------
def sharing_cursors(*, lock: bool = False) -> dict[str, Any]:
    """kpiSharing's cursors; ``lock`` (inside a transaction) holds its row until the commit."""
    workflows = Workflow.objects.select_for_update() if lock else Workflow.objects
    return workflows.filter(pk=SHARING_ID).values_list("cursors", flat=True).get()


def update_sharing_cursors(**changes: Any) -> dict[str, Any]:
    """Change kpiSharing's cursors (a value of None removes the cursor); call inside the
    transaction that wrote what they move past. Returns the cursors as they were."""
    with transaction.atomic():
        workflow = Workflow.objects.select_for_update().only("cursors").get(pk=SHARING_ID)
        before = dict(workflow.cursors)
        cursors = dict(before)
        for name, value in changes.items():
            if value is None:
                cursors.pop(name, None)
            else:
                cursors[name] = value
        Workflow.objects.filter(pk=SHARING_ID).update(cursors=cursors)
    return before


def encode_position(position: Position) -> list[Any]:
    return [position[0].isoformat(), position[1]]


def decode_position(value: Any) -> Position | None:
    if not value:
        return None
    return datetime.fromisoformat(value[0]), int(value[1])


# -- pushing -------------------------------------------------------------------------------------
def push_pending(ctx: ActivityContext, client: AnalyticsClient, pending: Mapping[str, Any], *, resent: bool) -> None:
    """Send the pending batch; once acknowledged, in one transaction: add it to the ledger, move
    the watermark past its source rows, clear it, journal it. A failure raises, leaving it pending."""
    batch_id = pending["batch_id"]
    rows = [KpiRow.from_json(item) for item in pending["rows"]]
    accepted = client.push_kpis(batch_id=batch_id, rows=rows)
    with transaction.atomic():
        cursors = sharing_cursors(lock=True)
        if (cursors.get(CURSOR_PENDING) or {}).get("batch_id") != batch_id:  # acknowledged meanwhile
            ctx.log(f"Batch {batch_id} was already recorded as acknowledged; nothing to record.")
            return
        add_to_ledger(rows)
        current = decode_position(cursors.get(CURSOR_WATERMARK))
        reached = decode_position(pending["watermark"])
        update_sharing_cursors(**{
            CURSOR_PENDING: None,
            CURSOR_WATERMARK: encode_position(max(filter(None, (current, reached)))),
        })
        days = sorted({row.date for row in rows})
        ctx.log(f"{'Resent' if resent else 'Pushed'} batch {batch_id}: {len(rows)} rows, {days[0]} .. {days[-1]}; "
                f"accepted {accepted}.")
    ctx.count("batches_resent" if resent else "batches_pushed")
    ctx.count("rows_pushed", len(rows))


def flush_pending(ctx: ActivityContext, client: AnalyticsClient) -> bool:
    """Resend kpiSharing's pending batch, if any (same id, same rows). True if there was one."""
    pending = sharing_cursors().get(CURSOR_PENDING)
    if not pending:
        return False
    ctx.log(f"Batch {pending['batch_id']} ({len(pending['rows'])} rows) was not acknowledged by an earlier "
            "attempt: resending it as it was.")
    push_pending(ctx, client, pending, resent=True)
    return True


def discard_pending(*, actor: str) -> str | None:
    """For an operator, from the shell: drop the pending batch (one the service refuses for good),
    so that the next run recomputes it from the ledger. Returns the dropped batch id.

    Only when the service is known not to have applied it: if it had, its increments would be
    pushed again under a new id (kpiReconciliation corrects that at its next run)."""
    with transaction.atomic():
        before = update_sharing_cursors(**{CURSOR_PENDING: None})
        pending = before.get(CURSOR_PENDING)
        if pending:
            WorkflowLog.objects.create(
                workflow_id=SHARING_ID, level=LogLevel.WARNING,
                message=f"Pending batch {pending['batch_id']} ({len(pending['rows'])} rows) discarded by {actor}.",
            )
    return pending["batch_id"] if pending else None


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


def share_changed_days(ctx: ActivityContext) -> None:
    client = analytics_client()
    limit = ctx.properties["batch_size"]
    first_day = timezone.localdate() - timedelta(days=ctx.properties["lookback_days"])
    flush_pending(ctx, client)

    watermark = decode_position(sharing_cursors().get(CURSOR_WATERMARK))
    position: Position = (watermark[0] - CHANGE_MARGIN, 0) if watermark else (datetime.min.replace(tzinfo=UTC), 0)
    while True:
        ctx.checkpoint()
        source = changed_aggregates(after=position, first_day=first_day, limit=limit)
        if not source:
            break
        position = (source[-1]["updated_at"], source[-1]["id"])
        ctx.count("rows_read", len(source))
        rows, bases = increments([kpi_row(values) for values in source])
        if rows:
            pending = {"batch_id": analytics.batch_id_for(rows, bases=bases), "rows": [row.to_json() for row in rows],
                       "watermark": encode_position(position)}
            update_sharing_cursors(**{CURSOR_PENDING: pending})  # saved before it is sent: a resend is this batch
            push_pending(ctx, client, pending, resent=False)
        elif watermark is None or position > watermark:
            # Nothing to add for these rows (already shared, or shared by a reconciliation).
            update_sharing_cursors(**{CURSOR_WATERMARK: encode_position(position)})
        watermark = max(filter(None, (watermark, position)))
        if len(source) < limit:
            break


definition = register(WorkflowDefinition(
    id=SHARING_ID,
    label="KPI sharing with Analytics",
    description="Pushes the email KPIs of the days that changed to the analytics service, in idempotent batches.",
    schedule=Schedule("*/15 * * * *"),
    activities=(share_changed_days,),
    properties=(
        IntegerProperty("lookback_days", DEFAULT_LOOKBACK_DAYS, minimum=1, maximum=366, unit="days",
                        help="Days shared: today and this many before. Older days are never pushed, even when they change."),
        IntegerProperty("batch_size", DEFAULT_BATCH_SIZE, minimum=1, maximum=MAX_BATCH_SIZE, unit="rows",
                        help="Aggregate rows read per batch; each batch is one push."),
    ),
    expire_s=900,  # a late message is dropped: the next slot does the same work
))
