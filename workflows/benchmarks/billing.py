"""Benchmark case for billing: the month's activity figures against the same aggregates typed by hand.

The data: ``rows`` delivery logs, 60% created in the last full month and 40% over the twelve months
before it (they count for the active profiles only), on ``rows / 5`` profiles; 5% of the logs are
transactional (no profile), on ``rows / 40`` addresses (each address gets about two messages); one
log in nine is failed, ignored (excluded at preparation), pending or cancelled; 300 email deliveries
in the month, a third of them under 100 messages, plus SMS and push deliveries; ``rows / 50``
deferred sending feedback in the month (retries).

The bound is the minimal SQL for the same row: one statement per figure (as the workflow), the
results written with one INSERT. The workflow additionally renders the PDF and emails it (a
constant of a fraction of a second). Billing recomputes the whole month every run by design (the
figures of a month change until it is old), so its "incremental" run costs as much as the full one.
"""

from __future__ import annotations

import importlib
import random
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.apps import apps
from django.conf import settings
from django.db import connection
from django.utils import timezone

from campaign.bulk_load import load, reset_sequences
from campaign.models import Channel, CustomerMetrics, Delivery, DeliveryLog, LogStatus, Profile, SendingFeedback
from workflows.benchmarks import BenchmarkCase, register
from workflows.builtin import billing

LOG_COLUMNS = ("id", "delivery_id", "profile_id", "address", "variant", "status", "failure_type", "failure_reason",
               "error_text", "created_at", "updated_at")
EMAIL_DELIVERIES = 300
OTHER_STATUSES = (LogStatus.FAILED, LogStatus.IGNORED, LogStatus.PENDING, LogStatus.CANCELLED)


