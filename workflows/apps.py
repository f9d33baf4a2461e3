from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Technical workflows"

    def ready(self) -> None:
        # Imported here: the engine's modules need the models loaded.
        from campaign import workflow_runs
        from workflows.commands import DomainRunner
        from workflows.definition import load_definitions, on_register
        from workflows.tasks import make_task

        load_definitions()
        on_register(make_task)  # one Celery task workflows.<id> per definition, before any worker consumes
        workflow_runs.install(DomainRunner())  # the domain queues runs without importing the engine
        post_migrate.connect(_sync_after_migrate, sender=self)


def _sync_after_migrate(*, verbosity: int = 1, stdout: Any = None, **kwargs: Any) -> None:
    """Create the Workflow rows and schedules that are missing, repair the schedules that drifted
    (audited as ``system``), and overwrite nothing else."""
    from workflows.housekeeping import ensure_housekeeping_schedules
    from workflows.schedule_repair import repair_schedules
    from workflows.schedules import sync_workflows

    sync_workflows()
    for repair in repair_schedules(actor="system"):
        if verbosity >= 1 and stdout is not None:
            stdout.write(f"  Repaired the schedule of {repair.workflow}: {repair.note}")
    ensure_housekeeping_schedules()
