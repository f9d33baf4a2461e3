"""What is sent: campaigns, A/B tests, transactional message templates and deliveries.

A delivery carries the indicators updateDeliveryIndicators recomputes from its logs; an A/B test
points to its winner delivery one-to-one, so the winner is never created (or sent) twice.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from campaign.models.codes import Channel


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
