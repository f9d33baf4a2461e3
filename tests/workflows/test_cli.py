"""``manage.py workflow``: every sub-command, its exit code and one-line stderr, the JSON shapes
(exact key sets), id matching, refusals, ``--set`` validation and the repair of drifted schedules.

The failing path uses ``cliUnwritten``, a declared workflow without activities (its runs fail with
"not implemented"); the successful path uses ``cliSample``, a one-activity workflow declared here.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import subprocess
import sys
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from tests.workflows.cli_helpers import Result, workflow_cli
from workflows import commands, schedules
from workflows.context import ActivityContext
from workflows.definition import WorkflowDefinition, all_definitions, register
from workflows.management.commands.workflow import EXIT_CODES_HELP, Command
from workflows.models import RunStatus, Trigger, Workflow, WorkflowAudit, WorkflowRun, WorkflowState
from workflows.properties import IntegerProperty
from workflows.schedules import ensure_workflow, sync_workflows
from workflows.serializers import ACTIVITY_KEYS, RUN_KEYS, SCHEDULE_KEYS, WORKFLOW_KEYS
from workflows.worker_process import current_database_url as database_url

#: The platform's workflow ids.
BUILTIN_IDS = {
    "abTesting", "billing", "cleanup", "forecasting", "importSharedAudience", "reportSendingNow", "kpiReconciliation",
    "mobileAppOptOutMgt", "mcSynch_local", "reportingAggregates", "kpiSharing", "updateDeliveryExecInfo",
    "updateDeliveryIndicators", "updateEventsStatus", "deliverabilityUpdate",
}

ACTOR = f"cli:{getpass.getuser()}"


def count_rows(ctx: ActivityContext) -> None:
    ctx.count("rows", ctx.properties["rows"])


# Registered once, at import: register() also creates the Celery task workflows.cliSample.
SAMPLE = register(WorkflowDefinition(
    id="cliSample",
    label="CLI sample",
    description="Test-only workflow of the CLI tests: counts the rows it is told to.",
    schedule=None,
    activities=(count_rows,),
    properties=(IntegerProperty("rows", 3, minimum=0, maximum=1_000, help="How many rows to count."),),
))


def assert_one_line_reason(result: Result, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_run_shape(data: dict[str, Any]) -> None:
    assert set(data) == set(RUN_KEYS)
    assert isinstance(data["counters"], dict)
    for activity in data["activities"]:
        assert set(activity) == set(ACTIVITY_KEYS)
    for key in ("started_at", "finished_at"):
        if data[key] is not None:
            assert datetime.fromisoformat(data[key]).tzinfo is not None


def assert_workflow_shape(data: dict[str, Any]) -> None:
    assert set(data) == set(WORKFLOW_KEYS)
    assert set(data["schedule"]) == set(SCHEDULE_KEYS)
    if data["last_run"] is not None:
        assert_run_shape(data["last_run"])


@pytest.fixture
def cli_sample(db: None) -> Workflow:
    return ensure_workflow(SAMPLE)


@pytest.fixture
def sent_tasks(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Messages the commands hand to the broker (recorded instead of sent)."""
    from project.celery import app

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(app, "send_task", lambda name, **options: sent.append({"name": name, **options}))
    return sent


def set_state(workflow_id: str, state: str) -> None:
    Workflow.objects.filter(pk=workflow_id).update(state=state)


# -- list ----------------------------------------------------------------------------------------

def test_list_json_is_an_array_of_workflows_in_registry_order(cli_sample: Workflow) -> None:
    result = workflow_cli("list", "--json")

    assert result.exit_code == 0
    data = result.json()
    assert isinstance(data, list)
    for item in data:
        assert_workflow_shape(item)
    ids = [item["id"] for item in data]
    assert set(ids) >= BUILTIN_IDS | {"cliSample"}
    registered = [definition.id for definition in all_definitions()]
    assert ids == [workflow_id for workflow_id in registered if workflow_id in ids]


def test_list_json_gives_crontab_for_scheduled_and_null_for_on_demand(db: None) -> None:
    by_id = {item["id"]: item for item in workflow_cli("list", "--json").json()}

    billing = by_id["billing"]
    assert billing["schedule"] == {"crontab": "0 1 * * *", "timezone": settings.TIME_ZONE, "human": "At 01:00"}
    assert billing["state"] == "started"
    assert billing["label"] == "Billing"
    assert datetime.fromisoformat(billing["next_run_at"]) > timezone.now()
    assert billing["last_run"] is None
    assert by_id["kpiSharing"]["schedule"]["human"] == "Every 15 minutes"
    on_demand = by_id["reportSendingNow"]
    assert on_demand["schedule"]["crontab"] is None
    assert on_demand["next_run_at"] is None


