"""deliverabilityUpdate — Update for deliverability (SPEC §5).

Fetches the bounce, MX and domain rules from the deliverability service and replaces the local lists.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="deliverabilityUpdate",
    label="Update for deliverability",
    description="Fetches the bounce, MX and domain rules from the deliverability service and replaces the local lists.",
    schedule=Schedule("0 2 * * *"),
))
