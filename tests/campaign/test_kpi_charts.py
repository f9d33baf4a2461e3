"""The per-delivery KPI page: charts and figures drawn from the daily aggregates."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission

from campaign import kpi_charts
from campaign.models import DeliveryAggregate
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def delivery():
    """Three send days. The first: 96 delivered, 30 open rows among 24 recipients who opened, 3 who
    clicked; the third: every delivered message opened, several times (an Open rate above 100 %)."""
    delivery = factories.DeliveryFactory()
    days = [(100, 96, 30, 24, 3), (50, 49, 0, 0, 0), (10, 7, 15, 7, 7)]
    for offset, (sent, delivered, opens, openers, clickers) in enumerate(days):
        DeliveryAggregate.objects.create(
            day=datetime.date(2026, 11, 20 + offset), delivery=delivery, channel="email", sent=sent,
            delivered=delivered, bounces=sent - delivered, hard_bounces=(sent - delivered) // 2,
            cohort_opens=opens, cohort_unique_opens=openers, cohort_unique_clicks=clickers, cohort_clicks=2 * clickers,
            # Event-day counters are not what per-day rates divide: they must not change them.
            opens=999, unique_opens=999, unique_clicks=999,
        )
    return delivery


def test_daily_rates_are_the_send_day_cohorts_over_delivered_and_sent(delivery):
    days = kpi_charts.daily_figures(delivery)

    assert [(d.sent, d.delivered, d.bounces) for d in days] == [(100, 96, 4), (50, 49, 1), (10, 7, 3)]
    assert [d.rates["open_rate"] for d in days] == [Decimal("31.25"), Decimal("0.00"), Decimal("214.29")], \
        "the Open rate counts repeated opens: above 100 % on the third day"
    assert [d.rates["unique_open_rate"] for d in days] == [Decimal("25.00"), Decimal("0.00"), Decimal("100.00")]
    assert [d.rates["click_through_rate"] for d in days] == [Decimal("3.13"), Decimal("0.00"), Decimal("100.00")]
    assert [d.rates["hard_bounce_rate"] for d in days] == [Decimal("2.00"), Decimal("0.00"), Decimal("10.00")]
    assert all(d.rates[name] <= 100 for d in days for name in d.rates if name != "open_rate")


def test_a_push_deliverys_click_through_counts_interactions(delivery):
    push = factories.DeliveryFactory(channel="push")
    DeliveryAggregate.objects.create(day=datetime.date(2026, 11, 20), delivery=push, channel="push", sent=4,
                                     delivered=4, cohort_clicks=5, cohort_unique_clicks=2)

    (day,) = kpi_charts.daily_figures(push)

    assert day.rates["click_through_rate"] == Decimal("125.00"), "interactions / delivered"


def test_kpi_page_draws_bars_and_lines(admin_client, delivery):
    response = admin_client.get(f"/admin/campaign/delivery/{delivery.pk}/kpis/")

    page = response.content.decode()
    assert response.status_code == 200
    assert page.count("<rect x=") >= 9 + 3  # three bars a day, plus the legend
    assert page.count("<polyline") == 3
    assert "2026-11-20: 96 delivered" in page
    assert "3.13 %" in page and "214.29 %" in page
    for label in ("Open rate (%)", "Unique open rate (%)", "Click through rate (%)", "Denylist rate (%)",
                  "Quarantine rate (%)", "Rejected rate (%)", "Mirror page rate (%)"):
        assert f"<th>{label}</th>" in page
    assert f"/admin/campaign/delivery/{delivery.pk}/kpis/" in admin_client.get(
        f"/admin/campaign/delivery/{delivery.pk}/change/").content.decode()


def test_kpi_page_without_aggregates_says_so(admin_client):
    delivery = factories.DeliveryFactory()

    page = admin_client.get(f"/admin/campaign/delivery/{delivery.pk}/kpis/").content.decode()

    assert "No daily aggregates yet" in page


def test_kpi_page_needs_the_view_permission(client, django_user_model, delivery):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(f"/admin/campaign/delivery/{delivery.pk}/kpis/").status_code == 403

    user.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    assert client.get(f"/admin/campaign/delivery/{delivery.pk}/kpis/").status_code == 200


def test_the_charts_span_the_width_with_text_in_pixels(delivery):
    """Laid out across in percent of the page's width (no fixed or maximum width, no viewBox that
    would scale the labels with it); heights and font sizes in pixels."""
    days = kpi_charts.daily_figures(delivery)

    for chart in (kpi_charts.bar_chart(days), kpi_charts.line_chart(days)):
        opening = chart[:chart.index(">")]
        assert 'width="100%"' in opening and "max-width" not in opening and "viewBox" not in opening
        assert '<text x="50.000%" y="198" font-size="10" text-anchor="middle">21 Nov</text>' in chart
    assert '<circle cx="81.333%"' in kpi_charts.line_chart(days), "the third day's point, at the middle of its slot"
