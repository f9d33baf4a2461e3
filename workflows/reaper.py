"""The reaper: runs whose worker died are closed and, once, started again, with no trigger needed.

Why it exists: a run's worker can die without a word (a pool process killed by the OOM killer, a
host lost). Its lease expires, but until something claims the workflow again the run would still
read ``running`` and its activity row too. A redelivered message takes such a run over by itself
(:func:`workflows.engine.execute`); the reaper covers every other case, from a periodic task
(``workflows.reap_abandoned_runs``, every minute), so a dead run is closed within a lease period
plus a minute: well within two lease periods.

Invariants:

- **Only dead runs.** A run is reaped when the workflow's lease, held by it, expired (a live run
  renews it every fifth of a lease), or when it reads ``running`` without holding the lease at
  all. The lease is taken away by the same compare-and-set as a claim (the token grows), so a
  frozen run that wakes up afterwards commits nothing (its commits are fenced).
- **Re-queued once.** A reaped run that a schedule or a command started is started again (if its
  workflow is still started) as a new run (``takeover_of`` = the dead run), journaled and
  audited; a run that was itself such a re-run is not re-queued again, so a run that kills its
  worker every time stops after two tries.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from workflows import commands, leases
from workflows.audit import audit
from workflows.models import LogLevel, RunStatus, Trigger, Workflow, WorkflowLog, WorkflowRun, WorkflowState

logger = logging.getLogger(__name__)

#: Triggers whose runs are started again when reaped: the ones someone or something asked for.
#: (An ``event`` run is the reaction to a message that the next event triggers again.)
REQUEUED_TRIGGERS = (Trigger.SCHEDULE, Trigger.ADMIN, Trigger.CLI, Trigger.SHELL)


def reap_abandoned_runs(*, now: datetime | None = None) -> list[int]:
    """Mark every dead run ``failed`` / "abandoned", close its activities, re-queue it once.
    Returns the ids of the runs reaped."""
    now = now or timezone.now()
    reaped = []
    expired = Workflow.objects.filter(lease_holder__isnull=False, lease_until__lte=now)
    for row in expired.values("id", "lease_holder", "lease_until", "lease_token"):
        with transaction.atomic():
            if leases.take_expired(row["id"], row) and leases.mark_abandoned(row["lease_holder"], now=now):
                reaped.append(row["lease_holder"])
    # Runs that read running without holding their workflow's lease (it was released or taken).
    holders = Workflow.objects.filter(lease_holder__isnull=False).values_list("lease_holder", flat=True)
    orphans = WorkflowRun.objects.filter(status=RunStatus.RUNNING, started_at__lte=now - _grace()).exclude(
        Q(pk__in=list(holders))
    )
    for run_id in orphans.values_list("pk", flat=True):
        if leases.mark_abandoned(run_id, now=now):
            reaped.append(run_id)
    for run in WorkflowRun.objects.filter(pk__in=reaped).order_by("pk"):
        _report_and_requeue(run)
    return reaped


def _grace() -> timedelta:
    """A run marked running a moment ago may not have claimed yet: leave it a lease period."""
    return timedelta(seconds=leases.lease_seconds())


def _report_and_requeue(run: WorkflowRun) -> None:
    message = f"Run #{run.pk} was abandoned (its worker stopped renewing its lease); the reaper closed it."
    started = Workflow.objects.filter(pk=run.workflow_id, state=WorkflowState.STARTED).exists()
    again = started and run.trigger in REQUEUED_TRIGGERS and run.takeover_of is None
    with transaction.atomic():
        if again:
            retry = WorkflowRun.objects.create(
                workflow_id=run.workflow_id, trigger=run.trigger, requested_by=run.requested_by,
                overrides=run.overrides, attempt=run.attempt + 1, takeover_of=run.pk,
            )
            message += f" Run #{retry.pk} does its work again."
            audit(run.workflow_id, "re-queue", actor="system", note=f"run #{run.pk} abandoned; run #{retry.pk} queued")
            commands.enqueue(retry)
        WorkflowLog.objects.create(workflow_id=run.workflow_id, run=run, level=LogLevel.WARNING, message=message)
    logger.warning("%s: %s", run.workflow_id, message)
