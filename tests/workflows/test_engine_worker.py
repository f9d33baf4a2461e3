"""The engine end to end with a real Celery worker: run now, pause/resume, stop, SIGKILL takeover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings

from project.celery import app as celery_app
from tests.workflows.helpers import TEST_LEASE_SECONDS, effects, wait_for
from tests.workflows.sample_workflow import SAMPLE_ID
from workflows import commands
from workflows.leases import ABANDONED
from workflows.models import ActivityRun, RunStatus, Trigger, Workflow, WorkflowLog, WorkflowRun
from workflows.tasks import SLOT_HEADER
from workflows.worker_process import WorkerProcess

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def run_status(run_id: int) -> str:
    return WorkflowRun.objects.values_list("status", flat=True).get(pk=run_id)


def test_run_now_through_a_worker_succeeds_with_activities_journal_and_exact_effects(sample, worker):
    run = commands.run_now(SAMPLE_ID, actor="test")

    wait_for(lambda: run_status(run.pk) == RunStatus.SUCCEEDED, what="the run to succeed")
    run.refresh_from_db()
    assert run.counters == {"prepared": 1, "consumed": 50, "finished": 1}
    assert list(run.activities.values_list("name", "status")) == [
        ("prepare", "succeeded"), ("consume", "succeeded"), ("finish", "succeeded")]
    assert WorkflowLog.objects.filter(run=run, activity="finish", message__startswith="Effects now: 50").exists()
    assert effects() == (50, 50)
    assert run.duration_s is not None and run.finished_at >= run.started_at


def test_pause_halts_at_a_batch_boundary_and_resume_continues_from_the_halted_activity(sample, worker):
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"sleep_ms": 150, "batch_size": 5})
    run = commands.run_now(SAMPLE_ID, actor="test")
    wait_for(lambda: effects()[0] >= 10, what="a few batches")

    commands.pause(SAMPLE_ID, actor="test")
    wait_for(lambda: run_status(run.pk) == RunStatus.PAUSED, what="the run to pause")
    run.refresh_from_db()
    halted_at = effects()[0]
    assert run.halted_activity == "consume"
    assert 10 <= halted_at < 50 and halted_at % 5 == 0, "halts between batches, never inside one"
    time.sleep(0.5)
    assert effects()[0] == halted_at, "nothing runs while paused"

    commands.resume(SAMPLE_ID, actor="test")
    wait_for(lambda: run_status(run.pk) == RunStatus.SUCCEEDED, what="the resumed run to finish")
    assert effects() == (50, 50)
    assert ActivityRun.objects.filter(run=run, name="prepare").count() == 1
    assert WorkflowLog.objects.filter(run=run, activity="prepare", message="Preparing.").count() == 1, \
        "completed activities are not re-run"


def test_stop_halts_the_run_and_cannot_be_resumed(sample, worker):
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"sleep_ms": 150, "batch_size": 5})
    run = commands.run_now(SAMPLE_ID, actor="test")
    wait_for(lambda: effects()[0] >= 10, what="a few batches")

    commands.stop(SAMPLE_ID, actor="test")
    wait_for(lambda: run_status(run.pk) == RunStatus.STOPPED, what="the run to stop")
    with pytest.raises(commands.CommandRefused, match="cannot be resumed"):
        commands.resume(SAMPLE_ID, actor="test")
    stopped_at = effects()[0]
    time.sleep(0.5)
    assert effects() == (stopped_at, stopped_at)


def test_a_killed_worker_is_taken_over_after_its_lease_and_effects_stay_exact(sample, worker):
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"sleep_ms": 200, "batch_size": 5})
    dead = commands.run_now(SAMPLE_ID, actor="test")
    wait_for(lambda: effects()[0] >= 10, what="a few batches")

    worker.kill()
    assert run_status(dead.pk) == RunStatus.RUNNING, "nobody could record anything"
    early = commands.run_now(SAMPLE_ID, actor="test", sync=True)
    assert early.status == RunStatus.SKIPPED and f"run #{dead.pk}" in early.reason

    time.sleep(TEST_LEASE_SECONDS + 0.5)
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={})
    takeover = commands.run_now(SAMPLE_ID, actor="test", sync=True)

    assert takeover.status == RunStatus.SUCCEEDED
    dead.refresh_from_db()
    assert (dead.status, dead.reason) == (RunStatus.FAILED, ABANDONED)
    assert effects() == (50, 50), "the killed batch was rolled back and redone once"
    assert takeover.counters["consumed"] + sum(
        ActivityRun.objects.filter(run=dead, name="consume").values_list("counters__consumed", flat=True)
    ) == 50


def test_celery_call_from_the_shell_reaches_the_worker_and_records_a_shell_run(sample, worker):
    completed = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "campaign", "call", f"workflows.{SAMPLE_ID}"],
        cwd=settings.BASE_DIR, env=worker.env, capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr

    wait_for(lambda: WorkflowRun.objects.filter(status=RunStatus.SUCCEEDED).exists(), what="the called run")
    run = WorkflowRun.objects.get()
    assert run.trigger == "shell"
    assert run.celery_task_id == completed.stdout.strip()
    assert effects() == (50, 50)


def test_restart_halts_the_running_run_and_starts_a_fresh_one(sample, worker):
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"sleep_ms": 150, "batch_size": 5})
    first = commands.run_now(SAMPLE_ID, actor="test")
    wait_for(lambda: effects()[0] >= 10, what="a few batches")

    fresh = commands.restart(SAMPLE_ID, actor="test")

    wait_for(lambda: run_status(fresh.pk) == RunStatus.SUCCEEDED, what="the fresh run")
    assert run_status(first.pk) == RunStatus.STOPPED
    assert Workflow.objects.get(pk=SAMPLE_ID).state == "started"
    assert effects() == (50, 50)


def test_a_slot_beat_sent_twice_runs_once_on_the_worker(sample, worker):
    """Two messages for one slot, as a leader frozen mid-send and its successor would send them:
    the slot header crosses the broker and the second message is recorded as a skip."""
    slot = "2030-03-04T08:00:00+00:00"
    for _ in range(2):
        celery_app.send_task(f"workflows.{SAMPLE_ID}", kwargs={"trigger": Trigger.SCHEDULE}, headers={SLOT_HEADER: slot})

    wait_for(lambda: WorkflowRun.objects.filter(status__in=[RunStatus.SUCCEEDED, RunStatus.SKIPPED]).count() == 2,
             what="both messages to be handled")
    ran = WorkflowRun.objects.get(status=RunStatus.SUCCEEDED)
    skipped = WorkflowRun.objects.get(status=RunStatus.SKIPPED)
    assert ran.slot.isoformat() == slot
    assert skipped.reason.endswith(f"already sent (run #{ran.pk})")
    assert effects() == (50, 50)


def test_a_stopping_worker_hands_its_run_over_at_a_unit_boundary_and_another_worker_finishes_it(sample, worker):
    """SIGTERM to the worker (its main process only, as a supervisor does): it does not wait for
    the run's end; the run halts after its current unit and continues on the other worker."""
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"sleep_ms": 300, "batch_size": 2})
    run = commands.run_now(SAMPLE_ID, actor="test")
    wait_for(lambda: effects()[0] >= 4, what="a few batches")

    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=30)
    handed_over_at = effects()[0]
    status_when_stopped = run_status(run.pk)
    with WorkerProcess(queues=worker.queues, env=worker.env):  # the run's message waits for it
        wait_for(lambda: run_status(run.pk) == RunStatus.SUCCEEDED, what="the run to finish on the other worker")

    assert status_when_stopped == RunStatus.PAUSED, "the worker stopped without waiting for the run's end"
    assert 4 <= handed_over_at < 50 and handed_over_at % 2 == 0, "halted between units, never inside one"
    assert effects() == (50, 50)
    assert WorkflowRun.objects.count() == 1, "the same run continued"
    assert WorkflowLog.objects.filter(run=run, message__contains="its worker is stopping").exists()
    assert ActivityRun.objects.get(run=run, name="consume").status == "succeeded"


