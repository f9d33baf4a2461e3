"""gunicorn's configuration for the ``web`` process (``gunicorn --config gunicorn.conf.py``, as in
the Procfile), read from ``WEB_*`` environment variables with defaults safe for one small machine.
docs/deployment.md explains each setting and the reverse proxy that goes in front.

Workers are gunicorn's asyncio worker (``asgi``, module ``gunicorn.workers.gasgi``) running :mod:`project.asgi`: each worker's
event loop reads request bodies, so a client that stalls mid-upload holds a socket, not a thread,
and is answered 408 after ``WEB_BODY_TIMEOUT`` seconds; complete requests run the ordinary Django
WSGI handler on ``WEB_THREADS`` threads per worker. Database connections: at most
``WEB_WORKERS`` × ``WEB_THREADS`` per web process.

A malformed or missing variable, gunicorn's (``WEB_*``) or Django's (docs/configuration.md),
stops gunicorn here, in the master, before it listens or starts a worker: one line that names the
variable, and exit status 2. (Found by a worker instead, the error would end that worker only, and
the master would start another, and another, while holding the port.)
"""

import os
import sys
from typing import NoReturn

from project.config import exit_on_config_error


def _stop(message: str) -> NoReturn:
    sys.stderr.write(f"Configuration error: {message}\n")
    raise SystemExit(2)


def _int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        _stop(f"{name}: expected a whole number, got {raw!r}")
    if value < minimum:
        _stop(f"{name}: must be at least {minimum}, got {value}")
    return value


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
exit_on_config_error()

wsgi_app = "project.asgi:application"
worker_class = "asgi"  # gunicorn.workers.gasgi.ASGIWorker

#: Addresses to listen on, comma-separated (``0.0.0.0:8000`` behind a proxy on another host).
bind = [address.strip() for address in os.environ.get("WEB_BIND", "127.0.0.1:8000").split(",") if address.strip()]
#: Processes: one per core, at least two. A worker's loop and threads share one interpreter lock,
#: so a worker uses at most one core; more processes than cores only added switching in the load
#: test (docs/performance.md).
workers = _int("WEB_WORKERS", max(2, os.cpu_count() or 1), minimum=1)
#: Django threads per worker (read by project.asgi); each keeps one database connection. A
#: request mostly waits for PostgreSQL (a commit is a disk flush), so a worker keeps several in
#: flight: 8 served 8 clients best on 2 cores.
threads_per_worker = _int("WEB_THREADS", 8, minimum=1)
#: Seconds a client has, once its headers are in, to send the whole body (408 after that).
body_timeout = _int("WEB_BODY_TIMEOUT", 15, minimum=1)
#: Largest request body read at all, in bytes (413 before reading when announced larger).
max_body_bytes = _int("WEB_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1024)
# The application reads the three values above from the environment the workers inherit:
# written back here, each worker sees exactly what was validated.
os.environ["WEB_THREADS"] = str(threads_per_worker)
os.environ["WEB_BODY_TIMEOUT"] = str(body_timeout)
os.environ["WEB_MAX_BODY_BYTES"] = str(max_body_bytes)

#: A worker whose event loop has not reported for this many seconds is killed and replaced (the
#: loop only waits; Django runs in the threads). gasgi also gives up on a body whose next chunk
#: takes this long, which WEB_BODY_TIMEOUT, shorter, makes moot.
timeout = _int("WEB_TIMEOUT", 30, minimum=2)
#: On SIGTERM or a reload, seconds left to requests in flight before the worker is killed.
graceful_timeout = _int("WEB_GRACEFUL_TIMEOUT", 30, minimum=1)
#: Seconds an idle keep-alive connection stays open. A proxy keeping upstream connections alive
#: must close them sooner than this (nginx: ``keepalive_timeout`` in the ``upstream`` block).
keepalive = _int("WEB_KEEPALIVE", 5, minimum=0)
#: Restart a worker after this many requests (0: never), with up to 10% jitter so that workers
#: do not restart together. A safety net against slow leaks; off by default.
max_requests = _int("WEB_MAX_REQUESTS", 0, minimum=0)
max_requests_jitter = max_requests // 10

#: One line per request: "-" is standard output (what honcho and systemd collect), a path is a
#: file, "off" writes none. gunicorn writes it through the logging module, a few microseconds.
_access_log = os.environ.get("WEB_ACCESS_LOG", "-").strip()
accesslog = None if _access_log.lower() in {"off", "none", "false", "0"} else _access_log
#: Client, request line, status, bytes, time taken in microseconds, user agent.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(D)sus "%(a)s"'
errorlog = "-"

#: gunicorn's control socket (for ``gunicornc``: worker status, scaling, reloads), only where
#: ``WEB_CONTROL_SOCKET`` names a path: its default path is one per user, which every gunicorn of
#: that user (tests, benchmarks, a second instance) would take over from the others.
_control_socket = os.environ.get("WEB_CONTROL_SOCKET", "").strip()
control_socket_disable = not _control_socket
if _control_socket:
    control_socket = _control_socket
loglevel = os.environ.get("WEB_LOG_LEVEL", "info")
