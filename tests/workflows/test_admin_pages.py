"""What the workflow admin's pages say and where they lead: the section first on the admin index
with the dashboard, "View site" to the dashboard, a workflow's History with its audit trail, rows
without repeated captions, counts in proper plurals, list columns that carry their full values."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.workflows.admin_helpers import change_url, edit, staff_client
from workflows import commands
from workflows.audit import audit
from workflows.models import LogLevel, RunStatus, Trigger, Workflow, WorkflowLog, WorkflowRun

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/workflows/dashboard/"


def history_url(workflow_id: str) -> str:
    return reverse("admin:workflows_workflow_history", args=[workflow_id])


# -- the admin index and "View site" --------------------------------------------------------------

def test_the_index_lists_technical_workflows_first_opening_on_the_dashboard(admin_client: Client) -> None:
    response = admin_client.get(reverse("admin:index"))

    apps = response.context["app_list"]
    assert apps[0]["name"] == "Technical workflows"
    names = [str(app["name"]) for app in apps[1:]]
    assert names == sorted(names, key=str.lower)  # the others as Django orders them
    assert [(model["name"], model["admin_url"]) for model in apps[0]["models"]] == [
        ("Dashboard and heat map", DASHBOARD),
        ("Workflows", reverse("admin:workflows_workflow_changelist")),
        ("Workflow runs", reverse("admin:workflows_workflowrun_changelist")),
        ("Journal entries", reverse("admin:workflows_workflowlog_changelist")),
        ("Audit trail entries", reverse("admin:workflows_workflowaudit_changelist")),
    ]
    page = response.content.decode()
    assert f'<a href="{DASHBOARD}">Dashboard and heat map</a>' in page
    assert page.index("Technical workflows") < page.index("Campaign")


def test_the_navigation_sidebar_and_the_app_page_list_the_dashboard_too(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:app_list", args=["workflows"])).content.decode()
    assert f'<a href="{DASHBOARD}">Dashboard and heat map</a>' in page
    sidebar = admin_client.get(reverse("admin:campaign_campaign_changelist")).context["available_apps"]
    assert sidebar[0]["models"][0]["admin_url"] == DASHBOARD


def test_view_site_leads_to_the_dashboard(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert f'<a href="{DASHBOARD}">View site</a>' in page
    assert admin_client.get(DASHBOARD).status_code == 200


def test_staff_who_may_not_read_the_workflows_see_neither_the_dashboard_nor_view_site(django_user_model: Any) -> None:
    client = staff_client(django_user_model)
    page = client.get(reverse("admin:index")).content.decode()
    assert "View site" not in page and "Dashboard and heat map" not in page


def test_a_reader_of_the_workflows_gets_the_dashboard_row_and_view_site(django_user_model: Any) -> None:
    client = staff_client(django_user_model, "view_workflow")
    response = client.get(reverse("admin:index"))
    assert response.context["app_list"][0]["models"][0]["name"] == "Dashboard and heat map"
    assert f'<a href="{DASHBOARD}">View site</a>' in response.content.decode()


# -- a workflow's History ------------------------------------------------------------------------

def test_history_shows_the_audit_trail_of_commands_and_edits(admin_client: Client, admin_user: Any) -> None:
    commands.pause("cleanup", actor="cli:ops")
    admin_client.post(reverse("admin:workflows_workflow_command", args=["cleanup", "resume"]))
    edit(admin_client, "cleanup", history_days="45")
    commands.pause("billing", actor="cli:ops")  # another workflow's: not shown

    response = admin_client.get(history_url("cleanup"))

    page = response.content.decode()
    assert [(entry["actor"], entry["action"]) for entry in response.context["audit_entries"]] == [
        ("admin", "edit"), ("admin", "resume"), ("cli:ops", "pause")]
    assert "<code>history_days</code>: 30 → 45" in page
    assert "<code>state</code>: started → paused" in page
    assert "3 entries, also in" in page
    assert f'href="{reverse("admin:workflows_workflowaudit_changelist")}?workflow__id__exact=cleanup"' in page
    assert "Saves of this page's form, as the admin records them" in page  # Django's own record follows


def test_history_shows_the_most_recent_entries_and_links_to_all(admin_client: Client) -> None:
    for number in range(55):
        audit("cleanup", "run now", actor="cli:ops", note=f"run {number}")

    response = admin_client.get(history_url("cleanup"))

    assert len(response.context["audit_entries"]) == 50
    assert response.context["audit_entries"][0]["note"] == "run 54"
    assert "The 50 most recent of 55 entries" in response.content.decode()


def test_history_leaves_the_audit_trail_out_for_those_who_may_not_read_it(django_user_model: Any) -> None:
    commands.pause("cleanup", actor="cli:ops")
    page = staff_client(django_user_model, "view_workflow").get(history_url("cleanup")).content.decode()
    assert 'id="workflow-audit"' not in page and "cli:ops" not in page


# -- rows without captions, counts in plurals ----------------------------------------------------

def test_run_page_rows_carry_no_object_caption(admin_client: Client) -> None:
    run = commands.run_now("abTesting", actor="test", sync=True, force=True)
    assert run.status == RunStatus.SUCCEEDED

    page = admin_client.get(reverse("admin:workflows_workflowrun_change", args=[run.pk])).content.decode()

    assert "WorkflowLog object" not in page
    assert "decide_winners (succeeded)" not in page
    assert "decide_winners" in page and f"Run #{run.pk} started" in page
    assert "inline-deletelink" not in page and "js-inline-admin-formset" not in page


def test_list_counts_use_the_plural_of_their_entries(admin_client: Client) -> None:
    audit("cleanup", "start", actor="test")
    one = admin_client.get(reverse("admin:workflows_workflowaudit_changelist")).content.decode()
    assert "1 audit trail entry" in one
    audit("cleanup", "stop", actor="test")
    two = admin_client.get(reverse("admin:workflows_workflowaudit_changelist")).content.decode()
    assert "2 audit trail entries" in two
    for message in ("first", "second"):
        WorkflowLog.objects.create(workflow_id="cleanup", level=LogLevel.INFO, message=message)
    assert "2 journal entries" in admin_client.get(reverse("admin:workflows_workflowlog_changelist")).content.decode()


def test_a_property_error_and_help_put_a_unit_of_one_in_the_singular(admin_client: Client) -> None:
    response = edit(admin_client, "cleanup", property__log_batch_size="0")
    assert response.context["adminform"].form.errors["property__log_batch_size"] == [
        "log_batch_size: must be at least 1 row, got 0"]


# -- list columns --------------------------------------------------------------------------------

def test_the_list_shows_consecutive_errors_under_the_state_and_clips_long_counters(admin_client: Client) -> None:
    Workflow.objects.filter(pk="kpiSharing").update(consecutive_errors=1)
    Workflow.objects.filter(pk="billing").update(consecutive_errors=3)
    counters = {f"counter_{number}": number for number in range(30)}
    WorkflowRun.objects.create(workflow_id="cleanup", trigger=Trigger.SCHEDULE, status=RunStatus.SUCCEEDED, counters=counters)

    page = admin_client.get(reverse("admin:workflows_workflow_changelist")).content.decode()

    assert '<span class="consecutive-errors">1 consecutive error</span>' in page
    assert '<span class="consecutive-errors">3 consecutive errors</span>' in page
    full = ", ".join(f"{key}={value}" for key, value in counters.items())
    assert f'<span class="clipped" title="{full}">{full}</span>' in page
    assert f'<a href="{change_url("cleanup")}">cleanup<span class="workflow-label">Database cleanup</span></a>' in page


def test_journal_and_audit_lists_keep_the_whole_message_and_note_on_hover(admin_client: Client) -> None:
    long = "disk full on /var " + "x" * 500
    WorkflowLog.objects.create(workflow_id="cleanup", level=LogLevel.ERROR, message=long)
    audit("cleanup", "repair schedule", actor="system", note=long)

    for url in (reverse("admin:workflows_workflowlog_changelist"), reverse("admin:workflows_workflowaudit_changelist")):
        assert f'<span class="clipped" title="{long}">{long}</span>' in admin_client.get(url).content.decode()