def test_a_worker_stopped_through_its_process_group_hands_over_and_no_pool_process_is_killed(sample, worker):
    """SIGTERM to the worker's whole process group, as honcho sends it. Its pool processes left
    that group: the busy one hands its run over once its worker raises the stop flag, the idle one
    ends when the pool closes. None is killed, so the log has no error line."""
    worker.stop()  # replaced by one with an idle pool process beside the busy one
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"sleep_ms": 300, "batch_size": 2})
    with WorkerProcess(queues=worker.queues, env=worker.env, concurrency=2) as stopping:
        run = commands.run_now(SAMPLE_ID, actor="test")
        wait_for(lambda: effects()[0] >= 4, what="a few batches")

        os.killpg(stopping.process.pid, signal.SIGTERM)
        stopping.process.wait(timeout=30)
        status_when_stopped = run_status(run.pk)
        log = stopping.log()
    with WorkerProcess(queues=worker.queues, env=worker.env):
        wait_for(lambda: run_status(run.pk) == RunStatus.SUCCEEDED, what="the run to finish on the other worker")

    assert status_when_stopped == RunStatus.PAUSED, "the run was handed over, not waited for"
    assert not [line for line in log.splitlines() if "ERROR" in line], log[-3000:]
    assert effects() == (50, 50)
    assert WorkflowLog.objects.filter(run=run, message__contains="its worker is stopping").exists()
