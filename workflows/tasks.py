"""The Celery side: one task ``workflows.<id>`` per definition, a thin wrapper around the engine.

Task names are stable: they live in broker messages and in beat's rows. Arguments are primitives
(a run id, a trigger name), never model instances.

A definition only declares a workflow; its task is made here (:func:`make_task`) when the app is
ready (:mod:`workflows.apps`), for every definition registered then or later. This module is
imported once Django is set up: by the app's ``ready`` and by ``app.autodiscover_tasks()`` in every
worker; the router, which Celery imports earlier, is :mod:`workflows.routing`.

The tasks are declared on ``celery.current_app``, the deployment's app (project/celery.py), which the
engine does not import: ``current_app.task`` is that app's own decorator, so each task is made and
registered exactly as ``app.task`` would (Celery's ``shared_task`` would return a proxy instead).
"""

from __future__ import annotations

import logging
import math
import random
from datetime import datetime
from typing import Any

from celery import Task, current_app
from celery.signals import task_prerun
from django.db import close_old_connections

from workflows import (
    housekeeping,
    reaper,
    shutdown,  # noqa: F401 - connects a worker's graceful stop (its signal handlers)
)
from workflows.definition import RetryPolicy, WorkflowDefinition
from workflows.engine import Requeue, RunRequest, TransientRunError, execute
from workflows.housekeeping import REAP_ABANDONED_RUNS_TASK, REPORT_LONG_PAUSES_TASK

logger = logging.getLogger(__name__)

#: The message header in which beat names the scheduled time it sends a workflow for.
SLOT_HEADER = "workflow_slot"


def whole_seconds(countdown: float) -> int:
    """A countdown rounded up to whole seconds. RabbitMQ's native delayed delivery (quorum queues)
    counts in whole seconds and Celery refuses a countdown it would round down to 0 (ValueError at
    the send, so the message would never be sent); rounding up never sends a message early."""
    return math.ceil(countdown)


def backoff_seconds(policy: RetryPolicy, attempt: int) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, base * 2^(attempt-1))]."""
    ceiling = min(policy.backoff_max_s, policy.backoff_s * 2 ** (attempt - 1))
    return random.uniform(0, ceiling)


@task_prerun.connect(dispatch_uid="workflows.fresh_connections")
def replace_old_connections(**kwargs: Any) -> None:
    """Before every task: replace a database connection that outlived CONN_MAX_AGE or broke (the
    database restarted). The worker keeps connections between tasks (CELERY_DB_REUSE_MAX)."""
    close_old_connections()


def slot_of(task: Task) -> datetime | None:
    """The scheduled time the current message was sent for by beat, or None."""
    value = task.request.get(SLOT_HEADER)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        logger.warning("ignoring the malformed %s header %r of task %s", SLOT_HEADER, value, task.request.id)
        return None


def make_task(definition: WorkflowDefinition) -> Task:
    @current_app.task(
        name=definition.task_name,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        soft_time_limit=definition.soft_time_limit_s,
        time_limit=definition.hard_time_limit_s,
        ignore_result=True,
    )
    def run_workflow(
        self: Task,
        run_id: int | None = None,
        trigger: str = "shell",
        requested_by: str = "",
        force: bool = False,
        overrides: dict[str, Any] | None = None,
        attempt: int = 1,
        wait_for_lease_s: float = 0.0,
        wait_until: float | None = None,
        recheck: bool = False,
    ) -> dict[str, Any]:
        request = RunRequest(
            workflow_id=definition.id, trigger=trigger, run_id=run_id, requested_by=requested_by,
            task_id=self.request.id or "", force=force, overrides=overrides, attempt=attempt,
            retry_allowed=attempt <= definition.retry.max_retries, wait_for_lease_s=wait_for_lease_s,
            wait_until=wait_until, recheck=recheck, slot=slot_of(self),
        )
        try:
            run = execute(request)
        except Requeue as wait:
            # Waiting is a message sent again with a countdown: the slot serves other runs meanwhile.
            self.apply_async(
                kwargs={"run_id": wait.run.pk, "trigger": trigger, "requested_by": requested_by, "force": force,
                        "overrides": overrides, "attempt": attempt, "wait_for_lease_s": wait_for_lease_s,
                        "wait_until": wait.wait_until, "recheck": wait.recheck},
                countdown=whole_seconds(wait.countdown),
            )
            return {"run_id": wait.run.pk, "status": wait.run.status, "reason": wait.run.reason}
        except TransientRunError as error:
            # A fresh run (attempt + 1) after a delay; the failed attempt stays in the history.
            raise self.retry(
                kwargs={"trigger": trigger, "requested_by": requested_by, "force": force,
                        "overrides": error.run.overrides, "attempt": attempt + 1},
                countdown=whole_seconds(backoff_seconds(definition.retry, attempt)),
                max_retries=definition.retry.max_retries,
            ) from None
        return {"run_id": run.pk, "status": run.status, "reason": run.reason}

    run_workflow.__doc__ = f"{definition.label}: {definition.description}"
    return run_workflow


# -- housekeeping --------------------------------------------------------------------------------
# The engine's own periodic jobs (schedules: workflows.housekeeping.HOUSEKEEPING_SCHEDULES). They are
# defined here, in the module `app.autodiscover_tasks()` imports, so that every worker registers
# them; the services they call live in workflows.housekeeping and workflows.reaper.

#: The weekly report journals and emails a handful of workflows: minutes would mean a hung mail server.
REPORT_LONG_PAUSES_SOFT_TIME_LIMIT_S = 300
REPORT_LONG_PAUSES_HARD_TIME_LIMIT_S = 360
#: The reaper runs every minute: it must end well within the minute, before the next one is sent.
REAP_ABANDONED_RUNS_SOFT_TIME_LIMIT_S = 40
REAP_ABANDONED_RUNS_HARD_TIME_LIMIT_S = 50


@current_app.task(name=REPORT_LONG_PAUSES_TASK, acks_late=True, ignore_result=True,
                  soft_time_limit=REPORT_LONG_PAUSES_SOFT_TIME_LIMIT_S, time_limit=REPORT_LONG_PAUSES_HARD_TIME_LIMIT_S)
def report_long_pauses() -> list[str]:
    """Journal and email the workflows paused for more than 7 days (weekly)."""
    return housekeeping.report_long_pauses()


@current_app.task(name=REAP_ABANDONED_RUNS_TASK, acks_late=True, ignore_result=True,
                  soft_time_limit=REAP_ABANDONED_RUNS_SOFT_TIME_LIMIT_S, time_limit=REAP_ABANDONED_RUNS_HARD_TIME_LIMIT_S)
def reap_abandoned_runs() -> list[int]:
    """Reap the runs whose worker died (every minute; see workflows.reaper)."""
    return reaper.reap_abandoned_runs()
