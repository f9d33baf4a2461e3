"""What the workflow admin's pages share: how they write durations, times, counters and long
values, their links to a workflow and to a run, the run columns of the workflow page and of the run
list, and the page layout that fits a 1024 to 1920 px screen.

The layout (:class:`WorkflowPagesMixin`, with ``workflows/static/workflows/admin.css``): these pages
leave out the admin's navigation sidebar (the breadcrumbs and the index lead everywhere it does);
a long value is clipped to two lines in its column (:func:`clipped`), the full text on hover and
on the row's own page; field labels never break inside a word.

The badges and colours, shared with the dashboard too, are in :mod:`workflows.display`; the
read-only mixin is the project's one, :class:`campaign.admin.base.ReadOnlyAdminMixin`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import display_for_value, quote
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
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


def format_clock(moment: datetime | None) -> SafeString | str:
    """The time of day to the second (``08:05:56``), the full date-time on hover: for the rows of
    one run, which happen within minutes of each other."""
    if moment is None:
        return EMPTY
    return format_html('<span title="{}">{}</span>', format_time(moment), timezone.localtime(moment).strftime("%H:%M:%S"))


def format_counters(counters: dict[str, Any] | None) -> str:
    return ", ".join(f"{key}={value}" for key, value in (counters or {}).items())


def clipped(text: str) -> SafeString | str:
    """A long value as a list column shows it: at most two lines, the rest behind an ellipsis, the
    full text on hover (and on the row's own page). "" stays ""."""
    if not text:
        return ""
    return format_html('<span class="clipped" title="{}">{}</span>', text, text)


def run_url(run_id: int) -> str:
    return reverse("admin:workflows_workflowrun_change", args=[run_id])


def workflow_url(workflow_id: str) -> str:
    return reverse("admin:workflows_workflow_change", args=[quote(workflow_id)])


class WorkflowPagesMixin:
    """The layout of the workflow admin's pages (list, change or view page, history): their
    stylesheet, and no navigation sidebar, whose 280 px the columns need at 1024 px."""

    class Media:
        css = {"all": ["workflows/admin.css"]}

    @staticmethod
    def page_context(extra_context: dict[str, Any] | None) -> dict[str, Any]:
        return {"is_nav_sidebar_enabled": False, **(extra_context or {})}

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, self.page_context(extra_context))

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changeform_view(request, object_id, form_url, self.page_context(extra_context))

    def history_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().history_view(request, object_id, self.page_context(extra_context))


class RunDisplayMixin:
    @admin.display(description="run", ordering="id")
    def run_link(self, run: WorkflowRun) -> SafeString:
        return format_html('<a href="{}">#{}</a>', run_url(run.pk), run.pk)

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: WorkflowRun) -> SafeString:
        return run_status_badge(run.status)

    @admin.display(description="trigger", ordering="trigger")
    def trigger_display(self, run: WorkflowRun) -> SafeString:
        """The trigger, and under it who asked (for a run not sent by the schedule)."""
        if not run.requested_by:
            return format_html("{}", run.get_trigger_display())
        return format_html('{}<span class="quiet-line">by {}</span>', run.get_trigger_display(), run.requested_by)

    @admin.display(description="created", ordering="created_at")
    def created(self, run: WorkflowRun) -> str:
        return format_time(run.created_at)

    @admin.display(description="duration", ordering="duration_s")
    def duration(self, run: WorkflowRun) -> str:
        return format_duration(run.duration_s) or EMPTY

    @admin.display(description="reason")
    def reason_short(self, run: WorkflowRun) -> SafeString | str:
        return clipped(run.reason)
