"""The "Technical workflows" admin: operate the workflows, edit their settings, read their history.

- Workflows come from code: the admin never adds or deletes one. It gives the commands of
  :mod:`workflows.commands` (actions on the list, buttons on the workflow page), so a command means
  the same here as in the CLI and the shell, and is audited with the user who gave it. Commands need
  the ``workflows.operate_workflow`` permission, edits ``change_workflow``, reading ``view_*``.
- The settings form is generated from the definition (:mod:`workflows.forms`): one field per
  property and per activity, the schedule validated before it reaches beat.
- Runs, activity runs, the journal and the audit trail are written by the engine and the commands;
  here they are read-only (an edit would make the history lie).
- The workflow list costs a fixed number of queries whatever the number of workflows and runs: the
  schedule comes with a join, the last run with subqueries on the (workflow, -id) index.
- A schedule that drifted (PeriodicTask deleted, disabled while started, sending another task) is
  flagged on the list and on the workflow page, which offers the repair of
  :mod:`workflows.schedule_repair`. A workflow's own PeriodicTask is read-only in
  django-celery-beat's admin, which links to the workflow's page: schedule edits go through the
  workflow's form, validated and audited.
- A stored property value that does not validate (saved before its range existed, or written by
  hand) is named above the workflow's form and marked in its read-only properties: the engine fails
  every run on it (without pausing the workflow) until it is fixed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cron_descriptor import FormatException, MissingFieldException, WrongArgumentException
from django.contrib import admin, messages
from django.contrib.admin.utils import display_for_value, quote, unquote
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import JSONField, OuterRef, QuerySet, Subquery
from django.forms import ModelForm
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.defaultfilters import truncatechars
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask
from kombu.exceptions import OperationalError

from workflows import commands, schedule_repair, schedules
from workflows.commands import CommandRefused
from workflows.dashboard import dashboard_view
from workflows.definition import UnknownWorkflow
from workflows.display import (
    RUN_STATUS_COLOURS,
    badge,
    definition_of,
    run_status_badge,
    state_badge,
)
from workflows.forms import (
    CRONTAB_FIELD,
    MODEL_FIELDS,
    TIMEZONE_FIELD,
    WorkflowForm,
    display_value,
    generated_field_names,
    workflow_form_class,
)
from workflows.models import (
    ActivityMode,
    ActivityRun,
    LogLevel,
    Trigger,
    Workflow,
    WorkflowAudit,
    WorkflowLog,
    WorkflowRun,
)
from workflows.properties import invalid_values

#: How many runs the workflow page shows; the run list (filtered by workflow) has the rest.
RECENT_RUNS = 10

LOG_LEVEL_COLOURS = {LogLevel.INFO: "#546e7a", LogLevel.WARNING: "#ef6c00", LogLevel.ERROR: "#c62828"}

EMPTY = "—"


# -- display helpers -----------------------------------------------------------------------------

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


def run_url(run_id: int) -> str:
    return reverse("admin:workflows_workflowrun_change", args=[run_id])


def workflow_url(workflow_id: str) -> str:
    return reverse("admin:workflows_workflow_change", args=[quote(workflow_id)])


# -- commands ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdminCommand:
    name: str  # the action's and the button URL's name
    label: str  # the button
    done: str  # the success message's verb
    call: Callable[[str, AbstractBaseUser], Workflow | WorkflowRun]


COMMANDS: dict[str, AdminCommand] = {
    command.name: command
    for command in (
        AdminCommand("start", "Start", "Started",
                     lambda workflow_id, user: commands.start(workflow_id, user=user)),
        AdminCommand("pause", "Pause", "Paused", lambda workflow_id, user: commands.pause(workflow_id, user=user)),
        AdminCommand("resume", "Resume", "Resumed",
                     lambda workflow_id, user: commands.resume(workflow_id, user=user)),
        AdminCommand("stop", "Stop", "Stopped", lambda workflow_id, user: commands.stop(workflow_id, user=user)),
        AdminCommand("restart", "Restart", "Restarted",
                     lambda workflow_id, user: commands.restart(workflow_id, user=user, trigger=Trigger.ADMIN)),
        AdminCommand("run_now", "Run now", "Queued a run of",
                     lambda workflow_id, user: commands.run_now(workflow_id, user=user, trigger=Trigger.ADMIN)),
    )
}


# -- read-only building blocks -------------------------------------------------------------------

class ReadOnlyAdminMixin:
    """History written by the engine: viewable with the view permission, never added, edited or
    deleted from the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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


