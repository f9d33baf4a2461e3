"""Workflow schedules, kept as django-celery-beat PeriodicTasks.

The definition gives a default crontab; the PeriodicTask is created from it with a new workflow
and never overwritten afterwards, so an administrator's edit survives ``migrate``, deploys and
beat restarts. The beat process only ever reads these rows (there is no CELERY_BEAT_SCHEDULE).

Invariants, for a workflow whose definition has a schedule:

- ``Workflow.periodic_task`` is a PeriodicTask that sends ``workflows.<id>`` on a crontab, enabled
  exactly when the workflow is started (pause and stop disable it on purpose).
- ``Workflow.last_schedule`` remembers that crontab and time zone (written when the schedule is
  created, edited, repaired and at each ``migrate``), so a PeriodicTask deleted from
  django-celery-beat's admin can be recreated as it was.

A workflow that breaks the first invariant has *drifted* (:func:`drift_of`): ``/healthz`` fails,
the admin and the dashboard show a warning, and :mod:`workflows.schedule_repair` puts it right.
"""

from __future__ import annotations

import json
import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from celery.schedules import crontab as celery_crontab
from cron_descriptor import Options, get_description
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from workflows.definition import UnknownWorkflow, WorkflowDefinition, all_definitions, get_definition
from workflows.models import Trigger, Workflow, WorkflowState

#: A crontab that matches no day in this many years never fires (28 years: the calendar's cycle,
#: long enough for "29 February on a Monday").
NEVER_FIRES_HORIZON_DAYS = 28 * 366


@dataclass(frozen=True)
class Crontab:
    minute: str
    hour: str
    day_of_month: str
    month_of_year: str
    day_of_week: str

    def __str__(self) -> str:
        return f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} {self.day_of_week}"


@dataclass(frozen=True)
class ScheduleSpec:
    """A crontab in a time zone: what a workflow's schedule is, whatever row holds it."""

    crontab: Crontab
    timezone: str

    def __str__(self) -> str:
        return f"{self.crontab} ({self.timezone})"

    def as_json(self) -> dict[str, str]:
        return {"crontab": str(self.crontab), "timezone": self.timezone}


def parse_crontab(text: str) -> Crontab:
    """Five fields "minute hour day-of-month month day-of-week", validated; raises ValidationError."""
    fields = (text or "").split()
    if len(fields) != 5:
        raise ValidationError(
            f"A crontab has five fields (minute hour day-of-month month day-of-week), got {len(fields)}: {text!r}."
        )
    spec = Crontab(*fields)
    try:
        parsed = celery_crontab(
            minute=spec.minute, hour=spec.hour, day_of_month=spec.day_of_month,
            month_of_year=spec.month_of_year, day_of_week=spec.day_of_week,
        )
    except (ValueError, TypeError) as error:
        detail = str(error).removeprefix("Invalid crontab: ").rstrip(".")
        raise ValidationError(f"Invalid crontab {text!r}: {detail}.") from None
    if not _fires_some_day(parsed):
        raise ValidationError(f"The crontab {text!r} never fires: no date matches its day-of-month, month and day-of-week.")
    return spec


def _fires_some_day(parsed: celery_crontab) -> bool:
    # Celery requires day of month AND day of week to match (not cron's OR).
    day = date.today()
    for _ in range(NEVER_FIRES_HORIZON_DAYS):
        if (day.month in parsed.month_of_year and day.day in parsed.day_of_month
                and day.isoweekday() % 7 in parsed.day_of_week):
            return True
        day += timedelta(days=1)
    return False


def validate_time_zone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"Unknown time zone {name!r}; use an IANA name such as Europe/Paris.") from None
    return name


def describe(text: str) -> str:
    """"Every 15 minutes", "At 04:00"..."""
    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    return get_description(text, options)


def crontab_of(task: PeriodicTask | None) -> CrontabSchedule | None:
    return task.crontab if task is not None and task.crontab_id else None


def crontab_text(schedule: CrontabSchedule) -> str:
    return " ".join(
        [schedule.minute, schedule.hour, schedule.day_of_month, schedule.month_of_year, schedule.day_of_week]
    )


