"""Recipients and what they belong to: profiles, their push subscriptions, and the shared audiences
imported from the audience service.

A profile's ``declared_id_sha256`` is derived from its declared id (:func:`declared_id_hash`), so
that audiences sharing hashed ids match through an index.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.db import models
from django.utils import timezone

from campaign.models.accounts import ExternalAccount
from campaign.models.codes import FailureReason


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
