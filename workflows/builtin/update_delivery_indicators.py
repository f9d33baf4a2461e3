"""updateDeliveryIndicators — Update delivery indicators (SPEC §5).

Recomputes the KPIs of the deliveries whose logs or tracking changed since the last run.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="updateDeliveryIndicators",
    label="Update delivery indicators",
    description="Recomputes the KPIs of the deliveries whose logs or tracking changed since the last run.",
    schedule=Schedule("0 * * * *"),
    expire_s=3600,  # a late message is dropped: the next slot does the same work
))
