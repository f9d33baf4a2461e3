"""One run at a time per workflow, across any number of workers and beats.

A run owns its workflow while ``Workflow.lease_holder`` is the run's id and ``lease_until`` is in
the future. The lease is taken and renewed by conditional UPDATEs whose row count says who won
(the healthchecks pattern: compare-and-set on the values just read), so it needs no advisory or
session lock: it behaves the same on SQLite and PostgreSQL and behind a transaction-mode pooler.

A worker killed mid-run cannot release its lease; it expires after ``WORKFLOW_LEASE_SECONDS`` and
the next claim takes it over, marking the dead run ``failed`` / "abandoned".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from workflows.models import FINAL_RUN_STATUSES, RunStatus, Workflow, WorkflowRun

ABANDONED = "abandoned"


def lease_seconds() -> int:
    return settings.WORKFLOW_LEASE_SECONDS


@dataclass(frozen=True)
class Claim:
    won: bool
    holder: int | None = None  # the live holder when the claim was lost
    abandoned_run: int | None = None  # the dead run taken over, if any


def claim(workflow_id: str, run_id: int) -> Claim:
    """Try to make ``run_id`` the holder of ``workflow_id``'s lease."""
    now = timezone.now()
    current = Workflow.objects.filter(pk=workflow_id).values("lease_holder", "lease_until").get()
    holder, until = current["lease_holder"], current["lease_until"]
    if holder is not None and until is not None and until > now:
        return Claim(won=False, holder=holder)
    # Free or expired: compare-and-set against exactly what was read, so of two racing claimers
    # only one sees a row updated.
    taken = (
        Workflow.objects.filter(pk=workflow_id)
        .filter(Q(lease_holder=holder) if holder is not None else Q(lease_holder__isnull=True))
        .filter(Q(lease_until=until) if until is not None else Q(lease_until__isnull=True))
        .update(lease_holder=run_id, lease_until=now + timedelta(seconds=lease_seconds()))
    )
    if not taken:
        winner = Workflow.objects.filter(pk=workflow_id).values_list("lease_holder", flat=True).get()
        return Claim(won=False, holder=winner)
    abandoned = None
    if holder is not None:
        marked = (
            WorkflowRun.objects.filter(pk=holder)
            .exclude(status__in=FINAL_RUN_STATUSES + (RunStatus.PAUSED,))
            .update(status=RunStatus.FAILED, reason=ABANDONED, finished_at=now)
        )
        abandoned = holder if marked else None
    return Claim(won=True, abandoned_run=abandoned)


def renew(workflow_id: str, run_id: int) -> bool:
    """Extend the lease; False when the run no longer holds it (taken over after expiry)."""
    return bool(
        Workflow.objects.filter(pk=workflow_id, lease_holder=run_id).update(
            lease_until=timezone.now() + timedelta(seconds=lease_seconds())
        )
    )


def release(workflow_id: str, run_id: int) -> None:
    Workflow.objects.filter(pk=workflow_id, lease_holder=run_id).update(lease_holder=None, lease_until=None)


def is_alive(workflow_id: str, run_id: int) -> bool:
    """Whether ``run_id`` holds a lease that has not expired."""
    return Workflow.objects.filter(pk=workflow_id, lease_holder=run_id, lease_until__gt=timezone.now()).exists()


class LeaseKeeper:
    """Renews a run's lease from a background thread every fifth of the lease, so that an
    activity busy in one long statement or HTTP call keeps it; ``lost`` tells the run to stop.

    Inside an enclosing transaction (a test wrapped in one) another connection could neither see
    the lease nor wait for it, so there the run renews at batch boundaries only (:meth:`renew_if_due`).
    """

    def __init__(self, workflow_id: str, run_id: int) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{workflow_id}", daemon=True)
        self._renewed_at = time.monotonic()

    def __enter__(self) -> LeaseKeeper:
        if not connection.in_atomic_block:
            self._thread.start()
        return self

    def renew_if_due(self) -> None:
        """Called between batches by the run itself."""
        if time.monotonic() - self._renewed_at >= lease_seconds() / 5:
            if not renew(self.workflow_id, self.run_id):
                self.lost.set()
            self._renewed_at = time.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        interval = lease_seconds() / 5
        try:
            while not self._stop.wait(interval):
                try:
                    if not renew(self.workflow_id, self.run_id):
                        self.lost.set()
                        return
                except DatabaseError:  # the database restarting: retry at the next tick
                    close_old_connections()
        finally:
            connection.close()
