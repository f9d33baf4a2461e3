"""The checks behind ``/healthz``: can this instance do its job right now?

A load balancer or an orchestrator polls ``/healthz`` without credentials, so every check is a
plain function that answers quickly (a broker that does not answer is given up on after a couple of
seconds), never raises, and never puts a secret in its message (broker URLs are shown with the
password masked). Five things must hold:

- the database answers ``SELECT 1``;
- the Celery broker accepts a connection (for the embedded filesystem broker: its folders exist and
  are writable);
- beat is alive: the leading beat process (:class:`workflows.scheduler.DatabaseScheduler`) writes
  the ``SchedulerHeartbeat`` row every ``HEARTBEAT_INTERVAL_S`` seconds, and the row must be
  younger than ``WORKFLOW_BEAT_STALE_SECONDS``; the details name the leader and its standbys;
- every scheduled workflow has the schedule it should (:func:`workflows.schedules.drift_of`): a
  PeriodicTask sending ``workflows.<id>`` on a crontab, enabled exactly when the workflow is started
  (``manage.py workflow repair`` puts a drifted one back);
- no started workflow is overdue: its enabled schedule's next slot after ``PeriodicTask.last_run_at``
  is not further in the past than ``WORKFLOW_OVERDUE_GRACE_SECONDS``.

One more check only warns: on PostgreSQL, the default partitions of the log tables
(:mod:`campaign.partitions`) should be empty. Rows there mean a period had no partition when they
were written (the cleanup workflow's partition maintenance has not run, or the rows are dated far
from now); they are stored and read like any other, only retention can no longer drop them with
their period until the next maintenance moves them into one. The instance still does its job, so
the check stays ``ok`` (a load balancer must not take it out of service) and is listed under
``warnings``.

Both thresholds are Django settings of the same names, parsed from the environment at start-up
by :mod:`project.config` (a malformed value stops start-up naming the variable); unset, they are
``None`` and the defaults below apply.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery, current_app
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from kombu import Connection
from kombu.exceptions import OperationalError as BrokerOperationalError

from campaign import partitions
from workflows import beat_leader, schedules
from workflows.models import SchedulerHeartbeat, Workflow, WorkflowState
from workflows.scheduler import HEARTBEAT_INTERVAL_S

#: Seconds to wait for the broker to accept a connection. Short: a health probe that hangs is
#: worse than one that fails, and a healthy broker on the local network answers in milliseconds.
BROKER_TIMEOUT_S = 2.0

#: Beat is declared dead when its heartbeat is older than this (seconds): three missed
#: heartbeats, so one slow database write or a beat restart does not page anyone.
DEFAULT_BEAT_STALE_SECONDS = 3 * HEARTBEAT_INTERVAL_S

#: A scheduled slot may be this late (seconds) before its workflow counts as overdue. Beat writes
#: ``last_run_at`` to the database only when it syncs (Celery's ``Scheduler.sync_every``: 180 s),
#: so a healthy schedule can look up to ~3.5 minutes late; 5 minutes keeps a margin.
DEFAULT_OVERDUE_GRACE_SECONDS = 300


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: ``ok``, how long it took (``ms``) and a message an operator can act on."""

    ok: bool
    ms: float
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    warning: bool = False  # ok, but something an operator should look at

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "ms": self.ms, "message": self.message, **self.details}


@dataclass(frozen=True)
class HealthReport:
    checks: dict[str, CheckResult]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "fail",
            "warnings": [name for name, check in self.checks.items() if check.warning],
            "checks": {name: check.as_json() for name, check in self.checks.items()},
        }


# A check body returns (ok, message, details); _timed measures it and turns a database error into
# a failed check, so one broken dependency never hides the verdict of the others.
CheckBody = Callable[[], tuple[bool, str, dict[str, Any]]]


def _timed(body: CheckBody) -> CheckResult:
    started = time.perf_counter()
    try:
        ok, message, details = body()
    except DatabaseError as error:
        ok, message, details = False, f"database error: {_one_line(error)}", {}
    return CheckResult(ok=ok, ms=round((time.perf_counter() - started) * 1000, 1), message=message, details=details)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]


def _setting_seconds(name: str, *, default: int) -> int:
    """A threshold in seconds from ``settings.<name>``, else ``default`` when the setting is ``None``."""
    value = getattr(settings, name)
    return default if value is None else int(value)


def run_checks() -> HealthReport:
    return HealthReport(checks={
        "database": check_database(),
        "broker": check_broker(),
        "beat": check_beat(),
        "schedules": check_schedules(),
        "workflows": check_workflows(),
        "partitions": check_partitions(),
    })


