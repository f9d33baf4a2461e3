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
    delivery = factories.DeliveryFactory()
    for offset, (sent, delivered, opens, clicks) in enumerate([(100, 96, 24, 3), (50, 49, 0, 0), (10, 7, 7, 7)]):
        DeliveryAggregate.objects.create(day=datetime.date(2026, 11, 20 + offset), delivery=delivery, channel="email",
                                         sent=sent, delivered=delivered, bounces=sent - delivered,
                                         unique_opens=opens, unique_clicks=clicks)
    return delivery


def test_daily_figures_and_rates_come_from_the_aggregates(delivery):
    days = kpi_charts.daily_figures(delivery)

    assert [(d.sent, d.delivered, d.bounces) for d in days] == [(100, 96, 4), (50, 49, 1), (10, 7, 3)]
    assert [d.open_rate for d in days] == [Decimal("25.00"), Decimal("0.00"), Decimal("100.00")]
    assert [d.click_through_rate for d in days] == [Decimal("3.13"), Decimal("0.00"), Decimal("100.00")]


def test_kpi_page_draws_bars_and_lines(admin_client, delivery):
    response = admin_client.get(f"/admin/campaign/delivery/{delivery.pk}/kpis/")

    page = response.content.decode()
    assert response.status_code == 200
    assert page.count("<rect x=") >= 9 + 3  # three bars a day, plus the legend
    assert page.count("<polyline") == 2
    assert "2026-11-20: 96 delivered" in page
    assert "3.13 %" in page
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
