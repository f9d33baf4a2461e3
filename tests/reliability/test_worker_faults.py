"""Workers on separate hosts, faults in the middle of a run of the sample workflow
(:mod:`tests.workflows.sample_workflow`: one effect row per source row, so a lost or doubled batch
shows as a wrong count).

- A worker whose link is cut past its lease: the reaper takes the run away, a worker on another
  host does the rest, and once the link is back the cut-off run commits nothing.
- A worker whose PostgreSQL sessions are terminated mid-batch: the run fails with the reason, the
  next run finishes the work, every source exactly once.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from django.db.models import Max
from django.utils import timezone

from campaign.models import SendingFeedback
from tests.reliability.conftest import (
    LEASE_SECONDS,
    Cluster,
    Node,
    backends_of,
    database_url_for,
    terminate_backends,
)
from tests.workflows import sample_workflow
from tests.workflows.helpers import effects, seed_sample_sources, wait_for
from tests.workflows.sample_workflow import SAMPLE_ID, SAMPLE_QUEUE
from workflows import commands, leases, reaper
from workflows.models import ActivityRun, ActivityStatus, RunStatus, Workflow, WorkflowLog, WorkflowRun
from workflows.schedules import ensure_workflow

pytestmark = [pytest.mark.reliability, pytest.mark.postgres,
              pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SOURCES = 2_000
#: 40 batches of 50, each pausing 150 ms inside its transaction: a run of about 8 s, long enough to
#: be caught in the middle, and a fault has four chances in five to land inside a transaction.
PROPERTIES = {"batch_size": 50, "sleep_ms": 150}


@pytest.fixture
def sources(transactional_db: None) -> int:
    ensure_workflow(sample_workflow.definition)
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties=PROPERTIES)
    seed_sample_sources(SOURCES, campaign_label="reliability")
    return SOURCES

#: Runs on a bystander host: one PostgreSQL session, a query every half second, until it fails.
SESSION_HOLDER = """
import sys, time, psycopg2
connection = psycopg2.connect(sys.argv[1])
connection.autocommit = True
while True:
    try:
        connection.cursor().execute("SELECT 1")
    except psycopg2.Error as error:
        print(f"error {error}", flush=True)
        break
    time.sleep(0.5)
"""


def run_of(run_id: int) -> WorkflowRun:
    return WorkflowRun.objects.get(pk=run_id)


def worker_running(workers: list[Node], run: WorkflowRun) -> Node:
    """The worker that received the run's message (its log names the task id)."""
    wait_for(lambda: any(run.celery_task_id in worker.log() for worker in workers), what="a worker to receive the run",
             timeout=30)
    return next(worker for worker in workers if run.celery_task_id in worker.log())


def assert_every_source_once() -> None:
    assert effects() == (SOURCES, SOURCES), "every source exactly once"
    last_source = SendingFeedback.objects.aggregate(last=Max("id"))["last"]
    assert Workflow.objects.get(pk=SAMPLE_ID).cursors["source"] == last_source


def test_a_worker_cut_off_past_its_lease_is_taken_over_and_commits_nothing_once_back(cluster: Cluster, sources: int) -> None:
    workers = [cluster.worker(queues=[SAMPLE_QUEUE]), cluster.worker(queues=[SAMPLE_QUEUE])]
    first = commands.run_now(SAMPLE_ID, actor="test")
    cut_worker = worker_running(workers, first)
    other = next(worker for worker in workers if worker is not cut_worker)
    wait_for(lambda: effects()[0] >= 300, what="a few batches committed", timeout=30)

    cut_worker.host.cut()
    cut_at = time.time()
    wait_for(lambda: leases.lease_of(SAMPLE_ID)[1] < timezone.now(), what="the cut-off run's lease to expire",
             timeout=3 * LEASE_SECONDS)
    committed_before_takeover = effects()[0]
    # The reaper's periodic task, run here rather than waiting for its minute: it takes the lease
    # away (the token grows) and queues the run again, which only the other host can receive.
    assert reaper.reap_abandoned_runs() == [first.pk]
    takeover = WorkflowRun.objects.get(takeover_of=first.pk)
    wait_for(lambda: run_of(takeover.pk).status == RunStatus.SUCCEEDED, what="the takeover run", timeout=60)
    failover_s = run_of(takeover.pk).started_at.timestamp() - cut_at
    assert takeover.celery_task_id in other.log(), "the takeover ran on the other host"
    assert effects() == (SOURCES, SOURCES), "while the first host is still cut off"

    cut_worker.host.heal()
    wait_for(lambda: run_of(first.pk).reason == leases.LEASE_LOST, what="the healed run to notice its lease was lost",
             timeout=90)

    assert_every_source_once()
    first, takeover = run_of(first.pk), run_of(takeover.pk)
    assert first.status == RunStatus.FAILED
    assert takeover.counters["consumed"] == SOURCES - committed_before_takeover, "the takeover did exactly the rest"
    assert not ActivityRun.objects.filter(run=first, status=ActivityStatus.RUNNING).exists()
    assert WorkflowLog.objects.filter(run=first, message__contains="lost its lease").exists()
    assert cut_worker.alive and other.alive
    print(f"\nworker link cut: failover {failover_s:.1f} s (lease {LEASE_SECONDS} s), cut-off run committed "
          f"{committed_before_takeover} rows before the cut and none after, takeover {takeover.counters['consumed']}, "
          f"rows compared {effects()[0]}/{SOURCES}")


def test_a_worker_whose_database_sessions_are_terminated_fails_the_run_with_the_reason_and_the_next_run_finishes(
        cluster: Cluster, sources: int) -> None:
    worker = cluster.worker(queues=[SAMPLE_QUEUE])
    bystander = cluster.host()  # another host, whose session must survive
    log = cluster.log_dir / "bystander.log"
    bystander.popen([sys.executable, "-c", SESSION_HOLDER, database_url_for(bystander)], env=os.environ, log_path=log)
    wait_for(lambda: bool(backends_of(bystander.name)), what="the bystander's session", timeout=30)
    bystander_sessions = backends_of(bystander.name)

    first = commands.run_now(SAMPLE_ID, actor="test")
    wait_for(lambda: effects()[0] >= 300, what="a few batches committed", timeout=30)
    terminated = terminate_backends(worker.host.name)
    wait_for(lambda: run_of(first.pk).status in (RunStatus.FAILED, RunStatus.SUCCEEDED), what="the first run to end",
             timeout=30)
    first = run_of(first.pk)
    rows_after_first = effects()[0]

    assert terminated, "the worker's sessions were found by their application_name"
    assert backends_of(bystander.name) == bystander_sessions, "only that host's sessions were terminated"
    assert "error" not in log.read_text()
    assert first.status == RunStatus.FAILED, first.reason
    assert first.reason.startswith(("OperationalError", "InterfaceError")), first.reason
    assert first.counters["consumed"] == rows_after_first < SOURCES, "what the run counted is what it committed"

    second = commands.run_now(SAMPLE_ID, actor="test")
    wait_for(lambda: run_of(second.pk).status == RunStatus.SUCCEEDED, what="the next run", timeout=60)

    assert_every_source_once()
    assert run_of(second.pk).counters["consumed"] == SOURCES - rows_after_first
    assert worker.alive, "the worker itself survived the lost connection"
    print(f"\nPostgreSQL sessions terminated ({len(terminated)}): run failed with {first.reason!r}, "
          f"next run did the other {SOURCES - rows_after_first} rows, rows compared {effects()[0]}/{SOURCES}")
