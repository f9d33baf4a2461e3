"""campaign.reports: the PDF holds the title, period, instance and the figures computed here
independently from a fixed set of DeliveryAggregate rows (counts as sums of the day's events, rates
over each send day's cohort, the push table's click-through for push), and vector charts."""

from __future__ import annotations

import io
import re
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from pypdf import PdfReader

from campaign import reports
from campaign.models import Channel, Report
from tests.factories import CampaignFactory, DeliveryAggregateFactory, DeliveryFactory, ReportFactory

DUE = date(2026, 3, 10)
# (delivery key, day, sent, delivered, bounces, opens, unique_opens, clicks, unique_clicks, unsubscribes,
#  hard_bounces, cohort_opens, cohort_unique_opens, cohort_clicks, cohort_unique_clicks)
ROWS = [
    ("news", date(2026, 3, 2), 999, 990, 9, 50, 40, 10, 5, 1, 4, 60, 45, 12, 7),   # the day before the period: excluded
    ("news", date(2026, 3, 3), 1200, 1150, 50, 400, 321, 90, 61, 3, 20, 420, 330, 95, 63),
    ("news", date(2026, 3, 5), 800, 777, 23, 300, 222, 70, 44, 2, 9, 290, 215, 66, 41),
    ("sms", date(2026, 3, 5), 150, 149, 1, 0, 0, 7, 6, 0, 1, 6, 6, 8, 6),
    ("push", date(2026, 3, 5), 100, 90, 10, 40, 30, 120, 25, 0, 4, 40, 30, 120, 25),  # no campaign
    ("other", date(2026, 3, 9), 430, 400, 30, 120, 101, 20, 17, 1, 12, 130, 105, 22, 18),  # another campaign
    ("news", date(2026, 3, 10), 5000, 5000, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1),      # the due day: excluded
]
COUNTERS = ("sent", "delivered", "bounces", "opens", "unique_opens", "clicks", "unique_clicks", "unsubscribes",
            "hard_bounces", "cohort_opens", "cohort_unique_opens", "cohort_clicks", "cohort_unique_clicks")
#: What a report sums as is (the two click counts of the cohort become one click-through numerator).
SUMMED = COUNTERS[:-2]


