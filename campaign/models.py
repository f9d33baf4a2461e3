"""The domain of a marketing-campaign platform, as the technical workflows see it.

Data flows one way: the sending and tracking sides append raw rows (SendingFeedback, TrackingHit);
updateDeliveryExecInfo consolidates them into DeliveryLog and TrackingLog; indicators on Delivery
and DeliveryAggregate rows are computed from those logs; reports and KPI exports read aggregates.

The numeric codes (log status, failure types and reasons, tracking URL types) are the platform's
published ones, so that KPIs can be checked against its formulas.

Log tables grow without bound and are purged on retention rules, so references *from* logs are
foreign keys without a database constraint (``db_constraint=False``): purging a delivery log must
not delete, block or break the tracking rows that point to it, which outlive it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from campaign.integrations.accounts import destination_error, token_env_error


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    PUSH = "push", "Push notification"


class LogStatus(models.IntegerChoices):
    """DeliveryLog.status, the platform's broadlog codes."""

    IGNORED = 0, "Ignored"
    SENT = 1, "Sent"
    FAILED = 2, "Failed"
    PENDING = 6, "Pending"
    CANCELLED = 7, "Cancelled"


#: Statuses after which a log never changes again.
FINAL_LOG_STATUSES = (LogStatus.IGNORED, LogStatus.SENT, LogStatus.FAILED, LogStatus.CANCELLED)


class FailureType(models.IntegerChoices):
    NONE = 0, "None"
    SOFT = 1, "Soft"
    HARD = 2, "Hard"
    IGNORED = 3, "Ignored"


class FailureReason(models.IntegerChoices):
    NONE = 0, "None / not defined"
    USER_UNKNOWN = 1, "User unknown"
    INVALID_DOMAIN = 2, "Invalid domain"
    UNREACHABLE = 3, "Unreachable"
    ACCOUNT_DISABLED = 4, "Account disabled"
    MAILBOX_FULL = 5, "Mailbox full"
    NOT_CONNECTED = 6, "Not connected"
    ON_DENYLIST = 8, "On denylist"
    REFUSED = 20, "Refused / rejected"


class UrlType(models.IntegerChoices):
    """TrackingHit.url_type and TrackingLog.url_type. The platform's indicator formulas also count
    codes 10 and 11 as clicks without naming them; 7 is the code of a push impression."""

    CLICK = 1, "Click"
    OPEN = 2, "Open"
    OPT_OUT = 3, "Opt-out"
    MIRROR_PAGE = 6, "Mirror page"
    IMPRESSION = 7, "Impression (push)"
    OTHER_CLICK_10 = 10, "Click (type 10)"
    OTHER_CLICK_11 = 11, "Click (type 11)"


class Profile(models.Model):
    """A recipient. ``blocklisted_*`` are set by opt-outs and respected by every delivery."""

    email = models.EmailField("email", blank=True, db_index=True)
    phone = models.CharField("phone", max_length=32, blank=True, db_index=True)
    first_name = models.CharField("first name", max_length=100, blank=True)
    last_name = models.CharField("last name", max_length=100, blank=True)
    visitor_id = models.CharField(
        "visitor id", max_length=64, null=True, blank=True, unique=True,
        help_text="Anonymous id set by the web/app tracking, used to match shared audiences.",
    )
    declared_id = models.CharField(
        "declared id", max_length=64, null=True, blank=True, unique=True,
        help_text="Id known to the customer's own systems (CRM id), used to match shared audiences.",
    )
    declared_id_sha256 = models.CharField(  # noqa: DJ001 - NULL without a declared id: no hash to match
        "declared id (SHA-256)", max_length=64, null=True, blank=True, editable=False,
        help_text="Lower-case hex SHA-256 of the declared id, to match audiences that share hashed ids. "
                  "Kept by save(); importSharedAudience fills it for profiles written in bulk.",
    )
    blocklisted_email = models.BooleanField("no longer contact by email", default=False)
    blocklisted_sms = models.BooleanField("no longer contact by SMS", default=False)
    blocklisted_push = models.BooleanField("no longer contact by push", default=False)
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)
    updated_at = models.DateTimeField("updated", auto_now=True, db_index=True)

    class Meta:
        ordering = ["id"]
        # One plain btree (db_index on a CharField would add a second, LIKE-only one on PostgreSQL).
        indexes = [models.Index(fields=["declared_id_sha256"], name="profile_declared_sha256_idx")]

    def __str__(self) -> str:
        return self.email or self.phone or f"profile {self.pk}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A derived column, kept with its source so an index can match hashed audience ids.
        self.declared_id_sha256 = declared_id_hash(self.declared_id)
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "declared_id" in update_fields and "declared_id_sha256" not in update_fields:
            kwargs["update_fields"] = [*update_fields, "declared_id_sha256"]
        super().save(*args, **kwargs)


