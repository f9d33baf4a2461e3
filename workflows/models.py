"""The engine's state: workflows, their runs and activities, the journal and the audit trail.

A Workflow row is the unit of mutual exclusion: a run owns its workflow while it holds the lease
(``lease_holder`` = the run's id, ``lease_until`` in the future), taken and renewed by conditional
UPDATEs (see :mod:`workflows.leases`). The row also keeps the incremental cursors, which each batch
advances in the same transaction as its effects.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone


class WorkflowState(models.TextChoices):
    STARTED = "started", "Started"
    PAUSED = "paused", "Paused"
    STOPPED = "stopped", "Stopped"


class ActivityMode(models.TextChoices):
    NORMAL = "normal", "Normal"
    SUSPENDED = "suspended", "Suspended (runs halt before it)"
    DISABLED = "disabled", "Disabled (skipped)"


class Trigger(models.TextChoices):
    SCHEDULE = "schedule", "Schedule"
    ADMIN = "admin", "Admin"
    CLI = "cli", "Command line"
    SHELL = "shell", "Shell"
    EVENT = "event", "Event"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    STOPPED = "stopped", "Stopped"
    SKIPPED = "skipped", "Skipped"


#: A run in one of these statuses will never change again.
FINAL_RUN_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED, RunStatus.SKIPPED)


class ActivityStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"
    PAUSED = "paused", "Paused"
    STOPPED = "stopped", "Stopped"


class Workflow(models.Model):
    """A technical workflow: its definition lives in code, its state and settings here."""

    id = models.CharField("id", max_length=64, primary_key=True)
    label = models.CharField("label", max_length=200)
    description = models.TextField("description", blank=True)
    state = models.CharField("state", max_length=16, choices=WorkflowState.choices, default=WorkflowState.STARTED)
    properties = models.JSONField(
        "properties", default=dict, blank=True, help_text="Values that differ from the definition's defaults.",
    )
    activity_modes = models.JSONField(
        "activity modes", default=dict, blank=True, help_text="Activity name → normal, suspended or disabled.",
    )
    history_days = models.PositiveSmallIntegerField(
        "history (days)", default=30, validators=[MinValueValidator(1), MaxValueValidator(3650)],
        help_text="Runs and journal entries older than this are purged by the cleanup workflow.",
    )
    error_threshold = models.PositiveSmallIntegerField(
        "consecutive-error threshold", default=3, validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="After this many failed runs in a row the workflow is paused and its supervisors emailed.",
    )
    supervisors = models.TextField(
        "supervisors", blank=True, help_text="Email addresses notified of failures, one per line or comma-separated.",
    )
    cursors = models.JSONField("cursors", default=dict, blank=True, help_text="Where each incremental scan resumes.")
    consecutive_errors = models.PositiveIntegerField("consecutive errors", default=0)
    lease_holder = models.BigIntegerField("lease holder (run id)", null=True, blank=True)
    halt_run = models.BigIntegerField(
        "run asked to stop", null=True, blank=True,
        help_text="Set by stop/restart: that run halts as stopped at its next batch boundary, even if the "
                  "workflow was started again meanwhile.",
    )
    lease_until = models.DateTimeField("lease until", null=True, blank=True)
    lease_token = models.BigIntegerField(
        "lease token", default=0,
        help_text="Grows by one at each claim; every commit of a run checks it, so a run that lost its lease "
                  "(frozen, partitioned, slow) commits nothing.",
    )
    paused_at = models.DateTimeField("paused since", null=True, blank=True)
    paused_reported_at = models.DateTimeField("long pause last reported", null=True, blank=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", on_delete=models.SET_NULL, null=True, blank=True, related_name="workflow",
        verbose_name="schedule",
    )
    last_schedule = models.JSONField(
        "last known schedule", null=True, blank=True, editable=False,
        help_text='{"crontab", "timezone"} of the schedule when last seen (created, edited, migrated, repaired): '
                  "what a repair recreates if the PeriodicTask is deleted.",
    )
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["id"]
        permissions = [("operate_workflow", "Can start, pause, stop and run workflows")]

    def __str__(self) -> str:
        return self.id

    @property
    def supervisor_emails(self) -> list[str]:
        return [address for address in self.supervisors.replace(",", "\n").split() if address]


class WorkflowRun(models.Model):
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="runs", verbose_name="workflow")
    trigger = models.CharField("trigger", max_length=16, choices=Trigger.choices)
    requested_by = models.CharField("requested by", max_length=150, blank=True)
    celery_task_id = models.CharField("Celery task id", max_length=64, blank=True, db_index=True)
    status = models.CharField("status", max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    reason = models.TextField("reason", blank=True, help_text="Why the run was skipped, failed, paused or stopped.")
    halted_activity = models.CharField("halted at", max_length=100, blank=True)
    overrides = models.JSONField("property overrides", default=dict, blank=True)
    counters = models.JSONField("counters", default=dict, blank=True)
    progress_done = models.BigIntegerField("rows done", default=0)
    progress_total = models.BigIntegerField("rows estimated", null=True, blank=True)
    attempt = models.PositiveSmallIntegerField("attempt", default=1)
    takeover_of = models.BigIntegerField(
        "takes over run", null=True, blank=True,
        help_text="The abandoned run (its worker died) that this run does again; such a run is re-queued once.",
    )
    created_at = models.DateTimeField("created", default=timezone.now, db_index=True)
    started_at = models.DateTimeField("started", null=True, blank=True)
    finished_at = models.DateTimeField("finished", null=True, blank=True, db_index=True)
    duration_s = models.FloatField("duration (s)", null=True, blank=True)
    slot = models.DateTimeField(
        "schedule slot", null=True, blank=True,
        help_text="The scheduled time beat sent this run for. A workflow has at most one run per slot, so a slot "
                  "sent twice (by a beat that lost its lease in the middle of sending) runs once.",
    )

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["workflow", "-id"], name="run_workflow_idx"),
                   models.Index(fields=["workflow", "status"], name="run_workflow_status_idx")]
        constraints = [models.UniqueConstraint(fields=["workflow", "slot"], condition=models.Q(slot__isnull=False),
                                               name="run_one_per_slot")]

    def __str__(self) -> str:
        return f"{self.workflow_id} run #{self.pk} ({self.status})"


class ActivityRun(models.Model):
    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="activities", verbose_name="run")
    position = models.PositiveSmallIntegerField("position")
    name = models.CharField("activity", max_length=100)
    status = models.CharField("status", max_length=16, choices=ActivityStatus.choices, default=ActivityStatus.RUNNING)
    counters = models.JSONField("counters", default=dict, blank=True)
    message = models.TextField("message", blank=True)
    started_at = models.DateTimeField("started", default=timezone.now)
    finished_at = models.DateTimeField("finished", null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [models.UniqueConstraint(fields=["run", "position"], name="activityrun_position_uniq")]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class LogLevel(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    ERROR = "error", "Error"


class WorkflowLog(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """The journal: what each run did, in words an operator can act on."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="journal", verbose_name="workflow")
    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, null=True, blank=True, related_name="journal",
                            verbose_name="run")
    activity = models.CharField("activity", max_length=100, blank=True)
    level = models.CharField("level", max_length=8, choices=LogLevel.choices, default=LogLevel.INFO)
    message = models.TextField("message")
    logged_at = models.DateTimeField("time", default=timezone.now)

    class Meta:
        ordering = ["-id"]
        verbose_name = "journal entry"
        verbose_name_plural = "journal entries"
        indexes = [models.Index(fields=["workflow", "logged_at"], name="journal_workflow_time_idx")]


