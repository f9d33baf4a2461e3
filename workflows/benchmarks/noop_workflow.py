"""The two things the engine fixed-cost benchmark dispatches to a real worker: a workflow with one
activity that does nothing, and a bare Celery task that only writes one row.

Why it exists: whatever a workflow does, every run pays the engine's bookkeeping (run and activity
rows, journal, lease claim and release, fenced commits). Comparing a no-op workflow with a task
that has the same Celery options but no engine isolates that cost from Celery's and the broker's.

Loaded only by the benchmark: the command imports it when the case runs, and the worker it starts
gets it through ``WORKFLOW_EXTRA_MODULES``, so neither the instance nor the test suite ever sees
this workflow.
"""

from __future__ import annotations

from celery import current_app
from django.db import connection

from workflows.context import ActivityContext
from workflows.definition import RetryPolicy, WorkflowDefinition, register

NOOP_ID = "benchmarkNoop"
#: Its own queue: the benchmark's worker serves nothing else, and no other worker takes these.
NOOP_QUEUE = "benchmark-noop"
#: Stable name: it travels in broker messages.
BARE_TASK_NAME = "benchmarks.bare_task"
#: Created by the benchmark in its scratch database; one row per finished bare task.
BARE_TASK_TABLE = "benchmark_bare_task_done"


def do_nothing(ctx: ActivityContext) -> None:
    """The whole activity: what remains of a run is the engine's own cost."""


definition = register(WorkflowDefinition(
    id=NOOP_ID,
    label="Benchmark no-op",
    description="Benchmark-only workflow: one activity that does nothing.",
    schedule=None,
    activities=(do_nothing,),
    soft_time_limit_s=60,
    hard_time_limit_s=90,
    retry=RetryPolicy(max_retries=0),
    queue=NOOP_QUEUE,
))


@current_app.task(
    name=BARE_TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=definition.soft_time_limit_s,
    time_limit=definition.hard_time_limit_s,
    ignore_result=True,
)
def bare_task(number: int) -> None:
    """The same Celery options as a workflow's task, no engine: record that it ran, nothing else."""
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {BARE_TASK_TABLE} (id) VALUES (%s)", [number])
