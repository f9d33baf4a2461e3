"""The operator's commands on the workflow admin: the actions of the workflow list, the buttons of a
workflow's page, its forced run and its "Repair schedule" button.

Each one calls the service of :mod:`workflows.commands` (or :mod:`workflows.schedule_repair`), so a
command means the same here as in the CLI and the shell, and is audited with the user who gave it.
They need the ``workflows.operate_workflow`` permission, checked again by every view (a POST only,
with the CSRF token), and a refusal is reported with its reason.

A workflow's page shows the buttons of the commands that apply to it as it is now
(:func:`workflows.commands.applicable_commands`: no Start on a started workflow). A forced run,
from a workflow's page or from the list's action on selected workflows, first shows a page that
says what forcing does to each workflow as it is now, and is given from there only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from kombu.exceptions import OperationalError

from workflows import commands, engine, schedule_repair
from workflows.admin.base import format_time, run_url
from workflows.commands import CommandRefused
from workflows.definition import UnknownWorkflow
from workflows.models import Trigger, Workflow, WorkflowRun, WorkflowState


@dataclass(frozen=True)
class AdminCommand:
    name: str  # the action's and the button URL's name
    command: str  # its name in workflows.commands.COMMAND_NAMES
    label: str  # the button (with "…" after it when it opens a confirmation page), and the messages
    done: str  # the success message's verb
    call: Callable[[str, AbstractBaseUser], Workflow | WorkflowRun]
    confirm: bool = False  # the button opens a page saying what the command does, which gives it


#: The field of the list's forced-run confirmation page that says "confirmed" ("yes"): without it
#: the action shows that page and forces nothing.
FORCE_CONFIRMED = "force_run_confirmed"

COMMANDS: dict[str, AdminCommand] = {
    command.name: command
    for command in (
        AdminCommand("start", "start", "Start", "Started",
                     lambda workflow_id, user: commands.start(workflow_id, user=user)),
        AdminCommand("pause", "pause", "Pause", "Paused",
                     lambda workflow_id, user: commands.pause(workflow_id, user=user)),
        AdminCommand("resume", "resume", "Resume", "Resumed",
                     lambda workflow_id, user: commands.resume(workflow_id, user=user)),
        AdminCommand("stop", "stop", "Stop", "Stopped",
                     lambda workflow_id, user: commands.stop(workflow_id, user=user)),
        AdminCommand("restart", "restart", "Restart", "Restarted",
                     lambda workflow_id, user: commands.restart(workflow_id, user=user, trigger=Trigger.ADMIN)),
        AdminCommand("run_now", "run now", "Run now", "Queued a run of",
                     lambda workflow_id, user: commands.run_now(workflow_id, user=user, trigger=Trigger.ADMIN)),
        AdminCommand("force_run", "force run", "Force run", "Forced a run of",
                     lambda workflow_id, user: commands.run_now(workflow_id, user=user, trigger=Trigger.ADMIN, force=True),
                     confirm=True),
    )
}


class WorkflowCommandsMixin:
    """The commands of :class:`workflows.admin.workflow.WorkflowAdmin`: its actions, its command
    and repair URLs, and the permission they need."""

    actions = ("start_workflows", "pause_workflows", "resume_workflows", "stop_workflows", "restart_workflows",
               "run_workflows_now", "force_run_workflows")

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.operate_workflow")

    def command_url(self, workflow_id: str, command: str) -> str:
        return reverse(f"{self.admin_site.name}:workflows_workflow_command", args=[quote(workflow_id), command])

    def command_buttons(self, request: HttpRequest, workflow: Workflow) -> list[dict[str, Any]]:
        """The buttons of the commands that apply to the workflow as it is now; none without the
        operate permission."""
        if not self.has_operate_permission(request):
            return []
        applicable = commands.applicable_commands(workflow)
        return [{"name": command.name, "label": command.label, "confirm": command.confirm,
                 "url": self.command_url(workflow.pk, command.name)}
                for command in COMMANDS.values() if command.command in applicable]

    def refusal_message(self, command: AdminCommand, workflow_id: str, refusal: Exception) -> SafeString:
        message = format_html("{} refused for {}: {}.", command.label, workflow_id, refusal)
        if command.name == "run_now":
            force = COMMANDS["force_run"]
            message = format_html('{} <a href="{}">{}…</a>', message, self.command_url(workflow_id, force.name),
                                  force.label)
        return message

    def perform(self, request: HttpRequest, command: AdminCommand, workflows: list[Workflow]) -> None:
        """Give ``command`` to each workflow; report the successes in one message and each refusal
        with its reason."""
        done: list[str] = []
        runs: list[WorkflowRun] = []
        for workflow in workflows:
            try:
                result = command.call(workflow.pk, request.user)
            except (CommandRefused, UnknownWorkflow) as refusal:
                self.message_user(request, self.refusal_message(command, workflow.pk, refusal), messages.WARNING)
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

    @admin.action(description="Force a run of selected workflows…", permissions=["operate"])
    def force_run_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> TemplateResponse | None:
        """The confirmation page first, the same as a workflow page's; its button posts the action
        again, confirmed (``FORCE_CONFIRMED``), and only then are the runs forced."""
        workflows = list(queryset.order_by("pk"))
        if request.POST.get(FORCE_CONFIRMED) != "yes":
            return self.force_run_confirmation(request, workflows, from_list=True)
        self.perform(request, COMMANDS["force_run"], workflows)
        return None

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
        """A button of the workflow page: given by a POST (with the CSRF token), with the operate
        permission. A command that asks for confirmation shows its page on a GET."""
        admin_command = COMMANDS.get(command)
        if request.method != "POST" and not (request.method == "GET" and admin_command and admin_command.confirm):
            return HttpResponseNotAllowed(["POST"])
        if not self.has_operate_permission(request):
            raise PermissionDenied
        if admin_command is None:
            raise Http404(f"unknown command {command!r}")
        workflow = self.get_object(request, unquote(object_id))
        if workflow is None:
            raise Http404(f"no workflow {unquote(object_id)!r}")
        if request.method == "GET":
            return self.force_run_confirmation(request, [workflow])
        self.perform(request, admin_command, [workflow])
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:workflows_workflow_change", args=[quote(workflow.pk)])
        )

    def force_run_confirmation(self, request: HttpRequest, workflows: list[Workflow], *,
                               from_list: bool = False) -> TemplateResponse:
        """What a forced run does to each workflow as it is now, and the button that gives it: to one
        workflow's command URL from its page, or back to the list as the confirmed action from there
        (the same selection and filters; "No" returns to the list)."""
        forced = [self.forced_run_facts(workflow) for workflow in workflows]
        if from_list:
            command_url = back_url = request.get_full_path()
        else:
            command_url, back_url = self.command_url(workflows[0].pk, "force_run"), forced[0]["workflow_url"]
        names = workflows[0].pk if len(workflows) == 1 else f"{len(workflows)} workflows"
        context = {
            **self.admin_site.each_context(request),
            "title": f"Force a run of {names}?",
            "subtitle": None,
            "opts": self.opts,
            "is_nav_sidebar_enabled": False,
            "forced": forced,
            "names": names,
            "from_list": from_list,
            "command_url": command_url,
            "back_url": back_url,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "confirmed_name": FORCE_CONFIRMED,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/workflows/workflow/force_run_confirmation.html", context)

    def forced_run_facts(self, workflow: Workflow) -> dict[str, Any]:
        """What the confirmation page says of one workflow: its state, and the paused run it would stop."""
        paused = engine.paused_run(workflow)
        return {
            "workflow": workflow,
            "state": WorkflowState(workflow.state).label.lower(),
            "started": workflow.state == WorkflowState.STARTED,
            "paused_since": format_time(workflow.paused_at) if workflow.paused_at else "",
            "paused_run": paused,
            "paused_run_url": run_url(paused.pk) if paused else "",
            "workflow_url": reverse(f"{self.admin_site.name}:workflows_workflow_change", args=[quote(workflow.pk)]),
        }

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