def pct(numerator: int, denominator: int) -> str:
    if not denominator:
        return "0.00"
    return str((Decimal(numerator) * 100 / Decimal(denominator)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


@pytest.fixture
def dataset(db):
    campaign = CampaignFactory(label="Spring")
    deliveries = {
        "news": DeliveryFactory(label="Spring newsletter", campaign=campaign, channel=Channel.EMAIL),
        "sms": DeliveryFactory(label="Spring SMS", campaign=campaign, channel=Channel.SMS),
        "other": DeliveryFactory(label="Other campaign mail", channel=Channel.EMAIL),
        "push": DeliveryFactory(label="App news", channel=Channel.PUSH),
    }
    for key, day, *values in ROWS:
        DeliveryAggregateFactory(delivery=deliveries[key], day=day, **dict(zip(COUNTERS, values, strict=True)))
    return campaign, deliveries


def expected(keys: set[str]) -> dict[str, int]:
    start, end = DUE - timedelta(days=7), DUE - timedelta(days=1)
    chosen = [row for row in ROWS if row[0] in keys and start <= row[1] <= end]
    return {name: sum(row[2 + index] for row in chosen) for index, name in enumerate(COUNTERS)}


def click_through(keys: set[str], *, day: date | None = None) -> int:
    """The click-through numerator: unique clickers of email and SMS, every interaction of push."""
    start, end = DUE - timedelta(days=7), DUE - timedelta(days=1)
    chosen = [row for row in ROWS if row[0] in keys and start <= row[1] <= end and day in (None, row[1])]
    return sum(row[2 + COUNTERS.index("cohort_clicks" if row[0] == "push" else "cohort_unique_clicks")] for row in chosen)


ALL = {"news", "sms", "other", "push"}


def pdf_text(pdf: bytes) -> tuple[PdfReader, str]:
    reader = PdfReader(io.BytesIO(pdf))
    # Table cells come out one per line: compare with whitespace collapsed to single spaces.
    return reader, re.sub(r"\s+", " ", " ".join(page.extract_text() for page in reader.pages))


def test_period_is_the_full_days_before_the_due_date(db) -> None:
    period = reports.report_period(Report(label="x", period_days=7), DUE)
    assert (period.start, period.end, period.days) == (date(2026, 3, 3), date(2026, 3, 9), 7)


def test_figures_sum_the_aggregates_of_the_period_only(dataset) -> None:
    report = ReportFactory(label="All deliveries", period_days=7)
    figures = reports.collect_figures(report, reports.report_period(report, DUE))
    assert {name: figures.totals[name] for name in SUMMED} == {name: expected(ALL)[name] for name in SUMMED}
    assert figures.totals["cohort_click_through"] == click_through(ALL)
    assert [row["day"] for row in figures.daily] == [date(2026, 3, 3) + timedelta(days=n) for n in range(7)]
    assert figures.daily[2]["sent"] == 800 + 150 + 100 and figures.daily[1]["sent"] == 0
    assert {row["channel"]: row["sent"] for row in figures.by_channel} == {"email": 1200 + 800 + 430, "sms": 150,
                                                                          "push": 100}


def test_campaign_report_keeps_only_that_campaigns_deliveries(dataset) -> None:
    campaign, _ = dataset
    report = ReportFactory(label="Spring campaign", kind=Report.Kind.CAMPAIGN, campaign=campaign, period_days=7)
    figures = reports.collect_figures(report, reports.report_period(report, DUE))
    assert {name: figures.totals[name] for name in SUMMED} == {name: expected({"news", "sms"})[name] for name in SUMMED}
    assert [row["delivery"] for row in figures.by_delivery] == ["Spring newsletter", "Spring SMS"]


def test_pdf_has_title_period_instance_and_independent_figures(dataset, settings) -> None:
    settings.INSTANCE_NAME = "acme-marketing.example"
    report = ReportFactory(label="Weekly delivery KPIs", period_days=7)
    pdf = reports.render_report_pdf(report, reports.report_period(report, DUE))
    assert pdf.startswith(b"%PDF-")
    reader, text = pdf_text(pdf)
    first_page = re.sub(r"\s+", " ", reader.pages[0].extract_text())
    assert "Weekly delivery KPIs" in first_page
    assert "Period: 2026-03-03 to 2026-03-09" in first_page
    assert "Instance: acme-marketing.example" in first_page
    totals = expected(ALL)
    labels = {"sent": "Processed/sent", "delivered": "Delivered", "bounces": "Bounces + errors", "opens": "Open",
              "unique_opens": "Unique opens", "clicks": "Click", "unique_clicks": "Unique clicks",
              "unsubscribes": "Unsubscribe", "hard_bounces": "Hard bounces"}
    for name, label in labels.items():
        assert re.search(rf"{re.escape(label)} {totals[name]}\b", text), (name, totals[name])
    # Rates over the send-day cohorts: Open / Delivered, unique openers / delivered, and the click
    # through of email and SMS (unique clickers) with push's (interactions).
    assert f"Open rate (%) {pct(totals['cohort_opens'], totals['delivered'])}" in text
    assert f"Unique open rate (%) {pct(totals['cohort_unique_opens'], totals['delivered'])}" in text
    assert f"Click through rate (%) {pct(click_through(ALL), totals['delivered'])}" in text
    assert f"Delivered rate (%) {pct(totals['delivered'], totals['sent'])}" in text
    assert f"Hard bounces rate (%) {pct(totals['hard_bounces'], totals['sent'])}" in text
    # The per-day table: 2026-03-05 has three deliveries.
    day = [row for row in ROWS if row[1] == date(2026, 3, 5)]
    sums = {name: sum(row[2 + index] for row in day) for index, name in enumerate(COUNTERS)}
    assert (f"2026-03-05 {sums['sent']} {sums['delivered']} {sums['bounces']} {sums['opens']} {sums['clicks']} "
            f"{pct(sums['cohort_opens'], sums['delivered'])} {pct(sums['cohort_unique_opens'], sums['delivered'])} "
            f"{pct(click_through(ALL, day=date(2026, 3, 5)), sums['delivered'])}") in text


def test_pdf_has_vector_charts(dataset) -> None:
    report = ReportFactory(label="Charts", period_days=7)
    reader, text = pdf_text(reports.render_report_pdf(report, reports.report_period(report, DUE)))
    assert "Sent, delivered and bounces per day" in text
    assert "Open, unique open and click through rates per day (%)" in text
    chart_page = next(page for page in reader.pages if "Sent, delivered and bounces per day" in page.extract_text())
    content = chart_page.get_contents().get_data().decode("latin-1")
    # Bars are rectangles ("x y w h re"): one per non-zero day and series, plus 3 legend swatches.
    start, end = DUE - timedelta(days=7), DUE - timedelta(days=1)
    days = {row[1] for row in ROWS if start <= row[1] <= end}
    bars = sum(1 for day in days for index in (0, 1, 2) if sum(r[2 + index] for r in ROWS if r[1] == day))
    assert bars == 9
    assert len(re.findall(r"\bre\b", content)) >= bars + 3
    lines_page = next(page for page in reader.pages if "click through rates per day" in page.extract_text())
    assert re.search(r"\bl\b", lines_page.get_contents().get_data().decode("latin-1"))  # polyline segments


def test_instance_name_falls_back_to_first_allowed_host(settings) -> None:
    settings.INSTANCE_NAME = ""
    settings.ALLOWED_HOSTS = ["reports.example.org", "localhost"]
    assert reports.instance_name() == "reports.example.org"
    settings.ALLOWED_HOSTS = ["*"]
    assert reports.instance_name() == "Campaign workflows"


def test_render_stops_after_its_time_limit(dataset) -> None:
    report = ReportFactory(label="Slow", period_days=7)
    with pytest.raises(reports.RenderTimeout):
        reports.render_report_pdf(report, reports.report_period(report, DUE), limit_s=-1)


def test_long_periods_chart_at_most_the_bucket_limit(dataset) -> None:
    report = ReportFactory(label="Year", period_days=365)
    figures = reports.collect_figures(report, reports.report_period(report, DUE))
    points = reports._buckets(figures.daily)
    assert len(points) <= reports.MAX_CHART_POINTS
    assert sum(point["sent"] for point in points) == figures.totals["sent"] == expected(ALL)["sent"] + 999
