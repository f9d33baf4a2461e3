"""The admin of the campaign domain, for functional administrators and operators.

Three rules keep these pages usable on an instance with millions of logs:

- Tables written by other systems (raw feedback and hits) or computed by workflows (logs, archived
  events, aggregates, forecast, billing metrics, report sends, audience members) are **read-only**:
  an edit there would be overwritten, or would silently disagree with what the workflows computed.
  Users with the view permission can still look at them.
- A foreign key to a big table (Profile, DeliveryLog) is never a ``<select>`` that loads the table:
  it is a raw id (or an autocomplete for the mid-sized tables: campaigns, deliveries, templates).
- On the big tables the changelist asks the database only for indexed work: no full count, no
  facets, no date hierarchy (its year list is a scan of the whole table), exact searches on indexed
  columns, and ``list_select_related`` spelled out. The last one matters for correctness too: left
  to itself the changelist would ``select_related()`` every non-null foreign key with an INNER JOIN,
  and a tracking row whose delivery log was purged (no database constraint, on purpose) would
  vanish from the list.
"""

from __future__ import annotations

import os
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode

from campaign import ab_tests
from campaign.api import revoke_api_keys, set_new_key
from campaign.integrations.accounts import token_env_error
from campaign.models import (
    ABTest,
    APIKey,
    AppSubscription,
    AudienceMember,
    BounceRule,
    Campaign,
    CustomerMetrics,
    Delivery,
    DeliveryAggregate,
    DeliveryLog,
    DomainRule,
    Event,
    EventHistory,
    ExternalAccount,
    FailureReason,
    ForecastLog,
    KpiShareState,
    MessageTemplate,
    MxRule,
    Profile,
    Quarantine,
    Report,
    ReportSend,
    ReportShare,
    SendingFeedback,
    SharedAudience,
    SharedKpi,
    StagedAudienceMember,
    TrackingHit,
    TrackingLog,
)

#: The indicator fields of a delivery, in the order of the "Indicators" fieldset; rows of a tuple
#: share a line. updateDeliveryIndicators recomputes all of them from the logs.
DELIVERY_INDICATOR_FIELDS: tuple[Any, ...] = (
    ("to_deliver", "sent", "delivered"),
    ("bounces", "hard_bounces", "soft_bounces"),
    ("user_unknown", "invalid_domain", "unreachable", "account_disabled"),
    ("mailbox_full", "not_connected", "on_denylist", "refused", "rejected"),
    ("quarantine", "bounces_by_reason_display"),
    ("opens", "unique_opens", "clicks", "unique_clicks"),
    ("unsubscribes", "mirror_pages", "impressions"),
    ("delivered_rate", "bounce_rate", "hard_bounce_rate", "soft_bounce_rate"),
    ("denylist_rate", "quarantine_rate", "rejected_rate"),
    ("open_rate", "unique_open_rate", "click_through_rate"),
    ("unsubscribe_rate", "mirror_page_rate", "reactivity"),
    "indicators_updated_at",
)


#: URLs typed without a scheme are read as https:// (Django 6's default, chosen now).
HTTPS_URL_FIELDS: dict[type, dict[str, Any]] = {models.URLField: {"assume_scheme": "https"}}


def _flatten(fields: tuple[Any, ...]) -> tuple[str, ...]:
    flat: list[str] = []
    for item in fields:
        flat.extend(item if isinstance(item, tuple) else (item,))
    return tuple(flat)


def changelist_link(model: type, text: str, **lookups: Any) -> str:
    """A link to ``model``'s changelist filtered by ``lookups`` (e.g. ``delivery__id__exact=5``)."""
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, urlencode(lookups), text)


def delivery_log_link(delivery_log_id: int | None) -> str:
    """A link to a delivery log by id, without loading it: it may have been purged already."""
    if delivery_log_id is None:
        return "-"
    url = reverse("admin:campaign_deliverylog_change", args=[delivery_log_id])
    return format_html('<a href="{}">#{}</a>', url, delivery_log_id)


#: Largest primary key (a 64-bit signed integer on both databases).
MAX_ID = 2**63 - 1


def as_id(term: str) -> int | None:
    """``term`` as a primary key, or None when it cannot be one (a larger number would make SQLite
    raise instead of matching nothing)."""
    if not (term.isascii() and term.isdigit()):
        return None
    value = int(term)
    return value if value <= MAX_ID else None


