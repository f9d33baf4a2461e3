"""billing: the month's figures against a plain-Python computation over a fixed dataset (a profile
targeted twice, a profile reached on two channels, Ignored and Cancelled logs, logs older than 12
months and exactly at both edges of the window, transactional recipients sharing an address, proofs,
the DST-free Paris month boundary), one row per period, one email per period to the 'billing' user
with the PDF."""

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
SENT, FAILED, IGNORED, PENDING, CANCELLED = (LogStatus.SENT, LogStatus.FAILED, LogStatus.IGNORED, LogStatus.PENDING,
                                             LogStatus.CANCELLED)

# key -> (channel, kind)
DELIVERIES = {
    "big": (Channel.EMAIL, Delivery.Kind.MARKETING),
    "small1": (Channel.EMAIL, Delivery.Kind.MARKETING),
    "small2": (Channel.EMAIL, Delivery.Kind.MARKETING),
    "small3": (Channel.EMAIL, Delivery.Kind.MARKETING),
    "sms": (Channel.SMS, Delivery.Kind.MARKETING),
    "transactional": (Channel.EMAIL, Delivery.Kind.TRANSACTIONAL),
    "transactional_sms": (Channel.SMS, Delivery.Kind.TRANSACTIONAL),
    "push": (Channel.PUSH, Delivery.Kind.MARKETING),
    "proof": (Channel.EMAIL, Delivery.Kind.PROOF),
    "march": (Channel.EMAIL, Delivery.Kind.MARKETING),
}
# profile key -> created_at (UTC)
PROFILES = {"p1": "2025-01-01 10:00", "p2": "2025-06-01 10:00", "p3": "2026-02-10 10:00", "p4": "2025-01-01 10:00",
            "p5": "2025-01-01 10:00", "p7": "2024-01-01 10:00", "p8": "2026-02-28 23:00",  # p8: midnight Paris, 03-01
            "p9": "2024-01-01 10:00", "p10": "2024-01-01 10:00", "p11": "2024-01-01 10:00", "p12": "2024-01-01 10:00"}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def logs() -> list[tuple[str, str | None, str, str, int]]:
    """(delivery, profile or None, address, created_at UTC, status); a profile's address is its key's."""
    rows = []
    for index in range(120):  # big: 120 messages on Feb 2, three profiles, p1 among them
        rows.append(("big", f"p{1 + index % 3}", "2026-02-02 09:00", SENT if index % 10 else FAILED))
    rows += [("small1", "p1", "2026-01-31 23:30", SENT)] * 10  # 00:30 Paris on Feb 1: in February; p1 again
    rows += [("small2", "p2", "2026-02-01 08:00", SENT)] * 4 + [("small2", "p2", "2026-02-01 08:00", IGNORED)]
    rows += [("small3", "p3", "2026-02-10 08:00", FAILED)] * 7
    rows += [("sms", "p5", "2026-02-05 12:00", SENT)] * 4 + [("sms", "p5", "2026-02-05 12:00", PENDING)]
    rows += [("transactional", "t1@example.com", "2026-02-07 12:00", SENT)] * 2  # one address, two messages
    rows += [("transactional", "t2@example.com", "2026-02-07 12:00", SENT)]  # a second address
    rows += [("proof", "p7", "2026-02-07 12:00", SENT)] * 2  # proofs never count
    rows += [("big", "p4", "2025-03-10 12:00", SENT)]  # within 12 months of the period end: p4 active
    rows += [("big", "p7", "2025-02-20 12:00", SENT)]  # older than 12 months
    rows += [("march", "p8", "2026-02-28 23:00", SENT)]  # midnight Paris on March 1: the window's end, excluded
    # Active profiles and transactional recipients over the 12 months (Paris: [2025-03-01, 2026-03-01)).
    rows += [("push", "p5", "2025-11-05 12:00", SENT)]  # p5 on a second channel, outside the month
    rows += [("push", "p9", "2025-11-05 12:00", IGNORED)]  # excluded at preparation: p9 never targeted
    rows += [("push", "p10", "2025-11-05 12:00", CANCELLED)]  # targeted, then cancelled: p10 active
    rows += [("sms", "p11", "2025-02-28 23:00", SENT)]  # midnight Paris on 2025-03-01: the window's start, included
    rows += [("sms", "p12", "2025-02-28 22:59:59", SENT)]  # one second before the window
    rows += [("transactional_sms", "+33600000001", "2025-06-01 12:00", SENT)] * 2  # SMS, one number twice
    rows += [("transactional", "t1@example.com", "2025-06-01 12:00", SENT)]  # t1 again, months earlier
    rows += [("transactional", "t3@example.com", "2025-06-01 12:00", IGNORED)]  # excluded at preparation
    rows += [("transactional", "t4@example.com", "2025-02-20 12:00", SENT)]  # older than 12 months
    rows += [("proof", "proof@example.com", "2026-02-07 12:00", SENT)]  # a proof without a profile: never counted
    return [(delivery, who if who in PROFILES else None, f"{who}@example.com" if who in PROFILES else who, at, status)
            for delivery, who, at, status in rows]


