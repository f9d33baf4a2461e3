"""mobileAppOptOutMgt — Mobile app opt-out management.

Why it exists: when a user uninstalls an app or the push service rotates a token, the push
service answers the next message for that device token with "unregistered" or "invalid". Sending
to such tokens again is wasted work and hurts the sender's standing with the push service, so the
subscriptions they belong to are disabled; :func:`campaign.audience.push_targets`, the one place
that selects push recipients, leaves disabled subscriptions out of every later delivery.

What counts as a reported token: a DeliveryLog of a push delivery (``Delivery.channel = push``)
that failed (status 2) hard (failure type 2) with reason 1 "user unknown" (unregistered token) or
20 "refused" (invalid token). Soft failures, other reasons and email/SMS logs never disable
anything. A log matches the subscriptions whose ``device_token`` is the log's ``address`` and,
when the log names a profile, that belong to that profile (a transactional push log has no
profile: the token alone decides). The log does not say which application it was sent through, so
a token is matched in every application (a token is issued for one app, so in practice one row).
A matched subscription gets ``disabled = True``, ``disabled_reason`` = the failure reason of the
first matching log (in cursor order: the report that disabled it), ``updated_at`` = now. An already
disabled one is left as it is, reason and time included (counted as ``already_disabled``). Taking
the first report, never overwriting, is what makes the result independent of batch boundaries.

Invariants:

- **Incremental on ``DeliveryLog.updated_at``** (updateDeliveryExecInfo stamps it on every change
  of a log, in particular when a log becomes failed): a keyset cursor ``(updated_at, id)``. Each
  run stops at ``now - margin_minutes``: a writer stamps ``updated_at`` before its transaction
  commits, so logs newer than the margin wait for the next run rather than being skipped.
- **Bounded batches**: a batch is the next ``batch_size`` logs in cursor order, whatever they are;
  only the hard push failures among them are acted on, with set-based statements. So a batch's
  work is bounded even when failures are rare, and a run's work is the logs changed since the last.
- **Exactly once, and harmless twice**: a batch's updates, the cursor and the counters commit in
  one transaction. Disabling is idempotent (only ``disabled = False`` rows are updated), so
  re-reading a log (after it changes again, or after an operator rewinds the cursor) changes
  nothing and is counted as ``already_disabled``.

Counters: ``logs_examined`` (all logs read), ``failures`` (hard push failures with reason 1 or 20
among them), ``disabled`` (subscriptions disabled by this run), ``already_disabled`` (per batch,
the matched subscriptions found disabled already: a token reported twice in two batches counts
once here), ``no_subscription`` (failures matching no subscription).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.db.models.lookups import IsNull
from django.utils import timezone

from campaign.models import AppSubscription, Channel, DeliveryLog, FailureReason, FailureType, LogStatus
from workflows.context import ActivityContext, Batch
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.properties import DurationProperty, IntegerProperty

#: The failure reasons a push service gives for a token that will never work again.
INVALID_TOKEN_REASONS = (FailureReason.USER_UNKNOWN, FailureReason.REFUSED)

#: Delivery logs examined per batch (one transaction). Reading a log costs one index entry; only
#: the few hard push failures among them cause writes, so batches can be larger than the engine's
#: default while each transaction stays well under a second.
DEFAULT_BATCH_SIZE = 20_000

#: Logs updated less than this many minutes ago wait for the next run (see the module docstring).
DEFAULT_MARGIN_MINUTES = 10

#: Cursor name in ``Workflow.cursors``: ``{"updated_at": ISO timestamp, "id": int}`` of the last
#: log examined, or absent before the first run (which then reads every log once).
CURSOR = "logs_after"


def logs_after(cursor: dict[str, Any] | None, *, until: datetime) -> QuerySet[DeliveryLog]:
    """Logs after ``cursor`` in ``(updated_at, id)`` order, updated at or before ``until``."""
    logs = DeliveryLog.objects.filter(updated_at__lte=until)
    if cursor:
        updated_at = datetime.fromisoformat(cursor["updated_at"])
        logs = logs.filter(updated_at__gte=updated_at).filter(Q(updated_at__gt=updated_at) | Q(id__gt=cursor["id"]))
    return logs


def invalid_token_failures(logs: QuerySet[DeliveryLog]) -> QuerySet[DeliveryLog]:
    """The logs of ``logs`` that report an unregistered or invalid device token."""
    return logs.filter(
        delivery__channel=Channel.PUSH, status=LogStatus.FAILED, failure_type=FailureType.HARD,
        failure_reason__in=INVALID_TOKEN_REASONS,
    )


def disable_reported_subscriptions(failures: QuerySet[DeliveryLog], *, now: datetime) -> dict[str, int]:
    """Disable the subscriptions that ``failures`` report; call inside a transaction.

    Three set-based statements over the subscriptions whose token appears in ``failures`` (found
    through the token index): count the ones already disabled, disable the others with the reason
    of their first failure, count the failures that match no subscription.
    """
    matching_failures = failures.filter(address=OuterRef("device_token")).filter(
        Q(profile__isnull=True) | Q(profile_id=OuterRef("profile_id"))
    )
    reported = AppSubscription.objects.filter(device_token__in=failures.values("address")).filter(Exists(matching_failures))
    already_disabled = reported.filter(disabled=True).count()
    first_reason = matching_failures.order_by("updated_at", "id").values("failure_reason")[:1]
    disabled = reported.filter(disabled=False).update(
        disabled=True, disabled_reason=Subquery(first_reason), updated_at=now,
    )
    subscriptions_of_log = AppSubscription.objects.filter(device_token=OuterRef("address")).filter(
        Q(IsNull(OuterRef("profile_id"), True)) | Q(profile_id=OuterRef("profile_id"))
    )
    no_subscription = failures.exclude(Exists(subscriptions_of_log)).count()
    return {"disabled": disabled, "already_disabled": already_disabled, "no_subscription": no_subscription}


def disable_batch(cursor: dict[str, Any] | None, limit: int, *, until: datetime, now: datetime) -> Batch:
    """Examine the next ``limit`` logs after ``cursor`` and act on the failures among them."""
    window = list(logs_after(cursor, until=until).order_by("updated_at", "id").values_list("updated_at", "id")[:limit])
    if not window:
        return Batch(rows=0, cursor=cursor)
    last_updated_at, last_id = window[-1]
    in_window = logs_after(cursor, until=last_updated_at).filter(Q(updated_at__lt=last_updated_at) | Q(id__lte=last_id))
    failures = invalid_token_failures(in_window)
    counters = {"logs_examined": len(window), "failures": failures.count(),
                **disable_reported_subscriptions(failures, now=now)}
    return Batch(rows=len(window), cursor={"updated_at": last_updated_at.isoformat(), "id": last_id}, counters=counters)


def disable_invalid_tokens(ctx: ActivityContext) -> None:
    until = timezone.now() - timedelta(minutes=ctx.properties["margin_minutes"])
    start = ctx.get_cursor(CURSOR)
    ctx.set_progress_total(logs_after(start, until=until).count())

    def step(cursor: dict[str, Any] | None, limit: int) -> Batch:
        return disable_batch(cursor, limit, until=until, now=timezone.now())

    ctx.batches(CURSOR, step, start=None, batch_size=ctx.properties["batch_size"])
    for name in ("logs_examined", "failures", "disabled", "already_disabled", "no_subscription"):
        ctx.count(name, 0)  # every counter shows, even on a run with nothing to do
    counters = ctx.activity.counters
    ctx.log(f"{counters['failures']} unregistered or invalid push tokens reported in logs updated up to "
            f"{until.isoformat(timespec='seconds')}: {counters['disabled']} subscriptions disabled, "
            f"{counters['already_disabled']} already disabled, {counters['no_subscription']} with no subscription.")


definition = register(WorkflowDefinition(
    id="mobileAppOptOutMgt",
    label="Mobile app opt-out management",
    description="Disables push subscriptions whose device tokens were reported unregistered or invalid.",
    schedule=Schedule("0 1,7,13,19 * * *"),
    activities=(disable_invalid_tokens,),
    properties=(
        IntegerProperty("batch_size", DEFAULT_BATCH_SIZE, minimum=1, maximum=200_000,
                        help="Delivery logs examined per transaction."),
        DurationProperty("margin_minutes", DEFAULT_MARGIN_MINUTES, minimum=0, maximum=24 * 60, unit="minutes",
                         help="Logs updated more recently than this wait for the next run (their transaction may "
                              "still be committing)."),
    ),
    batch_size=DEFAULT_BATCH_SIZE,
))
