"""The reports' PDF, drawn with reportlab: platypus for the text and tables, reportlab.graphics
for the charts (vector drawings). The PDF is built in memory.

Why a module of its own: reportlab takes a tenth of a second to import, so it is imported only
when a PDF is rendered (through :func:`campaign.reports.render_report_pdf` and
:func:`campaign.reports.render_billing_pdf`), not by every process that loads the reports.
"""

from __future__ import annotations

import io
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.linecharts import HorizontalLineChart
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from campaign.indicators import RATE_LABELS, day_rates
from campaign.models import CustomerMetrics, Report
from campaign.reports import (
    COUNT_LABELS,
    MAX_DELIVERY_ROWS,
    RENDER_LIMIT_S,
    Figures,
    Period,
    RenderTimeout,
    _buckets,
    _labels,
    collect_figures,
    instance_name,
)

SENT_COLOR = colors.HexColor("#4C72B0")
DELIVERED_COLOR = colors.HexColor("#55A868")
BOUNCES_COLOR = colors.HexColor("#C44E52")
OPEN_COLOR = colors.HexColor("#8172B2")
UNIQUE_OPEN_COLOR = colors.HexColor("#64B5CD")
CTR_COLOR = colors.HexColor("#DD8452")


# -- drawing -------------------------------------------------------------------------------------

def volume_chart(daily: list[dict[str, Any]], *, width: float = 17 * cm, height: float = 8 * cm) -> Drawing:
    """Bars of sent / delivered / bounces per day."""
    points = _buckets(daily)
    drawing = Drawing(width, height)
    drawing.add(String(0, height - 12, "Sent, delivered and bounces per day", fontName="Helvetica-Bold", fontSize=10))
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 40, 40, width - 60, height - 80
    chart.data = [[row[name] for row in points] for name in ("sent", "delivered", "bounces")]
    chart.categoryAxis.categoryNames = _labels(points)
    chart.categoryAxis.labels.fontSize = 6
    chart.categoryAxis.labels.angle = 45
    chart.categoryAxis.labels.boxAnchor = "ne"
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontSize = 7
    chart.barSpacing = 0
    chart.groupSpacing = 2
    for index, color in enumerate((SENT_COLOR, DELIVERED_COLOR, BOUNCES_COLOR)):
        chart.bars[index].fillColor = color
        chart.bars[index].strokeColor = None
    drawing.add(chart)
    drawing.add(_legend(width, height, [(SENT_COLOR, "sent"), (DELIVERED_COLOR, "delivered"), (BOUNCES_COLOR, "bounces")]))
    return drawing


#: The rates drawn per day, with their colours.
RATE_LINES = (("open_rate", OPEN_COLOR), ("unique_open_rate", UNIQUE_OPEN_COLOR), ("click_through_rate", CTR_COLOR))


def rates_chart(daily: list[dict[str, Any]], *, width: float = 17 * cm, height: float = 8 * cm) -> Drawing:
    """Lines of the Open rate, unique open rate and click through rate per send day (percent of
    delivered)."""
    points = _buckets(daily)
    drawing = Drawing(width, height)
    drawing.add(String(0, height - 12, "Open, unique open and click through rates per day (%)",
                       fontName="Helvetica-Bold", fontSize=10))
    chart = HorizontalLineChart()
    chart.x, chart.y, chart.width, chart.height = 40, 40, width - 60, height - 80
    point_rates = [day_rates(row) for row in points]
    chart.data = [[float(rates[name]) for rates in point_rates] for name, _ in RATE_LINES]
    chart.categoryAxis.categoryNames = _labels(points)
    chart.categoryAxis.labels.fontSize = 6
    chart.categoryAxis.labels.angle = 45
    chart.categoryAxis.labels.boxAnchor = "ne"
    chart.valueAxis.valueMin = 0
    chart.valueAxis.valueMax = max(10.0, *(value for series in chart.data for value in series)) if points else 10.0
    chart.valueAxis.labels.fontSize = 7
    for index, (_, color) in enumerate(RATE_LINES):
        chart.lines[index].strokeColor = color
        chart.lines[index].strokeWidth = 1.5
    drawing.add(chart)
    drawing.add(_legend(width, height, [(color, RATE_LABELS[name].lower()) for name, color in RATE_LINES]))
    return drawing


