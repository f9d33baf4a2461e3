"""/healthz: database, broker, beat heartbeat, schedule drift and overdue workflows, as a load
balancer sees them."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from project.celery import app as celery_app
from workflows import commands, health, schedules
from workflows.models import SchedulerHeartbeat, Workflow, WorkflowState
from workflows.scheduler import HEARTBEAT_INTERVAL_S, DatabaseScheduler

#: Nothing listens on port 1 of the loopback: a connection is refused at once.
UNREACHABLE_BROKER = "redis://:not-for-your-eyes@127.0.0.1:1/0"

pytestmark = pytest.mark.django_db


@pytest.fixture
def healthy() -> None:
    """Beat ticked just now and every schedule fired just now: only what a test breaks fails."""
    now = timezone.now()
    SchedulerHeartbeat.objects.update_or_create(pk=1, defaults={"beat_at": now, "hostname": "beat-host"})
    PeriodicTask.objects.update(last_run_at=now)


@pytest.fixture
def broker_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = celery_app.conf.broker_url
    # Celery reads CELERY_BROKER_URL from the environment before its own conf (CI sets it).
    monkeypatch.setenv("CELERY_BROKER_URL", UNREACHABLE_BROKER)
    celery_app.conf.broker_url = UNREACHABLE_BROKER
    try:
        yield
    finally:
        celery_app.conf.broker_url = saved
        monkeypatch.undo()
        assert celery_app.conf.broker_url == saved, "the broker override leaked into later tests"


def get_health(client) -> tuple[int, dict]:
    response = client.get("/healthz")
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


def test_healthz_is_200_when_database_broker_and_beat_are_fine(client, healthy) -> None:
    status, body = get_health(client)

    assert status == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "beat", "schedules", "workflows", "partitions"}
    for name, check in body["checks"].items():
        assert check["ok"] is True, (name, check)
        assert check["ms"] >= 0
        assert check["message"]


def test_healthz_needs_no_login_and_is_never_cached(client, healthy) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]


def test_healthz_refuses_other_methods_than_get(client) -> None:
    assert client.post("/healthz").status_code == 405
    assert client.delete("/healthz").status_code == 405


def test_healthz_is_503_when_the_broker_is_unreachable(client, healthy, broker_down) -> None:
    status, body = get_health(client)

    assert status == 503
    assert body["status"] == "fail"
    assert body["checks"]["broker"]["ok"] is False
    assert "unreachable" in body["checks"]["broker"]["message"]
    assert "127.0.0.1:1" in body["checks"]["broker"]["message"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ms"] < health.BROKER_TIMEOUT_S * 2 * 1000


def test_healthz_never_shows_the_broker_password(client, healthy, broker_down) -> None:
    response = client.get("/healthz")

    assert response.status_code == 503
    assert b"not-for-your-eyes" not in response.content


def test_filesystem_broker_fails_when_its_folder_is_missing(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # it would win over the app's conf
    folder = tmp_path / "queue"
    app = celery_app.__class__("probe", set_as_current=False)
    app.conf.broker_url = "filesystem://"
    app.conf.broker_transport_options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}

    missing = health.check_broker(app=app)
    folder.mkdir()
    present = health.check_broker(app=app)

    assert missing.ok is False
    assert "missing" in missing.message
    assert present.ok is True


def test_healthz_is_503_when_beat_never_ticked(client, healthy) -> None:
    SchedulerHeartbeat.objects.all().delete()

    status, body = get_health(client)

    assert status == 503
    beat = body["checks"]["beat"]
    assert beat["ok"] is False
    assert "never ticked" in beat["message"]
    assert beat["last_tick_at"] is None


def test_healthz_is_503_when_the_heartbeat_is_older_than_the_threshold(client, healthy) -> None:
    ticked_at = datetime.datetime(2030, 3, 4, 10, 0, 0, tzinfo=datetime.UTC)
    with time_machine.travel(ticked_at, tick=False):
        SchedulerHeartbeat.objects.update_or_create(pk=1, defaults={"beat_at": timezone.now()})
        PeriodicTask.objects.update(last_run_at=timezone.now())
    limit = health.DEFAULT_BEAT_STALE_SECONDS

    with time_machine.travel(ticked_at + datetime.timedelta(seconds=limit - 1), tick=False):
        fresh_status, fresh = get_health(client)
    with time_machine.travel(ticked_at + datetime.timedelta(seconds=limit + 1), tick=False):
        stale_status, stale = get_health(client)

    assert fresh_status == 200, fresh
    assert stale_status == 503
    assert stale["checks"]["beat"]["ok"] is False
    assert "2030-03-04T10:00:00+00:00" in stale["checks"]["beat"]["message"]
    assert stale["checks"]["beat"]["age_s"] == limit + 1


def test_beat_threshold_comes_from_the_setting_else_the_default(settings) -> None:
    SchedulerHeartbeat.objects.update_or_create(pk=1, defaults={"beat_at": timezone.now() - datetime.timedelta(seconds=200)})

    settings.WORKFLOW_BEAT_STALE_SECONDS = None  # unset in the environment
    assert health.check_beat().ok is False  # default: 90 s
    settings.WORKFLOW_BEAT_STALE_SECONDS = 600
    assert health.check_beat().ok is True
    settings.WORKFLOW_BEAT_STALE_SECONDS = 100
    assert health.check_beat().ok is False


def test_overdue_grace_comes_from_the_setting_else_the_default(settings) -> None:
    settings.WORKFLOW_OVERDUE_GRACE_SECONDS = None
    assert health.check_workflows().details["grace_s"] == health.DEFAULT_OVERDUE_GRACE_SECONDS
    settings.WORKFLOW_OVERDUE_GRACE_SECONDS = 42
    assert health.check_workflows().details["grace_s"] == 42


def every_quarter_hour(workflow_id: str) -> PeriodicTask:
    task = Workflow.objects.select_related("periodic_task").get(pk=workflow_id).periodic_task
    assert task is not None and task.crontab is not None
    assert (task.crontab.minute, task.crontab.hour) == ("*/15", "*"), "kpiSharing runs every 15 minutes"
    return task


def test_a_started_workflow_whose_slot_passed_beyond_the_grace_is_listed_overdue(client, healthy) -> None:
    task = every_quarter_hour("kpiSharing")
    last_run = datetime.datetime(2030, 3, 4, 12, 0, 0, tzinfo=datetime.UTC)
    grace = health.DEFAULT_OVERDUE_GRACE_SECONDS
    PeriodicTask.objects.update(last_run_at=last_run + datetime.timedelta(minutes=10))  # every other schedule: fresh
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=last_run)
    next_slot = last_run + datetime.timedelta(minutes=15)

    with time_machine.travel(next_slot + datetime.timedelta(seconds=grace - 5), tick=False):
        SchedulerHeartbeat.objects.update_or_create(pk=1, defaults={"beat_at": timezone.now()})
        within_grace = health.check_workflows()
    with time_machine.travel(next_slot + datetime.timedelta(seconds=grace + 5), tick=False):
        SchedulerHeartbeat.objects.update_or_create(pk=1, defaults={"beat_at": timezone.now()})
        status, body = get_health(client)

    assert within_grace.ok is True, within_grace
    assert status == 503
    workflows = body["checks"]["workflows"]
    assert workflows["ok"] is False
    assert [item["workflow"] for item in workflows["overdue"]] == ["kpiSharing"]
    overdue = workflows["overdue"][0]
    assert overdue["due_at"] == "2030-03-04T12:15:00+00:00"
    assert overdue["late_s"] == grace + 5
    assert "kpiSharing" in workflows["message"]
    assert body["checks"]["beat"]["ok"] is True


def test_a_paused_workflow_is_never_overdue(healthy) -> None:
    task = every_quarter_hour("kpiSharing")
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=timezone.now() - datetime.timedelta(days=2))
    Workflow.objects.filter(pk="kpiSharing").update(state=WorkflowState.PAUSED)

    assert health.overdue_workflows(grace_s=300) == []


def test_a_started_workflow_with_a_disabled_schedule_is_reported_as_drift_not_as_overdue(client, healthy) -> None:
    PeriodicTask.objects.filter(name="cleanup").update(enabled=False)

    status, body = get_health(client)

    assert status == 503
    assert body["checks"]["workflows"]["ok"] is True, "a disabled schedule is never due"
    assert body["checks"]["schedules"]["drift"] == [
        {"workflow": "cleanup", "problems": ["its PeriodicTask is disabled although the workflow is started"]},
    ]


def test_a_schedule_never_fired_counts_from_its_last_change(healthy) -> None:
    task = every_quarter_hour("kpiSharing")
    changed_at = timezone.now() - datetime.timedelta(hours=3)
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=None, date_changed=changed_at)

    overdue = health.overdue_workflows(grace_s=300)

    assert [item.workflow for item in overdue] == ["kpiSharing"]
    assert overdue[0].last_run_at is None
    assert overdue[0].late_s > 2 * 3600


# --- schedule drift -----------------------------------------------------------------------------

def test_a_deleted_periodic_task_turns_healthz_to_503_naming_the_workflow_and_repair_restores_it(
    client, healthy,
) -> None:
    workflow = Workflow.objects.get(pk="billing")
    schedules.set_crontab(workflow, "15 3 * * 1-5", "Europe/Paris")
    PeriodicTask.objects.filter(name="billing").delete()  # as django-celery-beat's admin does

    status, body = get_health(client)

    assert status == 503
    check = body["checks"]["schedules"]
    assert check["ok"] is False
    assert check["drift"] == [{"workflow": "billing", "problems": ["its PeriodicTask is missing"]}]
    assert check["message"] == (
        "1 workflow schedule(s) drifted: billing (its PeriodicTask is missing). "
        "Repair with `manage.py workflow repair`."
    )

    call_command("workflow", "repair", stdout=StringIO())

    status, body = get_health(client)
    assert status == 200, body
    task = Workflow.objects.select_related("periodic_task__crontab").get(pk="billing").periodic_task
    assert (schedules.crontab_text(task.crontab), str(task.crontab.timezone)) == ("15 3 * * 1-5", "Europe/Paris")


def test_a_schedule_sending_another_task_is_named_with_both_task_names(healthy) -> None:
    PeriodicTask.objects.filter(name="cleanup").update(task="workflows.billing")

    result = health.check_schedules()

    assert result.ok is False
    assert result.details["drift"] == [{
        "workflow": "cleanup",
        "problems": ["its PeriodicTask sends 'workflows.billing' instead of 'workflows.cleanup'"],
    }]


@pytest.mark.parametrize("command", [commands.pause, commands.stop])
def test_the_disabled_schedule_of_a_paused_or_stopped_workflow_is_no_drift(client, healthy, command) -> None:
    command("kpiSharing", actor="test")
    assert PeriodicTask.objects.get(name="kpiSharing").enabled is False

    status, body = get_health(client)

    assert status == 200, body
    assert body["checks"]["schedules"]["drift"] == []


def test_an_enabled_schedule_of_a_paused_workflow_is_drift(healthy) -> None:
    commands.pause("kpiSharing", actor="test")
    PeriodicTask.objects.filter(name="kpiSharing").update(enabled=True)  # e.g. the beat admin's "Enable" action

    assert [item.as_json() for item in health.drifted_workflows()] == [
        {"workflow": "kpiSharing", "problems": ["its PeriodicTask is enabled although the workflow is paused"]},
    ]


def test_an_on_demand_workflow_never_drifts(healthy) -> None:
    reports = Workflow.objects.get(pk="reportSendingNow")
    assert reports.periodic_task_id is None

    assert health.check_schedules().ok is True
    assert schedules.drift_of(reports) == []


def test_healthz_reports_a_failed_database_without_crashing(monkeypatch) -> None:
    from django.db import OperationalError

    def broken(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(SchedulerHeartbeat.objects, "filter", broken)

    result = health.check_beat()

    assert result.ok is False
    assert "server closed the connection" in result.message


# --- the heartbeat itself (written by workflows.scheduler) -----------------------------------

def test_beat_tick_writes_the_heartbeat_and_never_sleeps_past_a_lease_renewal(monkeypatch) -> None:
    # The parent tick would send due tasks to the broker; its scheduling is django-celery-beat's.
    monkeypatch.setattr("django_celery_beat.schedulers.DatabaseScheduler.tick", lambda self, *a, **k: 300.0)
    scheduler = DatabaseScheduler(app=celery_app, lazy=True)
    start = datetime.datetime(2030, 3, 4, 8, 0, 0, tzinfo=datetime.UTC)

    with time_machine.travel(start, tick=False):
        sleep_s = scheduler.tick()
    with time_machine.travel(start + datetime.timedelta(seconds=HEARTBEAT_INTERVAL_S - 1), tick=False):
        scheduler.tick()
        after_a_short_while = SchedulerHeartbeat.objects.get(pk=1).beat_at
    with time_machine.travel(start + datetime.timedelta(seconds=HEARTBEAT_INTERVAL_S), tick=False):
        scheduler.tick()
        after_an_interval = SchedulerHeartbeat.objects.get(pk=1).beat_at

    assert sleep_s == scheduler.leadership.renew_every_s < HEARTBEAT_INTERVAL_S
    assert after_a_short_while == start
    assert after_an_interval == start + datetime.timedelta(seconds=HEARTBEAT_INTERVAL_S)


def test_a_heartbeat_from_the_scheduler_makes_the_beat_check_pass(monkeypatch) -> None:
    monkeypatch.setattr("django_celery_beat.schedulers.DatabaseScheduler.tick", lambda self, *a, **k: 5.0)
    assert health.check_beat().ok is False

    DatabaseScheduler(app=celery_app, lazy=True).tick()

    assert health.check_beat().ok is True