class BillingCase(BenchmarkCase):
    workflow_id = "billing"
    incremental = False  # recounts the whole month at each run, by design

    def __init__(self) -> None:
        self._next_log = 1
        self._deliveries: list[int] = []
        self._old_delivery = 0

    def _period(self) -> tuple[datetime, datetime]:
        return billing.bounds(billing.month_period("", today=timezone.localdate()))

    def populate(self, *, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        now = timezone.now()
        # The runner flushed the database: recreate the billing user as the data migration does.
        importlib.import_module("campaign.migrations.0003_billing_user").create_billing_user(apps, None)
        profiles = max(10, rows // 5)
        load(Profile, ("id", "email", "phone", "first_name", "last_name", "blocklisted_email", "blocklisted_sms",
                       "blocklisted_push", "created_at", "updated_at"),
             ((i, f"p{i}@example.com", "", "", "", False, False, False, now - timedelta(days=500), now)
              for i in range(1, profiles + 1)))
        reset_sequences(Profile)
        channels = [Channel.EMAIL] * EMAIL_DELIVERIES + [Channel.SMS] * 30 + [Channel.PUSH] * 30
        self._deliveries = [Delivery.objects.create(label=f"bench {i}", channel=channel, kind=Delivery.Kind.TRANSACTIONAL
                                                    if i % 20 == 0 else Delivery.Kind.MARKETING).pk
                            for i, channel in enumerate(channels)]
        self._old_delivery = Delivery.objects.create(label="bench last year", channel=Channel.EMAIL).pk
        self._load(rows, rng=rng, profiles=profiles)

    def _load(self, rows: int, *, rng: random.Random, profiles: int) -> None:
        start, end = self._period()
        month_s = (end - start).total_seconds()
        year_start = start - timedelta(days=365)
        year_s = (start - year_start).total_seconds()
        # A third of the email deliveries are small (< 100 messages): they get a fixed handful each.
        small = self._deliveries[:EMAIL_DELIVERIES // 3]
        large = self._deliveries[EMAIL_DELIVERIES // 3:]
        first = self._next_log
        in_month = int(rows * 0.6)

        def unit(n: int, salt: int) -> float:
            """A deterministic pseudo-random number in [0, 1) for row n (both passes agree)."""
            return ((n * 2654435761 + salt * 40503 + seed_salt) % 4294967296) / 4294967296

        def generate(anonymous: bool) -> Any:
            for n in range(rows):
                if (n % 20 == 7) != anonymous:  # transactional logs (no profile) go in their own pass
                    continue
                log_id = first + n
                if n < len(small) * 20:
                    delivery = small[n // 20]
                    created = start + timedelta(seconds=(n // 20) * month_s / len(small) + n % 20)
                elif n < in_month:
                    delivery = large[n % len(large)]
                    created = start + timedelta(seconds=unit(n, 1) * month_s)
                else:
                    delivery = self._old_delivery
                    created = year_start + timedelta(seconds=unit(n, 2) * year_s)
                status = LogStatus.SENT if n % 9 else OTHER_STATUSES[n // 9 % len(OTHER_STATUSES)]
                address = f"t{n // 40}@example.com" if anonymous else f"a{log_id}@example.com"
                row = (log_id, delivery, address, "", status, 0, 0, "", created, created)
                yield row if anonymous else (*row[:2], 1 + int(unit(n, 3) * profiles), *row[2:])

        # Two passes, so that no row carries a NULL (the bulk loader could not COPY one when this was written).
        seed_salt = rng.randrange(1 << 30)
        load(DeliveryLog, LOG_COLUMNS, generate(False))
        load(DeliveryLog, tuple(column for column in LOG_COLUMNS if column != "profile_id"), generate(True))
        self._next_log = first + rows
        reset_sequences(DeliveryLog)
        load(SendingFeedback, ("delivery_log_id", "outcome", "error_text", "received_at"),
             ((first + rng.randrange(in_month), SendingFeedback.Outcome.DEFERRED, "",
               start + timedelta(seconds=rng.random() * month_s))
              for _ in range(max(1, rows // 50))))

    def sql_bound(self) -> None:
        start, end = self._period()
        period = billing.month_period("", today=timezone.localdate())
        active_start = billing.active_window_start(period)
        q = connection.ops.quote_name
        logs, deliveries, feedback, profiles = (q(m._meta.db_table) for m in (DeliveryLog, Delivery, SendingFeedback, Profile))
        a = connection.ops.adapt_datetimefield_value
        counted = (f"FROM {logs} l JOIN {deliveries} d ON d.id = l.delivery_id WHERE l.created_at >= %s AND l.created_at < %s "
                   f"AND l.status IN (1, 2) AND d.kind <> 'proof'")
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(DISTINCT l.delivery_id) {counted}", [a(start), a(end)])
            delivery_count = cursor.fetchone()[0]
            cursor.execute(f"SELECT d.channel, COUNT(*) {counted} GROUP BY d.channel", [a(start), a(end)])
            messages = dict(cursor.fetchall())
            cursor.execute(f"SELECT d.channel, COUNT(*) FROM {feedback} f JOIN {logs} l ON l.id = f.delivery_log_id "
                           f"JOIN {deliveries} d ON d.id = l.delivery_id WHERE f.received_at >= %s AND f.received_at < %s "
                           f"AND f.outcome = 'deferred' AND d.kind <> 'proof' GROUP BY d.channel", [a(start), a(end)])
            retries = dict(cursor.fetchall())
            cursor.execute(f"SELECT COUNT(*) FROM {profiles} WHERE created_at < %s", [a(end)])
            profile_count = cursor.fetchone()[0]
            active = (f"COUNT(DISTINCT l.profile_id), COUNT(DISTINCT CASE WHEN l.profile_id IS NULL THEN l.address END) "
                      f"FROM {logs} l JOIN {deliveries} d ON d.id = l.delivery_id WHERE l.created_at >= %s "
                      f"AND l.created_at < %s AND l.status <> {LogStatus.IGNORED} AND d.kind <> 'proof'")
            cursor.execute(f"SELECT {active}", [a(active_start), a(end)])
            active_profiles, active_transactional = cursor.fetchone()
            cursor.execute(f"SELECT d.channel, {active} GROUP BY d.channel", [a(active_start), a(end)])
            active_by_channel = {channel: {"profiles": p, "transactional_recipients": t}
                                 for channel, p, t in cursor.fetchall()}
            cursor.execute(f"SELECT l.delivery_id, d.label, COUNT(*), MIN(l.created_at) {counted} AND d.channel = 'email' "
                           f"GROUP BY l.delivery_id, d.label", [a(start), a(end)])
            per_delivery = cursor.fetchall()
        zone = ZoneInfo(settings.TIME_ZONE)
        email, small = [], {}
        for delivery_id, label, n, first in per_delivery:
            first = first if isinstance(first, datetime) else datetime.fromisoformat(first)
            day = (first if first.tzinfo else first.replace(tzinfo=ZoneInfo("UTC"))).astimezone(zone).date().isoformat()
            if n >= billing.SMALL_DELIVERY:
                email.append({"day": day, "delivery_id": delivery_id, "label": label, "messages": n})
            else:
                small.setdefault(day, [0, 0])
                small[day][0] += 1
                small[day][1] += n
        email += [{"day": day, "delivery_id": None, "label": f"{c} deliveries under {billing.SMALL_DELIVERY} messages",
                   "deliveries": c, "messages": m} for day, (c, m) in small.items()]
        by_channel = {ch: {"messages": messages.get(ch, 0), "retries": retries.get(ch, 0),
                           "total": messages.get(ch, 0) + retries.get(ch, 0)} for ch in {*messages, *retries}}
        CustomerMetrics.objects.update_or_create(period_start=period.start, period_end=period.end, defaults={
            "deliveries": delivery_count, "messages_by_channel": by_channel, "profiles": profile_count,
            "active_profiles": active_profiles, "active_transactional_recipients": active_transactional,
            "active_by_channel": active_by_channel,
            "database_size_bytes": billing.database_size_bytes(), "email_deliveries": email})

    def fingerprint(self) -> Any:
        row = CustomerMetrics.objects.get()
        return {"deliveries": row.deliveries,
                "messages": sorted((k, tuple(sorted(v.items()))) for k, v in row.messages_by_channel.items()),
                "profiles": row.profiles, "active": row.active_profiles,
                "active_transactional": row.active_transactional_recipients,
                "active_by_channel": sorted((k, tuple(sorted(v.items()))) for k, v in row.active_by_channel.items()),
                "email": sorted((r["day"], r["label"], r["messages"]) for r in row.email_deliveries)}

    def add_increment(self, *, rows: int, seed: int) -> None:
        self._load(rows, rng=random.Random(seed), profiles=Profile.objects.count())

    def properties(self) -> dict[str, Any]:
        return {"resend": True}


register(BillingCase())