# (log index in logs(), received_at UTC, outcome)
FEEDBACK = [(0, "2026-02-02 09:05", "deferred"), (1, "2026-02-02 09:06", "deferred"), (2, "2026-02-02 09:07", "delivered"),
            (125, "2026-03-01 09:00", "deferred")]


def expected() -> dict:
    start, end = datetime(2026, 2, 1, tzinfo=PARIS), datetime(2026, 3, 1, tzinfo=PARIS)
    active_start = datetime(2025, 3, 1, tzinfo=PARIS)
    rows = logs()
    counted = [row for row in rows
               if start <= utc(row[3]) < end and row[4] in (SENT, FAILED) and DELIVERIES[row[0]][1] != Delivery.Kind.PROOF]
    messages: dict[str, dict[str, int]] = defaultdict(lambda: {"messages": 0, "retries": 0, "total": 0})
    for row in counted:
        messages[DELIVERIES[row[0]][0]]["messages"] += 1
    for index, received, outcome in FEEDBACK:
        if outcome == "deferred" and start <= utc(received) < end:
            messages[DELIVERIES[rows[index][0]][0]]["retries"] += 1
    for row in messages.values():
        row["total"] = row["messages"] + row["retries"]
    # Active: targeted in the window (an Ignored log was excluded at preparation), proofs apart.
    window = [row for row in rows if active_start <= utc(row[3]) < end and row[4] != IGNORED
              and DELIVERIES[row[0]][1] != Delivery.Kind.PROOF]
    profiles: dict[str, set[str]] = defaultdict(set)
    addresses: dict[str, set[str]] = defaultdict(set)
    for delivery, profile, address, _, _ in window:
        channel = DELIVERIES[delivery][0]
        if profile is None:
            addresses[channel].add(address)
        else:
            profiles[channel].add(profile)
    per_delivery: dict[str, list] = {}
    for row in counted:
        if DELIVERIES[row[0]][0] == Channel.EMAIL:
            per_delivery.setdefault(row[0], []).append(utc(row[3]).astimezone(PARIS).date())
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
        "active_profiles": len(set().union(*profiles.values())),
        "active_transactional_recipients": len(set().union(*addresses.values())),
        "active_by_channel": {channel: {"profiles": len(profiles[channel]), "transactional_recipients": len(addresses[channel])}
                              for channel in {*profiles, *addresses}},
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
        DeliveryLog(delivery=deliveries[delivery], profile=profiles[profile] if profile else None, address=address,
                    created_at=utc(at), status=status)
        for delivery, profile, address, at, status in logs()
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
    # Sanity of the dataset itself: the cases the test is about are present. p1 is targeted many
    # times, p5 on two channels, p10 cancelled, p11 at the window's start; not p7 (too old, and
    # proofs), p8 (at the window's end), p9 (Ignored), p12 (a second before the window).
    assert want["active_profiles"] == len({"p1", "p2", "p3", "p4", "p5", "p10", "p11"})
    assert want["active_transactional_recipients"] == len({"t1@example.com", "t2@example.com", "+33600000001"})
    assert want["active_by_channel"] == {"email": {"profiles": 4, "transactional_recipients": 2},
                                         "sms": {"profiles": 2, "transactional_recipients": 1},
                                         "push": {"profiles": 2, "transactional_recipients": 0}}
    assert want["messages_by_channel"]["email"]["retries"] == 2
    run = commands.run_now("billing", actor="test", sync=True, overrides={"month": "2026-02"})
    assert run.status == RunStatus.SUCCEEDED, run.reason
    metrics = CustomerMetrics.objects.get()
    assert (metrics.period_start, metrics.period_end) == (date(2026, 2, 1), date(2026, 2, 28))
    assert metrics.deliveries == want["deliveries"]
    assert metrics.messages_by_channel == want["messages_by_channel"]
    assert metrics.profiles == want["profiles"]
    assert metrics.active_profiles == want["active_profiles"]
    assert metrics.active_transactional_recipients == want["active_transactional_recipients"]
    assert metrics.active_by_channel == want["active_by_channel"]
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
    assert f"Active transactional recipients (12 months) {want['active_transactional_recipients']}" in text
    email = want["messages_by_channel"]["email"]
    assert f"email {email['messages']} {email['retries']} {email['total']}" in text
    assert "Channel Profiles Transactional recipients" in text
    for channel, row in want["active_by_channel"].items():
        assert f"{channel} {row['profiles']} {row['transactional_recipients']}" in text
    assert "counts once in the total above and once on each of its channels' lines" in text
    assert f"active on push: {want['active_by_channel']['push']['profiles']} profiles" in message.body
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
