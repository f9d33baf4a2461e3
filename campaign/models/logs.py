"""The log tables: one row per message (DeliveryLog), the raw rows the sending and tracking sides
append (SendingFeedback, TrackingHit, InboundSms), the tracking rows consolidated from them
(TrackingLog), and the contacts the forecast expects (ForecastLog).

These tables grow without bound and are purged on retention rules, so references *from* logs are
foreign keys without a database constraint (``db_constraint=False``): purging a delivery log must
not delete, block or break the tracking rows that point to it, which outlive it.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from campaign.models.codes import Channel, FailureReason, FailureType, LogStatus, UrlType
from campaign.models.deliveries import Delivery
from campaign.models.profiles import Profile


class DeliveryLog(models.Model):
    """One message to one recipient (the platform's "broadlog")."""

    # No single-column index on either key: the composite indexes below begin with it, and each
    # index is paid by every log written.
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="logs", verbose_name="delivery",
                                 db_index=False)
    profile = models.ForeignKey(
        Profile, on_delete=models.SET_NULL, null=True, blank=True, related_name="delivery_logs",
        verbose_name="profile", help_text="Empty for transactional messages.", db_index=False,
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
    (cursor on ``id``). A ``complaint`` is a mailbox provider's feedback-loop report that the
    recipient marked the message as spam: it puts the log's address on the denylist."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        BOUNCE = "bounce", "Bounce"
        DEFERRED = "deferred", "Deferred"
        COMPLAINT = "complaint", "Spam complaint"

    delivery_log = models.ForeignKey(
        DeliveryLog, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+", verbose_name="delivery log",
    )
    outcome = models.CharField("outcome", max_length=16, choices=Outcome.choices)
    error_text = models.TextField(
        "raw error text", blank=True, help_text="The provider's bounce or deferral text, or the complaint report's summary.",
    )
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


class InboundSms(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """Raw, append-only SMS reply (a mobile-originated message) from the SMS provider; consolidated
    by updateDeliveryExecInfo (cursor on ``id``): a reply that is an opt-out keyword puts the number
    on the denylist. The number may be one no profile has: nothing points to a profile or a log."""

    phone = models.CharField(
        "phone", max_length=32, help_text="The sender's number as the provider reports it (international format).",
    )
    text = models.TextField("text", blank=True, help_text="The message as received.")
    short_code = models.CharField(
        "short code", max_length=32, blank=True, help_text="The number or short code the reply was sent to.",
    )
    received_at = models.DateTimeField("received", default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "inbound SMS"
        verbose_name_plural = "inbound SMS"
        indexes = [models.Index(fields=["phone"], name="inboundsms_phone_idx")]


class TrackingLog(models.Model):  # noqa: DJ008 - rows without a natural name, shown by their columns
    """A consolidated open, click, opt-out or mirror-page view. Kept longer than the delivery log
    it points to, hence no database constraint on ``delivery_log``."""

    # Both keys are indexed by the named indexes below (the delivery's as their first column).
    delivery_log = models.ForeignKey(
        DeliveryLog, on_delete=models.DO_NOTHING, db_constraint=False, related_name="tracking_logs",
        verbose_name="delivery log", db_index=False,
    )
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="tracking_logs", verbose_name="delivery",
                                 db_index=False)
    url_type = models.SmallIntegerField("URL type", choices=UrlType.choices)
    url = models.URLField("URL", max_length=500, blank=True)
    tracked_at = models.DateTimeField("tracked", default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["delivery", "url_type"], name="tlog_delivery_type_idx"),
            models.Index(fields=["delivery_log"], name="trackinglog_log_idx"),
        ]


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
