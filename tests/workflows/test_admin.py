"""The "Technical workflows" admin: the list shows what an operator needs at a glance, every command
works from the list and from the workflow page and is audited with the user, the settings form
validates like the CLI and the engine, and only users with the matching permissions see or act."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from tests.workflows.admin_helpers import broker_message, change_url, edit, form_data, staff_client
from workflows import commands, schedules
from workflows.admin import RECENT_RUNS
from workflows.context import ActivityContext
from workflows.definition import WorkflowDefinition, register
from workflows.forms import workflow_form_class
from workflows.models import (
    LogLevel,
    RunStatus,
    Trigger,
    Workflow,
    WorkflowAudit,
    WorkflowLog,
    WorkflowRun,
    WorkflowState,
)
from workflows.properties import BooleanProperty, ChoiceProperty, DurationProperty, TextProperty

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:workflows_workflow_changelist")


# -- a test-only workflow with properties and activities ----------------------------------------

def count_rows(context: ActivityContext) -> None:
    """Count the sample rows."""
    context.count("rows", 3)


def send_summary(context: ActivityContext) -> None:
    """Send the summary to the supervisors."""
    context.log("Summary sent to nobody: this is a test.")
    context.count("sent")


# On demand (no schedule), so the row created for it stays out of schedule-based checks elsewhere.
SAMPLE = register(WorkflowDefinition(
    id="adminSample",
    label="Admin sample",
    description="Test-only workflow with one property of each type and two activities.",
    schedule=None,
    activities=(count_rows, send_summary),
    properties=(
        DurationProperty("window_days", 7, minimum=1, maximum=90, unit="days", help="How far back to count."),
        BooleanProperty("dry_run", False, help="Count but send nothing."),
        ChoiceProperty("channel", "email", choices=("email", "sms"), help="Where the summary goes."),
        TextProperty("subject", "Daily summary", max_length=40, help="Subject of the summary."),
    ),
))


@pytest.fixture
def sample() -> Workflow:
    return schedules.ensure_workflow(SAMPLE)


# -- helpers -------------------------------------------------------------------------------------

def command_url(workflow_id: str, command: str) -> str:
    return reverse("admin:workflows_workflow_command", args=[workflow_id, command])


def run_url(run_id: int) -> str:
    return reverse("admin:workflows_workflowrun_change", args=[run_id])


def messages_of(response: HttpResponse) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def act(client: Client, action: str, *workflow_ids: str) -> HttpResponse:
    return client.post(CHANGELIST, {"action": action, "_selected_action": list(workflow_ids), "index": 0}, follow=True)


def finished_run(workflow_id: str, *, status: str = RunStatus.SUCCEEDED, duration_s: float = 12.3,
                 counters: dict[str, int] | None = None) -> WorkflowRun:
    return WorkflowRun.objects.create(
        workflow_id=workflow_id, trigger=Trigger.SCHEDULE, status=status, duration_s=duration_s,
        counters=counters or {}, reason="boom" if status == RunStatus.FAILED else "",
    )


# -- the list ------------------------------------------------------------------------------------

@time_machine.travel(datetime(2024, 5, 1, 10, 0, tzinfo=UTC), tick=False)
def test_changelist_shows_state_badges_schedule_in_words_next_run_and_last_run(admin_client: Client) -> None:
    commands.pause("billing", actor="test")
    commands.stop("forecasting", actor="test")
    finished_run("cleanup", status=RunStatus.FAILED, duration_s=0.4)
    finished_run("cleanup", duration_s=12.3, counters={"purged": 42})

    page = admin_client.get(CHANGELIST).content.decode()

    assert 'class="workflow-state state-started" style="background:#2e7d32' in page
    assert 'class="workflow-state state-paused" style="background:#ef6c00' in page
    assert 'class="workflow-state state-stopped" style="background:#757575' in page
    assert "At 04:00" in page  # cleanup, 0 4 * * *
    assert "Every 15 minutes" in page  # kpiSharing
    assert "On demand" in page  # reportSendingNow
    assert "May 2, 2024, 4 a.m." in page  # cleanup's next run, from 2024-05-01 10:00 UTC
    assert 'class="run-status status-succeeded"' in page and "12.3 s" in page  # the last run, not the first
    assert "purged=42" in page


def test_changelist_next_run_is_empty_while_paused(admin_client: Client) -> None:
    commands.pause("cleanup", actor="test")
    response = admin_client.get(CHANGELIST, {"q": "cleanup"})
    assert [workflow.pk for workflow in response.context["cl"].result_list] == ["cleanup"]
    assert '<td class="field-next_run">—</td>' in response.content.decode()


def test_changelist_costs_the_same_queries_with_many_runs(admin_client: Client) -> None:
    admin_client.get(CHANGELIST)  # warm the session and content-type caches
    with CaptureQueriesContext(connection) as without_runs:
        admin_client.get(CHANGELIST)
    for workflow_id in ("cleanup", "billing", "forecasting", "kpiSharing", "reportingAggregates"):
        for _ in range(3):
            finished_run(workflow_id)
    with CaptureQueriesContext(connection) as with_runs:
        response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert len(with_runs) == len(without_runs)
    assert sum("workflows_workflowrun" in query["sql"] for query in with_runs.captured_queries) == 1


def test_changelist_filters_by_state_and_searches_id_and_label(admin_client: Client) -> None:
    commands.pause("billing", actor="test")
    paused = admin_client.get(CHANGELIST, {"state__exact": "paused"}).context["cl"].result_list
    assert [workflow.pk for workflow in paused] == ["billing"]
    found = admin_client.get(CHANGELIST, {"q": "Database cleanup"}).context["cl"].result_list
    assert [workflow.pk for workflow in found] == ["cleanup"]


def test_workflows_cannot_be_added_or_deleted_from_the_admin(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:workflows_workflow_add")).status_code == 403
    assert admin_client.get(reverse("admin:workflows_workflow_delete", args=["cleanup"])).status_code == 403
    actions = dict(admin_client.get(CHANGELIST).context["action_form"].fields["action"].choices)
    assert "delete_selected" not in actions


# -- actions -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("action", "before", "after", "audited"),
    [
        ("start_workflows", WorkflowState.STOPPED, WorkflowState.STARTED, "start"),
        ("pause_workflows", WorkflowState.STARTED, WorkflowState.PAUSED, "pause"),
        ("resume_workflows", WorkflowState.PAUSED, WorkflowState.STARTED, "resume"),
        ("stop_workflows", WorkflowState.STARTED, WorkflowState.STOPPED, "stop"),
    ],
)
def test_state_actions_change_state_and_audit_the_user(
    admin_client: Client, admin_user: Any, action: str, before: str, after: str, audited: str,
) -> None:
    Workflow.objects.filter(pk__in=["cleanup", "billing"]).update(state=before)

    response = act(admin_client, action, "cleanup", "billing")

    assert list(Workflow.objects.filter(pk__in=["cleanup", "billing"]).values_list("state", flat=True)) == [after, after]
    assert PeriodicTask.objects.get(name="cleanup").enabled is (after == WorkflowState.STARTED)
    audit = WorkflowAudit.objects.filter(workflow_id="cleanup", action=audited).get()
    assert (audit.user, audit.actor, audit.changes) == (admin_user, admin_user.username, {"state": [before, after]})
    assert any("2 workflows: billing, cleanup" in message for message in messages_of(response))


def test_restart_action_stops_then_queues_a_fresh_admin_run(admin_client: Client, admin_user: Any) -> None:
    act(admin_client, "restart_workflows", "cleanup")

    run = WorkflowRun.objects.get(workflow_id="cleanup")
    assert (run.status, run.trigger, run.requested_by) == (RunStatus.QUEUED, Trigger.ADMIN, admin_user.username)
    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.STARTED
    assert list(WorkflowAudit.objects.filter(workflow_id="cleanup", user=admin_user).order_by("pk")
                .values_list("action", flat=True)) == ["stop", "restart"]


def test_run_now_action_queues_an_admin_run_through_the_broker(
    admin_client: Client, admin_user: Any, django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = act(admin_client, "run_workflows_now", "cleanup")

    run = WorkflowRun.objects.get(workflow_id="cleanup")
    assert (run.status, run.trigger, run.requested_by) == (RunStatus.QUEUED, Trigger.ADMIN, admin_user.username)
    assert WorkflowAudit.objects.filter(workflow_id="cleanup", action="run now", user=admin_user).exists()
    assert len(callbacks) == 1
    headers = broker_message("celery", run.celery_task_id).headers
    assert headers["task"] == "workflows.cleanup"
    assert any(f'href="{run_url(run.pk)}"' in message for message in messages_of(response))


def test_run_now_on_a_paused_workflow_is_refused_with_the_reason(admin_client: Client) -> None:
    commands.pause("cleanup", actor="test")

    response = act(admin_client, "run_workflows_now", "cleanup", "billing")

    assert not WorkflowRun.objects.filter(workflow_id="cleanup").exists()
    assert WorkflowRun.objects.filter(workflow_id="billing", trigger=Trigger.ADMIN).count() == 1
    assert messages_of(response)[0] == (
        "Run now refused for cleanup: cleanup is paused; resume it first, or force the run. "
        f'<a href="{command_url("cleanup", "force_run")}">Force run…</a>'
    )


def test_resume_of_a_stopped_workflow_is_refused_with_the_reason(admin_client: Client) -> None:
    commands.stop("cleanup", actor="test")

    response = act(admin_client, "resume_workflows", "cleanup")

    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.STOPPED
    assert any("cleanup is stopped and cannot be resumed" in message for message in messages_of(response))


# -- buttons on the workflow page ----------------------------------------------------------------

def test_change_page_has_a_post_button_per_command_that_applies(admin_client: Client) -> None:
    page = admin_client.get(change_url("cleanup")).content.decode()
    for command in ("pause", "stop", "restart", "run_now"):  # a started workflow (see test_admin_commands)
        assert f'action="{command_url("cleanup", command)}"' in page
    assert 'name="csrfmiddlewaretoken"' in page


def test_button_gives_the_command_and_returns_to_the_workflow_page(admin_client: Client, admin_user: Any) -> None:
    response = admin_client.post(command_url("cleanup", "pause"))

    assert response.status_code == 302 and response["Location"] == change_url("cleanup")
    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.PAUSED
    assert WorkflowAudit.objects.filter(workflow_id="cleanup", action="pause", user=admin_user).exists()


def test_run_now_button_refusal_is_shown_on_the_workflow_page(admin_client: Client) -> None:
    commands.stop("cleanup", actor="test")
    response = admin_client.post(command_url("cleanup", "run_now"), follow=True)
    assert messages_of(response) == [(
        "Run now refused for cleanup: cleanup is stopped; start it first, or force the run. "
        f'<a href="{command_url("cleanup", "force_run")}">Force run…</a>'
    )]
    assert not WorkflowRun.objects.filter(workflow_id="cleanup").exists()


def test_buttons_accept_only_post_with_the_csrf_token(admin_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.get(command_url("cleanup", "pause")).status_code == 405
    assert client.post(command_url("cleanup", "pause")).status_code == 403
    assert client.post(command_url("cleanup", "explode")).status_code == 403  # CSRF is checked first
    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.STARTED


def test_unknown_command_or_workflow_is_not_found(admin_client: Client) -> None:
    assert admin_client.post(command_url("cleanup", "explode")).status_code == 404
    assert admin_client.post(command_url("noSuchWorkflow", "pause")).status_code == 404


# -- permissions ---------------------------------------------------------------------------------

def test_staff_without_workflow_permissions_neither_sees_nor_acts(django_user_model: Any) -> None:
    client = staff_client(django_user_model)

    assert "Technical workflows" not in client.get(reverse("admin:index")).content.decode()
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(change_url("cleanup")).status_code == 403
    assert client.post(CHANGELIST, {"action": "pause_workflows", "_selected_action": ["cleanup"]}).status_code == 403
    assert client.post(command_url("cleanup", "pause")).status_code == 403
    assert client.get(reverse("admin:workflows_workflowrun_changelist")).status_code == 403
    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.STARTED
    assert not WorkflowAudit.objects.exists()


def test_view_only_staff_sees_the_workflows_but_cannot_act_or_edit(django_user_model: Any, sample: Workflow) -> None:
    client = staff_client(django_user_model, "view_workflow")

    listing = client.get(CHANGELIST)
    assert listing.status_code == 200
    assert "Technical workflows" in client.get(reverse("admin:index")).content.decode()
    assert listing.context["action_form"] is None  # no action is offered at all

    page = client.get(change_url("adminSample"))
    assert page.status_code == 200
    assert 'id="workflow-commands"' not in page.content.decode()
    assert "<code>window_days</code> = 7 (default)" in page.content.decode()

    assert client.post(CHANGELIST, {"action": "pause_workflows", "_selected_action": ["cleanup"]}).status_code == 403
    assert client.post(command_url("cleanup", "pause")).status_code == 403
    assert client.post(change_url("cleanup"), {"history_days": "5"}).status_code == 403
    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.STARTED
    assert Workflow.objects.get(pk="cleanup").history_days == 30


def test_operate_permission_allows_commands_without_edit_permission(django_user_model: Any) -> None:
    client = staff_client(django_user_model, "view_workflow", "operate_workflow")

    act(client, "pause_workflows", "cleanup")

    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.PAUSED
    assert 'id="workflow-commands"' in client.get(change_url("cleanup")).content.decode()
    assert client.post(change_url("cleanup"), {"history_days": "5"}).status_code == 403


# -- schedule drift ------------------------------------------------------------------------------

def repair_url(workflow_id: str) -> str:
    return reverse("admin:workflows_workflow_repair_schedule", args=[workflow_id])


def periodic_task_url(name: str, view: str = "change") -> str:
    return reverse(f"admin:django_celery_beat_periodictask_{view}", args=[PeriodicTask.objects.get(name=name).pk])


def test_changelist_flags_a_drifted_schedule_rather_than_show_it_on_demand(admin_client: Client) -> None:
    PeriodicTask.objects.filter(name="billing").delete()
    PeriodicTask.objects.filter(name="cleanup").update(enabled=False)

    page = admin_client.get(CHANGELIST).content.decode()

    warning = '<span class="schedule-drift" style="color:#c62828;font-weight:bold" title="{}">⚠ Schedule drifted: {}</span>'
    title = "Repair it with the workflow page&#x27;s Repair schedule button, or: manage.py workflow repair {}"
    assert ('<td class="field-schedule_display">'
            + warning.format(title.format("billing"), "its PeriodicTask is missing") + "</td>") in page
    assert ('<span title="0 4 * * * (UTC)">At 04:00</span><br>'
            + warning.format(title.format("cleanup"), "its PeriodicTask is disabled although the workflow is started")
            ) in page.replace(settings.TIME_ZONE, "UTC")
    assert page.count('class="schedule-drift"') == 2


def test_workflow_page_announces_the_drift_and_its_button_repairs_it_audited_with_the_user(
    admin_client: Client, admin_user: Any,
) -> None:
    schedules.set_crontab(Workflow.objects.get(pk="billing"), "0 23 * * 5", "Europe/Paris")
    PeriodicTask.objects.filter(name="billing").delete()

    page = admin_client.get(change_url("billing")).content.decode()
    assert "This workflow's schedule drifted: its PeriodicTask is missing." in page
    assert f'action="{repair_url("billing")}"' in page

    response = admin_client.post(repair_url("billing"), follow=True)

    assert response.redirect_chain == [(change_url("billing"), 302)]
    assert messages_of(response) == [(
        "Repaired the schedule of billing. Found: its PeriodicTask is missing. Done: PeriodicTask recreated with the "
        "last known schedule, 0 23 * * 5 (Europe/Paris)."
    )]
    crontab = Workflow.objects.get(pk="billing").periodic_task.crontab
    assert (schedules.crontab_text(crontab), str(crontab.timezone)) == ("0 23 * * 5", "Europe/Paris")
    assert WorkflowAudit.objects.get(workflow_id="billing", action="repair schedule").user == admin_user
    assert 'id="schedule-drift"' not in response.content.decode()


def test_a_schedule_in_order_has_no_warning_and_the_repair_changes_nothing(admin_client: Client) -> None:
    assert 'id="schedule-drift"' not in admin_client.get(change_url("cleanup")).content.decode()

    response = admin_client.post(repair_url("cleanup"), follow=True)

    assert messages_of(response) == ["cleanup: its schedule is as it should be; nothing to repair."]
    assert not WorkflowAudit.objects.exists()


def test_repair_needs_post_and_the_operate_permission(django_user_model: Any) -> None:
    PeriodicTask.objects.filter(name="billing").delete()
    client = staff_client(django_user_model, "view_workflow", "change_workflow")

    page = client.get(change_url("billing")).content.decode()
    assert 'id="schedule-drift"' in page and repair_url("billing") not in page
    assert "python manage.py workflow repair billing" in page
    assert client.post(repair_url("billing")).status_code == 403
    assert Workflow.objects.get(pk="billing").periodic_task_id is None

    operator = Client()
    operator.force_login(django_user_model.objects.get(username="operator"))
    django_user_model.objects.get(username="operator").user_permissions.add(
        Permission.objects.get(content_type__app_label="workflows", codename="operate_workflow"))
    assert operator.get(repair_url("billing")).status_code == 405
    assert operator.post(repair_url("billing")).status_code == 302
    assert Workflow.objects.get(pk="billing").periodic_task_id is not None


def test_a_workflows_periodic_task_is_read_only_in_the_beat_admin_and_links_to_the_workflow(admin_client: Client) -> None:
    url = periodic_task_url("cleanup")

    page = admin_client.get(url).content.decode()

    assert 'id="workflow-schedule-notice"' in page
    assert f'<a href="{change_url("cleanup")}">the workflow\'s page</a>' in page
    assert 'name="_save"' not in page
    assert admin_client.post(url, {"name": "cleanup", "task": "workflows.billing", "enabled": "on"}).status_code == 403
    assert admin_client.get(periodic_task_url("cleanup", "delete")).status_code == 403
    bulk_delete = {"action": "delete_selected", "post": "yes",
                   "_selected_action": [PeriodicTask.objects.get(name="cleanup").pk]}
    assert admin_client.post(reverse("admin:django_celery_beat_periodictask_changelist"), bulk_delete).status_code == 403
    assert PeriodicTask.objects.get(name="cleanup").task == "workflows.cleanup"


def test_other_periodic_tasks_stay_editable_in_the_beat_admin(admin_client: Client) -> None:
    page = admin_client.get(periodic_task_url("engine: reap abandoned runs")).content.decode()

    assert 'name="_save"' in page
    assert 'id="workflow-schedule-notice"' not in page


# -- the settings form ---------------------------------------------------------------------------

def test_change_page_shows_a_field_per_property_and_activity_with_help_and_default(
    admin_client: Client, sample: Workflow,
) -> None:
    sample.properties = {"window_days": 30}
    sample.save()

    response = admin_client.get(change_url("adminSample"))

    form = response.context["adminform"].form
    assert form["property__window_days"].value() == 30  # stored
    assert form["property__channel"].value() == "email"  # default
    assert form.fields["property__window_days"].help_text == "How far back to count. Default: 7 days. Accepted: 1 to 90 days."
    assert form.fields["property__dry_run"].help_text == "Count but send nothing. Default: no."
    assert [choice for choice, _ in form.fields["property__channel"].choices] == ["email", "sms"]
    assert form.fields["activity__send_summary"].help_text == "Send the summary to the supervisors."
    page = response.content.decode()
    assert 'name="property__window_days"' in page and 'min="1"' in page and 'max="90"' in page
    assert 'name="activity__count_rows"' in page
    assert 'name="schedule_crontab"' not in page  # on demand: no schedule to edit


def test_invalid_crontab_is_refused_with_its_message_and_nothing_changes(admin_client: Client) -> None:
    response = edit(admin_client, "cleanup", schedule_crontab="0 0 31 2 *")

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["schedule_crontab"]
    with pytest.raises(ValidationError) as refusal:
        schedules.parse_crontab("0 0 31 2 *")
    assert errors == refusal.value.messages  # the same words as the CLI and the engine
    assert "day_of_month '31' never occurs in month_of_year '2'" in errors[0]
    crontab = PeriodicTask.objects.get(name="cleanup").crontab
    assert schedules.crontab_text(crontab) == "0 4 * * *"
    assert not WorkflowAudit.objects.filter(action="edit").exists()


def test_unknown_time_zone_is_refused(admin_client: Client) -> None:
    response = edit(admin_client, "cleanup", schedule_timezone="Mars/Olympus")
    assert response.context["adminform"].form.errors["schedule_timezone"] == [
        "Unknown time zone 'Mars/Olympus'; use an IANA name such as Europe/Paris."
    ]


def test_valid_crontab_is_saved_on_the_periodic_task_and_audited(admin_client: Client, admin_user: Any) -> None:
    response = edit(admin_client, "cleanup", schedule_crontab="30  5 * * 1-5", schedule_timezone="Europe/Paris")

    assert response.status_code == 302
    crontab = PeriodicTask.objects.get(name="cleanup").crontab
    assert (schedules.crontab_text(crontab), str(crontab.timezone)) == ("30 5 * * 1-5", "Europe/Paris")
    audit = WorkflowAudit.objects.get(workflow_id="cleanup", action="edit")
    assert audit.user == admin_user
    assert audit.changes == {"schedule": ["0 4 * * *", "30 5 * * 1-5"], "timezone": ["UTC", "Europe/Paris"]}
    assert "At 05:30, Monday through Friday" in admin_client.get(CHANGELIST).content.decode()


def test_property_below_its_minimum_is_refused_with_the_property_message(admin_client: Client, sample: Workflow) -> None:
    response = edit(admin_client, "adminSample", property__window_days="0")

    assert response.context["adminform"].form.errors["property__window_days"] == [
        "window_days: must be at least 1 day, got 0"
    ]
    assert Workflow.objects.get(pk="adminSample").properties == {}


def test_properties_are_stored_only_where_they_differ_from_the_default(
    admin_client: Client, admin_user: Any, sample: Workflow,
) -> None:
    sample.properties = {"subject": "Old subject"}
    sample.save()

    response = edit(admin_client, "adminSample", property__window_days="30", property__dry_run="on",
                    property__channel="email", property__subject="Daily summary")

    assert response.status_code == 302
    assert Workflow.objects.get(pk="adminSample").properties == {"window_days": 30, "dry_run": True}
    audit = WorkflowAudit.objects.get(workflow_id="adminSample", action="edit")
    assert audit.user == admin_user
    assert audit.changes == {
        "properties.window_days": [7, 30],
        "properties.dry_run": [False, True],
        "properties.subject": ["Old subject", "Daily summary"],
    }


def test_activity_mode_is_saved_and_audited(admin_client: Client, sample: Workflow) -> None:
    response = edit(admin_client, "adminSample", activity__send_summary="suspended")

    assert response.status_code == 302
    assert Workflow.objects.get(pk="adminSample").activity_modes == {"send_summary": "suspended"}
    assert WorkflowAudit.objects.get(action="edit").changes == {"activity_modes.send_summary": ["normal", "suspended"]}


def test_supervisors_are_validated_one_address_at_a_time(admin_client: Client) -> None:
    refused = edit(admin_client, "cleanup", supervisors="ops@example.com, not-an-address")
    assert refused.context["adminform"].form.errors["supervisors"] == ["Not a valid email address: not-an-address."]

    saved = edit(admin_client, "cleanup", supervisors="ops@example.com, dba@example.com", history_days="60",
                 error_threshold="5")
    assert saved.status_code == 302
    workflow = Workflow.objects.get(pk="cleanup")
    assert (workflow.supervisor_emails, workflow.history_days, workflow.error_threshold) == (
        ["ops@example.com", "dba@example.com"], 60, 5)
    assert WorkflowAudit.objects.get(action="edit").changes == {
        "history_days": [30, 60], "error_threshold": [3, 5], "supervisors": ["", "ops@example.com\ndba@example.com"],
    }


def test_saving_an_unchanged_form_writes_no_audit(admin_client: Client, sample: Workflow) -> None:
    assert edit(admin_client, "adminSample").status_code == 302
    assert edit(admin_client, "cleanup").status_code == 302
    assert not WorkflowAudit.objects.filter(action="edit").exists()


def test_an_edit_leaves_the_columns_the_engine_writes_alone(admin_user: Any, sample: Workflow) -> None:
    form_class = workflow_form_class(SAMPLE, scheduled=False)
    loaded = Workflow.objects.get(pk="adminSample")
    form = form_class(instance=loaded, data={
        "history_days": "10", "error_threshold": "3", "supervisors": "", "property__window_days": "7",
        "property__channel": "email", "property__subject": "Daily summary",
        "activity__count_rows": "normal", "activity__send_summary": "normal",
    })
    assert form.is_valid(), form.errors
    # Meanwhile a run advances its cursor, holds the lease and counts an error; someone pauses.
    Workflow.objects.filter(pk="adminSample").update(
        cursors={"source": 99}, lease_holder=5, consecutive_errors=2, state=WorkflowState.PAUSED,
    )

    assert form.apply(user=admin_user) == {"history_days": [30, 10]}

    workflow = Workflow.objects.get(pk="adminSample")
    assert (workflow.history_days, workflow.cursors, workflow.lease_holder, workflow.consecutive_errors, workflow.state) == (
        10, {"source": 99}, 5, 2, WorkflowState.PAUSED)


# -- runs, journal, audit ------------------------------------------------------------------------

def test_workflow_page_lists_the_ten_most_recent_runs_with_links(admin_client: Client) -> None:
    runs = [finished_run("cleanup") for _ in range(12)]
    finished_run("billing")

    page = admin_client.get(change_url("cleanup")).content.decode()

    for run in runs[2:]:
        assert f'href="{run_url(run.pk)}"' in page
    for run in runs[:2]:
        assert f'href="{run_url(run.pk)}"' not in page


def test_an_edit_is_saved_when_new_runs_push_the_shown_ones_out_of_the_recent_list(admin_client: Client) -> None:
    for _ in range(RECENT_RUNS):
        finished_run("cleanup")
    data = form_data(admin_client.get(change_url("cleanup")))
    finished_run("cleanup")  # a scheduled run while the page is open

    response = admin_client.post(change_url("cleanup"), {**data, "history_days": "45"})

    assert response.status_code == 302
    assert Workflow.objects.get(pk="cleanup").history_days == 45
    assert WorkflowRun.objects.filter(workflow_id="cleanup").count() == RECENT_RUNS + 1


def test_run_page_shows_its_activities_and_journal(admin_client: Client, sample: Workflow) -> None:
    run = commands.run_now("adminSample", actor="test", sync=True)
    assert run.status == RunStatus.SUCCEEDED

    response = admin_client.get(run_url(run.pk))

    page = response.content.decode()
    assert response.status_code == 200
    assert 'class="run-status status-succeeded"' in page
    assert "count_rows" in page and "send_summary" in page
    assert "rows=3" in page  # count_rows' counters
    assert "Summary sent to nobody: this is a test." in page  # journal entry of send_summary
    assert f"Run #{run.pk} started" in page


def test_run_list_filters_by_workflow_status_and_trigger(admin_client: Client) -> None:
    failed = finished_run("cleanup", status=RunStatus.FAILED)
    finished_run("cleanup")
    finished_run("billing", status=RunStatus.FAILED)

    response = admin_client.get(reverse("admin:workflows_workflowrun_changelist"),
                                {"workflow__id__exact": "cleanup", "status__exact": "failed", "trigger__exact": "schedule"})

    assert [run.pk for run in response.context["cl"].result_list] == [failed.pk]


def test_run_pages_are_read_only(admin_client: Client) -> None:
    run = finished_run("cleanup")
    assert admin_client.get(reverse("admin:workflows_workflowrun_add")).status_code == 403
    assert admin_client.post(run_url(run.pk), {"status": "failed"}).status_code == 403
    assert WorkflowRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED


def test_journal_and_audit_lists_filter_and_search(admin_client: Client, admin_user: Any) -> None:
    run = finished_run("cleanup", status=RunStatus.FAILED)
    WorkflowLog.objects.create(workflow_id="cleanup", run=run, level=LogLevel.ERROR, message="disk full on /var")
    WorkflowLog.objects.create(workflow_id="cleanup", run=run, level=LogLevel.INFO, message="disk checked")
    commands.pause("billing", user=admin_user)
    commands.stop("cleanup", actor="cron")

    journal = admin_client.get(reverse("admin:workflows_workflowlog_changelist"), {"level__exact": "error", "q": "disk"})
    assert [entry.message for entry in journal.context["cl"].result_list] == ["disk full on /var"]

    audit = admin_client.get(reverse("admin:workflows_workflowaudit_changelist"), {"q": admin_user.username})
    assert [(entry.workflow_id, entry.action) for entry in audit.context["cl"].result_list] == [("billing", "pause")]
    assert "<code>state</code>: started → paused" in audit.content.decode()
    by_action = admin_client.get(reverse("admin:workflows_workflowaudit_changelist"), {"action": "stop"})
    assert [entry.workflow_id for entry in by_action.context["cl"].result_list] == ["cleanup"]
