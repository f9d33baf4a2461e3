"""Settings of the test suite: the instance's settings, served over plain HTTP.

Production (``DATABASE_URL`` set) defaults to HTTPS hardening, which assumes a TLS-terminating
proxy in front. The tests talk to Django's test client, a live server and gunicorn directly over
plain HTTP, so they turn the HTTPS-only parts off here; the production values themselves are
checked by the configuration tests and by ``check --deploy`` in CI. Processes the tests start
(workers, beat, gunicorn) inherit ``DJANGO_SETTINGS_MODULE`` and so these settings too.
"""

from project.settings import *  # noqa: F403 - the instance's settings, amended below

SECURE_SSL_REDIRECT = False
SECURE_HSTS_SECONDS = 0
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False

# The loopback fakes of the external services (pytest-httpserver, tests/workflows/fake_analytics.py)
# listen on plain http://127.0.0.1; tests of the refusal turn this off again with the settings fixture.
INTEGRATIONS_ALLOW_LOOPBACK_HTTP = True
