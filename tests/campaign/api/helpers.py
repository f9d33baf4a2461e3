"""What the event API's tests share: the event URL, a test-client post, a real gunicorn on a free
loopback port (on the test database), and a raw HTTP exchange for requests a client library would
refuse to send."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urlsplit

import requests
from django.conf import settings as django_settings
from django.test import Client

from workflows.benchmarks.event_ingestion import free_port
from workflows.worker_process import current_database_url

URL = "/api/events/order_confirmation"


def post(client: Client, body: Any, *, key: str | None, path: str = URL, raw: bytes | None = None, **extra: Any) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key is not None else {}
    data = raw if raw is not None else json.dumps(body).encode()
    return client.post(path, data=data, content_type="application/json", **headers, **extra)


@contextlib.contextmanager
def gunicorn(*, workers: int = 2, threads: int = 4, production: bool = False) -> Iterator[tuple[str, IO[bytes]]]:
    """gunicorn from the venv on a free loopback port, on the test database: its base URL and its
    log (standard output and error), readable while it runs. The WSGI application on gthread
    workers, or with ``production`` the Procfile's ``gunicorn.conf.py`` (its asyncio worker)."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": current_database_url(), "SECRET_KEY": django_settings.SECRET_KEY,
           "ALLOWED_HOSTS": "127.0.0.1", "VAR_DIR": str(django_settings.VAR_DIR)}
    if production:
        env.update(WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS=str(workers), WEB_THREADS=str(threads), WEB_ACCESS_LOG="off")
        command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
    else:
        command = [sys.executable, "-m", "gunicorn", "project.wsgi", "--bind", f"127.0.0.1:{port}", "--workers",
                   str(workers), "--threads", str(threads), "--worker-class", "gthread"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, cwd=django_settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    requests.get(f"{base}/api/events/x", timeout=10)
                    break
                except (requests.ConnectionError, requests.Timeout):
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"gunicorn did not start:\n{log.read().decode(errors='replace')}") from None
                    time.sleep(0.2)
            yield base, log
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def raw_http(base: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on a new connection; the status, headers (lower-case names) and body."""
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {name.lower(): value for name, value in headers.items()}, body