class ReadOnlyAdmin(admin.ModelAdmin):
    """For tables that other systems or workflows write: viewing only, for anyone with the view
    permission (superusers included); no add, change or delete, hence no "delete selected" action."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class LargeTableMixin:
    """For tables that grow without bound: a filtered page does not also count the whole table,
    and there are no per-filter facet counts (each one another count). The paginator's count of
    the rows shown remains; on an unfiltered page that is the whole table."""

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER


class DeliveryLogIdSearchMixin:
    """Search rows by the id of the delivery log they point to, through the foreign key's index;
    the generic ``__exact`` search on an integer casts the column to text and scans the table."""

    search_fields: tuple[str, ...] = ("delivery_log_id",)
    search_help_text = "Delivery log id."

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        delivery_log_id = as_id(term)
        if delivery_log_id is None:
            return queryset.none(), False
        return queryset.filter(delivery_log_id=delivery_log_id), False


# --- Audience: profiles and push subscriptions -------------------------------------------------


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


# --- Campaigns, deliveries, A/B tests -----------------------------------------------------------


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("label", "owner", "delivery_count", "created_at")
    list_select_related = ("owner",)
    search_fields = ("label",)
    date_hierarchy = "created_at"
    autocomplete_fields = ("owner",)
    readonly_fields = ("created_at",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(delivery_count=Count("deliveries"))

    @admin.display(description="deliveries", ordering="delivery_count")
    def delivery_count(self, obj: Campaign) -> int:
        return obj.delivery_count

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # Bulk deletion would cascade to every delivery's logs, and its confirmation page loads
        # them all; a campaign is deleted one at a time, while none of its deliveries was sent.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_delete_permission(self, request: HttpRequest, obj: Campaign | None = None) -> bool:
        if obj is not None and obj.deliveries.exclude(state=Delivery.State.DRAFT).exists():
            return False
        return super().has_delete_permission(request, obj)


@admin.register(ABTest)
class ABTestAdmin(admin.ModelAdmin):
    """A/B tests. abTesting fills in the decision; an administrator may pick the winner by hand.

    The change page shows each variant's figures (aggregate queries, see
    ``campaign.ab_tests.variant_figures``) with a "pick as winner" button per variant and, for a
    test awaiting confirmation, a "confirm" button. The buttons are POST forms outside the change
    form (template ``admin/campaign/abtest/change_form.html``); their views check the change
    permission again. ``winner_delivery`` is read-only: only the services of ``campaign.ab_tests``
    create it, under the lock that keeps it from being sent twice.
    """

    list_display = ("label", "campaign", "status", "variant_count", "criterion", "test_duration",
                    "remainder_percent", "winner_sending", "winner_variant", "decided_at")
    list_filter = ("status", "criterion", "winner_sending")
    list_select_related = ("campaign",)
    search_fields = ("label", "campaign__label")
    autocomplete_fields = ("campaign", "owner")
    readonly_fields = ("winner_chosen_by", "winner_delivery", "decided_at", "created_at")
    fieldsets = (
        (None, {"fields": ("label", "campaign", "owner", "status")}),
        ("Test", {"fields": ("variant_count", "criterion", "test_duration", "remainder_percent", "winner_sending")}),
        ("Winner", {"fields": ("winner_variant", "winner_chosen_by", "winner_delivery", "decided_at")}),
        ("History", {"fields": ("created_at",)}),
    )
    actions = ("confirm_winners",)

    def save_model(self, request: HttpRequest, obj: ABTest, form: forms.ModelForm, change: bool) -> None:
        # The model's contract: winner_chosen_by is empty only when abTesting chose the winner.
        if "winner_variant" in form.changed_data and obj.winner_variant:
            obj.winner_chosen_by = request.user
        super().save_model(request, obj, form, change)

    # -- figures and winner buttons on the change page -------------------------------------------
    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> Any:
        from django.contrib.admin.utils import unquote

        extra_context = dict(extra_context or {})
        test = self.get_object(request, unquote(object_id))
        if test is not None:
            may_change = self.has_change_permission(request, test)
            open_test = test.status in ab_tests.OPEN_STATUSES and test.winner_delivery_id is None
            site = self.admin_site.name
            extra_context["variant_figures"] = [
                {**row,
                 "is_winner": row["variant"] == test.winner_variant,
                 "pick_url": reverse(f"{site}:campaign_abtest_pick_winner", args=[test.pk, row["variant"]])
                 if may_change and open_test else ""}
                for row in ab_tests.variant_figures(test)
            ]
            if may_change and open_test and test.status == ABTest.Status.AWAITING_CONFIRMATION and test.winner_variant:
                extra_context["confirm_winner_url"] = reverse(f"{site}:campaign_abtest_confirm_winner", args=[test.pk])
                extra_context["confirm_winner_variant"] = test.winner_variant
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list[Any]:
        from django.urls import path

        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/pick-winner/<str:variant>/", self.admin_site.admin_view(self.pick_winner_view),
                 name=f"{prefix}_pick_winner"),
            path("<path:object_id>/confirm-winner/", self.admin_site.admin_view(self.confirm_winner_view),
                 name=f"{prefix}_confirm_winner"),
            *super().get_urls(),
        ]

    def _test_for_button(self, request: HttpRequest, object_id: str) -> ABTest:
        """The test a button acts on (the views accept POST only): change permission, 404 if it
        does not exist."""
        from django.contrib.admin.utils import unquote
        from django.core.exceptions import PermissionDenied
        from django.http import Http404

        test = self.get_object(request, unquote(object_id))
        if test is None:
            raise Http404(f"no A/B test {unquote(object_id)!r}")
        if not self.has_change_permission(request, test):
            raise PermissionDenied
        return test

    def _back_to(self, test: ABTest) -> Any:
        from django.http import HttpResponseRedirect

        return HttpResponseRedirect(reverse(f"{self.admin_site.name}:campaign_abtest_change", args=[test.pk]))

    def pick_winner_view(self, request: HttpRequest, object_id: str, variant: str) -> Any:
        from django.contrib import messages
        from django.http import HttpResponseNotAllowed

        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        test = self._test_for_button(request, object_id)
        try:
            decision = ab_tests.choose_winner(test.pk, variant=variant, user=request.user)
        except ab_tests.WinnerRefused as refusal:
            self.message_user(request, f"Variant {variant} not chosen: {refusal}.", messages.WARNING)
            return self._back_to(test)
        outcome = {
            ab_tests.Outcome.CHOSEN: "it takes effect when the test period ends"
            + (" (sent then)" if test.winner_sending == ABTest.WinnerSending.AUTOMATIC else " (then awaits confirmation)"),
            ab_tests.Outcome.WINNER_SENT: f"winner delivery #{decision.delivery_id} scheduled",
            ab_tests.Outcome.AWAITING_CONFIRMATION: "confirm it to send it",
        }.get(decision.outcome, decision.outcome)
        self.message_user(request, f"Variant {variant} chosen as the winner: {outcome}.", messages.SUCCESS)
        return self._back_to(test)

    def confirm_winner_view(self, request: HttpRequest, object_id: str) -> Any:
        from django.http import HttpResponseNotAllowed

        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        test = self._test_for_button(request, object_id)
        self._confirm(request, [test])
        return self._back_to(test)

    def _confirm(self, request: HttpRequest, tests: list[ABTest]) -> int:
        from django.contrib import messages

        sent = 0
        for test in tests:
            try:
                winner = ab_tests.confirm_winner(test.pk, user=request.user)
            except ab_tests.WinnerRefused as refusal:
                self.message_user(request, f"{test}: not confirmed: {refusal}.", messages.WARNING)
                continue
            sent += 1
            self.message_user(request, f"{test}: winner {test.winner_variant} confirmed; delivery #{winner.pk} scheduled.",
                              messages.SUCCESS)
        return sent

    @admin.action(description="Confirm and send the winner of selected tests", permissions=["change"])
    def confirm_winners(self, request: HttpRequest, queryset: QuerySet[ABTest]) -> None:
        self._confirm(request, list(queryset.order_by("pk")))


@admin.register(MessageTemplate)
class MessageTemplateAdmin(admin.ModelAdmin):
    """Transactional templates; the latest published one per event type and channel gets the events."""

    list_display = ("label", "event_type", "channel", "published", "published_at", "created_at")
    list_filter = ("channel", "published", "event_type")
    search_fields = ("label", "event_type")
    readonly_fields = ("created_at",)


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    """Deliveries with their indicators; the indicators are read-only, updateDeliveryIndicators
    owns them."""

    list_display = ("label", "campaign", "channel", "kind", "state", "scheduled_at",
                    "sent", "delivered_rate", "open_rate", "click_through_rate", "indicators_updated_at")
    list_filter = ("state", "channel", "kind", "scheduled_at")
    list_select_related = ("campaign",)
    search_fields = ("label", "campaign__label")
    date_hierarchy = "scheduled_at"
    autocomplete_fields = ("campaign", "template", "ab_test")
    readonly_fields = ("started_at", "finished_at", "created_at", "updated_at", "logs_link", "forecast_counts",
                       *_flatten(DELIVERY_INDICATOR_FIELDS))
    fieldsets = (
        (None, {"fields": ("label", "campaign", ("channel", "kind"), "state", "priority", "template", "ab_test")}),
        ("Schedule", {"fields": ("scheduled_at", "validity_end", ("started_at", "finished_at"))}),
        ("Indicators", {
            "fields": DELIVERY_INDICATOR_FIELDS,
            "description": "The platform's indicator table, computed from the delivery and tracking logs by "
                           "updateDeliveryIndicators (each field's formula in its help text); rates are "
                           "percentages, and the Open rate, which counts repeated opens, may exceed 100.",
        }),
        ("Forecast", {
            "fields": ("forecast_counts",),
            "description": "Contacts the forecasting workflow expects this delivery to make, and those it "
                           "excluded because the profile is over the fatigue threshold.",
        }),
        ("Logs and history", {"fields": ("logs_link", ("created_at", "updated_at"))}),
    )

    def get_fieldsets(self, request: HttpRequest, obj: Delivery | None = None) -> Any:
        # A delivery being created has no indicators and no logs yet.
        if obj is None:
            return self.fieldsets[:2]
        return self.fieldsets

    @admin.display(description="bounces by reason")
    def bounces_by_reason_display(self, obj: Delivery) -> str:
        if not obj.bounces_by_reason:
            return "-"
        labels = dict(FailureReason.choices)
        # JSON keys are strings: "20" must come after "5".
        by_code = sorted(obj.bounces_by_reason.items(), key=lambda item: (len(str(item[0])), str(item[0])))
        return ", ".join(
            f"{labels.get(int(code), f'reason {code}') if str(code).isdigit() else f'reason {code}'}: {count}"
            for code, count in by_code
        )

    @admin.display(description="forecast")
    def forecast_counts(self, obj: Delivery) -> str:
        # One aggregate query (a delivery may plan a million contacts): counted by the database.
        counts = ForecastLog.objects.filter(delivery_id=obj.pk).aggregate(
            planned=Count("id"), excluded=Count("id", filter=Q(excluded=True)))
        if not counts["planned"]:
            return "No planned contacts (not in the forecast, or nobody to contact)."
        return format_html(
            "{} planned contacts, {} of them excluded · {}", counts["planned"], counts["excluded"],
            changelist_link(ForecastLog, "forecast logs", delivery__id__exact=obj.pk),
        )

    def get_urls(self) -> list[Any]:
        from django.urls import path

        return [path("<int:object_id>/kpis/", self.admin_site.admin_view(self.kpis_view), name="campaign_delivery_kpis"),
                *super().get_urls()]

    def kpis_view(self, request: HttpRequest, object_id: int) -> Any:
        """Charts of the delivery's daily aggregates (campaign.kpi_charts)."""
        from django.core.exceptions import PermissionDenied
        from django.shortcuts import get_object_or_404
        from django.template.response import TemplateResponse

        from campaign import kpi_charts

        delivery = get_object_or_404(Delivery, pk=object_id)
        if not self.has_view_permission(request, delivery):
            raise PermissionDenied
        days = kpi_charts.daily_figures(delivery)
        context = {**self.admin_site.each_context(request), "title": f"KPIs of {delivery}", "delivery": delivery,
                   "days": days, "bar_chart": kpi_charts.bar_chart(days), "line_chart": kpi_charts.line_chart(days),
                   "rate_labels": kpi_charts.RATE_LABELS.values()}
        return TemplateResponse(request, "admin/campaign/delivery/kpis.html", context)

    @admin.display(description="logs")
    def logs_link(self, obj: Delivery) -> str:
        if obj.pk is None:
            return "-"
        return format_html(
            "{} · {} · {} · {}",
            format_html('<a href="{}">KPI charts</a>', reverse("admin:campaign_delivery_kpis", args=[obj.pk])),
            changelist_link(DeliveryLog, "delivery logs", delivery__id__exact=obj.pk),
            changelist_link(TrackingLog, "tracking logs", delivery__id__exact=obj.pk),
            changelist_link(DeliveryAggregate, "daily aggregates", delivery__id__exact=obj.pk),
        )

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # Deleting a sent delivery cascades to its logs, which the confirmation page would load
        # one by one; logs leave by the purge workflows, not by the admin.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_delete_permission(self, request: HttpRequest, obj: Delivery | None = None) -> bool:
        if obj is not None and obj.state != Delivery.State.DRAFT:
            return False
        return super().has_delete_permission(request, obj)


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


