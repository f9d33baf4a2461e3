from django.apps import AppConfig
from django.db.models.signals import post_migrate


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Technical workflows"

    def ready(self) -> None:
        from workflows.definition import load_definitions

        load_definitions()
        post_migrate.connect(_sync_after_migrate, sender=self)


def _sync_after_migrate(**kwargs: object) -> None:
    """Create the Workflow rows and schedules that are missing; overwrite nothing."""
    from workflows.housekeeping import ensure_housekeeping_schedule
    from workflows.schedules import sync_workflows

    sync_workflows()
    ensure_housekeeping_schedule()
