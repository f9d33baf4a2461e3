"""The web process as the Procfile starts it (real gunicorn with gunicorn.conf.py, on loopback):
clients that announce a body and stall hold neither the health check nor other requests, and are
answered 408 and cut off once the body deadline has passed.

Each test starts its own gunicorn on a free port, on this test run's database, with a short body
deadline (``WEB_BODY_TIMEOUT``), and kills its whole process group afterwards. Loops are bounded in
count and time. A misconfigured gunicorn stops at once, with one line naming the variable.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from campaign import api
from campaign.models import Event
from project.asgi import wsgi_environ
from workflows.benchmarks.event_ingestion import GUNICORN_CONFIG, Server, free_port, web_server

STALLED_CLIENTS = 20
ANNOUNCED_BYTES = 60_000
SENT_PREFIX = b'{"email":'  # 9 of the 60,000 announced bytes
BODY_TIMEOUT_S = 3
#: Well below PostgreSQL's connection limit, which the rest of the test suite shares.
WORKERS, THREADS = 2, 4
HEALTH_PROBES = 3
#: A misconfigured gunicorn must have stopped within this many seconds.
CONFIG_ERROR_EXIT_S = 10


@pytest.fixture
def web(transactional_db: None) -> Iterator[Server]:
    env = {"WEB_WORKERS": str(WORKERS), "WEB_THREADS": str(THREADS), "WEB_BODY_TIMEOUT": str(BODY_TIMEOUT_S),
           "WEB_ACCESS_LOG": "off", "SECURE_SSL_REDIRECT": "false"}
    with web_server(Path(django_settings.BASE_DIR) / GUNICORN_CONFIG, env=env) as server:
        yield server


def connect(server: Server) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def request(server: Server, head: str, body: bytes = b"") -> tuple[int, bytes, float]:
    """One request on a new connection: (status, body, seconds until the whole response)."""
    started = time.monotonic()
    with connect(server) as connection:
        connection.sendall(f"{head}Host: 127.0.0.1\r\nConnection: close\r\n\r\n".encode() + body)
        response = read_until_closed(connection, deadline=started + 10)
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2], time.monotonic() - started


def read_until_closed(connection: socket.socket, *, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline passes)."""
    received = b""
    while time.monotonic() < deadline:
        connection.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open; received so far: {received[:200]!r}")


