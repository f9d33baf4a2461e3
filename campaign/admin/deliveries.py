"""The admin of what is sent: campaigns, A/B tests, message templates and deliveries.

Deleting here is kept to what cannot cascade into the logs: a campaign or a delivery goes one at a
time, and only while nothing of it was sent (logs leave by the purge workflows). A delivery's
indicators are read-only (updateDeliveryIndicators owns them), and an A/B test's winner buttons
call the services of :mod:`campaign.ab_tests`, which the change page's extra views reach.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from campaign import ab_tests, kpi_charts
from campaign.admin.base import changelist_link
from campaign.models import (
    ABTest,
    Campaign,
    Delivery,
    DeliveryAggregate,
    DeliveryLog,
    FailureReason,
    ForecastLog,
    MessageTemplate,
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


def _flatten(fields: tuple[Any, ...]) -> tuple[str, ...]:
    flat: list[str] = []
    for item in fields:
        flat.extend(item if isinstance(item, tuple) else (item,))
    return tuple(flat)


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
        test = self.get_object(request, unquote(object_id))
        if test is None:
            raise Http404(f"no A/B test {unquote(object_id)!r}")
        if not self.has_change_permission(request, test):
            raise PermissionDenied
        return test

    def _back_to(self, test: ABTest) -> Any:
        return HttpResponseRedirect(reverse(f"{self.admin_site.name}:campaign_abtest_change", args=[test.pk]))

    def pick_winner_view(self, request: HttpRequest, object_id: str, variant: str) -> Any:
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
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        test = self._test_for_button(request, object_id)
        self._confirm(request, [test])
        return self._back_to(test)

    def _confirm(self, request: HttpRequest, tests: list[ABTest]) -> int:
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
        return [path("<int:object_id>/kpis/", self.admin_site.admin_view(self.kpis_view), name="campaign_delivery_kpis"),
                *super().get_urls()]

    def kpis_view(self, request: HttpRequest, object_id: int) -> Any:
        """Charts of the delivery's daily aggregates (campaign.kpi_charts)."""
        delivery = get_object_or_404(Delivery, pk=object_id)
        if not self.has_view_permission(request, delivery):
            raise PermissionDenied
        days = kpi_charts.daily_figures(delivery)
        context = {**self.admin_site.each_context(request), "title": f"KPIs of {delivery}", "delivery": delivery,
                   "days": days, "bar_chart": kpi_charts.bar_chart(days), "line_chart": kpi_charts.line_chart(days),
                   "rate_labels": kpi_charts.RATE_LABELS.values(),
                   # The table's fifteen columns need the whole width of a 1024 px window.
                   "is_nav_sidebar_enabled": False}
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
