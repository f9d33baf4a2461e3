"""The admin of transactional events: live events, their archive, and the keys of the event API.

Events arrive by the event API and are routed by updateEventsStatus; the archive (mcSynch_local) is
read-only. An API key is shown once, when it is generated, and is revoked rather than deleted.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from campaign.admin.base import LargeTableMixin, ReadOnlyAdmin, delivery_log_link
from campaign.api import revoke_api_keys, set_new_key
from campaign.models import APIKey, Event, EventHistory

# --- Transactional events -----------------------------------------------------------------------


@admin.register(Event)
class EventAdmin(LargeTableMixin, admin.ModelAdmin):
    """Live transactional events, as received by the event API and routed by updateEventsStatus."""

    list_display = ("id", "event_type", "channel", "status", "email", "phone", "template", "log", "created_at", "processed_at")
    # Date filters build no query of their own (a filter on event_type would scan the table for
    # its distinct values). Final events older than mcSynch_local's delay move to the archive.
    list_filter = ("status", "channel", "created_at", "processed_at")
    list_select_related = ("template",)
    search_fields = ("email__exact", "phone__exact")
    search_help_text = "Exact email or phone."
    autocomplete_fields = ("template",)
    raw_id_fields = ("delivery_log",)
    # How the event came in (set by the event API, never edited): the key, and the retry guard.
    readonly_fields = ("created_at", "processed_at", "updated_at", "api_key", "idempotency_key", "request_fingerprint")

    @admin.display(description="delivery log", ordering="delivery_log_id")
    def log(self, obj: Event) -> str:
        return delivery_log_link(obj.delivery_log_id)

    def save_model(self, request: HttpRequest, obj: Event, form: forms.ModelForm, change: bool) -> None:
        # updated_at is not auto_now: incremental scans read it, and an edit must be seen.
        if change:
            obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)


@admin.register(EventHistory)
class EventHistoryAdmin(LargeTableMixin, ReadOnlyAdmin):
    """Archived events (mcSynch_local); the id is the live event's, so an id found in a delivery log
    or an API response leads here once the event is archived."""

    list_display = ("id", "event_type", "channel", "status", "email", "phone", "template", "log", "created_at",
                    "processed_at", "archived_at")
    list_filter = ("status", "channel", "archived_at", "processed_at")
    list_select_related = ("template",)
    search_fields = ("email__exact", "phone__exact")
    search_help_text = "Exact email or phone."

    @admin.display(description="delivery log", ordering="delivery_log_id")
    def log(self, obj: EventHistory) -> str:
        return delivery_log_link(obj.delivery_log_id)


# --- Event API keys -----------------------------------------------------------------------------


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    """Keys of the event API. Adding one asks only for a name: the key is generated, shown once in
    a message, and only its hash is kept (and never displayed: it is of no use to anyone). Keys are
    revoked, not deleted, so that their name and last use stay on record."""

    list_display = ("name", "prefix", "active", "created_at", "last_used_at", "revoked_at", "created_by")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    list_select_related = ("created_by",)
    search_fields = ("name", "prefix")
    actions = ("revoke",)
    readonly_fields = ("prefix", "created_at", "created_by", "last_used_at", "revoked_at")

    @admin.display(description="active", boolean=True, ordering="revoked_at")
    def active(self, obj: APIKey) -> bool:
        return obj.is_active

    def get_fields(self, request: HttpRequest, obj: APIKey | None = None) -> tuple[str, ...]:
        return ("name",) if obj is None else ("name", *self.readonly_fields)

    def get_readonly_fields(self, request: HttpRequest, obj: APIKey | None = None) -> tuple[str, ...]:
        return () if obj is None else ("name", *self.readonly_fields)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: APIKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            return super().save_model(request, obj, form, change)
        obj.created_by = request.user
        key = set_new_key(obj)
        super().save_model(request, obj, form, change)
        self.message_user(
            request, f"The key of {obj.name!r} is {key} (copy it now: it is not shown again).",
            level=messages.WARNING,
        )

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = revoke_api_keys(ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{revoked} API key(s) revoked; requests with them are refused from now on.")
