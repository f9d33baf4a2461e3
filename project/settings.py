"""Django settings, all read from the environment by :mod:`project.config`.

Nothing set gives the embedded default (SQLite, filesystem broker, file email under ``var/``);
``DATABASE_URL`` and ``CELERY_BROKER_URL`` switch to PostgreSQL and Redis. See docs/configuration.md.
"""

import os
from pathlib import Path

from project.config import REDIS_VISIBILITY_TIMEOUT, WORKFLOW_MAX_HARD_TIME_LIMIT, load_config

BASE_DIR = Path(__file__).resolve().parent.parent
CONFIG = load_config(os.environ, base_dir=BASE_DIR)

SECRET_KEY = CONFIG.secret_key
DEBUG = CONFIG.debug
ALLOWED_HOSTS = CONFIG.allowed_hosts
CSRF_TRUSTED_ORIGINS = CONFIG.csrf_trusted_origins
VAR_DIR = CONFIG.var_dir

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "campaign",
    "workflows",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": CONFIG.database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = CONFIG.time_zone
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = CONFIG.var_dir / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns at start-up when it is missing
MEDIA_URL = "media/"
MEDIA_ROOT = CONFIG.var_dir / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve admin assets straight from the apps, so `make run` needs no collectstatic step.
WHITENOISE_USE_FINDERS = True

# Email: EMAIL_URL (smtp://, filemail://, consolemail://); the embedded default writes files.
# CONFIG.email holds EMAIL_BACKEND, EMAIL_HOST, EMAIL_PORT, EMAIL_FILE_PATH... as Django names them.
globals().update(CONFIG.email)
DEFAULT_FROM_EMAIL = CONFIG.default_from_email
SERVER_EMAIL = CONFIG.default_from_email
BILLING_EMAIL = CONFIG.billing_email

# Celery (namespace CELERY_): jobs that must not be lost. A message is acknowledged only after
# its task returned, is requeued if the worker process dies, and each worker process reserves
# one message at a time so a long run never holds a second one hostage.
CELERY_BROKER_URL = CONFIG.broker_url
CELERY_BROKER_TRANSPORT_OPTIONS = CONFIG.broker_transport_options
# Per broker (config.broker_celery_settings): on Redis the transport that rides through an outage,
# on RabbitMQ quorum queues on topic exchanges with countdowns kept by the broker.
globals().update({f"CELERY_{name.upper()}": value for name, value in CONFIG.broker_celery_settings.items()})
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker that lost its broker retries for as long as the broker is away (Celery's default gives
# up after 100 attempts, about 50 minutes, and the worker exits).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A run needs the database, not the broker: when the broker connection drops, the runs under way
# go on. Their messages come back (RabbitMQ requeues them at once, Redis when its channel closes
# or after the visibility timeout) and the engine ignores a message whose run is alive or over.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# RabbitMQ only: a heartbeat every 30 s, so a dead link is noticed within a minute (two missed).
CELERY_BROKER_HEARTBEAT = 30
CELERY_TASK_IGNORE_RESULT = True  # run state lives in WorkflowRun, not in a result backend
# Celery's Django fix-up closes the database connections around every task unless this is set, so
# each run would pay a new connection (a third of a no-op run's cost on PostgreSQL). Reused, they
# follow CONN_MAX_AGE and CONN_HEALTH_CHECKS: each task starts with close_old_connections(), which
# replaces a connection that is too old or broken (the database restarted) before it is used.
CELERY_DB_REUSE_MAX = 1000
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ROUTES = ("workflows.routing.route_task",)
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
# Schedules live in the database (django-celery-beat) and are edited in the admin; there is
# deliberately no CELERY_BEAT_SCHEDULE, which beat would write over admin edits at each start.
CELERY_BEAT_SCHEDULER = "workflows.scheduler:DatabaseScheduler"
DJANGO_CELERY_BEAT_TZ_AWARE = True

WORKFLOW_LEASE_SECONDS = CONFIG.lease_seconds
# Any number of beat processes may run; the one holding this lease dispatches (workflows.beat_leader).
BEAT_LEASE_SECONDS = CONFIG.beat_lease_seconds
# Workflow id -> queue, overriding the definitions' (WORKFLOW_QUEUES): a heavy workflow on its own workers.
WORKFLOW_QUEUES = CONFIG.workflow_queues
# Modules declaring workflows beyond workflows/builtin/ (the test suite adds its sample workflow).
WORKFLOW_EXTRA_MODULES = CONFIG.extra_workflow_modules
# The longest hard time limit a workflow may declare (workflows.definition checks every definition
# against it) and Redis's visibility timeout, derived from it (project.config).
WORKFLOW_MAX_HARD_TIME_LIMIT = WORKFLOW_MAX_HARD_TIME_LIMIT
REDIS_VISIBILITY_TIMEOUT = REDIS_VISIBILITY_TIMEOUT

# PostgreSQL: the log tables are range-partitioned by their time column into periods of this
# length, in UTC: "month", "week" or "day" (campaign.partitions). SQLite keeps plain tables.
LOG_PARTITION_INTERVAL = CONFIG.log_partition_interval

# Event API: larger bodies are refused with 413 before they are read.
EVENT_MAX_BODY_BYTES = CONFIG.event_max_body_bytes

# External accounts send their bearer token over HTTPS only; this development switch also allows
# plain http:// to a loopback address (a local fake of the service). Off by default.
INTEGRATIONS_ALLOW_LOOPBACK_HTTP = CONFIG.integrations_allow_loopback_http

# Reports and report emails: the name printed on a report (empty: the first allowed host) and the
# base of the links in emails (empty: https:// + the first allowed host).
INSTANCE_NAME = CONFIG.instance_name
SITE_URL = CONFIG.site_url
# Where gunicorn listens (gunicorn.conf.py parses it); ensure_admin prints the admin's address from it.
WEB_BIND = CONFIG.web_bind

# /metrics requires "Authorization: Bearer <METRICS_TOKEN>" when set, and is open when empty.
METRICS_TOKEN = CONFIG.metrics_token
# /healthz thresholds in seconds; None keeps workflows.health's defaults (90 s, 300 s).
WORKFLOW_BEAT_STALE_SECONDS = CONFIG.beat_stale_seconds
WORKFLOW_OVERDUE_GRACE_SECONDS = CONFIG.overdue_grace_seconds

# HTTPS hardening (SECURE_SSL_REDIRECT, SECURE_HSTS_*, *_COOKIE_SECURE, SECURE_PROXY_SSL_HEADER):
# on by default in production, off on the embedded default; see docs/configuration.md.
globals().update(CONFIG.security)
# Load balancers and Prometheus probe over plain HTTP inside the private network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
# Preloading is a one-way commitment to browsers' HSTS lists that an operator opts into with
# SECURE_HSTS_PRELOAD=true; the deployment check would otherwise warn whenever it is off.
SILENCED_SYSTEM_CHECKS = [] if CONFIG.security["SECURE_HSTS_PRELOAD"] else ["security.W021"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
