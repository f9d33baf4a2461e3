"""Small helpers for the raw SQL and keyset batches of the workflows, on PostgreSQL and SQLite alike.

Why it exists: several workflows write set-based statements by hand and walk tables in bounded
batches of ids, and each needs the same few conversions. Written once here, they cannot drift apart:

- a table name is quoted the way the backend wants it (:func:`table`);
- a date or datetime passed as a parameter of raw SQL is given as the backend stores it (SQLite
  keeps naive UTC text; PostgreSQL takes the value as is), and one read back by raw SQL is made an
  aware datetime again (:func:`db_datetime`, :func:`db_date`, :func:`from_db_datetime`);
- a bounded batch ends at the key of its n-th row (:func:`nth_id`, :func:`nth_key`): the next batch
  starts after it, so each batch is one range scan of the index, however far the walk has got.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from django.db import connection, models
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime


def table(model: type[models.Model]) -> str:
    """The model's table name, quoted for the backend."""
    return connection.ops.quote_name(model._meta.db_table)


def db_datetime(value: datetime) -> Any:
    """A datetime as the backend stores it (SQLite: naive UTC text; PostgreSQL: as is)."""
    return connection.ops.adapt_datetimefield_value(value)


def db_date(value: date) -> Any:
    """A date as the backend stores it."""
    return connection.ops.adapt_datefield_value(value)


def from_db_datetime(value: Any) -> datetime:
    """A datetime read by raw SQL (SQLite gives naive UTC text) as an aware datetime."""
    if isinstance(value, str):
        value = parse_datetime(value)
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


def nth_id(rows: QuerySet[Any], n: int) -> int | None:
    """The id of the ``n``-th row by id, or None when there are fewer: the end of a bounded batch."""
    return next(iter(rows.order_by("id").values_list("id", flat=True)[n - 1:n]), None)


def nth_key(rows: QuerySet[Any], n: int, order: Sequence[str]) -> tuple[Any, ...] | None:
    """The values of ``order`` of the ``n``-th row in that order, or None when there are fewer:
    the end of a bounded batch walked on a composite key."""
    return next(iter(rows.order_by(*order).values_list(*order)[n - 1:n]), None)
