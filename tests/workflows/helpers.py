"""Helpers for the engine's tests: polling a real worker, injecting a crash, counting the sample
workflow's effects. The fixtures are in ``conftest.py``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from campaign.models import Campaign, Delivery, SendingFeedback, TrackingLog
from tests.workflows import sample_workflow
from workflows.models import WorkflowRun

#: Short enough that a takeover test waits seconds, long enough that a live run renews in time.
TEST_LEASE_SECONDS = 4


def seed_sample_sources(count: int, *, campaign_label: str) -> None:
    """The sample workflow's inputs: the delivery its effects point to, and ``count`` delivered
    feedback rows (delivery logs 1 to ``count``) for it to consolidate."""
    Delivery.objects.create(label=sample_workflow.SAMPLE_DELIVERY_LABEL, campaign=Campaign.objects.create(label=campaign_label))
    SendingFeedback.objects.bulk_create(
        SendingFeedback(delivery_log_id=index, outcome=SendingFeedback.Outcome.DELIVERED) for index in range(1, count + 1)
    )


def wait_for(condition: Callable[[], bool], *, what: str, timeout: float = 60) -> float:
    """Poll ``condition`` (a real worker doing something) until it holds; return the seconds it
    took. On time-out, fail saying what, with the latest runs recorded so far."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            runs = list(WorkflowRun.objects.order_by("-pk").values_list("pk", "workflow_id", "status", "reason")[:30])
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; latest runs: {runs}")
        time.sleep(0.05)
    return time.monotonic() - start


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
