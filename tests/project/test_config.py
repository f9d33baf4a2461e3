"""project.config.load_config: nothing set gives the embedded default; production URLs select
PostgreSQL and Redis; every malformed variable stops start-up with a message that names it.

load_config is a function of a mapping, so these tests never touch ``os.environ``. It does create
folders (var_dir, broker folders, the mail folder): every test runs in a tmp_path, and from it as
the working directory so that a relative path cannot land in the source tree.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kombu import Connection

from project.config import (
    EMBEDDED_BROKER_POLLING_INTERVAL_S,
    REDIS_VISIBILITY_TIMEOUT,
    WORKFLOW_MAX_HARD_TIME_LIMIT,
    Config,
    ConfigError,
    load_config,
)

BASE_DIR = Path(__file__).resolve().parents[2]
SECRET_KEY = "test-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
POSTGRES_URL = "postgres://campaign:pw@db.internal:5433/campaign"


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def load(tmp_path: Path, **env: str) -> Config:
    return load_config({"VAR_DIR": str(tmp_path / "var"), **env}, base_dir=tmp_path / "project")


# --- The embedded default -----------------------------------------------------------------------


def test_embedded_default_keeps_sqlite_under_var_dir(tmp_path: Path) -> None:
    config = load(tmp_path)

    assert config.embedded is True
    assert config.database["ENGINE"] == "django.db.backends.sqlite3"
    assert config.database["NAME"] == str(tmp_path / "var" / "campaign.sqlite3")
    assert config.database["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in config.database["OPTIONS"]["init_command"]
    # A file, so that the real worker processes of the engine's tests see the test database.
    assert config.database["TEST"]["NAME"] == str(tmp_path / "var" / "test.sqlite3")


def test_var_dir_defaults_to_var_in_the_project(tmp_path: Path) -> None:
    config = load_config({}, base_dir=tmp_path / "project")

    assert config.var_dir == tmp_path / "project" / "var"
    assert config.database["NAME"] == str(tmp_path / "project" / "var" / "campaign.sqlite3")


def test_embedded_default_uses_the_filesystem_broker_with_its_folders_under_var_dir(tmp_path: Path) -> None:
    config = load(tmp_path)

    queue, control = tmp_path / "var" / "broker" / "queue", tmp_path / "var" / "broker" / "control"
    assert config.broker_url == "filesystem://localhost/"
    assert config.broker_transport_options == {
        "data_folder_in": str(queue), "data_folder_out": str(queue), "control_folder": str(control),
        "polling_interval": EMBEDDED_BROKER_POLLING_INTERVAL_S,
    }
    assert queue.is_dir() and control.is_dir()


@pytest.mark.parametrize("url", [None, "filesystem://", "memory://"])
def test_the_in_process_brokers_connect_without_kombus_missing_hostname_warning(
    tmp_path: Path, url: str | None, caplog: pytest.LogCaptureFixture,
) -> None:
    config = load(tmp_path, **({"CELERY_BROKER_URL": url} if url else {}))

    with caplog.at_level(logging.WARNING, logger="kombu"):
        info = Connection(config.broker_url, transport_options=config.broker_transport_options).info()

    assert info["hostname"] == "localhost"
    assert not [record for record in caplog.records if "hostname" in record.getMessage()]


def test_embedded_default_writes_email_as_files(tmp_path: Path) -> None:
    config = load(tmp_path)

    assert config.email["EMAIL_BACKEND"] == "django.core.mail.backends.filebased.EmailBackend"


def test_embedded_default_mail_folder_is_var_dir_mail(tmp_path: Path) -> None:
    config = load(tmp_path)

    assert config.email["EMAIL_FILE_PATH"] == str(tmp_path / "var" / "mail")
    assert (tmp_path / "var" / "mail").is_dir()


def test_embedded_default_generates_a_secret_key_once_and_keeps_it(tmp_path: Path) -> None:
    first = load(tmp_path)
    second = load(tmp_path)

    assert len(first.secret_key) >= 50
    assert second.secret_key == first.secret_key
    assert (tmp_path / "var" / "secret_key").stat().st_mode & 0o077 == 0


def test_embedded_default_is_not_debug_and_serves_localhost_in_utc(tmp_path: Path) -> None:
    config = load(tmp_path)

    assert config.debug is False
    assert config.allowed_hosts == ["127.0.0.1", "localhost", "[::1]"]
    assert config.time_zone == "UTC"
    assert config.lease_seconds == 300


# --- Production -------------------------------------------------------------------------------


def test_postgres_url_selects_the_postgresql_engine(tmp_path: Path) -> None:
    config = load(tmp_path, DATABASE_URL=POSTGRES_URL, SECRET_KEY=SECRET_KEY)

    assert config.embedded is False
    assert config.database["ENGINE"] == "django.db.backends.postgresql"
    assert (config.database["NAME"], config.database["HOST"], config.database["PORT"], config.database["USER"]) == (
        "campaign", "db.internal", 5433, "campaign")
    assert config.database["CONN_HEALTH_CHECKS"] is True
    assert config.secret_key == SECRET_KEY


def test_production_defaults_to_https_hardening(tmp_path: Path) -> None:
    """Production assumes a TLS-terminating proxy that sets X-Forwarded-Proto: every HTTPS
    protection Django's deployment check asks for is on unless a variable turns it off."""
    config = load(tmp_path, DATABASE_URL=POSTGRES_URL, SECRET_KEY=SECRET_KEY)

    assert config.security == {
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 365 * 24 * 3600,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
    }
    assert config.integrations_allow_loopback_http is False


