"""``python manage.py benchmark``: each heavy workflow against the minimal SQL doing its work, the
engine's fixed cost per run (a no-op workflow against a bare Celery task), and the event API under
load through real gunicorn."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from workflows.benchmarks import all_cases
from workflows.benchmarks.cleanup_partitions import CASE_NAME as PARTITION_CASE
from workflows.benchmarks.cleanup_partitions import PartitionCleanupResult, run_partition_cleanup
from workflows.benchmarks.event_ingestion import CASE_NAME as INGESTION_CASE
from workflows.benchmarks.event_ingestion import EventIngestionResult, Load, requests_for_rows, run_event_ingestion
from workflows.benchmarks.fixed_cost import CASE_NAME as FIXED_COST_CASE
from workflows.benchmarks.fixed_cost import POLL_INTERVAL_S, FixedCostResult, Latency, run_fixed_cost
from workflows.benchmarks.runner import BenchmarkError, Result, drop_scratch_database, run_case, scratch_database
from workflows.benchmarks.scale_curve import (
    DEFAULT_INCREMENT,
    DEFAULT_INCREMENTAL_RUNS,
    DEFAULT_SIZES,
    check_sizes,
    run_scale_curve,
    scale_curve_lines,
)
from workflows.definition import UnknownWorkflow, resolve_id

T = TypeVar("T")

#: Targets printed beside the figures.
TARGET_RATIO = 1.5
TARGET_INCREMENTAL_SHARE = 0.05
TARGET_PEAK_RSS_MB = 300
TARGET_ADDED_P50_MS = 20
#: The event API on PostgreSQL, this project's 2-core machine, 8 clients.
TARGET_SINGLE_REQUESTS_PER_S = 400
TARGET_SINGLE_P95_MS = 50
TARGET_BATCH_EVENTS_PER_S = 10_000
#: Cleanup's purge by partition against one DELETE of the same rows, at 1,000,000 expired delivery logs.
TARGET_PARTITION_SPEEDUP = 10

#: Runs of each kind in the fixed-cost case: enough for a stable p95 (its 10th-slowest run),
#: few enough that the case takes under a minute on PostgreSQL + Redis.
DEFAULT_FIXED_COST_RUNS = 200
#: Without ``--runs``, a small ``--rows`` (a smoke run, as in CI) takes one run per this many
#: rows, at least :data:`MIN_FIXED_COST_RUNS`: at ``--rows 2000``, 20 runs in a few seconds.
ROWS_PER_FIXED_COST_RUN = 100
MIN_FIXED_COST_RUNS = 20


class Command(BaseCommand):
    help = ("Fill a scratch database at a chosen scale and time each heavy workflow against the minimal "
            "hand-written SQL doing the same work, plus an incremental run over 1% new rows; then time a "
            f"no-op workflow against a bare Celery task ({FIXED_COST_CASE}); then load the event API through "
            f"real gunicorn ({INGESTION_CASE}).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=100_000, help="Scale, in source rows (default 100,000).")
        parser.add_argument("--only", nargs="+", metavar="ID", default=[],
                            help=f"Only these workflows (and/or {FIXED_COST_CASE}, {INGESTION_CASE}).")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--runs", type=int, default=None,
                            help=f"Runs of each kind in {FIXED_COST_CASE} (default {DEFAULT_FIXED_COST_RUNS}; fewer when "
                                 f"--rows is under {DEFAULT_FIXED_COST_RUNS * ROWS_PER_FIXED_COST_RUN:,}: one per "
                                 f"{ROWS_PER_FIXED_COST_RUN} rows, at least {MIN_FIXED_COST_RUNS}).")
        parser.add_argument("--requests", type=int, default=None,
                            help=f"Single-event requests per client count in {INGESTION_CASE} (default: one per "
                                 "20 rows, at least 100); it also sends as many batched events as --rows.")
        parser.add_argument("--gunicorn-config", type=Path, default=None, metavar="PATH",
                            help=f"gunicorn configuration file for {INGESTION_CASE} (default: the project's "
                                 "gunicorn.conf.py), to compare configurations.")
        parser.add_argument("--partition-rows", type=int, default=None, metavar="N",
                            help=f"Expired delivery logs in {PARTITION_CASE} (PostgreSQL only; default: --rows). "
                                 "They fill five monthly partitions past retention, plus 1%% at the retention edge and "
                                 "1%% live.")
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print a JSON array instead of a table.")
        parser.add_argument("--scale-curve", nargs="*", type=int, default=None, metavar="ROWS",
                            help="Instead: for each incremental workflow (or --only), at each base size (default "
                                 f"{', '.join(f'{size:,}' for size in DEFAULT_SIZES)}), the full run's time per row and "
                                 "the time of an incremental run after --increment new rows (median of --runs, default "
                                 f"{DEFAULT_INCREMENTAL_RUNS}), and its growth from the smallest base to the largest. "
                                 "10,000,000 is not a default: on a 2-core machine the curve takes about 10 minutes at "
                                 "1,000,000 and would take over 60 at 10,000,000.")
        parser.add_argument("--increment", type=int, default=DEFAULT_INCREMENT,
                            help=f"New rows before each incremental run of --scale-curve (default {DEFAULT_INCREMENT:,}).")

    def handle(self, *args: object, rows: int, only: list[str], seed: int, runs: int | None, as_json: bool,
               requests: int | None, gunicorn_config: Path | None, partition_rows: int | None,
               scale_curve: list[int] | None, increment: int, **options: object) -> None:
        if scale_curve is not None:
            self._scale_curve(scale_curve or list(DEFAULT_SIZES), increment=increment, only=only, seed=seed,
                              runs=DEFAULT_INCREMENTAL_RUNS if runs is None else runs, as_json=as_json)
            return
        if rows < 100:
            raise CommandError("--rows must be at least 100")
        partition_rows = rows if partition_rows is None else partition_rows
        if partition_rows < 100:
            raise CommandError("--partition-rows must be at least 100")
        if runs is None:
            runs = min(DEFAULT_FIXED_COST_RUNS, max(MIN_FIXED_COST_RUNS, rows // ROWS_PER_FIXED_COST_RUN))
        if runs < 1:
            raise CommandError("--runs must be at least 1")
        if requests is None:
            requests = requests_for_rows(rows)
        if requests < 1:
            raise CommandError("--requests must be at least 1")
        if gunicorn_config is not None and not gunicorn_config.is_file():
            raise CommandError(f"--gunicorn-config: no such file: {gunicorn_config}")
        cases = all_cases()
        named = {name.lower() for name in only}
        with_fixed_cost = not only or FIXED_COST_CASE.lower() in named
        with_ingestion = not only or INGESTION_CASE.lower() in named
        specials = {FIXED_COST_CASE.lower(), INGESTION_CASE.lower(), PARTITION_CASE.lower()}
        # By partition only where the log tables are partitioned: named explicitly, SQLite refuses it.
        with_partitions = PARTITION_CASE.lower() in named or (not only and connection.vendor == "postgresql")
        if PARTITION_CASE.lower() in named and connection.vendor != "postgresql":
            raise CommandError(f"{PARTITION_CASE} needs PostgreSQL: SQLite keeps the log tables as plain tables")
        try:
            wanted = [resolve_id(name) for name in only if name.lower() not in specials] if only else list(cases)
        except UnknownWorkflow as error:
            raise CommandError(f"{error} (or {FIXED_COST_CASE}, {INGESTION_CASE}, {PARTITION_CASE})") from None
        missing = [workflow_id for workflow_id in wanted if workflow_id not in cases]
        if missing:
            raise CommandError(f"no benchmark case for {', '.join(missing)} "
                               f"(cases: {', '.join([*cases, FIXED_COST_CASE, INGESTION_CASE, PARTITION_CASE])})")

        old_name, _scratch = scratch_database()
        try:
            results = [self._step(f"{workflow_id}: {rows:,} rows…", as_json,
                                  lambda workflow_id=workflow_id: run_case(cases[workflow_id], rows=rows, seed=seed))
                       for workflow_id in wanted]
            by_partition = self._step(f"{PARTITION_CASE}: {partition_rows:,} expired delivery logs…", as_json,
                                      lambda: run_partition_cleanup(rows=partition_rows)) if with_partitions else None
            fixed_cost = self._step(f"{FIXED_COST_CASE}: {runs:,} runs of each kind…", as_json,
                                    lambda: run_fixed_cost(runs=runs)) if with_fixed_cost else None
            ingestion = self._step(
                f"{INGESTION_CASE}: {requests:,} requests per client count, {rows:,} batched events…", as_json,
                lambda: run_event_ingestion(requests=requests, batch_events=rows, config=gunicorn_config),
            ) if with_ingestion else None
        finally:
            drop_scratch_database(old_name)
        self._report(results, fixed_cost, ingestion, as_json=as_json, by_partition=by_partition)
        if by_partition is not None and not by_partition.same_result:
            raise CommandError(f"{PARTITION_CASE}: the workflow left other rows than the DELETE")
        if any(not result.same_result for result in results):
            raise CommandError("a workflow's output differs from the SQL bound's: "
                               + ", ".join(r.workflow for r in results if not r.same_result))
        if ingestion is not None and not ingestion.intact:
            raise CommandError(f"{INGESTION_CASE}: events refused, lost or duplicated (see the report)")

    def _scale_curve(self, sizes: list[int], *, increment: int, only: list[str], seed: int, runs: int,
                     as_json: bool) -> None:
        try:
            sizes = check_sizes(sizes, increment=increment, runs=runs)
            wanted = [resolve_id(name) for name in only]
        except (ValueError, UnknownWorkflow) as error:
            raise CommandError(str(error)) from None
        cases = all_cases()
        if not wanted:
            wanted = [workflow_id for workflow_id, case in cases.items() if case.incremental]
        missing = [workflow_id for workflow_id in wanted if workflow_id not in cases]
        if missing:
            raise CommandError(f"no benchmark case for {', '.join(missing)} (cases: {', '.join(cases)})")
        old_name, _scratch = scratch_database()
        try:
            at = ", ".join(f"{size:,}" for size in sizes)
            curves = [self._step(f"{workflow_id}: scale curve at {at} rows…", as_json,
                                 lambda workflow_id=workflow_id: run_scale_curve(
                                     cases[workflow_id], sizes=sizes, increment=increment, seed=seed, runs=runs))
                      for workflow_id in wanted]
        finally:
            drop_scratch_database(old_name)
        if as_json:
            self.stdout.write(json.dumps([curve.as_json() for curve in curves], indent=2))
        else:
            for line in scale_curve_lines(curves):
                self.stdout.write(line)

    def _step(self, label: str, as_json: bool, measure: Callable[[], T]) -> T:
        """Run one measurement, announced on stderr unless the output is JSON; a benchmark's own
        error (bad data, a refused case) becomes the command's error, without a traceback."""
        if not as_json:
            self.stderr.write(label)
        try:
            return measure()
        except BenchmarkError as error:
            raise CommandError(str(error)) from None

    def _report(self, results: list[Result], fixed_cost: FixedCostResult | None,
                ingestion: EventIngestionResult | None, *, as_json: bool,
                by_partition: PartitionCleanupResult | None = None) -> None:
        if as_json:
            items = ([result.as_json() for result in results] + ([by_partition.as_json()] if by_partition else [])
                     + ([fixed_cost.as_json()] if fixed_cost else []) + ([ingestion.as_json()] if ingestion else []))
            self.stdout.write(json.dumps(items, indent=2))
            return
        if results:
            self._report_workflows(results)
        if by_partition is not None:
            if results:
                self.stdout.write("")
            for line in partition_lines(by_partition):
                self.stdout.write(line)
        if fixed_cost is not None:
            if results:
                self.stdout.write("")
            for line in fixed_cost_lines(fixed_cost):
                self.stdout.write(line)
        if ingestion is not None:
            if results or fixed_cost is not None:
                self.stdout.write("")
            for line in ingestion_lines(ingestion):
                self.stdout.write(line)

    def _report_workflows(self, results: list[Result]) -> None:
        header = (f"{'workflow':<26}{'rows':>11}{'seconds':>9}{'rows/s':>11}{'sql s':>8}{'ratio':>7}"
                  f"{'incr s':>8}{'incr %':>8}{'peak MB':>9}  same")
        self.stdout.write(header)
        for r in results:
            share = r.incremental_seconds / r.seconds if r.seconds else 0
            self.stdout.write(
                f"{r.workflow:<26}{r.rows:>11,}{r.seconds:>9.2f}{r.rows / r.seconds if r.seconds else 0:>11,.0f}"
                f"{r.sql_seconds:>8.2f}{r.ratio:>7.2f}{r.incremental_seconds:>8.2f}{share:>8.1%}{r.peak_rss_mb:>9.1f}  "
                f"{'yes' if r.same_result else 'NO'}"
            )
        self.stdout.write(f"targets: ratio ≤ {TARGET_RATIO}, incremental ≤ {TARGET_INCREMENTAL_SHARE:.0%} of a full run, "
                          f"peak memory < {TARGET_PEAK_RSS_MB} MB")


