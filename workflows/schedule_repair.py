"""Putting a drifted workflow schedule back: ``manage.py workflow repair``, ``migrate``, the admin.

Why it exists: a workflow's PeriodicTask is a plain row of django-celery-beat, and its admin lets
anyone delete it (``Workflow.periodic_task`` then becomes NULL), disable it, or point it at another
task. Beat then silently stops running the workflow. :func:`workflows.schedules.drift_of` says what
is wrong; this module restores the schedule the workflow had, and audits each repair.

What a repair does, and never more:

- a missing PeriodicTask is recreated (or the unlinked row still named after the workflow is linked
  again) with the crontab the workflow had: ``Workflow.last_schedule`` when one was recorded, else
  the definition's default; the audit note says which;
- an existing PeriodicTask keeps its crontab; its task name is set back to ``workflows.<id>``, a
  missing crontab is restored as above, and it is enabled exactly when the workflow is started
  (re-enabling counts from now: no burst of the slots missed meanwhile).

Safe to run twice: a workflow without drift is left alone (only its remembered schedule is brought
up to date), so a second repair finds nothing to do and writes no audit row.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from workflows import schedules
from workflows.audit import audit
from workflows.definition import WorkflowDefinition, all_definitions, get_definition
from workflows.models import Workflow, WorkflowState

#: The audit trail's action for a repair.
REPAIR_ACTION = "repair schedule"


@dataclass(frozen=True)
class Repair:
    """One workflow's repair: what was wrong and what was done (the audit row's note)."""

    workflow: str
    problems: list[str]
    done: list[str]

    @property
    def note(self) -> str:
        return f"Found: {'; '.join(self.problems)}. Done: {'; '.join(self.done)}."


def repair_schedule(workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "") -> Repair | None:
    """Repair one workflow's schedule; None when it had not drifted. Raises UnknownWorkflow."""
    definition = get_definition(workflow_id)
    with transaction.atomic():
        # Locked: a concurrent start, pause or second repair waits for this one.
        workflow = Workflow.objects.select_for_update(of=("self",)).get(pk=definition.id)
        if workflow.periodic_task_id is not None:  # fresh and locked: beat and the admin write it too
            workflow.periodic_task = PeriodicTask.objects.select_for_update().filter(pk=workflow.periodic_task_id).first()
        problems = schedules.drift_of(workflow, definition)
        if not problems:
            schedules.remember_schedule(workflow)
            return None
        changes: dict[str, list[object]] = {}
        done: list[str] = []
        if workflow.periodic_task is None:
            _restore_periodic_task(definition, workflow, changes, done)
        task = workflow.periodic_task
        assert task is not None
        if task.task != definition.task_name:
            changes["task"] = [task.task, definition.task_name]
            done.append(f"task set back to {definition.task_name!r}")
            task.task = definition.task_name
        if task.crontab_id is None:
            schedule, origin = _schedule_to_restore(definition, workflow)
            changes["schedule"] = [None, str(schedule)]
            done.append(f"crontab set to {origin}")
            task.interval = task.solar = task.clocked = None  # django-celery-beat allows one kind of schedule
            task.crontab = schedules.get_crontab_schedule(schedule.crontab, schedule.timezone)
        enabled = workflow.state == WorkflowState.STARTED
        if task.enabled != enabled:
            changes["enabled"] = [task.enabled, enabled]
            done.append("enabled, counting from now" if enabled else f"disabled ({definition.id} is {workflow.state})")
            task.enabled = enabled
            if enabled:
                task.last_run_at = timezone.now()  # the slots missed while it was disabled are not fired
        task.save()  # also tells beat that the schedule changed
        schedules.remember_schedule(workflow)
        repair = Repair(workflow=workflow.pk, problems=problems, done=done)
        audit(workflow.pk, REPAIR_ACTION, user=user, actor=actor, changes=changes, note=repair.note)
    return repair


def repair_schedules(*, user: AbstractBaseUser | None = None, actor: str = "") -> list[Repair]:
    """Repair every declared workflow that has a row; the list of repairs made (in id order)."""
    existing = set(Workflow.objects.values_list("pk", flat=True))
    repairs = []
    for definition in all_definitions():
        if definition.id in existing:
            repair = repair_schedule(definition.id, user=user, actor=actor)
            if repair is not None:
                repairs.append(repair)
    return repairs


def _restore_periodic_task(definition: WorkflowDefinition, workflow: Workflow, changes: dict[str, list[object]],
                           done: list[str]) -> None:
    orphan = PeriodicTask.objects.select_for_update(of=("self",)).filter(name=definition.id, workflow__isnull=True).first()
    if orphan is not None:
        workflow.periodic_task = orphan
        done.append(f"linked again to the PeriodicTask {orphan.name!r}, which still existed")
    else:
        schedule, origin = _schedule_to_restore(definition, workflow)
        workflow.periodic_task = schedules.create_periodic_task(definition, workflow, schedule)
        changes["schedule"] = [None, str(schedule)]
        done.append(f"PeriodicTask recreated with {origin}")
    changes["periodic_task"] = [None, workflow.periodic_task.name]
    workflow.save(update_fields=["periodic_task", "updated_at"])


def _schedule_to_restore(definition: WorkflowDefinition, workflow: Workflow) -> tuple[schedules.ScheduleSpec, str]:
    """The schedule the workflow had, and the words that say where it comes from (audit note)."""
    remembered = schedules.remembered_schedule(workflow)
    if remembered is not None:
        return remembered, f"the last known schedule, {remembered}"
    default = schedules.default_schedule(definition)
    return default, f"the definition's default schedule, {default} (no earlier schedule was recorded)"
