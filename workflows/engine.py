"""Execute one run of a workflow: gate, claim, run the activities in order, record the outcome.

Everything a run does is recorded as it happens (WorkflowRun, ActivityRun, the journal), so the
admin and the CLI show the same truth whether the run is going on, finished, or died with its
worker. The engine knows nothing of any particular workflow: it calls the definition's activities.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import DatabaseError, IntegrityError, close_old_connections, connection, transaction
from django.utils import timezone

from workflows import audit, leases, notifications, shutdown
from workflows.context import HANDOVER, ActivityContext, LeaseLost, RunFence, RunHalted, SkipRun
from workflows.definition import WorkflowDefinition, all_definitions, get_definition
from workflows.errors import describe, is_transient
from workflows.models import (
    FINAL_RUN_STATUSES,
    ActivityMode,
    ActivityRun,
    ActivityStatus,
    LogLevel,
    RunStatus,
    Trigger,
    Workflow,
    WorkflowLog,
    WorkflowRun,
    WorkflowState,
)
from workflows.properties import invalid_values

logger = logging.getLogger(__name__)

NOT_IMPLEMENTED = "not implemented"

#: How often a waiting run looks again whether the run it waits for has finished, in seconds: a
#: re-queued message, not a sleep, so the worker slot serves other runs meanwhile.
WAIT_POLL_S = 2.0


class TransientRunError(Exception):
    """The run failed on a transient error and its definition allows another attempt."""

    def __init__(self, run: WorkflowRun, error: BaseException) -> None:
        self.run = run
        self.error = error
        super().__init__(describe(error))


class Requeue(Exception):
    """The run must wait: send its message again in ``countdown`` seconds (never sleep in a slot)."""

    def __init__(self, run: WorkflowRun, *, countdown: float, wait_until: float | None = None, recheck: bool = False) -> None:
        self.run = run
        self.countdown = max(0.1, countdown)
        self.wait_until = wait_until
        self.recheck = recheck
        super().__init__(f"run #{run.pk} re-queued in {self.countdown:.1f}s")


@dataclass(frozen=True)
class RunRequest:
    workflow_id: str
    trigger: str
    run_id: int | None = None
    requested_by: str = ""
    task_id: str = ""
    force: bool = False
    overrides: dict[str, Any] | None = None
    attempt: int = 1
    #: True when the task may be retried after a transient failure.
    retry_allowed: bool = False
    #: Wait this long for a running run to finish before giving up (restart: the stopped run halts
    #: at its next batch boundary); turned into ``wait_until`` at the first try.
    wait_for_lease_s: float = 0.0
    #: Epoch seconds: until when a re-queued run keeps waiting for the lease.
    wait_until: float | None = None
    #: A redelivered message of a running run, sent again once that run's lease had to expire:
    #: a run still alive now is a genuine duplicate.
    recheck: bool = False
    #: The scheduled time a beat message was sent for (None for other triggers): one run per slot.
    slot: datetime | None = None
    #: Called after each committed batch (in-process runs: the CLI's progress bar).
    on_progress: Callable[[WorkflowRun], None] | None = None


def journal(workflow_id: str, message: str, *,
            run: WorkflowRun | None = None, activity: str = "", level: str = LogLevel.INFO) -> None:
    WorkflowLog.objects.create(workflow_id=workflow_id, run=run, activity=activity, level=level, message=message)


def execute_in_process(request: RunRequest) -> WorkflowRun:
    """:func:`execute` for a run outside any worker (the CLI's ``--sync``): a wait is a sleep here,
    since no worker slot is held."""
    while True:
        try:
            return execute(request)
        except Requeue as wait:
            time.sleep(wait.countdown)
            request = replace(request, run_id=wait.run.pk, wait_until=wait.wait_until, recheck=wait.recheck)


def execute(request: RunRequest) -> WorkflowRun:
    """Run (or continue) one run of a workflow and return it in its final or halted state.

    Raises :class:`Requeue` when the run has to wait for another run (its message is sent again
    with a countdown) and :class:`TransientRunError` when it may be retried."""
    definition = get_definition(request.workflow_id)
    workflow = Workflow.objects.get(pk=definition.id)
    run, sent_before = _load_or_create_run(request, definition)
    if sent_before is not None:
        return _finish(run, RunStatus.SKIPPED, f"slot {timezone.localtime(request.slot):%Y-%m-%d %H:%M} already "
                                               f"sent (run #{sent_before.pk})")
    if run.status in FINAL_RUN_STATUSES:
        logger.warning("message for run #%s of %s ignored: the run is already %s", run.pk, definition.id, run.status)
        return run
    if run.status == RunStatus.RUNNING:
        holder, until = leases.lease_of(definition.id)
        if holder == run.pk and until is not None and until > timezone.now():
            if request.recheck:
                logger.warning("duplicate message for run #%s of %s ignored: the run is alive", run.pk, definition.id)
                return run
            # Its worker may have died (a killed pool process gets its message redelivered at
            # once): look again when the lease has had to be renewed.
            raise Requeue(run, countdown=(until - timezone.now()).total_seconds() + 1, recheck=True)
        # The message came back after its worker died: a new attempt takes the run over (the claim
        # below marks the dead one failed/abandoned).
        run = WorkflowRun.objects.create(
            workflow_id=definition.id, trigger=run.trigger, requested_by=run.requested_by,
            celery_task_id=request.task_id, overrides=run.overrides, attempt=run.attempt + 1, takeover_of=run.pk,
        )
    if shutdown.stopping():
        # This worker is stopping but took one more message (maybe the run it just handed over):
        # send it back for another worker, without claiming anything.
        raise Requeue(run, countdown=1)
    continuing = run.status == RunStatus.PAUSED

    refusal = _refusal(workflow, run, request, continuing)
    if refusal:
        if continuing and workflow.state == WorkflowState.PAUSED:
            return run  # paused again before it could continue: resuming the workflow continues it
        return _finish(run, RunStatus.SKIPPED, refusal)
    # Validated before the claim: a run whose values do not validate does no work at all.
    values = properties_in_force(workflow, run)
    problem = configuration_problem(definition, workflow, run)
    if problem:
        return _fail_on_configuration(definition, workflow, run, problem)
    properties = definition.resolve_properties(values)

    # Bookkeeping writes are grouped in few transactions: each commit costs a disk flush, and a run
    # with little to do (an incremental run) would otherwise spend most of its time on them.
    with transaction.atomic():
        claim = leases.claim(definition.id, run.pk, exclusive_with=exclusive_group(definition))
        if claim.won:
            _mark_running(definition, run, continuing=continuing)
    if not claim.won:
        return _wait_or_skip(definition, run, request, claim)
    if claim.abandoned_run:
        journal(definition.id, f"Run #{claim.abandoned_run} was abandoned (its lease expired); taken over by run #{run.pk}.",
                run=run, level=LogLevel.WARNING)
    try:
        with leases.LeaseKeeper(definition.id, run.pk, claim.token) as keeper:
            fence = RunFence(definition.id, run.pk, claim.token, keeper)
            try:
                with shutdown.run_in_progress():
                    return _run_activities(definition, workflow, run, request, fence, properties, continuing=continuing)
            except LeaseLost as error:
                return _lease_lost(definition, run, error)
    finally:
        _release_quietly(definition.id, run.pk)


def _mark_running(definition: WorkflowDefinition, run: WorkflowRun, *, continuing: bool) -> None:
    run.status = RunStatus.RUNNING
    run.started_at = run.started_at or timezone.now()
    run.reason = ""
    run.save(update_fields=["status", "started_at", "reason"])
    journal(definition.id, f"Run #{run.pk} {'continues' if continuing else 'started'} ({run.trigger}"
            f"{', by ' + run.requested_by if run.requested_by else ''}).", run=run)


def exclusive_group(definition: WorkflowDefinition) -> list[str]:
    """The workflows this one must never overlap with, declared on either side."""
    declared = set(definition.exclusive_with)
    declared.update(other.id for other in all_definitions() if definition.id in other.exclusive_with)
    return sorted(declared - {definition.id})


def _wait_or_skip(definition: WorkflowDefinition, run: WorkflowRun, request: RunRequest, claim: leases.Claim) -> WorkflowRun:
    """A lost claim: wait (a re-queue) while the run may, else skip with the reason."""
    # No holder only after claims lost, again and again, to runs that released at once (leases.claim).
    holder = f"run #{claim.holder}" if claim.holder is not None else "a run that has just ended"
    if claim.blocked_by == definition.id:
        blocker = holder
        budget = request.wait_for_lease_s
    else:
        blocker = f"{claim.blocked_by} ({holder}), which must never run at the same time"
        budget = definition.wait_for_exclusive_s
    now = time.time()
    wait_until = request.wait_until or (now + budget if budget else None)
    if wait_until is None or now >= wait_until:
        if request.wait_until:
            journal(definition.id, f"Run #{run.pk} stopped waiting for {blocker} after {budget:.0f}s.", run=run,
                    level=LogLevel.WARNING)
        reason = "already running" if claim.blocked_by == definition.id else f"{claim.blocked_by} is running"
        return _finish(run, RunStatus.SKIPPED, f"{reason} ({holder})")
    waiting = f"waiting for {blocker} to finish (until {timezone.localtime(datetime.fromtimestamp(wait_until, UTC)):%H:%M:%S})"
    if run.reason != waiting:
        if not request.wait_until:
            journal(definition.id, f"Run #{run.pk} is {waiting}.", run=run)
        run.reason = waiting
        run.save(update_fields=["reason"])
    raise Requeue(run, countdown=min(WAIT_POLL_S, wait_until - now), wait_until=wait_until)


def _load_or_create_run(request: RunRequest, definition: WorkflowDefinition) -> tuple[WorkflowRun, WorkflowRun | None]:
    """The run this message is for, and the run that already serves its slot when the slot was sent
    twice (the run returned is then a new one, to be recorded as skipped)."""
    if request.run_id is not None:
        run = WorkflowRun.objects.get(pk=request.run_id, workflow_id=definition.id)
        if request.task_id and run.celery_task_id != request.task_id and run.status == RunStatus.QUEUED:
            run.celery_task_id = request.task_id
            run.save(update_fields=["celery_task_id"])
        return run, None
    if request.trigger != Trigger.SCHEDULE:
        # Sent from outside the commands (``celery -A campaign call workflows.<id>``): audit it too.
        audit.audit(definition.id, "run now", actor=request.requested_by or f"{request.trigger} (Celery message)",
              note=f"task {request.task_id}" if request.task_id else "")
    fields = {"workflow_id": definition.id, "trigger": request.trigger, "requested_by": request.requested_by,
              "celery_task_id": request.task_id, "overrides": request.overrides or {}, "attempt": request.attempt}
    if request.slot is None or request.attempt > 1:
        return WorkflowRun.objects.create(**fields), None
    first = WorkflowRun.objects.filter(workflow_id=definition.id, slot=request.slot).first()
    if first is None:
        try:
            with transaction.atomic():
                return WorkflowRun.objects.create(**fields, slot=request.slot), None
        except IntegrityError:  # another beat's message for this slot won the race
            first = WorkflowRun.objects.get(workflow_id=definition.id, slot=request.slot)
    if first.celery_task_id == request.task_id:
        return first, None  # the same message delivered again (its worker died): carry on with its run
    return WorkflowRun.objects.create(**fields), first


def paused_run(workflow: Workflow, *, other_than: int | None = None) -> WorkflowRun | None:
    """The workflow's most recent ``paused`` run (besides run ``other_than``): start and resume
    continue it; while it waits, a new run is skipped unless forced, and a forced run stops it."""
    paused = WorkflowRun.objects.filter(workflow=workflow, status=RunStatus.PAUSED)
    if other_than is not None:
        paused = paused.exclude(pk=other_than)
    return paused.order_by("-pk").first()


def _refusal(workflow: Workflow, run: WorkflowRun, request: RunRequest, continuing: bool) -> str:
    """Why this run must not go on, or an empty string."""
    if workflow.state != WorkflowState.STARTED and not request.force:
        return f"workflow is {workflow.state}"
    paused = paused_run(workflow, other_than=run.pk)
    if paused and not continuing:
        if not request.force:
            return (f"run #{paused.pk} is paused at activity {paused.halted_activity!r}; "
                    "resume the workflow to continue it")
        WorkflowRun.objects.filter(pk=paused.pk, status=RunStatus.PAUSED).update(
            status=RunStatus.STOPPED, reason=f"superseded by run #{run.pk}", finished_at=timezone.now()
        )
    return ""


def properties_in_force(workflow: Workflow, run: WorkflowRun) -> dict[str, Any]:
    """The values a run reads besides the defaults: the stored ones, each replaced by the run's
    override when it has one (so an override may stand in for a stored value that no longer validates)."""
    return {**(workflow.properties or {}), **(run.overrides or {})}


def configuration_problem(definition: WorkflowDefinition, workflow: Workflow, run: WorkflowRun) -> str:
    """Why the run cannot use its properties, naming each bad value and where to fix it; "" when
    every value in force validates."""
    overrides = run.overrides or {}
    stored = {name: value for name, value in (workflow.properties or {}).items() if name not in overrides}
    parts = []
    stored_problems = list(invalid_values(definition.properties, stored).values())
    if stored_problems:
        fix = "fix it" if len(stored_problems) == 1 else "fix them"
        parts.append("; ".join(f"property {problem}" for problem in stored_problems) + f"; {fix} on the workflow page")
    override_problems = list(invalid_values(definition.properties, overrides).values())
    if override_problems:
        parts.append("; ".join(f"override {problem}" for problem in override_problems)
                     + "; run again without it or with a valid value")
    return "; ".join(parts)


def _fail_on_configuration(definition: WorkflowDefinition, workflow: Workflow, run: WorkflowRun, reason: str) -> WorkflowRun:
    """Fail a run whose properties do not validate, before it claims the workflow or does any work.

    Such a failure does **not** count toward the consecutive-error threshold, and leaves the count
    as it was. The threshold pauses a workflow whose runs keep failing on something that may do
    harm or may pass by itself (a service down, bad data, a bug), so that someone looks. Here the
    run did nothing, every later run fails the same way until the value is fixed, and pausing would
    not fix it: it would only replace the reason on the next runs by "workflow is paused" and need
    a resume on top of the fix. So each run fails once with the reason (no retry), the workflow's
    page shows the bad value, and the supervisors are emailed when the reason first appears (not
    at every scheduled run).
    """
    previous = (WorkflowRun.objects.filter(workflow_id=definition.id, finished_at__isnull=False).exclude(pk=run.pk)
                .order_by("-pk").values_list("status", "reason").first())
    # A paused run that continues has its halted activity's row: it will never continue now.
    ActivityRun.objects.filter(run=run, status=ActivityStatus.PAUSED).update(
        status=ActivityStatus.FAILED, message="invalid properties", finished_at=timezone.now())
    run = _fail(definition, workflow, run, reason, final=True, counted=False)
    if previous != (RunStatus.FAILED, reason):
        notifications.notify_supervisors(
            workflow, subject=f"Workflow {definition.id}: runs refused, invalid properties",
            body=f"Run #{run.pk} of {definition.id} was refused before it started: {reason}\n\n"
                 "Every run fails the same way until the value is fixed; the workflow is not paused.",
        )
    return run


def _run_activities(
    definition: WorkflowDefinition, workflow: Workflow, run: WorkflowRun, request: RunRequest, fence: RunFence,
    properties: dict[str, Any], *, continuing: bool,
) -> WorkflowRun:
    if not definition.implemented:
        return _fail(definition, workflow, run, NOT_IMPLEMENTED, final=True)

    # Only a paused run that continues has activity rows already (a run taken over after its
    # worker died is a new run): a fresh run creates them without looking.
    finished = set()
    if continuing:
        finished = set(run.activities.filter(status__in=[ActivityStatus.SUCCEEDED, ActivityStatus.SKIPPED])
                       .values_list("name", flat=True))
    current: ActivityRun | None = None
    try:
        for position, activity in enumerate(definition.activities):
            name = activity.__name__
            if name in finished:
                continue
            started = {"name": name, "status": ActivityStatus.RUNNING, "finished_at": None, "message": ""}
            if continuing:
                current, _ = ActivityRun.objects.update_or_create(run=run, position=position, defaults=started)
            else:
                current = ActivityRun.objects.create(run=run, position=position, **started)
            mode = workflow.activity_modes.get(name, ActivityMode.NORMAL)
            if mode == ActivityMode.DISABLED:
                _end_activity(current, ActivityStatus.SKIPPED, "disabled")
                journal(definition.id, "Skipped: the activity is disabled.", run=run, activity=name)
                continue
            if mode == ActivityMode.SUSPENDED:
                raise RunHalted("suspended")
            context = ActivityContext(
                workflow_id=definition.id, run=run, activity=current, properties=properties,
                batch_size=definition.batch_size, fence=fence, started_in_state=workflow.state,
                on_progress=request.on_progress,
            )
            context._checkpoint()
            activity(context)
            with _fenced(fence):
                _end_activity(current, ActivityStatus.SUCCEEDED, "")  # its counters included
                context.save_progress()
                journal(definition.id, f"Done: {_format_counters(current.counters)}.", run=run, activity=name)
    except RunHalted as halt:
        with _fenced(fence):
            run = _halt(definition, run, current, halt.state)
        if halt.state == HANDOVER:
            raise Requeue(run, countdown=0) from None  # the lease is released on the way out
        return run
    except SkipRun as skip:
        with _fenced(fence):
            _end_activity(current, ActivityStatus.SKIPPED, str(skip))
            journal(definition.id, f"Skipped: {skip}", run=run, activity=current.name if current else "")
            return _finish(run, RunStatus.SKIPPED, str(skip))
    except LeaseLost:
        raise
    except SoftTimeLimitExceeded:
        _end_activity(current, ActivityStatus.FAILED, "time limit exceeded")
        return _fail(definition, workflow, run, f"time limit of {definition.soft_time_limit_s}s exceeded", final=True)
    except Exception as error:  # every failure is recorded, then classified
        if not connection.in_atomic_block:
            close_old_connections()  # a lost database connection is replaced before recording
        if not _still_holds(fence):
            # E.g. PostgreSQL ended the session of a frozen run (its idle transaction outlived the
            # lease) and another run took over: that, not the broken connection, is the cause.
            raise LeaseLost(f"{leases.LEASE_LOST}: another run took {definition.id} over ({describe(error)})") from error
        reason = describe(error)
        _end_activity(current, ActivityStatus.FAILED, reason)
        journal(definition.id, traceback.format_exc(limit=8), run=run, activity=current.name if current else "",
                level=LogLevel.ERROR)
        retry = request.retry_allowed and is_transient(error)
        run = _fail(definition, workflow, run, reason + (" (transient; will retry)" if retry else ""), final=not retry)
        if retry:
            raise TransientRunError(run, error) from error
        return run

    with _fenced(fence, release=True):
        Workflow.objects.filter(pk=workflow.pk, consecutive_errors__gt=0).update(consecutive_errors=0)
        return _finish(run, RunStatus.SUCCEEDED, "")


@contextmanager
def _fenced(fence: RunFence, *, release: bool = False) -> Iterator[None]:
    """A transaction of the run's own records (an activity's or the run's end) that commits only
    while the run holds its lease: a run taken over reports nothing as done. ``release`` lets the
    lease go in the same commit (the run's end)."""
    with transaction.atomic():
        yield
        fence.check()
        if release:
            leases.release(fence.workflow_id, fence.run_id)


def _still_holds(fence: RunFence) -> bool:
    try:
        return Workflow.objects.filter(pk=fence.workflow_id, lease_holder=fence.run_id, lease_token=fence.token).exists()
    except DatabaseError:
        return True  # the database itself is the failure: say that


def _lease_lost(definition: WorkflowDefinition, run: WorkflowRun, error: LeaseLost) -> WorkflowRun:
    """The run lost its lease: whatever it had not committed was rolled back by the fence."""
    ActivityRun.objects.filter(run=run, status__in=[ActivityStatus.RUNNING, ActivityStatus.PAUSED]).update(
        status=ActivityStatus.FAILED, message=leases.LEASE_LOST, finished_at=timezone.now()
    )
    journal(definition.id, f"Run #{run.pk} lost its lease and committed nothing more: {error}", run=run,
            level=LogLevel.WARNING)
    return _finish(run, RunStatus.FAILED, leases.LEASE_LOST)


def _halt(definition: WorkflowDefinition, run: WorkflowRun, current: ActivityRun | None, state: str) -> WorkflowRun:
    name = current.name if current else ""
    if state == WorkflowState.STOPPED:
        _end_activity(current, ActivityStatus.STOPPED, "workflow stopped")
        return _finish(run, RunStatus.STOPPED, f"workflow stopped during activity {name!r}")
    reason = {"suspended": f"activity {name!r} is suspended",
              HANDOVER: f"its worker is stopping; continues on another worker from activity {name!r}"}.get(
        state, f"workflow paused; will continue from activity {name!r}")
    _end_activity(current, ActivityStatus.PAUSED, reason, finished=False)
    run.halted_activity = name
    run.save(update_fields=["halted_activity"])
    journal(definition.id, f"Halted: {reason}.", run=run, activity=name)
    return _finish(run, RunStatus.PAUSED, reason, final=False)


def _fail(definition: WorkflowDefinition, workflow: Workflow, run: WorkflowRun, reason: str, *, final: bool,
          counted: bool = True) -> WorkflowRun:
    """Record the failure; a final failure counts toward the consecutive-error threshold unless
    ``counted`` is false (see :func:`_fail_on_configuration`)."""
    run = _finish(run, RunStatus.FAILED, reason)
    journal(definition.id, f"Run #{run.pk} failed: {reason}", run=run, level=LogLevel.ERROR)
    if final and counted and reason != NOT_IMPLEMENTED:
        _count_consecutive_error(workflow, run)
    return run


def _count_consecutive_error(workflow: Workflow, run: WorkflowRun) -> None:
    with transaction.atomic():
        row = Workflow.objects.select_for_update().get(pk=workflow.pk)
        row.consecutive_errors += 1
        row.save(update_fields=["consecutive_errors"])
    if row.consecutive_errors >= row.error_threshold and row.state == WorkflowState.STARTED:
        note = f"{row.consecutive_errors} consecutive failed runs (threshold {row.error_threshold}); last: {run.reason}"
        audit.pause(row.pk, actor="system", note=note)
        notifications.notify_supervisors(
            row, subject=f"Workflow {row.pk} paused after {row.consecutive_errors} failed runs",
            body=f"{note}\n\nRun #{run.pk}. Fix the cause, then resume the workflow.",
        )


def _end_activity(activity: ActivityRun | None, status: str, message: str, *, finished: bool = True) -> None:
    if activity is None:
        return
    activity.status = status
    activity.message = message
    activity.finished_at = timezone.now() if finished else None
    activity.save(update_fields=["status", "message", "finished_at", "counters"])


def _finish(run: WorkflowRun, status: str, reason: str, *, final: bool = True) -> WorkflowRun:
    now = timezone.now()
    run.status = status
    run.reason = reason
    totals: Counter[str] = Counter()
    for counters in run.activities.values_list("counters", flat=True):
        totals.update({key: value for key, value in counters.items() if isinstance(value, int)})
    run.counters = dict(totals)
    if final:
        run.finished_at = now
        run.started_at = run.started_at or now
        run.duration_s = round((now - run.started_at).total_seconds(), 3)
    run.save(update_fields=["status", "reason", "counters", "finished_at", "started_at", "duration_s"])
    logger.info("workflow %s run #%s %s %s", run.workflow_id, run.pk, status, reason)
    return run


def _release_quietly(workflow_id: str, run_id: int) -> None:
    """Release the lease; if the database is gone, the lease simply expires."""
    try:
        leases.release(workflow_id, run_id)
    except Exception:  # the lease expiring is the designed fallback
        logger.warning("could not release the lease of %s (run #%s); it will expire", workflow_id, run_id)


def _format_counters(counters: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in counters.items()) or "nothing to do"