def test_each_https_protection_can_be_turned_off_by_its_variable(tmp_path: Path) -> None:
    config = load(
        tmp_path, DATABASE_URL=POSTGRES_URL, SECRET_KEY=SECRET_KEY, SECURE_SSL_REDIRECT="false", SECURE_HSTS_SECONDS="0",
        SESSION_COOKIE_SECURE="no", CSRF_COOKIE_SECURE="off", SECURE_PROXY_SSL_HEADER="",
    )

    assert config.security["SECURE_SSL_REDIRECT"] is False
    assert config.security["SECURE_HSTS_SECONDS"] == 0
    assert (config.security["SESSION_COOKIE_SECURE"], config.security["CSRF_COOKIE_SECURE"]) == (False, False)
    assert config.security["SECURE_PROXY_SSL_HEADER"] is None


@pytest.mark.parametrize("env", [{}, {"DATABASE_URL": POSTGRES_URL, "DEBUG": "true"}], ids=["embedded", "debug"])
def test_plain_http_on_the_embedded_default_and_in_debug(tmp_path: Path, env: dict[str, str]) -> None:
    """``make run`` serves plain HTTP on loopback; a 32-character key is enough off production."""
    config = load(tmp_path, SECRET_KEY="k" * 16 + "0123456789abcdef", **env)

    assert not any(config.security[name] for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"))
    assert config.security["SECURE_HSTS_SECONDS"] == 0


def test_redis_visibility_timeout_outlives_the_longest_workflow(tmp_path: Path) -> None:
    """Redis redelivers an unacknowledged message after the visibility timeout: a message whose
    workflow is still running (acks are late) must not be handed to a second worker."""
    config = load(tmp_path, CELERY_BROKER_URL="redis://redis.internal:6379/0")

    assert config.broker_url == "redis://redis.internal:6379/0"
    assert config.broker_transport_options["visibility_timeout"] == REDIS_VISIBILITY_TIMEOUT
    assert config.broker_transport_options["visibility_timeout"] > WORKFLOW_MAX_HARD_TIME_LIMIT


def test_redis_url_selects_the_transport_that_rides_through_an_outage(tmp_path: Path) -> None:
    config = load(tmp_path, CELERY_BROKER_URL="rediss://:pw@redis.internal:6380/2")

    assert config.broker_celery_settings == {"broker_transport": "campaign.redis_transport:Transport"}


@pytest.mark.parametrize(("url", "vhost"), [
    ("amqp://campaign:pw@rabbit.internal:5672//", "/"),
    ("amqp://campaign:pw@rabbit.internal:5672", "/"),
    ("amqps://campaign:pw@rabbit.internal:5671/campaign", "campaign"),
    ("amqp://campaign:pw@rabbit.internal/with%2Fslash", "with/slash"),
])
def test_rabbitmq_url_is_accepted_with_its_virtual_host(tmp_path: Path, url: str, vhost: str) -> None:
    from kombu import Connection

    config = load(tmp_path, CELERY_BROKER_URL=url)

    assert config.broker_url == url
    assert Connection(url).virtual_host == vhost


def test_rabbitmq_confirms_every_publish_and_uses_quorum_queues_with_delays_kept_by_the_broker(tmp_path: Path) -> None:
    """A send returns once RabbitMQ holds the message; queues are replicated (quorum), and a
    countdown waits in RabbitMQ (native delayed delivery, which needs topic exchanges), not in a
    worker's memory."""
    config = load(tmp_path, CELERY_BROKER_URL="amqp://campaign:pw@rabbit.internal:5672/campaign")

    assert config.broker_transport_options == {"confirm_publish": True}
    assert config.broker_celery_settings == {
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        "task_default_exchange_type": "topic",
        "task_create_missing_queue_exchange_type": "topic",
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def test_embedded_broker_needs_no_broker_specific_celery_setting(tmp_path: Path) -> None:
    assert load(tmp_path).broker_celery_settings == {}


def test_smtp_url_selects_the_smtp_backend(tmp_path: Path) -> None:
    config = load(tmp_path, EMAIL_URL="smtp://mailer:pw@smtp.internal:2525")

    assert config.email["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert (config.email["EMAIL_HOST"], config.email["EMAIL_PORT"]) == ("smtp.internal", 2525)


# --- Malformed variables ------------------------------------------------------------------------

MALFORMED = [
    # (variable named by the message, environment, a fragment of the message)
    ("DATABASE_URL", {"DATABASE_URL": "mysql://campaign@db:3306/campaign", "SECRET_KEY": SECRET_KEY}, "'mysql'"),
    ("DATABASE_URL", {"DATABASE_URL": "postgres://campaign@db:5432/", "SECRET_KEY": SECRET_KEY}, "needs a database name"),
    ("CELERY_BROKER_URL", {"CELERY_BROKER_URL": "kafka://kafka:9092"}, "'kafka'"),
    ("CELERY_BROKER_URL", {"CELERY_BROKER_URL": "amqp://guest@rabbit:five/campaign"}, "malformed port"),
    ("CELERY_BROKER_URL", {"CELERY_BROKER_URL": "amqp:///campaign"}, "missing host"),
    ("CELERY_BROKER_URL", {"CELERY_BROKER_URL": "amqps://guest@rabbit:5671/campaign/"}, "virtual host"),
    ("CELERY_BROKER_URL", {"CELERY_BROKER_URL": "redis://redis:sixthousand/0"}, "malformed port"),
    ("DEBUG", {"DEBUG": "maybe"}, "'maybe'"),
    ("TIME_ZONE", {"TIME_ZONE": "Mars/Olympus"}, "'Mars/Olympus'"),
    ("WORKFLOW_LEASE_SECONDS", {"WORKFLOW_LEASE_SECONDS": "abc"}, "'abc'"),
    ("WORKFLOW_LEASE_SECONDS", {"WORKFLOW_LEASE_SECONDS": "1"}, "must be at least"),
    ("EMAIL_URL", {"EMAIL_URL": "ftp://x"}, "'ftp'"),
    ("SECRET_KEY", {"SECRET_KEY": "too-short"}, "at least 32 characters"),
    ("SECRET_KEY", {"DATABASE_URL": POSTGRES_URL}, "required when DATABASE_URL is set"),
    ("SECRET_KEY", {"DATABASE_URL": POSTGRES_URL, "SECRET_KEY": "k" * 49}, "at least 50 characters long in production"),
    ("SECRET_KEY", {"DATABASE_URL": POSTGRES_URL, "SECRET_KEY": "ab" * 30}, "at least 5 different characters"),
    ("SECURE_SSL_REDIRECT", {"SECURE_SSL_REDIRECT": "sometimes"}, "'sometimes'"),
    ("SECURE_HSTS_SECONDS", {"SECURE_HSTS_SECONDS": "-1"}, "must be at least 0"),
    ("SECURE_PROXY_SSL_HEADER", {"SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https"}, "header name"),
    ("INTEGRATIONS_ALLOW_LOOPBACK_HTTP", {"INTEGRATIONS_ALLOW_LOOPBACK_HTTP": "perhaps"}, "'perhaps'"),
    ("ALLOWED_HOSTS", {"ALLOWED_HOSTS": "a,,b"}, "'a,,b'"),
    ("BILLING_EMAIL", {"BILLING_EMAIL": "not-an-address"}, "'not-an-address'"),
    ("WORKFLOW_BEAT_STALE_SECONDS", {"WORKFLOW_BEAT_STALE_SECONDS": "soon"}, "'soon'"),
    ("WORKFLOW_BEAT_STALE_SECONDS", {"WORKFLOW_BEAT_STALE_SECONDS": "0"}, "must be at least 1"),
    ("WORKFLOW_OVERDUE_GRACE_SECONDS", {"WORKFLOW_OVERDUE_GRACE_SECONDS": "5m"}, "'5m'"),
    ("WORKFLOW_OVERDUE_GRACE_SECONDS", {"WORKFLOW_OVERDUE_GRACE_SECONDS": "-300"}, "must be at least 1"),
    ("SITE_URL", {"SITE_URL": "campaign.example.com"}, "'campaign.example.com'"),
    ("SITE_URL", {"SITE_URL": "ftp://campaign.example.com"}, "http:// or https://"),
    ("SITE_URL", {"SITE_URL": "https://"}, "'https://'"),
    ("SITE_URL", {"SITE_URL": "https://campaign.example.com/?next=1"}, "http:// or https://"),
]


@pytest.mark.parametrize(
    ("variable", "env", "fragment"), MALFORMED,
    ids=[f"{variable}={env.get(variable, '(unset)')}" for variable, env, _ in MALFORMED],
)
def test_malformed_variable_stops_start_up_with_a_message_naming_it(
    tmp_path: Path, variable: str, env: dict[str, str], fragment: str,
) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, **env)

    assert str(refused.value).startswith(f"{variable}: ")
    assert fragment in str(refused.value)
    assert refused.value.variable == variable


def test_time_zone_naming_a_region_not_a_zone_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^TIME_ZONE: "):
        load(tmp_path, TIME_ZONE="Europe")


def test_manage_py_exits_with_an_error_naming_a_malformed_variable(tmp_path: Path) -> None:
    env = {**os.environ, "TIME_ZONE": "Nowhere/City", "VAR_DIR": str(tmp_path / "var")}

    result = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "check"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )

    assert result.returncode != 0
    assert "TIME_ZONE: unknown time zone 'Nowhere/City'" in result.stderr
    assert "System check identified" not in result.stdout


@pytest.mark.parametrize("process", ["worker", "beat"])
def test_a_celery_process_stops_at_once_with_one_line_naming_the_variable(tmp_path: Path, process: str) -> None:
    """As the Procfile starts them; gunicorn's counterpart is in test_web_server.py."""
    env = {name: value for name, value in os.environ.items() if name not in ("SECRET_KEY", "CELERY_BROKER_URL")}
    env.update({"DATABASE_URL": POSTGRES_URL, "VAR_DIR": str(tmp_path / "var")})

    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "campaign", process, "--loglevel", "INFO"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=10, check=False,
    )

    assert result.returncode == 2
    assert (result.stdout + result.stderr).strip() == \
        "Configuration error: SECRET_KEY: is required when DATABASE_URL is set (production)"


