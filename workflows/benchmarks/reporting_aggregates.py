"""Benchmark case for reportingAggregates: daily counters from delivery logs and tracking rows.

The data imitates a production history: a few hundred deliveries of very different sizes sent
over about a hundred days (two or three a day, channels mixed), each sending for a few hours from a
random time of day (so sends cross local midnight); outcomes in the usual proportions (failures of
several reasons, complaints among them; the addresses of most hard bounces in quarantine); opens,
repeated opens, clicks of each type (some without an open row), opt-outs and mirror pages trailing
the send by up to two weeks; impressions and taps on push messages. Tracking ids follow
``tracked_at``, as the consolidation writes them, so one delivery's tracking rows are interleaved
with its neighbours'. About one tracking row per log.

The increment (1% of the scale) is a day's news: a new delivery sent now, new tracking rows on the
latest deliveries, and the last pending messages of the latest delivery delivered.

The SQL bound is one INSERT … SELECT over both whole tables (and the failed logs' quarantine rows),
with the same formulas; the workflow must write the same rows.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Max
from django.utils import timezone

from campaign.bulk_load import load, reset_sequences
from campaign.indicators import CLICK_URL_TYPES, OPEN_EVIDENCE_URL_TYPES
from campaign.models import (
    Channel,
    Delivery,
    DeliveryAggregate,
    DeliveryLog,
    FailureReason,
    FailureType,
    LogStatus,
    Quarantine,
    TrackingLog,
    UrlType,
)
from workflows.benchmarks import BenchmarkCase, register
from workflows.builtin.reporting_aggregates import COUNTERS

#: Delivery sizes (messages) drawn uniformly: a mean of about 5,000, so 200 deliveries a million.
DELIVERY_SIZES = (300, 1_000, 2_000, 4_000, 6_000, 10_000, 12_000)
#: Deliveries started per day of history.
DELIVERIES_PER_DAY = 2.5
SEND_HOURS = 4

LOG_FIELDS = ("id", "delivery_id", "address", "variant", "status", "failure_type", "failure_reason", "error_text",
              "created_at", "updated_at")
TRACKING_FIELDS = ("id", "delivery_log_id", "delivery_id", "url_type", "url", "tracked_at")
QUARANTINE_FIELDS = ("address", "channel", "status", "error_count", "failure_type", "failure_reason", "error_text",
                     "created_at", "updated_at")
#: Failure reasons drawn for hard and soft bounces (a complaint is reason 8 of the hard type).
HARD_REASONS = (FailureReason.USER_UNKNOWN, FailureReason.USER_UNKNOWN, FailureReason.INVALID_DOMAIN,
                FailureReason.REFUSED, FailureReason.ON_DENYLIST)
SOFT_REASONS = (FailureReason.MAILBOX_FULL, FailureReason.UNREACHABLE, FailureReason.NOT_CONNECTED,
                FailureReason.ACCOUNT_DISABLED, FailureReason.REFUSED)


class _Plan:
    """One delivery of the synthetic history: id, channel, start, size (logs)."""

    __slots__ = ("id", "channel", "start", "size", "first_log_id")

    def __init__(self, *, id: int, channel: str, start: datetime, size: int, first_log_id: int) -> None:
        self.id, self.channel, self.start, self.size, self.first_log_id = id, channel, start, size, first_log_id


def _messages(plan: _Plan, seed: int) -> Iterator[tuple[int, int, int, datetime, datetime]]:
    """(log id, status, failure type, created_at, updated_at) of one delivery, always the same for a seed."""
    rng = random.Random(seed * 1_000_003 + plan.id)
    send_s = SEND_HOURS * 3600
    for index in range(plan.size):
        created = plan.start + timedelta(seconds=send_s * index / plan.size)
        draw = rng.random()
        if draw < 0.88:
            status, failure = LogStatus.SENT, FailureType.NONE
        elif draw < 0.94:
            status, failure = LogStatus.FAILED, (FailureType.HARD if rng.random() < 0.4 else FailureType.SOFT)
        elif draw < 0.96:
            status, failure = LogStatus.PENDING, FailureType.NONE
        elif draw < 0.98:
            status, failure = LogStatus.IGNORED, FailureType.IGNORED
        else:
            status, failure = LogStatus.CANCELLED, FailureType.NONE
        yield plan.first_log_id + index, status, failure, created, created + timedelta(seconds=rng.randint(5, 1800))


def _reason(log_id: int, failure: int) -> int:
    """The failure reason of a failed log, always the same for a log."""
    if failure == FailureType.HARD:
        return HARD_REASONS[log_id % len(HARD_REASONS)]
    if failure == FailureType.SOFT:
        return SOFT_REASONS[log_id % len(SOFT_REASONS)]
    return FailureReason.NONE


def _hits(plan: _Plan, seed: int) -> Iterator[tuple[datetime, int, int]]:
    """(tracked_at, log id, url type) of one delivery's tracking rows, in no particular order."""
    rng = random.Random(seed * 7_000_009 + plan.id)
    for log_id, status, _, created, _ in _messages(plan, seed):
        if status != LogStatus.SENT:
            continue

        def later() -> datetime:
            return created + timedelta(  # noqa: B023 - called within this iteration only
                seconds=min(rng.expovariate(1 / 86_400), 14 * 86_400))

        if plan.channel == Channel.PUSH:  # impressions and taps, an open for some taps
            if rng.random() < 0.7:
                yield later(), log_id, UrlType.IMPRESSION
            if rng.random() < 0.15:
                yield later(), log_id, UrlType.CLICK
                if rng.random() < 0.6:
                    yield later(), log_id, UrlType.OPEN
            continue
        opened = rng.random() < 0.50
        if opened:
            for _ in range(rng.choice((1, 1, 2, 3))):
                yield later(), log_id, UrlType.OPEN
        if rng.random() < (0.30 if opened else 0.02):  # a few clicks come without an open row
            for _ in range(rng.choice((1, 1, 2))):
                yield later(), log_id, rng.choice((UrlType.CLICK, UrlType.CLICK, UrlType.OTHER_CLICK_10,
                                                   UrlType.OTHER_CLICK_11))
        if opened and rng.random() < 0.01:
            yield later(), log_id, UrlType.OPT_OUT
        if rng.random() < 0.01:
            yield later(), log_id, UrlType.MIRROR_PAGE