# --- database ---------------------------------------------------------------------------------

def check_database() -> CheckResult:
    def body() -> tuple[bool, str, dict[str, Any]]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return True, f"{connection.vendor} answers", {}

    return _timed(body)


# --- partitions -------------------------------------------------------------------------------

def check_partitions() -> CheckResult:
    def body() -> tuple[bool, str, dict[str, Any]]:
        tables = partitions.partitioned_tables()
        if not tables:
            return True, f"no partitioned tables ({connection.vendor})", {}
        counts = {table.table: partitions.default_partition_rows(table.table, limit=10_000) for table in tables}
        outside = {table: rows for table, rows in counts.items() if rows}
        if outside:
            listed = ", ".join(f"{table} {rows:,}{'+' if rows == 10_000 else ''}" for table, rows in outside.items())
            return True, (f"rows outside every partition (in the default partitions): {listed}; the cleanup workflow's "
                          "partition maintenance moves them into partitions of their own"), {"default_partition_rows": outside}
        return True, f"{len(tables)} partitioned tables, default partitions empty", {"default_partition_rows": {}}

    result = _timed(body)
    return replace(result, warning=bool(result.details.get("default_partition_rows")))


# --- broker -----------------------------------------------------------------------------------

def check_broker(*, app: Celery | None = None, timeout_s: float = BROKER_TIMEOUT_S) -> CheckResult:
    """Connect to the broker Celery would publish to (``connection_for_write``)."""
    celery_app = app or current_app

    def body() -> tuple[bool, str, dict[str, Any]]:
        timeouts = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
        with celery_app.connection_for_write(transport_options=timeouts) as conn:
            scheme = conn.transport.driver_type
            if scheme == "filesystem":
                return _check_filesystem_broker(conn)
            if scheme == "memory":
                return True, "in-memory broker (single process only)", {}
            where = _public_address(conn)
            try:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)
            except (BrokerOperationalError, OSError, *conn.connection_errors, *conn.channel_errors) as error:
                return False, f"{where} unreachable: {_without_password(_one_line(error), conn)}", {}
            return True, f"{where} reachable", {}

    return _timed(body)


def _public_address(conn: Connection) -> str:
    """scheme://host:port/vhost: enough to tell which broker, never the credentials."""
    vhost = (conn.virtual_host or "").strip("/")
    return f"{conn.transport.driver_type}://{conn.hostname}:{conn.port or conn.transport.default_port}/{vhost}"


def _without_password(text: str, conn: Connection) -> str:
    return text.replace(conn.password, "**") if conn.password else text


def _check_filesystem_broker(conn: Connection) -> tuple[bool, str, dict[str, Any]]:
    options = conn.transport_options
    folders = {options.get(key) for key in ("data_folder_in", "data_folder_out", "control_folder")} - {None}
    if options.get("store_processed") and options.get("processed_folder"):
        folders.add(options["processed_folder"])
    if not folders:
        return False, "filesystem broker without data folders (CELERY_BROKER_TRANSPORT_OPTIONS)", {}
    problems = []
    for folder in sorted(folders):
        path = Path(folder)
        if not path.is_dir():
            problems.append(f"{path} is missing")
        elif not os.access(path, os.W_OK | os.X_OK):
            problems.append(f"{path} is not writable")
    if problems:
        return False, "filesystem broker: " + "; ".join(problems), {}
    return True, f"filesystem broker: {len(folders)} folder(s) writable", {}


# --- beat -------------------------------------------------------------------------------------

def check_beat(*, stale_after_s: int | None = None) -> CheckResult:
    def body() -> tuple[bool, str, dict[str, Any]]:
        limit = stale_after_s or _setting_seconds("WORKFLOW_BEAT_STALE_SECONDS", default=DEFAULT_BEAT_STALE_SECONDS)
        heartbeat = SchedulerHeartbeat.objects.filter(pk=1).first()
        if heartbeat is None:
            return False, "beat has never ticked (no heartbeat recorded): is `celery -A campaign beat` running?", {
                "last_tick_at": None, "age_s": None, "limit_s": limit,
            }
        age_s = max(0.0, (timezone.now() - heartbeat.beat_at).total_seconds())
        beats = beat_leader.cluster()
        details = {
            "last_tick_at": heartbeat.beat_at.isoformat(), "age_s": round(age_s, 1), "limit_s": limit,
            "leader": beats.leader, "leader_since": _iso(beats.leader_since), "lease_until": _iso(beats.lease_until),
            "leadership_changes": beats.leadership_changes,
            "standbys": [{"name": member.name, "heartbeat_at": member.heartbeat_at.isoformat()} for member in beats.standbys],
        }
        if age_s > limit:
            return False, (
                f"beat last ticked at {heartbeat.beat_at.isoformat()}, {_duration(age_s)} ago "
                f"(limit {limit} s): is `celery -A campaign beat` running?"
            ), details
        standbys = len(beats.standbys)
        return True, (
            f"beat ticked {_duration(age_s)} ago; leader {beats.leader or '(none: the lease just expired)'}, "
            f"{standbys} standby{'' if standbys == 1 else 's'}"
        ), details

    return _timed(body)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