def declared_id_hash(declared_id: str | None) -> str | None:
    """How an audience service shares a declared id when it hashes it: the SHA-256 of the id's
    UTF-8 bytes, as is (no trimming, no case folding), in lower-case hexadecimal."""
    if not declared_id:
        return None
    return hashlib.sha256(declared_id.encode("utf-8")).hexdigest()


class Campaign(models.Model):
    label = models.CharField("label", max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="campaigns", verbose_name="owner",
    )
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.label


class ABTest(models.Model):
    """An A/B test: the test delivery's logs carry a variant; the winner goes to the remainder.

    The winner delivery is a one-to-one, so a rerun can never create (or send) it twice.
    """

    class Criterion(models.TextChoices):
        OPEN_RATE = "open_rate", "Best open rate"
        CLICK_THROUGH_RATE = "click_through_rate", "Best click-through rate"
        UNSUBSCRIBE_RATE = "unsubscribe_rate", "Lowest unsubscribe rate"

    class WinnerSending(models.TextChoices):
        AUTOMATIC = "automatic", "Send the winner automatically"
        CONFIRM = "confirm", "Notify and wait for confirmation"

    class Status(models.TextChoices):
        TESTING = "testing", "Testing"
        AWAITING_CHOICE = "awaiting_choice", "Tie: waiting for a manual choice"
        AWAITING_CONFIRMATION = "awaiting_confirmation", "Winner found: waiting for confirmation"
        WINNER_SENT = "winner_sent", "Winner sent"
        CANCELLED = "cancelled", "Cancelled"

    label = models.CharField("label", max_length=200)
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="ab_tests", verbose_name="campaign")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="ab_tests", verbose_name="owner", help_text="Notified of ties and of winners to confirm.",
    )
    variant_count = models.PositiveSmallIntegerField(
        "variants", default=2, validators=[MinValueValidator(2), MaxValueValidator(3)],
        help_text="2 (A, B) or 3 (A, B, C).",
    )
    criterion = models.CharField("winner criterion", max_length=32, choices=Criterion.choices, default=Criterion.OPEN_RATE)
    test_duration = models.DurationField(
        "test duration", default=timedelta(days=1), help_text="At least 1 hour; the winner is chosen when it has elapsed.",
    )
    remainder_percent = models.PositiveSmallIntegerField(
        "remainder share (%)", default=80, validators=[MinValueValidator(1), MaxValueValidator(99)],
        help_text="Share of the target that receives the winner.",
    )
    winner_sending = models.CharField("winner sending", max_length=16, choices=WinnerSending.choices,
                                      default=WinnerSending.AUTOMATIC)
    status = models.CharField("status", max_length=32, choices=Status.choices, default=Status.TESTING, db_index=True)
    winner_variant = models.CharField("winner variant", max_length=1, blank=True, help_text="Set by hand or by abTesting.")
    winner_chosen_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        verbose_name="winner chosen by", help_text="Empty when abTesting chose the winner.",
    )
    winner_delivery = models.OneToOneField(
        "Delivery", on_delete=models.PROTECT, null=True, blank=True, related_name="won_ab_test",
        verbose_name="winner delivery",
    )
    decided_at = models.DateTimeField("decided", null=True, blank=True)
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)

    class Meta:
        ordering = ["-id"]
        verbose_name = "A/B test"

    def __str__(self) -> str:
        return self.label

    @property
    def variants(self) -> list[str]:
        return ["A", "B", "C"][: self.variant_count]

    def clean(self) -> None:
        if self.test_duration is not None and self.test_duration < timedelta(hours=1):
            raise ValidationError({"test_duration": "The test must last at least 1 hour."})
        if self.winner_variant and self.winner_variant not in self.variants:
            raise ValidationError({"winner_variant": f"Choose one of {', '.join(self.variants)}."})


class MessageTemplate(models.Model):
    """A transactional message template; the most recently published one per event type and
    channel is what updateEventsStatus routes events to."""

    label = models.CharField("label", max_length=200)
    event_type = models.CharField("event type", max_length=64)
    channel = models.CharField("channel", max_length=8, choices=Channel.choices, default=Channel.EMAIL)
    published = models.BooleanField("published", default=False)
    published_at = models.DateTimeField("published", null=True, blank=True)
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)

    class Meta:
        ordering = ["event_type", "channel", "-published_at"]
        indexes = [models.Index(fields=["event_type", "channel", "published", "published_at"], name="template_routing_idx")]

    def __str__(self) -> str:
        return f"{self.label} ({self.event_type}, {self.channel})"

    def clean(self) -> None:
        if self.published and not self.published_at:
            self.published_at = timezone.now()


