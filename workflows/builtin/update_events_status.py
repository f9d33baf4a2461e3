"""updateEventsStatus — Update events status (SPEC §5).

Routes pending real-time events to their published template and copies the delivery outcome back to each event.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="updateEventsStatus",
    label="Update events status",
    description="Routes pending real-time events to their published template and copies the delivery outcome back to each event.",
    schedule=Schedule("*/10 * * * *"),
    expire_s=600,  # a late message is dropped: the next slot does the same work
))
