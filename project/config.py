"""Read the instance's configuration from environment variables.

Every variable is parsed here, once, by a pure function of the environment so that a bad value
stops start-up with a message that names the variable (and tests can check every message without
touching ``os.environ``). With nothing set, the result is the *embedded default*: SQLite, kombu's
filesystem broker and file email, all under ``var/``, so ``make run`` needs no server at all.
"""

from __future__ import annotations

import re
import secrets
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

#: Longest hard time limit any workflow may declare, in seconds. The Redis visibility timeout is
#: derived from it: a message whose task is still running must never be redelivered.
WORKFLOW_MAX_HARD_TIME_LIMIT = 4 * 3600

#: Redis redelivers an unacknowledged message after this many seconds (acks are late).
REDIS_VISIBILITY_TIMEOUT = WORKFLOW_MAX_HARD_TIME_LIMIT + 3600

SQLITE_BUSY_TIMEOUT_MS = 20_000

#: The embedded broker's URL: kombu's filesystem transport, named with its host (the transport
#: ignores it; without one, kombu warns "No hostname was supplied" at each connection).
EMBEDDED_BROKER_URL = "filesystem://localhost/"
#: Seconds between two looks at the embedded broker's folder when it is empty (kombu's default
#: is 1): a queued run starts within this, and a stopping worker notices its stop sooner (its
#: loop waits for messages at most 2 s, plus this).
EMBEDDED_BROKER_POLLING_INTERVAL_S = 0.2

#: Django's deployment check wants at least 50 characters (and 5 different ones) in production.
PRODUCTION_SECRET_KEY_LENGTH = 50

#: Default ``Strict-Transport-Security`` max-age in production: one year.
HSTS_SECONDS = 365 * 24 * 3600

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

DATABASE_SCHEMES = {"postgres", "postgresql", "pgsql", "sqlite"}
BROKER_SCHEMES = {"redis", "rediss", "amqp", "amqps", "filesystem", "memory"}
EMAIL_SCHEMES = {"smtp", "smtps", "smtp+tls", "smtp+ssl", "filemail", "consolemail", "memorymail", "dummymail"}