class Delivery(models.Model):
    """One sending: a marketing delivery, the monthly execution delivery of a transactional
    template, or a proof. The indicator fields are recomputed by updateDeliveryIndicators."""

    class Kind(models.TextChoices):
        MARKETING = "marketing", "Marketing"
        TRANSACTIONAL = "transactional", "Transactional (execution delivery)"
        PROOF = "proof", "Proof"

    class State(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        PROVISIONAL = "provisional", "Provisional (in the forecast)"
        IN_PROGRESS = "in_progress", "In progress"
        FINISHED = "finished", "Finished"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    label = models.CharField("label", max_length=200)
    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries", verbose_name="campaign",
        help_text="Empty for transactional execution deliveries.",
    )
    channel = models.CharField("channel", max_length=8, choices=Channel.choices, default=Channel.EMAIL)
    kind = models.CharField("kind", max_length=16, choices=Kind.choices, default=Kind.MARKETING)
    state = models.CharField("state", max_length=16, choices=State.choices, default=State.DRAFT)
    priority = models.SmallIntegerField(
        "priority", default=0, help_text="Higher wins when the forecast excludes over-solicited profiles.",
    )
    template = models.ForeignKey(
        MessageTemplate, on_delete=models.PROTECT, null=True, blank=True, related_name="deliveries",
        verbose_name="template", help_text="For transactional execution deliveries.",
    )
    ab_test = models.ForeignKey(
        ABTest, on_delete=models.SET_NULL, null=True, blank=True, related_name="deliveries", verbose_name="A/B test",
    )
    scheduled_at = models.DateTimeField("scheduled", null=True, blank=True)
    validity_end = models.DateTimeField("validity end", null=True, blank=True,
                                        help_text="Pending messages are cancelled after it.")
    started_at = models.DateTimeField("started", null=True, blank=True)
    finished_at = models.DateTimeField("finished", null=True, blank=True)
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)
    updated_at = models.DateTimeField("updated", auto_now=True)

    # Indicators (updateDeliveryIndicators): the platform's indicator table, its labels and formulas.
    # Counts come from the logs ("status", "failure type", "failure reason") and the tracking rows
    # ("url type"); rates are percentages with two decimals. Email and SMS use the email table,
    # push deliveries the push table (where it differs, the help text says so).
    to_deliver = models.PositiveIntegerField("to deliver", default=0, help_text="count(status ≠ 0): logs not ignored.")
    sent = models.PositiveIntegerField("processed/sent", default=0, help_text="delivered + bounces")
    delivered = models.PositiveIntegerField("delivered", default=0, help_text="count(status = 1)")
    bounces = models.PositiveIntegerField("bounces + errors", default=0, help_text="count(status = 2)")
    hard_bounces = models.PositiveIntegerField("hard bounces", default=0,
                                               help_text="count(status = 2 and failure type = 2)")
    soft_bounces = models.PositiveIntegerField("soft bounce", default=0,
                                               help_text="count(status = 2 and failure type = 1)")
    bounces_by_reason = models.JSONField(
        "bounces by reason", default=dict, blank=True, help_text="Failed logs per failure reason code.",
    )
    opens = models.PositiveIntegerField(
        "open", default=0,
        help_text="count(url type 2) + unique(logs with url type 1, 2, 3, 6, 10 or 11) − unique(logs with url type 2): "
                  "every open-pixel hit, plus one implied open per recipient who interacted without the pixel. "
                  "Push: count(url type 2).",
    )
    unique_opens = models.PositiveIntegerField(
        "unique opens", default=0,
        help_text="unique(logs with url type 1, 2, 3, 6, 10 or 11): a click, an opt-out or a mirror-page view implies "
                  "an open. Push: unique(logs with url type 2).",
    )
    clicks = models.PositiveIntegerField("click", default=0, help_text="count(url type 1, 10 or 11)")
    unique_clicks = models.PositiveIntegerField("unique clicks", default=0, help_text="unique(logs with url type 1, 10 or 11)")
    unsubscribes = models.PositiveIntegerField("unsubscribe", default=0, help_text="count(url type 3)")
    mirror_pages = models.PositiveIntegerField("mirror page", default=0, help_text="count(url type 6)")
    delivered_rate = models.DecimalField("delivered rate (%)", max_digits=5, decimal_places=2, default=0,
                                         help_text="delivered / sent")
    bounce_rate = models.DecimalField("bounce + error rate (%)", max_digits=5, decimal_places=2, default=0,
                                      help_text="bounces / sent")
    open_rate = models.DecimalField(
        "open rate (%)", max_digits=8, decimal_places=2, default=0,
        help_text="open / delivered: repeated opens count, so it may exceed 100 %.",
    )
    click_through_rate = models.DecimalField(
        "click through rate (%)", max_digits=8, decimal_places=2, default=0,
        help_text="unique clicks / delivered. Push: clicks (interactions) / delivered, which may exceed 100 %.",
    )
    unsubscribe_rate = models.DecimalField("unsubscribe rate (%)", max_digits=8, decimal_places=2, default=0,
                                           help_text="unsubscribe / delivered")
    reactivity = models.DecimalField("reactivity (%)", max_digits=5, decimal_places=2, default=0,
                                     help_text="unique clicks / unique opens")
    indicators_updated_at = models.DateTimeField("indicators updated", null=True, blank=True)
    # The rest of the platform's tables (added later: db_default, so rows written by raw SQL get zeros).
    user_unknown = models.PositiveIntegerField("user unknown", default=0, db_default=0,
                                               help_text="count(status = 2 and failure reason = 1)")
    invalid_domain = models.PositiveIntegerField("invalid domain", default=0, db_default=0,
                                                 help_text="count(status = 2 and failure reason = 2)")
    unreachable = models.PositiveIntegerField("unreachable", default=0, db_default=0,
                                              help_text="count(status = 2 and failure reason = 3)")
    account_disabled = models.PositiveIntegerField("account disabled", default=0, db_default=0,
                                                   help_text="count(status = 2 and failure reason = 4)")
    mailbox_full = models.PositiveIntegerField("mailbox full", default=0, db_default=0,
                                               help_text="count(status = 2 and failure reason = 5)")
    not_connected = models.PositiveIntegerField("not connected", default=0, db_default=0,
                                                help_text="count(status = 2 and failure reason = 6)")
    on_denylist = models.PositiveIntegerField("on denylist", default=0, db_default=0,
                                              help_text="count(status = 2 and failure reason = 8 and failure type = 2)")
    refused = models.PositiveIntegerField("refused", default=0, db_default=0,
                                          help_text="count(status = 2 and failure reason = 20)")
    rejected = models.PositiveIntegerField("rejected", default=0, db_default=0,
                                           help_text="count(status = 2 and failure reason = 20 and failure type = 2)")
    quarantine = models.PositiveIntegerField(
        "quarantine", default=0, db_default=0,
        help_text="count(status = 2 and the address quarantined on the delivery's channel), when last recomputed.",
    )
    impressions = models.PositiveIntegerField("impressions", default=0, db_default=0,
                                              help_text="Push: count(url type 7).")
    unique_open_rate = models.DecimalField("unique open rate (%)", max_digits=5, decimal_places=2, default=0,
                                           db_default=0, help_text="unique opens / delivered")
    hard_bounce_rate = models.DecimalField("hard bounces rate (%)", max_digits=5, decimal_places=2, default=0,
                                           db_default=0, help_text="hard bounces / sent")
    soft_bounce_rate = models.DecimalField("soft bounce rate (%)", max_digits=5, decimal_places=2, default=0,
                                           db_default=0, help_text="soft bounce / sent")
    denylist_rate = models.DecimalField("denylist rate (%)", max_digits=5, decimal_places=2, default=0,
                                        db_default=0, help_text="on denylist / sent")
    quarantine_rate = models.DecimalField("quarantine rate (%)", max_digits=5, decimal_places=2, default=0,
                                          db_default=0, help_text="quarantine / sent")
    rejected_rate = models.DecimalField("rejected rate (%)", max_digits=5, decimal_places=2, default=0,
                                        db_default=0, help_text="rejected / sent")
    mirror_page_rate = models.DecimalField("mirror page rate (%)", max_digits=8, decimal_places=2, default=0,
                                           db_default=0, help_text="mirror page / delivered")

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["state", "scheduled_at"], name="delivery_state_sched_idx"),
            models.Index(fields=["template", "created_at"], name="delivery_template_idx"),
        ]

    def __str__(self) -> str:
        return self.label

    def clean(self) -> None:
        if self.validity_end and self.scheduled_at and self.validity_end < self.scheduled_at:
            raise ValidationError({"validity_end": "The validity must end after the scheduled time."})
        if self.kind == self.Kind.TRANSACTIONAL and self.template_id is None:
            raise ValidationError({"template": "A transactional execution delivery needs a template."})


