"""The engine in process: gating, claims, activity modes, failures, thresholds, retries."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from django.core import mail
from django.db import close_old_connections, connection
from django.utils import timezone

from campaign.models import SendingFeedback
from tests.workflows.helpers import effects
from tests.workflows.sample_workflow import SAMPLE_ID
from workflows import commands, leases
from workflows import definition as definition_module
from workflows.context import Batch
from workflows.definition import RetryPolicy
from workflows.engine import NOT_IMPLEMENTED, Requeue, RunRequest, TransientRunError, execute
from workflows.errors import PermanentError, TransientError, is_transient
from workflows.housekeeping import report_long_pauses
from workflows.models import (
    ActivityRun,
    LogLevel,
    RunStatus,
    Trigger,
    Workflow,
    WorkflowAudit,
    WorkflowLog,
    WorkflowRun,
    WorkflowState,
)
from workflows.schedules import ensure_workflow
from workflows.tasks import backoff_seconds


def sync_run(**overrides: object) -> WorkflowRun:
    return commands.run_now(SAMPLE_ID, actor="test", sync=True, overrides=overrides or None)


UNWRITTEN = definition_module.register(definition_module.WorkflowDefinition(
    id="unwrittenSample", label="Unwritten", description="A declared workflow without activities yet.", schedule=None))


def test_unimplemented_workflow_fails_with_reason_not_implemented(db):
    ensure_workflow(UNWRITTEN)

    run = commands.run_now(UNWRITTEN.id, actor="test", sync=True)

    assert (run.status, run.reason) == (RunStatus.FAILED, NOT_IMPLEMENTED)
    assert Workflow.objects.get(pk=UNWRITTEN.id).consecutive_errors == 0, "not a malfunction to escalate"


def test_run_counts_batches_and_journals_each_activity(sample):
    run = sync_run(batch_size=7)

    assert run.status == RunStatus.SUCCEEDED
    assert run.counters == {"prepared": 1, "consumed": 50, "finished": 1}
    assert run.progress_done == 50 and run.progress_total == 50
    last_source = SendingFeedback.objects.order_by("-id").values_list("id", flat=True)[0]
    assert Workflow.objects.get(pk=SAMPLE_ID).cursors == {"source": last_source}
    assert list(WorkflowLog.objects.filter(run=run, message__startswith="Done").values_list("activity", flat=True)) \
        == ["finish", "consume", "prepare"]


def _count_to(rows: int):
    """An activity consuming ``rows`` rows in cursor-less batches of 2, announcing them first."""

    def step(position: int, limit: int) -> Batch:
        taken = min(limit, rows - position)
        return Batch(rows=taken, cursor=position + taken, counters={"rows": taken})

    def activity(ctx) -> None:
        ctx.set_progress_total(rows)
        ctx.batches(None, step, start=0, batch_size=2)

    activity.__name__ = f"count_to_{rows}"
    return activity


TWO_PHASES = definition_module.register(definition_module.WorkflowDefinition(
    id="twoPhasesSample", label="Two phases", description="Two activities of cursor-less batches.", schedule=None,
    activities=(_count_to(5), _count_to(3))))


def test_cursor_less_batches_keep_their_position_in_memory_and_totals_add_up_over_activities(db):
    ensure_workflow(TWO_PHASES)

    run = commands.run_now(TWO_PHASES.id, actor="test", sync=True)

    assert run.status == RunStatus.SUCCEEDED
    assert run.counters == {"rows": 8}
    assert (run.progress_done, run.progress_total) == (8, 8), "each activity's total adds to what was done before it"
    assert Workflow.objects.get(pk=TWO_PHASES.id).cursors == {}


def test_a_second_run_continues_from_the_cursor_and_counts_nothing_twice(sample):
    sync_run()
    second = sync_run()

    assert second.counters["consumed"] == 0
    assert effects() == (50, 50)


def test_overrides_apply_to_one_run_only(sample):
    run = sync_run(batch_size=50)

    assert run.overrides == {"batch_size": 50}
    assert Workflow.objects.get(pk=SAMPLE_ID).properties == {}


def test_disabled_activity_is_skipped_and_journaled(sample):
    Workflow.objects.filter(pk=SAMPLE_ID).update(activity_modes={"consume": "disabled"})

    run = sync_run()

    assert run.status == RunStatus.SUCCEEDED
    assert ActivityRun.objects.get(run=run, name="consume").status == "skipped"
    assert effects() == (0, 0)


def test_suspended_activity_halts_the_run_and_resume_continues_it(sample, django_capture_on_commit_callbacks):
    Workflow.objects.filter(pk=SAMPLE_ID).update(activity_modes={"consume": "suspended"})
    run = sync_run()
    assert (run.status, run.halted_activity) == (RunStatus.PAUSED, "consume")
    assert "suspended" in run.reason

    blocked = sync_run()
    assert blocked.status == RunStatus.SKIPPED and f"run #{run.pk} is paused" in blocked.reason

    Workflow.objects.filter(pk=SAMPLE_ID).update(activity_modes={})
    continued = execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL, run_id=run.pk))
    assert continued.pk == run.pk and continued.status == RunStatus.SUCCEEDED
    assert ActivityRun.objects.filter(run=run, name="prepare").count() == 1
    assert effects() == (50, 50)


def test_scheduled_trigger_of_a_paused_workflow_is_skipped(sample):
    commands.pause(SAMPLE_ID, actor="test")

    run = execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SCHEDULE))

    assert (run.status, run.reason) == (RunStatus.SKIPPED, "workflow is paused")


SLOT = timezone.make_aware(timezone.datetime(2030, 3, 4, 8, 0), timezone.get_fixed_timezone(0))


def test_a_slot_sent_twice_runs_once_and_the_second_message_is_recorded_as_skipped(sample):
    first = execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SCHEDULE, task_id="beat-a", slot=SLOT))
    second = execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SCHEDULE, task_id="beat-b", slot=SLOT))

    assert (first.status, first.slot) == (RunStatus.SUCCEEDED, SLOT)
    assert (second.status, second.slot) == (RunStatus.SKIPPED, None)
    assert second.reason == f"slot {timezone.localtime(SLOT):%Y-%m-%d %H:%M} already sent (run #{first.pk})"
    assert effects() == (50, 50)
    later = execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SCHEDULE, task_id="beat-a2",
                               slot=SLOT + timezone.timedelta(minutes=1)))
    assert later.status == RunStatus.SUCCEEDED


def test_a_slot_message_delivered_again_carries_on_with_its_own_run(sample):
    """A worker died before it could record anything: the broker delivers the same message again."""
    queued = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.SCHEDULE, celery_task_id="beat-a", slot=SLOT)

    run = execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SCHEDULE, task_id="beat-a", slot=SLOT))

    assert (run.pk, run.status) == (queued.pk, RunStatus.SUCCEEDED)
    assert WorkflowRun.objects.filter(workflow_id=SAMPLE_ID).count() == 1


def test_a_retry_of_a_scheduled_run_is_not_taken_for_a_second_send(sample):
    failed = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.SCHEDULE, celery_task_id="beat-a",
                                        slot=SLOT, status=RunStatus.FAILED)

    retry = execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SCHEDULE, task_id="beat-a", slot=SLOT, attempt=2))

    assert retry.pk != failed.pk and retry.status == RunStatus.SUCCEEDED


def test_run_now_is_refused_when_paused_unless_forced(sample):
    commands.pause(SAMPLE_ID, actor="test")
    with pytest.raises(commands.CommandRefused, match="paused"):
        sync_run()

    forced = commands.run_now(SAMPLE_ID, actor="test", sync=True, force=True)
    assert forced.status == RunStatus.SUCCEEDED


def test_live_lease_makes_a_trigger_skip_with_the_holder(sample):
    holder = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL, status=RunStatus.RUNNING)
    assert leases.claim(SAMPLE_ID, holder.pk).won

    run = sync_run()

    assert run.status == RunStatus.SKIPPED
    assert run.reason == f"already running (run #{holder.pk})"


def test_expired_lease_is_taken_over_and_the_dead_run_marked_abandoned(sample, time_machine):
    dead = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL, status=RunStatus.RUNNING)
    assert leases.claim(SAMPLE_ID, dead.pk).won
    time_machine.move_to(timezone.now() + timezone.timedelta(seconds=leases.lease_seconds() + 1))

    run = sync_run()

    assert run.status == RunStatus.SUCCEEDED
    dead.refresh_from_db()
    assert (dead.status, dead.reason) == (RunStatus.FAILED, leases.ABANDONED)
    assert WorkflowLog.objects.filter(run=run, level=LogLevel.WARNING, message__contains=f"#{dead.pk} was abandoned").exists()


def test_lease_is_released_after_the_run(sample):
    sync_run()

    workflow = Workflow.objects.get(pk=SAMPLE_ID)
    assert (workflow.lease_holder, workflow.lease_until) == (None, None)


def test_failure_is_journaled_and_the_threshold_pauses_and_emails_supervisors(sample, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    Workflow.objects.filter(pk=SAMPLE_ID).update(
        properties={"fail": True}, error_threshold=2, supervisors="ops@example.com, lead@example.com")

    first = sync_run()
    assert (first.status, first.reason) == (RunStatus.FAILED, "RuntimeError: sample failure requested")
    assert WorkflowLog.objects.filter(run=first, level=LogLevel.ERROR, message__contains="Traceback").exists()
    assert Workflow.objects.get(pk=SAMPLE_ID).state == WorkflowState.STARTED

    sync_run()
    workflow = Workflow.objects.get(pk=SAMPLE_ID)
    assert workflow.state == WorkflowState.PAUSED
    assert WorkflowAudit.objects.filter(workflow=workflow, action="pause", actor="system").exists()
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ops@example.com", "lead@example.com"]
    assert "paused after 2 failed runs" in mail.outbox[0].subject


def test_success_resets_the_consecutive_errors(sample):
    Workflow.objects.filter(pk=SAMPLE_ID).update(consecutive_errors=2)

    sync_run()

    assert Workflow.objects.get(pk=SAMPLE_ID).consecutive_errors == 0


def test_transient_failure_is_raised_for_a_retry_and_not_counted(sample, monkeypatch):
    from tests.workflows import sample_workflow

    def flaky(ctx):
        raise TransientError("analytics answered 503")

    flaky.__name__ = "prepare"
    flaky_definition = dataclasses.replace(
        sample_workflow.definition, activities=(flaky,) + sample_workflow.definition.activities[1:])
    monkeypatch.setitem(definition_module._REGISTRY, SAMPLE_ID, flaky_definition)

    with pytest.raises(TransientRunError) as raised:
        execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL, retry_allowed=True))

    assert raised.value.run.status == RunStatus.FAILED
    assert raised.value.run.reason == "analytics answered 503 (transient; will retry)"
    assert Workflow.objects.get(pk=SAMPLE_ID).consecutive_errors == 0


def test_only_transient_errors_are_retried():
    import requests
    from django.db import OperationalError

    assert is_transient(TransientError("503"))
    assert is_transient(requests.ConnectionError())
    assert is_transient(OperationalError("server closed the connection"))
    assert not is_transient(PermanentError("malformed answer"))
    assert not is_transient(ValueError("bug"))
    assert not is_transient(KeyError("bug"))


def test_backoff_grows_exponentially_with_full_jitter_and_a_ceiling():
    policy = RetryPolicy(max_retries=5, backoff_s=10, backoff_max_s=60)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 60), (5, 60)]:
        delays = [backoff_seconds(policy, attempt) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > ceiling / 2, "jitter spreads over the whole interval"


def test_every_command_is_audited_with_its_user(sample, django_user_model):
    user = django_user_model.objects.create_user("operator")
    commands.pause(SAMPLE_ID, user=user)
    commands.resume(SAMPLE_ID, user=user)
    commands.stop(SAMPLE_ID, user=user)
    commands.start(SAMPLE_ID, user=user)

    audit = list(WorkflowAudit.objects.filter(workflow_id=SAMPLE_ID).order_by("id").values_list("action", "actor", "changes"))
    assert audit == [
        ("pause", "operator", {"state": ["started", "paused"]}),
        ("resume", "operator", {"state": ["paused", "started"]}),
        ("stop", "operator", {"state": ["started", "stopped"]}),
        ("start", "operator", {"state": ["stopped", "started"]}),
    ]


def test_stop_ends_a_paused_run_for_good(sample):
    Workflow.objects.filter(pk=SAMPLE_ID).update(activity_modes={"consume": "suspended"})
    paused = sync_run()

    commands.stop(SAMPLE_ID, actor="test")

    paused.refresh_from_db()
    assert paused.status == RunStatus.STOPPED
    with pytest.raises(commands.CommandRefused, match="cannot be resumed"):
        commands.resume(SAMPLE_ID, actor="test")


def test_long_pause_is_reported_once_a_week(sample, settings, time_machine):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    Workflow.objects.filter(pk=SAMPLE_ID).update(supervisors="ops@example.com")
    commands.pause(SAMPLE_ID, actor="test")
    start = timezone.now()

    time_machine.move_to(start + timezone.timedelta(days=6))
    assert SAMPLE_ID not in report_long_pauses()
    time_machine.move_to(start + timezone.timedelta(days=8))
    assert SAMPLE_ID in report_long_pauses()
    assert SAMPLE_ID not in report_long_pauses(), "once a week, not at every check"
    time_machine.move_to(start + timezone.timedelta(days=15, hours=1))
    assert SAMPLE_ID in report_long_pauses()

    assert [message.subject for message in mail.outbox] == ["[workflows] Workflow engineSample paused for 8 days",
                                                             "[workflows] Workflow engineSample paused for 15 days"]
    assert WorkflowLog.objects.filter(workflow_id=SAMPLE_ID, level=LogLevel.WARNING, message__contains="paused for").count() == 2


#: Simultaneous triggers: each thread holds a database connection (and the winner a second one for
#: its lease), so they stay well below PostgreSQL's default max_connections of 100, shared with
#: whatever else runs on the server.
SIMULTANEOUS = 40


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_simultaneous_triggers_give_one_run_and_skip_the_others(sample):
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties={"wait_for_skips": SIMULTANEOUS - 1})
    barrier = threading.Barrier(SIMULTANEOUS)
    errors: list[BaseException] = []

    def trigger() -> None:
        try:
            barrier.wait()
            execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SCHEDULE))
        except BaseException as error:  # collected and asserted below
            errors.append(error)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=trigger) for _ in range(SIMULTANEOUS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    statuses = list(WorkflowRun.objects.filter(workflow_id=SAMPLE_ID).values_list("status", flat=True))
    assert len(statuses) == SIMULTANEOUS
    assert statuses.count(RunStatus.SUCCEEDED) == 1
    assert statuses.count(RunStatus.SKIPPED) == SIMULTANEOUS - 1
    assert all(reason.startswith("already running (run #") for reason in
               WorkflowRun.objects.filter(status=RunStatus.SKIPPED).values_list("reason", flat=True))
    assert effects() == (50, 50)


def test_a_message_for_a_finished_run_leaves_it_untouched(sample):
    run = sync_run()

    again = execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL, run_id=run.pk, task_id="redelivered"))

    assert again.pk == run.pk
    run.refresh_from_db()
    assert (run.status, run.reason) == (RunStatus.SUCCEEDED, "")
    assert WorkflowRun.objects.filter(workflow_id=SAMPLE_ID).count() == 1


def test_a_duplicate_message_for_a_live_run_looks_again_once_its_lease_had_to_be_renewed_then_starts_nothing(sample):
    live = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL, status=RunStatus.RUNNING)
    assert leases.claim(SAMPLE_ID, live.pk).won

    with pytest.raises(Requeue) as wait:
        execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL, run_id=live.pk))
    assert wait.value.recheck and 0 < wait.value.countdown <= leases.lease_seconds() + 1
    leases.renew(SAMPLE_ID, live.pk)  # the run is alive: it renewed meanwhile
    again = execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL, run_id=live.pk, recheck=True))

    assert again.pk == live.pk and again.status == RunStatus.RUNNING
    assert WorkflowRun.objects.filter(workflow_id=SAMPLE_ID).count() == 1
    assert effects() == (0, 0)


def test_a_message_redelivered_after_its_worker_died_takes_the_run_over(sample, time_machine):
    dead = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.ADMIN, status=RunStatus.RUNNING,
                                      requested_by="alice", overrides={"batch_size": 20})
    assert leases.claim(SAMPLE_ID, dead.pk).won
    time_machine.move_to(timezone.now() + timezone.timedelta(seconds=leases.lease_seconds() + 1))

    attempt = execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.ADMIN, run_id=dead.pk))

    assert attempt.pk != dead.pk
    assert (attempt.status, attempt.attempt, attempt.requested_by, attempt.overrides) == (
        RunStatus.SUCCEEDED, 2, "alice", {"batch_size": 20})
    dead.refresh_from_db()
    assert (dead.status, dead.reason) == (RunStatus.FAILED, leases.ABANDONED)


def test_a_message_sent_outside_the_commands_is_audited(sample):
    execute(RunRequest(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL, task_id="abc"))

    assert WorkflowAudit.objects.filter(workflow_id=SAMPLE_ID, action="run now", note="task abc").exists()


def test_http_429_and_5xx_are_transient_but_other_4xx_are_not():
    import requests

    def http_error(status: int) -> requests.HTTPError:
        response = requests.Response()
        response.status_code = status
        return requests.HTTPError(response=response)

    assert [is_transient(http_error(status)) for status in (429, 500, 502, 503, 504)] == [True] * 5
    assert [is_transient(http_error(status)) for status in (400, 401, 403, 404, 422)] == [False] * 5


def test_an_activity_can_skip_the_run_with_a_reason(sample, monkeypatch):
    from tests.workflows import sample_workflow
    from workflows.context import SkipRun

    def no_account(ctx):
        raise SkipRun("no enabled analytics account")

    no_account.__name__ = "prepare"
    skipping = dataclasses.replace(sample_workflow.definition,
                                   activities=(no_account,) + sample_workflow.definition.activities[1:])
    monkeypatch.setitem(definition_module._REGISTRY, SAMPLE_ID, skipping)

    run = sync_run()

    assert (run.status, run.reason) == (RunStatus.SKIPPED, "no enabled analytics account")
    assert list(run.activities.values_list("name", "status")) == [("prepare", "skipped")]
    assert effects() == (0, 0)
    assert Workflow.objects.get(pk=SAMPLE_ID).consecutive_errors == 0


def test_a_claim_lost_to_a_run_that_already_let_go_is_tried_again_and_never_names_run_none(sample, monkeypatch):
    """Between the claim's read and its update, another run takes the lease and releases it: the
    update finds nothing to change, and the workflow is free again."""
    mine = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL)
    other = WorkflowRun.objects.create(workflow_id=SAMPLE_ID, trigger=Trigger.SHELL)
    lease_end = leases.lease_end
    raced = []

    def another_run_comes_and_goes(now=None):
        if not raced:
            raced.append(True)
            assert leases.claim(SAMPLE_ID, other.pk).won
            leases.release(SAMPLE_ID, other.pk)
        return lease_end(now)

    monkeypatch.setattr(leases, "lease_end", another_run_comes_and_goes)

    claim = leases.claim(SAMPLE_ID, mine.pk)

    assert raced, "the race happened"
    assert claim.won
    assert leases.lease_of(SAMPLE_ID)[0] == mine.pk
