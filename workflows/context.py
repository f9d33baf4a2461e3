"""What an activity sees of its run: properties, journal, counters, cursors, and the one
unit-of-work primitive through which every workflow does its work.

Exactly-once comes from the unit of work: a unit's effects, the cursors it moves, the activity's
counters and the run's progress are written in one transaction, which ends with the lease fence
(:func:`workflows.leases.fence`, an UPDATE conditional on the run still holding its lease with the
token it claimed). A crash at any point leaves the database as if the run had stopped after its
last committed unit; a run that lost its lease commits nothing at all. Between units (never inside
one) the run renews its lease and obeys pause and stop. The shapes of work, all on one loop:

- ``ctx.batches("cursor", step)``: a cursor walk; ``step(cursor, limit)`` returns a :class:`Batch`.
- ``ctx.batches(None, step, start=...)``: the same without a saved cursor, for work idempotent by
  itself (deleting what matches a rule): a resumed run simply finds what is left.
- ``ctx.each(items, work)``: one unit per item (an A/B test, an audience, a report share).
- ``ctx.unit(work)``: one transactional unit (move a cursor with what it moves past).

Workflow modules never open their own transaction around their work, never call the checkpoint
and never write the run's fields: the engine owns all three.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import transaction
from django.dispatch import Signal

from workflows import shutdown
from workflows.leases import LEASE_LOST, LeaseKeeper, fence
from workflows.models import ActivityRun, LogLevel, Workflow, WorkflowLog, WorkflowRun, WorkflowState

T = TypeVar("T")
R = TypeVar("R")

#: Sent inside every unit's transaction, after its effects and just before its fenced commit
#: (``workflow_id``, ``run_id``, ``unit``: the unit's number in the run, from 1). The worst moment
#: for a run to freeze: the fencing tests stop a real worker here.
unit_committing = Signal()


def cursors_of(workflow_id: str) -> dict[str, Any]:
    """A workflow's cursors, read-only: where its incremental scans stand. The one way a workflow
    reads another's progress (cleanup keeps what updateDeliveryExecInfo has not read yet); only a
    workflow's own runs write its cursors, through their units of work."""
    return Workflow.objects.filter(pk=workflow_id).values_list("cursors", flat=True).first() or {}


def savepoint() -> transaction.Atomic:
    """A savepoint around one statement that may fail on purpose (a unique clash, a pattern the
    database rejects), so that inside a unit of work its failure undoes that statement only."""
    return transaction.atomic()


#: :class:`RunHalted`'s state when the worker stops: the run continues on another worker.
HANDOVER = "handover"


class RunHalted(Exception):
    """Raised at a batch boundary when the workflow was paused or stopped meanwhile, or when the
    worker is stopping (state :data:`HANDOVER`)."""

    def __init__(self, state: str) -> None:
        self.state = state
        super().__init__(f"workflow {state} while running")


class LeaseLost(Exception):
    """Another run took the workflow over (this run's lease had expired): nothing more commits."""


class SkipRun(Exception):
    """Raise from an activity when the run has nothing it may do (e.g. its external account is
    missing or disabled): the run ends ``skipped`` with this reason, not ``failed``."""


@dataclass
class Batch:
    """What one call of a batch step did: how many source rows it consumed, and where the next
    batch starts. The loop ends after a short batch (``rows < limit``: the source is drained),
    unless the step says so itself with ``done`` (a step whose batches vary in size)."""

    rows: int
    cursor: Any = None
    counters: dict[str, int] | None = None
    done: bool | None = None


BatchStep = Callable[[Any, int], Batch]


class RunFence:
    """The lease a run claimed (workflow, run, token) and the check every commit makes."""

    def __init__(self, workflow_id: str, run_id: int, token: int, keeper: LeaseKeeper | None = None) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.token = token
        self.keeper = keeper
        self.units = 0

    def check(self, *, cursors: dict[str, Any] | None = None) -> None:
        """Inside a transaction: extend the lease (writing ``cursors``) or raise :class:`LeaseLost`,
        which rolls the transaction back."""
        self.units += 1
        unit_committing.send(RunFence, workflow_id=self.workflow_id, run_id=self.run_id, unit=self.units)
        if not fence(self.workflow_id, self.run_id, self.token, cursors=cursors):
            raise LeaseLost(f"{LEASE_LOST}: another run took {self.workflow_id} over")


