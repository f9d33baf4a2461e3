"""billing — Billing (SPEC §5).

Computes the system activity report of the last full month and emails it as a PDF to the billing user.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="billing",
    label="Billing",
    description="Computes the system activity report of the last full month and emails it as a PDF to the billing user.",
    schedule=Schedule("0 1 * * *"),
))