class ConfigError(ImproperlyConfigured):
    """A variable of the environment is malformed or missing; the message names it."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {problem}")


def exit_on_config_error() -> None:
    """Load the settings now and, if a variable is malformed, stop with one line naming it (for
    the celery and gunicorn entry points; manage.py does the same around its commands)."""
    import sys

    from django.conf import settings

    try:
        settings.INSTALLED_APPS  # noqa: B018 - forces settings to load
    except ConfigError as error:
        sys.stderr.write(f"Configuration error: {error}\n")
        raise SystemExit(2) from None


@dataclass(frozen=True)
class Config:
    """The parsed configuration; ``project.settings`` copies it into Django settings."""

    var_dir: Path
    embedded: bool
    debug: bool
    secret_key: str
    allowed_hosts: list[str]
    csrf_trusted_origins: list[str]
    time_zone: str
    database: dict[str, Any]
    broker_url: str
    broker_transport_options: dict[str, Any]
    broker_celery_settings: dict[str, Any]
    email: dict[str, Any]
    default_from_email: str
    billing_email: str
    lease_seconds: int
    beat_lease_seconds: int
    extra_workflow_modules: list[str]
    workflow_queues: dict[str, str]
    event_max_body_bytes: int
    integrations_allow_loopback_http: bool
    security: dict[str, Any]
    instance_name: str
    site_url: str
    web_bind: str
    metrics_token: str
    beat_stale_seconds: int | None
    overdue_grace_seconds: int | None
    log_partition_interval: str


def load_config(env: Mapping[str, str], *, base_dir: Path) -> Config:
    """Parse ``env`` (normally ``os.environ``) into a :class:`Config` or raise :class:`ConfigError`."""
    var_dir = Path(env.get("VAR_DIR") or base_dir / "var").resolve()
    embedded = not env.get("DATABASE_URL")
    debug = parse_bool(env, "DEBUG", default=False)
    broker_url = parse_broker_url(env)
    lease_seconds = parse_int(env, "WORKFLOW_LEASE_SECONDS", default=300, minimum=2)
    database = parse_database(env, var_dir=var_dir)
    if database["ENGINE"].endswith("postgresql"):
        # A frozen or cut-off worker must not hold its locks for ever: PostgreSQL ends a session
        # idle inside a transaction for as long as a lease lasts, by which time the run's lease has
        # expired and another run may take its work over (its own commits are fenced anyway).
        # No JIT: the workflows' aggregates over partitioned logs pass its cost threshold, and
        # compiling one (about 0.1 s) costs more than it saves on statements of a second or less.
        database.setdefault("OPTIONS", {})["options"] = (
            f"-c idle_in_transaction_session_timeout={lease_seconds * 1000} -c jit=off"
        )
    return Config(
        var_dir=var_dir,
        embedded=embedded,
        debug=debug,
        secret_key=parse_secret_key(env, var_dir=var_dir, embedded=embedded, debug=debug),
        allowed_hosts=parse_list(env, "ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"]),
        csrf_trusted_origins=parse_list(env, "CSRF_TRUSTED_ORIGINS", default=[]),
        time_zone=parse_time_zone(env),
        database=database,
        broker_url=broker_url,
        broker_transport_options=broker_transport_options(broker_url, var_dir=var_dir),
        broker_celery_settings=broker_celery_settings(broker_url),
        email=parse_email(env, var_dir=var_dir),
        default_from_email=parse_email_address(env, "DEFAULT_FROM_EMAIL", default="workflows@localhost"),
        billing_email=parse_email_address(env, "BILLING_EMAIL", default="billing@localhost"),
        lease_seconds=lease_seconds,
        beat_lease_seconds=parse_int(env, "BEAT_LEASE_SECONDS", default=15, minimum=3),
        extra_workflow_modules=parse_list(env, "WORKFLOW_EXTRA_MODULES", default=[]),
        workflow_queues=parse_workflow_queues(env),
        event_max_body_bytes=parse_int(env, "EVENT_MAX_BODY_BYTES", default=64 * 1024, minimum=1024),
        integrations_allow_loopback_http=parse_bool(env, "INTEGRATIONS_ALLOW_LOOPBACK_HTTP", default=False),
        security=parse_security(env, production=not (embedded or debug)),
        # Printed on reports; empty: the first allowed host (campaign.reports.instance_name).
        instance_name=env.get("INSTANCE_NAME", "").strip(),
        site_url=parse_site_url(env),
        # gunicorn parses and listens on it (gunicorn.conf.py); Django only shows it (ensure_admin).
        web_bind=env.get("WEB_BIND", "127.0.0.1:8000"),
        # Empty: /metrics is open.
        metrics_token=env.get("METRICS_TOKEN", ""),
        # None: the /healthz check's own default (workflows.health), which derives from beat's heartbeat.
        beat_stale_seconds=parse_optional_int(env, "WORKFLOW_BEAT_STALE_SECONDS", minimum=1),
        overdue_grace_seconds=parse_optional_int(env, "WORKFLOW_OVERDUE_GRACE_SECONDS", minimum=1),
        log_partition_interval=parse_choice(env, "LOG_PARTITION_INTERVAL", default="month", choices=("month", "week", "day")),
    )


def parse_bool(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, f"expected true or false (1/0, yes/no, on/off), got {raw!r}")


def parse_int(env: Mapping[str, str], name: str, *, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def parse_choice(env: Mapping[str, str], name: str, *, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ConfigError(name, f"expected one of {', '.join(choices)}, got {env[name]!r}")
    return raw


def parse_optional_int(env: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    """:func:`parse_int` for a variable whose default the code using it knows: ``None`` when unset
    or empty."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return parse_int(env, name, default=minimum, minimum=minimum)


def parse_list(env: Mapping[str, str], name: str, *, default: list[str]) -> list[str]:
    raw = env.get(name)
    if raw is None:
        return list(default)
    items = [item.strip() for item in raw.split(",")]
    if any(not item for item in items):
        raise ConfigError(name, f"expected a comma-separated list without empty items, got {raw!r}")
    return items


QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_workflow_queues(env: Mapping[str, str]) -> dict[str, str]:
    """``WORKFLOW_QUEUES=updateDeliveryExecInfo=heavy,cleanup=heavy``: the queue each named workflow's
    messages go to instead of its definition's (the ids are checked against the workflows by
    ``manage.py check``, which knows them)."""
    name = "WORKFLOW_QUEUES"
    queues: dict[str, str] = {}
    for item in parse_list(env, name, default=[]):
        workflow_id, equals, queue = (part.strip() for part in item.partition("="))
        if not equals or not workflow_id or not QUEUE_NAME.fullmatch(queue):
            raise ConfigError(name, f"expected WORKFLOW_ID=QUEUE items (queue: letters, digits, '_', '.', '-'), got {item!r}")
        if workflow_id in queues:
            raise ConfigError(name, f"{workflow_id!r} is given twice")
        queues[workflow_id] = queue
    return queues


def parse_time_zone(env: Mapping[str, str]) -> str:
    name = env.get("TIME_ZONE") or "UTC"
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder such as "Europe"
        raise ConfigError("TIME_ZONE", f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)") from None
    return name


def parse_site_url(env: Mapping[str, str]) -> str:
    """``SITE_URL``, the base of the links in emails (``https://campaign.example.com``), without
    its trailing slash; empty when unset (the links then use the first allowed host)."""
    raw = env.get("SITE_URL", "").strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError("SITE_URL",
                          f"expected an http:// or https:// address such as https://campaign.example.com, got {raw!r}")
    return raw.rstrip("/")


