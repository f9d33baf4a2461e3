"""Tracking rows for the benchmark cases that simulate sending (updateDeliveryIndicators, abTesting).

The rows themselves are written by the shared bulk loader, :mod:`campaign.bulk_load` (COPY on
PostgreSQL, one prepared INSERT on SQLite), the one the demo data uses too.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import datetime
from typing import Any


def pop_tracking_until(heap: list[tuple[datetime, int, int, int]], moment: datetime | None) -> Iterator[tuple[Any, ...]]:
    """Tracking rows waiting in ``heap`` as ``(tracked_at, delivery log id, delivery id, url type)``:
    those tracked before ``moment`` (all of them if None), oldest first, as TrackingLog rows
    ``(delivery_log, delivery, url_type, url, tracked_at)``. The cases generate reactions as they
    send and load them in arrival order, so tracking ids follow time as the consolidation's do."""
    while heap and (moment is None or heap[0][0] < moment):
        tracked_at, log_id, delivery_id, url_type = heapq.heappop(heap)
        yield (log_id, delivery_id, url_type, "", tracked_at)
