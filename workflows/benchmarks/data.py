"""Fast bulk loading for benchmark data: PostgreSQL's COPY, or executemany on SQLite.

A million rows through the ORM's bulk_create spends most of its time building model instances;
the benchmark only needs rows in tables, so it streams tuples straight to the database.
"""

from __future__ import annotations

import csv
import heapq
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from django.core.management.color import no_style
from django.db import connection, models

COPY_CHUNK_ROWS = 100_000


#: COPY's NULL marker in CSV format (written unquoted; an empty string is quoted by the writer).
NULL = r"\N"


def _text(value: Any) -> Any:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def load(model: type[models.Model], fields: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Insert ``rows`` (tuples in ``fields`` order, column names of ``model``) and return the count."""
    table = model._meta.db_table
    columns = [model._meta.get_field(name).column for name in fields]
    count = 0
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            buffer, writer = io.StringIO(), None
            for row in rows:
                if writer is None:
                    writer = csv.writer(buffer, lineterminator="\n")
                writer.writerow([_text(value) for value in row])
                count += 1
                if count % COPY_CHUNK_ROWS == 0:
                    _copy(cursor, table, columns, buffer)
                    buffer, writer = io.StringIO(), None
            if buffer.tell():
                _copy(cursor, table, columns, buffer)
        else:
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('%s' for _ in columns)})"
            chunk: list[Sequence[Any]] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) == COPY_CHUNK_ROWS:
                    cursor.executemany(sql, chunk)
                    count += len(chunk)
                    chunk = []
            if chunk:
                cursor.executemany(sql, chunk)
                count += len(chunk)
    return count


def _copy(cursor: Any, table: str, columns: list[str], buffer: io.StringIO) -> None:
    buffer.seek(0)
    cursor.cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '{NULL}')", buffer)


def reset_sequences(*models_: type[models.Model]) -> None:
    """After loading explicit ids, move the id sequences past them (PostgreSQL)."""
    statements = connection.ops.sequence_reset_sql(no_style(), list(models_))
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def analyze() -> None:
    """Fresh planner statistics after a bulk load, as autovacuum would give a real table."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def pop_tracking_until(heap: list[tuple[datetime, int, int, int]], moment: datetime | None) -> Iterator[tuple[Any, ...]]:
    """Tracking rows waiting in ``heap`` as ``(tracked_at, delivery log id, delivery id, url type)``:
    those tracked before ``moment`` (all of them if None), oldest first, as TrackingLog rows
    ``(delivery_log, delivery, url_type, url, tracked_at)``. The cases generate reactions as they
    send and load them in arrival order, so tracking ids follow time as the consolidation's do."""
    while heap and (moment is None or heap[0][0] < moment):
        tracked_at, log_id, delivery_id, url_type = heapq.heappop(heap)
        yield (log_id, delivery_id, url_type, "", tracked_at)
