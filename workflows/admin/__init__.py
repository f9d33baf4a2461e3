"""The "Technical workflows" admin: operate the workflows, edit their settings, read their history.

- Workflows come from code: the admin never adds or deletes one. It gives the commands of
  :mod:`workflows.commands` (actions on the list, buttons on the workflow page for the commands that
  apply to its state, a forced run from either after a confirmation page), so a command means the
  same here as in the CLI and the shell, and is audited with the user who gave it. Commands need the
  ``workflows.operate_workflow`` permission, edits ``change_workflow``, reading ``view_*``.
- The settings form is generated from the definition (:mod:`workflows.forms`): one field per
  property and per activity, the schedule validated before it reaches beat.
- Runs, activity runs, the journal and the audit trail are written by the engine and the commands;
  here they are read-only (an edit would make the history lie).
- The workflow list costs a fixed number of queries whatever the number of workflows and runs: the
  schedule comes with a join, the last run with subqueries on the (workflow, -id) index.
- A schedule that drifted (PeriodicTask deleted, disabled while started, sending another task) is
  flagged on the list and on the workflow page, which offers the repair of
  :mod:`workflows.schedule_repair`. A workflow's own PeriodicTask is read-only in
  django-celery-beat's admin, which links to the workflow's page: schedule edits go through the
  workflow's form, validated and audited.
- A stored property value that does not validate (saved before its range existed, or written by
  hand) is named above the workflow's form and marked in its read-only properties: the engine fails
  every run on it (without pausing the workflow) until it is fixed here.

- The pages fit a 1024 to 1920 px screen (:mod:`workflows.admin.base`); the section comes first on
  the admin index, with the dashboard, which "View site" opens too (:mod:`workflows.admin.site`).

One module per page or concern: ``workflow`` (the list and the workflow page), ``workflow_commands``
(its actions, buttons and forced run), ``history`` (runs, journal, audit trail), ``periodic_tasks``,
``dashboard`` (the mount of :mod:`workflows.dashboard`) and ``site`` (the section's place on the
index), on the shared helpers of ``base``. Importing this package (Django's admin autodiscovery
does) registers them all. The submodules import ``base`` and one another, never this package, so
there is no circle through it.
"""

from workflows.admin import dashboard, history, periodic_tasks, site, workflow, workflow_commands
from workflows.admin.workflow import RECENT_RUNS

__all__ = ["RECENT_RUNS", "dashboard", "history", "periodic_tasks", "site", "workflow", "workflow_commands"]
