"""importSharedAudience — Import shared audience (SPEC §5).

Imports the members of each enabled shared audience from the audience service, replacing the membership atomically.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="importSharedAudience",
    label="Import shared audience",
    description="Imports the members of each enabled shared audience from the audience service, replacing the membership atomically.",
    schedule=Schedule("0 * * * *"),
    expire_s=3600,  # a late message is dropped: the next slot does the same work
))
