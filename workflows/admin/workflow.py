"""The workflow admin's list and page: operate the workflows, edit their settings, read their state.

- Workflows come from code: the admin never adds or deletes one. The commands (actions on the
  list, buttons on the page for the commands that apply) are those of
  :mod:`workflows.admin.workflow_commands`.
- The list fits a 1024 px screen: id and label share a column, the consecutive errors show under
  the state badge when there are any, the last run's counters are clipped (full on hover).
- The settings form is generated from the definition (:mod:`workflows.forms`): one field per
  property and per activity, the schedule validated before it reaches beat. Without the change
  permission the page shows the settings read-only.
- The list costs a fixed number of queries whatever the number of workflows and runs: the schedule
  comes with a join, the last run with subqueries on the (workflow, -id) index.
- A schedule that drifted is flagged on the list and on the page, which offers its repair; a stored
  property value that does not validate is named above the form and marked in the read-only
  properties, since the engine fails every run on it until it is fixed here.
- The page's History shows the workflow's audit trail (commands, edits, the engine's own pauses)
  above the admin's record of form saves.
"""

from __future__ import annotations

from typing import Any

from cron_descriptor import FormatException, MissingFieldException, WrongArgumentException
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db.models import JSONField, OuterRef, QuerySet, Subquery
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from campaign.admin.base import ReadOnlyAdminMixin
from workflows import schedules
from workflows.admin.base import (
    EMPTY,
    RunDisplayMixin,
    WorkflowPagesMixin,
    clipped,
    format_counters,
    format_duration,
    format_time,
    run_url,
)
from workflows.admin.history import ROW_TABLE_TEMPLATE, audit_changes
from workflows.admin.workflow_commands import WorkflowCommandsMixin
from workflows.display import definition_of, run_status_badge, state_badge
from workflows.forms import (
    CRONTAB_FIELD,
    MODEL_FIELDS,
    TIMEZONE_FIELD,
    WorkflowForm,
    display_value,
    generated_field_names,
    workflow_form_class,
)
from workflows.models import ActivityMode, Workflow, WorkflowAudit, WorkflowRun
from workflows.properties import invalid_values

#: How many runs the workflow page shows; the run list (filtered by workflow) has the rest.
RECENT_RUNS = 10

#: How many audit trail entries a workflow's History shows; the audit trail (filtered by workflow)
#: has the rest.
HISTORY_AUDIT_ENTRIES = 50


def describe_schedule(workflow: Workflow) -> tuple[str, str]:
    """(words, crontab and time zone) of the workflow's schedule; ("On demand", "") without one."""
    schedule = schedules.crontab_of(workflow.periodic_task)
    if schedule is None:
        return "On demand", ""
    text = schedules.crontab_text(schedule)
    try:
        words = schedules.describe(text)
    except (FormatException, MissingFieldException, WrongArgumentException):
        words = text  # a crontab celery accepts but cron-descriptor cannot put in words
    return words, f"{text} ({schedule.timezone})"


def drift_warning(workflow: Workflow) -> SafeString | str:
    """A red warning naming what is wrong with the workflow's schedule; "" when nothing is."""
    problems = schedules.drift_of(workflow, definition_of(workflow))
    if not problems:
        return ""
    return format_html(
        '<span class="schedule-drift" style="color:#c62828;font-weight:bold" title="{}">⚠ Schedule drifted: {}</span>',
        f"Repair it with the workflow page's Repair schedule button, or: manage.py workflow repair {workflow.pk}",
        "; ".join(problems),
    )


def invalid_properties(workflow: Workflow) -> list[str]:
    """Why each stored property value is refused ("delay_minutes: must be at most …, got …"), as
    the engine refuses a run on it; [] when every stored value validates."""
    return list(invalid_values(definition_of(workflow).properties, workflow.properties or {}).values())


class RecentRunsInline(ReadOnlyAdminMixin, RunDisplayMixin, admin.TabularInline):
    """The workflow's last runs; the queryset is set per workflow by WorkflowAdmin.get_formset_kwargs
    (an inline's get_queryset does not know its parent object, and a sliced queryset cannot be
    filtered by the formset)."""

    model = WorkflowRun
    template = ROW_TABLE_TEMPLATE
    verbose_name = "run"
    verbose_name_plural = f"recent runs (the {RECENT_RUNS} most recent)"
    fields = ("run_link", "status_badge", "trigger_display", "created", "duration", "reason_short")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    @staticmethod
    def recent_runs(workflow: Workflow) -> QuerySet[WorkflowRun]:
        ids = list(WorkflowRun.objects.filter(workflow=workflow).order_by("-pk").values_list("pk", flat=True)[:RECENT_RUNS])
        return WorkflowRun.objects.filter(pk__in=ids).order_by("-pk")


