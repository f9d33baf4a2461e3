"""Schedules: created from the definitions, never overwritten, validated, DST-safe, no bursts."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django_celery_beat.models import CrontabSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from campaign.celery import app
from workflows import commands, schedules
from workflows.definition import all_definitions
from workflows.models import Workflow
from workflows.scheduler import DatabaseScheduler

#: SPEC §5's schedule table.
SPEC_CRONTABS = {
    "abTesting": "0 0 * * *",
    "billing": "0 1 * * *",
    "cleanup": "0 4 * * *",
    "forecasting": "0 1 * * *",
    "importSharedAudience": "0 * * * *",
    "reportSendingNow": None,
    "kpiReconciliation": "20 4 * * *",
    "mobileAppOptOutMgt": "0 1,7,13,19 * * *",
    "mcSynch_local": "0 * * * *",
    "reportingAggregates": "0 2 * * *",
    "kpiSharing": "*/15 * * * *",
    "updateDeliveryExecInfo": "*/10 * * * *",
    "updateDeliveryIndicators": "0 * * * *",
    "updateEventsStatus": "*/10 * * * *",
    "deliverabilityUpdate": "0 2 * * *",
}


def test_all_15_workflows_are_declared_with_stable_task_names():
    builtin = {d.id: d for d in all_definitions() if d.id in SPEC_CRONTABS}
    assert set(builtin) == set(SPEC_CRONTABS)
    assert {d.task_name for d in builtin.values()} == {f"workflows.{workflow_id}" for workflow_id in SPEC_CRONTABS}
    assert all(f"workflows.{workflow_id}" in app.tasks for workflow_id in SPEC_CRONTABS)


def test_every_workflow_has_the_spec_schedule_after_migrate(db):
    for workflow_id, crontab in SPEC_CRONTABS.items():
        workflow = Workflow.objects.select_related("periodic_task__crontab").get(pk=workflow_id)
        assert schedules.schedule_summary(workflow)["crontab"] == crontab, workflow_id
        if crontab:
            task = workflow.periodic_task
            assert (task.name, task.task, json.loads(task.kwargs)) == (workflow_id, f"workflows.{workflow_id}", {"trigger": "schedule"})
            assert task.enabled


def test_schedules_in_words():
    assert schedules.describe("*/15 * * * *") == "Every 15 minutes"
    assert schedules.describe("0 * * * *") == "Every hour"
    assert schedules.describe("0 4 * * *") == "At 04:00"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_edited_crontab_survives_migrate_and_a_beat_restart():
    workflow = Workflow.objects.get(pk="cleanup")
    schedules.set_crontab(workflow, "30 5 * * 1-5", "Europe/Paris")

    call_command("migrate", verbosity=0)
    scheduler = DatabaseScheduler(app=app, lazy=True)
    scheduler.setup_schedule()
    scheduler.sync()

    task = PeriodicTask.objects.get(name="cleanup")
    assert schedules.crontab_text(task.crontab) == "30 5 * * 1-5"
    assert str(task.crontab.timezone) == "Europe/Paris"
    assert PeriodicTask.objects.filter(name="cleanup").count() == 1


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_deleted_schedule_is_recreated_by_migrate():
    Workflow.objects.get(pk="billing").periodic_task.delete()

    call_command("migrate", verbosity=0)

    assert schedules.crontab_text(Workflow.objects.get(pk="billing").periodic_task.crontab) == "0 1 * * *"


@pytest.mark.parametrize("text, message", [
    ("0 4 * *", "five fields"),
    ("61 * * * *", "Invalid crontab"),
    ("0 0 31 2 *", "never"),
    ("0 0 30 2 *", "never"),
    ("* * * * * *", "five fields"),
    ("a b c d e", "Invalid crontab"),
])
def test_invalid_crontabs_are_refused_with_a_message(text, message):
    with pytest.raises(ValidationError, match=message):
        schedules.parse_crontab(text)


def test_rare_but_real_crontabs_are_accepted():
    schedules.parse_crontab("0 0 29 2 *")  # leap days
    schedules.parse_crontab("0 0 29 2 1")  # 29 February on a Monday: once in 28 years or so


def test_an_invalid_crontab_changes_nothing(db):
    workflow = Workflow.objects.get(pk="cleanup")
    with pytest.raises(ValidationError):
        schedules.set_crontab(workflow, "0 0 31 2 *", "UTC")
    assert schedules.crontab_text(PeriodicTask.objects.get(name="cleanup").crontab) == "0 4 * * *"


def test_an_unknown_time_zone_is_refused(db):
    with pytest.raises(ValidationError, match="Unknown time zone"):
        schedules.set_crontab(Workflow.objects.get(pk="cleanup"), "0 4 * * *", "Mars/Olympus")


def test_pause_disables_the_schedule_and_resume_fires_no_burst_of_missed_slots(db, time_machine):
    time_machine.move_to(datetime(2026, 6, 1, 8, 0, tzinfo=ZoneInfo("UTC")), tick=False)
    commands.pause("updateDeliveryExecInfo", actor="test")
    assert not PeriodicTask.objects.get(name="updateDeliveryExecInfo").enabled

    time_machine.move_to(datetime(2026, 6, 1, 14, 3, tzinfo=ZoneInfo("UTC")), tick=False)  # 36 slots missed
    commands.resume("updateDeliveryExecInfo", actor="test")

    entry = ModelEntry(PeriodicTask.objects.get(name="updateDeliveryExecInfo"), app=app)
    due, next_check = entry.is_due()
    assert not due, "no catch-up run on re-enable"
    assert 0 < next_check <= 7 * 60, "the next regular slot (14:10)"


def fires_per_local_day(crontab: str, zone: str, start: datetime, hours: int, time_machine) -> dict[str, int]:  # noqa: ANN001
    """Drive django-celery-beat's own entry minute by minute, as beat would, and count firings."""
    schedule = CrontabSchedule.objects.create(
        minute=crontab.split()[0], hour=crontab.split()[1], day_of_month="*", month_of_year="*", day_of_week="*",
        timezone=zone)
    time_machine.move_to(start, tick=False)
    task = PeriodicTask.objects.create(name=f"dst {crontab} {zone} {start:%Y-%m-%d}", task="workflows.cleanup", crontab=schedule)
    entry = ModelEntry(task, app=app)
    fired: dict[str, int] = {}
    moment = start
    while moment < start + timedelta(hours=hours):
        moment += timedelta(minutes=1)
        time_machine.move_to(moment, tick=False)
        due, _ = entry.is_due()
        if due:
            day = moment.astimezone(ZoneInfo(zone)).date().isoformat()
            fired[day] = fired.get(day, 0) + 1
            entry = next(entry)
    return fired


@pytest.mark.parametrize("crontab", ["0 4 * * *", "30 2 * * *", "0 1 * * *"])
def test_a_daily_job_fires_once_on_each_daylight_saving_change_day(db, settings, time_machine, crontab):
    zone = "Europe/Paris"
    spring = fires_per_local_day(crontab, zone, datetime(2026, 3, 28, 12, 0, tzinfo=ZoneInfo(zone)), 48, time_machine)
    assert spring == {"2026-03-29": 1, "2026-03-30": 1}
    autumn = fires_per_local_day(crontab, zone, datetime(2026, 10, 24, 12, 0, tzinfo=ZoneInfo(zone)), 48, time_machine)
    assert autumn == {"2026-10-25": 1, "2026-10-26": 1}


def test_the_builtin_definitions_are_exactly_the_15_of_the_spec():
    from workflows.definition import builtin_definitions

    assert [d.id for d in builtin_definitions()] == sorted(SPEC_CRONTABS, key=str.lower)
