"""What the instance reports, computed from the logs: daily delivery aggregates, the KPIs shared
with the analytics service and where that sharing stands, PDF reports with their shares and
sendings, and the billing activity report.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from campaign.models.codes import Channel
from campaign.models.deliveries import Campaign, Delivery


class DeliveryAggregate(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """Per day, delivery and channel counters (reportingAggregates); the source of reports and
    KPI sharing."""

    day = models.DateField("day")
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="aggregates", verbose_name="delivery")
    channel = models.CharField("channel", max_length=8, choices=Channel.choices)
    sent = models.PositiveIntegerField("sent", default=0)
    delivered = models.PositiveIntegerField("delivered", default=0)
    bounces = models.PositiveIntegerField("bounces", default=0)
    opens = models.PositiveIntegerField("opens", default=0)
    unique_opens = models.PositiveIntegerField("unique opens", default=0)
    clicks = models.PositiveIntegerField("clicks", default=0)
    unique_clicks = models.PositiveIntegerField("unique clicks", default=0)
    unsubscribes = models.PositiveIntegerField("unsubscribes", default=0)
    updated_at = models.DateTimeField("updated", default=timezone.now, db_index=True)
    # Added with the platform's full indicator table (db_default: rows written by raw SQL get zeros).
    # On the send day, like sent: failed messages by kind.
    hard_bounces = models.PositiveIntegerField("hard bounces", default=0, db_default=0,
                                               help_text="Sent that day: status 2 and failure type 2.")
    soft_bounces = models.PositiveIntegerField("soft bounce", default=0, db_default=0,
                                               help_text="Sent that day: status 2 and failure type 1.")
    on_denylist = models.PositiveIntegerField("on denylist", default=0, db_default=0,
                                              help_text="Sent that day: status 2, failure reason 8, failure type 2.")
    rejected = models.PositiveIntegerField("rejected", default=0, db_default=0,
                                           help_text="Sent that day: status 2, failure reason 20, failure type 2.")
    quarantine = models.PositiveIntegerField("quarantine", default=0, db_default=0,
                                             help_text="Sent that day: status 2 and the address in quarantine.")
    # On the tracking day, like opens.
    mirror_pages = models.PositiveIntegerField("mirror page", default=0, db_default=0, help_text="Rows of url type 6.")
    impressions = models.PositiveIntegerField("impressions", default=0, db_default=0,
                                              help_text="Push: rows of url type 7.")
    # The send-day cohort: what the recipients of the messages delivered that day did, whenever
    # they did it; the per-day rates of the KPI page and reports divide these by ``delivered``.
    cohort_opens = models.PositiveIntegerField(
        "open (cohort)", default=0, db_default=0,
        help_text="Delivered that day: the open formula over their tracking rows (push: their rows of url type 2).",
    )
    cohort_unique_opens = models.PositiveIntegerField("unique opens (cohort)", default=0, db_default=0,
                                                      help_text="Delivered that day and opened (unique opens).")
    cohort_clicks = models.PositiveIntegerField("click (cohort)", default=0, db_default=0,
                                                help_text="Delivered that day: their rows of url type 1, 10 or 11.")
    cohort_unique_clicks = models.PositiveIntegerField("unique clicks (cohort)", default=0, db_default=0,
                                                       help_text="Delivered that day and clicked.")
    cohort_unsubscribes = models.PositiveIntegerField("unsubscribed (cohort)", default=0, db_default=0,
                                                      help_text="Delivered that day and unsubscribed (url type 3).")
    cohort_mirror_pages = models.PositiveIntegerField("mirror page viewers (cohort)", default=0, db_default=0,
                                                      help_text="Delivered that day and viewed the mirror page.")

    class Meta:
        ordering = ["-day", "delivery"]
        constraints = [models.UniqueConstraint(fields=["day", "delivery", "channel"], name="aggregate_day_delivery_uniq")]
        indexes = [models.Index(fields=["day"], name="aggregate_day_idx")]


class SharedKpi(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """What the analytics service holds for one day and email delivery, as far as this instance
    told it: the sum of the increments it acknowledged (kpiSharing), or the totals it was brought
    to (kpiReconciliation). The service adds what it receives, so the next push sends the
    aggregate minus this row, never the aggregate itself. Counters use the protocol's names and
    may not match DeliveryAggregate while a change is waiting to be shared."""

    day = models.DateField("day")
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="shared_kpis", verbose_name="delivery")
    sent = models.IntegerField("sent", default=0)
    delivered = models.IntegerField("delivered", default=0)
    opened = models.IntegerField("opened", default=0)
    unique_opens = models.IntegerField("unique opens", default=0)
    clicked = models.IntegerField("clicked", default=0)
    unique_clicks = models.IntegerField("unique clicks", default=0)
    unsubscribed = models.IntegerField("unsubscribed", default=0)
    bounces = models.IntegerField("bounces", default=0)
    updated_at = models.DateTimeField("updated", auto_now=True,
                                      help_text="When the service last acknowledged a change of this row.")

    class Meta:
        ordering = ["-day", "delivery"]
        verbose_name = "shared KPI row"
        constraints = [models.UniqueConstraint(fields=["day", "delivery"], name="sharedkpi_day_delivery_uniq")]


class KpiShareState(models.Model):
    """Where the sharing of one channel's KPIs with the analytics service stands (only email is
    shared): the watermark of the aggregate rows whose changes the service acknowledged, and the
    **pending** batch, saved before it is sent and kept until it is acknowledged. Whoever runs next
    (kpiSharing or kpiReconciliation) resends exactly that batch, same id and rows, which the
    service applies at most once. It sits next to the SharedKpi ledger because an acknowledgement
    moves both in one transaction: the batch goes into the ledger, the watermark moves past its
    rows and the pending batch is cleared."""

    channel = models.CharField(
        "channel", max_length=8, choices=Channel.choices, default=Channel.EMAIL, unique=True,
        help_text="The channel whose DeliveryAggregate rows are shared.",
    )
    watermark_updated_at = models.DateTimeField(
        "watermark (updated)", null=True, blank=True,
        help_text="updated_at of the last aggregate row whose change the service acknowledged; empty until the first.",
    )
    watermark_aggregate_id = models.BigIntegerField(
        "watermark (aggregate id)", null=True, blank=True,
        help_text="The id of that aggregate row: rows are read in (updated, id) order.",
    )
    pending_batch_id = models.CharField(
        "pending batch", max_length=64, blank=True, default="",
        help_text="Content-derived id of the batch saved to be sent and not acknowledged yet; empty when none.",
    )
    pending_rows = models.JSONField(
        "pending rows", default=list, blank=True,
        help_text="The pending batch's rows in the protocol's wire format: a resend sends exactly these.",
    )
    pending_watermark_updated_at = models.DateTimeField(
        "pending watermark (updated)", null=True, blank=True,
        help_text="Where the watermark moves once the pending batch is acknowledged (updated_at of its last source row).",
    )
    pending_watermark_aggregate_id = models.BigIntegerField(
        "pending watermark (aggregate id)", null=True, blank=True, help_text="The id of that source row.",
    )
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["channel"]
        verbose_name = "KPI sharing state"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(watermark_updated_at__isnull=True, watermark_aggregate_id__isnull=True)
                | models.Q(watermark_updated_at__isnull=False, watermark_aggregate_id__isnull=False),
                name="kpisharestate_watermark_whole",
            ),
            models.CheckConstraint(
                condition=models.Q(pending_batch_id="", pending_watermark_updated_at__isnull=True,
                                   pending_watermark_aggregate_id__isnull=True)
                | (~models.Q(pending_batch_id="") & models.Q(pending_watermark_updated_at__isnull=False,
                                                             pending_watermark_aggregate_id__isnull=False)),
                name="kpisharestate_pending_whole",
            ),
        ]

    def __str__(self) -> str:
        pending = f"batch {self.pending_batch_id[:12]}… pending" if self.pending_batch_id else "nothing pending"
        return f"{self.get_channel_display()} KPI sharing: {pending}"

    @property
    def watermark(self) -> tuple[datetime, int] | None:
        """(updated_at, id) of the last acknowledged aggregate row, or None."""
        if self.watermark_updated_at is None:
            return None
        return self.watermark_updated_at, self.watermark_aggregate_id

    @property
    def pending_watermark(self) -> tuple[datetime, int] | None:
        """(updated_at, id) of the pending batch's last source row, or None."""
        if self.pending_watermark_updated_at is None:
            return None
        return self.pending_watermark_updated_at, self.pending_watermark_aggregate_id


