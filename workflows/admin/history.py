"""The workflows' history in the admin: runs with their activities and journal, the journal of all
runs, and the audit trail of the commands and edits.

The engine and the commands write all of it; here it is read-only (an edit would make the history
lie), with the project's read-only mixin. The journal is the biggest table of the engine: its list
never counts it in full. A run's activities and journal are tables without a caption per row (the
row is its columns); a long message or note is clipped in the lists, whole on the entry's page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import truncatechars
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from campaign.admin.base import ReadOnlyAdminMixin
from workflows.admin.base import (
    EMPTY,
    RunDisplayMixin,
    WorkflowPagesMixin,
    clipped,
    format_clock,
    format_counters,
    format_time,
    run_url,
    workflow_url,
)
from workflows.display import RUN_STATUS_COLOURS, badge
from workflows.forms import display_value
from workflows.models import ActivityRun, LogLevel, WorkflowAudit, WorkflowLog, WorkflowRun

LOG_LEVEL_COLOURS = {LogLevel.INFO: "#546e7a", LogLevel.WARNING: "#ef6c00", LogLevel.ERROR: "#c62828"}

#: The tabular inline without the caption Django puts above each row (the object's name, here
#: "WorkflowLog object (N)" or "name (status)", which repeats the columns).
ROW_TABLE_TEMPLATE = "admin/workflows/edit_inline/row_table.html"


# -- runs ----------------------------------------------------------------------------------------

class ActivityRunInline(ReadOnlyAdminMixin, admin.TabularInline):
    """The run's activities. They are part of the run: whoever may view the run sees them."""

    model = ActivityRun
    template = ROW_TABLE_TEMPLATE
    fields = ("position", "name", "status_badge", "started", "finished", "counters_display", "message")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("workflows.view_workflowrun")

    @admin.display(description="status")
    def status_badge(self, activity: ActivityRun) -> SafeString:
        return badge(activity.get_status_display(), RUN_STATUS_COLOURS.get(activity.status, "#757575"),
                     css_class=f"activity-status status-{activity.status}")

    @admin.display(description="started")
    def started(self, activity: ActivityRun) -> SafeString | str:
        return format_clock(activity.started_at)

    @admin.display(description="finished")
    def finished(self, activity: ActivityRun) -> SafeString | str:
        return format_clock(activity.finished_at)

    @admin.display(description="counters")
    def counters_display(self, activity: ActivityRun) -> str:
        return format_counters(activity.counters) or EMPTY


class JournalDisplayMixin:
    @admin.display(description="level", ordering="level")
    def level_badge(self, entry: WorkflowLog) -> SafeString:
        return badge(entry.get_level_display(), LOG_LEVEL_COLOURS.get(entry.level, "#757575"),
                     css_class=f"log-level level-{entry.level}")

    @admin.display(description="message")
    def message_display(self, entry: WorkflowLog) -> SafeString:
        # Errors carry a traceback: keep its lines and indentation.
        return format_html('<span class="journal-message">{}</span>', entry.message)


class JournalInline(ReadOnlyAdminMixin, JournalDisplayMixin, admin.TabularInline):
    model = WorkflowLog
    template = ROW_TABLE_TEMPLATE
    fk_name = "run"
    verbose_name = "journal entry"
    verbose_name_plural = "journal"
    fields = ("time", "level_badge", "activity", "message_display")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowLog]:
        return super().get_queryset(request).order_by("pk")  # in the order it happened

    @admin.display(description="time")
    def time(self, entry: WorkflowLog) -> SafeString | str:
        return format_clock(entry.logged_at)


