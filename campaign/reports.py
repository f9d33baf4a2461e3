"""Reports: their period, their figures, and their PDF (drawn by :mod:`campaign.report_pdf`).

Why a module of its own: the same renderer serves two workflows (reportSendingNow and billing)
and the admin, and its input is deliberately limited to DeliveryAggregate (day x delivery x
channel counters maintained by reportingAggregates). Reading the raw delivery or tracking logs
here would make a year-long report scan millions of rows; the aggregates keep a report's cost
proportional to days x deliveries.

Counts sum the aggregates' event counters (an open counts on the day it happened); rates are the
platform's, per send-day cohort (``campaign.indicators.day_rates``): over the messages sent in the
period and what their recipients did, whenever they did it. The Open rate counts repeated opens and
may exceed 100 %; rates over unique recipients never do.

``collect_figures`` and ``render_report_pdf`` are separate so tests and the email body can use the
figures without parsing the PDF. reportlab is imported by the first PDF rendered, not with this
module, which every process loads (the billing workflow and the admin use it): it takes a tenth of
a second, which each ``manage.py`` command would pay for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Sum

from campaign.indicators import RATE_COUNTERS, day_rates, rate_sums
from campaign.models import CustomerMetrics, DeliveryAggregate, Report

#: Rendering a report is limited to 4 minutes.
RENDER_LIMIT_S = 240
#: Charts show at most this many points; longer periods are grouped into consecutive-day buckets.
MAX_CHART_POINTS = 62
#: Per-delivery table rows (the largest deliveries first).
MAX_DELIVERY_ROWS = 200
#: The counts shown, with the platform's labels (opens and the like on the day they happened).
COUNT_LABELS = {
    "sent": "Processed/sent", "delivered": "Delivered", "bounces": "Bounces + errors", "hard_bounces": "Hard bounces",
    "soft_bounces": "Soft bounce", "on_denylist": "On denylist", "rejected": "Rejected", "quarantine": "Quarantine",
    "opens": "Open", "unique_opens": "Unique opens", "clicks": "Click", "unique_clicks": "Unique clicks",
    "unsubscribes": "Unsubscribe", "mirror_pages": "Mirror page", "impressions": "Impressions",
}
COUNTERS = tuple(COUNT_LABELS)
#: Every sum a report row holds: the counts shown and the cohort counts its rates divide.
SUMMED = tuple(dict.fromkeys((*COUNTERS, *RATE_COUNTERS)))


class RenderTimeout(Exception):
    """Rendering went over RENDER_LIMIT_S."""


def instance_name() -> str:
    """The name printed on reports: INSTANCE_NAME, else the first allowed host, else a default."""
    name = settings.INSTANCE_NAME.strip()
    if name:
        return name
    hosts = [host for host in getattr(settings, "ALLOWED_HOSTS", []) if host and host not in ("*", ".localhost")]
    return hosts[0].lstrip(".") if hosts else "Campaign workflows"


@dataclass(frozen=True)
class Period:
    """Whole days, both ends included."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def label(self) -> str:
        return f"{self.start.isoformat()} to {self.end.isoformat()}"


def report_period(report: Report, due: date) -> Period:
    """The ``period_days`` full days before the due date (the due day itself is not complete)."""
    end = due - timedelta(days=1)
    return Period(start=end - timedelta(days=report.period_days - 1), end=end)


@dataclass
class Figures:
    period: Period
    totals: dict[str, int]
    daily: list[dict[str, Any]]  # {"day": date, counters...}, every day of the period
    by_channel: list[dict[str, Any]]
    by_delivery: list[dict[str, Any]]
    rates: dict[str, Decimal] = field(default_factory=dict)


def _sums() -> dict[str, Sum]:
    return {**{name: Sum(name) for name in COUNTERS}, **rate_sums()}


def collect_figures(report: Report, period: Period) -> Figures:
    """Sum DeliveryAggregate over the period (grouped in SQL: the result is days + channels +
    at most MAX_DELIVERY_ROWS rows, whatever the size of the logs)."""
    rows = DeliveryAggregate.objects.filter(day__gte=period.start, day__lte=period.end)
    if report.kind == Report.Kind.CAMPAIGN and report.campaign_id:
        rows = rows.filter(delivery__campaign_id=report.campaign_id)
    sums = _sums()
    totals = {name: value or 0 for name, value in rows.aggregate(**sums).items()}
    by_day = {row["day"]: row for row in rows.values("day").annotate(**sums).order_by("day")}
    daily = []
    for offset in range(period.days):
        day = period.start + timedelta(days=offset)
        found = by_day.get(day, {})
        daily.append({"day": day, **{name: found.get(name) or 0 for name in SUMMED}})
    by_channel = [
        {"channel": row["channel"], **{name: row[name] or 0 for name in SUMMED}}
        for row in rows.values("channel").annotate(**sums).order_by("channel")
    ]
    by_delivery = [
        {"delivery": row["delivery__label"], "delivery_id": row["delivery_id"], **{name: row[name] or 0 for name in SUMMED}}
        for row in rows.values("delivery_id", "delivery__label").annotate(**sums)
                       .order_by("-sent", "delivery_id")[:MAX_DELIVERY_ROWS]
    ]
    return Figures(period=period, totals=totals, daily=daily, by_channel=by_channel, by_delivery=by_delivery,
                   rates=day_rates(totals))


# -- what the charts show ------------------------------------------------------------------------

def _buckets(daily: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_CHART_POINTS points: consecutive days summed together, labelled by first day."""
    size = max(1, -(-len(daily) // MAX_CHART_POINTS))
    buckets = []
    for index in range(0, len(daily), size):
        chunk = daily[index:index + size]
        bucket = {"day": chunk[0]["day"], **{name: sum(row[name] for row in chunk) for name in SUMMED}}
        buckets.append(bucket)
    return buckets


def _labels(points: list[dict[str, Any]]) -> list[str]:
    step = max(1, len(points) // 10)
    return [row["day"].strftime("%m-%d") if index % step == 0 else "" for index, row in enumerate(points)]


# -- the PDF -------------------------------------------------------------------------------------

def render_report_pdf(report: Report, period: Period, *, figures: Figures | None = None,
                      generated: datetime | None = None, limit_s: float = RENDER_LIMIT_S) -> bytes:
    """The report as PDF bytes: title page, key figures, two charts, tables per channel, per
    delivery and per day."""
    from campaign import report_pdf

    return report_pdf.render_report_pdf(report, period, figures=figures, generated=generated, limit_s=limit_s)


def render_billing_pdf(metrics: CustomerMetrics, *, generated: datetime | None = None,
                       limit_s: float = RENDER_LIMIT_S) -> bytes:
    """The billing activity report of one CustomerMetrics row."""
    from campaign import report_pdf

    return report_pdf.render_billing_pdf(metrics, generated=generated, limit_s=limit_s)
