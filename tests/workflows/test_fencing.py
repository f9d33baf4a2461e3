"""Fenced commits, the reaper and waits that free the worker slot.

A run that lost its lease must commit nothing (whatever froze it: a pause of the process, a cut
link); a run whose worker died is closed and done again with no one asking; a run waiting for
another one leaves its worker slot to other runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from django.db.models import F, Max
from django.utils import timezone

from campaign import report_shares
from campaign.models import Channel, ReportSend, ReportShare, SendingFeedback
from tests.factories import DeliveryAggregateFactory, DeliveryFactory, ReportFactory, UserFactory
from tests.workflows import freeze_hook, sample_workflow
from tests.workflows.helpers import TEST_LEASE_SECONDS, effects, wait_for
from tests.workflows.sample_workflow import QUICK_ID, SAMPLE_ID
from workflows import commands, leases, reaper
from workflows.context import RunFence, unit_committing
from workflows.models import (
    ActivityRun,
    ActivityStatus,
    LogLevel,
    RunStatus,
    Trigger,
    Workflow,
    WorkflowAudit,
    WorkflowLog,
    WorkflowRun,
)
from workflows.worker_process import WorkerProcess
from workflows.worker_process import current_database_url as database_url


def status_of(run_id: int) -> tuple[str, str]:
    return WorkflowRun.objects.values_list("status", "reason").get(pk=run_id)


# -- in process ------------------------------------------------------------------------------------
def test_a_unit_whose_lease_was_taken_over_before_its_commit_rolls_back_and_the_run_ends_lease_lost(sample):
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"batch_size": 10})

    def take_over(sender: object, *, workflow_id: str, unit: int, **kwargs: object) -> None:
        if workflow_id == SAMPLE_ID and unit == 3:  # the second batch of consume (unit 1 ends prepare)
            Workflow.objects.filter(pk=SAMPLE_ID).update(lease_holder=999_999, lease_token=F("lease_token") + 1)

    unit_committing.connect(take_over, sender=RunFence, dispatch_uid="take_over")
    try:
        run = commands.run_now(SAMPLE_ID, actor="test", sync=True)
    finally:
        unit_committing.disconnect(dispatch_uid="take_over", sender=RunFence)

    assert (run.status, run.reason) == (RunStatus.FAILED, leases.LEASE_LOST)
    assert effects() == (10, 10), "the first batch committed; the fenced-out one left nothing"
    tenth = SendingFeedback.objects.order_by("id").values_list("id", flat=True)[9]
    assert Workflow.objects.get(pk=SAMPLE_ID).cursors["source"] == tenth
    consume = ActivityRun.objects.get(run=run, name="consume")
    assert (consume.status, consume.message, consume.counters["consumed"]) == (ActivityStatus.FAILED, leases.LEASE_LOST, 10)
    assert WorkflowLog.objects.filter(run=run, level=LogLevel.WARNING, message__contains="lost its lease").exists()


def test_an_activity_end_is_fenced_too(sample):
    def take_over(sender: object, *, workflow_id: str, unit: int, **kwargs: object) -> None:
        if workflow_id == SAMPLE_ID and unit == 1:  # the end of prepare, which has no batch
            Workflow.objects.filter(pk=SAMPLE_ID).update(lease_token=F("lease_token") + 1)

    unit_committing.connect(take_over, sender=RunFence, dispatch_uid="take_over_end")
    try:
        run = commands.run_now(SAMPLE_ID, actor="test", sync=True)
    finally:
        unit_committing.disconnect(dispatch_uid="take_over_end", sender=RunFence)

    assert (run.status, run.reason) == (RunStatus.FAILED, leases.LEASE_LOST)
    assert not ActivityRun.objects.filter(run=run, status=ActivityStatus.SUCCEEDED).exists()
    assert effects() == (0, 0)


def test_each_claim_grows_the_lease_token(sample):
    before = Workflow.objects.values_list("lease_token", flat=True).get(pk=SAMPLE_ID)
    commands.run_now(SAMPLE_ID, actor="test", sync=True)
    commands.run_now(SAMPLE_ID, actor="test", sync=True)
    assert Workflow.objects.values_list("lease_token", flat=True).get(pk=SAMPLE_ID) == before + 2


def test_the_reaper_closes_a_dead_run_and_requeues_it_once(sample, time_machine, django_capture_on_commit_callbacks):
    dead = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.SCHEDULE, status=RunStatus.RUNNING,
                                      started_at=timezone.now())
    activity = ActivityRun.objects.create(run=dead, position=1, name="consume")
    assert leases.claim(SAMPLE_ID, dead.pk).won
    assert reaper.reap_abandoned_runs() == [], "a live lease is left alone"

    time_machine.move_to(timezone.now() + timezone.timedelta(seconds=leases.lease_seconds() + 1))
    with django_capture_on_commit_callbacks() as sent:
        assert reaper.reap_abandoned_runs() == [dead.pk]

    assert status_of(dead.pk) == (RunStatus.FAILED, leases.ABANDONED)
    activity.refresh_from_db()
    assert (activity.status, activity.message) == (ActivityStatus.FAILED, leases.ABANDONED)
    workflow = Workflow.objects.get(pk=SAMPLE_ID)
    assert workflow.lease_holder is None, "the lease was taken away: a frozen run waking up commits nothing"
    again = WorkflowRun.objects.get(takeover_of=dead.pk)
    assert (again.status, again.trigger, again.attempt) == (RunStatus.QUEUED, Trigger.SCHEDULE, 2)
    assert len(sent) == 1, "its message is sent once the reaper's transaction commits"
    assert WorkflowAudit.objects.filter(workflow_id=SAMPLE_ID, action="re-queue", actor="system").count() == 1
    assert WorkflowLog.objects.filter(run=dead, level=LogLevel.WARNING, message__contains="reaper").exists()

    # The re-run dies too: closed, not re-queued again.
    WorkflowRun.objects.filter(pk=again.pk).update(status=RunStatus.RUNNING, started_at=timezone.now())
    assert leases.claim(SAMPLE_ID, again.pk).won
    time_machine.move_to(timezone.now() + timezone.timedelta(seconds=leases.lease_seconds() + 1))
    with django_capture_on_commit_callbacks() as sent_again:
        assert reaper.reap_abandoned_runs() == [again.pk]
    assert not sent_again and not WorkflowRun.objects.filter(takeover_of=again.pk).exists()


def test_the_reaper_closes_a_running_run_that_holds_no_lease(sample, time_machine):
    orphan = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.EVENT, status=RunStatus.RUNNING,
                                        started_at=timezone.now())
    assert reaper.reap_abandoned_runs() == [], "just started: it may not have claimed yet"
    time_machine.move_to(timezone.now() + timezone.timedelta(seconds=leases.lease_seconds() + 1))
    assert reaper.reap_abandoned_runs() == [orphan.pk]
    assert status_of(orphan.pk) == (RunStatus.FAILED, leases.ABANDONED)
    assert not WorkflowRun.objects.filter(takeover_of=orphan.pk).exists(), "an event run is not re-queued"


# -- real workers ----------------------------------------------------------------------------------
def worker_env(settings, **extra: str) -> dict[str, str]:
    return {
        "SECRET_KEY": settings.SECRET_KEY,
        "DATABASE_URL": database_url(),
        "WORKFLOW_EXTRA_MODULES": ",".join([sample_workflow.__name__, freeze_hook.__name__]),
        "WORKFLOW_LEASE_SECONDS": str(TEST_LEASE_SECONDS),
        **extra,
    }


def pool_children(worker: WorkerProcess) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_frozen_run_taken_over_commits_nothing_when_it_wakes_and_the_data_equal_an_uninterrupted_run(
    sample, settings, tmp_path: Path
):
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"batch_size": 5})
    marker = tmp_path / "frozen"
    frozen_worker = WorkerProcess(queues=[sample_workflow.SAMPLE_QUEUE],
                                  env=worker_env(settings, FREEZE_AT=f"{SAMPLE_ID}:4", FREEZE_MARKER=str(marker))).start()
    other_worker = None
    pid = None
    try:
        first = commands.run_now(SAMPLE_ID, actor="test")
        wait_for(marker.exists, what="the run frozen inside its third batch, before its commit")
        pid, _ = map(int, marker.read_text().split())
        assert effects() == (10, 10), "two batches committed; the third is held uncommitted"

        time.sleep(TEST_LEASE_SECONDS + 1)  # the lease expires: nobody renews it
        other_worker = WorkerProcess(queues=[sample_workflow.SAMPLE_QUEUE], env=worker_env(settings)).start()
        second = commands.run_now(SAMPLE_ID, actor="test")
        wait_for(lambda: status_of(second.pk)[0] == RunStatus.SUCCEEDED, what="the run that took over")
        assert effects() == (50, 50)

        os.kill(pid, signal.SIGCONT)
        pid = None
        # The takeover marked it abandoned; once awake it finds its lease lost and says so.
        wait_for(lambda: status_of(first.pk)[1] == leases.LEASE_LOST, what="the woken run to end")
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        frozen_worker.stop()
        if other_worker is not None:
            other_worker.stop()

    assert status_of(first.pk) == (RunStatus.FAILED, leases.LEASE_LOST)
    assert effects() == (50, 50), "the held batch rolled back: every source once"
    last_source = SendingFeedback.objects.aggregate(last=Max("id"))["last"]
    assert Workflow.objects.get(pk=SAMPLE_ID).cursors["source"] == last_source, "the cursor never moved backwards"
    assert not ActivityRun.objects.filter(run_id=first.pk, status=ActivityStatus.RUNNING).exists()
    assert WorkflowLog.objects.filter(run_id=first.pk, message__contains="lost its lease").exists()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_killed_pool_process_is_reaped_and_its_run_done_again_with_no_trigger(sample, settings):
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"sleep_ms": 200, "batch_size": 5})
    with WorkerProcess(queues=[sample_workflow.SAMPLE_QUEUE], env=worker_env(settings)) as worker:
        dead = commands.run_now(SAMPLE_ID, actor="test")
        wait_for(lambda: effects()[0] >= 10, what="a few batches")
        killed_at = time.monotonic()
        for pid in pool_children(worker):
            os.kill(pid, signal.SIGKILL)

        wait_for(lambda: WorkflowRun.objects.filter(takeover_of=dead.pk, status=RunStatus.SUCCEEDED).exists(),
                 what="the run done again", timeout=2 * TEST_LEASE_SECONDS + 30)
        assert status_of(dead.pk) == (RunStatus.FAILED, leases.ABANDONED)
        closed_within = time.monotonic() - killed_at

    assert not ActivityRun.objects.filter(run_id=dead.pk, status=ActivityStatus.RUNNING).exists()
    again = WorkflowRun.objects.get(takeover_of=dead.pk)
    assert again.attempt == 2 and again.trigger == dead.trigger
    assert effects() == (50, 50), "the killed batch was rolled back and done once"
    assert closed_within < 2 * TEST_LEASE_SECONDS + 10, closed_within


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_restart_waiting_for_its_halting_run_leaves_the_worker_slot_to_other_runs(sample, settings):
    # The first run holds its lease in its first activity (no batch boundary) until a run was skipped.
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"wait_for_skips": 1, "batch_size": 10})
    with WorkerProcess(queues=[sample_workflow.SAMPLE_QUEUE], env=worker_env(settings)) as busy:
        first = commands.run_now(SAMPLE_ID, actor="test")
        wait_for(lambda: status_of(first.pk)[0] == RunStatus.RUNNING, what="the first run under way")
        with WorkerProcess(queues=[sample_workflow.SAMPLE_QUEUE], env=worker_env(settings), concurrency=1):
            settings.WORKFLOW_LEASE_SECONDS = 60  # the restart's waiting budget; the workers keep short leases
            fresh = commands.restart(SAMPLE_ID, actor="test")
            wait_for(lambda: "waiting for" in status_of(fresh.pk)[1], what="the fresh run waiting", timeout=20)
            quick = commands.run_now(QUICK_ID, actor="test")
            wait_for(lambda: status_of(quick.pk)[0] == RunStatus.SUCCEEDED, what="another workflow's run", timeout=20)
            assert status_of(fresh.pk)[0] == RunStatus.QUEUED, "the fresh run was still waiting meanwhile"
            assert status_of(first.pk)[0] == RunStatus.RUNNING

            skipped = commands.run_now(SAMPLE_ID, actor="test", sync=True)  # lets the first run reach a boundary
            assert skipped.status == RunStatus.SKIPPED
            wait_for(lambda: status_of(fresh.pk)[0] == RunStatus.SUCCEEDED, what="the fresh run", timeout=60)
        assert busy.process.poll() is None

    assert status_of(first.pk)[0] == RunStatus.STOPPED
    assert WorkflowLog.objects.filter(run_id=fresh.pk, message__contains="is waiting for run").exists()
    assert effects() == (50, 50)


def test_an_exclusive_claim_waits_for_a_live_partner_and_takes_an_expired_partner_lease_away(sample, time_machine):
    partner = WorkflowRun.objects.create(workflow_id=QUICK_ID, trigger=Trigger.SHELL, status=RunStatus.RUNNING)
    mine = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL, status=RunStatus.QUEUED)
    assert leases.claim(QUICK_ID, partner.pk).won
    token = Workflow.objects.values_list("lease_token", flat=True).get(pk=QUICK_ID)

    refused = leases.claim(SAMPLE_ID, mine.pk, exclusive_with=[QUICK_ID])
    assert (refused.won, refused.blocked_by, refused.holder) == (False, QUICK_ID, partner.pk)

    time_machine.move_to(timezone.now() + timezone.timedelta(seconds=leases.lease_seconds() + 1))
    assert leases.claim(SAMPLE_ID, mine.pk, exclusive_with=[QUICK_ID]).won
    quick = Workflow.objects.get(pk=QUICK_ID)
    assert (quick.lease_holder, quick.lease_token) == (None, token + 1), "the frozen partner's commits are fenced out"
    assert status_of(partner.pk) == (RunStatus.FAILED, leases.ABANDONED)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_report_share_waiting_for_a_sending_run_leaves_the_worker_slot_to_other_runs(sample, settings):
    delivery = DeliveryFactory(label="Newsletter", channel=Channel.EMAIL)
    DeliveryAggregateFactory(delivery=delivery, day=timezone.localdate() - timezone.timedelta(days=1), sent=10, delivered=9)
    share = ReportShare.objects.create(report=ReportFactory(label="Daily KPIs", period_days=7),
                                       recurrence=ReportShare.Recurrence.DAILY, send_time=timezone.now().time())
    share.recipients.set([UserFactory(email="erin@example.com")])
    # Another reportSendingNow run holds the lease for a minute.
    sending = WorkflowRun.objects.create(workflow_id="reportSendingNow", trigger=Trigger.SHELL, status=RunStatus.RUNNING)
    settings.WORKFLOW_LEASE_SECONDS = 60
    assert leases.claim("reportSendingNow", sending.pk).won

    with WorkerProcess(queues=["celery", sample_workflow.SAMPLE_QUEUE], env=worker_env(settings), concurrency=1):
        report_shares.trigger_send(share_id=share.pk, due_at=timezone.now())
        waiting = WorkflowRun.objects.filter(workflow_id="reportSendingNow").exclude(pk=sending.pk).get()
        wait_for(lambda: "waiting for" in status_of(waiting.pk)[1], what="the share's run waiting", timeout=20)
        quick = commands.run_now(QUICK_ID, actor="test")
        wait_for(lambda: status_of(quick.pk)[0] == RunStatus.SUCCEEDED, what="another workflow's run", timeout=20)
        assert status_of(waiting.pk)[0] == RunStatus.QUEUED, "the share's run was still waiting meanwhile"

        leases.release("reportSendingNow", sending.pk)
        WorkflowRun.objects.filter(pk=sending.pk).update(status=RunStatus.SUCCEEDED)
        wait_for(lambda: status_of(waiting.pk)[0] == RunStatus.SUCCEEDED, what="the share's run", timeout=60)

    assert ReportSend.objects.get(share=share).status == ReportSend.Status.SENT
