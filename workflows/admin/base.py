"""What the workflow admin's pages share: how they write durations, times and counters, their links
to a workflow and to a run, and the run columns of the workflow page and of the run list.

The badges and colours, shared with the dashboard too, are in :mod:`workflows.display`; the
read-only mixin is the project's one, :class:`campaign.admin.base.ReadOnlyAdminMixin`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import display_for_value, quote
from django.template.defaultfilters import truncatechars
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from workflows.display import run_status_badge
from workflows.models import WorkflowRun

EMPTY = "—"


def format_duration(seconds: float | None) -> str:
    """``0.4 s``, ``12.3 s``, ``4 min 12 s``, ``2 h 05 min``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def format_time(moment: datetime | None) -> str:
    """In the current time zone and locale, as the admin shows its own date-time fields."""
    return display_for_value(moment, EMPTY)


def format_counters(counters: dict[str, Any] | None) -> str:
    return ", ".join(f"{key}={value}" for key, value in (counters or {}).items())


def run_url(run_id: int) -> str:
    return reverse("admin:workflows_workflowrun_change", args=[run_id])


def workflow_url(workflow_id: str) -> str:
    return reverse("admin:workflows_workflow_change", args=[quote(workflow_id)])


class RunDisplayMixin:
    @admin.display(description="run", ordering="id")
    def run_link(self, run: WorkflowRun) -> SafeString:
        return format_html('<a href="{}">#{}</a>', run_url(run.pk), run.pk)

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: WorkflowRun) -> SafeString:
        return run_status_badge(run.status)

    @admin.display(description="duration", ordering="duration_s")
    def duration(self, run: WorkflowRun) -> str:
        return format_duration(run.duration_s) or EMPTY

    @admin.display(description="reason")
    def reason_short(self, run: WorkflowRun) -> str:
        return truncatechars(run.reason, 120)