class Report(models.Model):
    """What a report shows; rendered to PDF by reportSendingNow."""

    class Kind(models.TextChoices):
        DELIVERY_KPIS = "delivery_kpis", "Delivery KPIs over a period"
        CAMPAIGN = "campaign", "A campaign's deliveries"
        DAILY_AGGREGATES = "daily_aggregates", "Daily aggregates"

    label = models.CharField("label", max_length=200)
    kind = models.CharField("kind", max_length=32, choices=Kind.choices, default=Kind.DELIVERY_KPIS)
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, null=True, blank=True, related_name="reports",
                                 verbose_name="campaign")
    period_days = models.PositiveSmallIntegerField(
        "period (days)", default=30, validators=[MinValueValidator(1), MaxValueValidator(3660)],
        help_text="The report covers this many days up to its due time.",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)

    class Meta:
        ordering = ["label"]

    def __str__(self) -> str:
        return self.label

    def clean(self) -> None:
        if self.kind == self.Kind.CAMPAIGN and self.campaign_id is None:
            raise ValidationError({"campaign": "A campaign report needs a campaign."})


class ReportShare(models.Model):
    """Who receives a report, and when: now, or on a recurring schedule kept as its own
    django-celery-beat entry."""

    class Recurrence(models.TextChoices):
        NOW = "now", "Send now"
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly"
        MONTHLY_DAY = "monthly_day", "Monthly, on a day of the month"
        MONTHLY_WEEKDAY = "monthly_weekday", "Monthly, on a weekday"
        YEARLY = "yearly", "Yearly"

    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="shares", verbose_name="report")
    recurrence = models.CharField("recurrence", max_length=16, choices=Recurrence.choices, default=Recurrence.NOW)
    send_time = models.TimeField("time", null=True, blank=True)
    time_zone = models.CharField("time zone", max_length=64, default="UTC")
    day_of_week = models.PositiveSmallIntegerField(
        "day of week", null=True, blank=True, validators=[MaxValueValidator(6)], help_text="0 = Monday.",
    )
    day_of_month = models.PositiveSmallIntegerField("day of month", null=True, blank=True,
                                                    validators=[MinValueValidator(1), MaxValueValidator(31)])
    week_of_month = models.PositiveSmallIntegerField(
        "week of month", null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)], help_text="5 = last.",
    )
    month = models.PositiveSmallIntegerField("month", null=True, blank=True,
                                             validators=[MinValueValidator(1), MaxValueValidator(12)])
    start_date = models.DateField("start date", null=True, blank=True)
    end_date = models.DateField("end date", null=True, blank=True)
    recipients = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="report_shares", verbose_name="recipients")
    enabled = models.BooleanField("enabled", default=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        verbose_name="schedule",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.report} ({self.get_recurrence_display()})"

    def clean(self) -> None:
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValidationError({"end_date": "The end date must not be before the start date."})


