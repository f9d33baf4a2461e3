"""django-celery-beat's database scheduler, plus a heartbeat so /healthz can tell beat is alive."""

from __future__ import annotations

import socket
from typing import Any

from django.db import DatabaseError
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler as BeatDatabaseScheduler

from workflows.models import SchedulerHeartbeat

#: Beat writes its heartbeat at most this often (seconds); /healthz allows a few missed beats.
HEARTBEAT_INTERVAL_S = 30


class DatabaseScheduler(BeatDatabaseScheduler):
    _last_heartbeat: float = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        now = timezone.now()
        if now.timestamp() - self._last_heartbeat >= HEARTBEAT_INTERVAL_S:
            try:
                SchedulerHeartbeat.objects.update_or_create(pk=1, defaults={"beat_at": now, "hostname": socket.gethostname()})
                self._last_heartbeat = now.timestamp()
            except DatabaseError:
                pass  # the schedule itself will report the database; beat must keep ticking
        # Never sleep longer than the heartbeat interval, or an idle beat would look dead.
        return min(super().tick(*args, **kwargs), HEARTBEAT_INTERVAL_S)
