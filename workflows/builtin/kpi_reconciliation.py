"""kpiReconciliation — KPI reconciliation with Analytics (SPEC §5).

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

- It holds kpiSharing's lease while it runs, so the two never push at the same time; kpiSharing's
  unacknowledged batch, if any, is resent (and recorded) before anything is fetched.
- After a batch of corrections is acknowledged, and after each chunk of days is reconciled, the
  ``SharedKpi`` ledger of those rows is set, in one transaction, to the local totals that were
  compared (never re-read: a change made meanwhile is kpiSharing's to push).
- The journal has one line per corrected row, up to ``MAX_LISTED_CORRECTIONS`` per run, then a count.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, timedelta

from django.db import transaction
from django.utils import timezone

from campaign.integrations import analytics
from campaign.integrations.analytics import COUNTERS, KpiRow
from campaign.models import SharedKpi
from workflows import leases
from workflows.builtin import kpi_sharing
from workflows.builtin.kpi_sharing import SHARING_ID, Key
from workflows.context import ActivityContext, LeaseLost
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.errors import TransientError
from workflows.properties import IntegerProperty

#: Days fetched per GET: a week of rows of a large instance is a few thousand rows, one modest
#: answer, compared in memory.
DEFAULT_DAYS_PER_REQUEST = 7
#: Journal lines of corrected rows per run; beyond, a count (the counters have the totals).
MAX_LISTED_CORRECTIONS = 50
#: How long to wait for a running kpiSharing (its runs take seconds) before failing as transient.
SHARING_WAIT_S = 120.0
SHARING_POLL_S = 1.0


class SharingBusy(TransientError):
    """kpiSharing kept its lease for longer than the reconciliation waits."""


@contextmanager
def sharing_lease(ctx: ActivityContext) -> Iterator[leases.LeaseKeeper]:
    """Hold kpiSharing's lease (as this run) for the block: no kpiSharing run can start meanwhile."""
    deadline = time.monotonic() + SHARING_WAIT_S
    while True:
        claim = leases.claim(SHARING_ID, ctx.run.pk)
        if claim.won:
            break
        if time.monotonic() >= deadline:
            raise SharingBusy(f"{SHARING_ID} is running (run #{claim.holder}) and pushing; reconciling now could "
                              "correct what it is about to push. Retry when it has finished.")
        ctx.checkpoint()
        time.sleep(SHARING_POLL_S)
    try:
        with leases.LeaseKeeper(SHARING_ID, ctx.run.pk) as keeper:
            yield keeper
    finally:
        leases.release(SHARING_ID, ctx.run.pk)


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


def reconcile_with_service(ctx: ActivityContext) -> None:
    client = kpi_sharing.analytics_client()
    listed = 0
    with sharing_lease(ctx) as lease:
        if kpi_sharing.flush_pending(ctx, client):
            ctx.log(f"{SHARING_ID}'s pending batch is recorded; reconciling.")
        last = timezone.localdate()
        first = last - timedelta(days=ctx.properties["lookback_days"])
        for chunk_from, chunk_to in day_chunks(first, last, days=ctx.properties["days_per_request"]):
            ctx.checkpoint()
            remote = {row.key: row for row in client.fetch_kpis(date_from=chunk_from, date_to=chunk_to)}
            local = kpi_sharing.local_totals(date_from=chunk_from, date_to=chunk_to)
            corrections = differences(local, remote)
            ctx.count("rows_compared", len(local.keys() | remote.keys()))
            zeros = dict.fromkeys(COUNTERS, 0)
            size = ctx.properties["batch_size"]
            for start in range(0, len(corrections), size):
                batch = corrections[start:start + size]
                bases = {row.key: (remote[row.key].counters() if row.key in remote else zeros) for row in batch}
                batch_id = analytics.batch_id_for(batch, bases=bases)
                if lease.lost.is_set():
                    raise LeaseLost(f"the lease of {SHARING_ID} held by this reconciliation was taken over")
                accepted = client.push_kpis(batch_id=batch_id, rows=batch)
                with transaction.atomic():
                    set_ledger([row.key for row in batch], local)
                    ctx.log(f"Pushed correction batch {batch_id}: {len(batch)} rows, {batch[0].date} .. "
                            f"{batch[-1].date}; accepted {accepted}.")
                    for row in batch:
                        if listed < MAX_LISTED_CORRECTIONS:
                            ctx.log(describe_correction(row, remote.get(row.key)))
                        listed += 1
                ctx.count("batches_pushed")
                ctx.count("rows_corrected", len(batch))
                ctx.count("remote_rows_missing", sum(1 for row in batch if row.key not in remote))
                ctx.count("local_rows_missing", sum(1 for row in batch if row.key not in local))
            with transaction.atomic():  # every row of these days now: the service has the local totals
                replace_ledger(chunk_from, chunk_to, local)
    if listed > MAX_LISTED_CORRECTIONS:
        ctx.log(f"… and {listed - MAX_LISTED_CORRECTIONS} more corrected rows, not listed (see rows_corrected).")
    if not listed:
        ctx.log("The service's totals match the local aggregates: nothing to correct.")


definition = register(WorkflowDefinition(
    id="kpiReconciliation",
    label="KPI reconciliation with Analytics",
    description="Compares the analytics service's KPI totals with the local aggregates and pushes the differences.",
    schedule=Schedule("20 4 * * *"),
    activities=(reconcile_with_service,),
    properties=(
        IntegerProperty("lookback_days", kpi_sharing.DEFAULT_LOOKBACK_DAYS, minimum=1, maximum=366, unit="days",
                        help="Days reconciled: today and this many before (as kpiSharing's look-back)."),
        IntegerProperty("days_per_request", DEFAULT_DAYS_PER_REQUEST, minimum=1, maximum=366, unit="days",
                        help="Days fetched per GET /kpis; each chunk is compared and corrected on its own."),
        IntegerProperty("batch_size", kpi_sharing.DEFAULT_BATCH_SIZE, minimum=1, maximum=kpi_sharing.MAX_BATCH_SIZE,
                        unit="rows", help="Corrected rows per push."),
    ),
))
