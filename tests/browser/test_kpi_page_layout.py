"""A delivery's KPI page fits a 1024 px and a 1440 px window: its charts span the content's width
with their text at its own size (at 1920 px too), and its table of every daily rate has no column cut off and no
header broken inside a word (:mod:`tests.browser.layout` measures the rest in Chromium).

The delivery has a month of send days with seven-digit counts, the widest the table gets. Each
width's screenshot goes to the instance's var/screenshots/; the 1440 px one is the picture of
docs/reports.md (``UPDATE_DOC_IMAGES=1`` writes it to docs/images/kpi-page.png).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from django.conf import settings

from campaign.models import DeliveryAggregate
from tests import factories
from tests.browser.layout import WIDTHS, full_page_screenshot, layout_problems, open_at_width

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SCREENSHOTS = Path(settings.VAR_DIR) / "screenshots"
DOC_IMAGES = Path(settings.BASE_DIR) / "docs" / "images" if os.environ.get("UPDATE_DOC_IMAGES") else SCREENSHOTS
SCREENSHOTS.mkdir(parents=True, exist_ok=True)
#: The share of its container's width a chart must span.
FILLED = 0.9
#: The layout is checked at the admin's widths; the charts up to a wide desktop screen's as well.
CHART_WIDTHS = (*WIDTHS, 1920)

#: Each chart's width, its container's inner width, and the tallest of its labels (px): a chart
#: stretched to the width with its text stretched too would have labels several times 10 px tall.
CHARTS_JS = r"""
return [...document.querySelectorAll("#content-main > svg")].map((chart) => {
    const container = chart.parentElement;
    const style = getComputedStyle(container);
    const inner = container.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const labels = [...chart.querySelectorAll("text")].map((text) => text.getBoundingClientRect().height);
    return {id: chart.id, width: chart.getBoundingClientRect().width, container: inner,
            tallest_label: Math.max(...labels)};
});
"""


def month_of_sends() -> int:
    """Thirty send days of a million-message delivery, some with more opens than messages."""
    delivery = factories.DeliveryFactory(label="Winter sale: the whole catalogue, every store")
    for offset in range(30):
        sent = 1_000_000 + 37_000 * offset
        delivered = sent - 12_345 - 100 * offset
        DeliveryAggregate.objects.create(
            day=datetime.date(2026, 11, 1) + datetime.timedelta(days=offset), delivery=delivery, channel="email",
            sent=sent, delivered=delivered, bounces=sent - delivered, hard_bounces=(sent - delivered) // 3,
            soft_bounces=(sent - delivered) // 3, cohort_opens=delivered * (80 + 5 * offset) // 100,
            cohort_unique_opens=delivered * (20 + offset) // 100, cohort_clicks=delivered // 9,
            cohort_unique_clicks=delivered // 20, cohort_unsubscribes=delivered // 500,
        )
    return delivery.pk


def test_kpi_page_fits_the_window_and_its_charts_fill_the_width(logged_in, live_server) -> None:
    browser = logged_in
    url = f"{live_server.url}/admin/campaign/delivery/{month_of_sends()}/kpis/"
    problems, charts = {}, {}
    for width in CHART_WIDTHS:
        open_at_width(browser, url, width)
        assert browser.find_elements("css selector", "#kpi-table"), "the KPI page did not render its table"
        if width in WIDTHS:
            problems[width] = layout_problems(browser)
        charts[width] = browser.execute_script(CHARTS_JS)
        full_page_screenshot(browser, SCREENSHOTS / f"layout-kpi-page-{width}.png")
        if width == 1440:
            full_page_screenshot(browser, DOC_IMAGES / "kpi-page.png")

    assert problems == {width: [] for width in WIDTHS}
    for width in CHART_WIDTHS:
        assert [chart["id"] for chart in charts[width]] == ["bar-chart", "line-chart"]
        for chart in charts[width]:
            assert chart["width"] >= FILLED * chart["container"], (width, chart)
            assert chart["tallest_label"] < 20, (width, chart)
    # Wider window, wider chart: the charts follow the page, not a fixed size.
    assert charts[1024][0]["width"] + 300 < charts[1440][0]["width"] < charts[1920][0]["width"] - 300


def test_the_check_sees_a_chart_of_fixed_width(logged_in, live_server) -> None:
    """The measure can fail: the same chart held to 720 px, as it once was."""
    browser = logged_in
    open_at_width(browser, f"{live_server.url}/admin/campaign/delivery/{month_of_sends()}/kpis/", 1440)
    browser.execute_script("""document.querySelector("#bar-chart").setAttribute("width", "720")""")

    bar_chart = browser.execute_script(CHARTS_JS)[0]

    assert bar_chart["width"] < FILLED * bar_chart["container"]
