"""``python manage.py benchmark``: each heavy workflow against the minimal SQL doing its work (SPEC §6)."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows.benchmarks import all_cases
from workflows.benchmarks.runner import BenchmarkError, Result, drop_scratch_database, run_case, scratch_database
from workflows.definition import UnknownWorkflow, resolve_id

#: SPEC §6 targets, printed beside the figures.
TARGET_RATIO = 1.5
TARGET_INCREMENTAL_SHARE = 0.05
TARGET_PEAK_RSS_MB = 300


class Command(BaseCommand):
    help = ("Fill a scratch database at a chosen scale and time each heavy workflow against the minimal "
            "hand-written SQL doing the same work, plus an incremental run over 1% new rows.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=100_000, help="Scale, in source rows (default 100,000).")
        parser.add_argument("--only", nargs="+", metavar="ID", default=[], help="Only these workflows.")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print a JSON array instead of a table.")

    def handle(self, *args: object, rows: int, only: list[str], seed: int, as_json: bool, **options: object) -> None:
        if rows < 100:
            raise CommandError("--rows must be at least 100")
        cases = all_cases()
        try:
            wanted = [resolve_id(name) for name in only] or list(cases)
        except UnknownWorkflow as error:
            raise CommandError(str(error)) from None
        missing = [workflow_id for workflow_id in wanted if workflow_id not in cases]
        if missing:
            raise CommandError(f"no benchmark case for {', '.join(missing)} (cases: {', '.join(cases) or 'none'})")

        old_name, scratch = scratch_database()
        try:
            results = []
            for workflow_id in wanted:
                if not as_json:
                    self.stderr.write(f"{workflow_id}: {rows:,} rows…")
                try:
                    results.append(run_case(cases[workflow_id], rows=rows, seed=seed))
                except BenchmarkError as error:
                    raise CommandError(str(error)) from None
        finally:
            drop_scratch_database(old_name)
        self._report(results, as_json=as_json)
        if any(not result.same_result for result in results):
            raise CommandError("a workflow's output differs from the SQL bound's: "
                               + ", ".join(r.workflow for r in results if not r.same_result))

    def _report(self, results: list[Result], *, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps([result.as_json() for result in results], indent=2))
            return
        header = f"{'workflow':<26}{'rows':>11}{'seconds':>9}{'rows/s':>11}{'sql s':>8}{'ratio':>7}{'incr s':>8}{'incr %':>8}{'peak MB':>9}  same"
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

