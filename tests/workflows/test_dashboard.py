"""The Technical workflows dashboard: every workflow, its state, last run and a day × hour heat map."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from workflows.dashboard import dashboard_rows, workflows_with_last_runs
from workflows.display import RUN_STATUS_COLOURS
from workflows.heat_map import RUNS_PER_CELL, Links, format_duration, heat_map
from workflows.models import RunStatus, Trigger, WorkflowRun

URL = "/admin/workflows/dashboard/"
NOW = datetime(2026, 11, 28, 12, 30, tzinfo=ZoneInfo("UTC"))  # a Saturday


def make_run(workflow_id: str, status: str, at: datetime, *, reason: str = "", duration_s: float = 3.0) -> WorkflowRun:
    return WorkflowRun.objects.create(workflow_id=workflow_id, trigger=Trigger.SCHEDULE, status=status, created_at=at,
                                      started_at=at, finished_at=at + timedelta(seconds=duration_s),
                                      duration_s=duration_s, reason=reason)


def row_of(page: str, workflow_id: str) -> str:
    return re.search(rf'<tr id="workflow-{workflow_id}">(.*?)</tr>', page, re.DOTALL).group(1)


def test_heat_map_is_seven_days_of_24_hours_each_cell_with_the_most_serious_status(db):
    make_run("cleanup", RunStatus.SUCCEEDED, NOW - timedelta(minutes=10))
    failed = make_run("cleanup", RunStatus.FAILED, NOW - timedelta(minutes=5))
    make_run("cleanup", RunStatus.SUCCEEDED, NOW - timedelta(hours=30))  # Friday 06:30
    make_run("cleanup", RunStatus.SUCCEEDED, NOW - timedelta(days=7))  # the Saturday before: outside the map

    grid = heat_map(now=NOW).grid("cleanup")

    assert [day.day for day in grid] == [date(2026, 11, 22) + timedelta(days=n) for n in range(7)]
    assert [day.is_today for day in grid] == [False] * 6 + [True]
    assert all(len(day.cells) == 24 and [cell.hour for cell in day.cells] == list(range(24)) for day in grid)
    now_cell = grid[-1].cells[12]
    assert now_cell.status == RunStatus.FAILED
    assert now_cell.counts == {RunStatus.SUCCEEDED: 1, RunStatus.FAILED: 1}
    assert now_cell.title == "Sat 28 Nov 12:00–13:00: 1 failed, 1 succeeded"
    assert [run.id for run in now_cell.runs][0] == failed.pk
    assert grid[-2].cells[6].status == RunStatus.SUCCEEDED
    assert sum(bool(cell.counts) for day in grid for cell in day.cells) == 2
    assert [cell.css_class for cell in grid[-1].cells[11:15]] == ["cell", "cell status-failed", "cell future", "cell future"]


def test_heat_map_days_and_hours_are_those_of_the_instance_time_zone(db, settings):
    settings.TIME_ZONE = "Europe/Paris"
    make_run("cleanup", RunStatus.SUCCEEDED, datetime(2026, 11, 27, 23, 30, tzinfo=ZoneInfo("UTC")))

    grid = heat_map(now=NOW).grid("cleanup")

    assert grid[-1].day == date(2026, 11, 28)
    assert grid[-1].cells[0].status == RunStatus.SUCCEEDED  # 00:30 in Paris, on Saturday
    assert sum(bool(cell.counts) for day in grid for cell in day.cells) == 1


@pytest.mark.parametrize("time_zone", ["UTC", "Europe/Paris"])
def test_cell_lists_its_most_serious_runs_first_and_links_the_others(admin_client, settings, time_zone):
    settings.TIME_ZONE = time_zone
    hour = NOW.replace(minute=0) - timedelta(hours=2)  # Sat 10:00 UTC
    succeeded = [make_run("cleanup", RunStatus.SUCCEEDED, hour + timedelta(minutes=minute)) for minute in range(0, 49, 7)]
    failed = make_run("cleanup", RunStatus.FAILED, hour + timedelta(minutes=55), duration_s=75.0)
    next_hour = make_run("cleanup", RunStatus.SUCCEEDED, hour + timedelta(minutes=61))
    zone = ZoneInfo(time_zone)

    cell = heat_map(now=NOW).grid("cleanup")[-1].cells[hour.astimezone(zone).hour]

    assert cell.total == 8 and len(cell.runs) == RUNS_PER_CELL == 5 and cell.more == 3
    assert [run.id for run in cell.runs] == [failed.pk] + [run.pk for run in succeeded[:4]]
    assert cell.runs[0].description(zone) == f"✕ Failed · {failed.created_at.astimezone(zone):%H}:55:00 · 1 min 15 s"
    assert Links.reverse().run(failed.pk) == f"/admin/workflows/workflowrun/{failed.pk}/change/"
    listed = admin_client.get(cell.more_url(Links.reverse())).content.decode()
    for run in [*succeeded, failed]:
        assert f"/admin/workflows/workflowrun/{run.pk}/change/" in listed
    assert f"/admin/workflows/workflowrun/{next_hour.pk}/change/" not in listed


def test_cell_popover_on_the_page_lists_each_run_with_its_link(admin_client, time_machine):
    time_machine.move_to(NOW, tick=False)
    runs = [make_run("kpiSharing", RunStatus.SUCCEEDED, NOW - timedelta(minutes=minute)) for minute in (30, 20, 10)]

    page = row_of(admin_client.get(URL).content.decode(), "kpiSharing")

    popover = re.search(r'<div class="cell status-succeeded"[^>]*>(.*?)</div></div>', page).group(1)
    assert "Sat 28 Nov 12:00–13:00: 3 succeeded" in popover
    assert [int(run_id) for run_id in re.findall(r'<a href="/admin/workflows/workflowrun/(\d+)/change/">', popover)] == \
        [run.pk for run in runs]
    assert f"#{runs[0].pk}</a> Succeeded · 12:00:00 · 3.0 s</li>" in popover
    assert "more" not in popover


def test_a_failed_cell_has_its_own_colour_and_the_failure_symbol(admin_client, time_machine):
    time_machine.move_to(NOW, tick=False)
    make_run("kpiSharing", RunStatus.FAILED, NOW - timedelta(minutes=20))
    make_run("kpiSharing", RunStatus.SUCCEEDED, NOW - timedelta(hours=2))

    page = admin_client.get(URL).content.decode()
    row = row_of(page, "kpiSharing")

    assert len(set(RUN_STATUS_COLOURS.values())) == len(RUN_STATUS_COLOURS)
    failed_cell = '<div class="cell status-failed" tabindex="0" aria-label="Sat 28 Nov 12:00–13:00: 1 failed">'
    assert failed_cell + '<span class="mark" aria-hidden="true">✕</span>' in row
    assert re.search(r'<div class="cell status-succeeded"[^>]*><div class="runs', row)  # no symbol
    assert f".heat .cell.status-failed, .legend .swatch.status-failed {{ background: {RUN_STATUS_COLOURS['failed']}; }}" in page
    assert '<span class="swatch status-failed">✕</span>Failed</li>' in page
    assert "✕ Failed ·" in row  # in the popover too
    assert '<strong class="failed-count">✕ 1 failed</strong>' in row


def test_last_run_is_the_last_that_did_work_and_a_newer_skip_is_shown_apart(admin_client, time_machine):
    time_machine.move_to(NOW, tick=False)
    worked = make_run("kpiSharing", RunStatus.SUCCEEDED, NOW - timedelta(minutes=40), duration_s=250.0)
    skip = make_run("kpiSharing", RunStatus.SKIPPED, NOW - timedelta(minutes=10),
                    reason=f"already running (run #{worked.pk})")
    make_run("cleanup", RunStatus.SKIPPED, NOW - timedelta(hours=3), reason="workflow paused")
    cleanup_work = make_run("cleanup", RunStatus.FAILED, NOW - timedelta(hours=2), reason="boom")
    only_skip = make_run("billing", RunStatus.SKIPPED, NOW - timedelta(hours=1), reason="workflow paused")

    by_id = {workflow.pk: runs for workflow, runs in workflows_with_last_runs()}
    page = admin_client.get(URL).content.decode()

    assert (by_id["kpiSharing"].work, by_id["kpiSharing"].skip) == (worked, skip)
    assert (by_id["cleanup"].work, by_id["cleanup"].skip) == (cleanup_work, None)  # the skip is older
    assert (by_id["billing"].work, by_id["billing"].skip) == (None, only_skip)
    assert (by_id["abTesting"].work, by_id["abTesting"].skip) == (None, None)
    kpi = row_of(page, "kpiSharing")
    last_run = re.search(r'<td class="last-run">(.*?)</td>', kpi, re.DOTALL).group(1)
    assert 'class="run-status status-succeeded"' in last_run and f"#{worked.pk}, Sat 28 Nov 11:50" in last_run
    assert "4 min 10 s" in last_run
    assert f'Since then <a href="/admin/workflows/workflowrun/{skip.pk}/change/">skipped</a>' in last_run
    assert f"already running (run #{worked.pk})" in last_run
    assert "Since then" not in row_of(page, "cleanup") and "boom" in row_of(page, "cleanup")
    billing = re.search(r'<td class="last-run">(.*?)</td>', row_of(page, "billing"), re.DOTALL).group(1)
    assert billing.strip().startswith("—") and "Skipped</a> <span" in billing and "Since then" not in billing


def test_footer_gives_the_time_zone_and_the_time_without_a_double_period(admin_client, time_machine, settings):
    settings.TIME_ZONE = "Europe/Paris"
    time_machine.move_to(NOW, tick=False)

    page = admin_client.get(URL).content.decode()

    assert '<p class="quiet" id="page-drawn">Times in Europe/Paris; page drawn Sat 28 Nov 2026, 13:30:00.</p>' in page
    assert ".." not in re.search(r'id="page-drawn">(.*?)</p>', page).group(1)


@pytest.mark.parametrize("seconds, text", [(None, "—"), (2.04, "2.0 s"), (59.96, "1 min 00 s"), (250, "4 min 10 s"),
                                           (3900, "1 h 05 min")])
def test_durations_read_in_the_largest_sensible_unit(seconds, text):
    assert format_duration(seconds) == text


def test_dashboard_lists_every_workflow_with_state_schedule_and_heat_map(admin_client, time_machine):
    time_machine.move_to(NOW, tick=False)
    run = make_run("kpiSharing", RunStatus.FAILED, NOW - timedelta(minutes=20))

    response = admin_client.get(URL)

    assert response.status_code == 200
    page = response.content.decode()
    for workflow_id in ("abTesting", "cleanup", "kpiSharing", "updateEventsStatus", "reportSendingNow"):
        assert f'id="workflow-{workflow_id}"' in page
        assert row_of(page, workflow_id).count('class="cell') == 7 * 24
    assert "Every 15 minutes" in page and "On demand" in page
    assert reverse("admin:workflows_workflowrun_change", args=[run.pk]) in page
    assert '<span class="day">Sun 22</span>' in page and '<span class="day today">Sat 28</span>' in page
    assert [int(hour) for hour in re.findall(r'<span class="hour">(\d\d)</span>', page)] == list(range(0, 24, 3))


def test_dashboard_queries_do_not_grow_with_runs_or_workflows(admin_client, time_machine):
    time_machine.move_to(NOW, tick=False)
    make_run("cleanup", RunStatus.SUCCEEDED, NOW - timedelta(hours=1))
    with CaptureQueriesContext(connection) as few:
        admin_client.get(URL)
    for hour in range(1, 7 * 24, 5):
        start = NOW.replace(minute=0) - timedelta(hours=hour)
        for workflow_id in ("cleanup", "kpiSharing", "billing", "abTesting"):
            for minute in range(0, 60, 8):
                status = RunStatus.FAILED if minute == 16 else RunStatus.SUCCEEDED
                make_run(workflow_id, status, start + timedelta(minutes=minute))
        make_run("kpiSharing", RunStatus.SKIPPED, start + timedelta(minutes=3), reason="already running")

    with CaptureQueriesContext(connection) as many:
        page = admin_client.get(URL).content.decode()

    assert len(many.captured_queries) == len(few.captured_queries) <= 10
    assert "+3 more" in page  # 8 runs an hour, 5 listed


def test_rows_come_in_a_fixed_number_of_queries(db, django_assert_num_queries):
    make_run("cleanup", RunStatus.SUCCEEDED, NOW - timedelta(hours=1))
    with django_assert_num_queries(4):  # workflows with last-run ids, those runs, the hourly counts, the listed runs
        rows = dashboard_rows(now=NOW)
    assert len(rows) >= 15


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
    summary = re.search(r'<p class="errornote" id="drift-summary">(.*?)</p>', page, re.DOTALL).group(1)
    assert "2 schedules drifted" in summary
    assert re.findall(r'<a href="[^"]+">(\w+)</a>', summary) == ["cleanup", "kpiSharing"]


def test_dashboard_without_drift_has_no_drift_summary(admin_client):
    assert 'id="drift-summary"' not in admin_client.get(URL).content.decode()