def stall(server: Server, count: int) -> list[socket.socket]:
    """``count`` uploads that announce ``ANNOUNCED_BYTES`` and send only ``SENT_PREFIX``."""
    stalled = []
    for _ in range(count):
        connection = connect(server)
        connection.sendall(
            f"POST /api/events/stalled HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {ANNOUNCED_BYTES}\r\n\r\n".encode() + SENT_PREFIX)
        stalled.append(connection)
    return stalled


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_stalled_uploads_neither_delay_the_health_check_nor_other_requests_and_are_cut_off(web: Server) -> None:
    key = api.create_api_key(name="crm")[1]
    stalled = stall(web, STALLED_CLIENTS)
    try:
        since_stall = time.monotonic()
        time.sleep(0.5)  # the uploads are accepted and their 9 bytes read meanwhile

        health = [request(web, "GET /healthz HTTP/1.1\r\n") for _ in range(HEALTH_PROBES)]
        event = {"email": "ann@example.com", "context": {"order": "A-1"}}
        body = json.dumps(event).encode()
        accepted = request(web, f"POST /api/events/order_confirmation HTTP/1.1\r\nAuthorization: Bearer {key}\r\n"
                                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n", body)
        while_stalled = time.monotonic() - since_stall

        # Every stalled upload is answered 408 and closed, after the deadline and not long after.
        answers = [read_until_closed(connection, deadline=since_stall + BODY_TIMEOUT_S + 10) for connection in stalled]
        cut_after = time.monotonic() - since_stall
    finally:
        for connection in stalled:
            connection.close()

    assert while_stalled < BODY_TIMEOUT_S, "the probes ran while the uploads were still stalled"
    for status, _, seconds in health:
        assert status in (200, 503), status  # 503 only says beat is not running here: it answered
        assert seconds < 1.0, f"/healthz took {seconds:.2f}s behind {STALLED_CLIENTS} stalled uploads"
    status, content, seconds = accepted
    assert (status, seconds < 1.0) == (202, True), (status, content, seconds)
    assert Event.objects.filter(pk=json.loads(content)["id"], email="ann@example.com").exists()

    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), {answer[:40] for answer in answers}
    assert BODY_TIMEOUT_S <= cut_after < BODY_TIMEOUT_S + 10
    assert not Event.objects.filter(event_type="stalled").exists()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_body_announced_over_the_limit_is_refused_before_it_is_sent(web: Server) -> None:
    status, content, seconds = request(
        web, "POST /api/events/huge HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 20000000\r\n")

    assert status == 413 and b"the limit is 10485760 bytes" in content
    assert seconds < BODY_TIMEOUT_S, "refused at once, not after waiting for a body that never came"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_chunked_body_reaches_the_api_whole(web: Server) -> None:
    key = api.create_api_key(name="crm")[1]
    body = json.dumps({"email": "bob@example.com"}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"

    status, content, _ = request(web, f"POST /api/events/signup HTTP/1.1\r\nAuthorization: Bearer {key}\r\n"
                                      "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n", chunked)

    assert status == 202, content
    assert Event.objects.get(pk=json.loads(content)["id"]).email == "bob@example.com"


def test_the_environ_drops_headers_with_underscores_which_could_pose_as_the_proxys() -> None:
    scope = {"type": "http", "method": "POST", "path": "/api/events/signup", "query_string": b"a=1",
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("10.0.0.9", 50000),
             "headers": [(b"x_forwarded_proto", b"https"), (b"x-forwarded-for", b"10.0.0.1"),
                         (b"x-forwarded-for", b"10.0.0.2"), (b"content-type", b"application/json")]}

    environ = wsgi_environ(scope, b'{"email": "ann@example.com"}')

    assert "HTTP_X_FORWARDED_PROTO" not in environ
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1,10.0.0.2"
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("application/json", "28")
    assert (environ["PATH_INFO"], environ["QUERY_STRING"], environ["REMOTE_ADDR"]) == ("/api/events/signup", "a=1", "10.0.0.9")
    assert environ["wsgi.input"].read() == b'{"email": "ann@example.com"}'


@pytest.mark.parametrize(("env", "message"), [
    ({"DATABASE_URL": "postgres://campaign@127.0.0.1:9/campaign"},
     "Configuration error: SECRET_KEY: is required when DATABASE_URL is set (production)"),
    ({"WEB_WORKERS": "two"}, "Configuration error: WEB_WORKERS: expected a whole number, got 'two'"),
], ids=["SECRET_KEY missing in production", "WEB_WORKERS malformed"])
def test_a_configuration_error_stops_gunicorn_at_once_with_one_line(
    tmp_path: Path, env: dict[str, str], message: str,
) -> None:
    """The master finds the error before it listens: no worker is started (each would print the
    error and be replaced, four times a second, while the master held the port)."""
    environment = {name: value for name, value in os.environ.items() if name not in ("SECRET_KEY", "DATABASE_URL")}
    environment.update({"VAR_DIR": str(tmp_path), "WEB_BIND": f"127.0.0.1:{free_port()}", **env})
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", str(Path(django_settings.BASE_DIR) / GUNICORN_CONFIG)],
        cwd=django_settings.BASE_DIR, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=CONFIG_ERROR_EXIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"gunicorn still ran after {CONFIG_ERROR_EXIT_S}s:\n{output[-2000:]}")
    elapsed = time.monotonic() - started

    assert process.returncode != 0
    assert elapsed < CONFIG_ERROR_EXIT_S
    assert output.count(message) == 1, output
    assert output.strip() == message, "one line, nothing else: no traceback, no worker booted"
