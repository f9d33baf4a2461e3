"""The Celery application: ``celery -A campaign worker`` / ``beat`` / ``call workflows.<id>``.

The engine never imports this module: its tasks are declared and its messages sent through
``celery.current_app``, which is this app in every thread once it is the default one (below).
"""

import os

from celery import Celery

from campaign.config import exit_on_config_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "campaign.settings")
exit_on_config_error()

app = Celery("campaign")
# The default app of every thread, not only of this one (``celery.current_app`` elsewhere falls
# back to the default app): gunicorn's request threads send runs and probe the broker through it.
# Celery's Django fix-up does the same when no other default app exists; this makes it certain.
app.set_default()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