def get_crontab_schedule(spec: Crontab, time_zone: str) -> CrontabSchedule:
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=spec.minute, hour=spec.hour, day_of_month=spec.day_of_month,
        month_of_year=spec.month_of_year, day_of_week=spec.day_of_week, timezone=time_zone,
    )
    return schedule


def ensure_workflow(definition: WorkflowDefinition) -> Workflow:
    """The Workflow row, created from the definition when missing, with its PeriodicTask. Label and
    description follow the code; everything an administrator can edit is left alone. The schedule of
    an existing row is not touched here: a missing one is drift, put back (and audited) by
    :func:`workflows.schedule_repair.repair_schedules`, which ``migrate`` runs after this."""
    with transaction.atomic():
        workflow, created = Workflow.objects.get_or_create(
            pk=definition.id, defaults={"label": definition.label, "description": definition.description}
        )
        if not created and (workflow.label, workflow.description) != (definition.label, definition.description):
            workflow.label, workflow.description = definition.label, definition.description
            workflow.save(update_fields=["label", "description", "updated_at"])
        if created and definition.schedule is not None:
            # A row of that name kept from an earlier install is the administrator's: it is kept.
            workflow.periodic_task = PeriodicTask.objects.filter(name=definition.id).first()
            if workflow.periodic_task is None:
                workflow.periodic_task = create_periodic_task(definition, workflow, default_schedule(definition))
            workflow.save(update_fields=["periodic_task", "updated_at"])
            remember_schedule(workflow)
    return workflow


def default_schedule(definition: WorkflowDefinition) -> ScheduleSpec:
    assert definition.schedule is not None
    return ScheduleSpec(parse_crontab(definition.schedule.crontab), definition.schedule.timezone or settings.TIME_ZONE)


def remembered_schedule(workflow: Workflow) -> ScheduleSpec | None:
    """The schedule recorded in ``Workflow.last_schedule``; None when nothing (valid) was recorded."""
    recorded = workflow.last_schedule
    if not isinstance(recorded, dict):
        return None
    try:
        return ScheduleSpec(parse_crontab(recorded.get("crontab", "")), validate_time_zone(recorded.get("timezone", "")))
    except ValidationError:
        return None


def schedule_of(task: PeriodicTask | None) -> ScheduleSpec | None:
    """The crontab and time zone of a PeriodicTask; None without a crontab."""
    schedule = crontab_of(task)
    if schedule is None:
        return None
    return ScheduleSpec(
        Crontab(schedule.minute, schedule.hour, schedule.day_of_month, schedule.month_of_year, schedule.day_of_week),
        str(schedule.timezone),
    )


def remember_schedule(workflow: Workflow) -> None:
    """Record the PeriodicTask's current crontab in ``Workflow.last_schedule`` (when it has one and
    it changed): the schedule a repair recreates if the row is deleted later."""
    current = schedule_of(workflow.periodic_task)
    if current is None or workflow.last_schedule == current.as_json():
        return
    workflow.last_schedule = current.as_json()
    # A plain UPDATE of this one column: the engine's conditional UPDATEs of the lease are unaffected.
    Workflow.objects.filter(pk=workflow.pk).update(last_schedule=workflow.last_schedule)


def beat_message(definition: WorkflowDefinition, **task_kwargs: Any) -> dict[str, str]:
    """``{"task", "kwargs"}`` of a PeriodicTask that sends a scheduled run of the workflow: the
    workflow's own schedule, and every other row that sends one (a report share's, through
    :mod:`campaign.workflow_runs`). ``task_kwargs`` are arguments of ``workflows.tasks.make_task``'s task."""
    return {"task": definition.task_name, "kwargs": json.dumps({"trigger": Trigger.SCHEDULE.value, **task_kwargs})}


