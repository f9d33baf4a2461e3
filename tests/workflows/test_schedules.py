"""Schedules: created from the definitions, never overwritten, validated, DST-safe, no bursts;
drift repaired to the schedule the workflow had; the engine's housekeeping schedules."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from project.celery import app
from workflows import commands, schedule_repair, schedules
from workflows.definition import all_definitions
from workflows.models import Workflow, WorkflowAudit
from workflows.schedule_repair import REPAIR_ACTION
from workflows.scheduler import DatabaseScheduler

#: The platform's workflows and their default schedules (None: on demand).
PLATFORM_CRONTABS = {
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
    builtin = {d.id: d for d in all_definitions() if d.id in PLATFORM_CRONTABS}
    assert set(builtin) == set(PLATFORM_CRONTABS)
    assert {d.task_name for d in builtin.values()} == {f"workflows.{workflow_id}" for workflow_id in PLATFORM_CRONTABS}
    assert all(f"workflows.{workflow_id}" in app.tasks for workflow_id in PLATFORM_CRONTABS)


def test_every_workflow_has_the_spec_schedule_after_migrate(db):
    for workflow_id, crontab in PLATFORM_CRONTABS.items():
        workflow = Workflow.objects.select_related("periodic_task__crontab").get(pk=workflow_id)
        assert schedules.schedule_summary(workflow)["crontab"] == crontab, workflow_id
        if crontab:
            task = workflow.periodic_task
            assert (task.name, task.task, json.loads(task.kwargs)) \
                == (workflow_id, f"workflows.{workflow_id}", {"trigger": "schedule"})
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


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_migrate_recreates_a_deleted_schedule_with_the_crontab_it_had_and_audits_it_as_system():
    schedules.set_crontab(Workflow.objects.get(pk="cleanup"), "30 5 * * 1-5", "Europe/Paris")
    PeriodicTask.objects.filter(name="cleanup").delete()
    output = StringIO()

    call_command("migrate", stdout=output)

    task = Workflow.objects.select_related("periodic_task__crontab").get(pk="cleanup").periodic_task
    assert (task.name, task.task, task.enabled) == ("cleanup", "workflows.cleanup", True)
    assert (schedules.crontab_text(task.crontab), str(task.crontab.timezone)) == ("30 5 * * 1-5", "Europe/Paris")
    audit = WorkflowAudit.objects.get(workflow_id="cleanup", action=REPAIR_ACTION)
    assert audit.actor == "system"
    assert audit.note == ("Found: its PeriodicTask is missing. Done: PeriodicTask recreated with the last known "
                          "schedule, 30 5 * * 1-5 (Europe/Paris).")
    assert audit.changes == {"schedule": [None, "30 5 * * 1-5 (Europe/Paris)"], "periodic_task": [None, "cleanup"]}
    assert "Repaired the schedule of cleanup" in output.getvalue()


# -- drift and its repair ------------------------------------------------------------------------

def repair_audits(workflow_id: str) -> list[WorkflowAudit]:
    return list(WorkflowAudit.objects.filter(workflow_id=workflow_id, action=REPAIR_ACTION))


def test_every_scheduled_workflow_remembers_its_schedule_after_migrate(db):
    for workflow_id, crontab in PLATFORM_CRONTABS.items():
        expected = {"crontab": crontab, "timezone": "UTC"} if crontab else None
        assert Workflow.objects.get(pk=workflow_id).last_schedule == expected, workflow_id


def test_an_edit_on_the_workflow_page_is_remembered(db):
    schedules.set_crontab(Workflow.objects.get(pk="cleanup"), "45 2 * * *", "Asia/Tokyo")

    assert Workflow.objects.get(pk="cleanup").last_schedule == {"crontab": "45 2 * * *", "timezone": "Asia/Tokyo"}


def test_without_a_remembered_schedule_the_definitions_default_is_restored_and_the_note_says_so(db):
    Workflow.objects.filter(pk="cleanup").update(last_schedule=None)
    PeriodicTask.objects.filter(name="cleanup").delete()

    repair = schedule_repair.repair_schedule("cleanup", actor="test")

    assert repair is not None
    task = Workflow.objects.get(pk="cleanup").periodic_task
    assert (schedules.crontab_text(task.crontab), str(task.crontab.timezone)) == ("0 4 * * *", "UTC")
    [audit] = repair_audits("cleanup")
    assert audit.note == ("Found: its PeriodicTask is missing. Done: PeriodicTask recreated with the definition's "
                          "default schedule, 0 4 * * * (UTC) (no earlier schedule was recorded).")
    assert Workflow.objects.get(pk="cleanup").last_schedule == {"crontab": "0 4 * * *", "timezone": "UTC"}


def test_a_crontab_changed_outside_the_workflow_page_is_remembered_by_a_repair_pass(db):
    # As an edit in django-celery-beat's admin made before its rows were read-only.
    other = schedules.get_crontab_schedule(schedules.parse_crontab("5 6 * * *"), "Europe/Berlin")
    PeriodicTask.objects.filter(name="billing").update(crontab=other)

    assert schedule_repair.repair_schedules(actor="system") == []
    PeriodicTask.objects.filter(name="billing").delete()
    schedule_repair.repair_schedules(actor="system")

    crontab = Workflow.objects.get(pk="billing").periodic_task.crontab
    assert (schedules.crontab_text(crontab), str(crontab.timezone)) == ("5 6 * * *", "Europe/Berlin")


def test_repair_keeps_the_crontab_of_an_existing_row_and_fixes_its_task_and_enabled_flag(db, time_machine):
    time_machine.move_to(datetime(2026, 6, 1, 9, 0, tzinfo=ZoneInfo("UTC")), tick=False)
    schedules.set_crontab(Workflow.objects.get(pk="kpiSharing"), "*/20 * * * *", "UTC")
    before = PeriodicTask.objects.get(name="kpiSharing")
    PeriodicTask.objects.filter(pk=before.pk).update(task="workflows.billing", enabled=False,
                                                     last_run_at=datetime(2026, 5, 1, tzinfo=ZoneInfo("UTC")))

    repair = schedule_repair.repair_schedule("kpiSharing", actor="cli:test")

    assert repair is not None
    after = PeriodicTask.objects.get(name="kpiSharing")
    assert after.pk == before.pk
    assert (after.task, after.enabled, schedules.crontab_text(after.crontab)) == ("workflows.kpiSharing", True, "*/20 * * * *")
    assert after.last_run_at == datetime(2026, 6, 1, 9, 0, tzinfo=ZoneInfo("UTC")), "counts from now: no burst of missed slots"
    [audit] = repair_audits("kpiSharing")
    assert (audit.actor, audit.changes) == ("cli:test", {"task": ["workflows.billing", "workflows.kpiSharing"],
                                                         "enabled": [False, True]})
    assert "task set back to 'workflows.kpiSharing'; enabled, counting from now" in audit.note


def test_a_periodic_task_without_crontab_gets_the_remembered_crontab_back(db):
    interval = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.filter(name="billing").update(crontab=None, interval=interval)
    workflow = Workflow.objects.select_related("periodic_task").get(pk="billing")
    assert schedules.drift_of(workflow) == ["its PeriodicTask has no crontab"]

    schedule_repair.repair_schedule("billing", actor="test")

    task = PeriodicTask.objects.get(name="billing")
    assert (task.interval_id, schedules.crontab_text(task.crontab)) == (None, "0 1 * * *")


def test_repair_links_back_the_row_still_named_after_the_workflow(db):
    task = PeriodicTask.objects.get(name="billing")
    Workflow.objects.filter(pk="billing").update(periodic_task=None)

    schedule_repair.repair_schedule("billing", actor="test")

    assert Workflow.objects.get(pk="billing").periodic_task_id == task.pk
    assert PeriodicTask.objects.filter(name="billing").count() == 1
    assert "linked again to the PeriodicTask 'billing'" in repair_audits("billing")[0].note


def test_repair_disables_the_enabled_schedule_of_a_paused_workflow(db):
    commands.pause("kpiSharing", actor="test")
    PeriodicTask.objects.filter(name="kpiSharing").update(enabled=True)

    schedule_repair.repair_schedule("kpiSharing", actor="test")

    assert PeriodicTask.objects.get(name="kpiSharing").enabled is False
    assert "disabled (kpiSharing is paused)" in repair_audits("kpiSharing")[0].note


@pytest.mark.parametrize("command", [commands.pause, commands.stop])
def test_repair_leaves_a_paused_or_stopped_workflows_disabled_schedule_alone(db, command):
    command("billing", actor="test")

    assert schedule_repair.repair_schedules(actor="test") == []
    assert PeriodicTask.objects.get(name="billing").enabled is False
    assert repair_audits("billing") == []


def test_repair_is_safe_to_run_twice(db):
    PeriodicTask.objects.filter(name__in=["billing", "cleanup"]).delete()

    first = schedule_repair.repair_schedules(actor="test")
    second = schedule_repair.repair_schedules(actor="test")

    assert [repair.workflow for repair in first] == ["billing", "cleanup"]
    assert second == []
    assert PeriodicTask.objects.filter(name__in=["billing", "cleanup"]).count() == 2
    assert WorkflowAudit.objects.filter(action=REPAIR_ACTION).count() == 2


def test_an_on_demand_workflow_is_never_given_a_schedule(db):
    assert schedule_repair.repair_schedule("reportSendingNow", actor="test") is None
    assert Workflow.objects.get(pk="reportSendingNow").periodic_task_id is None


# -- the engine's housekeeping schedules ---------------------------------------------------------

def test_the_housekeeping_schedules_exist_after_migrate_with_their_registered_tasks(db):
    report = PeriodicTask.objects.get(name="engine: weekly report of long pauses")
    reaper = PeriodicTask.objects.get(name="engine: reap abandoned runs")

    assert (report.task, schedules.crontab_text(report.crontab), report.enabled) == (
        "workflows.report_long_pauses", "0 8 * * 1", True)
    assert (reaper.task, schedules.crontab_text(reaper.crontab), reaper.expire_seconds, reaper.enabled) == (
        "workflows.reap_abandoned_runs", "* * * * *", 60, True)
    assert {report.task, reaper.task} <= set(app.tasks)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_housekeeping_schedules_are_created_once_and_never_overwritten():
    reaper = PeriodicTask.objects.get(name="engine: reap abandoned runs")
    reaper.crontab = schedules.get_crontab_schedule(schedules.parse_crontab("*/2 * * * *"), "UTC")
    reaper.enabled = False
    reaper.save()
    PeriodicTask.objects.filter(name="engine: weekly report of long pauses").delete()

    call_command("migrate", verbosity=0)

    reaper = PeriodicTask.objects.get(name="engine: reap abandoned runs")
    assert (schedules.crontab_text(reaper.crontab), reaper.enabled) == ("*/2 * * * *", False)
    assert PeriodicTask.objects.filter(name="engine: weekly report of long pauses").count() == 1


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


def fires_per_local_day(crontab: str, zone: str, start: datetime, hours: int, time_machine) -> dict[str, int]:
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

    assert [d.id for d in builtin_definitions()] == sorted(PLATFORM_CRONTABS, key=str.lower)
