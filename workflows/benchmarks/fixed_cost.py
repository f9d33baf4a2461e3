"""The engine's fixed cost per run: what a workflow that does nothing costs beyond a bare task.

Two measurements, each over ``runs`` runs, reported as p50 and p95 in milliseconds:

- **Through a worker**: a real Celery worker (:class:`workflows.worker_process.WorkerProcess`, one
  pool process) on the configured broker and database serves both the no-op workflow of
  :mod:`workflows.benchmarks.noop_workflow` and a bare Celery task with the same Celery options.
  Each is timed from dispatch (``send_task`` for the bare task, :func:`workflows.commands.run_now`
  for the workflow) until its completion is visible in the database: the bare task's row, the
  run's ``finished_at``. This process polls for it every :data:`POLL_INTERVAL_S`, so each figure
  is late by half a poll period on average, the same for both; the measured period is reported.
  The two kinds alternate, so a change of the machine's load affects both alike.
- **In process** (no broker, no worker): ``run_now(..., sync=True)`` of the no-op workflow against
  calling its activity directly. What remains is the engine's database round trips: audit, run
  and activity rows, the journal, the lease claim and release.

The embedded filesystem broker is polled by the worker once a second, which would be all that the
first measurement shows: with it, only the in-process figures are measured.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from celery import current_app
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from workflows.benchmarks.runner import BenchmarkError
from workflows.worker_process import WorkerProcess, current_database_url

#: The name ``--only`` knows the case by.
CASE_NAME = "engineFixedCost"
#: Sleep between two looks at the database: 1 ms keeps the resolution well under the few
#: milliseconds a bare task takes, while a look (one primary-key SELECT) costs a tenth of that.
POLL_INTERVAL_S = 0.001
#: Pause after each completion, so that the worker has finished the previous task's tail (lease
#: release, acknowledgement) before the next dispatch and it is counted for neither.
SETTLE_S = 0.02
#: Unmeasured runs of each kind first: connections opened, modules imported, caches filled.
WARMUP_RUNS = 5
#: Longest wait for one completion before the benchmark gives up (a stuck worker).
COMPLETION_TIMEOUT_S = 30


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        return cls(p50_ms=round(percentile(seconds, 0.50) * 1000, 2), p95_ms=round(percentile(seconds, 0.95) * 1000, 2))

    def minus(self, other: Latency) -> Latency:
        """The difference of the percentiles (not a percentile of differences)."""
        return Latency(p50_ms=round(self.p50_ms - other.p50_ms, 2), p95_ms=round(self.p95_ms - other.p95_ms, 2))

    def as_json(self) -> dict[str, float]:
        return {"p50_ms": self.p50_ms, "p95_ms": self.p95_ms}


@dataclass(frozen=True)
class FixedCostResult:
    runs: int
    database: str
    broker: str
    #: Mean time between two looks at the database while waiting (sleep + query), in ms.
    poll_period_ms: float | None
    bare_task: Latency | None
    noop_workflow: Latency | None
    #: Why the through-a-worker figures are missing; empty when they were measured.
    worker_skipped: str
    activity_call: Latency
    noop_run_in_process: Latency
    #: Database round trips (statements, BEGIN and COMMIT included) of one in-process no-op run.
    round_trips_per_run: int
    #: 1-minute load average when the case finished.
    load_average: float

    @property
    def worker_added(self) -> Latency | None:
        if self.noop_workflow is None or self.bare_task is None:
            return None
        return self.noop_workflow.minus(self.bare_task)

    @property
    def in_process_added(self) -> Latency:
        return self.noop_run_in_process.minus(self.activity_call)

    def as_json(self) -> dict[str, Any]:
        worker: dict[str, Any] | None = None
        if self.worker_added is not None:
            assert self.bare_task is not None and self.noop_workflow is not None
            worker = {"bare_task": self.bare_task.as_json(), "noop_workflow": self.noop_workflow.as_json(),
                      "added": self.worker_added.as_json()}
        return {
            "case": CASE_NAME,
            "runs": self.runs,
            "database": self.database,
            "broker": self.broker,
            "poll_interval_ms": POLL_INTERVAL_S * 1000,
            "poll_period_ms": self.poll_period_ms,
            "through_worker": worker,
            "through_worker_skipped": self.worker_skipped,
            "in_process": {"activity_call": self.activity_call.as_json(),
                           "noop_workflow": self.noop_run_in_process.as_json(),
                           "added": self.in_process_added.as_json(),
                           "round_trips_per_run": self.round_trips_per_run},
            "load_average": self.load_average,
        }


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``share`` of the values at or below it."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]


class Poller:
    """Waits for a row to appear, looking every :data:`POLL_INTERVAL_S`; keeps the mean period."""

    def __init__(self) -> None:
        self.periods = 0
        self.waited_s = 0.0

    def wait(self, sql: str, params: Sequence[Any], *, since: float, what: str) -> tuple[float, tuple[Any, ...]]:
        """Seconds from ``since`` (a ``perf_counter`` reading taken before the dispatch) until
        ``sql`` returns a row, and that row."""
        first_look = time.perf_counter()
        looks = 0
        with connection.cursor() as cursor:
            while True:
                cursor.execute(sql, params)
                row = cursor.fetchone()
                now = time.perf_counter()
                looks += 1
                if row is not None:
                    self.periods += looks - 1
                    self.waited_s += now - first_look
                    return now - since, row
                if now - since > COMPLETION_TIMEOUT_S:
                    raise BenchmarkError(f"{what} did not finish within {COMPLETION_TIMEOUT_S}s")
                time.sleep(POLL_INTERVAL_S)

    @property
    def period_ms(self) -> float | None:
        """Mean time between two looks (sleep and query), None before any wait took two looks."""
        return round(self.waited_s / self.periods * 1000, 2) if self.periods else None


def run_fixed_cost(*, runs: int) -> FixedCostResult:
    from workflows.benchmarks import noop_workflow
    from workflows.schedules import ensure_workflow

    if runs < 1:
        raise BenchmarkError("the fixed-cost case needs at least one run")
    call_command("flush", interactive=False, verbosity=0)
    ensure_workflow(noop_workflow.definition)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {noop_workflow.BARE_TASK_TABLE} (id integer PRIMARY KEY)")
        cursor.execute(f"DELETE FROM {noop_workflow.BARE_TASK_TABLE}")

    broker = urlsplit(settings.CELERY_BROKER_URL).scheme
    poller = Poller()
    bare_task = noop_workflow_latency = None
    worker_skipped = ""
    if broker == "filesystem":
        worker_skipped = ("the embedded filesystem broker is polled once a second by the worker, which would be all "
                          "that this measures: set CELERY_BROKER_URL=redis://…")
    else:
        bare_task, noop_workflow_latency = _through_worker(runs=runs, poller=poller)
    activity_call, noop_run_in_process, round_trips = _in_process(runs=runs)
    return FixedCostResult(
        runs=runs, database=connection.vendor, broker=broker, poll_period_ms=poller.period_ms,
        bare_task=bare_task, noop_workflow=noop_workflow_latency, worker_skipped=worker_skipped,
        activity_call=activity_call, noop_run_in_process=noop_run_in_process, round_trips_per_run=round_trips,
        load_average=round(os.getloadavg()[0], 2),
    )


def _through_worker(*, runs: int, poller: Poller) -> tuple[Latency, Latency]:
    from workflows import commands
    from workflows.benchmarks import noop_workflow
    from workflows.models import RunStatus, Trigger, WorkflowRun

    run_table = WorkflowRun._meta.db_table
    run_sql = f"SELECT status, reason FROM {run_table} WHERE id = %s AND finished_at IS NOT NULL"
    bare_sql = f"SELECT 1 FROM {noop_workflow.BARE_TASK_TABLE} WHERE id = %s"
    numbers = itertools.count(1)

    def bare() -> float:
        number = next(numbers)
        since = time.perf_counter()
        current_app.send_task(noop_workflow.BARE_TASK_NAME, args=[number], queue=noop_workflow.NOOP_QUEUE)
        seconds, _ = poller.wait(bare_sql, [number], since=since, what=f"bare task #{number}")
        return seconds

    def workflow() -> float:
        since = time.perf_counter()
        run = commands.run_now(noop_workflow.NOOP_ID, actor="benchmark", trigger=Trigger.CLI)
        seconds, (status, reason) = poller.wait(run_sql, [run.pk], since=since, what=f"no-op run #{run.pk}")
        if status != RunStatus.SUCCEEDED:
            raise BenchmarkError(f"no-op run #{run.pk} {status}: {reason}")
        return seconds

    extra = ",".join([*settings.WORKFLOW_EXTRA_MODULES, noop_workflow.__name__])
    env = {"SECRET_KEY": settings.SECRET_KEY, "DATABASE_URL": current_database_url(), "WORKFLOW_EXTRA_MODULES": extra}
    worker = WorkerProcess(queues=[noop_workflow.NOOP_QUEUE], env=env, concurrency=1)
    try:
        worker.start()
    except RuntimeError as error:
        raise BenchmarkError(f"the benchmark's worker did not start: {error}") from None
    try:
        bare_seconds, workflow_seconds = _alternate(bare, workflow, runs=runs)
    except BenchmarkError as error:
        raise BenchmarkError(f"{error}; worker log:\n{worker.log()[-3000:]}") from None
    finally:
        worker.stop()
    worker.log_path.unlink(missing_ok=True)
    return Latency.of(bare_seconds), Latency.of(workflow_seconds)


def _alternate(first: Callable[[], float], second: Callable[[], float], *, runs: int) -> tuple[list[float], list[float]]:
    """Time ``first`` and ``second`` ``runs`` times each, in alternating order, after the warm-up."""
    first_times: list[float] = []
    second_times: list[float] = []
    for index in range(WARMUP_RUNS + runs):
        order = [(first, first_times), (second, second_times)]
        if index % 2:
            order.reverse()
        for measure, into in order:
            elapsed = measure()
            if index >= WARMUP_RUNS:
                into.append(elapsed)
            time.sleep(SETTLE_S)
    return first_times, second_times


def _in_process(*, runs: int) -> tuple[Latency, Latency, int]:
    from workflows import commands
    from workflows.benchmarks import noop_workflow
    from workflows.models import RunStatus, Trigger

    def call_activity() -> float:
        started = time.perf_counter()
        noop_workflow.do_nothing(None)  # type: ignore[arg-type]  # it never touches its context
        return time.perf_counter() - started

    def run_in_process() -> float:
        started = time.perf_counter()
        run = commands.run_now(noop_workflow.NOOP_ID, actor="benchmark", trigger=Trigger.CLI, sync=True)
        elapsed = time.perf_counter() - started
        if run.status != RunStatus.SUCCEEDED:
            raise BenchmarkError(f"no-op run #{run.pk} (in process) {run.status}: {run.reason}")
        return elapsed

    calls: list[float] = []
    in_process: list[float] = []
    # The engine logs one INFO line per run; here it would go to this command's terminal, runs times.
    engine_logger = logging.getLogger("workflows.engine")
    level = engine_logger.level
    engine_logger.setLevel(logging.WARNING)
    try:
        for index in range(WARMUP_RUNS + runs):
            call, run = call_activity(), run_in_process()
            if index >= WARMUP_RUNS:
                calls.append(call)
                in_process.append(run)
        with CaptureQueriesContext(connection) as queries:  # one more, untimed: what the time goes to
            run_in_process()
    finally:
        engine_logger.setLevel(level)
    return Latency.of(calls), Latency.of(in_process), len(queries.captured_queries)
