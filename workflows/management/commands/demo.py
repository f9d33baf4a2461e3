"""``make demo``: load demo data, run every workflow once through a real Celery worker, print a
table, and exit 0 only if each run succeeded or was skipped for a stated reason."""

from __future__ import annotations

import time

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import commands
from workflows.definition import builtin_definitions, queue_of
from workflows.models import FINAL_RUN_STATUSES, RunStatus, Trigger, WorkflowRun
from workflows.worker_process import WorkerProcess


class Command(BaseCommand):
    help = "Seed demo data if the database is empty, run every workflow once through a real worker, print the results."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=int, default=900, help="Seconds to wait for all runs (default 900).")
        parser.add_argument("--profiles", type=int, default=10_000, help="Profiles to seed when the database is empty.")

    def handle(self, *args: object, timeout: int, profiles: int, **options: object) -> None:
        call_command("seed_demo", if_empty=True, profiles=profiles, stdout=self.stdout)
        definitions = builtin_definitions()
        if not definitions:
            raise CommandError("no workflow is declared in workflows/builtin/")
        queues = sorted({queue_of(d) for d in definitions})
        self.stdout.write(f"Starting a worker on {', '.join(queues)}…")
        with WorkerProcess(queues=queues, concurrency=2):
            runs = {d.id: commands.run_now(d.id, actor="demo", trigger=Trigger.CLI, force=True) for d in definitions}
            self.stdout.write(f"Queued {len(runs)} runs; waiting for them to finish…")
            finished = self._wait([run.pk for run in runs.values()], timeout)
        self._print_table(finished)
        bad = [run for run in finished if not self._acceptable(run)]
        not_implemented = [run for run in bad if run.reason == "not implemented"]
        if not_implemented:
            self.stdout.write(f"\n{len(not_implemented)} workflow(s) are not implemented yet: "
                              + ", ".join(run.workflow_id for run in not_implemented))
        if bad:
            raise CommandError(f"{len(bad)} of {len(finished)} workflows did not succeed")
        self.stdout.write(self.style.SUCCESS(f"\nAll {len(finished)} workflows succeeded or were skipped for a stated reason."))

    @staticmethod
    def _acceptable(run: WorkflowRun) -> bool:
        return run.status == RunStatus.SUCCEEDED or (run.status == RunStatus.SKIPPED and bool(run.reason))

    def _wait(self, run_ids: list[int], timeout: int) -> list[WorkflowRun]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = list(WorkflowRun.objects.filter(pk__in=run_ids).order_by("workflow_id"))
            if all(run.status in FINAL_RUN_STATUSES for run in runs):
                return runs
            time.sleep(0.5)
        raise CommandError(f"runs still unfinished after {timeout}s: "
                           + ", ".join(run.workflow_id for run in runs if run.status not in FINAL_RUN_STATUSES))

    def _print_table(self, runs: list[WorkflowRun]) -> None:
        rows = [("workflow", "status", "reason", "duration", "counters")] + [
            (run.workflow_id, run.status, run.reason or "-", f"{run.duration_s or 0:.2f}s",
             ", ".join(f"{key}={value}" for key, value in run.counters.items()) or "-")
            for run in runs
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
