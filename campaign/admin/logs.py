"""The admin of the logs and of deliverability: delivery and tracking logs, the raw feedback, hits
and SMS replies they are consolidated from, the quarantine and the bounce, MX and domain rules.

The logs and the raw rows are read-only (the sending and tracking sides and the consolidation
workflows write them) and grow without bound: searches go through indexes only (exact address, log
id), and a tracking row whose delivery log was purged still shows, since nothing joins the log.
The quarantine and the rules are edited here by operators.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from campaign.admin.base import (
    HTTPS_URL_FIELDS,
    DeliveryLogIdSearchMixin,
    LargeTableMixin,
    ReadOnlyAdmin,
    as_id,
    changelist_link,
    delivery_log_link,
)
from campaign.models import (
    BounceRule,
    DeliveryLog,
    DomainRule,
    InboundSms,
    MxRule,
    Quarantine,
    SendingFeedback,
    TrackingHit,
    TrackingLog,
)

# --- Logs and raw feedback (read-only) ----------------------------------------------------------


@admin.register(DeliveryLog)
class DeliveryLogAdmin(LargeTableMixin, ReadOnlyAdmin):
    """Broadlogs, written by the sending side and updateDeliveryExecInfo."""

    list_display = ("id", "address", "delivery", "status", "failure_type", "failure_reason", "variant", "updated_at")
    list_filter = ("status", "failure_type", "failure_reason", "updated_at")
    list_select_related = ("delivery",)
    search_fields = ("address__exact",)
    search_help_text = "Exact address (email, phone number or device token) or log id."
    raw_id_fields = ("delivery", "profile")
    readonly_fields = ("related_links",)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        # Both branches are indexed lookups (address index, primary key).
        condition = Q(address=term)
        if (log_id := as_id(term)) is not None:
            condition |= Q(pk=log_id)
        return queryset.filter(condition), False

    @admin.display(description="related rows")
    def related_links(self, obj: DeliveryLog) -> str:
        return format_html(
            "{} · {} · {}",
            changelist_link(TrackingLog, "tracking logs", delivery_log__id__exact=obj.pk),
            changelist_link(SendingFeedback, "raw feedback", delivery_log__id__exact=obj.pk),
            changelist_link(TrackingHit, "raw hits", delivery_log__id__exact=obj.pk),
        )


@admin.register(SendingFeedback)
class SendingFeedbackAdmin(DeliveryLogIdSearchMixin, LargeTableMixin, ReadOnlyAdmin):
    """Raw, append-only feedback from the sending side, kept for audit until consolidated and purged."""

    list_display = ("id", "log", "outcome", "short_error", "received_at")
    list_filter = ("outcome", "received_at")
    list_select_related = ()

    @admin.display(description="delivery log", ordering="delivery_log_id")
    def log(self, obj: SendingFeedback) -> str:
        return delivery_log_link(obj.delivery_log_id)

    @admin.display(description="raw error text")
    def short_error(self, obj: SendingFeedback) -> str:
        return obj.error_text[:80]


@admin.register(TrackingHit)
class TrackingHitAdmin(DeliveryLogIdSearchMixin, LargeTableMixin, ReadOnlyAdmin):
    """Raw, append-only hits from the tracking side."""

    list_display = ("id", "log", "url_type", "url", "user_agent", "hit_at")
    list_filter = ("url_type", "hit_at")
    list_select_related = ()
    formfield_overrides = HTTPS_URL_FIELDS

    @admin.display(description="delivery log", ordering="delivery_log_id")
    def log(self, obj: TrackingHit) -> str:
        return delivery_log_link(obj.delivery_log_id)


@admin.register(InboundSms)
class InboundSmsAdmin(LargeTableMixin, ReadOnlyAdmin):
    """Raw, append-only SMS replies from the SMS provider; an opt-out keyword denylists the number."""

    list_display = ("id", "phone", "text", "short_code", "received_at")
    list_filter = ("received_at",)
    list_select_related = ()
    search_fields = ("phone__exact",)
    search_help_text = "Exact phone number, in international format (+33612345678)."


@admin.register(TrackingLog)
class TrackingLogAdmin(DeliveryLogIdSearchMixin, LargeTableMixin, ReadOnlyAdmin):
    """Consolidated opens, clicks, opt-outs and mirror-page views; they outlive their delivery log."""

    list_display = ("id", "delivery", "log", "url_type", "url", "tracked_at")
    list_filter = ("url_type", "tracked_at")
    # Not delivery_log: an INNER JOIN would hide the rows whose log was purged.
    list_select_related = ("delivery",)
    raw_id_fields = ("delivery", "delivery_log")
    formfield_overrides = HTTPS_URL_FIELDS

    @admin.display(description="delivery log", ordering="delivery_log_id")
    def log(self, obj: TrackingLog) -> str:
        return delivery_log_link(obj.delivery_log_id)


# --- Deliverability: quarantine and rules -------------------------------------------------------


@admin.register(Quarantine)
class QuarantineAdmin(LargeTableMixin, admin.ModelAdmin):
    """Addresses that bounced. An operator may set one back to valid after the recipient fixed it."""

    list_display = ("address", "channel", "status", "error_count", "failure_type", "failure_reason", "last_error_at")
    list_filter = ("status", "channel", "failure_type", "failure_reason", "last_error_at")
    search_fields = ("address",)
    search_help_text = "Part of the address, e.g. a domain."
    readonly_fields = ("first_error_at", "created_at", "updated_at")


@admin.register(BounceRule)
class BounceRuleAdmin(admin.ModelAdmin):
    list_display = ("pattern", "failure_type", "failure_reason", "priority", "source", "updated_at")
    list_filter = ("failure_type", "failure_reason", "source")
    search_fields = ("pattern",)


@admin.register(MxRule)
class MxRuleAdmin(admin.ModelAdmin):
    list_display = ("mx_mask", "max_connections", "max_messages_per_hour", "source", "updated_at")
    list_filter = ("source",)
    search_fields = ("mx_mask",)


@admin.register(DomainRule)
class DomainRuleAdmin(admin.ModelAdmin):
    list_display = ("domain", "source", "updated_at")
    list_filter = ("source",)
    search_fields = ("domain",)
