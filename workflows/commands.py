"""The commands an administrator or operator gives a workflow, with the semantics below.

The admin, the CLI and the shell all call these functions, so a command means the same wherever
it is given, and each writes a WorkflowAudit row naming who gave it.

- start:   state → started, schedule enabled; a paused run continues from where it halted.
- pause:   state → paused, schedule disabled; a running run halts at its next batch boundary.
- resume:  start, for a paused workflow (a stopped one cannot be resumed).
- stop:    state → stopped, schedule disabled; a running run halts with status ``stopped``.
- restart: stop, then start a fresh run at once.
- run now: one run immediately, refused when paused or stopped unless forced.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from workflows import engine, leases, schedules
from workflows.definition import get_definition
from workflows.models import RunStatus, Trigger, Workflow, WorkflowAudit, WorkflowRun, WorkflowState


class CommandRefused(Exception):
    """The command cannot be carried out; the message says why."""


def _actor_name(user: AbstractBaseUser | None, actor: str) -> str:
    return actor or (user.get_username() if user is not None else "system")


def audit(workflow_id: str, action: str, *, user: AbstractBaseUser | None = None, actor: str = "",
          changes: dict[str, Any] | None = None, note: str = "") -> WorkflowAudit:
    return WorkflowAudit.objects.create(
        workflow_id=workflow_id, user=user if user is not None and user.is_authenticated else None,
        actor=_actor_name(user, actor), action=action, changes=changes or {}, note=note,
    )


def _set_state(workflow_id: str, state: str, action: str, *,
               user: AbstractBaseUser | None, actor: str, note: str = "") -> Workflow:
    with transaction.atomic():
        workflow = (Workflow.objects.select_for_update(of=("self",)).select_related("periodic_task")
                    .get(pk=get_definition(workflow_id).id))
        before = workflow.state
        paused_at = workflow.paused_at
        workflow.state = state
        if state == WorkflowState.STARTED:
            workflow.paused_at = None
            workflow.paused_reported_at = None
            workflow.consecutive_errors = 0
        elif before == WorkflowState.STARTED:
            workflow.paused_at = timezone.now()
        if state == WorkflowState.STOPPED:
            workflow.halt_run = workflow.lease_holder  # halts even if started again before its next batch
        workflow.save(update_fields=["state", "paused_at", "paused_reported_at", "consecutive_errors", "halt_run",
                                     "updated_at"])
        catch_up = paused_at if get_definition(workflow.pk).catch_up else None
        schedules.set_enabled(workflow, state == WorkflowState.STARTED, catch_up_since=catch_up)
        audit(workflow.pk, action, user=user, actor=actor, changes={"state": [before, state]}, note=note)
    return workflow


def start(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "", action: str = "start") -> Workflow:
    workflow = _set_state(workflow_id, WorkflowState.STARTED, action, user=user, actor=actor)
    paused = WorkflowRun.objects.filter(workflow=workflow, status=RunStatus.PAUSED).order_by("-pk").first()
    if paused is not None:
        enqueue(paused)
    return workflow


def resume(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "") -> Workflow:
    workflow = Workflow.objects.get(pk=get_definition(workflow_id).id)
    if workflow.state == WorkflowState.STOPPED:
        raise CommandRefused(f"{workflow.pk} is stopped and cannot be resumed; use start (or restart) for a fresh run")
    return start(workflow_id, user=user, actor=actor, action="resume")


def pause(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "", note: str = "") -> Workflow:
    workflow = Workflow.objects.get(pk=get_definition(workflow_id).id)
    if workflow.state == WorkflowState.STOPPED:
        raise CommandRefused(f"{workflow.pk} is stopped; start it before pausing it")
    return _set_state(workflow_id, WorkflowState.PAUSED, "pause", user=user, actor=actor, note=note)


def stop(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "") -> Workflow:
    workflow = _set_state(workflow_id, WorkflowState.STOPPED, "stop", user=user, actor=actor)
    # A paused run can never continue now.
    WorkflowRun.objects.filter(workflow=workflow, status=RunStatus.PAUSED).update(
        status=RunStatus.STOPPED, reason="workflow stopped", finished_at=timezone.now()
    )
    return workflow


def restart(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "", trigger: str = Trigger.SHELL,
            sync: bool = False) -> WorkflowRun:
    stop(workflow_id, user=user, actor=actor)
    _set_state(workflow_id, WorkflowState.STARTED, "restart", user=user, actor=actor)
    # The fresh run waits (up to a lease, re-queued, never sleeping in a worker slot) for the
    # stopped one to halt at its next batch boundary.
    return run_now(workflow_id, user=user, actor=actor, trigger=trigger, sync=sync, audit_action=None,
                   wait_for_lease_s=leases.lease_seconds())


def run_now(
    workflow_id: str,
    *,
    user: AbstractBaseUser | None = None,
    actor: str = "",
    trigger: str = Trigger.SHELL,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    sync: bool = False,
    audit_action: str | None = "run now",
    wait_for_lease_s: float = 0.0,
    on_progress: Callable[[WorkflowRun], None] | None = None,
) -> WorkflowRun:
    """Queue a run (or, with ``sync``, execute it in this process, calling ``on_progress`` after
    each batch) and return it."""
    definition = get_definition(workflow_id)
    workflow = Workflow.objects.get(pk=definition.id)
    if workflow.state != WorkflowState.STARTED and not force:
        raise CommandRefused(f"{workflow.pk} is {workflow.state}; resume it first, or force the run")
    validated = {name: definition.get_property(name).validate(value) for name, value in (overrides or {}).items()}
    if audit_action:
        audit(workflow.pk, audit_action, user=user, actor=actor,
              note=", ".join(filter(None, ["forced" if force else "", f"overrides {validated}" if validated else "",
                                           "in process" if sync else ""])))
    run = WorkflowRun.objects.create(
        workflow=workflow, trigger=trigger, requested_by=_actor_name(user, actor), overrides=validated,
        celery_task_id="" if sync else str(uuid.uuid4()),
    )
    if sync:
        return engine.execute_in_process(engine.RunRequest(workflow_id=workflow.pk, trigger=trigger, run_id=run.pk, force=force,
                                                wait_for_lease_s=wait_for_lease_s, on_progress=on_progress))
    enqueue(run, force=force, wait_for_lease_s=wait_for_lease_s)
    return run


def enqueue(run: WorkflowRun, *, force: bool = False, wait_for_lease_s: float = 0.0) -> None:
    """Send the run's message once the transaction that created the run has committed."""
    task_id = run.celery_task_id or str(uuid.uuid4())
    if run.celery_task_id != task_id:
        WorkflowRun.objects.filter(pk=run.pk).update(celery_task_id=task_id)
    definition = get_definition(run.workflow_id)
    kwargs = {"run_id": run.pk, "trigger": run.trigger, "force": force, "wait_for_lease_s": wait_for_lease_s}

    def send() -> None:
        from campaign.celery import app

        try:
            app.send_task(definition.task_name, kwargs=kwargs, task_id=task_id)
        except (OperationalError, OSError) as error:  # the broker is down: say so on the run, not "queued" forever
            WorkflowRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
                status=RunStatus.FAILED, reason=f"broker unreachable: {type(error).__name__}", finished_at=timezone.now()
            )
            raise

    transaction.on_commit(send)
