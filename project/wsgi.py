"""WSGI entry point for gunicorn (Procfile ``web``)."""

import os

from django.core.wsgi import get_wsgi_application

from project.config import exit_on_config_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
exit_on_config_error()

application = get_wsgi_application()
