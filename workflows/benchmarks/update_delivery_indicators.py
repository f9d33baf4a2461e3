"""Benchmark case of updateDeliveryIndicators: every delivery's indicators recomputed from
``rows`` delivery logs and about as many tracking rows, against one hand-written UPDATE.

The data follows a sending platform's shape: deliveries of a few thousand messages sent one after
the other (logs of a delivery are written together; one in ten is a push delivery), tracking rows
arriving over the days after each sending, interleaved between the deliveries sent close together;
failures of every reason (complaints among them), the addresses of most hard bounces and some soft
ones in quarantine. The increment is the next
hours of activity: two new deliveries with their first bounces and opens, late bounces on the
latest delivery, opens and clicks still trickling onto the last few. An incremental run costs the
size of the deliveries it touches (each is recomputed from all its rows), so that is what it shows.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from campaign.bulk_load import load, reset_sequences
from campaign.indicators import CLICK_URL_TYPES, OPEN_EVIDENCE_URL_TYPES, REASON_INDICATORS
from campaign.models import (
    Campaign,
    Channel,
    Delivery,
    DeliveryLog,
    FailureReason,
    FailureType,
    LogStatus,
    Quarantine,
    TrackingLog,
    UrlType,
)
from workflows.benchmarks import BenchmarkCase, register
from workflows.benchmarks.data import pop_tracking_until
from workflows.builtin.update_delivery_indicators import INDICATOR_FIELDS

#: Average messages per delivery: 400 deliveries at a million logs.
LOGS_PER_DELIVERY = 2_500
#: One delivery every this many hours, the first one this long ago.
DELIVERY_SPACING = timedelta(hours=3)
#: Deliveries whose logs are generated and loaded together (about 50,000 logs).
DELIVERIES_PER_LOAD = 20
#: Tracking arrives over about half a day on average after sending, for at most a week.
TRACKING_MEAN_DELAY_H = 12.0
TRACKING_MAX_DELAY = timedelta(days=7)

HARD_REASONS = (FailureReason.USER_UNKNOWN, FailureReason.USER_UNKNOWN, FailureReason.INVALID_DOMAIN,
                FailureReason.REFUSED, FailureReason.ON_DENYLIST)
SOFT_REASONS = (FailureReason.MAILBOX_FULL, FailureReason.UNREACHABLE, FailureReason.NOT_CONNECTED,
                FailureReason.ACCOUNT_DISABLED, FailureReason.NONE)

#: One delivery in this many is a push delivery (impressions; the push table's formulas).
PUSH_EVERY = 10

LOG_FIELDS = ("id", "delivery", "address", "variant", "status", "failure_type", "failure_reason", "error_text",
              "created_at", "updated_at")
QUARANTINE_FIELDS = ("address", "channel", "status", "error_count", "failure_type", "failure_reason", "error_text",
                     "created_at", "updated_at")
TRACKING_FIELDS = ("delivery_log", "delivery", "url_type", "url", "tracked_at")


def _outcome(rng: random.Random) -> tuple[int, int, int]:
    """(status, failure type, failure reason) of one message of a finished delivery."""
    draw = rng.random()
    if draw < 0.03:
        return LogStatus.IGNORED, FailureType.NONE, FailureReason.NONE
    if draw < 0.11:
        kind = rng.random()
        if kind < 0.40:
            return LogStatus.FAILED, FailureType.HARD, rng.choice(HARD_REASONS)
        if kind < 0.95:
            return LogStatus.FAILED, FailureType.SOFT, rng.choice(SOFT_REASONS)
        return LogStatus.FAILED, FailureType.IGNORED, FailureReason.ON_DENYLIST
    if draw < 0.12:
        return LogStatus.CANCELLED, FailureType.NONE, FailureReason.NONE
    if draw < 0.13:
        return LogStatus.PENDING, FailureType.NONE, FailureReason.NONE
    return LogStatus.SENT, FailureType.NONE, FailureReason.NONE


def _quarantine(rng: random.Random, log_id: int, status: int, failure_type: int, channel: str,
                at: datetime) -> tuple[Any, ...] | None:
    """The quarantine row of a failed message's address, if any: most hard bounces, some soft ones
    (quarantined or still erroneous), complaints on the denylist."""
    if status != LogStatus.FAILED or failure_type == FailureType.IGNORED:
        return None
    draw = rng.random()
    if failure_type == FailureType.HARD and draw < 0.9:
        state = Quarantine.Status.DENYLISTED if draw < 0.1 else Quarantine.Status.QUARANTINED
    elif failure_type == FailureType.SOFT and draw < 0.3:
        state = Quarantine.Status.QUARANTINED if draw < 0.1 else Quarantine.Status.ERRONEOUS
    else:
        return None
    return (f"r{log_id}@example.com", channel, state, 1, failure_type, FailureReason.NONE, "", at, at)


def _reactions(rng: random.Random, log_id: int, delivery_id: int, sent_at: datetime,
               push: bool = False) -> list[tuple[datetime, int, int, int]]:
    """Tracking rows ``(tracked_at, delivery log id, delivery id, url type)`` of one delivered message:
    about one row per message on average, with repeated opens, clicks (of each type) without an
    open (images blocked), opt-outs and mirror pages; push messages show impressions and taps."""
    types: list[int] = []
    if push:
        if rng.random() < 0.70:
            types.append(UrlType.IMPRESSION)
        if rng.random() < 0.15:
            types += [UrlType.CLICK] * rng.randint(1, 2)
            if rng.random() < 0.6:
                types.append(UrlType.OPEN)
    elif rng.random() < 0.40:
        types += [UrlType.OPEN] * rng.randint(1, 4)
        if rng.random() < 0.30:
            types += [rng.choice((UrlType.CLICK, UrlType.CLICK, UrlType.OTHER_CLICK_10, UrlType.OTHER_CLICK_11))
                      for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.02:
            types.append(UrlType.OPT_OUT)
        if rng.random() < 0.02:
            types.append(UrlType.MIRROR_PAGE)
    elif rng.random() < 0.03:
        types.append(UrlType.CLICK)
    elif rng.random() < 0.01:
        types.append(UrlType.MIRROR_PAGE)
    rows = []
    for url_type in types:
        delay = min(timedelta(hours=rng.expovariate(1 / TRACKING_MEAN_DELAY_H)), TRACKING_MAX_DELAY)
        rows.append((sent_at + delay, log_id, delivery_id, url_type))
    return rows


class DeliveryIndicatorsCase(BenchmarkCase):
    workflow_id = "updateDeliveryIndicators"

    def populate(self, *, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        delivery_count = max(2, rows // LOGS_PER_DELIVERY)
        now = timezone.now()
        first_sent_at = now - DELIVERY_SPACING * delivery_count - TRACKING_MAX_DELAY
        campaigns = Campaign.objects.bulk_create(
            Campaign(label=f"Benchmark campaign {n}") for n in range(delivery_count // 10 + 1)
        )
        deliveries = Delivery.objects.bulk_create(
            Delivery(label=f"Benchmark delivery {n}", campaign=campaigns[n // 10],
                     channel=Channel.PUSH if n % PUSH_EVERY == PUSH_EVERY - 1 else Channel.EMAIL,
                     state=Delivery.State.FINISHED, started_at=first_sent_at + DELIVERY_SPACING * n)
            for n in range(delivery_count)
        )
        weights = [rng.uniform(0.25, 1.75) for _ in deliveries]
        total_weight = sum(weights)
        sizes = [int(rows * weight / total_weight) for weight in weights]
        sizes[-1] += rows - sum(sizes)
        # Tracking rows get their ids in arrival order, as the consolidation writes them, so the
        # rows of deliveries sent close together interleave. They wait in a heap (by time) until
        # the next group of sendings, after which nothing older can arrive.
        pending_tracking: list[tuple[datetime, int, int, int]] = []
        log_id = 0
        for first in range(0, len(deliveries), DELIVERIES_PER_LOAD):
            last = first + DELIVERIES_PER_LOAD
            logs: list[tuple[Any, ...]] = []
            quarantine: list[tuple[Any, ...]] = []
            for delivery, size in zip(deliveries[first:last], sizes[first:last], strict=True):
                sent_at = delivery.started_at
                push = delivery.channel == Channel.PUSH
                for _ in range(size):
                    log_id += 1
                    status, failure_type, failure_reason = _outcome(rng)
                    updated_at = sent_at + timedelta(minutes=rng.uniform(0, 120))
                    logs.append((log_id, delivery.pk, f"r{log_id}@example.com", "", status, failure_type, failure_reason,
                                 "", sent_at, updated_at))
                    if status == LogStatus.SENT:
                        for row in _reactions(rng, log_id, delivery.pk, sent_at, push):
                            heapq.heappush(pending_tracking, row)
                    elif (row := _quarantine(rng, log_id, status, failure_type, delivery.channel, updated_at)) is not None:
                        quarantine.append(row)
                if rng.random() < 0.2:  # tracking outlives purged logs: rows whose log is gone
                    heapq.heappush(pending_tracking, (sent_at + timedelta(hours=1), 10 * rows + delivery.pk, delivery.pk,
                                                      UrlType.OPEN))
            load(DeliveryLog, LOG_FIELDS, logs)
            load(Quarantine, QUARANTINE_FIELDS, quarantine)
            following = deliveries[last].started_at if last < len(deliveries) else None
            load(TrackingLog, TRACKING_FIELDS, pop_tracking_until(pending_tracking, following))
        reset_sequences(Campaign, Delivery, DeliveryLog, TrackingLog, Quarantine)

    def sql_bound(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(_bound_sql(), [connection.ops.adapt_datetimefield_value(timezone.now())])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        fields = [name for name in INDICATOR_FIELDS if name != "indicators_updated_at"]
        for values in Delivery.objects.order_by("pk").values_list("pk", *fields, "indicators_updated_at").iterator():
            computed = values[-1] is not None
            row = [str(value) if not isinstance(value, dict) else json.dumps(value, sort_keys=True) for value in values[:-1]]
            digest.update(("|".join(row) + f"|{computed}\n").encode())
        return digest.hexdigest()

    def add_increment(self, *, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        now = timezone.now()
        latest = list(Delivery.objects.order_by("-pk")[:4])
        campaign = latest[0].campaign
        new = Delivery.objects.bulk_create(
            Delivery(label=f"Benchmark delivery new {n}", campaign=campaign, channel=Channel.EMAIL,
                     state=Delivery.State.IN_PROGRESS, started_at=now) for n in range(2)
        )
        first_id = (DeliveryLog.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
        new_logs = int(rows * 0.6)
        tracking: list[tuple[datetime, int, int, int]] = []

        def logs() -> Iterator[tuple[Any, ...]]:
            for offset in range(new_logs):
                log_id, delivery = first_id + offset, new[offset % 2]
                status, failure_type, failure_reason = _outcome(rng)
                yield (log_id, delivery.pk, f"r{log_id}@example.com", "", status, failure_type, failure_reason, "", now, now)
                if status == LogStatus.SENT and rng.random() < 0.25:
                    tracking.append((now, log_id, delivery.pk, UrlType.OPEN))

        load(DeliveryLog, LOG_FIELDS, logs())
        late_bounces = list(DeliveryLog.objects.filter(delivery=latest[0], status=LogStatus.SENT)
                            .order_by("pk").values_list("pk", flat=True)[: int(rows * 0.15)])
        DeliveryLog.objects.filter(pk__in=late_bounces).update(
            status=LogStatus.FAILED, failure_type=FailureType.SOFT, failure_reason=FailureReason.MAILBOX_FULL, updated_at=now
        )
        load(Quarantine, QUARANTINE_FIELDS, (
            (f"r{log_id}@example.com", latest[0].channel, Quarantine.Status.QUARANTINED, 5, FailureType.SOFT,
             FailureReason.MAILBOX_FULL, "", now, now) for log_id in late_bounces[::4]
        ))
        # The rest of the budget: opens and clicks still arriving on the three deliveries before.
        per_delivery = max(1, (rows - new_logs - len(late_bounces) - len(tracking)) // 3)
        for delivery in latest[1:]:
            delivered = DeliveryLog.objects.filter(delivery=delivery, status=LogStatus.SENT).order_by("-pk")
            for log_id in delivered.values_list("pk", flat=True)[:per_delivery]:
                tracking.append((now, log_id, delivery.pk, rng.choice((UrlType.OPEN, UrlType.OPEN, UrlType.CLICK))))
        load(TrackingLog, TRACKING_FIELDS, ((log, delivery, url_type, "", at) for at, log, delivery, url_type in tracking))
        reset_sequences(DeliveryLog, TrackingLog, Quarantine)


def _rate_sql(numerator: str, denominator: str, *, cap: int = 10000) -> str:
    """Percent, two decimals, half up, capped (at 100 % for a share), 0 over 0: in integer
    hundredths first (exact on both databases), then scaled."""
    least = "LEAST" if connection.vendor == "postgresql" else "MIN"
    scale = "::numeric / 100" if connection.vendor == "postgresql" else " / 100.0"
    return (f"(CASE WHEN {denominator} = 0 THEN 0 "
            f"ELSE {least}({cap}, (20000 * {numerator} + {denominator}) / (2 * {denominator})) END){scale}")


def _event_rate_sql(numerator: str, denominator: str) -> str:
    """The same for a count of repeated events: bounded by the column (999,999.99 %), not by 100 %."""
    return _rate_sql(numerator, denominator, cap=99_999_999)


def _in(codes: Any) -> str:
    return ", ".join(str(int(code)) for code in codes)


def _bound_sql() -> str:
    """One UPDATE of every delivery with logs or tracking, from one grouped pass over each table
    and one join of the failed logs to the quarantine."""
    postgres = connection.vendor == "postgresql"
    reasons_object = ("jsonb_object_agg(failure_reason::text, n)" if postgres
                      else "json_group_object(CAST(failure_reason AS TEXT), n)")
    empty_object = "'{}'::jsonb" if postgres else "'{}'"
    integer = "bigint" if postgres else "INTEGER"
    logs, tracking, deliveries = DeliveryLog._meta.db_table, TrackingLog._meta.db_table, Delivery._meta.db_table
    quarantine = Quarantine._meta.db_table

    def failed_with(reason: int, failure_type: int | None) -> str:
        condition = f"status = 2 AND failure_reason = {int(reason)}"
        if failure_type is not None:
            condition += f" AND failure_type = {int(failure_type)}"
        return f"CAST(SUM(CASE WHEN {condition} THEN n ELSE 0 END) AS {integer})"

    reason_columns = ",\n".join(f"{failed_with(code, kind)} AS {name}" for name, (code, kind) in REASON_INDICATORS.items())
    kept_reasons = ", ".join(f"COALESCE(l.{name}, d.{name}) AS {name}" for name in REASON_INDICATORS)
    set_reasons = ", ".join(f"{name} = f.{name}" for name in REASON_INDICATORS)
    push = f"'{Channel.PUSH.value}'"
    return f"""
        WITH log_groups AS MATERIALIZED (
            SELECT delivery_id, status, failure_type, failure_reason, COUNT(*) AS n
            FROM {logs} GROUP BY delivery_id, status, failure_type, failure_reason
        ), log_figures AS (
            SELECT delivery_id,
                   CAST(SUM(CASE WHEN status <> 0 THEN n ELSE 0 END) AS {integer}) AS to_deliver,
                   CAST(SUM(CASE WHEN status = 1 THEN n ELSE 0 END) AS {integer}) AS delivered,
                   CAST(SUM(CASE WHEN status = 2 THEN n ELSE 0 END) AS {integer}) AS bounces,
                   CAST(SUM(CASE WHEN status = 2 AND failure_type = 2 THEN n ELSE 0 END) AS {integer}) AS hard_bounces,
                   CAST(SUM(CASE WHEN status = 2 AND failure_type = 1 THEN n ELSE 0 END) AS {integer}) AS soft_bounces,
                   {reason_columns}
            FROM log_groups GROUP BY delivery_id
        ), reasons AS (
            SELECT delivery_id, {reasons_object} AS by_reason
            FROM (SELECT delivery_id, failure_reason, CAST(SUM(n) AS {integer}) AS n
                  FROM log_groups WHERE status = 2 GROUP BY delivery_id, failure_reason) failed
            GROUP BY delivery_id
        ), quarantined AS (
            SELECT l.delivery_id, COUNT(*) AS n
            FROM {logs} l JOIN {deliveries} d ON d.id = l.delivery_id
                JOIN {quarantine} q ON q.address = l.address AND q.channel = d.channel
            WHERE l.status = 2 AND q.status = '{Quarantine.Status.QUARANTINED.value}'
            GROUP BY l.delivery_id
        ), tracking_figures AS (
            SELECT delivery_id,
                   CAST(SUM(CASE WHEN url_type = 2 THEN 1 ELSE 0 END) AS {integer}) AS open_rows,
                   COUNT(DISTINCT CASE WHEN url_type = 2 THEN delivery_log_id END) AS pixel,
                   COUNT(DISTINCT CASE WHEN url_type IN ({_in(OPEN_EVIDENCE_URL_TYPES)}) THEN delivery_log_id END) AS opened,
                   CAST(SUM(CASE WHEN url_type IN ({_in(CLICK_URL_TYPES)}) THEN 1 ELSE 0 END) AS {integer}) AS clicks,
                   COUNT(DISTINCT CASE WHEN url_type IN ({_in(CLICK_URL_TYPES)}) THEN delivery_log_id END) AS clicked,
                   CAST(SUM(CASE WHEN url_type = 3 THEN 1 ELSE 0 END) AS {integer}) AS unsubscribes,
                   CAST(SUM(CASE WHEN url_type = 6 THEN 1 ELSE 0 END) AS {integer}) AS mirror_pages,
                   CAST(SUM(CASE WHEN url_type = 7 THEN 1 ELSE 0 END) AS {integer}) AS impressions
            FROM {tracking} GROUP BY delivery_id
        ), figures AS (
            SELECT d.id, d.channel = {push} AS push,
                   COALESCE(l.to_deliver, d.to_deliver) AS to_deliver,
                   COALESCE(l.delivered, d.delivered) AS delivered,
                   COALESCE(l.bounces, d.bounces) AS bounces,
                   COALESCE(l.hard_bounces, d.hard_bounces) AS hard_bounces,
                   COALESCE(l.soft_bounces, d.soft_bounces) AS soft_bounces,
                   {kept_reasons},
                   CASE WHEN l.delivery_id IS NULL THEN d.quarantine ELSE COALESCE(q.n, 0) END AS quarantine,
                   CASE WHEN l.delivery_id IS NULL THEN d.bounces_by_reason ELSE COALESCE(r.by_reason, {empty_object}) END
                       AS bounces_by_reason,
                   CASE WHEN d.channel = {push} THEN COALESCE(t.open_rows, 0)
                        ELSE COALESCE(t.open_rows + t.opened - t.pixel, 0) END AS opens,
                   CASE WHEN d.channel = {push} THEN COALESCE(t.pixel, 0) ELSE COALESCE(t.opened, 0) END AS unique_opens,
                   COALESCE(t.clicks, 0) AS clicks, COALESCE(t.clicked, 0) AS unique_clicks,
                   COALESCE(t.unsubscribes, 0) AS unsubscribes, COALESCE(t.mirror_pages, 0) AS mirror_pages,
                   COALESCE(t.impressions, 0) AS impressions
            FROM {deliveries} d
            LEFT JOIN log_figures l ON l.delivery_id = d.id
            LEFT JOIN reasons r ON r.delivery_id = d.id
            LEFT JOIN quarantined q ON q.delivery_id = d.id
            LEFT JOIN tracking_figures t ON t.delivery_id = d.id
            WHERE l.delivery_id IS NOT NULL OR t.delivery_id IS NOT NULL
        )
        UPDATE {deliveries} SET
            to_deliver = f.to_deliver, delivered = f.delivered, bounces = f.bounces, sent = f.delivered + f.bounces,
            hard_bounces = f.hard_bounces, soft_bounces = f.soft_bounces, bounces_by_reason = f.bounces_by_reason,
            {set_reasons}, quarantine = f.quarantine,
            opens = f.opens, unique_opens = f.unique_opens, clicks = f.clicks, unique_clicks = f.unique_clicks,
            unsubscribes = f.unsubscribes, mirror_pages = f.mirror_pages, impressions = f.impressions,
            delivered_rate = {_rate_sql("f.delivered", "(f.delivered + f.bounces)")},
            bounce_rate = {_rate_sql("f.bounces", "(f.delivered + f.bounces)")},
            hard_bounce_rate = {_rate_sql("f.hard_bounces", "(f.delivered + f.bounces)")},
            soft_bounce_rate = {_rate_sql("f.soft_bounces", "(f.delivered + f.bounces)")},
            denylist_rate = {_rate_sql("f.on_denylist", "(f.delivered + f.bounces)")},
            quarantine_rate = {_rate_sql("f.quarantine", "(f.delivered + f.bounces)")},
            rejected_rate = {_rate_sql("f.rejected", "(f.delivered + f.bounces)")},
            open_rate = {_event_rate_sql("f.opens", "f.delivered")},
            unique_open_rate = {_rate_sql("f.unique_opens", "f.delivered")},
            click_through_rate = CASE WHEN f.push THEN {_event_rate_sql("f.clicks", "f.delivered")}
                                      ELSE {_rate_sql("f.unique_clicks", "f.delivered")} END,
            unsubscribe_rate = {_event_rate_sql("f.unsubscribes", "f.delivered")},
            mirror_page_rate = {_event_rate_sql("f.mirror_pages", "f.delivered")},
            reactivity = {_rate_sql("f.unique_clicks", "f.unique_opens")},
            indicators_updated_at = %s
        FROM figures f
        WHERE {deliveries}.id = f.id
    """


register(DeliveryIndicatorsCase())
