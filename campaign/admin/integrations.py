"""The admin of what is exchanged with the external services: their accounts, the KPIs shared with
the analytics service, and the audiences imported from the audience service.

An account names the environment variable of its token, never the token: the pages say only whether
the variable is set. What was shared and what was imported is read-only (kpiSharing and
importSharedAudience write it; each import replaces an audience's members in full).
"""

from __future__ import annotations

import os

from django import forms
from django.contrib import admin

from campaign.admin.base import LargeTableMixin, ReadOnlyAdmin, changelist_link
from campaign.integrations.accounts import token_env_error
from campaign.models import AudienceMember, ExternalAccount, KpiShareState, SharedAudience, SharedKpi, StagedAudienceMember

# --- Accounts of the external services ----------------------------------------------------------


class ExternalAccountForm(forms.ModelForm):
    """The token is named, never entered: it lives in the environment of the processes."""

    base_url = forms.URLField(
        label="base URL", max_length=300, assume_scheme="https",
        help_text=("The service's root, https:// only: the token is sent with every request. Plain http:// is "
                   "accepted only to a loopback address with INTEGRATIONS_ALLOW_LOOPBACK_HTTP on (development); "
                   "no user:password@ in the URL."),
    )

    class Meta:
        model = ExternalAccount
        fields = ("name", "kind", "base_url", "token_env", "timeout_s", "enabled")
        help_texts = {
            "token_env": (
                "Name of the environment variable holding the bearer token: CAMPAIGN_TOKEN_ followed by "
                "capitals, digits and underscores, e.g. CAMPAIGN_TOKEN_ANALYTICS (no other variable, such as "
                "SECRET_KEY, can be sent to a service). "
                "The token itself is never stored in the database: set the variable in the environment "
                "of the web and worker processes, then restart them."
            ),
        }


@admin.register(ExternalAccount)
class ExternalAccountAdmin(admin.ModelAdmin):
    form = ExternalAccountForm
    list_display = ("name", "kind", "base_url", "token_env", "token_is_set", "timeout_s", "enabled")
    list_filter = ("kind", "enabled")
    search_fields = ("name", "base_url")
    readonly_fields = ("token_status",)
    fieldsets = (
        (None, {"fields": ("name", "kind", "base_url", "enabled")}),
        ("Authentication", {"fields": ("token_env", "token_status")}),
        ("Requests", {"fields": ("timeout_s",)}),
    )

    @admin.display(description="token set", boolean=True)
    def token_is_set(self, obj: ExternalAccount) -> bool:
        # A variable the rules refuse is never read, not even to say whether it is set.
        return token_env_error(obj.token_env) is None and bool(os.environ.get(obj.token_env))

    @admin.display(description="token variable set?")
    def token_status(self, obj: ExternalAccount | None) -> str:
        # Only ever whether the variable is set: its value must not reach a page or a log.
        if obj is None or not obj.pk or not obj.token_env:
            return "Shown once the account is saved."
        if refusal := token_env_error(obj.token_env):
            return f"{refusal[0].upper()}{refusal[1:]}: rename the variable, or no request is made."
        if self.token_is_set(obj):
            return f"Yes: {obj.token_env} is set in the environment of this web process."
        return f"No: {obj.token_env} is not set (or empty) in the environment of this web process."


# --- Shared audiences (imported; read-only members) ---------------------------------------------


@admin.register(SharedAudience)
class SharedAudienceAdmin(admin.ModelAdmin):
    """Audiences imported from the audience service; counts are set by each import."""

    list_display = ("name", "external_id", "account", "id_hashing", "enabled", "member_count", "unknown_count", "imported_at")
    list_filter = ("enabled", "id_hashing", "account")
    list_select_related = ("account",)
    search_fields = ("name", "external_id")
    autocomplete_fields = ("account",)
    readonly_fields = ("member_count", "unknown_count", "imported_at", "members_link")

    @admin.display(description="members")
    def members_link(self, obj: SharedAudience) -> str:
        if obj.pk is None:
            return "-"
        return changelist_link(AudienceMember, f"{obj.member_count} members", audience__id__exact=obj.pk)


@admin.register(AudienceMember)
class AudienceMemberAdmin(LargeTableMixin, ReadOnlyAdmin):
    """Read-only: each import replaces an audience's members in full, so an edit would not last."""

    list_display = ("audience", "profile", "id_type", "imported_at")
    list_filter = ("id_type", "audience")
    list_select_related = ("audience", "profile")
    raw_id_fields = ("audience", "profile")


@admin.register(StagedAudienceMember)
class StagedAudienceMemberAdmin(ReadOnlyAdmin):
    """Member ids of a shared-audience import in progress (importSharedAudience)."""

    list_display = ("audience", "id_type", "member_id", "profile_id")
    list_filter = ("id_type",)
    list_select_related = ("audience",)
    search_fields = ("=member_id",)
    show_full_result_count = False


# --- KPIs shared with the analytics service (read-only) -----------------------------------------


@admin.register(SharedKpi)
class SharedKpiAdmin(ReadOnlyAdmin):
    """What the analytics service was told, per day and delivery (kpiSharing, kpiReconciliation)."""

    list_display = ("day", "delivery", "sent", "delivered", "opened", "unique_opens", "clicked", "unique_clicks",
                    "unsubscribed", "bounces", "updated_at")
    list_select_related = ("delivery",)
    search_fields = ("delivery__label",)
    date_hierarchy = "day"
    raw_id_fields = ("delivery",)


@admin.register(KpiShareState)
class KpiShareStateAdmin(ReadOnlyAdmin):
    """Where KPI sharing stands: the watermark, and the batch sent and not acknowledged yet, which
    the next kpiSharing or kpiReconciliation run resends as it is."""

    list_display = ("channel", "watermark_updated_at", "watermark_aggregate_id", "pending_batch_id", "updated_at")