def test_list_json_shows_the_latest_run_as_last_run(cli_sample: Workflow) -> None:
    workflow_cli("run", "cliSample", "--sync")
    second = workflow_cli("run", "cliSample", "--sync", "--json", "--set", "rows=9").json()

    by_id = {item["id"]: item for item in workflow_cli("list", "--json").json()}

    assert by_id["cliSample"]["last_run"] == second
    assert by_id["cliSample"]["last_run"]["counters"] == {"rows": 9}


def test_list_table_shows_state_schedule_in_words_and_last_run(db: None) -> None:
    set_state("cleanup", WorkflowState.PAUSED)
    workflow_cli("run", "cliUnwritten", "--sync")

    result = workflow_cli("list")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "SCHEDULE", "NEXT", "RUN", "LAST", "RUN"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert BUILTIN_IDS <= set(rows)
    assert "Every 15 minutes" in rows["kpiSharing"]
    assert "On demand" in rows["reportSendingNow"]
    assert rows["cleanup"].split()[1] == "paused"
    assert "failed in" in rows["cliUnwritten"]
    assert "never run" in rows["abTesting"]


# -- show ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("typed", "expected"), [
    ("reportingAggregates", "reportingAggregates"),
    ("reportingaggregates", "reportingAggregates"),
    ("REPORTINGAGGREGATES", "reportingAggregates"),
    ("reportingAggregate", "reportingAggregates"),
    ("updateDeliveryIndicator", "updateDeliveryIndicators"),
    ("updatedeliveryindicators", "updateDeliveryIndicators"),
    ("MCSYNCH_LOCAL", "mcSynch_local"),
])
def test_show_matches_ids_case_insensitively_and_by_alias(db: None, typed: str, expected: str) -> None:
    result = workflow_cli("show", typed, "--json")

    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert_workflow_shape(data)
    assert data["id"] == expected


def test_show_block_lists_schedule_properties_and_activities(cli_sample: Workflow) -> None:
    Workflow.objects.filter(pk="cliSample").update(properties={"rows": 5})

    result = workflow_cli("show", "clisample")

    assert result.exit_code == 0
    assert result.stdout.startswith("cliSample — CLI sample")
    assert "State:       started" in result.stdout
    assert "on demand" in result.stdout
    assert "rows = 5 (set)  How many rows to count." in result.stdout
    assert "1. count_rows (normal)" in result.stdout
    assert "never run" in result.stdout


def test_show_gives_where_the_incremental_scans_resume_in_json_and_text(cli_sample: Workflow) -> None:
    Workflow.objects.filter(pk="cliSample").update(cursors={"sending_feedback_id": 120, "tracking_hit_id": 7})

    data = workflow_cli("show", "cliSample", "--json").json()
    text = workflow_cli("show", "cliSample").stdout

    assert data["cursors"] == {"sending_feedback_id": 120, "tracking_hit_id": 7}
    assert "Cursors:     sending_feedback_id=120, tracking_hit_id=7" in text
    assert workflow_cli("show", "cliUnwritten", "--json").json()["cursors"] == {}
    assert "Cursors:" not in workflow_cli("show", "cliUnwritten").stdout


def test_the_json_shapes_are_the_documented_ones() -> None:
    """docs/operations.md lists these keys; scripts rely on them."""
    assert WORKFLOW_KEYS == ("id", "label", "state", "schedule", "next_run_at", "cursors", "last_run")
    assert SCHEDULE_KEYS == ("crontab", "timezone", "human")
    assert RUN_KEYS == ("run_id", "workflow", "trigger", "status", "reason", "started_at", "finished_at",
                        "duration_s", "counters", "activities")
    assert ACTIVITY_KEYS == ("name", "status", "counters")


def test_show_block_gives_the_schedule_in_words_and_as_crontab(db: None) -> None:
    result = workflow_cli("show", "kpiSharing")

    assert "Every 15 minutes (*/15 * * * *, UTC)" in result.stdout.replace(settings.TIME_ZONE, "UTC")
    assert "(not implemented)" in workflow_cli("show", "cliUnwritten").stdout


