"""How the demo data reaches the database: ids handed out in advance, rows buffered per table and
written in large batches.

Why it exists: the simulation writes rows that point to rows not written yet (a tracking row to
its delivery log, an archived event to its log), in one transaction and without one query per
row. So every id is assigned here, after the tables' highest id, and nothing is read back; rows
are buffered per table and written FLUSH_ROWS at a time -- model instances of the small tables
with ``bulk_create``, the big tables of ``ROW_TABLES`` as plain tuples through the shared bulk
loader (:mod:`campaign.bulk_load`: COPY on PostgreSQL, one prepared INSERT on SQLite).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import models
from django.db.models import Max

from campaign.bulk_load import load
from campaign.models import AppSubscription, AudienceMember, DeliveryLog, Event, EventHistory, Profile, TrackingLog

#: Instances handed to one ``bulk_create`` call (one INSERT on PostgreSQL; Django splits it
#: further on SQLite, whose driver takes at most 999 parameters per statement).
BULK_BATCH_SIZE = 5_000
#: Instances buffered per table before they are written: bounds memory (~1 KB per instance)
#: to a few tens of MB whatever the number of profiles.
FLUSH_ROWS = 20_000
#: Ids per ``id IN (...)`` update: under SQLite's 999-parameter limit.
UPDATE_CHUNK = 900

#: The big tables (~90 % of the rows), written from plain tuples in this column order (attnames).
ROW_TABLES: dict[type[models.Model], tuple[str, ...]] = {
    Profile: (
        "id", "email", "phone", "first_name", "last_name", "visitor_id", "declared_id", "blocklisted_email",
        "blocklisted_sms", "blocklisted_push", "created_at", "updated_at",
    ),
    AppSubscription: ("profile_id", "application", "device_token", "disabled", "disabled_reason", "created_at", "updated_at"),
    AudienceMember: ("audience_id", "profile_id", "id_type", "imported_at"),
    DeliveryLog: (
        "id", "delivery_id", "profile_id", "address", "variant", "event_id", "status", "failure_type",
        "failure_reason", "error_text", "created_at", "updated_at",
    ),
    TrackingLog: ("delivery_log_id", "delivery_id", "url_type", "url", "tracked_at"),
    EventHistory: (
        "id", "event_type", "channel", "payload", "email", "phone", "status", "template_id", "delivery_log_id",
        "created_at", "processed_at", "archived_at",
    ),
}


class BulkWriter:
    """Buffers rows per model and writes them FLUSH_ROWS at a time: model instances with
    bulk_create, the big tables of ROW_TABLES from tuples."""

    def __init__(self, ids: IdAllocator) -> None:
        self._ids = ids
        self._buffers: dict[type[models.Model], list[models.Model]] = {}
        self._rows: dict[type[models.Model], list[tuple[Any, ...]]] = {}
        self.counts: Counter[str] = Counter()
        self.models_written: list[type[models.Model]] = []

    def add(self, obj: models.Model) -> None:
        model = type(obj)
        if obj.pk is None:
            obj.pk = self._ids.take(model)
        buffer = self._buffers.get(model)
        if buffer is None:
            buffer = self._buffers[model] = []
            self._written(model)
        buffer.append(obj)
        if len(buffer) >= FLUSH_ROWS:
            self.flush(model)

    def add_all(self, objs: Iterable[models.Model]) -> None:
        for obj in objs:
            self.add(obj)

    def add_row(self, model: type[models.Model], row: tuple[Any, ...]) -> None:
        """A row of a ROW_TABLES model, its values in that table's column order (the id first
        when the table's columns list it; otherwise the writer assigns it)."""
        rows = self._rows.get(model)
        if rows is None:
            rows = self._rows[model] = []
            self._written(model)
        rows.append(row if "id" in ROW_TABLES[model] else (self._ids.take(model), *row))
        if len(rows) >= FLUSH_ROWS:
            self.flush(model)

    def flush(self, model: type[models.Model]) -> None:
        rows = self._rows.get(model)
        if rows:
            columns = ROW_TABLES[model]
            self.counts[model.__name__] += load(model, columns if "id" in columns else ("id", *columns), rows)
            rows.clear()
        buffer = self._buffers.get(model)
        if buffer:
            model.objects.bulk_create(buffer, batch_size=BULK_BATCH_SIZE)
            self.counts[model.__name__] += len(buffer)
            buffer.clear()

    def flush_all(self) -> None:
        for model in self.models_written:
            self.flush(model)

    def _written(self, model: type[models.Model]) -> None:
        if model not in self.models_written:
            self.models_written.append(model)


class IdAllocator:
    """Hands out ids after the highest existing ones, for every table the demo writes: rows can
    reference rows not yet written, and the ids do not depend on the state of the sequences."""

    #: Archiving keeps an event's id: live and archived events share one id space.
    SHARED_ID_SPACE: dict[type[models.Model], type[models.Model]] = {EventHistory: Event}

    def __init__(self, next_ids: dict[type[models.Model], int]) -> None:
        self._next = next_ids

    @classmethod
    def from_database(cls, model_list: Iterable[type[models.Model]]) -> IdAllocator:
        next_ids: dict[type[models.Model], int] = {}
        for model in model_list:
            key = cls.SHARED_ID_SPACE.get(model, model)
            top = model.objects.aggregate(top=Max("pk"))["top"] or 0
            next_ids[key] = max(next_ids.get(key, 1), top + 1)
        return cls(next_ids)

    def take(self, model: type[models.Model]) -> int:
        key = self.SHARED_ID_SPACE.get(model, model)
        value = self._next[key]
        self._next[key] = value + 1
        return value

    def peek(self, model: type[models.Model]) -> int:
        return self._next[self.SHARED_ID_SPACE.get(model, model)]


def update_in_chunks(queryset: models.QuerySet, ids: Sequence[int], **values: Any) -> None:
    """``UPDATE ... WHERE id IN (...)`` for many ids, UPDATE_CHUNK at a time."""
    for start in range(0, len(ids), UPDATE_CHUNK):
        queryset.filter(id__in=ids[start : start + UPDATE_CHUNK]).update(**values)