class RecentRunsInline(ReadOnlyAdminMixin, RunDisplayMixin, admin.TabularInline):
    """The workflow's last runs; the queryset is set per workflow by WorkflowAdmin.get_formset_kwargs
    (an inline's get_queryset does not know its parent object, and a sliced queryset cannot be
    filtered by the formset)."""

    model = WorkflowRun
    verbose_name = "run"
    verbose_name_plural = f"recent runs (the {RECENT_RUNS} most recent)"
    fields = ("run_link", "status_badge", "trigger", "requested_by", "created_at", "duration", "reason_short")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    @staticmethod
    def recent_runs(workflow: Workflow) -> QuerySet[WorkflowRun]:
        ids = list(WorkflowRun.objects.filter(workflow=workflow).order_by("-pk").values_list("pk", flat=True)[:RECENT_RUNS])
        return WorkflowRun.objects.filter(pk__in=ids).order_by("-pk")


# -- workflows -----------------------------------------------------------------------------------

@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = (
        "id", "label", "state_display", "schedule_display", "next_run", "last_run", "last_run_counters",
        "consecutive_errors",
    )
    list_display_links = ("id", "label")
    list_filter = ("state",)
    search_fields = ("id", "label")
    list_select_related = ("periodic_task__crontab",)
    actions = ("start_workflows", "pause_workflows", "resume_workflows", "stop_workflows", "restart_workflows",
               "run_workflows_now")
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

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.operate_workflow")

    # -- list ------------------------------------------------------------------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet[Workflow]:
        last_runs = WorkflowRun.objects.filter(workflow=OuterRef("pk")).order_by("-pk")
        return super().get_queryset(request).annotate(
            last_run_id=Subquery(last_runs.values("pk")[:1]),
            last_run_status=Subquery(last_runs.values("status")[:1]),
            last_run_duration=Subquery(last_runs.values("duration_s")[:1]),
            last_run_counter_values=Subquery(last_runs.values("counters")[:1], output_field=JSONField()),
        )

    @admin.display(description="state", ordering="state")
    def state_display(self, workflow: Workflow) -> SafeString:
        return state_badge(workflow.state)

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
    def last_run_counters(self, workflow: Workflow) -> str:
        return truncatechars(format_counters(workflow.last_run_counter_values), 80) or EMPTY

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
        if self.has_operate_permission(request):
            extra_context["workflow_commands"] = [
                {"name": command.name, "label": command.label,
                 "url": reverse(f"{self.admin_site.name}:workflows_workflow_command", args=[object_id, command.name])}
                for command in COMMANDS.values()
            ]
        workflow = self.get_object(request, unquote(object_id))
        if workflow is not None:
            extra_context["invalid_properties"] = invalid_properties(workflow)
            extra_context["schedule_drift"] = schedules.drift_of(workflow, definition_of(workflow))
            if extra_context["schedule_drift"] and self.has_operate_permission(request):
                extra_context["repair_schedule_url"] = reverse(
                    f"{self.admin_site.name}:workflows_workflow_repair_schedule", args=[object_id])
        return super().change_view(request, object_id, form_url, extra_context)

    # -- commands: actions and buttons -----------------------------------------------------------
    def perform(self, request: HttpRequest, command: AdminCommand, workflows: list[Workflow]) -> None:
        """Give ``command`` to each workflow; report the successes in one message and each refusal
        with its reason."""
        done: list[str] = []
        runs: list[WorkflowRun] = []
        for workflow in workflows:
            try:
                result = command.call(workflow.pk, request.user)
            except (CommandRefused, UnknownWorkflow) as refusal:
                self.message_user(request, f"{command.label} refused for {workflow.pk}: {refusal}", messages.WARNING)
                continue
            except OperationalError as error:  # the run is recorded, its message could not be sent
                self.message_user(request, f"{command.label} {workflow.pk}: the broker is unreachable ({error}); "
                                           "the run is marked failed.", messages.ERROR)
                continue
            done.append(workflow.pk)
            if isinstance(result, WorkflowRun):
                runs.append(result)
        if not done:
            return
        noun = "workflow" if len(done) == 1 else "workflows"
        message = format_html("{} {} {}: {}.", command.done, len(done), noun, ", ".join(done))
        if runs:
            message = format_html("{} Runs: {}.", message, format_html_join(
                ", ", '<a href="{}">{} run #{}</a>', ((run_url(run.pk), run.workflow_id, run.pk) for run in runs),
            ))
        self.message_user(request, message, messages.SUCCESS)

    def _action(self, request: HttpRequest, queryset: QuerySet[Workflow], name: str) -> None:
        self.perform(request, COMMANDS[name], list(queryset.order_by("pk")))

    @admin.action(description="Start selected workflows", permissions=["operate"])
    def start_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        self._action(request, queryset, "start")

    @admin.action(description="Pause selected workflows", permissions=["operate"])
    def pause_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        self._action(request, queryset, "pause")

    @admin.action(description="Resume selected paused workflows", permissions=["operate"])
    def resume_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        self._action(request, queryset, "resume")

    @admin.action(description="Stop selected workflows", permissions=["operate"])
    def stop_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        self._action(request, queryset, "stop")

    @admin.action(description="Restart selected workflows (stop, then run at once)", permissions=["operate"])
    def restart_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        self._action(request, queryset, "restart")

    @admin.action(description="Run selected workflows now", permissions=["operate"])
    def run_workflows_now(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        self._action(request, queryset, "run_now")

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # Without this an unauthorised command is silently dropped ("No action selected"): refuse it.
        if (request.method == "POST" and set(request.POST.getlist("action")) & set(self.actions)
                and not self.has_operate_permission(request)):
            raise PermissionDenied
        return super().changelist_view(request, extra_context)

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<path:object_id>/command/<str:command>/", self.admin_site.admin_view(self.command_view),
                 name="{}_{}_command".format(*info)),
            path("<path:object_id>/repair-schedule/", self.admin_site.admin_view(self.repair_schedule_view),
                 name="{}_{}_repair_schedule".format(*info)),
            *super().get_urls(),
        ]

    def command_view(self, request: HttpRequest, object_id: str, command: str) -> HttpResponse:
        """A button of the workflow page: POST only (with the CSRF token), operate permission."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_operate_permission(request):
            raise PermissionDenied
        if command not in COMMANDS:
            raise Http404(f"unknown command {command!r}")
        workflow = self.get_object(request, unquote(object_id))
        if workflow is None:
            raise Http404(f"no workflow {unquote(object_id)!r}")
        self.perform(request, COMMANDS[command], [workflow])
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:workflows_workflow_change", args=[quote(workflow.pk)])
        )


    def repair_schedule_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The workflow page's "Repair schedule" button: POST only (with the CSRF token), operate
        permission, audited with the user."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_operate_permission(request):
            raise PermissionDenied
        workflow = self.get_object(request, unquote(object_id))
        if workflow is None:
            raise Http404(f"no workflow {unquote(object_id)!r}")
        try:
            repair = schedule_repair.repair_schedule(workflow.pk, user=request.user)
        except UnknownWorkflow as error:
            self.message_user(request, f"Repair refused for {workflow.pk}: {error}", messages.WARNING)
        else:
            if repair is None:
                self.message_user(request, f"{workflow.pk}: its schedule is as it should be; nothing to repair.",
                                  messages.INFO)
            else:
                self.message_user(request, f"Repaired the schedule of {workflow.pk}. {repair.note}", messages.SUCCESS)
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:workflows_workflow_change", args=[quote(workflow.pk)])
        )


# -- the dashboard -------------------------------------------------------------------------------
# A page of this admin at the app's level, not a model's: /admin/workflows/dashboard/ (a model
# admin's own URLs all sit under /admin/workflows/<model>/). It is put in front of the site's URLs
# here, with the rest of the workflow admin, so the project's root URLconf names nothing of the
# engine. The view checks its permissions itself (staff, and workflows.view_workflow).

def mount_dashboard(site: admin.AdminSite) -> None:
    """Serve :func:`workflows.dashboard.dashboard_view` at ``<site>/workflows/dashboard/``
    (URL name ``admin:workflows_dashboard``)."""
    site_urls = site.get_urls

    def get_urls() -> list[URLPattern]:
        return [path("workflows/dashboard/", dashboard_view, name="workflows_dashboard"), *site_urls()]

    site.get_urls = get_urls


mount_dashboard(admin.site)


# -- django-celery-beat's periodic tasks ---------------------------------------------------------

admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    """django-celery-beat's admin, except that a workflow's own PeriodicTask is read-only here: its
    schedule is edited on the workflow's page (validated and audited), and start, pause and stop
    enable and disable it. Its page says so and links there. Other rows (the engine's housekeeping,
    report shares, anything an administrator added) are edited here as before."""

    change_form_template = "admin/workflows/periodictask/change_form.html"

    @staticmethod
    def workflow_of(task: PeriodicTask | None) -> Workflow | None:
        if task is None or task.pk is None:
            return None
        return Workflow.objects.filter(periodic_task=task).first()

    def has_change_permission(self, request: HttpRequest, obj: PeriodicTask | None = None) -> bool:
        return self.workflow_of(obj) is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: PeriodicTask | None = None) -> bool:
        return self.workflow_of(obj) is None and super().has_delete_permission(request, obj)

    def get_fieldsets(self, request: HttpRequest, obj: PeriodicTask | None = None) -> Any:
        if self.workflow_of(obj) is None:
            return super().get_fieldsets(request, obj)
        # Read-only: model fields only (the edit form's task picker "regtask" has nothing to show).
        return [(None, {"fields": ("name", "task", "enabled", "description")}),
                ("Schedule", {"fields": ("crontab", "crontab_translation", "start_time", "last_run_at", "one_off")}),
                ("Arguments", {"fields": ("args", "kwargs")}),
                ("Execution options", {"fields": ("expires", "expire_seconds", "queue")})]

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = dict(extra_context or {})
        workflow = self.workflow_of(self.get_object(request, unquote(object_id))) if object_id else None
        if workflow is not None:
            extra_context["owning_workflow"] = {"id": workflow.pk, "label": workflow.label, "url": workflow_url(workflow.pk)}
        return super().changeform_view(request, object_id, form_url, extra_context)


# -- runs ----------------------------------------------------------------------------------------

class ActivityRunInline(ReadOnlyAdminMixin, admin.TabularInline):
    """The run's activities. They are part of the run: whoever may view the run sees them."""

    model = ActivityRun
    fields = ("position", "name", "status_badge", "started_at", "finished_at", "counters_display", "message")
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
        return format_html('<span style="font-family:monospace;white-space:pre-wrap">{}</span>', entry.message)