@pytest.mark.parametrize("args", [
    ("show", "noSuchWorkflow"), ("show", "noSuchWorkflow", "--json"), ("run", "noSuchWorkflow", "--sync"),
    ("runs", "noSuchWorkflow"), ("pause", "noSuchWorkflow"), ("restart", "noSuchWorkflow"),
    ("repair", "noSuchWorkflow"),
])
def test_unknown_id_exits_2_with_one_line_reason(db: None, args: tuple[str, ...]) -> None:
    result = workflow_cli(*args)

    assert result.exit_code == 2
    assert result.stdout == ""
    assert_one_line_reason(result, "unknown workflow 'noSuchWorkflow'")


@pytest.mark.parametrize("args", [
    ("show", "cleenup"), ("run", "cleenup", "--sync"), ("runs", "cleenup"), ("start", "cleenup"),
    ("pause", "cleenup"), ("resume", "cleenup"), ("stop", "cleenup"), ("restart", "cleenup"), ("repair", "cleenup"),
])
def test_a_mistyped_id_gets_the_id_it_resembles_in_every_sub_command(db: None, args: tuple[str, ...]) -> None:
    result = workflow_cli(*args)

    assert result.exit_code == 2
    assert result.stderr.strip() == "workflow: unknown workflow 'cleenup'; did you mean 'cleanup'?"
    assert not WorkflowAudit.objects.exists()


@pytest.mark.parametrize(("typed", "meant"), [
    ("CLEENUP", "cleanup"), ("updateDeliveryExecInfos", "updateDeliveryExecInfo"), ("reportingAgregate", "reportingAggregates"),
])
def test_the_suggestion_ignores_case_and_knows_the_aliases(db: None, typed: str, meant: str) -> None:
    assert f"did you mean {meant!r}?" in workflow_cli("show", typed).stderr


@pytest.mark.parametrize("where", ["before the sub-command", "after it"])
def test_verbosity_2_shows_the_engines_log_line_wherever_it_is_given(
    cli_sample: Workflow, caplog: pytest.LogCaptureFixture, where: str,
) -> None:
    run = ("run", "cliSample", "--sync")
    args = ("-v", "2", *run) if where == "before the sub-command" else (*run, "-v", "2")
    with caplog.at_level(logging.INFO):
        assert workflow_cli(*args).exit_code == 0
        shown = [record.getMessage() for record in caplog.records if record.name == "workflows.engine"]
        caplog.clear()
        assert workflow_cli("run", "cliSample", "--sync").exit_code == 0
        hidden = [record.getMessage() for record in caplog.records if record.name == "workflows.engine"]

    assert any("cliSample run #" in message and "succeeded" in message for message in shown), shown
    assert hidden == []


# -- run --sync ----------------------------------------------------------------------------------

def test_run_sync_of_unimplemented_workflow_exits_1_saying_not_implemented(db: None) -> None:
    result = workflow_cli("run", "CLIUNWRITTEN", "--sync")

    assert result.exit_code == 1
    assert_one_line_reason(result, "cliUnwritten", "failed", "not implemented")
    assert result.stdout.startswith("Run #")
    assert "cliUnwritten: failed — not implemented" in result.stdout
    run = WorkflowRun.objects.get(workflow_id="cliUnwritten")
    assert (run.status, run.reason, run.trigger, run.requested_by) == (RunStatus.FAILED, "not implemented", Trigger.CLI, ACTOR)


def test_run_sync_json_of_a_failed_run(db: None) -> None:
    result = workflow_cli("run", "cliUnwritten", "--sync", "--json")

    assert result.exit_code == 1
    data = result.json()
    assert_run_shape(data)
    assert data["workflow"] == "cliUnwritten"
    assert data["trigger"] == "cli"
    assert (data["status"], data["reason"]) == ("failed", "not implemented")
    assert data["run_id"] == WorkflowRun.objects.get(workflow_id="cliUnwritten").pk
    assert data["finished_at"] is not None
    assert data["duration_s"] >= 0
    assert_one_line_reason(result, "not implemented")


def test_run_sync_of_sample_succeeds_with_summary(cli_sample: Workflow) -> None:
    result = workflow_cli("run", "cliSample", "--sync")

    assert result.exit_code == 0
    assert result.stderr == ""
    assert "cliSample: succeeded" in result.stdout
    assert "Counters:    rows=3" in result.stdout
    assert "1. count_rows  succeeded  rows=3" in result.stdout
    assert f"(by {ACTOR})" in result.stdout


