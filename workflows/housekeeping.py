"""The engine's own periodic job: the weekly report of workflows paused for more than 7 days.

A workflow paused and forgotten silently stops consolidating logs or purging data; once a week
each such workflow is written to its journal and its supervisors are emailed (once per week, not
at every check).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from campaign.celery import app
from workflows.models import LogLevel, Workflow, WorkflowLog, WorkflowState
from workflows.notifications import notify_supervisors

LONG_PAUSE = timedelta(days=7)
REPORT_TASK = "workflows.report_long_pauses"
REPORT_SCHEDULE_NAME = "engine: weekly report of long pauses"


def report_long_pauses(*, now: datetime | None = None) -> list[str]:
    """Journal and email each workflow paused for over 7 days and not reported this week."""
    now = now or timezone.now()
    due = Workflow.objects.filter(state=WorkflowState.PAUSED, paused_at__lte=now - LONG_PAUSE).filter(
        Q(paused_reported_at__isnull=True) | Q(paused_reported_at__lte=now - LONG_PAUSE)
    )
    reported = []
    for workflow in due:
        days = (now - workflow.paused_at).days
        message = f"{workflow.pk} has been paused for {days} days (since {workflow.paused_at:%Y-%m-%d %H:%M %Z}); its work is not being done."
        WorkflowLog.objects.create(workflow=workflow, level=LogLevel.WARNING, message=message)
        notify_supervisors(workflow, subject=f"Workflow {workflow.pk} paused for {days} days", body=message)
        Workflow.objects.filter(pk=workflow.pk).update(paused_reported_at=now)
        reported.append(workflow.pk)
    return reported


@app.task(name=REPORT_TASK, acks_late=True, ignore_result=True)
def report_long_pauses_task() -> list[str]:
    return report_long_pauses()


def ensure_housekeeping_schedule() -> PeriodicTask:
    """Mondays 08:00 in the instance time zone; created once, never overwritten."""
    existing = PeriodicTask.objects.filter(name=REPORT_SCHEDULE_NAME).first()
    if existing is not None:
        return existing
    from django.conf import settings

    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute="0", hour="8", day_of_month="*", month_of_year="*", day_of_week="1", timezone=settings.TIME_ZONE
    )
    return PeriodicTask.objects.create(
        name=REPORT_SCHEDULE_NAME, task=REPORT_TASK, crontab=schedule, kwargs=json.dumps({}),
        description="Reports workflows paused for more than 7 days to their supervisors.",
    )
