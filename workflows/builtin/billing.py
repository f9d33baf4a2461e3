"""billing — Billing.

Computes the system activity report of the last full month and emails it as a PDF to the billing user.

Why it is shaped like this: the figures are a handful of set-based aggregates (COUNT / COUNT
DISTINCT / GROUP BY over an indexed date range), so the database does the counting and Python only
sees one row per channel and one row per email delivery of the month. The result is one
CustomerMetrics row per period, written with update_or_create: a rerun (the schedule runs daily,
so late feedback is picked up until the month is old) updates it. The email goes out once per
period (cursor ``emailed_period``), not every day; ``resend`` forces it.

Definitions (docs/workflows/billing.md):
- period: whole local days (settings.TIME_ZONE), ``month`` property ``YYYY-MM``, default the last
  full month.
- deliveries: non-proof deliveries with at least one message sent or failed in the period.
- messages per channel: delivery logs sent or failed (status 1 or 2) created in the period, and
  retries: ``deferred`` sending feedback received in the period (each is one more attempt).
- profiles: profiles created before the end of the period.
- active profiles: the platform's definition. A profile is active when it was targeted or
  communicated with in the 12 months ending with the period, on any channel, counted once however
  many messages it received: distinct profiles with a non-proof delivery log created in that window,
  except logs whose status says the profile was excluded while the delivery was prepared (Ignored:
  quarantine, denylist, typology rules), since such a profile was never targeted.
- active transactional recipients: the same window and rule for the logs without a profile,
  counted by distinct address (email address or phone number), in a dimension of their own.
- both per channel too: a profile reached on two channels counts once in the total and once in each
  channel's line.
- database size: pg_database_size(current_database()) or the SQLite file size.
- email deliveries: one line per email delivery with >= 100 messages in the period; deliveries
  under 100 messages are grouped into one line per (local) day of their first message.
"""

from __future__ import annotations

import calendar
import os
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.db import connection
from django.db.models import Count, Min, Q
from django.utils import timezone

from campaign import reports
from campaign.models import Channel, CustomerMetrics, Delivery, DeliveryLog, LogStatus, Profile, SendingFeedback
from workflows.context import ActivityContext, SkipRun
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.properties import BooleanProperty, MonthProperty

BILLING_USERNAME = "billing"
SMALL_DELIVERY = 100
COUNTED = (LogStatus.SENT, LogStatus.FAILED)
#: A log in this status was excluded while its delivery was prepared (the address in quarantine or
#: on the denylist, a typology rule): its profile was not targeted, so it does not make it active.
#: A cancelled log (7) was targeted and then not sent (validity ended, delivery stopped): it counts.
EXCLUDED_AT_PREPARATION = (LogStatus.IGNORED,)


def month_period(text: str, *, today: date) -> reports.Period:
    """``YYYY-MM`` as a period; empty text is the last full month before ``today``."""
    if text.strip():
        try:
            year, month = (int(part) for part in text.strip().split("-"))
            first = date(year, month, 1)
        except ValueError:
            raise ValidationError(f"month: expected YYYY-MM, got {text!r}") from None
    else:
        first = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    return reports.Period(first, last)


def bounds(period: reports.Period) -> tuple[datetime, datetime]:
    """[start, end) as aware datetimes at local midnight."""
    zone = ZoneInfo(settings.TIME_ZONE)
    return (datetime.combine(period.start, time(0), tzinfo=zone),
            datetime.combine(period.end + timedelta(days=1), time(0), tzinfo=zone))


def database_size_bytes() -> int:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            return int(cursor.fetchone()[0])
    name = str(connection.settings_dict["NAME"])
    if connection.vendor == "sqlite" and name and not name.startswith(("file:", ":memory:")) and os.path.exists(name):
        return os.path.getsize(name)
    if connection.vendor == "sqlite":  # an in-memory test database: page_count x page_size
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA page_count")
            pages = cursor.fetchone()[0]
            cursor.execute("PRAGMA page_size")
            return int(pages * cursor.fetchone()[0])
    return 0


def compute_metrics(period: reports.Period) -> dict[str, Any]:
    start, end = bounds(period)
    counted = DeliveryLog.objects.filter(created_at__gte=start, created_at__lt=end, status__in=COUNTED).exclude(
        delivery__kind=Delivery.Kind.PROOF)
    messages = {row["delivery__channel"]: row["n"]
                for row in counted.values("delivery__channel").annotate(n=Count("id")).order_by()}
    retries = {
        row["delivery_log__delivery__channel"]: row["n"]
        for row in SendingFeedback.objects.filter(received_at__gte=start, received_at__lt=end,
                                                  outcome=SendingFeedback.Outcome.DEFERRED)
        .exclude(delivery_log__delivery__kind=Delivery.Kind.PROOF)
        .values("delivery_log__delivery__channel").annotate(n=Count("id")).order_by()
    }
    by_channel = {
        channel: {"messages": messages.get(channel, 0), "retries": retries.get(channel, 0),
                  "total": messages.get(channel, 0) + retries.get(channel, 0)}
        for channel in Channel.values if channel in messages or channel in retries
    }
    per_delivery = (counted.filter(delivery__channel=Channel.EMAIL)
                    .values("delivery_id", "delivery__label").annotate(n=Count("id"), first=Min("created_at"))
                    .order_by("first", "delivery_id"))
    email_rows: list[dict[str, Any]] = []
    small: dict[date, dict[str, int]] = {}
    for row in per_delivery:  # one row per email delivery of the month
        day = timezone.localtime(row["first"], start.tzinfo).date()
        if row["n"] >= SMALL_DELIVERY:
            email_rows.append({"day": day.isoformat(), "delivery_id": row["delivery_id"], "label": row["delivery__label"],
                               "messages": row["n"]})
        else:
            group = small.setdefault(day, {"deliveries": 0, "messages": 0})
            group["deliveries"] += 1
            group["messages"] += row["n"]
    for day, group in small.items():
        email_rows.append({"day": day.isoformat(), "delivery_id": None,
                           "label": f"{group['deliveries']} deliveries under {SMALL_DELIVERY} messages",
                           "deliveries": group["deliveries"], "messages": group["messages"]})
    email_rows.sort(key=lambda row: (row["day"], row["delivery_id"] is None, row["delivery_id"] or 0))
    return {
        "deliveries": counted.values("delivery_id").distinct().count(),
        "messages_by_channel": by_channel,
        "profiles": Profile.objects.filter(created_at__lt=end).count(),
        **active_recipients(since=active_window_start(period), until=end),
        "database_size_bytes": database_size_bytes(),
        "email_deliveries": email_rows,
    }


