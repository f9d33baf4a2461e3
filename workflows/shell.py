"""Commands for ``python manage.py shell``: ``from workflows import run, pause, resume, stop, restart``.

Same semantics as the CLI and the admin (they all call :mod:`workflows.commands`); the audit
trail records the operating-system user.
"""

from __future__ import annotations

import getpass
from typing import Any

from workflows import commands
from workflows.models import Trigger, Workflow, WorkflowRun


def _actor() -> str:
    return f"shell:{getpass.getuser()}"


def run(workflow_id: str, *, sync: bool = False, force: bool = False, **overrides: Any) -> WorkflowRun:
    """Run now: queued through the broker, or in this process with ``sync=True``."""
    return commands.run_now(workflow_id, actor=_actor(), trigger=Trigger.SHELL, force=force,
                            overrides=overrides or None, sync=sync)


def start(workflow_id: str) -> Workflow:
    return commands.start(workflow_id, actor=_actor())


def pause(workflow_id: str) -> Workflow:
    return commands.pause(workflow_id, actor=_actor())


def resume(workflow_id: str) -> Workflow:
    return commands.resume(workflow_id, actor=_actor())


def stop(workflow_id: str) -> Workflow:
    return commands.stop(workflow_id, actor=_actor())


def restart(workflow_id: str, *, sync: bool = False) -> WorkflowRun:
    return commands.restart(workflow_id, actor=_actor(), trigger=Trigger.SHELL, sync=sync)