def parse_secret_key(env: Mapping[str, str], *, var_dir: Path, embedded: bool, debug: bool) -> str:
    """The embedded default keeps a generated key in ``var/``; production must set one."""
    key = env.get("SECRET_KEY")
    production = not (embedded or debug)
    if key is not None:
        minimum = PRODUCTION_SECRET_KEY_LENGTH if production else 32
        if len(key) < minimum:
            where = " in production (DATABASE_URL set, DEBUG false)" if production else ""
            raise ConfigError("SECRET_KEY", f"must be at least {minimum} characters long{where}, got {len(key)}")
        if production and len(set(key)) < 5:
            raise ConfigError("SECRET_KEY", "must use at least 5 different characters")
        return key
    if production:
        raise ConfigError("SECRET_KEY", "is required when DATABASE_URL is set (production)")
    key_file = var_dir / "secret_key"
    if not key_file.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


def parse_security(env: Mapping[str, str], *, production: bool) -> dict[str, Any]:
    """HTTPS hardening, as Django settings. Production (``DATABASE_URL`` set, ``DEBUG`` false)
    defaults to the safe values, which assume the documented deployment: a reverse proxy that
    terminates TLS and sets ``X-Forwarded-Proto``. The embedded default serves plain HTTP on
    loopback, so everything is off there. Each value can be set either way by its variable."""
    hsts_seconds = parse_int(env, "SECURE_HSTS_SECONDS", default=HSTS_SECONDS if production else 0, minimum=0)
    proxy_header = env.get("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto" if production else "").strip()
    if proxy_header and not re.fullmatch(r"[A-Za-z0-9-]+", proxy_header):
        raise ConfigError("SECURE_PROXY_SSL_HEADER", f"expected a header name such as X-Forwarded-Proto, got {proxy_header!r}")
    return {
        "SECURE_SSL_REDIRECT": parse_bool(env, "SECURE_SSL_REDIRECT", default=production),
        "SECURE_HSTS_SECONDS": hsts_seconds,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": parse_bool(env, "SECURE_HSTS_INCLUDE_SUBDOMAINS", default=production),
        "SECURE_HSTS_PRELOAD": parse_bool(env, "SECURE_HSTS_PRELOAD", default=False),
        "SESSION_COOKIE_SECURE": parse_bool(env, "SESSION_COOKIE_SECURE", default=production),
        "CSRF_COOKIE_SECURE": parse_bool(env, "CSRF_COOKIE_SECURE", default=production),
        # Django reads the scheme from this header only when it is set: the proxy must overwrite
        # whatever a client sent in it.
        "SECURE_PROXY_SSL_HEADER": (f"HTTP_{proxy_header.upper().replace('-', '_')}", "https") if proxy_header else None,
    }