@admin.register(WorkflowRun)
class WorkflowRunAdmin(WorkflowPagesMixin, ReadOnlyAdminMixin, RunDisplayMixin, admin.ModelAdmin):
    list_display = ("run_and_workflow", "status_badge", "trigger_display", "created", "duration", "reason_short")
    list_display_links = None
    list_filter = ("status", "trigger", "workflow")
    search_fields = ("=id", "workflow__id", "requested_by", "=celery_task_id")
    inlines = (ActivityRunInline, JournalInline)
    fieldsets = (
        (None, {"fields": (("workflow_link", "status_badge"), "reason", "halted_activity",
                           ("trigger", "requested_by", "attempt"), "slot", "celery_task_id")}),
        ("Timing", {"fields": (("created_at", "started_at"), ("finished_at", "duration"))}),
        ("Work", {"fields": ("counters_display", ("progress", "overrides_display"))}),
    )
    readonly_fields = ("workflow_link", "status_badge", "reason", "halted_activity", "trigger", "requested_by",
                       "attempt", "slot", "celery_task_id", "created_at", "started_at", "finished_at", "duration",
                       "counters_display", "progress", "overrides_display")

    @admin.display(description="workflow", ordering="workflow_id")
    def workflow_link(self, run: WorkflowRun) -> SafeString:
        return format_html('<a href="{}">{}</a>', workflow_url(run.workflow_id), run.workflow_id)

    @admin.display(description="run", ordering="id")
    def run_and_workflow(self, run: WorkflowRun) -> SafeString:
        return format_html('{} <span class="quiet-line">{}</span>', self.run_link(run), self.workflow_link(run))

    @admin.display(description="counters")
    def counters_display(self, run: WorkflowRun) -> str:
        return format_counters(run.counters) or EMPTY

    @admin.display(description="overrides")
    def overrides_display(self, run: WorkflowRun) -> str:
        return format_counters(run.overrides) or EMPTY

    @admin.display(description="progress")
    def progress(self, run: WorkflowRun) -> str:
        if run.progress_total:
            return f"{run.progress_done} of {run.progress_total} rows"
        return f"{run.progress_done} rows"


# -- journal and audit trail ---------------------------------------------------------------------

@admin.register(WorkflowLog)
class WorkflowLogAdmin(WorkflowPagesMixin, ReadOnlyAdminMixin, JournalDisplayMixin, admin.ModelAdmin):
    list_display = ("time", "where", "level_badge", "message_short")
    list_display_links = ("time",)
    list_filter = ("level", "workflow")
    search_fields = ("message", "activity", "workflow__id", "=run__id")
    show_full_result_count = False  # the journal is the biggest table here
    fields = ("logged_at", "workflow_link", "run_link", "activity", "level_badge", "message_display")
    readonly_fields = fields

    @admin.display(description="workflow", ordering="workflow_id")
    def workflow_link(self, entry: WorkflowLog) -> SafeString:
        return format_html('<a href="{}">{}</a>', workflow_url(entry.workflow_id), entry.workflow_id)

    @admin.display(description="run", ordering="run_id")
    def run_link(self, entry: WorkflowLog) -> SafeString | str:
        if entry.run_id is None:
            return EMPTY
        return format_html('<a href="{}">#{}</a>', run_url(entry.run_id), entry.run_id)

    @admin.display(description="time", ordering="logged_at")
    def time(self, entry: WorkflowLog) -> str:
        return format_time(entry.logged_at)

    @admin.display(description="workflow, run, activity", ordering="workflow_id")
    def where(self, entry: WorkflowLog) -> SafeString:
        activity = format_html('<span class="quiet-line">{}</span>', entry.activity) if entry.activity else ""
        run = format_html(" {}", self.run_link(entry)) if entry.run_id is not None else ""
        return format_html("{}{}{}", self.workflow_link(entry), run, activity)

    @admin.display(description="message")
    def message_short(self, entry: WorkflowLog) -> SafeString | str:
        return clipped(entry.message)


@admin.register(WorkflowAudit)
class WorkflowAuditAdmin(WorkflowPagesMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("at", "workflow_link", "actor", "action", "changes_display", "note_short")
    list_filter = ("action", "workflow")
    search_fields = ("actor", "workflow__id", "note")
    fields = ("at", "workflow_link", "actor", "user", "action", "changes_display", "note")
    readonly_fields = fields

    @admin.display(description="workflow", ordering="workflow_id")
    def workflow_link(self, entry: WorkflowAudit) -> SafeString:
        return format_html('<a href="{}">{}</a>', workflow_url(entry.workflow_id), entry.workflow_id)

    @admin.display(description="changes")
    def changes_display(self, entry: WorkflowAudit) -> SafeString | str:
        return audit_changes(entry)

    @admin.display(description="note")
    def note_short(self, entry: WorkflowAudit) -> SafeString | str:
        return clipped(entry.note)


def audit_changes(entry: WorkflowAudit) -> SafeString | str:
    """Each changed field with its value before and after (long values shortened)."""
    if not entry.changes:
        return EMPTY
    return format_html_join(
        "", '<div class="audit-change"><code>{}</code>: {} → {}</div>',
        ((field, _audit_value(values[0]), _audit_value(values[1])) for field, values in entry.changes.items()
         if isinstance(values, list) and len(values) == 2),
    )


def _audit_value(value: Any) -> str:
    if value is None:
        return EMPTY
    return truncatechars(display_value(value), 80)