class ReportingAggregatesCase(BenchmarkCase):
    workflow_id = "reportingAggregates"

    def __init__(self) -> None:
        self._plans: list[_Plan] = []

    # -- data ----------------------------------------------------------------------------------
    def populate(self, *, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        anchor = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
        sizes = []
        while sum(sizes) < rows:
            sizes.append(min(rng.choice(DELIVERY_SIZES), rows - sum(sizes)))
        days = len(sizes) / DELIVERIES_PER_DAY
        starts = sorted(anchor - timedelta(days=days * rng.random()) for _ in sizes)
        self._plans, next_log = [], 1
        for index, (size, start) in enumerate(zip(sizes, starts, strict=True)):
            channel = rng.choices((Channel.EMAIL, Channel.SMS, Channel.PUSH), weights=(7, 2, 1))[0]
            self._plans.append(_Plan(id=index + 1, channel=channel, start=start, size=size, first_log_id=next_log))
            next_log += size
        Delivery.objects.bulk_create(
            Delivery(id=plan.id, label=f"Benchmark delivery {plan.id}", channel=plan.channel, state=Delivery.State.FINISHED,
                     scheduled_at=plan.start, started_at=plan.start, finished_at=plan.start + timedelta(hours=SEND_HOURS))
            for plan in self._plans
        )
        load(DeliveryLog, LOG_FIELDS, self._log_rows(self._plans, seed))
        load(Quarantine, QUARANTINE_FIELDS, self._quarantine_rows(self._plans, seed))
        load(TrackingLog, TRACKING_FIELDS, self._tracking_rows(self._plans, seed, first_id=1, until=timezone.now()))
        reset_sequences(Delivery, DeliveryLog, TrackingLog, Quarantine)

    @staticmethod
    def _log_rows(plans: list[_Plan], seed: int) -> Iterator[tuple[Any, ...]]:
        for plan in plans:
            for log_id, status, failure, created, updated in _messages(plan, seed):
                yield (log_id, plan.id, f"r{log_id}@example.com", "", status, failure, _reason(log_id, failure), "",
                       created, updated)

    @staticmethod
    def _quarantine_rows(plans: list[_Plan], seed: int) -> Iterator[tuple[Any, ...]]:
        """The addresses of 9 hard bounces in 10 in quarantine (a complaint's on the denylist), of 1
        soft bounce in 10 erroneous."""
        for plan in plans:
            for log_id, status, failure, _, updated in _messages(plan, seed):
                if status != LogStatus.FAILED or failure == FailureType.IGNORED or log_id % 10 == 0:
                    continue
                if failure == FailureType.SOFT and log_id % 10 != 1:
                    continue
                reason = _reason(log_id, failure)
                state = (Quarantine.Status.ERRONEOUS if failure == FailureType.SOFT else
                         Quarantine.Status.DENYLISTED if reason == FailureReason.ON_DENYLIST else
                         Quarantine.Status.QUARANTINED)
                yield (f"r{log_id}@example.com", plan.channel, state, 1, failure, reason, "", updated,
                       updated)

    @staticmethod
    def _tracking_rows(plans: list[_Plan], seed: int, *, first_id: int, until: datetime) -> Iterator[tuple[Any, ...]]:
        """Tracking rows in ``tracked_at`` order (ids as the consolidation assigns them), merging the
        deliveries' hits as the history goes: only hits not yet due are held in memory."""
        pending: list[tuple[datetime, int, int, int]] = []
        next_id = first_id
        for plan in [*plans, None]:
            horizon = plan.start if plan is not None else datetime.max.replace(tzinfo=UTC)
            while pending and pending[0][0] < horizon:
                tracked, log_id, url_type, delivery_id = heapq.heappop(pending)
                yield next_id, log_id, delivery_id, url_type, "", tracked
                next_id += 1
            if plan is not None:
                for tracked, log_id, url_type in _hits(plan, seed):
                    if tracked < until:  # nothing is tracked in the future
                        heapq.heappush(pending, (tracked, log_id, url_type, plan.id))

    def add_increment(self, *, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        now = timezone.now()
        latest = Delivery.objects.order_by("-id").values_list("id", flat=True)[0]
        # The latest delivery's last pending messages are delivered now.
        DeliveryLog.objects.filter(delivery_id=latest, status=LogStatus.PENDING).update(
            status=LogStatus.SENT, updated_at=now)
        # A new delivery sent in the last seconds.
        new_logs = rows // 2
        first_log = (DeliveryLog.objects.aggregate(last=Max("id"))["last"] or 0) + 1
        delivery = Delivery.objects.create(label="Benchmark delivery (increment)", channel=Channel.EMAIL,
                                           state=Delivery.State.IN_PROGRESS, started_at=now)
        load(DeliveryLog, LOG_FIELDS, (
            (first_log + index, delivery.id, f"n{index}@example.com", "", LogStatus.SENT, 0, 0, "",
             now - timedelta(seconds=10 * index / new_logs), now)
            for index in range(new_logs)
        ))
        # New tracking rows: opens and clicks of the latest deliveries' messages, tracked in the last minute.
        recent = list(DeliveryLog.objects.filter(delivery_id__gt=latest - 3, status=LogStatus.SENT)
                      .order_by("id").values_list("id", "delivery_id"))
        first_hit = (TrackingLog.objects.aggregate(last=Max("id"))["last"] or 0) + 1
        load(TrackingLog, TRACKING_FIELDS, (
            (first_hit + index, *log, rng.choice((UrlType.OPEN, UrlType.OPEN, UrlType.CLICK)), "",
             now - timedelta(seconds=60 * (1 - index / (rows - new_logs))))
            for index, log in enumerate(rng.choices(recent, k=rows - new_logs))
        ))
        reset_sequences(DeliveryLog, TrackingLog)

    # -- the bound -----------------------------------------------------------------------------
    def sql_bound(self) -> None:
        zone = timezone.get_default_timezone_name()
        if connection.vendor == "postgresql":
            log_day, tracking_day = "(created_at AT TIME ZONE %(zone)s)::date", "(tracked_at AT TIME ZONE %(zone)s)::date"
        else:
            log_day = "django_datetime_cast_date(created_at, %(zone)s, 'UTC')"
            tracking_day = "django_datetime_cast_date(tracked_at, %(zone)s, 'UTC')"
        opening, clicking = _in(OPEN_EVIDENCE_URL_TYPES), _in(CLICK_URL_TYPES)
        push = f"'{Channel.PUSH.value}'"
        sql = f"""
            WITH m AS (
                SELECT {log_day} AS day, delivery_id, COUNT(*) AS sent,
                       COUNT(*) FILTER (WHERE status = 1) AS delivered, COUNT(*) FILTER (WHERE status = 2) AS bounces,
                       COUNT(*) FILTER (WHERE status = 2 AND failure_type = 2) AS hard_bounces,
                       COUNT(*) FILTER (WHERE status = 2 AND failure_type = 1) AS soft_bounces,
                       COUNT(*) FILTER (WHERE status = 2 AND failure_type = 2 AND failure_reason = 8) AS on_denylist,
                       COUNT(*) FILTER (WHERE status = 2 AND failure_type = 2 AND failure_reason = 20) AS rejected
                FROM campaign_deliverylog WHERE status IN (1, 2) GROUP BY 1, 2
            ), q AS (
                SELECT {log_day.replace("created_at", "l.created_at")} AS day, l.delivery_id, COUNT(*) AS quarantine
                FROM campaign_deliverylog l JOIN campaign_delivery d ON d.id = l.delivery_id
                    JOIN campaign_quarantine q ON q.address = l.address AND q.channel = d.channel
                WHERE l.status = 2 AND q.status = 'quarantined'
                GROUP BY 1, 2
            ), c AS (
                SELECT {log_day.replace("created_at", "l.created_at")} AS day, l.delivery_id,
                       COUNT(*) FILTER (WHERE t.url_type = 2) AS open_rows,
                       COUNT(DISTINCT l.id) FILTER (WHERE t.url_type = 2) AS pixel,
                       COUNT(DISTINCT l.id) FILTER (WHERE t.url_type IN ({opening})) AS opened,
                       COUNT(*) FILTER (WHERE t.url_type IN ({clicking})) AS clicks,
                       COUNT(DISTINCT l.id) FILTER (WHERE t.url_type IN ({clicking})) AS clicked,
                       COUNT(DISTINCT l.id) FILTER (WHERE t.url_type = 3) AS unsubscribed,
                       COUNT(DISTINCT l.id) FILTER (WHERE t.url_type = 6) AS mirrored
                FROM campaign_trackinglog t JOIN campaign_deliverylog l ON l.id = t.delivery_log_id
                WHERE l.status = 1
                GROUP BY 1, 2
            ), t AS (
                SELECT {tracking_day} AS day, delivery_id, COUNT(*) AS hits,
                       COUNT(*) FILTER (WHERE url_type = 2) AS open_rows,
                       COUNT(DISTINCT delivery_log_id) FILTER (WHERE url_type = 2) AS pixel,
                       COUNT(DISTINCT delivery_log_id) FILTER (WHERE url_type IN ({opening})) AS opened,
                       COUNT(*) FILTER (WHERE url_type IN ({clicking})) AS clicks,
                       COUNT(DISTINCT delivery_log_id) FILTER (WHERE url_type IN ({clicking})) AS unique_clicks,
                       COUNT(*) FILTER (WHERE url_type = 3) AS unsubscribes,
                       COUNT(*) FILTER (WHERE url_type = 6) AS mirror_pages,
                       COUNT(*) FILTER (WHERE url_type = 7) AS impressions
                FROM campaign_trackinglog GROUP BY 1, 2
            ), k AS (SELECT day, delivery_id FROM m UNION SELECT day, delivery_id FROM t)
            INSERT INTO campaign_deliveryaggregate (day, delivery_id, channel, {", ".join(COUNTERS)}, updated_at)
            SELECT k.day, k.delivery_id, d.channel,
                   COALESCE(m.sent, 0), COALESCE(m.delivered, 0), COALESCE(m.bounces, 0), COALESCE(m.hard_bounces, 0),
                   COALESCE(m.soft_bounces, 0), COALESCE(m.on_denylist, 0), COALESCE(m.rejected, 0),
                   COALESCE(q.quarantine, 0),
                   CASE WHEN d.channel = {push} THEN COALESCE(c.open_rows, 0)
                        ELSE COALESCE(c.open_rows + c.opened - c.pixel, 0) END,
                   CASE WHEN d.channel = {push} THEN COALESCE(c.pixel, 0) ELSE COALESCE(c.opened, 0) END,
                   COALESCE(c.clicks, 0), COALESCE(c.clicked, 0), COALESCE(c.unsubscribed, 0), COALESCE(c.mirrored, 0),
                   CASE WHEN d.channel = {push} THEN COALESCE(t.open_rows, 0)
                        ELSE COALESCE(t.open_rows + t.opened - t.pixel, 0) END,
                   CASE WHEN d.channel = {push} THEN COALESCE(t.pixel, 0) ELSE COALESCE(t.opened, 0) END,
                   COALESCE(t.clicks, 0), COALESCE(t.unique_clicks, 0), COALESCE(t.unsubscribes, 0),
                   COALESCE(t.mirror_pages, 0), COALESCE(t.impressions, 0), %(now)s
            FROM k JOIN campaign_delivery d ON d.id = k.delivery_id
            LEFT JOIN m ON m.day = k.day AND m.delivery_id = k.delivery_id
            LEFT JOIN q ON q.day = k.day AND q.delivery_id = k.delivery_id
            LEFT JOIN c ON c.day = k.day AND c.delivery_id = k.delivery_id
            LEFT JOIN t ON t.day = k.day AND t.delivery_id = k.delivery_id
            WHERE COALESCE(m.sent, 0) + COALESCE(t.hits, 0) > 0
        """
        with connection.cursor() as cursor:
            cursor.execute(sql, {"zone": zone, "now": connection.ops.adapt_datetimefield_value(timezone.now())})

    def fingerprint(self) -> Any:
        digest = hashlib.sha256()
        count = 0
        rows = (DeliveryAggregate.objects.order_by("day", "delivery_id", "channel")
                .values_list("day", "delivery_id", "channel", *COUNTERS))
        for row in rows.iterator(chunk_size=10_000):
            digest.update(repr(row).encode())
            count += 1
        return {"rows": count, "sha256": digest.hexdigest()}

    def properties(self) -> dict[str, Any]:
        return {}


def _in(codes: Any) -> str:
    return ", ".join(str(int(code)) for code in codes)


register(ReportingAggregatesCase())
