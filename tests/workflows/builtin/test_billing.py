"""billing: the month's figures against a plain-Python computation over a fixed dataset (a profile
targeted twice, transactional recipients, proofs, the DST-free Paris month boundary), one row per
period, one email per period to the 'billing' user with the PDF."""

from __future__ import annotations

import importlib
import io
import re
from collections import defaultdict
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from pypdf import PdfReader

from campaign.models import Channel, CustomerMetrics, Delivery, DeliveryLog, LogStatus, Profile, SendingFeedback
from tests.factories import DeliveryFactory, ProfileFactory
from workflows import commands
from workflows.builtin import billing
from workflows.models import RunStatus

PARIS = ZoneInfo("Europe/Paris")
SENT, FAILED, IGNORED, PENDING = LogStatus.SENT, LogStatus.FAILED, LogStatus.IGNORED, LogStatus.PENDING

# key -> (channel, kind)
DELIVERIES = {
    "big": (Channel.EMAIL, Delivery.Kind.MARKETING),
    "small1": (Channel.EMAIL, Delivery.Kind.MARKETING),
    "small2": (Channel.EMAIL, Delivery.Kind.MARKETING),
    "small3": (Channel.EMAIL, Delivery.Kind.MARKETING),
    "sms": (Channel.SMS, Delivery.Kind.MARKETING),
    "transactional": (Channel.EMAIL, Delivery.Kind.TRANSACTIONAL),
    "proof": (Channel.EMAIL, Delivery.Kind.PROOF),
    "march": (Channel.EMAIL, Delivery.Kind.MARKETING),
}
# profile key -> created_at (UTC)
PROFILES = {"p1": "2025-01-01 10:00", "p2": "2025-06-01 10:00", "p3": "2026-02-10 10:00", "p4": "2025-01-01 10:00",
            "p5": "2025-01-01 10:00", "p7": "2024-01-01 10:00", "p8": "2026-02-28 23:30"}  # p8: 00:30 Paris on 03-01


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def logs() -> list[tuple[str, str | None, str, int]]:
    """(delivery, profile or None, created_at UTC, status)."""
    rows = []
    for index in range(120):  # big: 120 messages on Feb 2, four profiles, p1 among them
        rows.append(("big", f"p{1 + index % 3}", "2026-02-02 09:00", SENT if index % 10 else FAILED))
    rows += [("small1", "p1", "2026-01-31 23:30", SENT)] * 10  # 00:30 Paris on Feb 1: in February; p1 again
    rows += [("small2", "p2", "2026-02-01 08:00", SENT)] * 4 + [("small2", "p2", "2026-02-01 08:00", IGNORED)]
    rows += [("small3", "p3", "2026-02-10 08:00", FAILED)] * 7
    rows += [("sms", "p5", "2026-02-05 12:00", SENT)] * 4 + [("sms", "p5", "2026-02-05 12:00", PENDING)]
    rows += [("transactional", None, "2026-02-07 12:00", SENT)] * 3
    rows += [("proof", "p7", "2026-02-07 12:00", SENT)] * 2  # proofs never count
    rows += [("big", "p4", "2025-03-10 12:00", SENT)]  # within 12 months of the period end: p4 active
    rows += [("big", "p7", "2025-02-20 12:00", SENT)]  # older than 12 months
    rows += [("march", "p8", "2026-02-28 23:30", SENT)]  # 00:30 Paris on March 1: after the period
    return rows


# (log index in logs(), received_at UTC, outcome)
FEEDBACK = [(0, "2026-02-02 09:05", "deferred"), (1, "2026-02-02 09:06", "deferred"), (2, "2026-02-02 09:07", "delivered"),
            (125, "2026-03-01 09:00", "deferred")]


def expected() -> dict:
    start, end = datetime(2026, 2, 1, tzinfo=PARIS), datetime(2026, 3, 1, tzinfo=PARIS)
    active_start = datetime(2025, 3, 1, tzinfo=PARIS)
    rows = logs()
    counted = [row for row in rows
               if start <= utc(row[2]) < end and row[3] in (SENT, FAILED) and DELIVERIES[row[0]][1] != Delivery.Kind.PROOF]
    messages: dict[str, dict[str, int]] = defaultdict(lambda: {"messages": 0, "retries": 0, "total": 0})
    for row in counted:
        messages[DELIVERIES[row[0]][0]]["messages"] += 1
    for index, received, outcome in FEEDBACK:
        if outcome == "deferred" and start <= utc(received) < end:
            messages[DELIVERIES[rows[index][0]][0]]["retries"] += 1
    for row in messages.values():
        row["total"] = row["messages"] + row["retries"]
    window = [row for row in rows if active_start <= utc(row[2]) < end and DELIVERIES[row[0]][1] != Delivery.Kind.PROOF]
    active = len({row[1] for row in window if row[1]}) + (1 if any(row[1] is None for row in window) else 0)
    per_delivery: dict[str, list] = {}
    for row in counted:
        if DELIVERIES[row[0]][0] == Channel.EMAIL:
            per_delivery.setdefault(row[0], []).append(utc(row[2]).astimezone(PARIS).date())
    email = []
    small: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for key, days in per_delivery.items():
        if len(days) >= 100:
            email.append((min(days).isoformat(), key, len(days)))
        else:
            small[min(days)][0] += 1
            small[min(days)][1] += len(days)
    for day, (count, total) in small.items():
        email.append((day.isoformat(), f"{count} deliveries under 100 messages", total))
    return {
        "deliveries": len({row[0] for row in counted}),
        "messages_by_channel": dict(messages),
        "profiles": sum(1 for created in PROFILES.values() if utc(created) < end),
        "active_profiles": active,
        "email_deliveries": sorted(email),
    }


