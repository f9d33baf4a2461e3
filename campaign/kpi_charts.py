"""The per-delivery KPI page (admin): sent / delivered / bounces per day as bars, the Open rate,
unique open rate and click-through rate per day as lines, and every rate of the platform's table
per day, drawn as inline SVG from DeliveryAggregate (never raw logs).

Rates are per send day (cohort): the messages delivered that day and what their recipients did,
whenever they did it (``campaign.indicators.day_rates``), so a rate over unique recipients never
exceeds 100 %; the Open rate counts repeated opens, as the platform defines it, and may.

SVG is drawn on the server: no JavaScript library to ship, and the page prints as it shows. The
charts span the content's width (see ``HEIGHT``, ``SIDE``), their text keeping its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from campaign.indicators import RATE_LABELS, day_rates, rate_sums
from campaign.models import Delivery, DeliveryAggregate

#: The charts fill the page's width, whatever it is: across they are laid out in percent of it
#: (``SIDE`` on either side of the plot), down in pixels (``HEIGHT`` tall, ``MARGIN`` above and
#: below the plot). Text is in pixels too, so it reads the same at 1024 and at 1920 px.
HEIGHT, MARGIN, SIDE = 220, 36, 3.0
BAR_SERIES = (("sent", "#546e7a"), ("delivered", "#2e7d32"), ("bounces", "#c62828"))
LINE_SERIES = (("open_rate", "#1565c0"), ("unique_open_rate", "#6a1b9a"), ("click_through_rate", "#ef6c00"))
#: Names shown on the page: the platform's labels.
SERIES_LABELS = {"sent": "Processed/sent", "delivered": "Delivered", "bounces": "Bounces + errors", **RATE_LABELS}


@dataclass(frozen=True)
class Day:
    """One send day of a delivery: its message counts and every per-day rate (percent)."""

    day: object
    sent: int
    delivered: int
    bounces: int
    rates: dict[str, Decimal]

    def rate_list(self) -> list[Decimal]:
        """The rates in the table's column order."""
        return [self.rates[name] for name in RATE_LABELS]


def daily_figures(delivery: Delivery) -> list[Day]:
    """One aggregate query: the delivery's days in order (all channels summed)."""
    rows = DeliveryAggregate.objects.filter(delivery=delivery).values("day").order_by("day").annotate(**rate_sums())
    return [Day(day=row["day"], sent=row["sent"] or 0, delivered=row["delivered"] or 0, bounces=row["bounces"] or 0,
                rates=day_rates(row)) for row in rows]


def _x(index: int, count: int) -> float:
    """The middle of a day's slot, in percent of the chart's width."""
    step = (100 - 2 * SIDE) / max(count, 1)
    return SIDE + step * index + step / 2


def _y(value: float, top: float) -> float:
    return HEIGHT - MARGIN - (value / top if top else 0) * (HEIGHT - 2 * MARGIN)


def bar_chart(days: list[Day]) -> SafeString:
    top = max([max(day.sent, day.delivered, day.bounces) for day in days] or [0]) or 1
    step = (100 - 2 * SIDE) / max(len(days), 1)
    width = step / (len(BAR_SERIES) + 1)
    bars = []
    for index, day in enumerate(days):
        for series, (name, colour) in enumerate(BAR_SERIES):
            value = getattr(day, name)
            x = SIDE + step * index + width * (series + 0.5)
            bars.append((f"{x:.3f}%", f"{_y(value, top):.1f}", f"{width:.3f}%", f"{HEIGHT - MARGIN - _y(value, top):.1f}",
                         colour, f"{day.day}: {value} {SERIES_LABELS[name].lower()}"))
    body = format_html_join("", '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>', bars)
    return _frame(body, days, f"{top:,}", BAR_SERIES, "bar-chart")


def line_chart(days: list[Day]) -> SafeString:
    top = float(max([max(day.rates[name] for name, _ in LINE_SERIES) for day in days] or [Decimal(0)]) or 1)
    lines, points = [], []
    for name, colour in LINE_SERIES:
        coordinates = " ".join(f"{_x(i, len(days)):.3f},{_y(float(day.rates[name]), top):.1f}"
                               for i, day in enumerate(days))
        lines.append(format_html('<polyline points="{}" fill="none" stroke="{}" stroke-width="2" '
                                 'vector-effect="non-scaling-stroke"/>', coordinates, colour))
        points.extend(format_html('<circle cx="{}%" cy="{}" r="3" fill="{}"><title>{}: {} {} %</title></circle>',
                                  f"{_x(i, len(days)):.3f}", f"{_y(float(day.rates[name]), top):.1f}", colour, day.day,
                                  SERIES_LABELS[name], day.rates[name])
                      for i, day in enumerate(days))
    # A polyline takes no percentages: the lines are drawn in a plane 100 units wide stretched across
    # the chart (their strokes keep their width); the points, in percent, stay round.
    body = format_html('<svg width="100%" height="{}" viewBox="0 0 100 {}" preserveAspectRatio="none">{}</svg>{}',
                       HEIGHT, HEIGHT, mark_safe("".join(lines)), mark_safe("".join(points)))  # built by format_html
    return _frame(body, days, f"{top:.2f} %", LINE_SERIES, "line-chart")


def _frame(body: SafeString, days: list[Day], top_label: str, series: tuple, css_id: str) -> SafeString:
    labels = format_html_join("", '<text x="{}%" y="{}" font-size="10" text-anchor="middle">{}</text>',
                              ((f"{_x(i, len(days)):.3f}", HEIGHT - MARGIN + 14, day.day.strftime("%d %b"))
                               for i, day in enumerate(days) if len(days) <= 14 or i % max(1, len(days) // 14) == 0))
    legend = format_html_join("",
                              '<rect x="{}" y="6" width="10" height="10" fill="{}"/><text x="{}" y="15" font-size="11">{}</text>',
                              ((MARGIN + 170 * i, colour, MARGIN + 170 * i + 14, SERIES_LABELS[name])
                               for i, (name, colour) in enumerate(series)))
    return format_html(
        '<svg id="{}" class="kpi-chart" width="100%" height="{}" style="display:block" role="img">'
        '<line x1="{}%" y1="{}" x2="{}%" y2="{}" stroke="#999"/><text x="2" y="{}" font-size="10">{}</text>{}{}{}</svg>',
        css_id, HEIGHT, SIDE, HEIGHT - MARGIN, 100 - SIDE, HEIGHT - MARGIN, MARGIN - 4, top_label,
        body, labels, legend,
    )
