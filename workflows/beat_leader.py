"""Leader election among beat processes: any number may run, exactly one dispatches at a time.

Two beats reading the same schedule would each send every slot; a short first run releases its
workflow's lease before the second message arrives, so the slot would run twice. Running one beat
only makes it a single point of failure. So every beat process competes for one row,
:class:`~workflows.models.BeatLease`, with the pattern of workflow leases (:mod:`workflows.leases`):
conditional UPDATEs whose row count says who won, no advisory or session lock, the same on SQLite
and PostgreSQL.

- The lease lasts ``BEAT_LEASE_SECONDS`` (15 s by default). The leader renews it every third of
  that; a standby tries to take it as often, and succeeds once it has expired, so a killed or
  frozen leader is replaced within one lease period plus one attempt interval (under two periods).
- Each change of leader adds one to ``token``. The leader confirms holder *and* token, and extends
  its lease, in one UPDATE right before **every** dispatch: a leader frozen past its lease (and so
  replaced) wakes up, fails that confirmation and sends nothing.
- Lease times are the processes' own clocks, as for workflow leases: hosts keep them in sync (NTP),
  far closer than a lease period.

Every process also records a heartbeat (:class:`~workflows.models.BeatProcess`) so that /healthz
and the dashboard can show the leader and its standbys.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import F, Q
from django.utils import timezone

from workflows.models import BeatLease, BeatProcess

logger = logging.getLogger(__name__)

#: Renewals (leader) and take-over attempts (standby) happen this often, as a fraction of the lease:
#: two renewals may fail (a slow database) before the lease is lost.
RENEW_FRACTION = 1 / 3
#: A process whose heartbeat is older than this is forgotten (it stopped or died).
FORGET_AFTER = timedelta(hours=1)


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership:
    """One beat process's side of the election. Not thread-safe: beat ticks in one thread."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or process_name()
        self.lease = timedelta(seconds=settings.BEAT_LEASE_SECONDS)
        self.renew_every_s = settings.BEAT_LEASE_SECONDS * RENEW_FRACTION
        self.token: int | None = None  # set while this process believes it leads
        self.started_at = timezone.now()
        self._next_attempt = 0.0  # monotonic time of the next renewal or take-over attempt

    @property
    def leading(self) -> bool:
        return self.token is not None

    def keep(self) -> bool:
        """Renew the lease (leader) or try to take it (standby) when due; True while leading.

        A database error counts as a lost lease: a leader that cannot reach the database could not
        prove it still leads, and a standby simply tries again later.
        """
        now_s = time.monotonic()
        if now_s < self._next_attempt:
            return self.leading
        self._next_attempt = now_s + self.renew_every_s
        try:
            self._heartbeat()
            if self.leading and self.confirm():
                return True
            return self._take_if_free()
        except DatabaseError as error:
            if self.leading:
                logger.warning("beat %s: cannot renew its lease (%s); standing by", self.name, error)
            self.token = None
            return False

    def confirm(self) -> bool:
        """Still the leader, with the token it took the lease with? Extends the lease if so."""
        if self.token is None:
            return False
        now = timezone.now()
        kept = BeatLease.objects.filter(pk=1, holder=self.name, token=self.token, lease_until__gt=now).update(
            lease_until=now + self.lease,
        )
        if not kept:
            logger.warning("beat %s: lost the beat lease; dispatching stops", self.name)
            self.token = None
        return bool(kept)

    def release(self) -> None:
        """Give the lease up at a clean stop, so that a standby takes over at its next attempt."""
        if self.token is not None:
            BeatLease.objects.filter(pk=1, holder=self.name, token=self.token).update(lease_until=timezone.now())
            self.token = None
        BeatProcess.objects.filter(pk=self.name).delete()

    def _take_if_free(self) -> bool:
        """Take the lease if nobody holds a live one. Leadership changes hands only here."""
        BeatLease.objects.get_or_create(pk=1)
        now = timezone.now()
        free = Q(lease_until__isnull=True) | Q(lease_until__lte=now)
        taken = BeatLease.objects.filter(free, pk=1).exclude(holder=self.name).update(
            holder=self.name, token=F("token") + 1, lease_until=now + self.lease, acquired_at=now,
        )
        # Our own expired lease (a pause, a database hiccup): nobody dispatched meanwhile, so the
        # token stays and this is not a change of leader.
        taken = taken or BeatLease.objects.filter(free, pk=1, holder=self.name).update(
            lease_until=now + self.lease,
        )
        if not taken:
            return False
        self.token = BeatLease.objects.values_list("token", flat=True).get(pk=1)
        logger.info("beat %s: leads the dispatch (token %s)", self.name, self.token)
        return True

    def _heartbeat(self) -> None:
        now = timezone.now()
        BeatProcess.objects.update_or_create(
            pk=self.name, defaults={"hostname": socket.gethostname(), "started_at": self.started_at, "heartbeat_at": now},
        )
        BeatProcess.objects.filter(heartbeat_at__lt=now - FORGET_AFTER).delete()


@dataclass(frozen=True)
class BeatMember:
    name: str
    heartbeat_at: datetime


@dataclass(frozen=True)
class BeatCluster:
    """What /healthz, /metrics and the dashboard show of the election."""

    leader: str | None
    lease_until: datetime | None
    leader_since: datetime | None
    leadership_changes: int
    members: list[BeatMember]

    @property
    def standbys(self) -> list[BeatMember]:
        return [member for member in self.members if member.name != self.leader]

    @property
    def leader_heartbeat_at(self) -> datetime | None:
        return next((member.heartbeat_at for member in self.members if member.name == self.leader), None)


def cluster() -> BeatCluster:
    lease = BeatLease.objects.filter(pk=1).first()
    live = lease is not None and lease.lease_until is not None and lease.lease_until > timezone.now()
    members = [BeatMember(name, at) for name, at in BeatProcess.objects.values_list("name", "heartbeat_at")]
    return BeatCluster(
        leader=lease.holder if live else None,
        lease_until=lease.lease_until if lease else None,
        leader_since=lease.acquired_at if live else None,
        leadership_changes=lease.token if lease else 0,
        members=members,
    )
