"""cleanup — Database cleanup (SPEC §5).

Purges logs, events, aggregates and workflow history past their retention, releases quarantined addresses, then refreshes database statistics.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="cleanup",
    label="Database cleanup",
    description="Purges logs, events, aggregates and workflow history past their retention, releases quarantined addresses, then refreshes database statistics.",
    schedule=Schedule("0 4 * * *"),
))