def test_deployment_check_is_clean_under_the_production_defaults(tmp_path: Path) -> None:
    """Django's own deployment check, with nothing but the required production variables."""
    env = {
        "PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "project.settings", "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": POSTGRES_URL, "SECRET_KEY": SECRET_KEY, "ALLOWED_HOSTS": "campaign.example.com",
    }

    result = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


# --- Variables read by the reports, the admin's first login, /metrics and /healthz --------------


def test_report_and_endpoint_variables_default_to_unset(tmp_path: Path) -> None:
    config = load(tmp_path)

    assert (config.instance_name, config.site_url, config.metrics_token) == ("", "", "")
    assert config.web_bind == "127.0.0.1:8000"
    # None: workflows.health applies its own defaults (90 s, 300 s).
    assert (config.beat_stale_seconds, config.overdue_grace_seconds) == (None, None)


def test_report_and_endpoint_variables_are_read_from_the_environment(tmp_path: Path) -> None:
    config = load(
        tmp_path, INSTANCE_NAME="  acme-marketing.example ", SITE_URL="https://campaign.example.com/",
        WEB_BIND="0.0.0.0:8000", METRICS_TOKEN="scrape-me-0123456789",
        WORKFLOW_BEAT_STALE_SECONDS="600", WORKFLOW_OVERDUE_GRACE_SECONDS="900",
    )

    assert config.instance_name == "acme-marketing.example"
    assert config.site_url == "https://campaign.example.com"  # without its trailing slash
    assert config.web_bind == "0.0.0.0:8000"
    assert config.metrics_token == "scrape-me-0123456789"
    assert (config.beat_stale_seconds, config.overdue_grace_seconds) == (600, 900)


