"""forecasting — Forecasting (SPEC §5).

Computes the contacts planned by scheduled and provisional deliveries and the contact pressure per profile; excludes over-solicited profiles from lower-priority deliveries.

Not implemented yet: its activities come with their own issue; until then every run fails with
reason "not implemented" rather than pretending to work.
"""

from workflows.definition import Schedule, WorkflowDefinition, register

definition = register(WorkflowDefinition(
    id="forecasting",
    label="Forecasting",
    description="Computes the contacts planned by scheduled and provisional deliveries and the contact pressure per profile; excludes over-solicited profiles from lower-priority deliveries.",
    schedule=Schedule("0 1 * * *"),
))
