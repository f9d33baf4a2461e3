"""The Celery router (``CELERY_TASK_ROUTES``): each ``workflows.<id>`` message goes to its queue.

A module of its own because Celery imports the router before Django is set up (``celery -A
campaign call workflows.<id>`` sends without a worker): it imports nothing that needs the apps
loaded, and sets Django up itself before asking the definitions. :mod:`workflows.tasks`, which
needs the engine and the models, is imported only once Django is ready.
"""

from __future__ import annotations

from typing import Any

import django
from django.apps import apps

from workflows.definition import UnknownWorkflow, get_definition, queue_of


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **extra: Any) -> dict[str, str] | None:
    """Celery router (settings.CELERY_TASK_ROUTES): each workflow's messages go to its queue."""
    if not name.startswith("workflows."):
        return None
    if not apps.ready:  # `celery call` sends without setting Django up; the queues live in the definitions
        django.setup()
    try:
        return {"queue": queue_of(get_definition(name.removeprefix("workflows.")))}
    except UnknownWorkflow:
        return None
