"""reportingAggregates — Reporting aggregates (SPEC §5).

Upserts the daily per-delivery aggregates for the days that changed since the last run.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="reportingAggregates",
    label="Reporting aggregates",
    description="Upserts the daily per-delivery aggregates for the days that changed since the last run.",
    schedule=Schedule("0 2 * * *"),
))