def partition_lines(result: PartitionCleanupResult) -> list[str]:
    """The cleanup-by-partition case: the purge against one DELETE (rows out of the table), then
    with the space given back (DROP against VACUUM), the whole run, and the writer's worst wait."""
    slowest = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.slowest_activities)
    return [
        (f"{PARTITION_CASE}: {result.rows:,} expired delivery logs; purge_delivery_logs {result.purge_seconds:.3f} s "
         f"({result.partitions_detached} partitions detached{' in ' + result.detach_timing if result.detach_timing else ''}, "
         f"{result.rows_purged_by_row:,} edge rows purged row by row), one DELETE {result.delete_seconds:.3f} s: "
         f"{result.speedup:.1f}x faster; same rows left: {'yes' if result.same_result else 'NO'}"),
        (f"  space given back too: + drop_detached_partitions {result.drop_seconds:.3f} s, against + VACUUM of the "
         f"emptied partitions {result.vacuum_seconds:.3f} s: {result.speedup_with_space:.1f}x faster"),
        f"  whole cleanup run {result.seconds:.2f} s; slowest activities: {slowest}",
        (f"  concurrent writer: {result.inserts:,} inserts into the live partition during the run, worst "
         f"{result.worst_insert_ms:.1f} ms (must stay under 1,000 ms)"),
        f"  target: the purge at least {TARGET_PARTITION_SPEEDUP}x faster than the DELETE, and about as fast at 10x the rows",
    ]


