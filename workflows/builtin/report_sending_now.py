"""reportSendingNow — Instant report sharing.

Renders due report shares to PDF and emails them to their recipients (triggered when a share is due).

Triggers: a "send now" share starts a run with ``share_id`` once it is committed; a recurring share
has its own django-celery-beat task (campaign/report_shares.py) that starts a run with its
``share_id``; a run without ``share_id`` sends every enabled "send now" share that has no send yet
(the safety net if an on-commit trigger was lost). The rules that make a send happen at most once
per (share, due time) live in :func:`campaign.report_shares.send_share`; this module only decides
which share and which due time.
"""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.utils import timezone

from campaign.models import ReportShare
from campaign.report_shares import Recurrence, is_due_on, latest_due, send_share, share_zone
from workflows.context import ActivityContext
from workflows.definition import WorkflowDefinition, register
from workflows.models import LogLevel
from workflows.properties import MAXIMUM_INTEGER, DateTimeProperty, IntegerProperty

#: A bound on the catch-up pass (no share_id): the rest waits for the next run.
MAX_CATCH_UP = 200


def _parse_due(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(f"due_at: not an ISO date-time: {text!r}") from None
    if timezone.is_naive(value):
        raise ValidationError(f"due_at: needs a time zone offset: {text!r}")
    return value


def send_due_shares(ctx: ActivityContext) -> None:
    share_id = ctx.properties["share_id"]
    due_text = ctx.properties["due_at"].strip()
    if share_id:
        share = ReportShare.objects.select_related("report").filter(pk=share_id).first()
        if share is None:
            ctx.log(f"Share #{share_id} no longer exists.", level=LogLevel.WARNING)
            ctx.count("missing")
            return
        if not share.enabled:
            ctx.log(f"Share #{share_id} is disabled.")
            ctx.count("disabled")
            return
        if due_text:
            due_at = _parse_due(due_text)
        elif share.recurrence == Recurrence.NOW:
            due_at = share.created_at
        else:
            due_at = latest_due(share, timezone.now())
            if not is_due_on(share, due_at.astimezone(share_zone(share)).date()):
                # Beat's crontab is wider than the rule (last weekday of the month, start/end dates).
                ctx.log(f"Share #{share_id}: {due_at.isoformat()} is not one of its due times; nothing sent.")
                ctx.count("not_due")
                return
        ctx.each([(share, due_at)], lambda item: _send(ctx, *item), atomic=False)
        return
    pending = (ReportShare.objects.select_related("report")
               .filter(recurrence=Recurrence.NOW, enabled=True, sends__isnull=True, periodic_task__isnull=True)
               .order_by("pk")[:MAX_CATCH_UP])
    shares = list(pending)
    ctx.set_progress_total(len(shares))
    ctx.each([(share, share.created_at) for share in shares], lambda item: _send(ctx, *item), atomic=False)


def _send(ctx: ActivityContext, share: ReportShare, due_at: datetime) -> dict[str, int]:
    """One share: its own protocol (a send row claimed, the PDF rendered, emailed, marked sent)
    makes it at most once, so it runs outside the engine's transaction."""
    send = send_share(share, due_at, run_id=ctx.run.pk)
    if send is None:
        ctx.log(f"Share #{share.pk} for {due_at.isoformat()}: already sent, or being emailed; nothing sent.")
        return {"duplicates": 1}
    ctx.log(f"Share #{share.pk} for {due_at.isoformat()}: sent ({send.pdf_bytes} bytes, {send.pdf_path}).")
    return {"sent": 1}


definition = register(WorkflowDefinition(
    id="reportSendingNow",
    label="Instant report sharing",
    description="Renders due report shares to PDF and emails them to their recipients (triggered when a share is due).",
    schedule=None,
    activities=(send_due_shares,),
    properties=(
        IntegerProperty("share_id", 0, minimum=0, maximum=MAXIMUM_INTEGER,  # an id: the id column's range
                        help="The share to send; 0 sends every pending \"send now\" share."),
        DateTimeProperty("due_at", "", help="ISO date-time of the due slot, with its UTC offset (default: the share's "
                                            "current slot)."),
    ),
    soft_time_limit_s=300,
    hard_time_limit_s=360,
))
