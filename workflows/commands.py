"""The commands an administrator or operator gives a workflow, with the semantics below.

The admin, the CLI and the shell all call these functions, so a command means the same wherever
it is given, and each writes a WorkflowAudit row naming who gave it (:mod:`workflows.audit`, which
the engine writes too).

- start:   state → started, schedule enabled; a paused run continues from where it halted.
- pause:   state → paused, schedule disabled; a running run halts at its next batch boundary.
- resume:  start, for a paused workflow (a stopped one cannot be resumed).
- stop:    state → stopped, schedule disabled; a running run halts with status ``stopped``.
- restart: stop, then start a fresh run at once.
- run now: one run immediately, refused when paused or stopped unless forced. A forced run goes
  ahead whatever the state (which it leaves as it is), and stops a paused run instead of waiting
  for it to be continued (see :func:`workflows.engine.paused_run`).

:func:`refusal` says which commands are refused in which state, and :func:`applicable_commands`
which ones would do something: the admin offers a button for those only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from celery import current_app
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from campaign.workflow_runs import RunRefused
from workflows import engine, leases, schedules
from workflows.audit import actor_name, audit, set_state
from workflows.definition import get_definition
from workflows.models import RunStatus, Trigger, Workflow, WorkflowRun, WorkflowState

#: The commands by the names the audit trail gives them; "force run" is run now with ``force``.
COMMAND_NAMES = ("start", "pause", "resume", "stop", "restart", "run now", "force run")


class CommandRefused(RunRefused):
    """The command cannot be carried out; the message says why. (A :class:`RunRefused`, so the
    domain, which asks for runs through :mod:`campaign.workflow_runs`, catches it without knowing
    the engine.)"""


def refusal(command: str, workflow: Workflow) -> str:
    """Why ``command`` (one of :data:`COMMAND_NAMES`) is refused on ``workflow`` as it is now; ""
    when it is carried out. The commands below raise it as :class:`CommandRefused`."""
    if workflow.state == WorkflowState.STOPPED and command == "pause":
        return f"{workflow.pk} is stopped; start it before pausing it"
    if workflow.state == WorkflowState.STOPPED and command == "resume":
        return f"{workflow.pk} is stopped and cannot be resumed; use start (or restart) for a fresh run"
    if workflow.state != WorkflowState.STARTED and command == "run now":
        first = "resume" if workflow.state == WorkflowState.PAUSED else "start"
        return f"{workflow.pk} is {workflow.state}; {first} it first, or force the run"
    return ""


def applicable_commands(workflow: Workflow) -> list[str]:
    """The commands that would do something to ``workflow`` as it is now, in :data:`COMMAND_NAMES`
    order: not refused (:func:`refusal`), and not one that changes nothing or repeats another
    under a second name. The admin shows a button for these only.

    - start on a paused workflow is resume; on a started one it only continues a paused run, which
      resume names (and resume on a started workflow without a paused run changes nothing);
    - pause on a paused workflow and stop on a stopped one change nothing;
    - run now while a run is paused gives a skipped run: the engine keeps the paused one to be
      continued (resume), or stopped by a forced run;
    - force run is offered where run now is refused or skipped; elsewhere it is run now.
    """
    state = workflow.state
    waiting = engine.paused_run(workflow) is not None
    redundant = {
        "start": state != WorkflowState.STOPPED,
        "pause": state == WorkflowState.PAUSED,
        "resume": state == WorkflowState.STARTED and not waiting,
        "stop": state == WorkflowState.STOPPED,
        "restart": False,
        "run now": waiting,
        "force run": state == WorkflowState.STARTED and not waiting,
    }
    return [command for command in COMMAND_NAMES if not refusal(command, workflow) and not redundant[command]]


def _check(command: str, workflow_id: str) -> Workflow:
    """The workflow, if ``command`` is not refused on it; else :class:`CommandRefused`."""
    workflow = Workflow.objects.get(pk=get_definition(workflow_id).id)
    reason = refusal(command, workflow)
    if reason:
        raise CommandRefused(reason)
    return workflow


def start(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "", action: str = "start") -> Workflow:
    workflow = set_state(workflow_id, WorkflowState.STARTED, action, user=user, actor=actor)
    paused = engine.paused_run(workflow)
    if paused is not None:
        enqueue(paused)
    return workflow


def resume(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "") -> Workflow:
    _check("resume", workflow_id)
    return start(workflow_id, user=user, actor=actor, action="resume")


def pause(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "", note: str = "") -> Workflow:
    _check("pause", workflow_id)
    return set_state(workflow_id, WorkflowState.PAUSED, "pause", user=user, actor=actor, note=note)


def stop(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "") -> Workflow:
    workflow = set_state(workflow_id, WorkflowState.STOPPED, "stop", user=user, actor=actor)
    # A paused run can never continue now.
    WorkflowRun.objects.filter(workflow=workflow, status=RunStatus.PAUSED).update(
        status=RunStatus.STOPPED, reason="workflow stopped", finished_at=timezone.now()
    )
    return workflow


def restart(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "", trigger: str = Trigger.SHELL,
            sync: bool = False) -> WorkflowRun:
    stop(workflow_id, user=user, actor=actor)
    set_state(workflow_id, WorkflowState.STARTED, "restart", user=user, actor=actor)
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
    workflow = _check("force run" if force else "run now", workflow_id)
    validated = {name: definition.get_property(name).validate(value) for name, value in (overrides or {}).items()}
    if audit_action:
        audit(workflow.pk, audit_action, user=user, actor=actor,
              note=", ".join(filter(None, ["forced" if force else "", f"overrides {validated}" if validated else "",
                                           "in process" if sync else ""])))
    run = WorkflowRun.objects.create(
        workflow=workflow, trigger=trigger, requested_by=actor_name(user, actor), overrides=validated,
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
        try:
            current_app.send_task(definition.task_name, kwargs=kwargs, task_id=task_id)
        except (OperationalError, OSError) as error:  # the broker is down: say so on the run, not "queued" forever
            WorkflowRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
                status=RunStatus.FAILED, reason=f"broker unreachable: {type(error).__name__}", finished_at=timezone.now()
            )
            raise

    transaction.on_commit(send)


class DomainRunner:
    """What the domain may ask of the engine (:class:`campaign.workflow_runs.Runner`), installed by
    :mod:`workflows.apps`: this module's :func:`run_now` and :func:`workflows.schedules.beat_message`,
    looked up at each call."""

    def run_now(self, workflow_id: str, **options: Any) -> WorkflowRun:
        return run_now(workflow_id, **options)

    def beat_message(self, workflow_id: str, **task_kwargs: Any) -> dict[str, str]:
        return schedules.beat_message(get_definition(workflow_id), **task_kwargs)