def fixed_cost_lines(result: FixedCostResult) -> list[str]:
    """The fixed-cost case as a table: p50 and p95 in ms of each measured thing and their difference."""

    def row(label: str, latency: Latency, note: str = "") -> str:
        return f"  {label:<36}{latency.p50_ms:>9.2f}{latency.p95_ms:>9.2f}{'  ' + note if note else ''}"

    lines = [
        (f"{FIXED_COST_CASE}: {result.runs:,} runs of each kind on {result.database}, broker {result.broker}, "
         f"load average {result.load_average:.2f}"),
        f"{'':<38}{'p50 ms':>9}{'p95 ms':>9}",
    ]
    if result.bare_task is not None and result.noop_workflow is not None and result.worker_added is not None:
        period = f"{result.poll_period_ms:.2f} ms" if result.poll_period_ms is not None else "n/a"
        lines += [
            ("through a worker (dispatch → completion visible in the database, polled every "
             f"{POLL_INTERVAL_S * 1000:g} ms: one look per {period} measured)"),
            row("bare Celery task (send_task)", result.bare_task),
            row("no-op workflow (run_now)", result.noop_workflow),
            row("added by the engine", result.worker_added, f"target: at most {TARGET_ADDED_P50_MS} ms p50 added on PostgreSQL"),
        ]
    else:
        lines.append(f"through a worker: not measured ({result.worker_skipped})")
    lines += [
        "in process (no broker, no worker)",
        row("no-op activity called directly", result.activity_call),
        row("no-op workflow (run_now, sync=True)", result.noop_run_in_process,
            f"{result.round_trips_per_run} database round trips per run"),
        row("added by the engine", result.in_process_added),
    ]
    return lines