def parse_database(env: Mapping[str, str], *, var_dir: Path) -> dict[str, Any]:
    url = env.get("DATABASE_URL") or f"sqlite:///{var_dir / 'campaign.sqlite3'}"
    scheme = urlsplit(url).scheme
    if scheme not in DATABASE_SCHEMES:
        raise ConfigError("DATABASE_URL", f"unsupported scheme {scheme!r}; use postgres://USER@HOST:PORT/NAME or sqlite:///PATH")
    try:
        database = environ.Env.db_url_config(url)
    except Exception as error:  # django-environ raises several types for a malformed URL
        raise ConfigError("DATABASE_URL", f"malformed URL ({error})") from None
    if database["ENGINE"] == "django.db.backends.sqlite3":
        if not database.get("NAME") or database["NAME"] == ":memory:":
            raise ConfigError("DATABASE_URL", "an SQLite URL needs a file path (web, worker and beat share it): sqlite:///PATH")
        Path(database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        # Web, worker and beat share the file: WAL lets readers run beside one writer, the busy
        # timeout waits for the lock instead of failing, and IMMEDIATE takes the write lock at
        # BEGIN so two writers never deadlock upgrading a read lock.
        database["OPTIONS"] = {
            "init_command": f"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS};",
            "transaction_mode": "IMMEDIATE",
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
        }
    else:
        if not database.get("NAME"):
            raise ConfigError("DATABASE_URL", "a PostgreSQL URL needs a database name: postgres://USER@HOST:PORT/NAME")
        database.setdefault("CONN_MAX_AGE", 60)
        database["CONN_HEALTH_CHECKS"] = True
    # A file, not ":memory:", even for SQLite: the engine's tests start real worker processes
    # that must see the test database.
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database["TEST"] = {"NAME": str(var_dir / "test.sqlite3")}
    return database


def parse_broker_url(env: Mapping[str, str]) -> str:
    url = env.get("CELERY_BROKER_URL") or EMBEDDED_BROKER_URL
    scheme = urlsplit(url).scheme
    if scheme not in BROKER_SCHEMES:
        raise ConfigError(
            "CELERY_BROKER_URL",
            f"unsupported scheme {scheme!r}; use redis://HOST:PORT/DB or amqp://USER:PASSWORD@HOST:PORT/VHOST "
            "(or leave unset for the embedded broker)",
        )
    if scheme in ("filesystem", "memory"):
        # The host means nothing to these transports, but kombu warns at each connection
        # without one: "filesystem://" is read as "filesystem://localhost/".
        return url if urlsplit(url).hostname else f"{scheme}://localhost/"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ConfigError("CELERY_BROKER_URL", f"malformed port in {url!r}") from None
    if not parts.hostname:
        raise ConfigError("CELERY_BROKER_URL", f"missing host in {url!r}")
    if scheme.startswith("redis") and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ConfigError("CELERY_BROKER_URL", f"the database must be a number, got {parts.path!r}")
    if scheme.startswith("amqp"):
        # kombu reads what follows the first slash of the path as the virtual host: "//" (or
        # nothing) is RabbitMQ's default "/", "/campaign" is "campaign". A slash in a name must be
        # written %2F, so a second one is a typo ("/campaign/" would name "campaign/").
        vhost = parts.path[1:]
        if vhost != "/" and "/" in vhost:
            raise ConfigError("CELERY_BROKER_URL",
                              f"the virtual host must be // (RabbitMQ's default /) or /NAME, got {parts.path!r}")
    return url


def broker_transport_options(url: str, *, var_dir: Path) -> dict[str, Any]:
    scheme = urlsplit(url).scheme
    if scheme.startswith("redis"):
        return {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT}
    if scheme.startswith("amqp"):
        # Publisher confirms: a send returns only once RabbitMQ has taken the message (written to
        # its quorum queue's majority), so a run recorded as queued has its message on the broker.
        return {"confirm_publish": True}
    if scheme == "filesystem":
        queue = var_dir / "broker" / "queue"
        control = var_dir / "broker" / "control"
        for folder in (queue, control):
            folder.mkdir(parents=True, exist_ok=True)
        return {"data_folder_in": str(queue), "data_folder_out": str(queue), "control_folder": str(control),
                "polling_interval": EMBEDDED_BROKER_POLLING_INTERVAL_S}
    return {}


def broker_celery_settings(url: str) -> dict[str, Any]:
    """Celery settings (their lowercase names) that depend on the broker, beyond its transport
    options: on Redis, the transport that survives an outage; on RabbitMQ, quorum queues and the
    native delayed delivery that countdowns need there."""
    scheme = urlsplit(url).scheme
    if scheme.startswith("redis"):
        return {"broker_transport": "campaign.redis_transport:Transport"}
    if not scheme.startswith("amqp"):
        return {}
    return {
        # Quorum queues are replicated (Raft) and written to disk before a publish is confirmed.
        # They are declared as such when a worker or a sender first uses them; RabbitMQ refuses to
        # redeclare an existing classic queue as quorum (PRECONDITION_FAILED).
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        # A countdown (a waiting run re-sent, a retry's backoff) on quorum queues is delayed by
        # RabbitMQ itself (the celery_delayed_* queues, then the celery_delayed_delivery exchange),
        # which needs topic exchanges: the worker never holds a message until its time has come.
        "task_default_exchange_type": "topic",
        "task_create_missing_queue_exchange_type": "topic",
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def parse_email(env: Mapping[str, str], *, var_dir: Path) -> dict[str, Any]:
    url = env.get("EMAIL_URL") or f"filemail://{var_dir / 'mail'}"
    scheme = urlsplit(url).scheme
    if scheme not in EMAIL_SCHEMES:
        raise ConfigError("EMAIL_URL", f"unsupported scheme {scheme!r}; use smtp://USER:PASSWORD@HOST:PORT, filemail://PATH or consolemail://")
    try:
        email = environ.Env.email_url_config(url)
    except Exception as error:
        raise ConfigError("EMAIL_URL", f"malformed URL ({error})") from None
    if scheme == "filemail":
        # Everything after "filemail://" is the folder: filemail:///srv/mail is /srv/mail.
        path = url.removeprefix("filemail://")
        if not path:
            raise ConfigError("EMAIL_URL", "filemail:// needs a folder: filemail:///srv/mail")
        email["EMAIL_FILE_PATH"] = path
        Path(path).mkdir(parents=True, exist_ok=True)
    return email


_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")


def parse_email_address(env: Mapping[str, str], name: str, *, default: str) -> str:
    value = env.get(name) or default
    if not _ADDRESS.match(value):
        raise ConfigError(name, f"expected an email address, got {value!r}")
    return value
