"""A test-only workflow that exercises the engine: three activities, the middle one consuming a
source table in cursor batches with one effect row per source row, so that a lost or doubled
batch shows up as a wrong count.

Source rows: SendingFeedback. Effect rows: TrackingLog with ``url = "sample:<source id>"``.
"""

from __future__ import annotations

import time

from django.db.models import Max

from campaign.models import Delivery, SendingFeedback, TrackingLog, UrlType
from workflows.context import ActivityContext, Batch
from workflows.definition import RetryPolicy, WorkflowDefinition, register
from workflows.models import RunStatus, WorkflowRun
from workflows.properties import BooleanProperty, DurationProperty, IntegerProperty

SAMPLE_ID = "engineSample"
SAMPLE_QUEUE = "engine-tests"
SAMPLE_DELIVERY_LABEL = "engine sample effects"


def prepare(ctx: ActivityContext) -> None:
    ctx.log("Preparing.")
    ctx.count("prepared")
    if ctx.properties["fail"]:
        raise RuntimeError("sample failure requested")
    wait_for_skips = ctx.properties["wait_for_skips"]
    deadline = time.monotonic() + 60
    while wait_for_skips and time.monotonic() < deadline:  # hold the lease until the others gave up
        if WorkflowRun.objects.filter(workflow_id=SAMPLE_ID, status=RunStatus.SKIPPED).count() >= wait_for_skips:
            break
        time.sleep(0.05)


def consume(ctx: ActivityContext) -> None:
    delivery_id = Delivery.objects.filter(label=SAMPLE_DELIVERY_LABEL).values_list("pk", flat=True).get()
    pause_s = ctx.properties["sleep_ms"] / 1000
    last = SendingFeedback.objects.aggregate(last=Max("id"))["last"] or 0
    ctx.set_progress_total(SendingFeedback.objects.filter(id__gt=ctx.get_cursor("source", 0)).count())

    def step(cursor: int, limit: int) -> Batch:
        ids = list(SendingFeedback.objects.filter(id__gt=cursor, id__lte=last)
                   .order_by("id").values_list("id", flat=True)[:limit])
        TrackingLog.objects.bulk_create(
            TrackingLog(delivery_log_id=source_id, delivery_id=delivery_id, url_type=UrlType.CLICK, url=f"sample:{source_id}")
            for source_id in ids
        )
        if pause_s:
            time.sleep(pause_s)  # inside the transaction: a kill here must lose the whole batch
        return Batch(rows=len(ids), cursor=ids[-1] if ids else cursor, counters={"consumed": len(ids)})

    ctx.batches("source", step, batch_size=ctx.properties["batch_size"], throttle_s=pause_s)


def finish(ctx: ActivityContext) -> None:
    ctx.log(f"Effects now: {TrackingLog.objects.filter(url__startswith='sample:').count()}.")
    ctx.count("finished")


definition = register(WorkflowDefinition(
    id=SAMPLE_ID,
    label="Engine sample",
    description="Test-only workflow: prepare, consume sources in batches, finish.",
    schedule=None,
    activities=(prepare, consume, finish),
    properties=(
        IntegerProperty("batch_size", 10, minimum=1, maximum=10_000, help="Rows per batch."),
        DurationProperty("sleep_ms", 0, minimum=0, maximum=10_000, unit="ms",
                         help="Pause inside each batch, to catch a run mid-way."),
        BooleanProperty("fail", False, help="Make the first activity fail."),
        IntegerProperty("wait_for_skips", 0, minimum=0, maximum=1_000,
                        help="Hold the first activity until this many runs were skipped."),
    ),
    soft_time_limit_s=120,
    hard_time_limit_s=150,
    retry=RetryPolicy(max_retries=0),
    queue=SAMPLE_QUEUE,
))


QUICK_ID = "engineSampleQuick"


def note(ctx: ActivityContext) -> None:
    ctx.count("noted")


#: Another workflow on the same queue: shows that a worker slot is free while a run waits.
quick_definition = register(WorkflowDefinition(
    id=QUICK_ID,
    label="Engine sample (quick)",
    description="Test-only workflow: one activity that counts one.",
    schedule=None,
    activities=(note,),
    retry=RetryPolicy(max_retries=0),
    queue=SAMPLE_QUEUE,
))