def _legend(width: float, height: float, pairs: list[tuple[Any, str]]) -> Legend:
    legend = Legend()  # one row above the plot area, so it never covers the bars
    legend.x, legend.y = width - 90 * len(pairs), height - 22
    legend.fontSize = 7
    legend.columnMaximum = 1
    legend.deltax = 90
    legend.dxTextSpace = 4
    legend.alignment = "right"
    legend.colorNamePairs = pairs
    return legend


# -- documents -----------------------------------------------------------------------------------

TABLE_STYLE = TableStyle([
    ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
    ("FONT", (0, 1), (-1, -1), "Helvetica", 8),
    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#E8ECF4")),
    ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
    ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
    ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
])


def _table(header: list[str], rows: list[list[Any]], widths: list[float] | None = None) -> Table:
    table = Table([header, *[[str(cell) for cell in row] for row in rows]], colWidths=widths, repeatRows=1)
    table.setStyle(TABLE_STYLE)
    return table


def _title_page(story: list[Any], *, title: str, subtitle: str, period: Period, generated: datetime) -> None:
    styles = getSampleStyleSheet()
    story += [
        Spacer(1, 6 * cm),
        Paragraph(title, styles["Title"]),
        Paragraph(subtitle, styles["Heading3"]),
        Spacer(1, 1 * cm),
        Paragraph(f"Period: {period.label()}", styles["Heading2"]),
        Paragraph(f"Instance: {instance_name()}", styles["Normal"]),
        Paragraph(f"Generated: {generated.strftime('%Y-%m-%d %H:%M %Z').strip()}", styles["Normal"]),
        PageBreak(),
    ]


def _build(story: list[Any], *, title: str, deadline: float) -> bytes:
    if time.monotonic() > deadline:
        raise RenderTimeout(f"rendering took longer than {RENDER_LIMIT_S}s")
    buffer = io.BytesIO()

    def footer(canvas: Any, doc: Any) -> None:
        if time.monotonic() > deadline:  # checked once per page: a runaway document stops here
            raise RenderTimeout(f"rendering took longer than {RENDER_LIMIT_S}s")
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.drawString(2 * cm, 1.2 * cm, f"{title} - {instance_name()}")
        canvas.drawRightString(A4[0] - 2 * cm, 1.2 * cm, f"page {doc.page}")
        canvas.restoreState()

    document = SimpleDocTemplate(buffer, pagesize=A4, title=title, author=instance_name(),
                                 leftMargin=2 * cm, rightMargin=2 * cm, topMargin=2 * cm, bottomMargin=2 * cm)
    document.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


def render_report_pdf(report: Report, period: Period, *, figures: Figures | None = None,
                      generated: datetime | None = None, limit_s: float = RENDER_LIMIT_S) -> bytes:
    """The report as PDF bytes: title page, key figures, two charts, tables per channel, per
    delivery and per day."""
    deadline = time.monotonic() + limit_s
    figures = figures or collect_figures(report, period)
    generated = generated or datetime.now().astimezone()
    styles = getSampleStyleSheet()
    story: list[Any] = []
    subtitle = report.get_kind_display()
    if report.kind == Report.Kind.CAMPAIGN and report.campaign_id:
        subtitle += f": {report.campaign.label}"
    _title_page(story, title=report.label, subtitle=subtitle, period=period, generated=generated)

    totals, rates = figures.totals, figures.rates
    story.append(Paragraph("Key figures", styles["Heading2"]))
    story.append(_table(["Figure", "Value"], [
        *([label, totals[name]] for name, label in COUNT_LABELS.items()),
        *([f"{label} (%)", rates[name]] for name, label in RATE_LABELS.items()),
    ], widths=[6 * cm, 4 * cm]))
    story.append(Paragraph(
        "Counts sum each event on the day it happened. Rates are per send day: the messages sent in the period and "
        "what their recipients did, whenever they did it. The Open rate counts repeated opens (Open / Delivered) and "
        "may exceed 100 %; a push delivery's click through rate is its interactions over delivered.",
        styles["Normal"]))
    story += [Spacer(1, 0.6 * cm), volume_chart(figures.daily), Spacer(1, 0.4 * cm), rates_chart(figures.daily)]

    def cohort_rates(row: dict[str, Any]) -> list[Decimal]:
        row_rates = day_rates(row)
        return [row_rates["open_rate"], row_rates["unique_open_rate"], row_rates["click_through_rate"]]

    story.append(Paragraph("Per channel", styles["Heading2"]))
    story.append(_table(["Channel", "Sent", "Delivered", "Bounces", "Open rate", "Unique open rate", "CTR",
                         "Unsubscribe rate"], [
        [row["channel"], row["sent"], row["delivered"], row["bounces"], *cohort_rates(row),
         day_rates(row)["unsubscribe_rate"]]
        for row in figures.by_channel
    ] or [["(none)", 0, 0, 0, 0, 0, 0, 0]]))
    if report.kind != Report.Kind.DAILY_AGGREGATES:
        story.append(Paragraph(f"Per delivery (largest {MAX_DELIVERY_ROWS})", styles["Heading2"]))
        story.append(_table(["Delivery", "Sent", "Delivered", "Bounces", "Open rate", "Unique open rate", "CTR"], [
            [row["delivery"][:40], row["sent"], row["delivered"], row["bounces"], *cohort_rates(row)]
            for row in figures.by_delivery
        ] or [["(none)", 0, 0, 0, 0, 0, 0]], widths=[5.6 * cm, 1.8 * cm, 1.8 * cm, 1.8 * cm, 1.9 * cm, 2.3 * cm, 1.8 * cm]))
    story.append(Paragraph("Per day", styles["Heading2"]))
    story.append(_table(["Day", "Sent", "Delivered", "Bounces", "Open", "Click", "Open rate", "Unique open rate", "CTR"], [
        [row["day"].isoformat(), row["sent"], row["delivered"], row["bounces"], row["opens"], row["clicks"],
         *cohort_rates(row)]
        for row in figures.daily
    ]))
    return _build(story, title=report.label, deadline=deadline)


