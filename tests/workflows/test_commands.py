"""Which commands apply to a workflow in which state: :func:`workflows.commands.applicable_commands`
offers exactly those that are neither refused nor idle, and the commands refuse with the words of
:func:`workflows.commands.refusal`."""

from __future__ import annotations

import pytest

from workflows import commands
from workflows.commands import COMMAND_NAMES, CommandRefused, applicable_commands, refusal
from workflows.models import RunStatus, Trigger, Workflow, WorkflowRun, WorkflowState

pytestmark = pytest.mark.django_db

STARTED, PAUSED, STOPPED = WorkflowState.STARTED, WorkflowState.PAUSED, WorkflowState.STOPPED


def workflow_in(state: str, *, paused_run: bool = False) -> Workflow:
    Workflow.objects.filter(pk="cleanup").update(state=state)
    if paused_run:
        WorkflowRun.objects.create(workflow_id="cleanup", trigger=Trigger.SCHEDULE, status=RunStatus.PAUSED,
                                   halted_activity="purge_events")
    return Workflow.objects.get(pk="cleanup")


@pytest.mark.parametrize(("state", "paused_run", "applicable"), [
    (STARTED, False, ["pause", "stop", "restart", "run now"]),
    (STARTED, True, ["pause", "resume", "stop", "restart", "force run"]),  # halted before a suspended activity
    (PAUSED, False, ["resume", "stop", "restart", "force run"]),
    (PAUSED, True, ["resume", "stop", "restart", "force run"]),
    (STOPPED, False, ["start", "restart", "force run"]),
])
def test_applicable_commands_by_state(state: str, paused_run: bool, applicable: list[str]) -> None:
    assert applicable_commands(workflow_in(state, paused_run=paused_run)) == applicable


@pytest.mark.parametrize("state", [STARTED, PAUSED, STOPPED])
def test_every_refused_command_is_left_out_and_refused_with_the_same_words(state: str) -> None:
    workflow = workflow_in(state)
    calls = {"pause": lambda: commands.pause("cleanup", actor="test"),
             "resume": lambda: commands.resume("cleanup", actor="test"),
             "run now": lambda: commands.run_now("cleanup", actor="test")}
    for command in COMMAND_NAMES:
        reason = refusal(command, workflow)
        if not reason:
            continue
        assert command not in applicable_commands(workflow)
        with pytest.raises(CommandRefused) as refused:
            calls[command]()
        assert str(refused.value) == reason
        assert Workflow.objects.get(pk="cleanup").state == state


def test_run_now_refusal_names_the_command_that_would_allow_it() -> None:
    assert refusal("run now", workflow_in(PAUSED)) == "cleanup is paused; resume it first, or force the run"
    assert refusal("run now", workflow_in(STOPPED)) == "cleanup is stopped; start it first, or force the run"
    assert refusal("force run", workflow_in(STOPPED)) == ""
