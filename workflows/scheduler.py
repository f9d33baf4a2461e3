"""django-celery-beat's database scheduler, made safe to run in several processes at once.

Only the leader of :mod:`workflows.beat_leader` dispatches; the others stand by and take over
when its lease expires. Four additions to the scheduler make a change of leader exact:

- the leader confirms its lease right before each dispatch (one UPDATE), so a former leader
  woken from a freeze sends nothing;
- it writes an entry's ``last_run_at`` to the database right after sending it (django-celery-beat
  batches these writes every few minutes), so its successor does not send that slot again;
- a process that becomes leader re-reads the schedule, ``last_run_at`` included, from the
  database, and one that stops leading forgets what it had not written;
- each message names its slot, the scheduled time it is sent for (a header), and the engine runs
  a workflow at most once per slot. A leader frozen between its last lease check and the send
  (milliseconds, but a freeze can land there) then sends a slot its successor sent too: the second
  message is recorded as a skipped run instead of running again.

The leader also writes the :class:`~workflows.models.SchedulerHeartbeat` row, which /healthz reads
to tell that scheduling is alive.
"""

from __future__ import annotations

import logging
import socket
from datetime import datetime
from typing import Any

from celery.schedules import crontab, schedule
from django.db import DatabaseError
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler as BeatDatabaseScheduler

from workflows.beat_leader import Leadership
from workflows.models import SchedulerHeartbeat
from workflows.tasks import SLOT_HEADER

logger = logging.getLogger(__name__)

#: The leader writes the heartbeat at most this often (seconds); /healthz allows a few missed beats.
HEARTBEAT_INTERVAL_S = 30


class DatabaseScheduler(BeatDatabaseScheduler):
    _last_heartbeat: float = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.leadership = Leadership()
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        was_leading = self.leadership.leading
        if not self.leadership.keep():
            if was_leading:
                self._forget_unsaved()
            return self.leadership.renew_every_s
        if not was_leading:
            self._reload()
        self._heartbeat()
        # Never sleep past a renewal: the lease must be kept while the schedule is idle.
        return min(super().tick(*args, **kwargs), self.leadership.renew_every_s)

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        try:
            leading = self.leadership.confirm()
        except DatabaseError as error:
            logger.warning("beat %s: cannot confirm its lease (%s); not sending %s", self.leadership.name, error, entry.name)
            leading = False
        if not leading:
            self._forget_unsaved()
            return
        super().apply_entry(entry, producer=producer)
        self.sync()  # last_run_at now, not in a few minutes: a successor must not resend this slot

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        slot = scheduled_slot(entry)
        if slot is not None:  # the options are rebuilt from the row for the next slot
            entry.options = {**entry.options, "headers": {**entry.options.get("headers", {}), SLOT_HEADER: slot.isoformat()}}
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            try:
                self.leadership.release()
            except DatabaseError:
                pass  # the lease expires by itself

    def _reload(self) -> None:
        """Read the schedule afresh: the previous leader may have sent slots since we last read it."""
        self._dirty.clear()
        self._initial_read = True
        self._heap = None

    def _forget_unsaved(self) -> None:
        """Drop ``last_run_at`` changes not written yet: they describe sends that did not happen, and
        the new leader owns those rows now."""
        self._dirty.clear()
        self._heap = None

    def _heartbeat(self) -> None:
        now = timezone.now()
        if now.timestamp() - self._last_heartbeat < HEARTBEAT_INTERVAL_S:
            return
        try:
            SchedulerHeartbeat.objects.update_or_create(pk=1, defaults={"beat_at": now, "hostname": socket.gethostname()})
            self._last_heartbeat = now.timestamp()
        except DatabaseError:
            pass  # the schedule itself will report the database; beat must keep ticking


def scheduled_slot(entry: Any) -> datetime | None:
    """The time ``entry`` is due at: the schedule's next time after its ``last_run_at``. Every beat
    reading the same ``last_run_at`` names the same slot. None for other kinds of schedule (clocked,
    solar), which are not deduplicated."""
    last_run_at = entry.last_run_at
    if last_run_at is None:
        return None
    if isinstance(entry.schedule, crontab):
        start, delta, _now = entry.schedule.remaining_delta(last_run_at)
        due = start + delta
    elif isinstance(entry.schedule, schedule):
        due = entry.schedule.maybe_make_aware(last_run_at) + entry.schedule.run_every
    else:
        return None
    return due.replace(microsecond=0) if isinstance(due, datetime) else None