def test_run_sync_json_carries_counters_and_activities(cli_sample: Workflow) -> None:
    result = workflow_cli("run", "clisample", "--sync", "--json", "--set", "rows=7")

    assert result.exit_code == 0
    data = result.json()
    assert_run_shape(data)
    assert data["status"] == "succeeded"
    assert data["reason"] == ""
    assert data["counters"] == {"rows": 7}
    assert data["activities"] == [{"name": "count_rows", "status": "succeeded", "counters": {"rows": 7}}]
    assert datetime.fromisoformat(data["finished_at"]) >= datetime.fromisoformat(data["started_at"])


def test_run_set_overrides_only_that_run(cli_sample: Workflow) -> None:
    workflow_cli("run", "cliSample", "--sync", "--set", "rows=0")
    after = workflow_cli("run", "cliSample", "--sync", "--json").json()

    runs = list(WorkflowRun.objects.filter(workflow_id="cliSample").order_by("pk"))
    assert [run.counters for run in runs] == [{"rows": 0}, {"rows": 3}]
    assert runs[0].overrides == {"rows": 0}
    assert after["counters"] == {"rows": 3}
    assert Workflow.objects.get(pk="cliSample").properties == {}


@pytest.mark.parametrize(("assignment", "message"), [
    ("rows=-1", "rows: must be at least 0, got -1"),
    ("rows=many", "rows: expected a whole number, got 'many'"),
    ("colour=red", "unknown property 'colour' for cliSample (known: rows)"),
    ("rows", "expected key=value, got 'rows'"),
])
def test_run_with_invalid_set_exits_2_and_creates_no_run(cli_sample: Workflow, assignment: str, message: str) -> None:
    result = workflow_cli("run", "cliSample", "--sync", "--set", assignment)

    assert result.exit_code == 2
    assert_one_line_reason(result, "invalid --set", message)
    assert result.stdout == ""
    assert not WorkflowRun.objects.filter(workflow_id="cliSample").exists()
    assert not WorkflowAudit.objects.filter(workflow_id="cliSample").exists()


def test_run_set_on_a_workflow_without_properties_is_refused(db: None) -> None:
    result = workflow_cli("run", "cliUnwritten", "--set", "days=3")

    assert result.exit_code == 2
    assert_one_line_reason(result, "unknown property 'days' for cliUnwritten (known: none)")


def test_run_on_paused_workflow_is_refused_without_force(db: None, sent_tasks: list[dict[str, Any]]) -> None:
    set_state("billing", WorkflowState.PAUSED)

    result = workflow_cli("run", "billing", "--sync")

    assert result.exit_code == 3
    assert_one_line_reason(result, "refused: billing is paused; resume it first, or force the run")
    assert not WorkflowRun.objects.filter(workflow_id="billing").exists()


def test_run_on_stopped_workflow_without_sync_is_refused_and_sends_nothing(
    db: None, sent_tasks: list[dict[str, Any]], django_capture_on_commit_callbacks: Any,
) -> None:
    set_state("billing", WorkflowState.STOPPED)

    with django_capture_on_commit_callbacks(execute=True):
        result = workflow_cli("run", "billing")

    assert result.exit_code == 3
    assert_one_line_reason(result, "billing is stopped")
    assert sent_tasks == []


def test_run_with_force_on_paused_workflow_runs(db: None) -> None:
    set_state("cliUnwritten", WorkflowState.PAUSED)

    result = workflow_cli("run", "cliUnwritten", "--sync", "--force", "--json")

    # Not refused: the run was executed, and fails only because it has no activities.
    assert result.exit_code == 1
    assert (result.json()["status"], result.json()["reason"]) == ("failed", "not implemented")
    audit = WorkflowAudit.objects.get(workflow_id="cliUnwritten", action="run now")
    assert audit.actor == ACTOR
    assert "forced" in audit.note


def test_run_with_force_on_paused_implemented_workflow_succeeds(cli_sample: Workflow) -> None:
    set_state("cliSample", WorkflowState.PAUSED)

    result = workflow_cli("run", "cliSample", "--sync", "--force", "--json")

    assert result.json()["status"] == "succeeded"
    assert result.exit_code == 0


