"""The instance's credentials, on both sides: API keys that callers of the event API present, and
external accounts with which the instance calls the analytics, audience and deliverability
services.

Neither stores a secret in the database: an API key is kept only as its SHA-256, and an external
account names the environment variable that holds its bearer token.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from campaign.integrations.accounts import destination_error, token_env_error


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
