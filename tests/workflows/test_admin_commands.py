"""A workflow's page offers the commands that apply to its state, and a forced run: a confirmation
page that says what forcing does to this workflow, then the run, queued through the broker with
``force`` and audited with the user like every command."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from tests.workflows.admin_helpers import broker_message, broker_messages, change_url, staff_client
from workflows import commands
from workflows.models import RunStatus, Trigger, Workflow, WorkflowAudit, WorkflowRun, WorkflowState

pytestmark = pytest.mark.django_db

ALL_BUTTONS = ("start", "pause", "resume", "stop", "restart", "run_now", "force_run")


def command_url(workflow_id: str, command: str) -> str:
    return reverse("admin:workflows_workflow_command", args=[workflow_id, command])


def buttons_on(client: Client, workflow_id: str) -> list[str]:
    page = client.get(change_url(workflow_id)).content.decode()
    return [name for name in ALL_BUTTONS if f'id="command-{name}"' in page]


def paused_run(workflow_id: str) -> WorkflowRun:
    return WorkflowRun.objects.create(workflow_id=workflow_id, trigger=Trigger.SCHEDULE, status=RunStatus.PAUSED,
                                      halted_activity="purge_events", reason="workflow paused")


def messages_of(response: HttpResponse) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# -- the buttons follow the state ----------------------------------------------------------------

def test_a_started_workflow_offers_pause_stop_restart_and_run_now(admin_client: Client) -> None:
    assert buttons_on(admin_client, "cleanup") == ["pause", "stop", "restart", "run_now"]


def test_a_started_workflow_with_a_paused_run_offers_resume_and_a_forced_run_instead_of_run_now(
    admin_client: Client,
) -> None:
    paused_run("cleanup")
    assert buttons_on(admin_client, "cleanup") == ["pause", "resume", "stop", "restart", "force_run"]


def test_a_paused_workflow_offers_resume_stop_restart_and_a_forced_run(admin_client: Client) -> None:
    commands.pause("cleanup", actor="test")
    assert buttons_on(admin_client, "cleanup") == ["resume", "stop", "restart", "force_run"]


def test_a_stopped_workflow_offers_start_restart_and_a_forced_run(admin_client: Client) -> None:
    commands.stop("cleanup", actor="test")
    assert buttons_on(admin_client, "cleanup") == ["start", "restart", "force_run"]


def test_the_buttons_follow_the_command_just_given(admin_client: Client) -> None:
    response = admin_client.post(command_url("cleanup", "pause"), follow=True)
    page = response.content.decode()
    assert 'id="command-resume"' in page and 'id="command-pause"' not in page


def test_a_hidden_command_is_still_refused_with_its_reason_when_posted(admin_client: Client) -> None:
    commands.stop("cleanup", actor="test")
    response = admin_client.post(command_url("cleanup", "pause"), follow=True)
    assert messages_of(response) == ["Pause refused for cleanup: cleanup is stopped; start it before pausing it."]
    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.STOPPED


# -- the forced run ------------------------------------------------------------------------------

def test_the_forced_run_button_opens_its_confirmation_page(admin_client: Client) -> None:
    commands.pause("cleanup", actor="test")
    page = admin_client.get(change_url("cleanup")).content.decode()
    assert f'<a class="button" href="{command_url("cleanup", "force_run")}" id="command-force_run">Force run…</a>' in page


def test_the_confirmation_page_says_what_forcing_a_paused_workflow_does(admin_client: Client) -> None:
    commands.pause("cleanup", actor="test")
    waiting = paused_run("cleanup")

    response = admin_client.get(command_url("cleanup", "force_run"))

    assert response.status_code == 200
    page = " ".join(response.content.decode().split())
    assert "<title>Force a run of cleanup? | Django site admin</title>" in page
    assert "The run goes ahead although the workflow is <strong>paused</strong>" in page
    assert "The workflow stays paused: its schedule stays off, and no run follows this one until it is resumed." in page
    assert (f'Run <a href="{reverse("admin:workflows_workflowrun_change", args=[waiting.pk])}">#{waiting.pk}</a> '
            "is paused at activity <code>purge_events</code>. Forcing stops it for good") in page
    assert "audited under your name as <code>run now</code>, with the note <code>forced</code>" in page
    assert f'<form method="post" action="{command_url("cleanup", "force_run")}">' in page
    assert f'<a href="{change_url("cleanup")}" class="button cancel-link">No, take me back</a>' in page
    # Nothing is done by looking at it.
    assert not WorkflowRun.objects.filter(status=RunStatus.QUEUED).exists()
    assert not WorkflowAudit.objects.filter(action="run now").exists()


def test_the_confirmation_page_of_a_stopped_workflow_without_a_paused_run(admin_client: Client) -> None:
    commands.stop("cleanup", actor="test")
    page = " ".join(admin_client.get(command_url("cleanup", "force_run")).content.decode().split())
    assert "no run follows this one until it is started" in page
    assert 'id="force-run-paused-run"' not in page


def test_confirming_queues_a_forced_admin_run_through_the_broker_audited_with_the_user(
    admin_client: Client, admin_user: Any, django_capture_on_commit_callbacks: Any,
) -> None:
    commands.stop("cleanup", actor="test")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(command_url("cleanup", "force_run"), follow=True)

    run = WorkflowRun.objects.get(workflow_id="cleanup")
    assert (run.status, run.trigger, run.requested_by) == (RunStatus.QUEUED, Trigger.ADMIN, admin_user.username)
    audit = WorkflowAudit.objects.get(workflow_id="cleanup", action="run now")
    assert (audit.user, audit.actor, audit.note) == (admin_user, admin_user.username, "forced")
    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.STOPPED  # forcing changes no state
    message = broker_message("celery", run.celery_task_id)
    assert message.headers["task"] == "workflows.cleanup"
    assert message.payload[1]["force"] is True
    assert response.redirect_chain == [(change_url("cleanup"), 302)]
    run_link = f'<a href="{reverse("admin:workflows_workflowrun_change", args=[run.pk])}">cleanup run #{run.pk}</a>'
    assert messages_of(response) == [f"Forced a run of 1 workflow: cleanup. Runs: {run_link}."]


def test_a_refused_run_now_links_to_the_forced_run(admin_client: Client) -> None:
    commands.pause("cleanup", actor="test")
    response = admin_client.post(command_url("cleanup", "run_now"), follow=True)
    assert f'<a href="{command_url("cleanup", "force_run")}">Force run…</a>' in messages_of(response)[0]


def test_the_forced_run_needs_the_operate_permission(django_user_model: Any) -> None:
    commands.pause("cleanup", actor="test")
    client = staff_client(django_user_model, "view_workflow")

    assert 'id="command-force_run"' not in client.get(change_url("cleanup")).content.decode()
    assert client.get(command_url("cleanup", "force_run")).status_code == 403
    assert client.post(command_url("cleanup", "force_run")).status_code == 403
    assert not WorkflowRun.objects.exists()


def test_only_the_forced_run_has_a_confirmation_page(admin_client: Client) -> None:
    assert admin_client.get(command_url("cleanup", "run_now")).status_code == 405
    assert admin_client.get(command_url("cleanup", "force_run")).status_code == 200


def test_the_confirmation_page_of_a_started_workflow_names_the_paused_run_it_would_stop(admin_client: Client) -> None:
    waiting = paused_run("cleanup")
    page = " ".join(admin_client.get(command_url("cleanup", "force_run")).content.decode().split())
    assert "The workflow is started: the run goes ahead as a <em>Run now</em> would, except for its paused run" in page
    assert f"#{waiting.pk}</a> is paused at activity <code>purge_events</code>. Forcing stops it for good" in page


# -- the forced run from the list ----------------------------------------------------------------

CHANGELIST = reverse("admin:workflows_workflow_changelist")


def select_for_forced_run(client: Client, *workflow_ids: str, url: str = CHANGELIST) -> HttpResponse:
    """Tick the workflows in the list, choose the forced run, press Go."""
    return client.post(url, {"action": "force_run_workflows", "_selected_action": list(workflow_ids), "index": 0})


def confirm(client: Client, page: HttpResponse) -> HttpResponse:
    """Press the confirmation page's button: post its form as the browser would (its hidden fields)."""
    html = page.content.decode()
    (action,) = re.findall(r'<form method="post" action="([^"]*)">', html)
    data: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html):
        data.setdefault(name, []).append(value)
    return client.post(unescape(action), data, follow=True)


