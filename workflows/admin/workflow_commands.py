"""The operator's commands on the workflow admin: the actions of the workflow list, the buttons of a
workflow's page, and its "Repair schedule" button.

Each one calls the service of :mod:`workflows.commands` (or :mod:`workflows.schedule_repair`), so a
command means the same here as in the CLI and the shell, and is audited with the user who gave it.
They need the ``workflows.operate_workflow`` permission, checked again by every view (a POST only,
with the CSRF token), and a refusal is reported with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from kombu.exceptions import OperationalError

from workflows import commands, schedule_repair
from workflows.admin.base import run_url
from workflows.commands import CommandRefused
from workflows.definition import UnknownWorkflow
from workflows.models import Trigger, Workflow, WorkflowRun


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


class WorkflowCommandsMixin:
    """The commands of :class:`workflows.admin.workflow.WorkflowAdmin`: its actions, its command
    and repair URLs, and the permission they need."""

    actions = ("start_workflows", "pause_workflows", "resume_workflows", "stop_workflows", "restart_workflows",
               "run_workflows_now")

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.operate_workflow")

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
