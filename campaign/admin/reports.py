"""The admin of computed figures and reports: daily aggregates, the forecast, reports, their shares
and sends, and the billing metrics.

What workflows compute (aggregates, forecast, sends, billing metrics) is read-only. A report share
is edited here, and :mod:`campaign.report_shares` keeps its beat schedule in step; a failed or
interrupted send is sent again only by a person's decision, from the send list.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html

from campaign import report_shares
from campaign.admin.base import LargeTableMixin, ReadOnlyAdmin
from campaign.models import CustomerMetrics, DeliveryAggregate, ForecastLog, Report, ReportSend, ReportShare
from campaign.workflow_runs import RunRefused


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
        cleaned = super().clean()
        typed = [part for part in self.cleaned_data.get("addresses", "").replace(",", "\n").splitlines() if part.strip()]
        try:
            extra = report_shares.users_for_addresses(typed)
        except forms.ValidationError as error:
            self.add_error("addresses", error)
            return cleaned
        chosen = list(cleaned.get("recipients") or [])
        recipients = list({user.pk: user for user in [*chosen, *extra]}.values())
        try:
            report_shares.check_recipients(recipients)
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
        super().save_related(request, form, formsets, change)
        report_shares.share_saved(form.instance, created=not change)

    def delete_model(self, request: HttpRequest, obj: ReportShare) -> None:
        report_shares.delete_share(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ReportShare]) -> None:
        for share in queryset:
            report_shares.delete_share(share)


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
        queued, refused = 0, []
        for send in queryset.select_related("share"):
            try:
                if report_shares.send_again(send, user=request.user):
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