@admin.register(Workflow)
class WorkflowAdmin(WorkflowPagesMixin, WorkflowCommandsMixin, admin.ModelAdmin):
    """The workflow list and page; the commands, their actions and buttons, come with
    :class:`~workflows.admin.workflow_commands.WorkflowCommandsMixin`."""

    list_display = ("workflow_display", "state_display", "schedule_display", "next_run", "last_run", "last_run_counters")
    list_display_links = ("workflow_display",)
    list_filter = ("state",)
    search_fields = ("id", "label")
    list_select_related = ("periodic_task__crontab",)
    inlines = (RecentRunsInline,)
    change_form_template = "admin/workflows/workflow/change_form.html"
    readonly_fields = (
        "label", "description", "state_display", "schedule_display", "next_run", "last_run", "consecutive_errors",
        "lease", "paused_at", "all_runs", "crontab_display", "properties_display", "activity_modes_display",
    )

    # -- permissions -----------------------------------------------------------------------------
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # workflows are declared in code

    def has_delete_permission(self, request: HttpRequest, obj: Workflow | None = None) -> bool:
        return False

    # -- list ------------------------------------------------------------------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet[Workflow]:
        last_runs = WorkflowRun.objects.filter(workflow=OuterRef("pk")).order_by("-pk")
        return super().get_queryset(request).annotate(
            last_run_id=Subquery(last_runs.values("pk")[:1]),
            last_run_status=Subquery(last_runs.values("status")[:1]),
            last_run_duration=Subquery(last_runs.values("duration_s")[:1]),
            last_run_counter_values=Subquery(last_runs.values("counters")[:1], output_field=JSONField()),
        )

    @admin.display(description="workflow", ordering="id")
    def workflow_display(self, workflow: Workflow) -> SafeString:
        return format_html('{}<span class="workflow-label">{}</span>', workflow.pk, workflow.label)

    @admin.display(description="state", ordering="state")
    def state_display(self, workflow: Workflow) -> SafeString:
        if not workflow.consecutive_errors:
            return state_badge(workflow.state)
        errors = workflow.consecutive_errors
        return format_html('{}<span class="consecutive-errors">{} consecutive error{}</span>',
                           state_badge(workflow.state), errors, "" if errors == 1 else "s")

    @admin.display(description="schedule")
    def schedule_display(self, workflow: Workflow) -> SafeString:
        warning = drift_warning(workflow)
        if warning and workflow.periodic_task is None:
            return warning  # "On demand" would be a lie
        words, detail = describe_schedule(workflow)
        schedule = format_html('<span title="{}">{}</span>', detail, words)
        return format_html("{}<br>{}", schedule, warning) if warning else schedule

    @admin.display(description="next run")
    def next_run(self, workflow: Workflow) -> str:
        # None when paused, stopped or on demand.
        return format_time(schedules.next_run_at(workflow))

    @admin.display(description="last run", ordering="last_run_id")
    def last_run(self, workflow: Workflow) -> SafeString | str:
        if workflow.last_run_id is None:
            return EMPTY
        duration = format_duration(workflow.last_run_duration)
        return format_html(
            '<a href="{}">{}</a>{}', run_url(workflow.last_run_id), run_status_badge(workflow.last_run_status),
            f" {duration}" if duration else "",
        )

    @admin.display(description="last counters")
    def last_run_counters(self, workflow: Workflow) -> SafeString | str:
        return clipped(format_counters(workflow.last_run_counter_values)) or EMPTY

    # -- change page: read-only parts ------------------------------------------------------------
    @admin.display(description="lease")
    def lease(self, workflow: Workflow) -> SafeString | str:
        if workflow.lease_holder is None:
            return "free"
        return format_html('held by <a href="{}">run #{}</a> until {}', run_url(workflow.lease_holder),
                           workflow.lease_holder, format_time(workflow.lease_until))

    @admin.display(description="history")
    def all_runs(self, workflow: Workflow) -> SafeString:
        query = urlencode({"workflow__id__exact": workflow.pk})
        return format_html(
            '<a href="{}?{}">All runs</a> · <a href="{}?{}">Journal</a> · <a href="{}?{}">Audit trail</a>',
            reverse("admin:workflows_workflowrun_changelist"), query,
            reverse("admin:workflows_workflowlog_changelist"), query,
            reverse("admin:workflows_workflowaudit_changelist"), query,
        )

    @admin.display(description="crontab")
    def crontab_display(self, workflow: Workflow) -> str:
        return describe_schedule(workflow)[1] or EMPTY

    @admin.display(description="properties")
    def properties_display(self, workflow: Workflow) -> SafeString | str:
        definition = definition_of(workflow)
        if not definition.properties:
            return EMPTY
        invalid = invalid_values(definition.properties, workflow.properties or {})
        return format_html_join(
            "", "<div><code>{}</code> = {}{}{}</div>",
            ((prop.name, display_value(workflow.properties.get(prop.name, prop.default)),
              "" if prop.name in workflow.properties else " (default)",
              format_html(' <strong class="invalid-property" style="color:#c62828">⚠ invalid: {}</strong>',
                          invalid[prop.name]) if prop.name in invalid else "")
             for prop in definition.properties),
        )

    @admin.display(description="activities")
    def activity_modes_display(self, workflow: Workflow) -> SafeString | str:
        definition = definition_of(workflow)
        if not definition.activities:
            return EMPTY
        return format_html_join(
            "", "<div><code>{}</code>: {}</div>",
            ((name, ActivityMode(workflow.activity_modes.get(name, ActivityMode.NORMAL)).label)
             for name in definition.activity_names),
        )

    # -- change page: the form -------------------------------------------------------------------
    def get_fieldsets(self, request: HttpRequest, obj: Workflow | None = None) -> list[tuple[str | None, dict[str, Any]]]:
        status = (None, {"fields": (
            "label", "description", ("state_display", "paused_at", "consecutive_errors"), "schedule_display", "next_run",
            "last_run", "lease", "all_runs",
        )})
        supervision = ("Supervision", {"fields": MODEL_FIELDS})
        if obj is None:
            return [status, supervision]
        if not self.has_change_permission(request, obj):
            return [status, ("Schedule", {"fields": ("crontab_display",)}),
                    ("Properties", {"fields": ("properties_display",)}),
                    ("Activities", {"fields": ("activity_modes_display",)}), supervision]
        definition = definition_of(obj)
        generated = generated_field_names(definition)
        fieldsets: list[tuple[str | None, dict[str, Any]]] = [status]
        if obj.periodic_task_id is not None:
            fieldsets.append(("Schedule", {"fields": (CRONTAB_FIELD, TIMEZONE_FIELD)}))
        if generated["properties"]:
            fieldsets.append(("Properties", {
                "fields": generated["properties"],
                "description": "Only values that differ from the default are stored; a run can override them "
                               "(workflow run ID --set key=value).",
            }))
        if generated["activities"]:
            fieldsets.append(("Activities", {
                "fields": generated["activities"],
                "description": "Suspended: a run halts before the activity (and continues from it once set back "
                               "to normal and resumed). Disabled: the activity is skipped.",
            }))
        fieldsets.append(supervision)
        return fieldsets

    def get_form(self, request: HttpRequest, obj: Workflow | None = None, change: bool = False,
                 **kwargs: Any) -> type[ModelForm]:
        if obj is not None and self.has_change_permission(request, obj):
            kwargs["form"] = workflow_form_class(definition_of(obj), scheduled=obj.periodic_task_id is not None)
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request: HttpRequest, obj: Workflow, form: WorkflowForm, change: bool) -> None:
        form.apply(user=request.user)

    def get_formset_kwargs(self, request: HttpRequest, obj: Workflow | None, inline: Any, prefix: str) -> dict[str, Any]:
        params = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, RecentRunsInline) and obj is not None:
            params["queryset"] = inline.recent_runs(obj)
        return params

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = dict(extra_context or {})
        workflow = self.get_object(request, unquote(object_id))
        if workflow is not None:
            extra_context["workflow_commands"] = self.command_buttons(request, workflow)
            extra_context["invalid_properties"] = invalid_properties(workflow)
            extra_context["schedule_drift"] = schedules.drift_of(workflow, definition_of(workflow))
            if extra_context["schedule_drift"] and self.has_operate_permission(request):
                extra_context["repair_schedule_url"] = reverse(
                    f"{self.admin_site.name}:workflows_workflow_repair_schedule", args=[object_id])
        return super().change_view(request, object_id, form_url, extra_context)

    # -- history ---------------------------------------------------------------------------------
    def history_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """Django's record of this page's form saves, under the workflow's audit trail: its commands
        (from here, the CLI or the shell), edits and the engine's own decisions, for those who may
        read the audit trail."""
        extra_context = dict(extra_context or {})
        if request.user.has_perm(f"{self.opts.app_label}.view_workflowaudit"):
            entries = WorkflowAudit.objects.filter(workflow_id=unquote(object_id))
            extra_context["audit_entries"] = [
                {"at": format_time(entry.at), "url": reverse(f"{self.admin_site.name}:workflows_workflowaudit_change",
                                                             args=[entry.pk]),
                 "actor": entry.actor, "action": entry.action, "changes": audit_changes(entry), "note": entry.note}
                for entry in entries.order_by("-pk")[:HISTORY_AUDIT_ENTRIES]
            ]
            extra_context["audit_count"] = entries.count()
            extra_context["audit_url"] = "{}?{}".format(
                reverse(f"{self.admin_site.name}:workflows_workflowaudit_changelist"),
                urlencode({"workflow__id__exact": unquote(object_id)}),
            )
        return super().history_view(request, object_id, extra_context)