class DeliveryLog(models.Model):
    """One message to one recipient (the platform's "broadlog")."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="logs", verbose_name="delivery")
    profile = models.ForeignKey(
        Profile, on_delete=models.SET_NULL, null=True, blank=True, related_name="delivery_logs",
        verbose_name="profile", help_text="Empty for transactional messages.",
    )
    address = models.CharField("address", max_length=255, help_text="Email address, phone number or device token.")
    variant = models.CharField("A/B variant", max_length=1, blank=True)
    event_id = models.BigIntegerField(
        "event", null=True, blank=True,
        help_text="Id of the transactional event (live or archived: archiving keeps the id).",
    )
    status = models.SmallIntegerField("status", choices=LogStatus.choices, default=LogStatus.PENDING)
    failure_type = models.SmallIntegerField("failure type", choices=FailureType.choices, default=FailureType.NONE)
    failure_reason = models.SmallIntegerField("failure reason", choices=FailureReason.choices, default=FailureReason.NONE)
    error_text = models.TextField("error text", blank=True, help_text="The raw bounce text.")
    created_at = models.DateTimeField("created", default=timezone.now)
    updated_at = models.DateTimeField("updated", default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["delivery", "status"], name="dlog_delivery_status_idx"),
            models.Index(fields=["status", "delivery"], name="dlog_status_delivery_idx"),
            models.Index(fields=["address"], name="dlog_address_idx"),
            models.Index(fields=["profile", "created_at"], name="dlog_profile_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.address} ({self.get_status_display()})"


class SendingFeedback(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """Raw, append-only feedback from the sending side; consolidated by updateDeliveryExecInfo
    (cursor on ``id``)."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        BOUNCE = "bounce", "Bounce"
        DEFERRED = "deferred", "Deferred"

    delivery_log = models.ForeignKey(
        DeliveryLog, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+", verbose_name="delivery log",
    )
    outcome = models.CharField("outcome", max_length=16, choices=Outcome.choices)
    error_text = models.TextField("raw error text", blank=True)
    received_at = models.DateTimeField("received", default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "sending feedback"


class TrackingHit(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """Raw, append-only hit from the tracking side; consolidated by updateDeliveryExecInfo
    (cursor on ``id``)."""

    delivery_log = models.ForeignKey(
        DeliveryLog, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+", verbose_name="delivery log",
    )
    url_type = models.SmallIntegerField("URL type", choices=UrlType.choices)
    url = models.URLField("URL", max_length=500, blank=True)
    user_agent = models.CharField("user agent", max_length=300, blank=True)
    hit_at = models.DateTimeField("hit", default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]


class TrackingLog(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """A consolidated open, click, opt-out or mirror-page view. Kept longer than the delivery log
    it points to, hence no database constraint on ``delivery_log``."""

    delivery_log = models.ForeignKey(
        DeliveryLog, on_delete=models.DO_NOTHING, db_constraint=False, related_name="tracking_logs",
        verbose_name="delivery log",
    )
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="tracking_logs", verbose_name="delivery")
    url_type = models.SmallIntegerField("URL type", choices=UrlType.choices)
    url = models.URLField("URL", max_length=500, blank=True)
    tracked_at = models.DateTimeField("tracked", default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["delivery", "url_type"], name="tlog_delivery_type_idx"),
            models.Index(fields=["delivery_log"], name="trackinglog_log_idx"),
        ]


class Quarantine(models.Model):
    """An address that bounced: ``erroneous`` while soft errors accumulate, then ``quarantined``."""

    class Status(models.TextChoices):
        ERRONEOUS = "erroneous", "Erroneous"
        QUARANTINED = "quarantined", "Quarantined"
        DENYLISTED = "denylisted", "On denylist"
        VALID = "valid", "Valid"

    address = models.CharField("address", max_length=255)
    channel = models.CharField("channel", max_length=8, choices=Channel.choices, default=Channel.EMAIL)
    status = models.CharField("status", max_length=16, choices=Status.choices, default=Status.ERRONEOUS)
    error_count = models.PositiveIntegerField("significant errors", default=0, help_text="Errors at least 1 day apart.")
    first_error_at = models.DateTimeField("first error", null=True, blank=True)
    last_error_at = models.DateTimeField("last significant error", null=True, blank=True, db_index=True)
    failure_type = models.SmallIntegerField("failure type", choices=FailureType.choices, default=FailureType.NONE)
    failure_reason = models.SmallIntegerField("failure reason", choices=FailureReason.choices, default=FailureReason.NONE)
    error_text = models.TextField("last error text", blank=True)
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["address"]
        constraints = [models.UniqueConstraint(fields=["address", "channel"], name="quarantine_address_channel_uniq")]
        indexes = [models.Index(fields=["status", "last_error_at"], name="quarantine_status_idx")]

    def __str__(self) -> str:
        return f"{self.address} ({self.status})"


class AppSubscription(models.Model):
    """A device registered for push; disabled when its token is reported invalid."""

    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="app_subscriptions", verbose_name="profile")
    application = models.CharField("application", max_length=100)
    device_token = models.CharField("device token", max_length=255)
    disabled = models.BooleanField("disabled", default=False, help_text="Excluded from push deliveries.")
    disabled_reason = models.SmallIntegerField("disabled for", choices=FailureReason.choices, null=True, blank=True)
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)
    updated_at = models.DateTimeField("updated", default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["application", "device_token"], name="appsubscription_token_uniq")]
        indexes = [models.Index(fields=["device_token"], name="appsubscription_token_idx")]

    def __str__(self) -> str:
        return f"{self.application}: {self.device_token[:12]}…"


class EventStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PENDING_DELIVERY = "pending_delivery", "Pending delivery"
    SENT = "sent", "Sent"
    IGNORED = "ignored", "Ignored"
    DELIVERY_FAILED = "delivery_failed", "Delivery failed"
    NOT_TAKEN_INTO_ACCOUNT = "not_taken_into_account", "Not taken into account"
    TOO_OLD = "too_old", "Too old"


#: Statuses an event never leaves; only these are archived by mcSynch_local.
FINAL_EVENT_STATUSES = (
    EventStatus.SENT, EventStatus.IGNORED, EventStatus.DELIVERY_FAILED,
    EventStatus.NOT_TAKEN_INTO_ACCOUNT, EventStatus.TOO_OLD,
)


class EventFields(models.Model):
    """The columns shared by live events and their archive."""

    event_type = models.CharField("event type", max_length=64)
    channel = models.CharField("channel", max_length=8, choices=Channel.choices, default=Channel.EMAIL)
    payload = models.JSONField("context", default=dict, blank=True)
    email = models.EmailField("email", blank=True)
    phone = models.CharField("phone", max_length=32, blank=True)
    status = models.CharField("status", max_length=32, choices=EventStatus.choices, default=EventStatus.PENDING)
    template = models.ForeignKey(
        MessageTemplate, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", verbose_name="template",
    )
    delivery_log = models.ForeignKey(
        DeliveryLog, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+",
        verbose_name="delivery log",
    )
    created_at = models.DateTimeField("created", default=timezone.now)
    processed_at = models.DateTimeField("processed", null=True, blank=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.event_type} #{self.pk} ({self.status})"


