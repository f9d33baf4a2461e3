"""cleanup with a real worker frozen inside a unit of work (PostgreSQL): the frozen run's last
unit never commits, a second run on another worker takes the work over, and the data end exactly
as one uninterrupted run leaves them.

Worker A loads :mod:`tests.workflows.freeze_hook`, which stops its pool process with SIGSTOP in the
unit of the second batch of delivery logs, after that unit's deletes and before its fenced commit: the process holds
an open transaction and the row locks of the rows it deleted, as in a long GC pause or a stalled
VM. Its lease expires, and PostgreSQL ends its session once it has been idle in that transaction
for a lease period, releasing the locks. Worker A keeps the frozen message unacknowledged and, with
one slot and a prefetch of one, takes no other: the second run goes to worker B.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from campaign.models import DeliveryLog, Event, FailureReason, FailureType, Quarantine, TrackingLog
from tests.factories import DeliveryLogFactory, EventFactory, QuarantineFactory, TrackingLogFactory
from tests.workflows.helpers import TEST_LEASE_SECONDS, wait_for
from workflows import commands, leases
from workflows.builtin import cleanup
from workflows.models import ActivityRun, ActivityStatus, RunStatus, Workflow, WorkflowLog, WorkflowRun
from workflows.worker_process import WorkerProcess, current_database_url

pytestmark = [pytest.mark.postgres, pytest.mark.worker,
              pytest.mark.django_db(transaction=True, serialized_rollback=True)]

#: Two rows per batch, so that the expired delivery logs take four units (2 + 2 + 2 + 1).
BATCH = {"log_batch_size": 2, "batch_size": 2}
EXPIRED_LOGS, YOUNG_LOGS, EXPIRED_EVENTS, YOUNG_EVENTS = 7, 3, 5, 2
#: The fourth fenced commit of the run: the second batch of expired delivery logs (the first
#: activity, partition maintenance, commits two: its counters' unit and its end).
FROZEN_UNIT = 4


class Workers:
    """The workers a test starts, and the pool process it froze, if any."""

    def __init__(self) -> None:
        self.started: list[WorkerProcess] = []
        self.frozen_pid: int | None = None

    def start(self, queue: str, **env: str) -> WorkerProcess:
        process = WorkerProcess(queues=[queue], env={
            "SECRET_KEY": settings.SECRET_KEY, "DATABASE_URL": current_database_url(),
            "WORKFLOW_LEASE_SECONDS": str(TEST_LEASE_SECONDS), **env})
        self.started.append(process)
        return process.start()

    def thaw(self) -> None:
        if self.frozen_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.frozen_pid, signal.SIGCONT)
            self.frozen_pid = None


@pytest.fixture
def workers(transactional_db: None) -> Iterator[Workers]:
    """At the end, the frozen pool process is continued first (a stopped process would not act on
    the signal that stops its worker), then every worker is stopped."""
    started = Workers()
    try:
        yield started
    finally:
        started.thaw()
        for process in started.started:
            process.stop()


def populate() -> None:
    """Expired and young rows for three activities, ages far from every boundary (the workers run
    on the real clock)."""
    now = timezone.now()
    for index in range(EXPIRED_LOGS):
        log = DeliveryLogFactory(updated_at=now - timedelta(days=200, minutes=index))
        TrackingLogFactory(delivery_log=log, tracked_at=now - timedelta(days=100))  # outlives its log
    for index in range(YOUNG_LOGS):
        DeliveryLogFactory(updated_at=now - timedelta(days=10, minutes=index))
    for index in range(EXPIRED_EVENTS):
        EventFactory(created_at=now - timedelta(days=40, minutes=index))
    for index in range(YOUNG_EVENTS):
        EventFactory(created_at=now - timedelta(days=5, minutes=index))
    for days, reason in ((20, FailureReason.UNREACHABLE), (21, FailureReason.UNREACHABLE), (2, FailureReason.UNREACHABLE),
                         (20, FailureReason.MAILBOX_FULL), (40, FailureReason.MAILBOX_FULL)):
        at = now - timedelta(days=days)
        QuarantineFactory(failure_type=FailureType.SOFT, failure_reason=reason, last_error_at=at, first_error_at=at,
                          error_count=3)


def expected_outcome() -> dict[str, list]:
    """What one uninterrupted run leaves, from the retention and release rules (default
    properties) applied in Python to the rows as they are before any run."""
    now = timezone.now()

    def releasable(row: Quarantine) -> bool:
        if row.status != Quarantine.Status.ERRONEOUS or row.failure_type != FailureType.SOFT:
            return False
        delay = 30 if row.failure_reason == FailureReason.MAILBOX_FULL else 10
        return row.last_error_at < now - timedelta(days=delay)

    return {
        "delivery_logs": sorted(log.pk for log in DeliveryLog.objects.all() if log.updated_at >= now - timedelta(days=180)),
        "tracking_logs": sorted(t.pk for t in TrackingLog.objects.all() if t.tracked_at >= now - timedelta(days=180)),
        "events": sorted(e.pk for e in Event.objects.all() if e.created_at >= now - timedelta(days=30)),
        "released": sorted(q.pk for q in Quarantine.objects.all() if releasable(q)),
    }


def outcome() -> dict[str, list]:
    return {
        "delivery_logs": sorted(DeliveryLog.objects.values_list("pk", flat=True)),
        "tracking_logs": sorted(TrackingLog.objects.values_list("pk", flat=True)),
        "events": sorted(Event.objects.values_list("pk", flat=True)),
        "released": sorted(Quarantine.objects.filter(status=Quarantine.Status.VALID, error_count=0)
                           .values_list("pk", flat=True)),
    }


def sessions_idle_in_transaction() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND state IN ('idle in transaction', 'idle in transaction (aborted)')")
        return cursor.fetchone()[0]


def test_a_cleanup_run_frozen_before_its_commit_loses_its_lease_commits_nothing_and_a_takeover_ends_exact(
        workers: Workers, tmp_path: Path):
    if connection.vendor != "postgresql":
        pytest.skip("a frozen session ended by idle_in_transaction_session_timeout: PostgreSQL only")
    populate()
    expected = expected_outcome()
    assert len(expected["delivery_logs"]) == YOUNG_LOGS and len(expected["released"]) == 3, "the data test the rules"
    queue = cleanup.definition.queue
    marker = tmp_path / "frozen"

    workers.start(queue, WORKFLOW_EXTRA_MODULES="tests.workflows.freeze_hook", FREEZE_AT=f"cleanup:{FROZEN_UNIT}",
                  FREEZE_MARKER=str(marker))
    frozen = commands.run_now("cleanup", actor="test", overrides=BATCH)
    wait_for(marker.exists, what="worker A to freeze inside its second batch of delivery logs")
    pid, run_id = (int(value) for value in marker.read_text().split())
    workers.frozen_pid = pid
    assert run_id == frozen.pk

    workers.start(queue)  # worker B
    wait_for(lambda: leases.lease_of("cleanup")[1] < timezone.now(), what="the frozen run's lease to expire",
             timeout=TEST_LEASE_SECONDS * 3)
    wait_for(lambda: sessions_idle_in_transaction() == 0, what="PostgreSQL to end the frozen session",
             timeout=TEST_LEASE_SECONDS * 3)
    takeover = commands.run_now("cleanup", actor="test", overrides=BATCH)
    wait_for(lambda: WorkflowRun.objects.get(pk=takeover.pk).status == RunStatus.SUCCEEDED,
             what="the second run, on worker B, to succeed")

    workers.thaw()
    wait_for(lambda: WorkflowRun.objects.get(pk=frozen.pk).reason == leases.LEASE_LOST,
             what="the continued run to notice it lost its lease")

    frozen.refresh_from_db()
    takeover.refresh_from_db()
    assert (frozen.status, frozen.reason) == (RunStatus.FAILED, leases.LEASE_LOST)
    assert not ActivityRun.objects.filter(run=frozen, status__in=[ActivityStatus.RUNNING, ActivityStatus.PAUSED]).exists()
    assert list(ActivityRun.objects.filter(run=frozen).values_list("name", flat=True)) == [
        "maintain_partitions", "purge_delivery_logs"], \
        "the frozen run went no further than the activity it froze in"
    assert WorkflowLog.objects.filter(run=frozen, message__contains="lost its lease").exists()
    assert outcome() == expected
    # Only the frozen run's first batch committed: its deletes and their counter; the second run
    # deleted the rest, the rows the frozen unit had deleted before it was cut off included.
    assert frozen.counters["delivery_logs_removed"] == 2
    assert takeover.counters["delivery_logs_removed"] == EXPIRED_LOGS - 2
    assert takeover.counters["events_removed"] == EXPIRED_EVENTS
    assert takeover.counters["quarantine_released_soft_errors"] + takeover.counters["quarantine_released_mailbox_full"] == 3
    assert Workflow.objects.get(pk="cleanup").lease_holder is None, "the second run released the lease"
