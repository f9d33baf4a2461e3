"""Workflows and runs as plain JSON-ready dicts, in the CLI's shape documented in docs/operations.md.

One shape for every interface that speaks JSON (the ``workflow`` command today; an HTTP view or a
report tomorrow), so a script written against one reads the others. The key sets are part of the
contract: add a key only together with its entry in docs/operations.md, never rename one. Times are
ISO-8601 strings with their UTC offset, or ``None``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from django.db.models import OuterRef, QuerySet, Subquery

from workflows import schedules
from workflows.models import Workflow, WorkflowRun

RUN_KEYS: Final = ("run_id", "workflow", "trigger", "status", "reason", "started_at", "finished_at", "duration_s",
                   "counters", "activities")
ACTIVITY_KEYS: Final = ("name", "status", "counters")
WORKFLOW_KEYS: Final = ("id", "label", "state", "schedule", "next_run_at", "cursors", "last_run")
SCHEDULE_KEYS: Final = ("crontab", "timezone", "human")


class _Unset:
    """Marks "look the last run up" apart from "there is no last run" (``None``)."""


UNSET: Final = _Unset()


def isoformat(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def run_to_dict(run: WorkflowRun) -> dict[str, Any]:
    """``{"run_id", "workflow", "trigger", "status", "reason", "started_at", "finished_at",
    "duration_s", "counters", "activities": [{"name", "status", "counters"}]}``.

    Activities come in their run order; prefetch ``activities`` when serializing many runs.
    """
    return {
        "run_id": run.pk,
        "workflow": run.workflow_id,
        "trigger": run.trigger,
        "status": run.status,
        "reason": run.reason,
        "started_at": isoformat(run.started_at),
        "finished_at": isoformat(run.finished_at),
        "duration_s": run.duration_s,
        "counters": dict(run.counters or {}),
        "activities": [
            {"name": activity.name, "status": activity.status, "counters": dict(activity.counters or {})}
            for activity in sorted(run.activities.all(), key=lambda activity: activity.position)
        ],
    }


def last_run_of(workflow: Workflow) -> WorkflowRun | None:
    """The workflow's most recent run, whatever its status (a queued run is the latest news)."""
    return workflow.runs.order_by("-pk").prefetch_related("activities").first()


def with_last_runs(workflows: QuerySet[Workflow]) -> list[tuple[Workflow, WorkflowRun | None]]:
    """Each workflow with its last run, in three queries whatever the number of workflows (the
    run table's (workflow, -id) index answers the per-workflow "latest" subquery)."""
    latest = WorkflowRun.objects.filter(workflow=OuterRef("pk")).order_by("-pk").values("pk")[:1]
    rows = list(workflows.select_related("periodic_task__crontab").annotate(last_run_pk=Subquery(latest)))
    runs = WorkflowRun.objects.filter(pk__in=[row.last_run_pk for row in rows if row.last_run_pk is not None])
    by_pk = {run.pk: run for run in runs.prefetch_related("activities")}
    return [(row, by_pk.get(row.last_run_pk)) for row in rows]


def workflow_to_dict(workflow: Workflow, *, last_run: WorkflowRun | None | _Unset = UNSET) -> dict[str, Any]:
    """``{"id", "label", "state", "schedule": {"crontab", "timezone", "human"}, "next_run_at",
    "cursors", "last_run": <run or None>}``; ``crontab`` is None for an on-demand workflow;
    ``cursors`` is where each incremental scan resumes (``{}`` for a workflow without one).

    ``last_run`` is looked up unless given (pass it, from :func:`with_last_runs`, for a list).
    """
    run = last_run_of(workflow) if isinstance(last_run, _Unset) else last_run
    return {
        "id": workflow.pk,
        "label": workflow.label,
        "state": workflow.state,
        "schedule": schedules.schedule_summary(workflow),
        "next_run_at": isoformat(schedules.next_run_at(workflow)),
        "cursors": dict(sorted((workflow.cursors or {}).items())),  # PostgreSQL's jsonb keeps its own key order
        "last_run": run_to_dict(run) if run is not None else None,
    }