#: Longest ``Idempotency-Key`` accepted by the event API (characters, printable ASCII).
IDEMPOTENCY_KEY_MAX_LENGTH = 255


class Event(EventFields):
    """A real-time transactional event received by the event API.

    ``api_key`` and ``idempotency_key`` make a retried request return the event its first attempt
    created: the pair is unique while the event is live (a conditional unique constraint, so
    events sent without a key cost no index entry). The archive does not keep them: once
    mcSynch_local moves an event to EventHistory, its idempotency key can be used again.
    """

    updated_at = models.DateTimeField("updated", default=timezone.now, db_index=True)
    # Not a database foreign key: every accepted request inserts an event referencing the same few
    # key rows, and PostgreSQL would take a share lock on the key row per insert (contended
    # multixacts under concurrent clients) for a reference that keys, never deleted, do not need.
    api_key = models.ForeignKey(
        "APIKey", on_delete=models.SET_NULL, db_constraint=False, db_index=False, null=True, blank=True,
        related_name="+", verbose_name="API key", editable=False,
        help_text="The key the event was sent with; the scope of its idempotency key.",
    )
    idempotency_key = models.CharField(  # noqa: DJ001 - NULL without a key: outside the conditional unique constraint
        "idempotency key", max_length=IDEMPOTENCY_KEY_MAX_LENGTH, null=True, blank=True, editable=False,
        help_text="The request's Idempotency-Key (or the batch item's idempotency_key), unique per API key.",
    )
    request_fingerprint = models.CharField(  # noqa: DJ001 - NULL exactly when idempotency_key is
        "request fingerprint", max_length=64, null=True, blank=True, editable=False,
        help_text="SHA-256 of the event type and the canonical fields, in hexadecimal: a retry with the same "
                  "idempotency key must match it.",
    )

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="event_status_created_idx"),
            models.Index(fields=["status", "processed_at"], name="event_status_proc_idx"),
            models.Index(fields=["created_at"], name="event_created_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "idempotency_key"], condition=models.Q(idempotency_key__isnull=False),
                name="event_api_key_idempotency_uniq",
            ),
        ]


