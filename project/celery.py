"""The Celery application: ``celery -A campaign worker`` / ``beat`` / ``call workflows.<id>``
(``-A campaign`` finds it re-exported by ``campaign/__init__.py``; ``-A project`` finds it here).

The engine never imports this module: its tasks are declared and its messages sent through
``celery.current_app``, which is this app in every thread once it is the default one (below).
"""

import os

from celery import Celery

from project.config import exit_on_config_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
exit_on_config_error()

# Named "campaign", as before the wiring had a package of its own: the name shows in the worker's
# banner and in the names of tasks declared in a __main__ module.
app = Celery("campaign")
# The default app of every thread, not only of this one (``celery.current_app`` elsewhere falls
# back to the default app): gunicorn's request threads send runs and probe the broker through it.
# Celery's Django fix-up does the same when no other default app exists; this makes it certain.
app.set_default()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
