"""kpiReconciliation — KPI reconciliation with Analytics (SPEC §5).

Compares the analytics service's KPI totals with the local aggregates and pushes the differences.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="kpiReconciliation",
    label="KPI reconciliation with Analytics",
    description="Compares the analytics service's KPI totals with the local aggregates and pushes the differences.",
    schedule=Schedule("20 4 * * *"),
))
