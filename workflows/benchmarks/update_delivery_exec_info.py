"""Benchmark case of updateDeliveryExecInfo: ``rows`` pending delivery logs with about as many raw
sending feedback rows and tracking hits (and a few hundred spam complaints and SMS replies),
consolidated by the workflow against the hand-written SQL doing the same work in a handful of
whole-table statements.

The data has a sending platform's shape: deliveries (mostly email, some SMS and push) sent one
after the other over two months to a population where each profile receives about twenty
messages; addresses have persistent fates (unknown users bounce hard every time, full mailboxes
bounce soft most of the time, a few are flaky), so the quarantine rules — interval, threshold,
reset — all come into play; some messages are deferred then delivered, some never answered (their
delivery's validity has ended, so they are cancelled), a few feedback rows and hits point to logs
that were purged. Bounce texts embed the address, as providers' do, so they are nearly all
distinct. A few recipients complain of a delivered email, a few answer an SMS (an opt-out keyword
in its usual spellings, or something else; now and then from a number no profile has): their
addresses go on the denylist and their messages still pending fail. The increment is the next
hours: new deliveries with their feedback and first hits.

The SQL bound qualifies bounces with the database's own regex (``~*`` on PostgreSQL, REGEXP on
SQLite), which reads the benchmark's patterns exactly as Python's ``re`` does (no ``\\b`` and the
like), compares SMS replies with the opt-out keywords after stripping the punctuation the data
uses, and replays the quarantine with a recursive query.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from campaign.bulk_load import load, reset_sequences
from campaign.models import (
    BounceRule,
    Campaign,
    Channel,
    Delivery,
    DeliveryLog,
    FailureReason,
    FailureType,
    InboundSms,
    LogStatus,
    Profile,
    Quarantine,
    SendingFeedback,
    TrackingHit,
    UrlType,
)
from workflows.benchmarks import BenchmarkCase, register
from workflows.builtin.update_delivery_exec_info_quarantine import DENYLISTED_LOG_TEXT, opt_out_keywords
from workflows.sql import db_datetime

#: Messages per delivery (100 deliveries at a million logs) and profiles per message (each profile
#: receives about 20 messages over the two months, every three days on average).
LOGS_PER_DELIVERY = 10_000
MESSAGES_PER_PROFILE = 20
SENDING_PERIOD = timedelta(days=60)
#: Feedback arrives within this long after sending; tracking within three days of delivery.
FEEDBACK_MAX_DELAY_S = 30 * 3600
TRACKING_MAX_DELAY_S = 3 * 86400

HARD, SOFT, IGNORED = FailureType.HARD, FailureType.SOFT, FailureType.IGNORED

#: (priority, pattern, failure type, failure reason): patterns in the syntax Python and PostgreSQL
#: read alike.
RULES = (
    (5, r"out of office|auto-reply", IGNORED, FailureReason.NONE),
    (10, r"suppression list|spam complaint", HARD, FailureReason.ON_DENYLIST),
    (20, r"user unknown|no such user|does not exist|unknown subscriber|recipientnotfound", HARD, FailureReason.USER_UNKNOWN),
    (25, r"unregistered", HARD, FailureReason.USER_UNKNOWN),
    (40, r"host or domain name not found|nonexistentdomain", HARD, FailureReason.INVALID_DOMAIN),
    (60, r"mailbox full|over quota|quota exceeded", SOFT, FailureReason.MAILBOX_FULL),
    (70, r"absent subscriber|subscriber busy", SOFT, FailureReason.NOT_CONNECTED),
    (80, r"spamhaus|blocked using|rejected as spam", SOFT, FailureReason.REFUSED),
    (90, r"timed out|connection refused|resolving error", SOFT, FailureReason.UNREACHABLE),
)

# Persistent fates of a profile's addresses.
NORMAL, UNKNOWN, FULL, FLAKY = 0, 1, 2, 3
FATES = ((UNKNOWN, 0.03), (FULL, 0.05), (FLAKY, 0.02))

HARD_TEXTS = {
    Channel.EMAIL: ("550 5.1.1 <{a}>: Recipient address rejected: User unknown in virtual mailbox table",
                    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient {a} not found by SMTP address lookup",
                    "Host or domain name not found. Name service error for name={a} type=MX"),
    Channel.SMS: ("SR error 1: Unknown subscriber {a}",),
    Channel.PUSH: ("APNs 410 Unregistered: the device token {a} is inactive",),
}
FULL_TEXTS = {
    Channel.EMAIL: ("452 4.2.2 <{a}> Mailbox full", "552 5.2.2 <{a}>: Mailbox full - quota exceeded"),
    Channel.SMS: ("SR error 27: Absent subscriber {a}",),
    Channel.PUSH: ("FCM 503 device {a} temporarily unavailable",),
}
FLAKY_TEXTS = ("421 4.4.2 mx1 for {a}: Connection timed out", "554 Transaction failed for {a}",
               "554 5.7.1 Client host blocked using zen.spamhaus.org ({a})", "451 4.4.0 DNS resolving error for {a}")
IGNORED_TEXT = "Auto-reply: {a} is out of office until Monday"

#: Per delivered email, the chance of a spam complaint (providers' feedback loops report a few per
#: thousand); per delivered SMS, the chance of a reply, and the replies drawn from (the keyword
#: spellings use only the punctuation the bound strips: space, full stop, exclamation mark).
COMPLAINT_PROBABILITY = 0.002
COMPLAINT_TEXT = "Feedback-Type: abuse; User-Agent: fbl.{a}"
REPLY_PROBABILITY = 0.01
OPT_OUT_REPLIES = ("STOP", "stop", "Stop.", "STOP!", " Stop ", "unsubscribe", "ARRET", "Quit", "end")
OTHER_REPLIES = ("Thanks", "Who is this", "ok", "stop please", "STOPPED")
#: Every this-many-th reply comes from a number no profile has.
UNKNOWN_NUMBER_EVERY = 40

# Outcome codes of a log in the generation arrays.
O_DELIVERED, O_BOUNCE, O_DEFERRED_THEN_DELIVERED, O_DEFERRED, O_NONE, O_TWICE, O_BOUNCE_THEN_DELIVERED = range(7)


def _address(channel: str, profile_id: int) -> str:
    if channel == Channel.SMS:
        return f"+336{profile_id:08d}"
    if channel == Channel.PUSH:
        return f"tok{profile_id:012d}"
    return f"p{profile_id}@{('gmail', 'outlook', 'orange', 'example')[profile_id % 4]}.example"


class Generator:
    """Deterministic rows for ``count`` logs of ``deliveries``, ids from the given starts; profiles
    are ``profile_ids`` (1..P), ``fates[id - 1]`` their addresses' fate."""

    def __init__(self, *, rng: random.Random, deliveries: list[Delivery], count: int, profile_ids: range,
                 fates: bytes, first_log: int, first_feedback: int, first_hit: int, first_reply: int = 1) -> None:
        self.rng, self.deliveries, self.count = rng, deliveries, count
        self.profile_ids, self.fates = profile_ids, fates
        self.first_log, self.first_feedback, self.first_hit = first_log, first_feedback, first_hit
        self.first_reply = first_reply
        # Complaints and replies draw from their own generator: the other rows stay as they were.
        self.reactions = random.Random(first_log * 7_919 + count)
        # Compact per-log decisions shared by the three passes (13 bytes a log).
        self.profiles = array("l")
        self.outcomes = array("b")
        self.delays = array("l")

    def _delivery(self, index: int) -> Delivery:
        return self.deliveries[index * len(self.deliveries) // self.count]

    def logs(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        for index in range(self.count):
            delivery = self._delivery(index)
            profile_id = self.profile_ids[rng.randrange(len(self.profile_ids))]
            fate = self.fates[profile_id - 1]
            draw = rng.random()
            if fate == UNKNOWN or (fate == FULL and draw < 0.7) or (fate == FLAKY and draw < 0.5):
                outcome = O_BOUNCE if draw < 0.95 or fate == UNKNOWN else O_BOUNCE_THEN_DELIVERED
            elif draw < 0.01:
                outcome = O_BOUNCE  # an occasional soft error of a good address
            elif draw < 0.06:
                outcome = O_DEFERRED_THEN_DELIVERED
            elif draw < 0.07:
                outcome = O_DEFERRED
            elif draw < 0.072:
                outcome = O_NONE
            elif draw < 0.077:
                outcome = O_TWICE
            else:
                outcome = O_DELIVERED
            self.profiles.append(profile_id)
            self.outcomes.append(outcome)
            self.delays.append(rng.randrange(60, FEEDBACK_MAX_DELAY_S))
            sent_at = delivery.started_at
            yield (self.first_log + index, delivery.pk, profile_id, _address(delivery.channel, profile_id), "",
                   LogStatus.PENDING, 0, 0, "", sent_at, sent_at)

    def _bounce_text(self, channel: str, profile_id: int, address: str) -> str:
        fate = self.fates[profile_id - 1]
        rng = self.rng
        if fate == UNKNOWN:
            texts = HARD_TEXTS[channel]
        elif fate == FULL:
            texts = FULL_TEXTS[channel]
        elif rng.random() < 0.1:
            return IGNORED_TEXT.format(a=address)
        else:
            texts = FLAKY_TEXTS
        return rng.choice(texts).format(a=address)

    def feedback(self) -> Iterator[tuple[Any, ...]]:
        feedback_id = self.first_feedback
        # Complaints come hours after delivery, after the answers about the other messages.
        complaints: list[tuple[int, str, datetime]] = []
        for index in range(self.count):
            outcome = self.outcomes[index]
            if outcome == O_NONE:
                continue
            delivery, log_id, profile_id = self._delivery(index), self.first_log + index, self.profiles[index]
            at = delivery.started_at + timedelta(seconds=self.delays[index])
            rows: list[tuple[str, str, datetime]] = []
            if outcome in (O_BOUNCE, O_BOUNCE_THEN_DELIVERED):
                text = self._bounce_text(delivery.channel, profile_id, _address(delivery.channel, profile_id))
                rows.append(("bounce", text, at))
                if outcome == O_BOUNCE_THEN_DELIVERED:
                    rows.append(("delivered", "", at + timedelta(hours=4)))
            elif outcome in (O_DEFERRED, O_DEFERRED_THEN_DELIVERED):
                rows.append(("deferred", "451 4.7.1 Greylisted, please try again later", at))
                if outcome == O_DEFERRED_THEN_DELIVERED:
                    rows.append(("delivered", "", at + timedelta(hours=2)))
            else:
                rows.append(("delivered", "", at))
                if outcome == O_TWICE:
                    rows.append(("delivered", "", at + timedelta(seconds=5)))
            delivered = outcome in (O_DELIVERED, O_TWICE, O_DEFERRED_THEN_DELIVERED)
            if delivered and delivery.channel == Channel.EMAIL and self.reactions.random() < COMPLAINT_PROBABILITY:
                address = _address(delivery.channel, profile_id)
                complaints.append((log_id, COMPLAINT_TEXT.format(a=address), rows[-1][2] + timedelta(hours=6)))
            for outcome_name, text, received_at in rows:
                yield (feedback_id, log_id, outcome_name, text, received_at)
                feedback_id += 1
            if index % 997 == 0:  # feedback about a log purged meanwhile
                yield (feedback_id, 10 * (self.first_log + self.count) + index, "delivered", "", at)
                feedback_id += 1
        for log_id, text, received_at in complaints:
            yield (feedback_id, log_id, "complaint", text, received_at)
            feedback_id += 1

    def hits(self) -> Iterator[tuple[Any, ...]]:
        rng, hit_id = self.rng, self.first_hit
        for index in range(self.count):
            if self.outcomes[index] not in (O_DELIVERED, O_DEFERRED_THEN_DELIVERED, O_TWICE, O_BOUNCE_THEN_DELIVERED):
                continue
            delivery, log_id = self._delivery(index), self.first_log + index
            delivered_at = delivery.started_at + timedelta(seconds=self.delays[index])
            types: list[int] = []
            if rng.random() < 0.5:
                types.append(UrlType.OPEN)
                while rng.random() < 0.45 and len(types) < 8:
                    types.append(UrlType.OPEN)
                if rng.random() < 0.35:
                    types += [UrlType.CLICK] * rng.randint(1, 2)
            elif rng.random() < 0.05:
                types.append(UrlType.CLICK)  # images blocked: a click without an open
            if rng.random() < 0.01:
                types.append(UrlType.OPT_OUT)
            if rng.random() < 0.02:
                types.append(UrlType.MIRROR_PAGE)
            for url_type in types:
                url = f"https://shop.example/{delivery.pk}/{rng.randrange(20)}" if url_type == UrlType.CLICK else ""
                hit_at = delivered_at + timedelta(seconds=rng.randrange(1, TRACKING_MAX_DELAY_S))
                yield (hit_id, log_id, url_type, url, "Mozilla/5.0 (benchmark)", hit_at)
                hit_id += 1
            if index % 1009 == 0:  # a hit on a purged log
                yield (hit_id, 10 * (self.first_log + self.count) + index, UrlType.OPEN, "", "", delivered_at)
                hit_id += 1


    def replies(self) -> Iterator[tuple[Any, ...]]:
        """SMS replies to delivered SMS, a few hours after delivery."""
        reply_id = self.first_reply
        for index in range(self.count):
            delivery = self._delivery(index)
            if delivery.channel != Channel.SMS or self.outcomes[index] not in (O_DELIVERED, O_TWICE, O_DEFERRED_THEN_DELIVERED):
                continue
            if self.reactions.random() >= REPLY_PROBABILITY:
                continue
            texts = OPT_OUT_REPLIES if self.reactions.random() < 0.75 else OTHER_REPLIES
            unknown = (reply_id - self.first_reply) % UNKNOWN_NUMBER_EVERY == UNKNOWN_NUMBER_EVERY - 1
            phone = f"+337{reply_id:08d}" if unknown else _address(Channel.SMS, self.profiles[index])
            at = delivery.started_at + timedelta(seconds=self.delays[index], hours=3)
            yield (reply_id, phone, self.reactions.choice(texts), "38111", at)
            reply_id += 1


LOG_FIELDS = ("id", "delivery_id", "profile_id", "address", "variant", "status", "failure_type", "failure_reason",
              "error_text", "created_at", "updated_at")
FEEDBACK_FIELDS = ("id", "delivery_log_id", "outcome", "error_text", "received_at")
HIT_FIELDS = ("id", "delivery_log_id", "url_type", "url", "user_agent", "hit_at")
REPLY_FIELDS = ("id", "phone", "text", "short_code", "received_at")
PROFILE_FIELDS = ("id", "email", "phone", "first_name", "last_name", "blocklisted_email", "blocklisted_sms",
                  "blocklisted_push", "created_at", "updated_at")


def _deliveries(*, count: int, first_sent: datetime, spacing: timedelta, now: datetime, label: str) -> list[Delivery]:
    campaign = Campaign.objects.create(label=f"Benchmark {label}")
    deliveries = []
    for n in range(count):
        channel = Channel.SMS if n % 10 == 8 else Channel.PUSH if n % 10 == 9 else Channel.EMAIL
        started = first_sent + spacing * n
        # A third keeps a validity still open (their never-answered logs stay pending); the others
        # ended three days after sending, so their pending logs are cancelled.
        validity_end = now + timedelta(days=30) if n % 3 == 0 else started + timedelta(days=3)
        deliveries.append(Delivery(label=f"{label} {n}", campaign=campaign, channel=channel, state=Delivery.State.IN_PROGRESS,
                                   started_at=started, scheduled_at=started, validity_end=validity_end))
    return Delivery.objects.bulk_create(deliveries)


class DeliveryExecInfoCase(BenchmarkCase):
    workflow_id = "updateDeliveryExecInfo"

    def populate(self, *, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        now = timezone.now()
        profile_count = max(10, rows // MESSAGES_PER_PROFILE)
        fates = bytearray(profile_count)
        for offset in range(profile_count):
            draw, total = rng.random(), 0.0
            for fate, share in FATES:
                total += share
                if draw < total:
                    fates[offset] = fate
                    break
        created = now - timedelta(days=400)
        load(Profile, PROFILE_FIELDS, (
            (pid, f"p{pid}@example.com", _address(Channel.SMS, pid), "Ada", f"R{pid}", False, False, False, created, created)
            for pid in range(1, profile_count + 1)
        ))
        BounceRule.objects.bulk_create(BounceRule(priority=p, pattern=pattern, failure_type=t, failure_reason=r)
                                       for p, pattern, t, r in RULES)
        # Some addresses already have a history: erroneous (recent or stale), quarantined, released.
        history = []
        first_sent = now - SENDING_PERIOD - timedelta(days=10)
        for pid in range(1, profile_count + 1, 97):
            status = (Quarantine.Status.ERRONEOUS, Quarantine.Status.ERRONEOUS, Quarantine.Status.QUARANTINED,
                      Quarantine.Status.VALID)[pid % 4]
            last = first_sent - timedelta(days=rng.choice((1, 3, 12)), seconds=rng.randrange(86400))
            history.append(Quarantine(address=_address(Channel.EMAIL, pid), channel=Channel.EMAIL, status=status,
                                      error_count=1 + pid % 4, first_error_at=last - timedelta(days=2), last_error_at=last,
                                      failure_type=SOFT, failure_reason=FailureReason.MAILBOX_FULL, error_text="earlier"))
        Quarantine.objects.bulk_create(history)

        delivery_count = max(3, rows // LOGS_PER_DELIVERY)
        deliveries = _deliveries(count=delivery_count, first_sent=first_sent, spacing=SENDING_PERIOD / delivery_count,
                                 now=now, label="delivery")
        generator = Generator(rng=rng, deliveries=deliveries, count=rows, profile_ids=range(1, profile_count + 1),
                              fates=bytes(fates), first_log=1, first_feedback=1, first_hit=1)
        self._load(generator)
        reset_sequences(Profile, Campaign, Delivery, DeliveryLog, SendingFeedback, TrackingHit, InboundSms, BounceRule,
                        Quarantine)

    def _load(self, generator: Generator) -> None:
        load(DeliveryLog, LOG_FIELDS, generator.logs())
        load(SendingFeedback, FEEDBACK_FIELDS, generator.feedback())
        load(TrackingHit, HIT_FIELDS, generator.hits())
        load(InboundSms, REPLY_FIELDS, generator.replies())

    def add_increment(self, *, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        now = timezone.now()
        profile_count = Profile.objects.count()
        deliveries = _deliveries(count=2, first_sent=now - timedelta(hours=6), spacing=timedelta(hours=2), now=now, label="new")

        def next_id(model: type) -> int:
            return (model.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1

        generator = Generator(rng=rng, deliveries=deliveries, count=rows, profile_ids=range(1, profile_count + 1),
                              fates=bytes(profile_count), first_log=next_id(DeliveryLog),
                              first_feedback=next_id(SendingFeedback), first_hit=next_id(TrackingHit),
                              first_reply=next_id(InboundSms))
        self._load(generator)
        reset_sequences(DeliveryLog, SendingFeedback, TrackingHit, InboundSms)

    # -- the bound -------------------------------------------------------------------------------
    def sql_bound(self) -> None:
        from workflows.builtin.update_delivery_exec_info import definition

        properties = definition.resolve_properties({}, self.properties())
        now = db_datetime(timezone.now())
        with connection.cursor() as cursor:
            for sql, params in bound_statements(now=now, properties=properties):
                cursor.execute(sql, params)

    def fingerprint(self) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        with connection.cursor() as cursor:
            for name, sql in FINGERPRINT_QUERIES(connection.vendor).items():
                cursor.execute(sql)
                rows += [(name, *(_plain(value) for value in row)) for row in cursor.fetchall()]
        return sorted(rows, key=repr)


def _plain(value: Any) -> Any:
    """Numbers as ints (PostgreSQL sums give Decimals, SQLite ints): the two sides compare alike."""
    if value is None or isinstance(value, str):
        return value
    return int(value)


def FINGERPRINT_QUERIES(vendor: str) -> dict[str, str]:  # a table of queries
    epoch = "CAST(EXTRACT(EPOCH FROM {0}) AS BIGINT)" if vendor == "postgresql" else "CAST(strftime('%s', {0}) AS INTEGER)"
    true = "TRUE" if vendor == "postgresql" else "1"
    return {
        "logs": "SELECT status, failure_type, failure_reason, COUNT(*), SUM(id), SUM(id % 1009 * status), "
                "SUM(LENGTH(error_text)) FROM campaign_deliverylog GROUP BY status, failure_type, failure_reason",
        "tracking": f"SELECT url_type, COUNT(*), SUM(delivery_log_id), SUM(delivery_id), SUM(LENGTH(url)), "
                    f"SUM({epoch.format('tracked_at')}), SUM(delivery_log_id % 1009 * url_type) "
                    "FROM campaign_trackinglog GROUP BY url_type",
        "quarantine": f"SELECT status, channel, failure_type, failure_reason, COUNT(*), SUM(error_count), "
                      f"SUM({epoch.format('last_error_at')}), SUM({epoch.format('first_error_at')}), "
                      "SUM(LENGTH(error_text)), SUM(LENGTH(address)) FROM campaign_quarantine "
                      "GROUP BY status, channel, failure_type, failure_reason",
        "profiles": f"SELECT SUM(CASE WHEN blocklisted_email = {true} THEN id ELSE 0 END), "
                    f"SUM(CASE WHEN blocklisted_sms = {true} THEN id ELSE 0 END), "
                    f"SUM(CASE WHEN blocklisted_push = {true} THEN id ELSE 0 END) FROM campaign_profile",
        "deliveries": "SELECT state, COUNT(*), SUM(id), COUNT(finished_at) FROM campaign_delivery GROUP BY state",
    }


def bound_statements(*, now: Any, properties: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    """The workflow's work as whole-table statements: qualify every bounce once, update each log
    from its last feedback, replay the quarantine recursively (bounces, complaints, opt-out replies),
    fail the pending logs of denylisted addresses, copy the hits, blocklist, cancel, finish."""
    postgres = connection.vendor == "postgresql"
    matches = "f.error_text ~* rule.pattern" if postgres else "f.error_text REGEXP ('(?i)' || rule.pattern)"
    elapsed_ms = ("(EXTRACT(EPOCH FROM ({0} - {1})) * 1000)" if postgres
                  else "ROUND((julianday({0}) - julianday({1})) * 86400000)")
    interval_ms = properties["error_interval_days"] * 86_400_000
    reset_ms = properties["counter_reset_days"] * 86_400_000
    threshold = properties["quarantine_threshold"]
    statements: list[tuple[str, list[Any]]] = []

    # 1. Every bounce, qualified by the first matching rule (no match: soft, reason 0).
    first_rule = f"SELECT rule.id FROM campaign_bouncerule AS rule WHERE {matches} ORDER BY rule.priority, rule.id LIMIT 1"
    statements.append((f"""
        CREATE TEMP TABLE bench_bounce AS
        SELECT f.id, f.delivery_log_id, f.error_text, f.received_at,
               COALESCE(r.failure_type, {SOFT}) AS failure_type, COALESCE(r.failure_reason, 0) AS failure_reason
        FROM campaign_sendingfeedback AS f
            LEFT JOIN campaign_bouncerule AS r ON r.id = ({first_rule})
        WHERE f.outcome = 'bounce'
    """, []))
    # 2. Each log from its last delivered/bounce feedback.
    statements.append((f"""
        UPDATE campaign_deliverylog SET
            status = CASE WHEN f.outcome = 'delivered' THEN {LogStatus.SENT} ELSE {LogStatus.FAILED} END,
            failure_type = COALESCE(b.failure_type, 0), failure_reason = COALESCE(b.failure_reason, 0),
            error_text = CASE WHEN f.outcome = 'delivered' THEN '' ELSE f.error_text END,
            updated_at = %s
        FROM (SELECT MAX(id) AS id FROM campaign_sendingfeedback WHERE outcome IN ('delivered', 'bounce')
              GROUP BY delivery_log_id) AS w
            JOIN campaign_sendingfeedback AS f ON f.id = w.id
            LEFT JOIN bench_bounce AS b ON b.id = f.id
        WHERE campaign_deliverylog.id = f.delivery_log_id
    """, [now]))
    # 3. The quarantine: errors numbered per (address, channel) — bounces and complaints in feedback
    # order, then the SMS opt-out replies in reply order —, replayed from the stored state (a
    # released address starts afresh; a complaint or an opt-out is a hard error of reason 8).
    keywords = sorted(opt_out_keywords(properties["opt_out_keywords"]))
    stripped = "regexp_replace(r.text, '[^[:alnum:]]', '', 'g')" if postgres else (
        "replace(replace(replace(r.text, ' ', ''), '.', ''), '!', '')")
    statements.append((f"""
        CREATE TEMP TABLE bench_error AS
        SELECT e.address, e.channel, e.at, e.failure_type, e.failure_reason, e.error_text,
               ROW_NUMBER() OVER (PARTITION BY e.address, e.channel ORDER BY e.source, e.id) AS rn
        FROM (
            SELECT 0 AS source, b.id, l.address, d.channel, b.received_at AS at, b.failure_type, b.failure_reason,
                   b.error_text
            FROM bench_bounce AS b
                JOIN campaign_deliverylog AS l ON l.id = b.delivery_log_id
                JOIN campaign_delivery AS d ON d.id = l.delivery_id
            WHERE b.failure_type <> {IGNORED}
            UNION ALL
            SELECT 0, f.id, l.address, d.channel, f.received_at, {HARD}, {FailureReason.ON_DENYLIST}, f.error_text
            FROM campaign_sendingfeedback AS f
                JOIN campaign_deliverylog AS l ON l.id = f.delivery_log_id
                JOIN campaign_delivery AS d ON d.id = l.delivery_id
            WHERE f.outcome = 'complaint'
            UNION ALL
            SELECT 1, r.id, r.phone, 'sms', r.received_at, {HARD}, {FailureReason.ON_DENYLIST}, r.text
            FROM campaign_inboundsms AS r
            WHERE lower({stripped}) IN ({", ".join(["%s"] * len(keywords))})
        ) AS e
    """, keywords))
    statements.append(("CREATE INDEX bench_error_walk ON bench_error (address, channel, rn)", []))
    reset = f"(w.last_at IS NOT NULL AND {elapsed_ms.format('e.at', 'w.last_at')} > {reset_ms})"
    significant = (f"(e.failure_type = {HARD} OR w.last_at IS NULL OR {reset} "
                   f"OR {elapsed_ms.format('e.at', 'w.last_at')} >= {interval_ms})")
    denylisting = f"(e.failure_type = {HARD} AND e.failure_reason = {FailureReason.ON_DENYLIST})"
    settled = f"(w.status = 'denylisted' OR (w.status = 'quarantined' AND NOT {denylisting}))"
    count = f"((CASE WHEN {reset} THEN 0 ELSE w.cnt END) + (CASE WHEN {significant} THEN 1 ELSE 0 END))"
    statements.append((f"""
        WITH RECURSIVE walk (address, channel, rn, status, cnt, first_at, last_at, failure_type, failure_reason, error_text) AS (
            SELECT k.address, k.channel, CAST(0 AS BIGINT),
                   CAST(CASE WHEN q.status = 'valid' THEN NULL ELSE q.status END AS TEXT),
                   CASE WHEN q.status IS NULL OR q.status = 'valid' THEN 0 ELSE q.error_count END,
                   CASE WHEN q.status = 'valid' THEN NULL ELSE q.first_error_at END,
                   CASE WHEN q.status = 'valid' THEN NULL ELSE q.last_error_at END,
                   CAST(q.failure_type AS INTEGER), CAST(q.failure_reason AS INTEGER), CAST(q.error_text AS TEXT)
            FROM (SELECT DISTINCT address, channel FROM bench_error) AS k
                LEFT JOIN campaign_quarantine AS q ON q.address = k.address AND q.channel = k.channel
            UNION ALL
            SELECT w.address, w.channel, e.rn,
                   CASE WHEN {settled} THEN w.status WHEN {denylisting} THEN 'denylisted'
                        WHEN e.failure_type = {HARD} OR {count} >= {threshold} THEN 'quarantined' ELSE 'erroneous' END,
                   CASE WHEN {settled} THEN w.cnt ELSE {count} END,
                   CASE WHEN {settled} THEN w.first_at
                        WHEN w.status IS NULL OR w.first_at IS NULL OR {reset} THEN e.at ELSE w.first_at END,
                   CASE WHEN {settled} THEN w.last_at WHEN {significant} THEN e.at ELSE w.last_at END,
                   CASE WHEN {settled} THEN w.failure_type ELSE e.failure_type END,
                   CASE WHEN {settled} THEN w.failure_reason ELSE e.failure_reason END,
                   CASE WHEN {settled} THEN w.error_text ELSE e.error_text END
            FROM walk AS w JOIN bench_error AS e ON e.address = w.address AND e.channel = w.channel AND e.rn = w.rn + 1
        )
        INSERT INTO campaign_quarantine (address, channel, status, error_count, first_error_at, last_error_at,
                                         failure_type, failure_reason, error_text, created_at, updated_at)
        SELECT w.address, w.channel, w.status, w.cnt, w.first_at, w.last_at, w.failure_type, w.failure_reason,
               w.error_text, %s, %s
        FROM walk AS w
            JOIN (SELECT address, channel, MAX(rn) AS rn FROM bench_error GROUP BY address, channel) AS last
                ON last.address = w.address AND last.channel = w.channel AND last.rn = w.rn
        WHERE TRUE
        ON CONFLICT (address, channel) DO UPDATE SET
            status = excluded.status, error_count = excluded.error_count, first_error_at = excluded.first_error_at,
            last_error_at = excluded.last_error_at, failure_type = excluded.failure_type,
            failure_reason = excluded.failure_reason, error_text = excluded.error_text, updated_at = excluded.updated_at
    """, [now, now]))
    # The messages still pending of the addresses now on the denylist (none was before) fail.
    statements.append((f"""
        UPDATE campaign_deliverylog SET status = {LogStatus.FAILED}, failure_type = {HARD},
            failure_reason = {FailureReason.ON_DENYLIST}, error_text = '{DENYLISTED_LOG_TEXT}', updated_at = %s
        WHERE status = {LogStatus.PENDING} AND EXISTS (
            SELECT 1 FROM campaign_quarantine AS q JOIN campaign_delivery AS d ON d.channel = q.channel
            WHERE q.address = campaign_deliverylog.address AND d.id = campaign_deliverylog.delivery_id
                AND q.status = 'denylisted')
    """, [now]))
    # 4. Tracking rows, the delivery denormalised from the log.
    statements.append(("""
        INSERT INTO campaign_trackinglog (delivery_log_id, delivery_id, url_type, url, tracked_at)
        SELECT h.delivery_log_id, l.delivery_id, h.url_type, h.url, h.hit_at
        FROM campaign_trackinghit AS h JOIN campaign_deliverylog AS l ON l.id = h.delivery_log_id
    """, []))
    # 5. Opt-outs → the blocklist flag of the delivery's channel.
    statements.append((f"""
        UPDATE campaign_profile SET
            blocklisted_email = (blocklisted_email OR o.email = 1),
            blocklisted_sms = (blocklisted_sms OR o.sms = 1),
            blocklisted_push = (blocklisted_push OR o.push = 1),
            updated_at = %s
        FROM (SELECT l.profile_id,
                     MAX(CASE WHEN d.channel = 'email' THEN 1 ELSE 0 END) AS email,
                     MAX(CASE WHEN d.channel = 'sms' THEN 1 ELSE 0 END) AS sms,
                     MAX(CASE WHEN d.channel = 'push' THEN 1 ELSE 0 END) AS push
              FROM campaign_trackinghit AS h
                  JOIN campaign_deliverylog AS l ON l.id = h.delivery_log_id
                  JOIN campaign_delivery AS d ON d.id = l.delivery_id
              WHERE h.url_type = {UrlType.OPT_OUT} AND l.profile_id IS NOT NULL
              GROUP BY l.profile_id) AS o
        WHERE campaign_profile.id = o.profile_id
    """, [now]))
    # 6. Pending logs past validity → cancelled; 7. deliveries done → finished.
    statements.append((f"""
        UPDATE campaign_deliverylog SET status = {LogStatus.CANCELLED}, updated_at = %s
        WHERE status = {LogStatus.PENDING}
            AND delivery_id IN (SELECT id FROM campaign_delivery WHERE validity_end < %s)
    """, [now, now]))
    statements.append((f"""
        UPDATE campaign_delivery SET state = 'finished', finished_at = %s, updated_at = %s
        WHERE state = 'in_progress'
            AND NOT EXISTS (SELECT 1 FROM campaign_deliverylog AS l WHERE l.delivery_id = campaign_delivery.id
                            AND l.status = {LogStatus.PENDING})
            AND (validity_end < %s OR EXISTS (SELECT 1 FROM campaign_deliverylog AS l
                                               WHERE l.delivery_id = campaign_delivery.id))
    """, [now, now, now]))
    statements.append(("DROP TABLE bench_error", []))
    statements.append(("DROP TABLE bench_bounce", []))
    return statements


register(DeliveryExecInfoCase())