def active_window_start(period: reports.Period) -> datetime:
    """The start of the 12 months ending with the period: local midnight, one year before the day
    after the period's last day (the window is [this, the period's end))."""
    after = period.end + timedelta(days=1)
    return datetime.combine(_twelve_months_before(after), time(0), tzinfo=ZoneInfo(settings.TIME_ZONE))


def active_recipients(*, since: datetime, until: datetime) -> dict[str, Any]:
    """Distinct profiles and distinct transactional addresses with a log in [since, until), in total
    and per channel; proofs and logs excluded at preparation do not count. Two aggregate queries."""
    window = (DeliveryLog.objects.filter(created_at__gte=since, created_at__lt=until)
              .exclude(status__in=EXCLUDED_AT_PREPARATION).exclude(delivery__kind=Delivery.Kind.PROOF))
    figures = {"profiles": Count("profile_id", distinct=True),
               "transactional_recipients": Count("address", distinct=True, filter=Q(profile__isnull=True))}
    total = window.aggregate(**figures)
    per_channel = {row.pop("delivery__channel"): row
                   for row in window.values("delivery__channel").annotate(**figures).order_by()}
    return {
        "active_profiles": total["profiles"],
        "active_transactional_recipients": total["transactional_recipients"],
        "active_by_channel": {channel: per_channel[channel] for channel in Channel.values if channel in per_channel},
    }


def _twelve_months_before(day: date) -> date:
    year, month = (day.year - 1, day.month)
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _period(ctx: ActivityContext) -> reports.Period:
    return month_period(ctx.properties["month"], today=timezone.localdate())


def compute(ctx: ActivityContext) -> None:
    period = _period(ctx)
    values = compute_metrics(period)
    metrics, created = ctx.unit(lambda: CustomerMetrics.objects.update_or_create(
        period_start=period.start, period_end=period.end, defaults={**values, "computed_at": timezone.now()}))
    ctx.count("created" if created else "updated")
    ctx.log(f"Billing {period.label()}: {values['deliveries']} deliveries, {values['active_profiles']} active profiles, "
            f"{values['active_transactional_recipients']} active transactional recipients.")


def send(ctx: ActivityContext) -> None:
    period = _period(ctx)
    if ctx.get_cursor("emailed_period") == period.start.isoformat() and not ctx.properties["resend"]:
        ctx.log(f"Billing {period.label()} was already emailed; set resend to send it again.")
        ctx.count("already_emailed")
        return
    user = get_user_model().objects.filter(username=BILLING_USERNAME, is_active=True).first()
    if user is None or not user.email:
        raise SkipRun(f"no active user '{BILLING_USERNAME}' with an email address")
    metrics = CustomerMetrics.objects.get(period_start=period.start, period_end=period.end)
    pdf = reports.render_billing_pdf(metrics)
    lines = [f"Billing activity report for {period.label()} ({reports.instance_name()}):",
             f"  deliveries: {metrics.deliveries}",
             *(f"  {channel} messages: {row['total']} ({row['retries']} retries)"
               for channel, row in metrics.messages_by_channel.items()),
             f"  profiles: {metrics.profiles}, active over 12 months: {metrics.active_profiles}",
             f"  transactional recipients active over 12 months: {metrics.active_transactional_recipients}",
             *(f"  active on {channel}: {row['profiles']} profiles, {row['transactional_recipients']} transactional "
               "recipients" for channel, row in metrics.active_by_channel.items()),
             f"  database size: {metrics.database_size_bytes} bytes", "", "The full report is attached."]
    message = EmailMessage(subject=f"[{reports.instance_name()}] Billing {period.start:%Y-%m}", body="\n".join(lines),
                           from_email=settings.DEFAULT_FROM_EMAIL, to=[user.email])
    message.attach(f"billing-{period.start:%Y-%m}.pdf", pdf, "application/pdf")
    message.send()
    ctx.unit(lambda: ctx.set_cursor("emailed_period", period.start.isoformat()))
    ctx.count("emailed")


definition = register(WorkflowDefinition(
    id="billing",
    label="Billing",
    description="Computes the system activity report of the last full month and emails it as a PDF to the billing user.",
    schedule=Schedule("0 1 * * *"),
    activities=(compute, send),
    properties=(
        MonthProperty("month", "", help="The month to report, YYYY-MM; empty: the last full month."),
        BooleanProperty("resend", False, help="Email the report even if this period was already emailed."),
    ),
))