def test_empty_health_thresholds_keep_the_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, WORKFLOW_BEAT_STALE_SECONDS="", WORKFLOW_OVERDUE_GRACE_SECONDS=" ")

    assert (config.beat_stale_seconds, config.overdue_grace_seconds) == (None, None)


def test_site_url_may_carry_a_path_prefix(tmp_path: Path) -> None:
    assert load(tmp_path, SITE_URL="http://10.0.0.5:8000/campaign/").site_url == "http://10.0.0.5:8000/campaign"


def test_settings_expose_the_parsed_variables(tmp_path: Path) -> None:
    """project.settings copies them, so the code reads ``settings.X``, never the environment."""
    env = {
        "PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "project.settings", "VAR_DIR": str(tmp_path / "var"),
        "INSTANCE_NAME": "acme", "SITE_URL": "https://campaign.example.com/", "WEB_BIND": "0.0.0.0:9000",
        "METRICS_TOKEN": "t0ken", "WORKFLOW_BEAT_STALE_SECONDS": "120",
    }
    script = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(repr((s.INSTANCE_NAME, s.SITE_URL, s.WEB_BIND, s.METRICS_TOKEN, "
        "s.WORKFLOW_BEAT_STALE_SECONDS, s.WORKFLOW_OVERDUE_GRACE_SECONDS)))"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120, check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(("acme", "https://campaign.example.com", "0.0.0.0:9000", "t0ken", 120, None))