class ReportSend(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """One sending of a share for one due time; unique, so it is never sent twice."""

    class Status(models.TextChoices):
        RENDERING = "rendering", "Rendering"
        EMAILING = "emailing", "Emailing"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    share = models.ForeignKey(ReportShare, on_delete=models.CASCADE, related_name="sends", verbose_name="share")
    due_at = models.DateTimeField("due")
    status = models.CharField("status", max_length=16, choices=Status.choices, default=Status.RENDERING)
    claimed_by_run = models.PositiveBigIntegerField(
        "claimed by run", null=True, blank=True,
        help_text="The reportSendingNow run that rendered (and emailed) it; empty when sent outside a run.",
    )
    pdf_path = models.CharField("PDF file", max_length=500, blank=True)
    pdf_bytes = models.PositiveIntegerField("PDF size (bytes)", default=0)
    sent_at = models.DateTimeField("sent", null=True, blank=True)
    error = models.TextField("error", blank=True)

    class Meta:
        ordering = ["-due_at"]
        constraints = [models.UniqueConstraint(fields=["share", "due_at"], name="reportsend_share_due_uniq")]


class CustomerMetrics(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """The billing activity report of one period (one row per period; a rerun updates it)."""

    period_start = models.DateField("period start")
    period_end = models.DateField("period end")
    deliveries = models.PositiveIntegerField("deliveries", default=0)
    messages_by_channel = models.JSONField("messages per channel", default=dict, blank=True)
    profiles = models.PositiveIntegerField("profiles", default=0)
    active_profiles = models.PositiveIntegerField("active profiles (12 months)", default=0)
    database_size_bytes = models.BigIntegerField("database size (bytes)", default=0)
    email_deliveries = models.JSONField("email deliveries", default=list, blank=True)
    computed_at = models.DateTimeField("computed", default=timezone.now)
    active_transactional_recipients = models.PositiveIntegerField(
        "active transactional recipients (12 months)", default=0,
        help_text="Distinct addresses (email address or phone number) that received a transactional message (a log "
                  "without a profile) in the 12 months ending with the period; counted apart from the profiles.",
    )
    active_by_channel = models.JSONField(
        "active per channel (12 months)", default=dict, blank=True,
        help_text='{channel: {"profiles", "transactional_recipients"}}. A profile reached on several channels counts '
                  "on each of their lines and once in the totals.",
    )

    class Meta:
        ordering = ["-period_start"]
        verbose_name_plural = "customer metrics"
        constraints = [models.UniqueConstraint(fields=["period_start", "period_end"], name="customermetrics_period_uniq")]