# --- Aggregates, forecast, reports, billing (computed; read-only) --------------------------------


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


@admin.register(StagedAudienceMember)
class StagedAudienceMemberAdmin(ReadOnlyAdmin):
    """Member ids of a shared-audience import in progress (importSharedAudience)."""

    list_display = ("audience", "id_type", "member_id", "profile_id")
    list_filter = ("id_type",)
    list_select_related = ("audience",)
    search_fields = ("=member_id",)
    show_full_result_count = False


@admin.register(DeliveryAggregate)
class DeliveryAggregateAdmin(ReadOnlyAdmin):
    """Per day, delivery and channel counters (reportingAggregates)."""

    list_display = ("day", "delivery", "channel", "sent", "delivered", "bounces", "opens", "unique_opens",
                    "clicks", "unique_clicks", "unsubscribes", "updated_at")
    list_filter = ("channel",)
    list_select_related = ("delivery",)
    search_fields = ("delivery__label",)
    date_hierarchy = "day"
    raw_id_fields = ("delivery",)


@admin.register(ForecastLog)
class ForecastLogAdmin(LargeTableMixin, ReadOnlyAdmin):
    """Contacts the forecast expects; excluded ones are over the fatigue threshold."""

    list_display = ("id", "delivery", "profile", "channel", "planned_at", "excluded", "computed_at")
    list_filter = ("channel", "excluded")
    list_select_related = ("delivery", "profile")
    raw_id_fields = ("delivery", "profile")


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("label", "kind", "campaign", "period_days", "created_by", "created_at")
    list_filter = ("kind",)
    list_select_related = ("campaign", "created_by")
    search_fields = ("label",)
    autocomplete_fields = ("campaign",)
    readonly_fields = ("created_by", "created_at")

    def save_model(self, request: HttpRequest, obj: Report, form: forms.ModelForm, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


class ReportShareForm(forms.ModelForm):
    """Recipients are users of the instance: chosen from the users, or typed as addresses that
    must belong to users (anything else is refused with a message)."""

    addresses = forms.CharField(
        label="add recipients by address", required=False, widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Email addresses of users of this instance, separated by commas or new lines.",
    )

    class Meta:
        model = ReportShare
        fields = "__all__"  # noqa: DJ007 - the admin's fieldsets choose the fields shown

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "recipients" in self.fields:
            self.fields["recipients"].required = False  # typed addresses may be the only recipients

    def clean(self) -> dict[str, Any]:
        from campaign.report_shares import check_recipients, users_for_addresses

        cleaned = super().clean()
        typed = [part for part in self.cleaned_data.get("addresses", "").replace(",", "\n").splitlines() if part.strip()]
        try:
            extra = users_for_addresses(typed)
        except forms.ValidationError as error:
            self.add_error("addresses", error)
            return cleaned
        chosen = list(cleaned.get("recipients") or [])
        recipients = list({user.pk: user for user in [*chosen, *extra]}.values())
        try:
            check_recipients(recipients)
        except forms.ValidationError as error:
            self.add_error("recipients", error)
            return cleaned
        if not recipients:
            self.add_error("recipients", "Choose at least one recipient.")
        cleaned["recipients"] = recipients
        return cleaned


@admin.register(ReportShare)
class ReportShareAdmin(admin.ModelAdmin):
    """Who gets a report and when; the beat schedule entry is managed from the share, not by hand."""

    form = ReportShareForm

    list_display = ("report", "recurrence", "send_time", "time_zone", "start_date", "end_date", "enabled", "schedule")
    list_filter = ("recurrence", "enabled")
    list_select_related = ("report", "periodic_task")
    search_fields = ("report__label",)
    autocomplete_fields = ("report", "recipients")
    readonly_fields = ("schedule", "created_by", "created_at")
    fieldsets = (
        (None, {"fields": ("report", "recipients", "addresses", "enabled")}),
        ("When", {"fields": ("recurrence", ("send_time", "time_zone"), ("day_of_week", "day_of_month", "week_of_month", "month"),
                             ("start_date", "end_date"), "schedule")}),
        ("History", {"fields": ("created_by", "created_at")}),
    )

    @admin.display(description="schedule")
    def schedule(self, obj: ReportShare) -> str:
        if obj.periodic_task_id is None:
            return "-"
        url = reverse("admin:django_celery_beat_periodictask_change", args=[obj.periodic_task_id])
        return format_html('<a href="{}">{}</a>', url, obj.periodic_task)

    def save_model(self, request: HttpRequest, obj: ReportShare, form: forms.ModelForm, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        """After the recipients are saved: sync the share's beat schedule and, for a new "send now"
        share, start reportSendingNow once the transaction commits."""
        from campaign.report_shares import share_saved

        super().save_related(request, form, formsets, change)
        share_saved(form.instance, created=not change)

    def delete_model(self, request: HttpRequest, obj: ReportShare) -> None:
        from campaign.report_shares import delete_share

        delete_share(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ReportShare]) -> None:
        from campaign.report_shares import delete_share

        for share in queryset:
            delete_share(share)


@admin.register(ReportSend)
class ReportSendAdmin(ReadOnlyAdmin):
    """One row per share and due time: the proof that a report went out (or why it did not)."""

    list_display = ("share", "due_at", "status", "run", "pdf_size", "sent_at", "short_error")
    list_filter = ("status",)
    list_select_related = ("share__report",)
    search_fields = ("share__report__label",)
    date_hierarchy = "due_at"
    actions = ["send_again"]

    @admin.action(description="Send again (failed, or interrupted while emailing)", permissions=["resend"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[ReportSend]) -> None:
        """A send interrupted while emailing is never sent again automatically (the messages may
        have left): a person who knows they did not decides it here."""
        from campaign.report_shares import send_again
        from campaign.workflow_runs import RunRefused

        queued, refused = 0, []
        for send in queryset.select_related("share"):
            try:
                if send_again(send, user=request.user):
                    queued += 1
                else:
                    refused.append(f"{send.share} due {send.due_at:%Y-%m-%d %H:%M} is {send.get_status_display().lower()}")
            except RunRefused as refusal:
                self.message_user(request, f"Not sent again: {refusal}.", messages.ERROR)
                return
        if queued:
            self.message_user(request, f"{queued} send(s) queued again.", messages.SUCCESS)
        if refused:
            self.message_user(request, "Left as they are: " + "; ".join(refused) + ".", messages.WARNING)

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("campaign.change_reportsend")

    @admin.display(description="run", ordering="claimed_by_run")
    def run(self, obj: ReportSend) -> str:
        if obj.claimed_by_run is None:
            return "-"
        url = reverse("admin:workflows_workflowrun_change", args=[obj.claimed_by_run])
        return format_html('<a href="{}">#{}</a>', url, obj.claimed_by_run)

    @admin.display(description="PDF size", ordering="pdf_bytes")
    def pdf_size(self, obj: ReportSend) -> str:
        return filesizeformat(obj.pdf_bytes) if obj.pdf_bytes else "-"

    @admin.display(description="error")
    def short_error(self, obj: ReportSend) -> str:
        return obj.error[:80]


@admin.register(CustomerMetrics)
class CustomerMetricsAdmin(ReadOnlyAdmin):
    """The billing activity report, one row per period."""

    list_display = ("period_start", "period_end", "deliveries", "profiles", "active_profiles", "database_size", "computed_at")
    date_hierarchy = "period_start"

    @admin.display(description="database size", ordering="database_size_bytes")
    def database_size(self, obj: CustomerMetrics) -> str:
        return filesizeformat(obj.database_size_bytes)


# --- External services and shared audiences -----------------------------------------------------


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
