"""Deliverability: the addresses in quarantine, and the rules that qualify bounces and shape
sending per MX and per domain (local, or received from the deliverability service).
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from campaign.models.codes import Channel, FailureReason, FailureType


class Quarantine(models.Model):
    """An address that bounced (``erroneous`` while soft errors accumulate, then ``quarantined``), or
    that is ``denylisted``: its owner complained of spam or replied an SMS opt-out keyword, or the
    provider refused it as on its own denylist. Quarantined and denylisted addresses are not targeted."""

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
