"""The Prometheus metrics behind ``/metrics``, computed from the database at scrape time.

Runs execute in Celery worker processes, and the web server itself may run several processes, so
in-process counters (prometheus_client's default registry) would each see a fraction of the truth
and need the fragile multiprocess mode. The database already holds every run, so a custom
collector answers each scrape with a handful of aggregate queries (GROUP BY workflow, conditional
counts for the histogram buckets) and every process gives the same answer.

Counters are counts over the runs recorded plus those the cleanup workflow purged: before deleting
runs older than a workflow's ``history_days``, cleanup folds their aggregates into the workflow's
:class:`~workflows.models.RunTally` (:func:`retire`), in the same transaction, so a counter never
goes down.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from django.db.models import Count, Max, Q, QuerySet, Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from workflows import beat_leader
from workflows.models import RunStatus, RunTally, SchedulerHeartbeat, Workflow, WorkflowRun, WorkflowState

#: Upper bounds (seconds) of the run-duration histogram: from the every-10-minutes workflows that
#: take seconds to the nightly ones that take up to an hour (a run's hard limit is at most 4 h).
DURATION_BUCKETS_S = (1, 5, 15, 60, 300, 900, 1800, 3600)

#: Runs that really executed; a skipped run (refused, or another run held the lease) lasts a few
#: milliseconds and would drown the histogram's low buckets.
_TIMED_RUNS = Q(duration_s__isnull=False) & ~Q(status=RunStatus.SKIPPED)


class WorkflowCollector(Collector):
    """Reads the workflow tables at each scrape; holds no state of its own."""

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering the collector never touches the database.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        runs, duration, last_success, rows, state, errors, beat, leadership_changes, beat_processes = families
        workflows = list(Workflow.objects.order_by("id").values_list("id", "state", "consecutive_errors"))
        tallies = dict(RunTally.objects.values_list("workflow_id", "totals"))
        aggregates = {row["workflow_id"]: _added(tallies.pop(row["workflow_id"], {}), row)
                      for row in _run_aggregates(WorkflowRun.objects.all())}
        aggregates |= {workflow_id: _added(totals, {}) for workflow_id, totals in tallies.items()}
        for workflow_id, workflow_state, consecutive_errors in workflows:
            row = aggregates.get(workflow_id, {})
            for status in RunStatus.values:
                runs.add_metric([workflow_id, status], row.get(f"runs_{status}") or 0)
            buckets = [(floatToGoString(bound), row.get(f"le_{index}") or 0) for index, bound in enumerate(DURATION_BUCKETS_S)]
            buckets.append(("+Inf", row.get("duration_count") or 0))
            duration.add_metric([workflow_id], buckets, sum_value=row.get("duration_sum") or 0.0)
            if row.get("last_success") is not None:
                last_success.add_metric([workflow_id], row["last_success"].timestamp())
            rows.add_metric([workflow_id], row.get("rows_done") or 0)
            for choice in WorkflowState.values:
                state.add_metric([workflow_id, choice], 1.0 if workflow_state == choice else 0.0)
            errors.add_metric([workflow_id], consecutive_errors)
        heartbeat = SchedulerHeartbeat.objects.filter(pk=1).values_list("beat_at", flat=True).first()
        if heartbeat is not None:
            beat.add_metric([], heartbeat.timestamp())
        beats = beat_leader.cluster()
        leadership_changes.add_metric([], beats.leadership_changes)
        for member in beats.members:
            role = "leader" if member.name == beats.leader else "standby"
            beat_processes.add_metric([member.name, role], member.heartbeat_at.timestamp())
        return families

    @staticmethod
    def _families() -> list[Metric]:
        return [
            CounterMetricFamily("workflow_runs", "Runs recorded, by workflow and status.", labels=["workflow", "status"]),
            HistogramMetricFamily("workflow_run_duration_seconds", "Duration of runs that executed (skipped runs excluded).",
                                  labels=["workflow"]),
            GaugeMetricFamily("workflow_last_success_timestamp_seconds", "End of the last successful run (Unix time).",
                              labels=["workflow"]),
            CounterMetricFamily("workflow_rows_processed", "Rows processed by the recorded runs.", labels=["workflow"]),
            GaugeMetricFamily("workflow_state", "1 for the workflow's current state, 0 for the others.",
                              labels=["workflow", "state"]),
            GaugeMetricFamily("workflow_consecutive_errors", "Failed runs in a row since the last success.", labels=["workflow"]),
            GaugeMetricFamily("workflow_beat_last_tick_timestamp_seconds", "Last heartbeat written by celery beat (Unix time)."),
            CounterMetricFamily("workflow_beat_leadership_changes",
                                "Times another beat process became the one that dispatches."),
            GaugeMetricFamily("workflow_beat_process_heartbeat_timestamp_seconds",
                              "Last heartbeat of each beat process (Unix time), leader or standby.", labels=["process", "role"]),
        ]


def retire(run_ids: Sequence[int]) -> None:
    """Fold these runs into their workflows' tallies; call in the transaction that deletes them."""
    for row in _run_aggregates(WorkflowRun.objects.filter(pk__in=run_ids)):
        tally, _ = RunTally.objects.select_for_update().get_or_create(workflow_id=row["workflow_id"])
        tally.totals = _as_json(_added(tally.totals, row))
        tally.save(update_fields=["totals", "updated_at"])


def _added(totals: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """A tally's totals plus one aggregate row: sums, and the later of the two last successes."""
    combined: dict[str, Any] = {}
    for key in (totals.keys() | row.keys()) - {"workflow_id"}:
        mine, theirs = totals.get(key), row.get(key)
        if key == "last_success":
            moments = [datetime.fromisoformat(value) if isinstance(value, str) else value for value in (mine, theirs)]
            combined[key] = max((moment for moment in moments if moment is not None), default=None)
        else:
            combined[key] = (mine or 0) + (theirs or 0)
    return combined


def _as_json(totals: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in totals.items()}


def _run_aggregates(runs: QuerySet[WorkflowRun]) -> Iterator[dict[str, Any]]:
    """One GROUP BY over the runs: per workflow, counts by status, the duration histogram, the
    last success and the rows processed. Conditional aggregates (``FILTER`` on PostgreSQL,
    ``CASE`` on SQLite) keep it one pass over the table."""
    annotations: dict[str, Any] = {f"runs_{status}": Count("id", filter=Q(status=status)) for status in RunStatus.values}
    annotations |= {
        f"le_{index}": Count("id", filter=_TIMED_RUNS & Q(duration_s__lte=bound))
        for index, bound in enumerate(DURATION_BUCKETS_S)
    }
    annotations |= {
        "duration_count": Count("id", filter=_TIMED_RUNS),
        "duration_sum": Sum("duration_s", filter=_TIMED_RUNS),
        "last_success": Max("finished_at", filter=Q(status=RunStatus.SUCCEEDED)),
        "rows_done": Sum("progress_done"),
    }
    # order_by() drops the model's default ordering, which would otherwise join the GROUP BY.
    return iter(runs.order_by().values("workflow_id").annotate(**annotations))


registry = CollectorRegistry(auto_describe=False)
registry.register(WorkflowCollector())


def render() -> bytes:
    """The exposition text; raises ``DatabaseError`` when the database does not answer."""
    return generate_latest(registry)
