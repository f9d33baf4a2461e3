"""The "Technical workflows" dashboard (``/admin/workflows/dashboard/``): every workflow with its
state, schedule (with a warning when it drifted), next and last run, and a heat map of its runs over
the last days, one cell per hour coloured by the most serious status of the runs in it (like the
platform's workflow heat map).

The page costs a fixed number of queries whatever the number of runs: one aggregate over the runs
of the period (grouped by workflow, hour and status) and one for the workflows with their last run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max
from django.db.models.functions import TruncHour
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from workflows import beat_leader, schedules
from workflows.display import RUN_STATUS_COLOURS, definition_of, run_status_badge, state_badge
from workflows.models import RunStatus, Workflow, WorkflowRun
from workflows.serializers import with_last_runs

HEAT_MAP_DAYS = 7

#: When an hour holds runs of several statuses, the cell shows the most serious one.
SEVERITY = [RunStatus.FAILED, RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.STOPPED, RunStatus.QUEUED,
            RunStatus.SUCCEEDED, RunStatus.SKIPPED]


@dataclass
class Cell:
    hour: datetime
    counts: dict[str, int] = field(default_factory=dict)
    last_run_id: int | None = None

    @property
    def status(self) -> str | None:
        return next((status for status in SEVERITY if self.counts.get(status)), None)

    @property
    def colour(self) -> str:
        return RUN_STATUS_COLOURS.get(self.status, "#eceff1") if self.status else "#eceff1"

    @property
    def title(self) -> str:
        when = timezone.localtime(self.hour).strftime("%a %d %b %H:00")
        if not self.counts:
            return f"{when}: no run"
        detail = ", ".join(f"{count} {status}"
                           for status, count in sorted(self.counts.items(), key=lambda i: SEVERITY.index(i[0])))
        return f"{when}: {detail}"

    @property
    def url(self) -> str:
        return reverse("admin:workflows_workflowrun_change", args=[self.last_run_id]) if self.last_run_id else ""


@dataclass
class HeatMap:
    hours: list[datetime]
    cells: dict[str, dict[datetime, Cell]]

    def row(self, workflow_id: str) -> list[Cell]:
        """One cell per hour, oldest first (empty hours included)."""
        by_hour = self.cells.get(workflow_id, {})
        return [by_hour.get(hour) or Cell(hour=hour) for hour in self.hours]


def heat_map(*, now: datetime, days: int = HEAT_MAP_DAYS) -> HeatMap:
    """The runs created in the last ``days`` days, by workflow and hour (instance time zone)."""
    first_hour = timezone.localtime(now).replace(minute=0, second=0, microsecond=0) - timedelta(hours=days * 24 - 1)
    hours = [first_hour + timedelta(hours=offset) for offset in range(days * 24)]
    rows = (
        WorkflowRun.objects.filter(created_at__gte=first_hour)
        .annotate(hour=TruncHour("created_at", tzinfo=timezone.get_current_timezone()))
        .values("workflow_id", "hour", "status")
        .annotate(runs=Count("id"), last_run=Max("id"))
    )
    cells: dict[str, dict[datetime, Cell]] = {}
    for row in rows:
        by_hour = cells.setdefault(row["workflow_id"], {})
        cell = by_hour.setdefault(row["hour"], Cell(hour=row["hour"]))
        cell.counts[row["status"]] = row["runs"]
        cell.last_run_id = max(cell.last_run_id or 0, row["last_run"])
    return HeatMap(hours=hours, cells=cells)


@staff_member_required
def dashboard_view(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("workflows.view_workflow"):
        raise PermissionDenied
    now = timezone.now()
    runs = heat_map(now=now)
    workflows = []
    for workflow, last_run in with_last_runs(Workflow.objects.all()):
        workflows.append({
            "workflow": workflow,
            "url": reverse("admin:workflows_workflow_change", args=[workflow.pk]),
            "state": state_badge(workflow.state),
            "schedule": schedules.schedule_summary(workflow)["human"],
            "schedule_drift": schedules.drift_of(workflow, definition_of(workflow)),
            "next_run_at": schedules.next_run_at(workflow),
            "last_run": last_run,
            "last_run_badge": run_status_badge(last_run.status) if last_run else None,
            "last_run_url": reverse("admin:workflows_workflowrun_change", args=[last_run.pk]) if last_run else "",
            "journal_url": reverse("admin:workflows_workflowlog_changelist") + f"?workflow__id__exact={workflow.pk}",
            "cells": runs.row(workflow.pk),
        })
    context = {
        **admin.site.each_context(request),
        "title": "Technical workflows",
        "is_nav_sidebar_enabled": False,  # the heat map needs the width
        "workflows": workflows,
        "days": HEAT_MAP_DAYS,
        "legend": [(RunStatus(status).label, RUN_STATUS_COLOURS[status]) for status in SEVERITY],
        "now": now,
        "beats": beat_leader.cluster(),
    }
    return TemplateResponse(request, "admin/workflows/dashboard.html", context)
