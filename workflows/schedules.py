"""Workflow schedules, kept as django-celery-beat PeriodicTasks.

The definition gives a default crontab; the PeriodicTask is created from it when missing and
never overwritten afterwards, so an administrator's edit survives ``migrate``, deploys and beat
restarts. The beat process only ever reads these rows (there is no CELERY_BEAT_SCHEDULE).
"""

from __future__ import annotations

import json
import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from celery.schedules import crontab as celery_crontab
from cron_descriptor import Options, get_description
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from workflows.definition import WorkflowDefinition, all_definitions
from workflows.models import Workflow, WorkflowState

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
    """The Workflow row and its PeriodicTask, created from the definition when missing. Label and
    description follow the code; everything an administrator can edit is left alone."""
    with transaction.atomic():
        workflow, created = Workflow.objects.get_or_create(
            pk=definition.id, defaults={"label": definition.label, "description": definition.description}
        )
        if not created and (workflow.label, workflow.description) != (definition.label, definition.description):
            workflow.label, workflow.description = definition.label, definition.description
            workflow.save(update_fields=["label", "description", "updated_at"])
        if definition.schedule is not None and workflow.periodic_task_id is None:
            workflow.periodic_task = _create_periodic_task(definition, workflow)
            workflow.save(update_fields=["periodic_task", "updated_at"])
    return workflow


def _create_periodic_task(definition: WorkflowDefinition, workflow: Workflow) -> PeriodicTask:
    assert definition.schedule is not None
    existing = PeriodicTask.objects.filter(name=definition.id).first()
    if existing is not None:  # kept from an earlier install: it is the administrator's
        return existing
    spec = parse_crontab(definition.schedule.crontab)
    time_zone = definition.schedule.timezone or settings.TIME_ZONE
    return PeriodicTask.objects.create(
        name=definition.id,
        task=definition.task_name,
        crontab=get_crontab_schedule(spec, time_zone),
        kwargs=json.dumps({"trigger": "schedule"}),
        queue=definition.queue,
        expire_seconds=definition.expire_s,
        enabled=workflow.state == WorkflowState.STARTED,
        description=definition.label,
    )


def sync_workflows() -> list[Workflow]:
    """Called after every ``migrate``: create what is missing, overwrite nothing."""
    return [ensure_workflow(definition) for definition in all_definitions()]


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
