"""The admin of the recipients: profiles and their push subscriptions.

Profiles are the biggest domain table (millions of rows): searched by exact, indexed identifiers
only, with no full count. Push subscriptions are edited here when an operator re-enables a device.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from campaign.admin.base import LargeTableMixin
from campaign.models import AppSubscription, Profile


@admin.register(Profile)
class ProfileAdmin(LargeTableMixin, admin.ModelAdmin):
    """Recipients: millions of rows, searched by exact, indexed identifiers."""

    list_display = ("id", "email", "phone", "first_name", "last_name",
                    "blocklisted_email", "blocklisted_sms", "blocklisted_push", "updated_at")
    list_display_links = ("id", "email")
    list_filter = ("blocklisted_email", "blocklisted_sms", "blocklisted_push")
    # Exact lookups: each one uses its index; a "contains" search would scan every profile.
    search_fields = ("email__exact", "phone__exact", "visitor_id__exact", "declared_id__exact")
    search_help_text = "Exact email, phone, visitor id or declared id."
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("email", "phone", ("first_name", "last_name"))}),
        ("Identifiers", {"fields": ("visitor_id", "declared_id")}),
        ("No longer contact", {"fields": ("blocklisted_email", "blocklisted_sms", "blocklisted_push")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )


@admin.register(AppSubscription)
class AppSubscriptionAdmin(LargeTableMixin, admin.ModelAdmin):
    """Push devices; an operator re-enables one here after a token was wrongly reported invalid."""

    list_display = ("id", "application", "token_start", "profile", "disabled", "disabled_reason", "updated_at")
    list_filter = ("disabled", "disabled_reason")
    list_select_related = ("profile",)
    search_fields = ("device_token__exact",)
    search_help_text = "Exact device token."
    raw_id_fields = ("profile",)
    readonly_fields = ("created_at", "updated_at")

    @admin.display(description="device token", ordering="device_token")
    def token_start(self, obj: AppSubscription) -> str:
        return f"{obj.device_token[:16]}…" if len(obj.device_token) > 16 else obj.device_token

    def save_model(self, request: HttpRequest, obj: AppSubscription, form: forms.ModelForm, change: bool) -> None:
        # updated_at is not auto_now: incremental scans read it, and an edit must be seen.
        if change:
            obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)
