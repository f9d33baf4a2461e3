"""Fixtures for the engine's tests: the sample workflow and a real Celery worker process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from campaign.models import Campaign, Delivery, SendingFeedback, TrackingLog
from tests.workflows import sample_workflow
from workflows.models import WorkflowRun
from workflows.schedules import ensure_workflow
from workflows.worker_process import WorkerProcess
from workflows.worker_process import current_database_url as database_url

#: Short enough that a takeover test waits seconds, long enough that a live run renews in time.
TEST_LEASE_SECONDS = 4


@pytest.fixture
def sample(db, settings):
    """The sample workflow's row, the delivery its effects point to, and 50 source rows."""
    settings.WORKFLOW_LEASE_SECONDS = TEST_LEASE_SECONDS
    workflow = ensure_workflow(sample_workflow.definition)
    ensure_workflow(sample_workflow.quick_definition)
    campaign = Campaign.objects.create(label="engine tests")
    Delivery.objects.create(label=sample_workflow.SAMPLE_DELIVERY_LABEL, campaign=campaign)
    SendingFeedback.objects.bulk_create(
        SendingFeedback(delivery_log_id=index, outcome=SendingFeedback.Outcome.DELIVERED) for index in range(1, 51)
    )
    return workflow


def wait_for(condition: Callable[[], bool], *, what: str, timeout: float = 60) -> None:
    """Poll ``condition`` (a real worker doing something) until it holds; fail saying what and
    with the runs recorded so far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    runs = list(WorkflowRun.objects.values_list("pk", "workflow_id", "status", "reason"))
    raise AssertionError(f"timed out waiting for {what}; runs: {runs}")


def fail_on_call(number: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, except that its ``number``-th call raises: a crash between two batches."""
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == number:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    return wrapper


def effects() -> tuple[int, int]:
    """(effect rows, distinct sources among them): equal and complete when exactly-once held."""
    rows = TrackingLog.objects.filter(url__startswith="sample:")
    return rows.count(), rows.values("url").distinct().count()


@pytest.fixture
def worker(transactional_db, settings) -> Iterator[WorkerProcess]:
    """A real worker on the sample workflow's queue, talking to the test database."""
    env = {
        "SECRET_KEY": settings.SECRET_KEY,
        "DATABASE_URL": database_url(),
        "WORKFLOW_EXTRA_MODULES": sample_workflow.__name__,
        "WORKFLOW_LEASE_SECONDS": str(TEST_LEASE_SECONDS),
    }
    process = WorkerProcess(queues=[sample_workflow.SAMPLE_QUEUE], env=env).start()
    try:
        yield process
    finally:
        process.stop()