# --- schedule drift ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Drift:
    workflow: str
    problems: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"workflow": self.workflow, "problems": self.problems}


def drifted_workflows() -> list[Drift]:
    """The workflows whose schedule is missing, disabled while started, enabled while paused or
    stopped, sends another task or has no crontab; on-demand workflows never drift."""
    workflows = Workflow.objects.select_related("periodic_task").order_by("id")
    return [Drift(workflow.id, problems) for workflow in workflows if (problems := schedules.drift_of(workflow))]


def check_schedules() -> CheckResult:
    def body() -> tuple[bool, str, dict[str, Any]]:
        drift = drifted_workflows()
        details = {"drift": [item.as_json() for item in drift]}
        if drift:
            listed = "; ".join(f"{item.workflow} ({', '.join(item.problems)})" for item in drift)
            message = f"{len(drift)} workflow schedule(s) drifted: {listed}. Repair with `manage.py workflow repair`."
            return False, message, details
        return True, "every scheduled workflow has its schedule", details

    return _timed(body)


# --- overdue workflows ------------------------------------------------------------------------

@dataclass(frozen=True)
class Overdue:
    workflow: str
    reason: str
    due_at: datetime | None
    late_s: float | None
    last_run_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "reason": self.reason,
            "due_at": self.due_at.isoformat() if self.due_at else None,
            "late_s": round(self.late_s) if self.late_s is not None else None,
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
        }


def overdue_workflows(*, grace_s: int, now: datetime | None = None) -> list[Overdue]:
    """Started workflows whose schedule should have fired more than ``grace_s`` seconds ago.

    The reference is ``last_run_at`` (when beat last sent the task), or, for a schedule beat has
    never fired, when the schedule was last changed: beat counts from there too
    (django-celery-beat's ``ModelEntry``). A disabled schedule never fires: the ``schedules`` check
    reports it, not this one.
    """
    now = now or timezone.now()
    workflows = (Workflow.objects.filter(state=WorkflowState.STARTED, periodic_task__enabled=True)
                 .select_related("periodic_task__crontab", "periodic_task__interval",
                                 "periodic_task__solar", "periodic_task__clocked")
                 .order_by("id"))
    overdue = []
    for workflow in workflows:
        task = workflow.periodic_task
        due_at = _next_due_at(task, now=now)
        if due_at is not None and (now - due_at).total_seconds() > grace_s:
            overdue.append(Overdue(workflow.id, "scheduled run not sent", due_at, (now - due_at).total_seconds(),
                                   task.last_run_at))
    return overdue


def _next_due_at(task: PeriodicTask, *, now: datetime) -> datetime | None:
    if task.start_time is not None and task.start_time > now:
        return None
    if task.scheduler is None:
        return None
    schedule = task.schedule
    reference = task.last_run_at or task.date_changed
    tz = getattr(schedule, "tz", None)
    if tz is not None:
        reference = reference.astimezone(tz)
    # remaining_estimate is measured from the schedule's own clock (timezone.now, time-machine aware).
    return now + schedule.remaining_estimate(reference)


def check_workflows(*, grace_s: int | None = None) -> CheckResult:
    def body() -> tuple[bool, str, dict[str, Any]]:
        grace = grace_s or _setting_seconds("WORKFLOW_OVERDUE_GRACE_SECONDS", default=DEFAULT_OVERDUE_GRACE_SECONDS)
        overdue = overdue_workflows(grace_s=grace)
        details = {"overdue": [item.as_json() for item in overdue], "grace_s": grace}
        if overdue:
            names = ", ".join(item.workflow for item in overdue)
            return False, f"{len(overdue)} workflow(s) overdue: {names}", details
        return True, "no started workflow is overdue", details

    return _timed(body)

