"""``manage.py demo`` (``make demo``): every workflow once, in the order data flows, stage after
stage, and a table that fits 100 columns (every counter in ``--json``)."""

from __future__ import annotations

import json
from datetime import datetime
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from workflows.definition import WorkflowDefinition, builtin_definitions
from workflows.management.commands.demo import OTHER_STAGE, STAGES, TABLE_WIDTH, plan, table, top_counters
from workflows.models import RunStatus, WorkflowRun
from workflows.worker_process import current_database_url

#: (earlier, later): the second reads what the first writes (docs/architecture.md, "Data flow").
READS_AFTER = [
    ("deliverabilityUpdate", "updateDeliveryExecInfo"),  # the rules qualify the bounces
    ("updateDeliveryExecInfo", "updateDeliveryIndicators"),
    ("updateDeliveryExecInfo", "reportingAggregates"),
    ("updateDeliveryExecInfo", "abTesting"),
    ("updateDeliveryExecInfo", "mobileAppOptOutMgt"),
    ("updateDeliveryExecInfo", "updateEventsStatus"),
    ("updateEventsStatus", "mcSynch_local"),
    ("reportingAggregates", "kpiSharing"),
    ("reportingAggregates", "reportSendingNow"),
    ("kpiSharing", "kpiReconciliation"),
]


def stage_of(stages: list[tuple[str, list[str]]]) -> dict[str, int]:
    return {workflow_id: number for number, (_, workflow_ids) in enumerate(stages) for workflow_id in workflow_ids}


def test_the_stages_name_every_builtin_workflow_once_and_cleanup_runs_alone_last() -> None:
    named = [workflow_id for _, workflow_ids in STAGES for workflow_id in workflow_ids]
    stages = plan(builtin_definitions())

    assert sorted(named) == sorted(definition.id for definition in builtin_definitions())
    assert stages[-1] == ("cleanup", ["cleanup"])
    assert OTHER_STAGE not in dict(stages)


@pytest.mark.parametrize(("earlier", "later"), READS_AFTER, ids=[f"{a} before {b}" for a, b in READS_AFTER])
def test_a_workflow_runs_in_a_later_stage_than_the_workflows_it_reads_from(earlier: str, later: str) -> None:
    stage = stage_of(plan(builtin_definitions()))

    assert stage[earlier] < stage[later]


def test_a_workflow_the_stages_do_not_name_runs_after_the_others_and_before_cleanup() -> None:
    extra = WorkflowDefinition(id="zExtra", label="Extra", description="", schedule=None)

    stages = plan([*builtin_definitions(), extra])

    assert stages[-2] == (OTHER_STAGE, ["zExtra"])
    assert stages[-1] == ("cleanup", ["cleanup"])


def test_top_counters_are_the_three_largest_then_how_many_more() -> None:
    counters = {"a": 1, "b": 40, "c": 7, "d": 300, "e": 0}

    assert top_counters(counters) == "d=300, b=40, c=7, +2 more"
    assert top_counters({"rows": 2}) == "rows=2"
    assert top_counters({}) == ""


def test_the_table_fits_100_columns_with_the_reason_first() -> None:
    runs = [
        WorkflowRun(workflow_id="updateDeliveryExecInfo", status=RunStatus.SUCCEEDED, duration_s=1.5,
                    counters={f"rows_{index}": index * 1000 for index in range(15)}),
        WorkflowRun(workflow_id="kpiSharing", status=RunStatus.SKIPPED, duration_s=0.01,
                    reason="no enabled analytics account", counters={}),
        WorkflowRun(workflow_id="cleanup", status=RunStatus.FAILED, duration_s=0.2,
                    reason="PermanentError: " + "a very long reason " * 10, counters={"rows": 3}),
    ]

    lines = table(runs)

    assert all(len(line) <= TABLE_WIDTH for line in lines), [len(line) for line in lines]
    assert lines[0].split() == ["WORKFLOW", "STATUS", "TIME", "REASON", "/", "TOP", "COUNTERS"]
    assert lines[1].endswith("rows_14=14000, rows_13=13000, rows_12=12000, +12 more")
    assert lines[2].endswith("no enabled analytics account")
    assert "PermanentError: a very long reason" in lines[3] and lines[3].endswith("…")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_demo_runs_each_stage_after_the_one_before_has_ended_and_gives_every_counter_in_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The demo's worker inherits this environment: it must use this test run's database.
    monkeypatch.setenv("DATABASE_URL", current_database_url())
    monkeypatch.setenv("SECRET_KEY", settings.SECRET_KEY)
    stdout, stderr = StringIO(), StringIO()

    call_command("demo", "--profiles", "300", "--json", stdout=stdout, stderr=stderr)

    stages = json.loads(stdout.getvalue())
    assert [(stage["does"], [run["workflow"] for run in stage["runs"]]) for stage in stages] == \
        plan(builtin_definitions())
    assert "All 15 workflows succeeded or were skipped for a stated reason." in stderr.getvalue()
    for before, after in zip(stages, stages[1:], strict=False):
        ended = max(datetime.fromisoformat(run["finished_at"]) for run in before["runs"])
        started = min(datetime.fromisoformat(run["started_at"]) for run in after["runs"])
        assert ended <= started, (before["does"], after["does"])
    consolidation = next(run for stage in stages for run in stage["runs"] if run["workflow"] == "updateDeliveryExecInfo")
    assert consolidation["counters"] == WorkflowRun.objects.get(pk=consolidation["run_id"]).counters
    assert len(consolidation["counters"]) > 3, "all the counters, not the table's top three"
