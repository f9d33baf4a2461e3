"""Shared fixtures. Tests run on whatever DATABASE_URL / CELERY_BROKER_URL say (SQLite and the
filesystem broker by default; CI runs the suite a second time on PostgreSQL and Redis).

Tests marked ``postgres`` need PostgreSQL (concurrency, locking): they are skipped on SQLite.
Tests that start other processes use ``django_db(transaction=True, serialized_rollback=True)``:
the processes need committed rows, and the rollback restores the rows migrations created (the
workflows and their schedules) for the tests after them.
"""

import contextlib

import pytest
import requests
from django.conf import settings
from django.db import connection


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
