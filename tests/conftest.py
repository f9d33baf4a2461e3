"""Shared fixtures. Tests run on whatever DATABASE_URL / CELERY_BROKER_URL say (SQLite and the
filesystem broker by default; CI runs the suite a second time on PostgreSQL and Redis)."""

import pytest
from django.db import connection


@pytest.fixture
def is_postgres() -> bool:
    return connection.vendor == "postgresql"
