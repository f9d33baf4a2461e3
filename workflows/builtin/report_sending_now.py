"""reportSendingNow — Instant report sharing (SPEC §5).

Renders due report shares to PDF and emails them to their recipients (triggered when a share is due).

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="reportSendingNow",
    label="Instant report sharing",
    description="Renders due report shares to PDF and emails them to their recipients (triggered when a share is due).",
    schedule=None,
))
