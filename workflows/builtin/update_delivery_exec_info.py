"""updateDeliveryExecInfo — Update delivery execution (SPEC §5).

Consolidates raw sending feedback and tracking hits into delivery and tracking logs, qualifies bounces, maintains the quarantine and delivery states.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="updateDeliveryExecInfo",
    label="Update delivery execution",
    description="Consolidates raw sending feedback and tracking hits into delivery and tracking logs, qualifies bounces, maintains the quarantine and delivery states.",
    schedule=Schedule("*/10 * * * *"),
    expire_s=600,  # a late message is dropped: the next slot does the same work
))