class EventHistory(EventFields):
    """Archived events (mcSynch_local). The primary key is the live event's id, kept as is, so an
    event can never be archived twice."""

    id = models.BigIntegerField("id", primary_key=True)
    archived_at = models.DateTimeField("archived", default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "archived event"
        verbose_name_plural = "archived events"
        indexes = [models.Index(fields=["created_at"], name="eventhistory_created_idx")]


class APIKeyQuerySet(models.QuerySet):
    def active(self) -> APIKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class APIKey(models.Model):
    """A key of the event API (``Authorization: Bearer <key>``).

    Only the SHA-256 of the key is stored: the key itself is shown once, when it is created (admin
    or ``manage.py apikey create``), and cannot be read back. A key is revoked, never deleted, so
    its name and its last use stay on record.
    """

    name = models.CharField("name", max_length=100, unique=True, help_text="Who or what uses the key.")
    key_hash = models.CharField(
        "key hash", max_length=64, unique=True, editable=False, help_text="SHA-256 of the key, in hexadecimal.",
    )
    prefix = models.CharField(
        "prefix", max_length=8, editable=False, help_text="The key's first 8 characters, to tell keys apart.",
    )
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)
    last_used_at = models.DateTimeField("last used", null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(
        "revoked", null=True, blank=True, editable=False, help_text="A revoked key is refused (403).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        verbose_name="created by", editable=False,
    )

    objects = APIKeyQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


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


class ForecastLog(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """A contact the forecast expects a scheduled or provisional delivery to make."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="forecast_logs", verbose_name="delivery")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="forecast_logs", verbose_name="profile")
    channel = models.CharField("channel", max_length=8, choices=Channel.choices)
    planned_at = models.DateTimeField("planned")
    excluded = models.BooleanField("excluded", default=False, help_text="Over the fatigue threshold.")
    computed_at = models.DateTimeField("computed", default=timezone.now, db_index=True)

    class Meta:
        ordering = ["planned_at"]
        constraints = [models.UniqueConstraint(fields=["delivery", "profile"], name="forecastlog_delivery_profile_uniq")]
        indexes = [models.Index(fields=["profile", "planned_at"], name="forecastlog_profile_idx")]


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

    class Meta:
        ordering = ["-period_start"]
        verbose_name_plural = "customer metrics"
        constraints = [models.UniqueConstraint(fields=["period_start", "period_end"], name="customermetrics_period_uniq")]


class ExternalAccount(models.Model):
    """Connection to an external service. The bearer token is read from the environment variable
    named by ``token_env``: secrets never go in the database."""

    class Kind(models.TextChoices):
        ANALYTICS = "analytics", "Analytics"
        AUDIENCE = "audience", "Audience"
        DELIVERABILITY = "deliverability", "Deliverability"

    name = models.CharField("name", max_length=100, unique=True)
    kind = models.CharField("kind", max_length=16, choices=Kind.choices)
    base_url = models.URLField("base URL", max_length=300)
    token_env = models.CharField(
        "token variable", max_length=100, help_text="Name of the environment variable holding the bearer token.",
    )
    timeout_s = models.FloatField(
        "timeout (s)", default=10.0, validators=[MinValueValidator(0.1), MaxValueValidator(300)],
        help_text="Connect and read timeout of each request.",
    )
    enabled = models.BooleanField("enabled", default=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        # Where the token may come from and go to (see campaign.integrations.accounts): the
        # worker's environment holds every secret of the instance.
        errors: dict[str, str] = {}
        if refusal := token_env_error(self.token_env):
            errors["token_env"] = f"{refusal[0].upper()}{refusal[1:]}."
        if self.base_url and (refusal := destination_error(self.base_url)):
            errors["base_url"] = f"Refused: {refusal}."
        if errors:
            raise ValidationError(errors)


class SharedAudience(models.Model):
    """An audience shared by the audience service; its members are replaced in full each import."""

    class IdHashing(models.TextChoices):
        NONE = "none", "Plain ids"
        SHA256 = "sha256", "Declared ids hashed with SHA-256"

    name = models.CharField("name", max_length=200)
    external_id = models.CharField("external id", max_length=200)
    account = models.ForeignKey(ExternalAccount, on_delete=models.PROTECT, related_name="audiences", verbose_name="account")
    id_hashing = models.CharField("declared id hashing", max_length=8, choices=IdHashing.choices, default=IdHashing.NONE)
    enabled = models.BooleanField("enabled", default=True)
    member_count = models.PositiveIntegerField("members", default=0)
    unknown_count = models.PositiveIntegerField("unknown ids at last import", default=0)
    imported_at = models.DateTimeField("last imported", null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["account", "external_id"], name="sharedaudience_external_uniq")]

    def __str__(self) -> str:
        return self.name


class AudienceMember(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    class IdType(models.TextChoices):
        VISITOR = "visitor", "Visitor id"
        DECLARED = "declared", "Declared id"

    audience = models.ForeignKey(SharedAudience, on_delete=models.CASCADE, related_name="members", verbose_name="audience")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="audiences", verbose_name="profile")
    id_type = models.CharField("matched by", max_length=8, choices=IdType.choices)
    imported_at = models.DateTimeField("imported", default=timezone.now)

    class Meta:
        ordering = ["audience", "profile"]
        constraints = [models.UniqueConstraint(fields=["audience", "profile"], name="audiencemember_uniq")]


class StagedAudienceMember(models.Model):
    """A member id received by the import of a shared audience in progress (importSharedAudience).

    The import stages every page here, committed page by page, and resolves each id to a profile as
    it goes; only after the last page does it replace the AudienceMember rows in one transaction.
    So readers never see a half-imported audience, and a failure mid-pagination leaves the previous
    membership as it was. Rows live only while an import runs (the next import clears leftovers).
    An id the service repeats on two pages is staged twice: the swap and the counts use DISTINCT,
    which costs less than a unique index on every insert."""

    audience = models.ForeignKey(SharedAudience, on_delete=models.CASCADE, related_name="+", verbose_name="audience")
    member_id = models.CharField("member id", max_length=255, help_text="As the service sent it (hashes in lower case).")
    id_type = models.CharField("id type", max_length=8, choices=AudienceMember.IdType.choices)
    profile = models.ForeignKey(
        Profile, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, null=True, blank=True, related_name="+",
        verbose_name="profile", help_text="The matching profile; empty for an unknown id.",
    )

    class Meta:
        ordering = ["id"]
        verbose_name = "staged audience member"

    def __str__(self) -> str:
        return f"{self.id_type} {self.member_id}"


class RuleSource(models.TextChoices):
    LOCAL = "local", "Local"
    SERVICE = "service", "Deliverability service"


class BounceRule(models.Model):
    """Qualifies a raw bounce text: the first matching rule by priority gives type and reason."""

    pattern = models.CharField("pattern", max_length=500,
                               help_text="Regular expression matched against the raw error text, case-insensitive.")
    failure_type = models.SmallIntegerField(
        "failure type", choices=[c for c in FailureType.choices if c[0] != FailureType.NONE],
    )
    failure_reason = models.SmallIntegerField("failure reason", choices=FailureReason.choices)
    priority = models.IntegerField("priority", default=100, help_text="Lower is tried first.")
    source = models.CharField("source", max_length=8, choices=RuleSource.choices, default=RuleSource.LOCAL)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["priority", "id"]

    def __str__(self) -> str:
        return self.pattern

    def clean(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ValidationError({"pattern": f"Not a valid regular expression: {error}."}) from None


class MxRule(models.Model):
    mx_mask = models.CharField("MX mask", max_length=255, help_text="Wildcard on the MX host, e.g. *.mail.example.com.")
    max_connections = models.PositiveIntegerField("max connections", null=True, blank=True)
    max_messages_per_hour = models.PositiveIntegerField("max messages per hour", null=True, blank=True)
    options = models.JSONField("other settings", default=dict, blank=True)
    source = models.CharField("source", max_length=8, choices=RuleSource.choices, default=RuleSource.LOCAL)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["mx_mask"]
        verbose_name = "MX rule"

    def __str__(self) -> str:
        return self.mx_mask


class DomainRule(models.Model):
    domain = models.CharField("domain", max_length=255)
    options = models.JSONField("settings", default=dict, blank=True)
    source = models.CharField("source", max_length=8, choices=RuleSource.choices, default=RuleSource.LOCAL)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return self.domain
