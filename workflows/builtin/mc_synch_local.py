"""mcSynch_local — Message Center local archiving (SPEC §5).

Moves processed real-time events older than the delay into the event history, in batches.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="mcSynch_local",
    label="Message Center local archiving",
    description="Moves processed real-time events older than the delay into the event history, in batches.",
    schedule=Schedule("0 * * * *"),
    expire_s=3600,  # a late message is dropped: the next slot does the same work
))
