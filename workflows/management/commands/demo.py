"""``make demo``: load demo data, run every workflow once through a real Celery worker in the
order data flows, print a compact table, and exit 0 only if each run succeeded or was skipped for a
stated reason.

Why stages: a workflow reads what the workflows before it in the data flow wrote
(docs/architecture.md, "Data flow"): indicators and aggregates are computed from the logs that
updateDeliveryExecInfo consolidates, the analytics service and the reports are fed from the
aggregates, and cleanup purges rows the others read. Queued all at once, the runs would go in
whatever order the worker took them. So they go stage by stage: a stage is queued once every run
of the one before has ended, its own runs together (none reads what another of its stage writes).
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from workflows import commands
from workflows.definition import WorkflowDefinition, builtin_definitions, queue_of
from workflows.models import FINAL_RUN_STATUSES, RunStatus, Trigger, WorkflowRun
from workflows.serializers import run_to_dict
from workflows.worker_process import WorkerProcess

#: What each stage does and its workflows, in the order data flows.
STAGES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    # The deliverability rules qualify the bounces that the next stage consolidates.
    ("service rules and audiences", ("deliverabilityUpdate", "importSharedAudience")),
    ("raw feedback into logs", ("updateDeliveryExecInfo",)),
    ("logs into events and app subscriptions", ("updateEventsStatus", "mobileAppOptOutMgt")),
    ("indicators, aggregates, decisions, archives",
     ("updateDeliveryIndicators", "reportingAggregates", "abTesting", "forecasting", "mcSynch_local")),
    ("sharing and reports", ("kpiSharing", "reportSendingNow", "billing")),
    # Never beside kpiSharing: each refuses to run while the other does (exclusive_with).
    ("reconciliation with the analytics service", ("kpiReconciliation",)),
    ("cleanup", ("cleanup",)),
)
#: The stage of a declared workflow that STAGES does not name: before cleanup, after the rest.
OTHER_STAGE = "other workflows"

#: The table (and the progress lines) fit a terminal this wide; ``--json`` gives everything.
TABLE_WIDTH = 100
#: Counters shown per run: the largest.
TOP_COUNTERS = 3


def plan(definitions: Iterable[WorkflowDefinition]) -> list[tuple[str, list[str]]]:
    """The stages of ``definitions``, in order; a workflow STAGES does not name runs just before
    cleanup, a stage without a declared workflow is left out."""
    declared = {definition.id for definition in definitions}
    named = {workflow_id for _, workflow_ids in STAGES for workflow_id in workflow_ids}
    stages = [(what, [workflow_id for workflow_id in workflow_ids if workflow_id in declared])
              for what, workflow_ids in STAGES]
    others = sorted(declared - named, key=str.lower)
    if others:
        stages.insert(len(stages) - 1, (OTHER_STAGE, others))
    return [(what, workflow_ids) for what, workflow_ids in stages if workflow_ids]


def top_counters(counters: dict[str, Any], *, limit: int = TOP_COUNTERS) -> str:
    """``"logs_updated=277, feedback_delivered=272, tracking_logs=120, +7 more"``: the largest first."""
    ranked = sorted(counters.items(), key=lambda item: (-item[1] if isinstance(item[1], int | float) else 0, item[0]))
    shown = ", ".join(f"{name}={value}" for name, value in ranked[:limit])
    return f"{shown}, +{len(ranked) - limit} more" if len(ranked) > limit else shown


def table(runs: Sequence[WorkflowRun], *, width: int = TABLE_WIDTH) -> list[str]:
    """One line per run, at most ``width`` characters: workflow, status, duration, then the reason
    (for a run that has one) and the top counters, cut with an ellipsis."""
    rows = [("WORKFLOW", "STATUS", "TIME", "REASON / TOP COUNTERS")] + [
        (run.workflow_id, run.status, f"{run.duration_s or 0:.2f}s",
         "; ".join(part for part in (" ".join(run.reason.split()), top_counters(run.counters or {})) if part) or "-")
        for run in runs
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = []
    for row in rows:
        line = "  ".join(cell.ljust(column_width) for cell, column_width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        lines.append(line if len(line) <= width else line[:width - 1] + "…")
    return lines


def acceptable(run: WorkflowRun) -> bool:
    """Succeeded, or skipped for a stated reason (an external service without an account)."""
    return run.status == RunStatus.SUCCEEDED or (run.status == RunStatus.SKIPPED and bool(run.reason))


class Command(BaseCommand):
    help = ("Seed demo data if the database is empty, run every workflow once through a real worker in the order "
            "data flows, print the results.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=int, default=900, help="Seconds to wait for all runs (default 900).")
        parser.add_argument("--profiles", type=int, default=10_000, help="Profiles to seed when the database is empty.")
        parser.add_argument("--json", dest="as_json", action="store_true",
                            help="Print the stages and their runs (every counter) as JSON; progress goes to stderr.")

    def handle(self, *args: object, timeout: int, profiles: int, as_json: bool, **options: object) -> None:
        progress = self.stderr if as_json else self.stdout
        call_command("seed_demo", if_empty=True, profiles=profiles, stdout=progress)
        stages = plan(builtin_definitions())
        if not stages:
            raise CommandError("no workflow is declared in workflows/builtin/")
        queues = sorted({queue_of(definition) for definition in builtin_definitions()})
        progress.write(f"Starting a worker on {', '.join(queues)}…")
        deadline = time.monotonic() + timeout
        results: list[tuple[str, list[WorkflowRun]]] = []
        with WorkerProcess(queues=queues, concurrency=2):
            for number, (what, workflow_ids) in enumerate(stages, start=1):
                progress.write(textwrap.fill(f"Stage {number}/{len(stages)}, {what}: {', '.join(workflow_ids)}",
                                             width=TABLE_WIDTH, subsequent_indent="  "))
                run_ids = [commands.run_now(workflow_id, actor="demo", trigger=Trigger.CLI, force=True).pk
                           for workflow_id in workflow_ids]
                results.append((what, self._wait(run_ids, deadline, timeout)))
        runs = [run for _, stage_runs in results for run in stage_runs]
        if as_json:
            self.stdout.write(json.dumps([
                {"stage": number, "does": what, "runs": [run_to_dict(run) for run in stage_runs]}
                for number, (what, stage_runs) in enumerate(results, start=1)
            ], indent=2, ensure_ascii=False))
        else:
            self.stdout.write("")
            for line in table(runs):
                self.stdout.write(line)
        self._conclude(runs, progress)

    def _conclude(self, runs: list[WorkflowRun], out: OutputWrapper) -> None:
        bad = [run for run in runs if not acceptable(run)]
        not_implemented = [run for run in bad if run.reason == "not implemented"]
        if not_implemented:
            out.write(f"\n{len(not_implemented)} workflow(s) are not implemented yet: "
                      + ", ".join(run.workflow_id for run in not_implemented))
        if bad:
            raise CommandError(f"{len(bad)} of {len(runs)} workflows did not succeed")
        out.write(self.style.SUCCESS(f"\nAll {len(runs)} workflows succeeded or were skipped for a stated reason."))

    @staticmethod
    def _wait(run_ids: list[int], deadline: float, timeout: int) -> list[WorkflowRun]:
        """The runs, in ``run_ids`` order, once each has ended."""
        while True:
            runs = WorkflowRun.objects.in_bulk(run_ids)
            if all(run.status in FINAL_RUN_STATUSES for run in runs.values()):
                return [runs[run_id] for run_id in run_ids]
            if time.monotonic() > deadline:
                raise CommandError(f"runs still unfinished after {timeout}s: " + ", ".join(
                    run.workflow_id for run in runs.values() if run.status not in FINAL_RUN_STATUSES))
            time.sleep(0.2)
