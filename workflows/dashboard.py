"""The "Technical workflows" dashboard (``/admin/workflows/dashboard/``): the page an operator reads
at a glance. A warning above all when schedules drifted, then one line per workflow: its state, its
schedule (with the engine's drift warning), the last run that did work and, apart, a newer skip (a
skip says why nothing ran, not what the last work gave), and its week as a day × hour grid
(:mod:`workflows.heat_map`).

The page costs a fixed number of queries whatever the number of workflows and runs: one for the
workflows with the ids of their last run and last skip, one for those runs, the heat map's two, and
the beat election's two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Subquery
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString

from workflows import beat_leader, schedules
from workflows.display import RUN_STATUS_COLOURS, definition_of, run_status_badge, state_badge
from workflows.heat_map import (
    FAILURE_MARK,
    HEAT_MAP_DAYS,
    SEVERITY,
    Links,
    format_duration,
    grid_html,
    heat_map,
    run_url,
)
from workflows.models import RunStatus, Workflow, WorkflowRun


@dataclass(frozen=True)
class LastRuns:
    """A workflow's last run that did work (any status but skipped: a queued or running run is the
    work in progress) and its last skip, when that is newer: a skip says why nothing ran, not what
    the last work gave."""

    work: WorkflowRun | None
    skip: WorkflowRun | None


def workflows_with_last_runs() -> list[tuple[Workflow, LastRuns]]:
    """Every workflow with its :class:`LastRuns`, in two queries whatever their number."""
    runs = WorkflowRun.objects.filter(workflow=OuterRef("pk")).order_by("-pk").values("pk")
    rows = list(
        Workflow.objects.select_related("periodic_task__crontab")
        .annotate(last_work_pk=Subquery(runs.exclude(status=RunStatus.SKIPPED)[:1]),
                  last_skip_pk=Subquery(runs.filter(status=RunStatus.SKIPPED)[:1]))
    )
    wanted = {pk for row in rows for pk in (row.last_work_pk, row.last_skip_pk) if pk is not None}
    by_pk = WorkflowRun.objects.defer("counters", "overrides").in_bulk(wanted)
    result = []
    for row in rows:
        work, skip = by_pk.get(row.last_work_pk), by_pk.get(row.last_skip_pk)
        if skip is not None and work is not None and skip.pk < work.pk:
            skip = None  # older than the last work: history, not news
        result.append((row, LastRuns(work=work, skip=skip)))
    return result


@dataclass
class DashboardRow:
    workflow: Workflow
    url: str
    journal_url: str
    state: SafeString
    schedule: str
    schedule_drift: list[str]
    next_run_at: datetime | None
    last: LastRuns
    last_run_badge: SafeString | None
    heat: SafeString
    totals: dict[str, int]

    @property
    def last_run_url(self) -> str:
        return run_url(self.last.work.pk) if self.last.work else ""

    @property
    def last_skip_url(self) -> str:
        return run_url(self.last.skip.pk) if self.last.skip else ""

    @property
    def last_run_duration(self) -> str:
        return format_duration(self.last.work.duration_s) if self.last.work else "—"

    @property
    def runs_in_period(self) -> int:
        return sum(self.totals.values())

    @property
    def failed_in_period(self) -> int:
        return self.totals.get(RunStatus.FAILED, 0)

    @property
    def skipped_in_period(self) -> int:
        return self.totals.get(RunStatus.SKIPPED, 0)


def dashboard_rows(*, now: datetime) -> list[DashboardRow]:
    runs = heat_map(now=now)
    links = Links.reverse()
    rows = []
    for workflow, last in workflows_with_last_runs():
        rows.append(DashboardRow(
            workflow=workflow,
            url=reverse("admin:workflows_workflow_change", args=[workflow.pk]),
            journal_url=reverse("admin:workflows_workflowlog_changelist") + f"?workflow__id__exact={workflow.pk}",
            state=state_badge(workflow.state),
            schedule=schedules.schedule_summary(workflow)["human"],
            schedule_drift=schedules.drift_of(workflow, definition_of(workflow)),
            next_run_at=schedules.next_run_at(workflow),
            last=last,
            last_run_badge=run_status_badge(last.work.status) if last.work else None,
            heat=grid_html(runs.grid(workflow.pk), links=links),
            totals=runs.totals(workflow.pk),
        ))
    return rows


@staff_member_required
def dashboard_view(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("workflows.view_workflow"):
        raise PermissionDenied
    now = timezone.now()
    rows = dashboard_rows(now=now)
    context = {
        **admin.site.each_context(request),
        "title": "Technical workflows",
        "is_nav_sidebar_enabled": False,  # the heat map needs the width
        "workflows": rows,
        "drifted": [row for row in rows if row.schedule_drift],
        "days": HEAT_MAP_DAYS,
        "hour_labels": [f"{hour:02d}" for hour in range(0, 24, 3)],
        "legend": [(status, RunStatus(status).label, RUN_STATUS_COLOURS[status]) for status in SEVERITY],
        "failure_mark": FAILURE_MARK,
        "drawn_at": timezone.localtime(now),
        "time_zone": timezone.get_current_timezone_name(),
        "beats": beat_leader.cluster(),
    }
    return TemplateResponse(request, "admin/workflows/dashboard.html", context)
