"""kpiReconciliation — KPI reconciliation with Analytics.

Why it exists: kpiSharing pushes increments, so anything that went wrong on the way (a batch the
service lost, a total edited on its side, figures recomputed after the look-back window moved)
would stay wrong for ever. Once a day this workflow fetches the service's totals of the look-back
window, compares them row by row — a row is a (date, delivery_id) — with the local email
aggregates, and pushes the differences.

What a difference is: ``local - remote`` per counter, where a row missing on one side counts as
zeros. Rows whose differences are all zero are left alone. A negative difference (the service
counted more than the aggregates hold, or holds a row this instance has not) is pushed as a
negative increment, which the service adds like any other, so every corrected row ends equal to
the local aggregate. Corrections go in batches with content-derived ids
(:func:`campaign.integrations.analytics.batch_id_for`, from the remote totals they correct), so a
resent correction is applied once.

Invariants:

- It never runs at the same time as kpiSharing, or both would push the same difference: the
  definition declares it (``exclusive_with``) and the engine enforces it at the claim. A
  reconciliation refused because kpiSharing holds its lease waits, re-queued, for
  ``wait_for_exclusive_s`` (kpiSharing's runs take seconds), then is skipped; a kpiSharing run
  refused meanwhile does the same.
- kpiSharing's pending batch (``KpiShareState``), if any, is resent and recorded before anything
  is fetched, exactly as kpiSharing would: same id, same rows, applied at most once.
- After a batch of corrections is acknowledged, and after each chunk of days is reconciled, one
  unit of work sets the ``SharedKpi`` ledger of those rows to the local totals that were compared
  (never re-read: a change made meanwhile is kpiSharing's to push). The unit locks the sharing
  state and refuses to write the ledger under a pending batch (which only a kpiSharing run that
  outlived its lease could have saved): that batch's id rests on the ledger as it is.
- Every push runs outside any transaction; a run that lost its lease records nothing, and the
  next run recomputes the differences from the service's own totals.
- The journal has one line per corrected row, up to ``MAX_LISTED_CORRECTIONS`` per run, then a count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date, timedelta

from django.utils import timezone

from campaign.integrations import analytics
from campaign.integrations.analytics import COUNTERS, KpiRow
from campaign.models import SharedKpi
from workflows.builtin import kpi_sharing
from workflows.builtin.kpi_sharing import SHARING_ID, Key
from workflows.context import ActivityContext
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.errors import TransientError
from workflows.properties import DurationProperty, IntegerProperty

#: Days fetched per GET: a week of rows of a large instance is a few thousand rows, one modest
#: answer, compared in memory.
DEFAULT_DAYS_PER_REQUEST = 7
#: Journal lines of corrected rows per run; beyond, a count (the counters have the totals).
MAX_LISTED_CORRECTIONS = 50
#: How long a run refused because kpiSharing holds its lease waits for it (re-queued, never
#: sleeping in a worker slot) before it is skipped: kpiSharing's runs take seconds.
SHARING_WAIT_S = 120


class SharingInterfered(TransientError):
    """A kpiSharing batch became pending during the reconciliation: the ledger is not written."""


def day_chunks(first: date, last: date, *, days: int) -> Iterator[tuple[date, date]]:
    start = first
    while start <= last:
        end = min(last, start + timedelta(days=days - 1))
        yield start, end
        start = end + timedelta(days=1)


def differences(local: Mapping[Key, KpiRow], remote: Mapping[Key, KpiRow]) -> list[KpiRow]:
    """``local - remote`` per counter for every row of either side with a non-zero difference, in
    (date, delivery) order; identity and labels from the local row, else from the remote one."""
    corrections = []
    for key in sorted(local.keys() | remote.keys()):
        mine, theirs = local.get(key), remote.get(key)
        named = mine or theirs
        row = KpiRow(named.date, named.campaign_id, named.campaign_label, named.delivery_id, named.delivery_label,
                     **{name: (getattr(mine, name) if mine else 0) - (getattr(theirs, name) if theirs else 0)
                        for name in COUNTERS})
        if not row.is_zero():
            corrections.append(row)
    return corrections


def describe_correction(row: KpiRow, remote: KpiRow | None) -> str:
    changes = ", ".join(f"{name} {getattr(row, name):+d}" for name in COUNTERS if getattr(row, name))
    had = ("; the service had " + ", ".join(f"{name} {getattr(remote, name)}" for name in COUNTERS if getattr(row, name))
           if remote else "; the service had no row")
    return f"Corrected {row.date} delivery {row.delivery_id} ({row.delivery_label!r}): {changes}{had}."


def lock_ledger() -> None:
    """Inside a unit that writes the ledger: lock the sharing state, and refuse while a batch is
    pending (its id rests on the ledger as it is; the next run resends it first)."""
    state = kpi_sharing.locked_share_state()
    if state.pending_batch_id:
        raise SharingInterfered(f"{SHARING_ID} saved batch {state.pending_batch_id} during the reconciliation; "
                                "the next run resends it, then reconciles")


def set_ledger(keys: Sequence[Key], local: Mapping[Key, KpiRow]) -> None:
    """The ledger of these rows := the local totals compared (no local row: zeros, i.e. no ledger row)."""
    gone = set(keys) - local.keys()
    if gone:
        days = [day for day, _ in gone]
        stale = [pk for pk, day, delivery in SharedKpi.objects.filter(
            day__gte=min(days), day__lte=max(days), delivery_id__in=sorted({delivery for _, delivery in gone}),
        ).values_list("pk", "day", "delivery_id") if (day, delivery) in gone]
        SharedKpi.objects.filter(pk__in=stale).delete()
    kpi_sharing.write_ledger({key: local[key].counters() for key in keys if key in local})


def replace_ledger(date_from: date, date_to: date, local: Mapping[Key, KpiRow]) -> None:
    """The ledger of these days := exactly the local totals compared."""
    stale = [pk for pk, day, delivery in SharedKpi.objects.filter(day__gte=date_from, day__lte=date_to)
             .values_list("pk", "day", "delivery_id") if (day, delivery) not in local]
    SharedKpi.objects.filter(pk__in=stale).delete()
    kpi_sharing.write_ledger({key: row.counters() for key, row in local.items()})


class Corrections:
    """The corrections of one run: pushed a batch at a time, each recorded by one unit of work."""

    def __init__(self, ctx: ActivityContext, client: analytics.AnalyticsClient) -> None:
        self.ctx = ctx
        self.client = client
        self.listed = 0

    def reconcile(self, chunk_from: date, chunk_to: date) -> None:
        """Compare one chunk of days, push its corrections, then set its ledger."""
        ctx = self.ctx
        remote = {row.key: row for row in self.client.fetch_kpis(date_from=chunk_from, date_to=chunk_to)}
        local = kpi_sharing.local_totals(date_from=chunk_from, date_to=chunk_to)
        corrections = differences(local, remote)
        # Counted by a unit of its own: the boundary where a pause or a stop is obeyed before
        # anything of this chunk is pushed (the GET before it changes nothing).
        ctx.unit(lambda: ctx.count("rows_compared", len(local.keys() | remote.keys())))
        zeros = dict.fromkeys(COUNTERS, 0)
        size = ctx.properties["batch_size"]
        for start in range(0, len(corrections), size):
            batch = corrections[start:start + size]
            bases = {row.key: (remote[row.key].counters() if row.key in remote else zeros) for row in batch}
            batch_id = analytics.batch_id_for(batch, bases=bases)
            accepted = self.client.push_kpis(batch_id=batch_id, rows=batch)  # outside any transaction
            ctx.unit(lambda batch=batch, batch_id=batch_id, accepted=accepted: self.record(
                batch, batch_id=batch_id, accepted=accepted, local=local, remote=remote), halting=False)

        def close_chunk() -> None:  # every row of these days now: the service has the local totals
            lock_ledger()
            replace_ledger(chunk_from, chunk_to, local)

        ctx.unit(close_chunk)

    def record(self, batch: Sequence[KpiRow], *, batch_id: str, accepted: int, local: Mapping[Key, KpiRow],
               remote: Mapping[Key, KpiRow]) -> None:
        """Inside a unit: an acknowledged correction batch into the ledger, the journal and the counters."""
        ctx = self.ctx
        lock_ledger()
        set_ledger([row.key for row in batch], local)
        ctx.log(f"Pushed correction batch {batch_id}: {len(batch)} rows, {batch[0].date} .. {batch[-1].date}; "
                f"accepted {accepted}.")
        for row in batch:
            if self.listed < MAX_LISTED_CORRECTIONS:
                ctx.log(describe_correction(row, remote.get(row.key)))
            self.listed += 1
        ctx.count("batches_pushed")
        ctx.count("rows_corrected", len(batch))
        ctx.count("remote_rows_missing", sum(1 for row in batch if row.key not in remote))
        ctx.count("local_rows_missing", sum(1 for row in batch if row.key not in local))


def reconcile_with_service(ctx: ActivityContext) -> None:
    client = kpi_sharing.analytics_client()
    if kpi_sharing.flush_pending(ctx, client):
        ctx.log(f"{SHARING_ID}'s pending batch is recorded; reconciling.")
    corrections = Corrections(ctx, client)
    last = timezone.localdate()
    first = last - timedelta(days=ctx.properties["lookback_days"])
    for chunk_from, chunk_to in day_chunks(first, last, days=ctx.properties["days_per_request"]):
        corrections.reconcile(chunk_from, chunk_to)
    if corrections.listed > MAX_LISTED_CORRECTIONS:
        ctx.log(f"… and {corrections.listed - MAX_LISTED_CORRECTIONS} more corrected rows, not listed (see rows_corrected).")
    if not corrections.listed:
        ctx.log("The service's totals match the local aggregates: nothing to correct.")


definition = register(WorkflowDefinition(
    id="kpiReconciliation",
    label="KPI reconciliation with Analytics",
    description="Compares the analytics service's KPI totals with the local aggregates and pushes the differences.",
    schedule=Schedule("20 4 * * *"),
    activities=(reconcile_with_service,),
    exclusive_with=(SHARING_ID,),
    wait_for_exclusive_s=SHARING_WAIT_S,
    properties=(
        DurationProperty("lookback_days", kpi_sharing.DEFAULT_LOOKBACK_DAYS, minimum=1, maximum=366, unit="days",
                         help="Days reconciled: today and this many before (as kpiSharing's look-back)."),
        DurationProperty("days_per_request", DEFAULT_DAYS_PER_REQUEST, minimum=1, maximum=366, unit="days",
                         help="Days fetched per GET /kpis; each chunk is compared and corrected on its own."),
        IntegerProperty("batch_size", kpi_sharing.DEFAULT_BATCH_SIZE, minimum=1, maximum=kpi_sharing.MAX_BATCH_SIZE,
                        unit="rows", help="Corrected rows per push."),
    ),
))
