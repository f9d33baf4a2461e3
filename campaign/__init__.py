"""The campaign domain app: profiles, deliveries, logs, tracking, events, reports, audiences, rules."""

# The deployment's Celery app (project/celery.py), re-exported: this attribute is what
# `celery -A campaign worker|beat|call` finds, and importing it here, when Django loads this app,
# is what makes the app load with Django (web, shell and tests send through it). The domain uses
# nothing of it; it is the one import of `project` from the apps (tests/test_layers.py).
from project.celery import app as celery_app

__all__ = ("celery_app",)
