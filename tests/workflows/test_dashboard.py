"""The Technical workflows dashboard: every workflow, its state and runs as a heat map."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from workflows.dashboard import heat_map
from workflows.models import RunStatus, Trigger, WorkflowRun

URL = "/admin/workflows/dashboard/"
NOW = datetime(2026, 11, 28, 12, 30, tzinfo=ZoneInfo("UTC"))


def make_run(workflow_id: str, status: str, at: datetime) -> WorkflowRun:
    return WorkflowRun.objects.create(workflow_id=workflow_id, trigger=Trigger.SCHEDULE, status=status, created_at=at,
                                      started_at=at, finished_at=at + timedelta(seconds=3), duration_s=3.0)


def test_heat_map_has_one_cell_per_hour_with_the_most_serious_status(db):
    make_run("cleanup", RunStatus.SUCCEEDED, NOW - timedelta(minutes=10))
    failed = make_run("cleanup", RunStatus.FAILED, NOW - timedelta(minutes=5))
    make_run("cleanup", RunStatus.SUCCEEDED, NOW - timedelta(hours=30))
    make_run("cleanup", RunStatus.SUCCEEDED, NOW - timedelta(days=8))  # outside the map

    runs = heat_map(now=NOW)
    row = runs.row("cleanup")

    assert len(row) == 7 * 24
    assert row[-1].status == RunStatus.FAILED
    assert row[-1].counts == {RunStatus.SUCCEEDED: 1, RunStatus.FAILED: 1}
    assert row[-1].last_run_id == failed.pk
    assert "1 failed, 1 succeeded" in row[-1].title
    assert row[-31].status == RunStatus.SUCCEEDED
    assert sum(bool(cell.counts) for cell in row) == 2
    assert all(not cell.counts for cell in runs.row("billing"))


def test_dashboard_lists_every_workflow_with_state_schedule_and_heat_map(admin_client, time_machine):
    time_machine.move_to(NOW, tick=False)
    run = make_run("kpiSharing", RunStatus.FAILED, NOW - timedelta(minutes=20))

    response = admin_client.get(URL)

    assert response.status_code == 200
    page = response.content.decode()
    for workflow_id in ("abTesting", "cleanup", "kpiSharing", "updateEventsStatus", "reportSendingNow"):
        assert f'id="workflow-{workflow_id}"' in page
    assert "Every 15 minutes" in page and "On demand" in page
    assert reverse("admin:workflows_workflowrun_change", args=[run.pk]) in page
    assert 'class="cell status-failed"' in page


@pytest.mark.parametrize("permissions, expected", [((), 403), (("view_workflow",), 200)])
def test_dashboard_needs_the_view_permission(client, django_user_model, permissions, expected):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    client.force_login(user)

    assert client.get(URL).status_code == expected


def test_dashboard_sends_non_staff_to_the_login_page(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("someone", password="pw"))

    response = client.get(URL)

    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_dashboard_warns_of_a_drifted_schedule(admin_client):
    PeriodicTask.objects.filter(name="kpiSharing").delete()
    PeriodicTask.objects.filter(name="cleanup").update(task="workflows.billing")

    page = admin_client.get(URL).content.decode()

    assert page.count('class="schedule-drift"') == 2
    assert "⚠ Schedule drifted: its PeriodicTask is missing</span>" in page
    assert "At 04:00<br>" in page  # cleanup's schedule still exists: shown with its warning
    assert "its PeriodicTask sends &#x27;workflows.billing&#x27; instead of &#x27;workflows.cleanup&#x27;" in page
