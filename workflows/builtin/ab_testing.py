"""abTesting — A/B testing (SPEC §5).

Picks the winner of each A/B test whose test period has ended and sends it to the remainder population (or waits for confirmation).

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="abTesting",
    label="A/B testing",
    description="Picks the winner of each A/B test whose test period has ended and sends it to the remainder population (or waits for confirmation).",
    schedule=Schedule("0 0 * * *"),
))
