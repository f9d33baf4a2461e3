"""The engine's own periodic jobs, as plain services (their Celery tasks are thin wrappers in
:mod:`workflows.tasks`, so a worker registers them):

- every Monday, the report of workflows paused for more than 7 days. A workflow paused and
  forgotten silently stops consolidating logs or purging data; each such workflow is written to its
  journal and its supervisors are emailed (once per week, not at every check);
- every minute, the reaping of the runs whose worker died (:func:`workflows.reaper.reap_abandoned_runs`).

Their PeriodicTasks are created after ``migrate`` when missing and never overwritten, like the
workflows' own schedules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from workflows.models import LogLevel, Workflow, WorkflowLog, WorkflowState
from workflows.notifications import notify_supervisors

LONG_PAUSE = timedelta(days=7)

#: The names of their Celery tasks (defined in workflows.tasks): stable, beat's rows send them.
REPORT_LONG_PAUSES_TASK = "workflows.report_long_pauses"
REAP_ABANDONED_RUNS_TASK = "workflows.reap_abandoned_runs"


@dataclass(frozen=True)
class HousekeepingSchedule:
    name: str  # the PeriodicTask's name
    task: str
    crontab: str  # minute hour day-of-month month day-of-week, in settings.TIME_ZONE
    description: str
    #: Drop a message not taken this long after it was sent (seconds); None keeps it.
    expire_seconds: int | None = None


HOUSEKEEPING_SCHEDULES = (
    HousekeepingSchedule(
        name="engine: weekly report of long pauses", task=REPORT_LONG_PAUSES_TASK, crontab="0 8 * * 1",
        description="Reports workflows paused for more than 7 days to their supervisors.",
    ),
    HousekeepingSchedule(
        name="engine: reap abandoned runs", task=REAP_ABANDONED_RUNS_TASK, crontab="* * * * *",
        description="Reaps the runs whose worker died (workflows.reaper).",
        # The next minute's message does the same work: a backlog after an outage is useless.
        expire_seconds=60,
    ),
)


def report_long_pauses(*, now: datetime | None = None) -> list[str]:
    """Journal and email each workflow paused for over 7 days and not reported this week."""
    now = now or timezone.now()
    due = Workflow.objects.filter(state=WorkflowState.PAUSED, paused_at__lte=now - LONG_PAUSE).filter(
        Q(paused_reported_at__isnull=True) | Q(paused_reported_at__lte=now - LONG_PAUSE)
    )
    reported = []
    for workflow in due:
        days = (now - workflow.paused_at).days
        message = (f"{workflow.pk} has been paused for {days} days (since {workflow.paused_at:%Y-%m-%d %H:%M %Z}); "
                   "its work is not being done.")
        WorkflowLog.objects.create(workflow=workflow, level=LogLevel.WARNING, message=message)
        notify_supervisors(workflow, subject=f"Workflow {workflow.pk} paused for {days} days", body=message)
        Workflow.objects.filter(pk=workflow.pk).update(paused_reported_at=now)
        reported.append(workflow.pk)
    return reported


def ensure_housekeeping_schedules() -> list[PeriodicTask]:
    """The PeriodicTask of each housekeeping job, created when missing, never overwritten (an
    administrator may change or disable it)."""
    return [_ensure_schedule(schedule) for schedule in HOUSEKEEPING_SCHEDULES]


def _ensure_schedule(schedule: HousekeepingSchedule) -> PeriodicTask:
    existing = PeriodicTask.objects.filter(name=schedule.name).first()
    if existing is not None:
        return existing
    minute, hour, day_of_month, month_of_year, day_of_week = schedule.crontab.split()
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year, day_of_week=day_of_week,
        timezone=settings.TIME_ZONE,
    )
    return PeriodicTask.objects.create(
        name=schedule.name, task=schedule.task, crontab=crontab, kwargs=json.dumps({}),
        expire_seconds=schedule.expire_seconds, description=schedule.description,
    )
