"""Every task a schedule sends is one a real worker has registered.

Beat sends ``PeriodicTask.task`` by name; a worker that did not import the task rejects the
message ("Received unregistered task") and the job silently never runs. So the worker is started as
the Procfile starts it (``celery -A campaign worker``, which imports ``<app>.tasks`` of each app) and
asked over the broker which tasks it knows (``celery inspect registered``), against every
PeriodicTask the project creates: the workflows' schedules after ``migrate``, the engine's
housekeeping schedules and a report share's schedule.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import time, timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from campaign import report_shares
from campaign.models import ReportShare
from project.celery import app
from tests.factories import ReportFactory, UserFactory
from tests.workflows.helpers import wait_for
from workflows.definition import all_definitions, builtin_definitions
from workflows.housekeeping import HOUSEKEEPING_SCHEDULES
from workflows.models import LogLevel, Workflow, WorkflowLog, WorkflowState
from workflows.tasks import REAP_ABANDONED_RUNS_TASK, REPORT_LONG_PAUSES_TASK
from workflows.worker_process import WorkerProcess
from workflows.worker_process import current_database_url as database_url

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

#: This test's own queue: the broker may be shared with other test runs, whose messages on the
#: default queue this worker must not take.
QUEUE = f"registered-tasks-{os.getpid()}"


@pytest.fixture
def project_worker(settings) -> Iterator[WorkerProcess]:
    """A worker with the project's workflows only (no test module), on the test database."""
    process = WorkerProcess(queues=[QUEUE], env={"SECRET_KEY": settings.SECRET_KEY, "DATABASE_URL": database_url()})
    process.env.pop("WORKFLOW_EXTRA_MODULES", None)  # as in production: the builtin workflows only
    process.start()
    try:
        yield process
    finally:
        process.stop()


def node_name(worker: WorkerProcess) -> str:
    """The worker's node name, from its start-up banner (``-------------- NAME v5.x (...)``)."""
    match = re.search(r"-{3,} (\S+@\S+) v\d", worker.log())
    assert match, worker.log()
    return match.group(1)


def inspect_registered(worker: WorkerProcess) -> set[str]:
    """What the live worker answers to ``celery -A campaign inspect registered``."""
    node = node_name(worker)
    completed = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "campaign", "inspect", "registered", "-d", node, "--json", "--timeout", "10"],
        cwd=settings.BASE_DIR, env=worker.env, capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout
    replies = json.loads(completed.stdout)
    assert set(replies) == {node}, replies
    return {entry.split()[0] for entry in replies[node]}


def startup_task_list(worker: WorkerProcess) -> set[str]:
    """The ``[tasks]`` section a worker prints at start-up with ``--loglevel INFO``."""
    section = worker.log().split("[tasks]", 1)[1]
    return set(re.findall(r"^\s+\. (\S+)", section.split("\n\n", 1)[0], flags=re.MULTILINE))


def scheduled_task_names() -> set[str]:
    """``PeriodicTask.task`` of every schedule in the database, except those of the workflows that
    test modules declare (the project's worker does not know them)."""
    test_only = {definition.task_name for definition in all_definitions()} - {
        definition.task_name for definition in builtin_definitions()
    }
    return set(PeriodicTask.objects.values_list("task", flat=True)) - test_only


def test_a_real_worker_registers_every_task_the_project_schedules(project_worker: WorkerProcess) -> None:
    share = report_shares.create_share(report=ReportFactory(), recipients=[UserFactory()],
                                       recurrence=ReportShare.Recurrence.DAILY, send_time=time(6))
    scheduled = scheduled_task_names()
    # What the project creates, so that an empty or partial database cannot pass the test.
    workflow_tasks = {d.task_name for d in builtin_definitions() if d.schedule is not None}
    assert len(workflow_tasks) == 14  # the 15 workflows but reportSendingNow, which runs on demand
    housekeeping = {schedule.task for schedule in HOUSEKEEPING_SCHEDULES}
    assert housekeeping == {REPORT_LONG_PAUSES_TASK, REAP_ABANDONED_RUNS_TASK}
    share_task = ReportShare.objects.get(pk=share.pk).periodic_task.task
    assert share_task == "workflows.reportSendingNow"
    assert workflow_tasks | housekeeping | {share_task} <= scheduled

    registered = inspect_registered(project_worker)
    listed_at_startup = startup_task_list(project_worker)

    assert scheduled - registered == set()
    assert scheduled - listed_at_startup == set()
    assert REPORT_LONG_PAUSES_TASK in listed_at_startup


def test_a_real_worker_runs_the_housekeeping_tasks_sent_by_name(project_worker: WorkerProcess) -> None:
    paused_at = timezone.now() - timedelta(days=8)
    Workflow.objects.filter(pk="billing").update(state=WorkflowState.PAUSED, paused_at=paused_at)

    # By name, as beat sends them (the sender does not import the task).
    app.send_task(REPORT_LONG_PAUSES_TASK, queue=QUEUE)
    reap = app.send_task(REAP_ABANDONED_RUNS_TASK, queue=QUEUE)

    wait_for(lambda: WorkflowLog.objects.filter(workflow_id="billing", level=LogLevel.WARNING).exists(),
             what="the weekly report's journal entry")
    entry = WorkflowLog.objects.get(workflow_id="billing", level=LogLevel.WARNING)
    assert entry.message.startswith("billing has been paused for 8 days")
    wait_for(lambda: f"{REAP_ABANDONED_RUNS_TASK}[{reap.id}] succeeded" in project_worker.log(), what="the reaper's run")
    assert "unregistered task" not in project_worker.log()
