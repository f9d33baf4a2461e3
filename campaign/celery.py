"""The Celery application: ``celery -A campaign worker`` / ``beat`` / ``call workflows.<id>``."""

import os

from celery import Celery

from campaign.config import exit_on_config_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "campaign.settings")
exit_on_config_error()

app = Celery("campaign")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
