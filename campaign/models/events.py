"""Real-time transactional events: the live table the event API writes to, and the archive
mcSynch_local moves final events into. Both share their columns (EventFields); only live events
carry the API key and idempotency key that make a retried request safe.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from campaign.models.codes import Channel
from campaign.models.deliveries import MessageTemplate
from campaign.models.logs import DeliveryLog


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
