"""One run at a time per workflow, across any number of workers and beats, and fenced commits.

A run owns its workflow while ``Workflow.lease_holder`` is the run's id and ``lease_until`` is in
the future. The lease is taken and renewed by conditional UPDATEs whose row count says who won
(the healthchecks pattern: compare-and-set on the values just read), so it needs no advisory or
session lock: it behaves the same on SQLite and PostgreSQL and behind a transaction-mode pooler.

Every claim also adds one to ``lease_token``. A run remembers the token it claimed with, and every
commit it makes goes through :func:`fence`, an UPDATE conditional on holder *and* token, executed
inside the transaction of the commit: a run that lost its lease (frozen by a pause, cut off by a
partition, simply too slow) updates no row, so its transaction rolls back and nothing it did is
seen. A takeover therefore never races a late commit of the run it replaced.

A worker killed mid-run cannot release its lease; it expires after ``WORKFLOW_LEASE_SECONDS``, and
the next claim (or the reaper, :mod:`workflows.reaper`) takes it over, marking the dead run
``failed`` / "abandoned" and closing its running activity rows.

Workflows that must never overlap declare it (``exclusive_with``): a claim locks the rows of the
whole group in a fixed order and refuses while any of them holds a live lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from workflows.models import FINAL_RUN_STATUSES, ActivityRun, ActivityStatus, RunStatus, Workflow, WorkflowRun

ABANDONED = "abandoned"
LEASE_LOST = "lease lost"


def lease_seconds() -> int:
    return settings.WORKFLOW_LEASE_SECONDS


def lease_end(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) + timedelta(seconds=lease_seconds())


@dataclass(frozen=True)
class Claim:
    won: bool
    holder: int | None = None  # the live holder when the claim was lost
    blocked_by: str = ""  # the workflow whose live lease refused the claim (itself or an exclusive one)
    token: int = 0  # the lease token of a won claim: every commit of the run checks it
    abandoned_run: int | None = None  # the dead run taken over, if any


#: Times a claim is tried when it lost the race to a run that has already let the lease go again.
CLAIM_ATTEMPTS = 3


def claim(workflow_id: str, run_id: int, *, exclusive_with: Iterable[str] = ()) -> Claim:
    """Try to make ``run_id`` the holder of ``workflow_id``'s lease.

    A claim lost to a run that took the lease between our read and our update, and has already
    released it, is tried again: the workflow is free, and a lost claim must name a holder.
    """
    for _ in range(CLAIM_ATTEMPTS):
        result = _claim_once(workflow_id, run_id, exclusive_with=exclusive_with)
        if result.won or result.holder is not None:
            return result
    return result


def _claim_once(workflow_id: str, run_id: int, *, exclusive_with: Iterable[str]) -> Claim:
    now = timezone.now()
    group = sorted({workflow_id, *exclusive_with})
    with transaction.atomic():
        if len(group) > 1:
            # Two claims of the group racing must see each other: lock the rows in a fixed order.
            list(Workflow.objects.select_for_update().filter(pk__in=group).order_by("pk").values_list("pk", flat=True))
        rows = {row["id"]: row for row in Workflow.objects.filter(pk__in=group)
                .values("id", "lease_holder", "lease_until", "lease_token")}
        for other in group:
            row = rows[other]
            if row["lease_holder"] is not None and row["lease_until"] is not None and row["lease_until"] > now:
                return Claim(won=False, holder=row["lease_holder"], blocked_by=other)
        for other in group:
            row = rows[other]
            if other != workflow_id and row["lease_holder"] is not None:
                # An exclusive workflow's expired lease is taken away too (its token grows), so its
                # frozen run cannot commit beside this one when it wakes up.
                if not take_expired(other, row):
                    return Claim(won=False, holder=row["lease_holder"], blocked_by=other)
                mark_abandoned(row["lease_holder"], now=now)
        current = rows[workflow_id]
        holder, until, token = current["lease_holder"], current["lease_until"], current["lease_token"]
        # Free or expired: compare-and-set against exactly what was read, so of two racing claimers
        # only one sees a row updated.
        taken = (
            Workflow.objects.filter(pk=workflow_id, lease_token=token)
            .filter(Q(lease_holder=holder) if holder is not None else Q(lease_holder__isnull=True))
            .filter(Q(lease_until=until) if until is not None else Q(lease_until__isnull=True))
            .update(lease_holder=run_id, lease_until=lease_end(now), lease_token=token + 1)
        )
        if not taken:
            winner = Workflow.objects.filter(pk=workflow_id).values_list("lease_holder", flat=True).get()
            return Claim(won=False, holder=winner, blocked_by=workflow_id)
        abandoned = mark_abandoned(holder, now=now) if holder is not None else None
    return Claim(won=True, token=token + 1, abandoned_run=abandoned)


def take_expired(workflow_id: str, row: dict[str, Any]) -> bool:
    """Clear an expired lease exactly as it was read (compare-and-set), growing its token."""
    return bool(
        Workflow.objects.filter(pk=workflow_id, lease_holder=row["lease_holder"], lease_until=row["lease_until"],
                                lease_token=row["lease_token"])
        .update(lease_holder=None, lease_until=None, lease_token=row["lease_token"] + 1)
    )


def mark_abandoned(run_id: int, *, now: datetime) -> int | None:
    """Mark a run whose lease was taken away ``failed`` / "abandoned" and close its running
    activity rows; returns the run id if it was still unfinished."""
    marked = (
        WorkflowRun.objects.filter(pk=run_id)
        .exclude(status__in=FINAL_RUN_STATUSES + (RunStatus.PAUSED,))
        .update(status=RunStatus.FAILED, reason=ABANDONED, finished_at=now)
    )
    ActivityRun.objects.filter(run_id=run_id, status=ActivityStatus.RUNNING).update(
        status=ActivityStatus.FAILED, message=ABANDONED, finished_at=now
    )
    return run_id if marked else None


def fence(workflow_id: str, run_id: int, token: int, *, cursors: dict[str, Any] | None = None) -> bool:
    """The check of every commit: extend the lease (and write ``cursors``) only if this run still
    holds it with this token. Call inside the transaction of the commit; False = lease lost, and
    the caller must roll back."""
    changes: dict[str, Any] = {"lease_until": lease_end()}
    if cursors is not None:
        changes["cursors"] = cursors
    return bool(Workflow.objects.filter(pk=workflow_id, lease_holder=run_id, lease_token=token).update(**changes))


def renew(workflow_id: str, run_id: int, token: int | None = None) -> bool:
    """Extend the lease; False when the run no longer holds it (taken over after expiry)."""
    held = Workflow.objects.filter(pk=workflow_id, lease_holder=run_id)
    if token is not None:
        held = held.filter(lease_token=token)
    return bool(held.update(lease_until=lease_end()))


def release(workflow_id: str, run_id: int) -> None:
    Workflow.objects.filter(pk=workflow_id, lease_holder=run_id).update(lease_holder=None, lease_until=None)


def is_alive(workflow_id: str, run_id: int) -> bool:
    """Whether ``run_id`` holds a lease that has not expired."""
    return Workflow.objects.filter(pk=workflow_id, lease_holder=run_id, lease_until__gt=timezone.now()).exists()


def lease_of(workflow_id: str) -> tuple[int | None, datetime | None]:
    """(holder, until) of a workflow's lease as stored now."""
    return Workflow.objects.filter(pk=workflow_id).values_list("lease_holder", "lease_until").get()


class LeaseKeeper:
    """Renews a run's lease from a background thread every fifth of the lease, so that an
    activity busy in one long statement or HTTP call keeps it; ``lost`` tells the run to stop.

    Inside an enclosing transaction (a test wrapped in one) another connection could neither see
    the lease nor wait for it, so there the run renews at batch boundaries only (:meth:`renew_if_due`).
    """

    def __init__(self, workflow_id: str, run_id: int, token: int | None = None) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.token = token
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
            if not renew(self.workflow_id, self.run_id, self.token):
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
                    if not renew(self.workflow_id, self.run_id, self.token):
                        self.lost.set()
                        return
                except DatabaseError:  # the database restarting: retry at the next tick
                    close_old_connections()
        finally:
            connection.close()