class JournalInline(ReadOnlyAdminMixin, JournalDisplayMixin, admin.TabularInline):
    model = WorkflowLog
    fk_name = "run"
    verbose_name = "journal entry"
    verbose_name_plural = "journal"
    fields = ("logged_at", "level_badge", "activity", "message_display")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowLog]:
        return super().get_queryset(request).order_by("pk")  # in the order it happened


@admin.register(WorkflowRun)
class WorkflowRunAdmin(ReadOnlyAdminMixin, RunDisplayMixin, admin.ModelAdmin):
    list_display = ("run_link", "workflow_link", "status_badge", "trigger", "requested_by", "created_at", "started_at",
                    "duration", "reason_short")
    list_display_links = None
    list_filter = ("status", "trigger", "workflow")
    search_fields = ("=id", "workflow__id", "requested_by", "=celery_task_id")
    inlines = (ActivityRunInline, JournalInline)
    fieldsets = (
        (None, {"fields": ("workflow_link", "status_badge", "reason", "halted_activity", "trigger", "requested_by",
                           "attempt", "slot", "celery_task_id")}),
        ("Timing", {"fields": ("created_at", "started_at", "finished_at", "duration")}),
        ("Work", {"fields": ("counters_display", "progress", "overrides_display")}),
    )
    readonly_fields = ("workflow_link", "status_badge", "reason", "halted_activity", "trigger", "requested_by",
                       "attempt", "slot", "celery_task_id", "created_at", "started_at", "finished_at", "duration",
                       "counters_display", "progress", "overrides_display")

    @admin.display(description="workflow", ordering="workflow_id")
    def workflow_link(self, run: WorkflowRun) -> SafeString:
        return format_html('<a href="{}">{}</a>', workflow_url(run.workflow_id), run.workflow_id)

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
class WorkflowLogAdmin(ReadOnlyAdminMixin, JournalDisplayMixin, admin.ModelAdmin):
    list_display = ("logged_at", "workflow_link", "run_link", "activity", "level_badge", "message_short")
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

    @admin.display(description="message")
    def message_short(self, entry: WorkflowLog) -> str:
        return truncatechars(entry.message, 160)


@admin.register(WorkflowAudit)
class WorkflowAuditAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("at", "workflow_link", "actor", "action", "changes_display", "note")
    list_filter = ("action", "workflow")
    search_fields = ("actor", "workflow__id", "note")
    fields = ("at", "workflow_link", "actor", "user", "action", "changes_display", "note")
    readonly_fields = fields

    @admin.display(description="workflow", ordering="workflow_id")
    def workflow_link(self, entry: WorkflowAudit) -> SafeString:
        return format_html('<a href="{}">{}</a>', workflow_url(entry.workflow_id), entry.workflow_id)

    @admin.display(description="changes")
    def changes_display(self, entry: WorkflowAudit) -> SafeString | str:
        if not entry.changes:
            return EMPTY
        return format_html_join(
            "", "<div><code>{}</code>: {} → {}</div>",
            ((field, _audit_value(values[0]), _audit_value(values[1])) for field, values in entry.changes.items()
             if isinstance(values, list) and len(values) == 2),
        )


def _audit_value(value: Any) -> str:
    if value is None:
        return EMPTY
    return truncatechars(display_value(value), 80)
