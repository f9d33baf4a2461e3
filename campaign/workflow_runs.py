"""What the domain may ask of the workflow engine, without importing it.

Why it exists: dependencies point one way — ``workflows`` (the engine and its workflows) imports
``campaign``, never the reverse. Yet report shares must queue a run of ``reportSendingNow`` (a
share sent now, a send released for a second attempt) and keep a beat row that sends one on the
share's schedule. So the domain states here the little it needs, as a :class:`Runner`, and the
engine provides one when its app is ready (``workflows.apps`` installs
``workflows.commands.DomainRunner``):

- :func:`run_now`: the engine's own ``run now`` command (its checks, audit row and enqueue on
  commit), refused with :class:`RunRefused` when the workflow is paused or stopped;
- :func:`beat_message`: the task name and JSON kwargs a PeriodicTask must carry to send a run of a
  workflow. The engine builds its own schedules with the same function
  (``workflows.schedules.beat_message``), so there is one place that knows what a scheduled run
  message looks like; the share still owns the rest of its row (crontab or clocked time, dates).

A plain registry, not a Django signal: there is exactly one engine, a call returns a value, and a
missing engine is a configuration error (:class:`~django.core.exceptions.ImproperlyConfigured`),
not a silent no-op.
"""

from __future__ import annotations

from typing import Any, Protocol

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ImproperlyConfigured


class RunRefused(Exception):
    """The engine refused the run (the workflow is paused or stopped); the message says why."""


class Runner(Protocol):
    def run_now(self, workflow_id: str, *, user: AbstractBaseUser | None = None, actor: str = "",
                trigger: str = ..., overrides: dict[str, Any] | None = None, audit_action: str | None = ...,
                wait_for_lease_s: float = 0.0) -> object: ...

    def beat_message(self, workflow_id: str, **task_kwargs: Any) -> dict[str, str]: ...


_runner: Runner | None = None


def install(runner: Runner) -> None:
    """Called by the engine's app when it is ready."""
    global _runner
    _runner = runner


def _installed() -> Runner:
    if _runner is None:
        raise ImproperlyConfigured("no workflow engine installed: the 'workflows' app provides it when it is ready")
    return _runner


def run_now(workflow_id: str, **options: Any) -> object:
    """Queue a run of the workflow now (the engine's ``run now`` command); RunRefused when the
    workflow is paused or stopped."""
    return _installed().run_now(workflow_id, **options)


def beat_message(workflow_id: str, **task_kwargs: Any) -> dict[str, str]:
    """``{"task", "kwargs"}`` of a PeriodicTask sending a scheduled run of the workflow with these
    task arguments (``trigger`` is ``schedule``)."""
    return _installed().beat_message(workflow_id, **task_kwargs)
