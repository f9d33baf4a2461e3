"""What an activity sees of its run: properties, journal, counters, cursors and batches.

The batch helper is where exactly-once comes from: each batch's effects, the advanced cursor and
the activity's counters are written in one transaction, so a crash at any point leaves the
database as if the run had stopped after the last committed batch, and the next run continues
from there. Between batches (never inside one) the run renews its lease and obeys pause and stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from workflows.leases import LeaseKeeper
from workflows.models import ActivityRun, LogLevel, Workflow, WorkflowLog, WorkflowRun, WorkflowState


class RunHalted(Exception):
    """Raised at a batch boundary when the workflow was paused or stopped meanwhile."""

    def __init__(self, state: str) -> None:
        self.state = state
        super().__init__(f"workflow {state} while running")


class LeaseLost(Exception):
    """Another run took the workflow over (this run's lease had expired)."""


class SkipRun(Exception):
    """Raise from an activity when the run has nothing it may do (e.g. its external account is
    missing or disabled): the run ends ``skipped`` with this reason, not ``failed``."""


@dataclass
class Batch:
    """What one call of a batch step did: how many source rows it consumed, and where the next
    batch starts. The loop ends after a short batch (``rows < limit``: the source is drained),
    unless the step says so itself with ``done`` (a step whose batches vary in size)."""

    rows: int
    cursor: Any
    counters: dict[str, int] | None = None
    done: bool | None = None


BatchStep = Callable[[Any, int], Batch]


class ActivityContext:
    def __init__(
        self,
        *,
        workflow_id: str,
        run: WorkflowRun,
        activity: ActivityRun,
        properties: dict[str, Any],
        batch_size: int,
        lease: LeaseKeeper | None,
        started_in_state: str = WorkflowState.STARTED,
        on_progress: Callable[[WorkflowRun], None] | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.run = run
        self.activity = activity
        self.properties = properties
        self.batch_size = batch_size
        self._lease = lease
        # A forced run of a paused workflow must not halt on the pause it was forced through.
        self._started_in_state = started_in_state
        self._on_progress = on_progress
        self._progress_saved = run.progress_done

    # -- journal and counters -------------------------------------------------------------
    def log(self, message: str, *, level: str = LogLevel.INFO) -> None:
        WorkflowLog.objects.create(
            workflow_id=self.workflow_id, run=self.run, activity=self.activity.name, level=level, message=message
        )

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter of this activity; saved with the next batch or at the activity's end."""
        self.activity.counters[name] = self.activity.counters.get(name, 0) + amount

    def save_counters(self) -> None:
        ActivityRun.objects.filter(pk=self.activity.pk).update(counters=self.activity.counters)
        self.save_progress()

    def save_progress(self) -> None:
        """Write the run's rows done, if they moved since they were last written."""
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
        """All the workflow's cursors, read in one query."""
        return Workflow.objects.filter(pk=self.workflow_id).values_list("cursors", flat=True).get()

    def get_cursor(self, name: str, default: Any = None) -> Any:
        return self.cursors().get(name, default)

    def set_cursor(self, name: str, value: Any) -> None:
        """Call inside the transaction that wrote the effects the cursor moves past."""
        self.set_cursors({name: value})

    def set_cursors(self, values: dict[str, Any]) -> None:
        """Set several cursors in one write (call inside the transaction of their effects)."""
        # Only the lease holder writes its workflow's cursors, so read-then-write needs no row
        # lock; no savepoint either (a batch pays for every round trip).
        with transaction.atomic(savepoint=False):
            cursors = self.cursors()
            cursors.update(values)
            Workflow.objects.filter(pk=self.workflow_id).update(cursors=cursors)

    # -- batches ---------------------------------------------------------------------------
    def batches(
        self, cursor_name: str | None, step: BatchStep, *, start: Any = 0, batch_size: int | None = None,
        throttle_s: float = 0.0,
    ) -> int:
        """Call ``step(cursor, limit)`` until a short batch; each call, the cursor it returns and
        the counters commit together. Returns the number of source rows consumed.

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
            self.checkpoint()
            with transaction.atomic():
                batch = step(position, limit)
                if batch.rows and cursor_name is not None:
                    self.set_cursor(cursor_name, batch.cursor)
                for name, amount in (batch.counters or {}).items():
                    self.count(name, amount)
                self.run.progress_done += batch.rows
                self.save_counters()
            if batch.rows:
                position = batch.cursor
            if self._on_progress is not None:
                self._on_progress(self.run)
            total += batch.rows
            if batch.done or (batch.done is None and batch.rows < limit):
                return total

    def checkpoint(self) -> None:
        """A batch boundary: give up if the lease was lost; halt if paused or stopped."""
        if self._lease is not None:
            self._lease.renew_if_due()
        if self._lease is not None and self._lease.lost.is_set():
            raise LeaseLost(f"the lease of {self.workflow_id} was taken over by another run")
        state, halt_run = Workflow.objects.filter(pk=self.workflow_id).values_list("state", "halt_run").get()
        if halt_run == self.run.pk:
            raise RunHalted(WorkflowState.STOPPED)
        if state in (WorkflowState.PAUSED, WorkflowState.STOPPED) and state != self._started_in_state:
            raise RunHalted(state)

