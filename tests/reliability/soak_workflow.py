"""A test-only workflow for the soak: a run long enough that the faults land in the middle of it,
with effects that show a lost or doubled batch.

The built-in workflows are done with the soak's small demo data within seconds of each slot, so a
fault would almost always find their workers idle. This one numbers 1, 2, ... ``total`` in batches
of ``batch_size``, pausing ``sleep_ms`` inside each batch's transaction, and writes one journal row
``soak:<number>`` per number in that transaction: every number exactly once when exactly-once
holds. It writes nothing any built-in workflow reads, so the soak's control comparison is unaffected.
"""

from __future__ import annotations

import time

from workflows.context import ActivityContext, Batch
from workflows.definition import RetryPolicy, WorkflowDefinition, register
from workflows.models import LogLevel, WorkflowLog
from workflows.properties import DurationProperty, IntegerProperty

SOAK_ID = "reliabilitySoak"
EFFECT_PREFIX = "soak:"


def number(ctx: ActivityContext) -> None:
    total = ctx.properties["total"]
    pause_s = ctx.properties["sleep_ms"] / 1000

    def step(cursor: int, limit: int) -> Batch:
        numbers = range(cursor + 1, min(cursor + limit, total) + 1)
        WorkflowLog.objects.bulk_create(
            WorkflowLog(workflow_id=SOAK_ID, run=ctx.run, activity="number", level=LogLevel.INFO,
                        message=f"{EFFECT_PREFIX}{value}")
            for value in numbers
        )
        if pause_s and numbers:
            time.sleep(pause_s)  # inside the transaction: a fault here must lose the whole batch
        return Batch(rows=len(numbers), cursor=numbers[-1] if numbers else cursor, counters={"numbered": len(numbers)})

    ctx.batches("number", step, batch_size=ctx.properties["batch_size"])


definition = register(WorkflowDefinition(
    id=SOAK_ID,
    label="Reliability soak",
    description="Test-only workflow: numbers 1..total slowly, one journal row per number.",
    schedule=None,  # the soak gives it an every-minute schedule; the other tests must not see one
    activities=(number,),
    properties=(
        IntegerProperty("total", 1_000, minimum=1, maximum=1_000_000, help="Numbers to write."),
        IntegerProperty("batch_size", 10, minimum=1, maximum=10_000, help="Numbers per batch."),
        DurationProperty("sleep_ms", 400, minimum=0, maximum=10_000, unit="ms", help="Pause inside each batch."),
    ),
    retry=RetryPolicy(max_retries=0),
))
