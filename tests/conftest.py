"""Shared fixtures. Tests run on whatever DATABASE_URL / CELERY_BROKER_URL say (SQLite and the
filesystem broker by default; CI runs the suite a second time on PostgreSQL and Redis).

Tests marked ``postgres`` need PostgreSQL (concurrency, locking): they are skipped on SQLite.
Tests that start other processes use ``django_db(transaction=True, serialized_rollback=True)``:
the processes need committed rows, and the rollback restores the rows migrations created (the
workflows and their schedules) for the tests after them.
"""

import pytest
from django.conf import settings
from django.db import connection


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL=postgres://…)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def is_postgres() -> bool:
    return connection.vendor == "postgresql"
