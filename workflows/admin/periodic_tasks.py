"""django-celery-beat's periodic task admin, with a workflow's own PeriodicTask made read-only.

A workflow's schedule is edited on the workflow's page (validated and audited) and enabled or
disabled by its commands; an edit of its PeriodicTask here would bypass both, so its page says where
to go instead. The admin replaces django-celery-beat's registration of PeriodicTask.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.http import HttpRequest, HttpResponse
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from workflows.admin.base import workflow_url
from workflows.models import Workflow

admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    """django-celery-beat's admin, except that a workflow's own PeriodicTask is read-only here: its
    schedule is edited on the workflow's page (validated and audited), and start, pause and stop
    enable and disable it. Its page says so and links there. Other rows (the engine's housekeeping,
    report shares, anything an administrator added) are edited here as before."""

    change_form_template = "admin/workflows/periodictask/change_form.html"

    @staticmethod
    def workflow_of(task: PeriodicTask | None) -> Workflow | None:
        if task is None or task.pk is None:
            return None
        return Workflow.objects.filter(periodic_task=task).first()

    def has_change_permission(self, request: HttpRequest, obj: PeriodicTask | None = None) -> bool:
        return self.workflow_of(obj) is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: PeriodicTask | None = None) -> bool:
        return self.workflow_of(obj) is None and super().has_delete_permission(request, obj)

    def get_fieldsets(self, request: HttpRequest, obj: PeriodicTask | None = None) -> Any:
        if self.workflow_of(obj) is None:
            return super().get_fieldsets(request, obj)
        # Read-only: model fields only (the edit form's task picker "regtask" has nothing to show).
        return [(None, {"fields": ("name", "task", "enabled", "description")}),
                ("Schedule", {"fields": ("crontab", "crontab_translation", "start_time", "last_run_at", "one_off")}),
                ("Arguments", {"fields": ("args", "kwargs")}),
                ("Execution options", {"fields": ("expires", "expire_seconds", "queue")})]

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = dict(extra_context or {})
        workflow = self.workflow_of(self.get_object(request, unquote(object_id))) if object_id else None
        if workflow is not None:
            extra_context["owning_workflow"] = {"id": workflow.pk, "label": workflow.label, "url": workflow_url(workflow.pk)}
        return super().changeform_view(request, object_id, form_url, extra_context)