class WorkflowAudit(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """Who did which command or edit on which workflow, with the edited fields before and after."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="audit", verbose_name="workflow")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    actor = models.CharField("by", max_length=150, help_text="User name, or 'system' for the engine's own decisions.")
    action = models.CharField("action", max_length=32)
    changes = models.JSONField("changes", default=dict, blank=True, help_text="field → [before, after]")
    note = models.TextField("note", blank=True)
    at = models.DateTimeField("time", default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "audit trail entry"
        verbose_name_plural = "audit trail entries"


class RunTally(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """What the runs cleanup purged had counted, per workflow: ``/metrics`` adds it to the runs
    still recorded, so its counters never go down when old runs are removed (Prometheus would read
    a decrease as a counter reset). Written in the transaction that deletes the runs."""

    workflow = models.OneToOneField(Workflow, on_delete=models.CASCADE, primary_key=True, related_name="tally")
    totals = models.JSONField("totals", default=dict, help_text="The purged runs' aggregates, as /metrics computes them.")
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        verbose_name = "tally of purged runs"
        verbose_name_plural = "tallies of purged runs"


class SchedulerHeartbeat(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """Written by beat at each tick (see :mod:`workflows.scheduler`) so /healthz can tell whether
    the one beat process is alive."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    beat_at = models.DateTimeField("last tick")
    hostname = models.CharField("host", max_length=200, blank=True)


class BeatLease(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """Which beat process dispatches: any number may run, the holder of this lease alone sends the
    scheduled messages (see :mod:`workflows.beat_leader`). One row."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    holder = models.CharField("leader", max_length=200, blank=True, help_text="The leading beat process, as host:pid.")
    token = models.PositiveBigIntegerField(
        "token", default=0, help_text="Grows by one each time another process becomes leader: the number of leadership changes.",
    )
    lease_until = models.DateTimeField("lease until", null=True, blank=True)
    acquired_at = models.DateTimeField("leader since", null=True, blank=True)

    class Meta:
        verbose_name = "beat lease"


class BeatProcess(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """A beat process seen recently, leader or standby, with its last heartbeat."""

    name = models.CharField("process", max_length=200, primary_key=True, help_text="host:pid")
    hostname = models.CharField("host", max_length=200)
    started_at = models.DateTimeField("started")
    heartbeat_at = models.DateTimeField("last heartbeat")

    class Meta:
        ordering = ["name"]
        verbose_name = "beat process"
        verbose_name_plural = "beat processes"
