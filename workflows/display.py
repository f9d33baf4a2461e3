"""How the workflow admin pages show a workflow: the colours and badges of states and run
statuses, and the definition of a row (an empty one when its module left the code).

Shared by :mod:`workflows.admin` and :mod:`workflows.dashboard`; the admin mounts the dashboard, so
what both show lives here, below both.
"""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.safestring import SafeString

from workflows.definition import UnknownWorkflow, WorkflowDefinition, get_definition
from workflows.models import RunStatus, Workflow, WorkflowState

STATE_COLOURS = {
    WorkflowState.STARTED: "#2e7d32",  # green
    WorkflowState.PAUSED: "#ef6c00",  # orange
    WorkflowState.STOPPED: "#757575",  # grey
}
#: Paul Tol's "vibrant" scheme, told apart by colour-blind readers too (the dashboard's heat map also
#: marks a failure with a symbol). Light ones carry dark text on a badge.
RUN_STATUS_COLOURS = {
    RunStatus.QUEUED: "#33bbee",  # cyan
    RunStatus.RUNNING: "#0077bb",  # blue
    RunStatus.PAUSED: "#ee7733",  # orange
    RunStatus.SUCCEEDED: "#009988",  # teal
    RunStatus.FAILED: "#cc3311",  # red
    RunStatus.STOPPED: "#ee3377",  # magenta
    RunStatus.SKIPPED: "#bbbbbb",  # grey
}
#: Backgrounds on which black text reads better than white (contrast ratio of at least 4.5).
DARK_TEXT_ON = {"#33bbee", "#ee7733", "#009988", "#ee3377", "#bbbbbb"}


def badge(text: str, colour: str, *, css_class: str) -> SafeString:
    return format_html(
        '<span class="{}" style="background:{};color:{};padding:1px 7px;border-radius:9px;'
        'white-space:nowrap">{}</span>', css_class, colour, "#000" if colour in DARK_TEXT_ON else "#fff", text,
    )


def state_badge(state: str) -> SafeString:
    return badge(WorkflowState(state).label, STATE_COLOURS.get(state, "#757575"), css_class=f"workflow-state state-{state}")


def run_status_badge(status: str) -> SafeString:
    return badge(RunStatus(status).label, RUN_STATUS_COLOURS.get(status, "#757575"), css_class=f"run-status status-{status}")


def definition_of(workflow: Workflow) -> WorkflowDefinition:
    """The workflow's definition; an empty one for a row whose module was removed from the code."""
    try:
        return get_definition(workflow.pk)
    except UnknownWorkflow:
        return WorkflowDefinition(id=workflow.pk, label=workflow.label, description=workflow.description, schedule=None)