def test_the_list_offers_a_forced_run_of_selected_workflows(admin_client: Client) -> None:
    actions = dict(admin_client.get(CHANGELIST).context["action_form"].fields["action"].choices)
    assert actions["force_run_workflows"] == "Force a run of selected workflows…"


def test_the_lists_forced_run_first_says_what_it_does_to_each_selected_workflow_and_does_nothing(
    admin_client: Client,
) -> None:
    commands.pause("cleanup", actor="test")
    waiting = paused_run("cleanup")
    commands.stop("billing", actor="test")

    response = select_for_forced_run(admin_client, "cleanup", "billing", "abTesting")

    assert response.status_code == 200
    page = " ".join(response.content.decode().split())
    assert "<title>Force a run of 3 workflows? | Django site admin</title>" in page
    assert "Forcing starts one run of each of these workflows now, where <em>Run now</em> would be refused" in page
    listed = re.findall(r'<li class="force-run-workflow" id="force-run-([^"]+)">', page)
    assert listed == ["abTesting", "billing", "cleanup"]
    cleanup = page[page.index('id="force-run-cleanup"'):]
    assert "The run goes ahead although the workflow is <strong>paused</strong>" in cleanup
    waiting_url = reverse("admin:workflows_workflowrun_change", args=[waiting.pk])
    assert (f'<li id="force-run-paused-run-cleanup">Run <a href="{waiting_url}">#{waiting.pk}</a> is paused'
            " at activity <code>purge_events</code>. Forcing stops it for good") in cleanup
    billing = page[page.index('id="force-run-billing"'):page.index('id="force-run-cleanup"')]
    assert "no run follows this one until it is started" in billing and "force-run-paused-run" not in billing
    ab_testing = page[page.index('id="force-run-abTesting"'):page.index('id="force-run-billing"')]
    assert "The workflow is started: a forced run is the same as <em>Run now</em>." in ab_testing
    assert "with the note <code>forced</code>, once per workflow" in page
    assert f'<a href="{CHANGELIST}" class="button cancel-link">No, take me back</a>' in page
    assert 'value="Yes, force a run of 3 workflows"' in page
    # Nothing is done by looking at it.
    assert not WorkflowRun.objects.filter(status=RunStatus.QUEUED).exists()
    assert not WorkflowAudit.objects.filter(action="run now").exists()
    assert WorkflowRun.objects.get(pk=waiting.pk).status == RunStatus.PAUSED


