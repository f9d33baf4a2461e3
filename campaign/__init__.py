"""The campaign project: settings, Celery app and the domain app of the same name."""

from campaign.celery import app as celery_app

__all__ = ("celery_app",)
