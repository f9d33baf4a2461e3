"""Bulk loading of plain rows: the one writer of the demo data and of the benchmarks' data sets.

Why it exists: ``manage.py seed_demo`` writes ~670,000 rows for 100,000 profiles within a
minute, and each benchmark case fills its scratch database with up to millions of rows. Through
the ORM's ``bulk_create``, building a model instance and compiling each of its values costs ~25 us
a row, most of that budget; and a multi-row INSERT costs PostgreSQL about twice the server time of
COPY. So rows travel as plain tuples: COPY (CSV format) on PostgreSQL with psycopg2, one prepared
INSERT run by ``executemany`` on SQLite, ``bulk_create`` on any other backend.

Invariants:

- A row holds the values the ORM would take, in the order of ``fields`` (field names or
  attnames): aware or naive datetimes, dicts and lists for JSON fields, booleans, choices. Each
  value is adapted once per column type as Django's own adapters would, so a loaded row reads
  back like one the ORM wrote (on SQLite an aware datetime is stored as naive UTC text).
- A column not given gets its model default (NULL when it has none); an id not given comes from
  the table's sequence. After loading explicit ids, :func:`reset_sequences` moves the sequences
  past them.
- Rows are read lazily, ``chunk_rows`` at a time: memory stays bounded whatever their number.
- Nothing here commits: the load belongs to the caller's transaction, if any.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from itertools import islice
from typing import Any

from django.core.management.color import no_style
from django.db import connection, models

#: Rows per COPY or ``executemany``: a few tens of MB of buffered text at most, and few enough
#: statements that their fixed cost does not show.
CHUNK_ROWS = 100_000
#: Instances per ``bulk_create`` call on backends without COPY or ``executemany`` here (Django
#: splits it further where the driver limits the parameters of a statement).
BULK_CREATE_BATCH_SIZE = 5_000
#: How COPY spells NULL here (written unquoted); an empty string is written quoted by the csv
#: module, so it stays an empty string, as Django writes it.
COPY_NULL = "\\N"

Adapter = Callable[[Any], Any] | None
Writer = Callable[[type[models.Model], list[models.Field], Iterable[Sequence[Any]]], int]


def load(
    model: type[models.Model], fields: Sequence[str], rows: Iterable[Sequence[Any]], *, chunk_rows: int = CHUNK_ROWS,
) -> int:
    """Insert ``rows`` (values in ``fields`` order) into ``model``'s table; returns their number."""
    meta = model._meta
    given = [meta.get_field(name) for name in fields]
    # Omitted columns whose default is NULL are left to the database, which writes NULL.
    omitted = [
        field for field in meta.concrete_fields
        if field not in given and not field.primary_key and field.get_default() is not None
    ]
    if omitted:
        rows = ((*row, *(field.get_default() for field in omitted)) for row in rows)
    write = _writer()
    columns = given + omitted
    iterator = iter(rows)
    count = 0
    while written := write(model, columns, islice(iterator, chunk_rows)):
        count += written
    return count


def reset_sequences(*models_: type[models.Model]) -> None:
    """Move the id sequences past explicitly loaded ids (PostgreSQL; SQLite's AUTOINCREMENT follows by itself)."""
    statements = connection.ops.sequence_reset_sql(no_style(), list(models_))
    if statements:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)


def analyze() -> None:
    """Fresh planner statistics after a bulk load, as autovacuum would give a real table."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _writer() -> Writer:
    if connection.vendor == "postgresql" and connection.Database.__name__ == "psycopg2":
        return _copy
    if connection.vendor == "sqlite":
        return _insert_many
    return _bulk_create


def _copy(model: type[models.Model], columns: list[models.Field], rows: Iterable[Sequence[Any]]) -> int:
    adapters = [_copy_adapter(field) for field in columns]
    count = 0

    def adapted() -> Iterator[tuple[Any, ...]]:
        nonlocal count
        for row in rows:
            count += 1
            yield tuple(
                COPY_NULL if value is None else adapt(value) if adapt else value
                for adapt, value in zip(adapters, row, strict=True)
            )

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(adapted())
    if count:
        buffer.seek(0)
        quote = connection.ops.quote_name
        names = ", ".join(quote(field.column) for field in columns)
        sql = f"COPY {quote(model._meta.db_table)} ({names}) FROM STDIN WITH (FORMAT csv, NULL '{COPY_NULL}')"
        with connection.cursor() as cursor:
            cursor.cursor.copy_expert(sql, buffer)  # the psycopg2 cursor under Django's wrapper
    return count


def _insert_many(model: type[models.Model], columns: list[models.Field], rows: Iterable[Sequence[Any]]) -> int:
    adapters = [_sqlite_adapter(field) for field in columns]
    if any(adapters):
        rows = (
            tuple(
                adapt(value) if adapt and value is not None else value
                for adapt, value in zip(adapters, row, strict=True)
            )
            for row in rows
        )
    chunk = list(rows)
    if chunk:
        quote = connection.ops.quote_name
        names = ", ".join(quote(field.column) for field in columns)
        placeholders = ", ".join(["%s"] * len(columns))
        with connection.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {quote(model._meta.db_table)} ({names}) VALUES ({placeholders})", chunk)
    return len(chunk)


def _bulk_create(model: type[models.Model], columns: list[models.Field], rows: Iterable[Sequence[Any]]) -> int:
    names = [field.attname for field in columns]
    instances = [model(**dict(zip(names, row, strict=True))) for row in rows]
    model.objects.bulk_create(instances, batch_size=BULK_CREATE_BATCH_SIZE)
    return len(instances)


def _copy_adapter(field: models.Field) -> Adapter:
    """COPY's text form of a value, or None when ``str()`` (the csv module's default) is right."""
    if isinstance(field, models.DateTimeField):
        return datetime.isoformat  # an aware value keeps its offset; a naive one is read in the session's zone (UTC)
    if isinstance(field, models.JSONField):
        return json.dumps
    if isinstance(field, models.BooleanField):
        return lambda value: "t" if value else "f"
    return None


def _sqlite_adapter(field: models.Field) -> Adapter:
    """SQLite's stored form of a value, or None when the driver's own adapter gives it."""
    if isinstance(field, models.DateTimeField):
        return connection.ops.adapt_datetimefield_value  # naive UTC text, as Django stores it
    if isinstance(field, models.JSONField):
        return json.dumps
    return None