def test_run_sync_skipped_because_another_run_holds_the_lease_exits_3(cli_sample: Workflow) -> None:
    Workflow.objects.filter(pk="cliSample").update(lease_holder=987654, lease_until=timezone.now() + timedelta(minutes=5))

    result = workflow_cli("run", "cliSample", "--sync", "--json")

    assert result.exit_code == 3
    assert (result.json()["status"], result.json()["reason"]) == ("skipped", "already running (run #987654)")
    assert_one_line_reason(result, "skipped", "already running (run #987654)")


# -- run (queued) --------------------------------------------------------------------------------

def test_run_without_sync_queues_through_the_broker_after_commit(
    cli_sample: Workflow, sent_tasks: list[dict[str, Any]], django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = workflow_cli("run", "cliSample", "--set", "rows=4")
    assert sent_tasks == []  # nothing leaves before the run row is committed
    for callback in callbacks:
        callback()

    assert result.exit_code == 0
    run = WorkflowRun.objects.get(workflow_id="cliSample")
    assert result.stdout.strip() == f"Queued run #{run.pk} of cliSample (task {run.celery_task_id})."
    assert (run.status, run.trigger, run.requested_by, run.overrides) == (RunStatus.QUEUED, Trigger.CLI, ACTOR, {"rows": 4})
    assert [(task["name"], task["kwargs"]["run_id"], task["task_id"]) for task in sent_tasks] == [
        ("workflows.cliSample", run.pk, run.celery_task_id)
    ]


def test_run_without_sync_json_is_the_queued_run(
    db: None, sent_tasks: list[dict[str, Any]], django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        result = workflow_cli("run", "kpiSharing", "--json")

    assert result.exit_code == 0
    data = result.json()
    assert_run_shape(data)
    assert (data["workflow"], data["status"], data["trigger"]) == ("kpiSharing", "queued", "cli")
    assert (data["started_at"], data["finished_at"], data["duration_s"]) == (None, None, None)
    assert data["activities"] == []
    assert [task["kwargs"]["run_id"] for task in sent_tasks] == [data["run_id"]]


# -- start / pause / resume / stop / restart -----------------------------------------------------

def test_pause_then_resume_changes_state_schedule_and_audit(db: None) -> None:
    paused = workflow_cli("pause", "kpisharing")

    assert paused.exit_code == 0
    assert paused.stdout.strip() == "kpiSharing is paused (was started)."
    workflow = Workflow.objects.select_related("periodic_task").get(pk="kpiSharing")
    assert workflow.state == WorkflowState.PAUSED
    assert workflow.periodic_task.enabled is False

    resumed = workflow_cli("resume", "KPISHARING")

    assert resumed.exit_code == 0
    assert resumed.stdout.strip() == "kpiSharing is started (was paused)."
    workflow = Workflow.objects.select_related("periodic_task").get(pk="kpiSharing")
    assert workflow.state == WorkflowState.STARTED
    assert workflow.periodic_task.enabled is True
    audit = list(WorkflowAudit.objects.filter(workflow_id="kpiSharing").order_by("pk").values_list("action", "actor", "changes"))
    assert audit == [("pause", ACTOR, {"state": ["started", "paused"]}), ("resume", ACTOR, {"state": ["paused", "started"]})]


def test_stop_then_start(db: None) -> None:
    stopped = workflow_cli("stop", "cleanup")
    assert (stopped.exit_code, stopped.stdout.strip()) == (0, "cleanup is stopped (was started).")
    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.STOPPED

    started = workflow_cli("start", "cleanup")
    assert (started.exit_code, started.stdout.strip()) == (0, "cleanup is started (was stopped).")
    assert Workflow.objects.get(pk="cleanup").state == WorkflowState.STARTED


@pytest.mark.parametrize(("command", "message"), [
    ("resume", "refused: billing is stopped and cannot be resumed; use start (or restart) for a fresh run"),
    ("pause", "refused: billing is stopped; start it before pausing it"),
])
def test_commands_refused_on_a_stopped_workflow_exit_3(db: None, command: str, message: str) -> None:
    set_state("billing", WorkflowState.STOPPED)

    result = workflow_cli(command, "billing")

    assert result.exit_code == 3
    assert result.stdout == ""
    assert_one_line_reason(result, message)
    assert Workflow.objects.get(pk="billing").state == WorkflowState.STOPPED
    assert not WorkflowAudit.objects.filter(workflow_id="billing").exists()


def test_restart_stops_starts_and_queues_a_fresh_run(
    db: None, sent_tasks: list[dict[str, Any]], django_capture_on_commit_callbacks: Any,
) -> None:
    set_state("updateDeliveryIndicators", WorkflowState.PAUSED)

    with django_capture_on_commit_callbacks(execute=True):
        result = workflow_cli("restart", "updateDeliveryIndicator")

    assert result.exit_code == 0
    run = WorkflowRun.objects.get(workflow_id="updateDeliveryIndicators")
    assert result.stdout.strip() == f"updateDeliveryIndicators restarted (was paused); queued run #{run.pk}."
    assert (run.status, run.trigger, run.requested_by) == (RunStatus.QUEUED, Trigger.CLI, ACTOR)
    assert Workflow.objects.get(pk="updateDeliveryIndicators").state == WorkflowState.STARTED
    assert [task["name"] for task in sent_tasks] == ["workflows.updateDeliveryIndicators"]
    assert list(WorkflowAudit.objects.filter(workflow_id="updateDeliveryIndicators").order_by("pk")
                .values_list("action", flat=True)) == ["stop", "restart"]


# -- runs ----------------------------------------------------------------------------------------

def test_runs_json_lists_most_recent_first_up_to_limit(cli_sample: Workflow) -> None:
    for rows in (1, 2, 3):
        workflow_cli("run", "cliSample", "--sync", "--set", f"rows={rows}")

    result = workflow_cli("runs", "CLISAMPLE", "--limit", "2", "--json")

    assert result.exit_code == 0
    data = result.json()
    for item in data:
        assert_run_shape(item)
    assert [item["counters"] for item in data] == [{"rows": 3}, {"rows": 2}]
    assert data[0]["run_id"] > data[1]["run_id"]


def test_runs_table_shows_status_duration_and_reason(db: None) -> None:
    workflow_cli("run", "cliUnwritten", "--sync")

    result = workflow_cli("runs", "cliUnwritten")

    assert result.exit_code == 0
    header, row = result.stdout.splitlines()
    assert header.split() == ["RUN", "TRIGGER", "STATUS", "STARTED", "DURATION", "COUNTERS", "REASON"]
    assert row.split()[1:3] == ["cli", "failed"]
    assert row.endswith("not implemented")


def test_runs_of_a_workflow_never_run(db: None) -> None:
    assert workflow_cli("runs", "billing").stdout.strip() == "billing has no runs."
    assert workflow_cli("runs", "billing", "--json").json() == []


def test_runs_limit_below_one_exits_2(db: None) -> None:
    result = workflow_cli("runs", "billing", "--limit", "0")

    assert result.exit_code == 2
    assert_one_line_reason(result, "--limit must be at least 1, got 0")


# -- repair --------------------------------------------------------------------------------------

def test_repair_id_recreates_a_deleted_schedule_with_the_crontab_it_had_audited_as_the_cli_user(db: None) -> None:
    schedules.set_crontab(Workflow.objects.get(pk="billing"), "10 22 * * 0", "America/New_York")
    PeriodicTask.objects.filter(name="billing").delete()

    result = workflow_cli("repair", "BILLING")

    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.strip() == (
        "billing: repaired. Found: its PeriodicTask is missing. Done: PeriodicTask recreated with the last known "
        "schedule, 10 22 * * 0 (America/New_York)."
    )
    task = Workflow.objects.get(pk="billing").periodic_task
    assert (task.task, task.enabled, schedules.crontab_text(task.crontab), str(task.crontab.timezone)) == (
        "workflows.billing", True, "10 22 * * 0", "America/New_York")
    audit = WorkflowAudit.objects.get(workflow_id="billing", action="repair schedule")
    assert (audit.actor, audit.user) == (ACTOR, None)


def test_repair_without_id_repairs_every_drifted_workflow_and_only_those(db: None) -> None:
    PeriodicTask.objects.filter(name="cleanup").delete()
    PeriodicTask.objects.filter(name="kpiSharing").update(enabled=False)
    commands.pause("forecasting", actor="test")  # disabled on purpose: left alone

    result = workflow_cli("repair")

    assert result.exit_code == 0
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["cleanup", "kpiSharing"]
    assert PeriodicTask.objects.get(name="kpiSharing").enabled is True
    assert PeriodicTask.objects.get(name="forecasting").enabled is False
    assert set(WorkflowAudit.objects.filter(action="repair schedule").values_list("workflow_id", flat=True)) == {
        "cleanup", "kpiSharing"}


def test_repair_with_nothing_drifted_says_so_and_writes_no_audit(db: None) -> None:
    assert workflow_cli("repair").stdout.strip() == "No schedule needed a repair."
    assert workflow_cli("repair", "cleanup").stdout.strip() == "cleanup: its schedule is as it should be; nothing to repair."
    assert not WorkflowAudit.objects.filter(action="repair schedule").exists()


def test_show_names_the_drift_and_the_repair_command(db: None) -> None:
    PeriodicTask.objects.filter(name="kpiSharing").update(task="workflows.cleanup")

    result = workflow_cli("show", "kpiSharing")

    assert ("Drift:       its PeriodicTask sends 'workflows.cleanup' instead of 'workflows.kpiSharing' "
            "(`workflow repair kpiSharing` repairs it)") in result.stdout.splitlines()


# -- usage ---------------------------------------------------------------------------------------

def test_help_documents_the_exit_codes() -> None:
    help_text = Command().create_parser("manage.py", "workflow").format_help()

    assert EXIT_CODES_HELP in help_text
    for code in ("0  success", "1  run --sync: the run failed", "2  bad usage, unknown workflow id",
                 "3  command refused"):
        assert code in help_text


def test_missing_id_is_a_usage_error() -> None:
    with pytest.raises(CommandError, match="ID"):
        call_command("workflow", "run", stdout=StringIO(), stderr=StringIO())


# -- as a real process ---------------------------------------------------------------------------

def manage(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url(), "SECRET_KEY": settings.SECRET_KEY}
    return subprocess.run(
        [sys.executable, *python_flags, "manage.py", *args], cwd=settings.BASE_DIR, env=env, capture_output=True,
        text=True, timeout=120,
    )


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_manage_py_workflow_list_json_prints_parseable_json() -> None:
    sync_workflows()  # committed: the child process reads the rows
    completed = manage("workflow", "list", "--json")

    assert completed.returncode == 0, completed.stderr
    data = json.loads(completed.stdout)
    # The child process declares only the builtin workflows (cliSample lives in this test module).
    assert {item["id"] for item in data} == BUILTIN_IDS
    for item in data:
        assert_workflow_shape(item)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_manage_py_unknown_id_exits_2_with_one_line_and_no_traceback() -> None:
    completed = manage("workflow", "show", "noSuchWorkflow")

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.strip().splitlines() == [
        "workflow: unknown workflow 'noSuchWorkflow'; `workflow list` shows the ids"
    ]


#: Libraries that ``workflow list`` has no use for, each some 50 ms (reportlab 100) to import.
UNUSED_AT_START_UP = ("reportlab", "requests", "redis", "PIL")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_manage_py_workflow_list_imports_no_pdf_http_or_redis_library() -> None:
    completed = manage("workflow", "list", python_flags=("-X", "importtime"))

    assert completed.returncode == 0, completed.stderr[-2000:]
    imported = {line.rpartition("|")[2].strip().split(".")[0] for line in completed.stderr.splitlines()
                if line.startswith("import time:")}
    assert "django" in imported, "the import log was read"
    assert not imported & set(UNUSED_AT_START_UP)


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, drawn", [(Terminal, True), (StringIO, False)])
def test_run_sync_draws_a_progress_bar_only_on_a_terminal(db: None, stream: type[StringIO], drawn: bool) -> None:
    from campaign.models import Campaign, Delivery, SendingFeedback
    from tests.workflows import sample_workflow

    ensure_workflow(sample_workflow.definition)
    Delivery.objects.create(label=sample_workflow.SAMPLE_DELIVERY_LABEL, campaign=Campaign.objects.create(label="c"))
    SendingFeedback.objects.bulk_create(SendingFeedback(delivery_log_id=i, outcome="delivered") for i in range(1, 31))

    stderr = stream()
    call_command("workflow", "run", sample_workflow.SAMPLE_ID, "--sync", "--set", "batch_size=10",
                 stdout=StringIO(), stderr=stderr)

    output = stderr.getvalue()
    assert ("\r[##########--------------------] 10 / 30 rows (33%)" in output) is drawn
    assert ("\r[##############################] 30 / 30 rows (100%)" in output) is drawn
