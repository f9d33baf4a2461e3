"""kpiSharing — KPI sharing with Analytics (SPEC §5).

Pushes the email KPIs of the days that changed to the analytics service, in idempotent batches.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="kpiSharing",
    label="KPI sharing with Analytics",
    description="Pushes the email KPIs of the days that changed to the analytics service, in idempotent batches.",
    schedule=Schedule("*/15 * * * *"),
    expire_s=900,  # a late message is dropped: the next slot does the same work
))