def render_billing_pdf(metrics: CustomerMetrics, *, generated: datetime | None = None,
                       limit_s: float = RENDER_LIMIT_S) -> bytes:
    """The billing activity report of one CustomerMetrics row."""
    deadline = time.monotonic() + limit_s
    styles = getSampleStyleSheet()
    period = Period(metrics.period_start, metrics.period_end)
    story: list[Any] = []
    _title_page(story, title="Billing activity report", subtitle="System activity", period=period,
                generated=generated or datetime.now().astimezone())
    story.append(Paragraph("Activity", styles["Heading2"]))
    story.append(_table(["Figure", "Value"], [
        ["Deliveries", metrics.deliveries], ["Profiles", metrics.profiles],
        ["Active profiles (12 months)", metrics.active_profiles],
        ["Active transactional recipients (12 months)", metrics.active_transactional_recipients],
        ["Database size (bytes)", metrics.database_size_bytes],
    ], widths=[9 * cm, 5 * cm]))
    story.append(Paragraph("Active per channel (12 months)", styles["Heading2"]))
    story.append(Paragraph(
        "A profile is active when it was targeted or communicated with in the 12 months ending with the period, "
        "counted once however many messages it received; profiles excluded while a delivery was prepared "
        "(quarantine, denylist, typology rules) were not targeted. Transactional recipients (messages without a "
        "profile) are counted by distinct address, apart from the profiles. A profile reached on several channels "
        "counts once in the total above and once on each of its channels' lines below.", styles["Normal"]))
    story.append(_table(["Channel", "Profiles", "Transactional recipients"], [
        [channel, row["profiles"], row["transactional_recipients"]]
        for channel, row in sorted(metrics.active_by_channel.items())
    ] or [["(none)", 0, 0]], widths=[5 * cm, 3.5 * cm, 5 * cm]))
    story.append(Paragraph("Messages per channel (retries included)", styles["Heading2"]))
    story.append(_table(["Channel", "Messages", "Retries", "Total"], [
        [channel, row["messages"], row["retries"], row["total"]] for channel, row in sorted(metrics.messages_by_channel.items())
    ] or [["(none)", 0, 0, 0]], widths=[5 * cm, 3.5 * cm, 3.5 * cm, 3.5 * cm]))
    story.append(Paragraph("Email deliveries", styles["Heading2"]))
    story.append(_table(["Day", "Delivery", "Messages"], [
        [row["day"], row["label"][:60], row["messages"]] for row in metrics.email_deliveries
    ] or [["-", "(none)", 0]], widths=[3 * cm, 10 * cm, 3 * cm]))
    return _build(story, title="Billing activity report", deadline=deadline)