class ActivityContext:
    def __init__(
        self,
        *,
        workflow_id: str,
        run: WorkflowRun,
        activity: ActivityRun,
        properties: dict[str, Any],
        batch_size: int,
        fence: RunFence | None,
        started_in_state: str = WorkflowState.STARTED,
        on_progress: Callable[[WorkflowRun], None] | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.run = run
        self.activity = activity
        self.properties = properties
        self.batch_size = batch_size
        self._fence = fence
        self._lease = fence.keeper if fence is not None else None
        self._staged_cursors: dict[str, Any] | None = None  # set inside a unit, written by its commit
        # A forced run of a paused workflow must not halt on the pause it was forced through.
        self._started_in_state = started_in_state
        self._on_progress = on_progress
        self._progress_saved = run.progress_done
        self._counters_saved = dict(activity.counters)

    # -- journal and counters -------------------------------------------------------------
    def log(self, message: str, *, level: str = LogLevel.INFO) -> None:
        WorkflowLog.objects.create(
            workflow_id=self.workflow_id, run=self.run, activity=self.activity.name, level=level, message=message
        )

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter of this activity; saved with the unit it is counted in, or at the
        activity's end (a counter counted outside units: a dry run's count, say)."""
        self.activity.counters[name] = self.activity.counters.get(name, 0) + amount

    def declare(self, *names: str) -> None:
        """Counters this activity reports even when they stay zero."""
        for name in names:
            self.activity.counters.setdefault(name, 0)

    def advance(self, rows: int) -> None:
        """Count ``rows`` toward the run's progress (saved with the unit, or at the activity's end)."""
        self.run.progress_done += rows

    def save_progress(self) -> None:
        """Write the run's rows done, if they moved since they were last written (the engine's)."""
        if self.run.progress_done != self._progress_saved:
            WorkflowRun.objects.filter(pk=self.run.pk).update(progress_done=self.run.progress_done)
            self._progress_saved = self.run.progress_done

    def set_progress_total(self, remaining: int | None) -> None:
        """Announce the rows this activity expects to consume: the run's total becomes what it
        has done so far (earlier activities, an earlier part of a resumed run) plus these."""
        total = None if remaining is None else self.run.progress_done + remaining
        self.run.progress_total = total
        WorkflowRun.objects.filter(pk=self.run.pk).update(progress_total=total)

    # -- cursors ---------------------------------------------------------------------------
    def cursors(self) -> dict[str, Any]:
        """All the workflow's cursors, read in one query (with this unit's changes, inside one)."""
        return {**cursors_of(self.workflow_id), **(self._staged_cursors or {})}

    def get_cursor(self, name: str, default: Any = None) -> Any:
        return self.cursors().get(name, default)

    def set_cursor(self, name: str, value: Any) -> None:
        """Move a cursor with the unit of work that moves past its rows."""
        self.set_cursors({name: value})

    def set_cursors(self, values: dict[str, Any]) -> None:
        """Move several cursors; written by the fenced commit of the current unit of work."""
        if self._staged_cursors is None:
            raise RuntimeError("set a cursor inside a unit of work (ctx.unit, ctx.each or a batch step): "
                               "it must commit with the effects it moves past")
        self._staged_cursors.update(values)

    # -- units of work ---------------------------------------------------------------------
    def unit(self, work: Callable[[], R], *, halting: bool = True) -> R:
        """Run ``work()`` as one unit: its effects, the cursors it sets, the counters it counts and
        the progress it advances commit together, fenced; returns what ``work`` returned.

        ``halting=False`` is for a unit that records an effect already made outside the database
        (a push the service acknowledged): halting before it for a pause would only have that
        effect made again, so the pause is obeyed at the next boundary instead."""
        self._checkpoint(halting=halting)
        return self._commit(work)

    def each(self, items: Iterable[T], work: Callable[[T], dict[str, int] | None], *, throttle_s: float = 0.0,
             atomic: bool = True) -> int:
        """One unit per item: ``work(item)`` (returning counters to add, or None) and its effects
        commit together; pause and stop are obeyed between items. Returns the number of items.

        ``atomic=False`` is for items whose effects leave the database (an email, an HTTP call)
        and keep their own protocol (a status row claimed, then marked sent): ``work`` runs
        outside any transaction, so nothing it did is undone after it happened, and only its
        counters and progress commit as the unit."""
        done = 0
        for item in items:
            if done and throttle_s:
                time.sleep(throttle_s)
            self._checkpoint()
            counters = {} if atomic else (work(item) or {})

            def one(item: T = item, counters: dict[str, int] = counters) -> None:
                for name, amount in (work(item) or {} if atomic else counters).items():
                    self.count(name, amount)
                self.advance(1)

            self._commit(one)
            if self._on_progress is not None:
                self._on_progress(self.run)
            done += 1
        return done

    def batches(
        self, cursor_name: str | None, step: BatchStep, *, start: Any = 0, batch_size: int | None = None,
        throttle_s: float = 0.0,
    ) -> int:
        """Call ``step(cursor, limit)`` until a short batch; each call, the cursor it returns and
        the counters commit together, fenced. Returns the number of source rows consumed.

        With ``cursor_name`` None the position is kept in memory only, starting from ``start`` on
        every run: for work that is idempotent by itself (cleanup deleting what matches a rule),
        where a resumed run simply finds what is left.

        ``throttle_s`` sleeps between batches, outside any transaction, so that other writers
        (web requests, the admin's commands; on SQLite, anyone at all) get the database.
        """
        limit = batch_size or self.batch_size
        total = 0
        # Read once: only this run writes the cursor, and a batch that fails leaves the loop.
        position = start if cursor_name is None else self.get_cursor(cursor_name, start)
        while True:
            if total and throttle_s:
                time.sleep(throttle_s)
            self._checkpoint()

            def one(position: Any = position) -> Batch:
                batch = step(position, limit)
                if batch.rows and cursor_name is not None:
                    self.set_cursor(cursor_name, batch.cursor)
                for name, amount in (batch.counters or {}).items():
                    self.count(name, amount)
                self.advance(batch.rows)
                return batch

            batch = self._commit(one)
            if batch.rows:
                position = batch.cursor
            if self._on_progress is not None:
                self._on_progress(self.run)
            total += batch.rows
            if batch.done or (batch.done is None and batch.rows < limit):
                return total

    def _commit(self, work: Callable[[], R]) -> R:
        """One transaction: ``work()``, then the fenced write of cursors, counters and progress.
        A failure rolls everything back, the in-memory counters and progress included."""
        if self._staged_cursors is not None:
            return work()  # a unit inside a unit is part of it
        saved = (dict(self.activity.counters), self.run.progress_done, self._counters_saved, self._progress_saved)
        self._staged_cursors = {}
        try:
            with transaction.atomic():
                result = work()
                staged, self._staged_cursors = self._staged_cursors, None
                self.commit_bookkeeping(cursors=staged)
        except BaseException:
            self.activity.counters, self.run.progress_done, self._counters_saved, self._progress_saved = saved
            raise
        finally:
            self._staged_cursors = None
        return result

    def commit_bookkeeping(self, *, cursors: dict[str, Any] | None = None) -> None:
        """Inside a transaction: the fence (writing these cursors over the stored ones), the
        activity's counters and the run's progress. The engine calls it at an activity's end too."""
        merged = {**self.cursors(), **cursors} if cursors else None
        if self._fence is not None:
            self._fence.check(cursors=merged)
        elif merged is not None:  # a context without a lease (an activity called directly by a test)
            Workflow.objects.filter(pk=self.workflow_id).update(cursors=merged)
        if self.activity.counters != self._counters_saved:
            ActivityRun.objects.filter(pk=self.activity.pk).update(counters=self.activity.counters)
            self._counters_saved = dict(self.activity.counters)
        self.save_progress()

    def _checkpoint(self, *, halting: bool = True) -> None:
        """A unit boundary: give up if the lease was lost; halt if paused or stopped."""
        if self._staged_cursors is not None:
            return  # inside a unit: its boundary is the outer one's
        if self._lease is not None:
            self._lease.renew_if_due()
        if self._lease is not None and self._lease.lost.is_set():
            raise LeaseLost(f"{LEASE_LOST}: another run took {self.workflow_id} over")
        if not halting:
            return
        if shutdown.stopping():
            raise RunHalted(HANDOVER)
        state, halt_run = Workflow.objects.filter(pk=self.workflow_id).values_list("state", "halt_run").get()
        if halt_run == self.run.pk:
            raise RunHalted(WorkflowState.STOPPED)
        if state in (WorkflowState.PAUSED, WorkflowState.STOPPED) and state != self._started_in_state:
            raise RunHalted(state)
