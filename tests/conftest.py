"""Shared fixtures. Tests run on whatever DATABASE_URL / CELERY_BROKER_URL say (SQLite and the
filesystem broker by default; CI runs the suite a second time on PostgreSQL and Redis).

Tests marked ``postgres`` need PostgreSQL (concurrency, locking): they are skipped on SQLite.
Tests that start other processes use ``django_db(transaction=True, serialized_rollback=True)``:
the processes need committed rows, and the rollback restores the rows migrations created (the
workflows and their schedules) for the tests after them.
"""

import contextlib
import ssl
from collections.abc import Iterator

import pytest
import requests
from django.conf import settings
from django.db import connection
from pytest_httpserver import HTTPServer

from campaign.integrations import http
from tests.https_server import Certificates, make_certificates


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # A transactional test without serialized_rollback ends with a flush that recreates
        # content types under new ids (PostgreSQL keeps its sequences), which breaks every later
        # test that restores the serialized rows.
        marker = item.get_closest_marker("django_db")
        if marker and marker.kwargs.get("transaction") and not marker.kwargs.get("serialized_rollback"):
            raise pytest.UsageError(f"{item.nodeid}: use django_db(transaction=True, serialized_rollback=True)")
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL=postgres://…)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The integration clients' waits between attempts, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(http, "wait", recorded.append)
    return recorded


@pytest.fixture
def is_postgres() -> bool:
    return connection.vendor == "postgresql"


@pytest.fixture
def httpserver(httpserver):
    """pytest-httpserver's server, settled at the end of each test.

    The server answers one request at a time, and a handler that drops the connection or answers
    after the client's timeout returns after the client gave up: its log entry would land in the
    next test's log. A probe answered at teardown means every earlier handler has returned.
    """
    yield httpserver
    with contextlib.suppress(requests.RequestException):
        requests.get(httpserver.url_for("/__settled__"), timeout=10)


# -- an HTTPS server on loopback, trusted through a test CA (tests/https_server.py) -------------

@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def https_server_session(tls_certificates: Certificates) -> Iterator[HTTPServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_certificates.certificate, tls_certificates.key)
    server = HTTPServer(host="localhost", port=0, ssl_context=context)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()


@pytest.fixture
def https_server(https_server_session: HTTPServer, tls_certificates: Certificates,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[HTTPServer]:
    """The HTTPS server, trusted by ``requests`` for this test, cleared after it."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_certificates.ca))
    https_server_session.clear()
    yield https_server_session
    https_server_session.clear()
