"""Who did what to a workflow: the WorkflowAudit rows, and the one function that changes a
workflow's state (always with its audit row).

Why a module of its own: both the operator commands (:mod:`workflows.commands`) and the engine
write these — the engine audits a run sent from outside the commands and pauses a workflow after
too many consecutive failed runs. The commands enqueue runs through the engine, so what both need
sits below the engine, and neither imports the other in a circle.

Invariant: a state change and its audit row commit in one transaction, with the schedule enabled
exactly when the state is ``started``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from workflows import schedules
from workflows.definition import get_definition
from workflows.models import Workflow, WorkflowAudit, WorkflowState


def actor_name(user: AbstractBaseUser | None, actor: str) -> str:
    return actor or (user.get_username() if user is not None else "system")


def audit(workflow_id: str, action: str, *, user: AbstractBaseUser | None = None, actor: str = "",
          changes: dict[str, Any] | None = None, note: str = "") -> WorkflowAudit:
    return WorkflowAudit.objects.create(
        workflow_id=workflow_id, user=user if user is not None and user.is_authenticated else None,
        actor=actor_name(user, actor), action=action, changes=changes or {}, note=note,
    )


def set_state(workflow_id: str, state: str, action: str, *, user: AbstractBaseUser | None, actor: str,
              note: str = "") -> Workflow:
    """Change the workflow's state, enable or disable its schedule to match, and audit it."""
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


def pause(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "", note: str = "") -> Workflow | None:
    """Pause a workflow unless it is stopped (None then: a stopped workflow stays stopped)."""
    workflow = Workflow.objects.get(pk=get_definition(workflow_id).id)
    if workflow.state == WorkflowState.STOPPED:
        return None
    return set_state(workflow_id, WorkflowState.PAUSED, "pause", user=user, actor=actor, note=note)