def test_confirming_the_lists_forced_run_queues_one_forced_run_per_selected_workflow(
    admin_client: Client, admin_user: Any, django_capture_on_commit_callbacks: Any,
) -> None:
    commands.pause("cleanup", actor="test")
    commands.stop("billing", actor="test")
    page = select_for_forced_run(admin_client, "cleanup", "billing")

    with django_capture_on_commit_callbacks(execute=True):
        response = confirm(admin_client, page)

    runs = {run.workflow_id: run for run in WorkflowRun.objects.order_by("pk")}  # in the order they were queued
    assert list(runs) == ["billing", "cleanup"]
    sent = broker_messages("celery", [run.celery_task_id for run in runs.values()])
    for workflow_id, run in runs.items():
        assert (run.status, run.trigger, run.requested_by) == (RunStatus.QUEUED, Trigger.ADMIN, admin_user.username)
        audit = WorkflowAudit.objects.get(workflow_id=workflow_id, action="run now")
        assert (audit.user, audit.note) == (admin_user, "forced")
        assert sent[run.celery_task_id].payload[1]["force"] is True
    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.PAUSED  # forcing changes no state
    assert Workflow.objects.get(pk="billing").state == WorkflowState.STOPPED
    assert response.redirect_chain == [(CHANGELIST, 302)]
    links = ", ".join(f'<a href="{reverse("admin:workflows_workflowrun_change", args=[runs[w].pk])}">{w} run #{runs[w].pk}</a>'
                      for w in ("billing", "cleanup"))
    assert messages_of(response) == [f"Forced a run of 2 workflows: billing, cleanup. Runs: {links}."]


def test_the_lists_forced_run_keeps_the_lists_filters_and_forces_only_the_confirmed_selection(
    admin_client: Client, django_capture_on_commit_callbacks: Any,
) -> None:
    commands.pause("cleanup", actor="test")
    commands.pause("billing", actor="test")
    filtered = f"{CHANGELIST}?state__exact=paused"
    page = select_for_forced_run(admin_client, "cleanup", url=filtered)
    assert f'<form method="post" action="{escape(filtered)}">' in page.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = confirm(admin_client, page)

    assert list(WorkflowRun.objects.values_list("workflow_id", flat=True)) == ["cleanup"]
    assert response.redirect_chain == [(filtered, 302)]


def test_the_lists_forced_run_needs_the_operate_permission(django_user_model: Any) -> None:
    commands.pause("cleanup", actor="test")
    client = staff_client(django_user_model, "view_workflow")

    assert select_for_forced_run(client, "cleanup").status_code == 403
    assert client.post(CHANGELIST, {"action": "force_run_workflows", "_selected_action": ["cleanup"],
                                    "force_run_confirmed": "yes"}).status_code == 403
    assert not WorkflowRun.objects.exists()
    assert not WorkflowAudit.objects.filter(action="run now").exists()