def ingestion_lines(result: EventIngestionResult) -> list[str]:
    """The event ingestion case as a table: throughput, latency percentiles, CPU shares, integrity."""

    def row(load: Load) -> str:
        server = f"{load.server_cpu_share:.2f}" if load.server_cpu_share is not None else "n/a"
        integrity = ("none" if load.intact else
                     f"{load.refused} refused, {load.lost} lost, {load.duplicated} duplicated")
        return (f"  {load.endpoint:<40}{load.clients:>8}{load.requests:>9,}"
                f"{load.events / load.seconds if load.seconds else 0:>10,.0f}"
                f"{load.requests_per_s:>8,.0f}{load.p50_ms:>8.1f}{load.p95_ms:>8.1f}{load.p99_ms:>8.1f}"
                f"{load.client_cpu_share:>7.2f}{server:>7}  {integrity}")

    lines = [
        (f"{INGESTION_CASE}: gunicorn {result.workers} workers x {result.threads} threads ({result.config}) "
         f"on {result.database}, load average {result.load_average:.2f}"),
        (f"  {'endpoint':<40}{'clients':>8}{'requests':>9}{'events/s':>10}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}"
         f"{'p99 ms':>8}{'client':>7}{'server':>7}  lost or duplicated"),
        *[row(load) for load in result.single],
    ]
    if result.batch is not None:
        lines.append(row(result.batch))
    else:
        lines.append(f"  batch: not measured ({result.batch_skipped})")
    for load in [*result.single, *([result.batch] if result.batch else [])]:
        lines += [f"  problem: {problem}" for problem in load.problems]
    lines.append(f"  client/server: CPU time over wall time (1.00 = one core). Targets on PostgreSQL, 8 clients: "
                 f"≥ {TARGET_SINGLE_REQUESTS_PER_S} requests/s at p95 ≤ {TARGET_SINGLE_P95_MS} ms; "
                 f"batches ≥ {TARGET_BATCH_EVENTS_PER_S:,} events/s; nothing lost or duplicated")
    return lines
