"""mobileAppOptOutMgt — Mobile app opt-out management (SPEC §5).

Disables push subscriptions whose device tokens were reported unregistered or invalid.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="mobileAppOptOutMgt",
    label="Mobile app opt-out management",
    description="Disables push subscriptions whose device tokens were reported unregistered or invalid.",
    schedule=Schedule("0 1,7,13,19 * * *"),
))