@pytest.fixture
def dataset(db, settings):
    settings.TIME_ZONE = "Europe/Paris"
    create_billing_user()
    deliveries = {key: DeliveryFactory(label=key, channel=channel, kind=kind) for key, (channel, kind) in DELIVERIES.items()}
    profiles = {}
    for key, created in PROFILES.items():
        profiles[key] = ProfileFactory(email=f"{key}@example.com")
        Profile.objects.filter(pk=profiles[key].pk).update(created_at=utc(created))
    created = DeliveryLog.objects.bulk_create(
        DeliveryLog(delivery=deliveries[delivery], profile=profiles[profile] if profile else None, address="x@example.com",
                    created_at=utc(at), status=status)
        for delivery, profile, at, status in logs()
    )
    SendingFeedback.objects.bulk_create(
        SendingFeedback(delivery_log_id=created[index].pk, outcome=outcome, received_at=utc(received))
        for index, received, outcome in FEEDBACK
    )
    return deliveries


def as_table(rows: list[dict]) -> list[tuple]:
    return sorted((row["day"], row["label"], row["messages"]) for row in rows)


def test_month_period_defaults_to_the_last_full_month() -> None:
    assert billing.month_period("", today=date(2026, 3, 1)) == billing.reports.Period(date(2026, 2, 1), date(2026, 2, 28))
    assert billing.month_period("", today=date(2026, 1, 15)) == billing.reports.Period(date(2025, 12, 1), date(2025, 12, 31))
    assert billing.month_period("2024-02", today=date(2026, 1, 1)).end == date(2024, 2, 29)


def create_billing_user() -> None:
    """The data migration's function (run here too: ``--no-migrations`` runs skip it)."""
    from django.apps import apps

    migration = importlib.import_module("campaign.migrations.0003_billing_user")
    migration.create_billing_user(apps, None)


def test_billing_user_migration_creates_it_once_with_no_usable_password(db, settings) -> None:
    get_user_model().objects.filter(username="billing").delete()
    create_billing_user()
    create_billing_user()
    user = get_user_model().objects.get(username="billing")
    assert not user.has_usable_password() and user.email == settings.BILLING_EMAIL and not user.is_staff


def test_figures_match_an_independent_computation(dataset) -> None:
    want = expected()
    # Sanity of the dataset itself: the cases the test is about are present.
    assert want["active_profiles"] == 6  # p1 (targeted twice) .. p5 once each, + the anonymous transactional group
    assert want["messages_by_channel"]["email"]["retries"] == 2
    run = commands.run_now("billing", actor="test", sync=True, overrides={"month": "2026-02"})
    assert run.status == RunStatus.SUCCEEDED, run.reason
    metrics = CustomerMetrics.objects.get()
    assert (metrics.period_start, metrics.period_end) == (date(2026, 2, 1), date(2026, 2, 28))
    assert metrics.deliveries == want["deliveries"]
    assert metrics.messages_by_channel == want["messages_by_channel"]
    assert metrics.profiles == want["profiles"]
    assert metrics.active_profiles == want["active_profiles"]
    assert as_table(metrics.email_deliveries) == want["email_deliveries"]
    assert metrics.database_size_bytes > 0


def test_database_size_on_postgresql_is_pg_database_size(db, is_postgres) -> None:
    from django.db import connection

    if not is_postgres:
        pytest.skip("PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        size = cursor.fetchone()[0]
    assert abs(billing.database_size_bytes() - size) < 1024 * 1024


def test_report_is_emailed_once_per_period_with_the_pdf(dataset) -> None:
    want = expected()
    for _ in range(2):
        run = commands.run_now("billing", actor="test", sync=True, overrides={"month": "2026-02"})
        assert run.status == RunStatus.SUCCEEDED, run.reason
    assert CustomerMetrics.objects.count() == 1
    [message] = mail.outbox
    assert message.to == [get_user_model().objects.get(username="billing").email]
    [(name, pdf, mimetype)] = message.attachments
    assert (name, mimetype) == ("billing-2026-02.pdf", "application/pdf")
    text = re.sub(r"\s+", " ", " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages))
    assert "Billing activity report" in text and "Period: 2026-02-01 to 2026-02-28" in text
    assert f"Deliveries {want['deliveries']}" in text and f"Active profiles (12 months) {want['active_profiles']}" in text
    email = want["messages_by_channel"]["email"]
    assert f"email {email['messages']} {email['retries']} {email['total']}" in text
    assert "2026-02-01 2 deliveries under 100 messages 14" in text
    resent = commands.run_now("billing", actor="test", sync=True, overrides={"month": "2026-02", "resend": True})
    assert resent.status == RunStatus.SUCCEEDED and len(mail.outbox) == 2


def test_rerun_updates_the_periods_row(dataset) -> None:
    commands.run_now("billing", actor="test", sync=True, overrides={"month": "2026-02"})
    before = CustomerMetrics.objects.get()
    DeliveryLog.objects.create(delivery=dataset["sms"], address="+33600000000", created_at=utc("2026-02-20 10:00"), status=SENT)
    commands.run_now("billing", actor="test", sync=True, overrides={"month": "2026-02"})
    after = CustomerMetrics.objects.get()
    assert after.pk == before.pk
    assert after.messages_by_channel["sms"]["messages"] == before.messages_by_channel["sms"]["messages"] + 1
    assert after.computed_at > before.computed_at


def test_missing_billing_user_skips_the_email(dataset) -> None:
    get_user_model().objects.filter(username="billing").delete()
    run = commands.run_now("billing", actor="test", sync=True, overrides={"month": "2026-02"})
    assert run.status == RunStatus.SKIPPED and "billing" in run.reason
    assert CustomerMetrics.objects.count() == 1 and mail.outbox == []