def create_periodic_task(definition: WorkflowDefinition, workflow: Workflow, schedule: ScheduleSpec) -> PeriodicTask:
    """The workflow's PeriodicTask (named after it), enabled when the workflow is started."""
    return PeriodicTask.objects.create(
        name=definition.id,
        **beat_message(definition),
        crontab=get_crontab_schedule(schedule.crontab, schedule.timezone),
        # No queue on the row: beat's message goes through the router, like every other
        # (workflows.definition.queue_of), so WORKFLOW_QUEUES moves scheduled runs too.
        expire_seconds=definition.expire_s,
        enabled=workflow.state == WorkflowState.STARTED,
        description=definition.label,
    )


def sync_workflows() -> list[Workflow]:
    """Called after every ``migrate``: create the workflows that are missing, overwrite nothing."""
    return [ensure_workflow(definition) for definition in all_definitions()]


# -- drift ---------------------------------------------------------------------------------------

def drift_of(workflow: Workflow, definition: WorkflowDefinition | None = None) -> list[str]:
    """What is wrong with the workflow's schedule, one phrase per problem; empty when nothing is.

    Only a workflow whose definition has a schedule can drift (on demand means no PeriodicTask).
    ``definition`` defaults to the registry's; a row whose module left the code never drifts.
    """
    if definition is None:
        try:
            definition = get_definition(workflow.pk)
        except UnknownWorkflow:
            return []
    if definition.schedule is None:
        return []
    task = workflow.periodic_task
    if task is None:
        return ["its PeriodicTask is missing"]
    problems = []
    if task.task != definition.task_name:
        problems.append(f"its PeriodicTask sends {task.task!r} instead of {definition.task_name!r}")
    if task.crontab_id is None:
        problems.append("its PeriodicTask has no crontab")
    started = workflow.state == WorkflowState.STARTED
    if started and not task.enabled:
        problems.append("its PeriodicTask is disabled although the workflow is started")
    elif not started and task.enabled:
        problems.append(f"its PeriodicTask is enabled although the workflow is {workflow.state}")
    return problems


def set_enabled(workflow: Workflow, enabled: bool, *, catch_up_since: datetime | None = None) -> None:
    """Enable or disable the schedule. Re-enabling never fires the slots missed meanwhile: the
    schedule counts from now, or from ``catch_up_since`` (one catch-up run at most)."""
    if workflow.periodic_task_id is None:
        return
    with transaction.atomic():
        task = PeriodicTask.objects.select_for_update().get(pk=workflow.periodic_task_id)  # fresh: beat writes it too
        task.enabled = enabled
        if enabled:
            task.last_run_at = catch_up_since or timezone.now()
        task.save()  # clears last_run_at when disabling, and tells beat the schedule changed


def set_crontab(workflow: Workflow, text: str, time_zone: str) -> CrontabSchedule:
    """Validate and apply an edited schedule (admin form)."""
    spec = parse_crontab(text)
    validate_time_zone(time_zone)
    if workflow.periodic_task_id is None:
        raise ValidationError(f"{workflow.pk} runs on demand and has no schedule.")
    with transaction.atomic():
        task = PeriodicTask.objects.select_for_update().get(pk=workflow.periodic_task_id)  # fresh: beat writes it too
        task.crontab = get_crontab_schedule(spec, time_zone)
        task.save()
        workflow.periodic_task = task
        remember_schedule(workflow)
    return task.crontab


def next_run_at(workflow: Workflow) -> datetime | None:
    task = workflow.periodic_task
    if task is None or not task.enabled or task.crontab_id is None:
        return None
    schedule = task.crontab.schedule
    now = timezone.now()
    last = task.last_run_at or now
    remaining = schedule.remaining_estimate(last.astimezone(schedule.tz))
    # Celery measures from its own "now", a few microseconds later than ours: round to the second.
    return max(now, now + remaining + timedelta(microseconds=500_000)).replace(microsecond=0)


def schedule_summary(workflow: Workflow) -> dict[str, str | None]:
    """``{"crontab", "timezone", "human"}`` as the CLI's JSON shows it (all None on demand)."""
    schedule = crontab_of(workflow.periodic_task)
    if schedule is None:
        return {"crontab": None, "timezone": None, "human": "On demand"}
    text = crontab_text(schedule)
    return {"crontab": text, "timezone": str(schedule.timezone), "human": describe(text)}
