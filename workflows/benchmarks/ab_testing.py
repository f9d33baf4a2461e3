"""Benchmark case of abTesting: about one A/B test per 5,000 delivery logs, each decided from its
test delivery's logs and tracking rows, against a hand-written set-based decision.

The data follows a sending platform's shape: each test has its campaign and one marketing test
delivery of a few thousand messages, split evenly between the variants (A/B, and A/B/C for one
test in five; a few seed-list messages carry no variant and must be ignored). Each variant has its
own reaction profile, so the winners differ from test to test: opens (some repeated), clicks
(a few without an open row, images blocked), opt-outs, mirror pages, about one tracking row per
message, arriving over the hours after the sending; tracking ids follow arrival, so the rows of
tests sent close together interleave. A few tracking rows point to purged logs. The tests mix the
three criteria and both winner sendings; in every twenty, two end in an exact tie (their variants
react identically), one has a winner picked by hand before its end, one is a tie already resolved
by hand (``awaiting_choice`` with a winner), and two are still running (their period ends a day
after the benchmark). Every other test ended at least an hour ago. Owners have no email address
(or there is no owner), so no mail is attempted.

The increment is the next day's tests: new tests of the same shape, ≈ ``rows`` logs in all, whose
period has just ended. The tests settled by the full run are not candidates any more, and the two
still running are only looked at, so an incremental run costs the size of the new tests.

The SQL bound decides the same tests in four statements: the candidates (tests ``decide`` would
settle now, with their test delivery) into a temporary table; their decisions (figures per variant
as two grouped passes, rates in integer hundredths, the best on each test's criterion, ties, hand
picks) into another; one INSERT of the winner deliveries; one UPDATE of the tests.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Max
from django.utils import timezone

from campaign.bulk_load import load, reset_sequences
from campaign.models import (
    ABTest,
    Campaign,
    Channel,
    Delivery,
    DeliveryLog,
    FailureReason,
    FailureType,
    LogStatus,
    TrackingLog,
    UrlType,
)
from workflows.benchmarks import BenchmarkCase, register
from workflows.benchmarks.data import pop_tracking_until
from workflows.builtin.ab_testing import WINNER_LABEL_SUFFIX

#: Average messages per test delivery: 200 tests at a million logs.
LOGS_PER_TEST = 5_000
#: At least this many tests, so that even a small run has every kind of test (one cycle below).
MIN_TESTS = 20
#: The smallest test delivery: two messages per variant of a three-variant test.
MIN_TEST_SIZE = 6
#: The kinds of tests, cycling in this order (test index modulo 20).
TIE_INDEXES = (6, 16)
HAND_PICKED_INDEX = 7  # a winner picked by hand before the end of the test period
RESOLVED_TIE_INDEX = 17  # awaiting_choice, a winner since picked by hand
RUNNING_INDEXES = (8, 18)  # test period not over
LONG_LABEL_INDEX = 3  # a label of the field's full length: the winner label is truncated
CYCLE = 20

TEST_DURATIONS = (timedelta(hours=1), timedelta(hours=4), timedelta(days=1), timedelta(days=1), timedelta(days=2))
#: An ended test ended between this long ago and three days before that; a running one ends a day
#: after the data is made. Both stay far from "now", which moves between the bound and the run.
ENDED_MARGIN = timedelta(hours=1)
RUNNING_DURATION = timedelta(days=2)
#: Tracking arrives over about six hours on average after sending, for at most three days.
TRACKING_MEAN_DELAY_H = 6.0
TRACKING_MAX_DELAY = timedelta(days=3)
#: One message in this many goes to the seed list: no variant, ignored by the figures.
SEED_LIST_SHARE = 100

LOG_FIELDS = ("id", "delivery", "address", "variant", "status", "failure_type", "failure_reason", "error_text",
              "created_at", "updated_at")
TRACKING_FIELDS = ("delivery_log", "delivery", "url_type", "url", "tracked_at")


@dataclass(frozen=True)
class _Profile:
    """How one variant's recipients react: probabilities per delivered message."""

    open: float
    click: float  # given an open
    opt_out: float  # given an open
    blind_click: float  # a click without an open row (images blocked)
    mirror: float


@dataclass
class _Plan:
    """One test to generate: its rows are created from this, the same for a seed."""

    index: int
    size: int  # messages of the test delivery, all variants and the seed list
    variant_count: int
    criterion: str
    winner_sending: str
    duration: timedelta
    started_at: datetime
    status: str = ABTest.Status.TESTING
    winner_variant: str = ""
    hand_picked: bool = False
    identical_variants: bool = False  # every variant reacts the same way: a tie on any criterion
    priority: int = 0
    delivery_id: int = 0  # set once created

    @property
    def variants(self) -> list[str]:
        return ["A", "B", "C"][: self.variant_count]


def _plans(rng: random.Random, *, count: int, first_index: int, total_logs: int, now: datetime,
           just_ended: bool = False) -> list[_Plan]:
    """``count`` tests of ``total_logs`` messages in all, by kind as the module docstring says."""
    weights = [rng.uniform(0.2, 1.8) for _ in range(count)]
    sizes = [max(MIN_TEST_SIZE, int(total_logs * weight / sum(weights))) for weight in weights]
    sizes[-1] = max(MIN_TEST_SIZE, sizes[-1] + total_logs - sum(sizes))
    criteria = list(ABTest.Criterion.values)
    plans = []
    for offset, size in enumerate(sizes):
        index = first_index + offset
        kind = index % CYCLE
        plan = _Plan(
            index=index,
            size=size,
            variant_count=3 if index % 5 == 2 else 2,
            criterion=criteria[index % 3],
            winner_sending=ABTest.WinnerSending.CONFIRM if index % 4 == 1 else ABTest.WinnerSending.AUTOMATIC,
            duration=rng.choice(TEST_DURATIONS),
            started_at=now,
            priority=rng.choice((0, 0, 0, 1, 5)),
        )
        if just_ended:
            plan.started_at = now - plan.duration - timedelta(minutes=rng.uniform(1, 30))
        elif kind in RUNNING_INDEXES:
            plan.duration = RUNNING_DURATION
            plan.started_at = now - RUNNING_DURATION / 2
        else:
            plan.started_at = now - plan.duration - ENDED_MARGIN - timedelta(hours=rng.uniform(0, 72))
        if not just_ended:
            if kind in TIE_INDEXES:
                plan.identical_variants = True
            elif kind == HAND_PICKED_INDEX:
                plan.winner_variant, plan.hand_picked = rng.choice(plan.variants), True
            elif kind == RESOLVED_TIE_INDEX:
                plan.identical_variants = True
                plan.status = ABTest.Status.AWAITING_CHOICE
                plan.winner_variant, plan.hand_picked = rng.choice(plan.variants), True
        plans.append(plan)
    return plans


def _create_tests(plans: list[_Plan]) -> None:
    """The campaigns, tests and test deliveries of ``plans`` (few rows: the ORM); sets ``delivery_id``."""
    users = get_user_model().objects
    owner, _ = users.get_or_create(username="benchmark-ab-owner", defaults={"email": ""})
    picker, _ = users.get_or_create(username="benchmark-ab-picker", defaults={"email": ""})
    label_length = ABTest._meta.get_field("label").max_length
    campaigns = Campaign.objects.bulk_create(Campaign(label=f"Benchmark A/B campaign {plan.index}") for plan in plans)
    tests = ABTest.objects.bulk_create(
        ABTest(
            label=(f"Benchmark A/B test {plan.index} " * 20)[:label_length] if plan.index % CYCLE == LONG_LABEL_INDEX
            else f"Benchmark A/B test {plan.index}",
            campaign=campaign, owner=owner if plan.index % 2 == 0 else None, variant_count=plan.variant_count,
            criterion=plan.criterion, test_duration=plan.duration, winner_sending=plan.winner_sending,
            status=plan.status, winner_variant=plan.winner_variant, winner_chosen_by=picker if plan.hand_picked else None,
            created_at=plan.started_at - timedelta(days=1),
        )
        for plan, campaign in zip(plans, campaigns, strict=True)
    )
    deliveries = Delivery.objects.bulk_create(
        Delivery(
            label=f"{test.label[:150]} (test)", campaign=campaign, channel=Channel.EMAIL, kind=Delivery.Kind.MARKETING,
            state=Delivery.State.FINISHED, priority=plan.priority, scheduled_at=plan.started_at,
            started_at=plan.started_at, finished_at=plan.started_at + timedelta(minutes=30), ab_test=test,
        )
        for plan, test, campaign in zip(plans, tests, campaigns, strict=True)
    )
    for plan, delivery in zip(plans, deliveries, strict=True):
        plan.delivery_id = delivery.pk


def _profile(rng: random.Random) -> _Profile:
    return _Profile(open=rng.uniform(0.20, 0.55), click=rng.uniform(0.05, 0.40), opt_out=rng.uniform(0.0, 0.04),
                    blind_click=rng.uniform(0.0, 0.04), mirror=rng.uniform(0.0, 0.02))


def _outcome(rng: random.Random) -> tuple[int, int, int]:
    """(status, failure type, failure reason) of one message of the test delivery."""
    draw = rng.random()
    if draw < 0.88:
        return LogStatus.SENT, FailureType.NONE, FailureReason.NONE
    if draw < 0.92:
        return LogStatus.FAILED, FailureType.HARD, FailureReason.USER_UNKNOWN
    if draw < 0.96:
        return LogStatus.FAILED, FailureType.SOFT, FailureReason.MAILBOX_FULL
    if draw < 0.98:
        return LogStatus.IGNORED, FailureType.IGNORED, FailureReason.ON_DENYLIST
    return LogStatus.PENDING, FailureType.NONE, FailureReason.NONE


def _reactions(rng: random.Random, profile: _Profile) -> list[int]:
    """The tracking types of one delivered message (about one row per message on average)."""
    types: list[int] = []
    if rng.random() < profile.open:
        types += [UrlType.OPEN] * rng.randint(1, 4)
        if rng.random() < profile.click:
            types += [UrlType.CLICK] * rng.choice((1, 1, 2))
        if rng.random() < profile.opt_out:
            types.append(UrlType.OPT_OUT)
    elif rng.random() < profile.blind_click:
        types.append(UrlType.CLICK)
    if rng.random() < profile.mirror:
        types.append(UrlType.MIRROR_PAGE)
    return types


def _messages(plan: _Plan, seed: int, first_log_id: int) -> Iterator[tuple[tuple[Any, ...], list[int]]]:
    """(log row, tracking types) of one test delivery's messages, the variants interleaved. With
    ``identical_variants`` every variant draws from the same sequence: equal figures, a tie."""
    base = seed * 1_000_003 + plan.index * 101
    per_variant = {
        variant: random.Random(base + (0 if plan.identical_variants else position + 1))
        for position, variant in enumerate(plan.variants)
    }
    profiles = {variant: _profile(rng) for variant, rng in per_variant.items()}
    seed_list = random.Random(base + 99)
    rounds = (plan.size - plan.size // SEED_LIST_SHARE) // plan.variant_count
    log_id = first_log_id
    created = plan.started_at
    for round_index in range(rounds):
        variants = list(plan.variants)
        if round_index % (SEED_LIST_SHARE // plan.variant_count) == 0:
            variants.append("")
        for variant in variants:
            rng = per_variant[variant] if variant else seed_list
            status, failure_type, failure_reason = _outcome(rng)
            types = _reactions(rng, profiles[variant] if variant else profiles["A"]) if status == LogStatus.SENT else []
            if status == LogStatus.FAILED and rng.random() < 0.05:  # opened before the late bounce
                types.append(UrlType.OPEN)
            updated = created + timedelta(minutes=30 * round_index / rounds)
            yield (log_id, plan.delivery_id, f"ab{log_id}@example.com", variant, status, failure_type, failure_reason,
                   "", created, updated), types
            log_id += 1


def _load_tests(plans: list[_Plan], seed: int, *, first_log_id: int, until: datetime) -> None:
    """Logs and tracking rows of ``plans``, in sending order; tracking ids follow arrival (a heap
    holds the rows not yet due until the next sending). What would arrive after ``until`` arrived
    just before it: every reaction is kept, so that identical variants stay a tie."""
    rng = random.Random(seed * 7_000_009 + first_log_id)
    pending: list[tuple[datetime, int, int, int]] = []
    last_moment = until - timedelta(seconds=1)
    log_id = first_log_id
    ordered = sorted(plans, key=lambda plan: plan.started_at)
    for position, plan in enumerate(ordered):
        if rng.random() < 0.3:  # tracking outlives purged logs: an open whose log (this id, skipped) is gone
            heapq.heappush(pending, (plan.started_at, log_id, plan.delivery_id, UrlType.OPEN))
            log_id += 1
        logs: list[tuple[Any, ...]] = []
        for row, types in _messages(plan, seed, log_id):
            logs.append(row)
            for url_type in types:
                delay = min(timedelta(hours=rng.expovariate(1 / TRACKING_MEAN_DELAY_H)), TRACKING_MAX_DELAY)
                tracked_at = min(row[-1] + delay, last_moment)
                heapq.heappush(pending, (tracked_at, row[0], plan.delivery_id, url_type))
        log_id += len(logs)
        load(DeliveryLog, LOG_FIELDS, logs)
        following = ordered[position + 1].started_at if position + 1 < len(ordered) else None
        load(TrackingLog, TRACKING_FIELDS, pop_tracking_until(pending, following))


class ABTestingCase(BenchmarkCase):
    workflow_id = "abTesting"

    def populate(self, *, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        now = timezone.now()
        plans = _plans(rng, count=max(MIN_TESTS, rows // LOGS_PER_TEST), first_index=0, total_logs=rows, now=now)
        _create_tests(plans)
        _load_tests(plans, seed, first_log_id=1, until=now)
        reset_sequences(DeliveryLog, TrackingLog)

    def add_increment(self, *, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        now = timezone.now()
        first_index = ABTest.objects.count()
        plans = _plans(rng, count=max(2, rows // LOGS_PER_TEST), first_index=first_index, total_logs=rows, now=now,
                       just_ended=True)
        _create_tests(plans)
        first_log_id = (DeliveryLog.objects.aggregate(last=Max("id"))["last"] or 0) + 1
        _load_tests(plans, seed, first_log_id=first_log_id, until=now)
        reset_sequences(DeliveryLog, TrackingLog)

    def sql_bound(self) -> None:
        now = timezone.now()
        last_delivery = Delivery.objects.aggregate(last=Max("id"))["last"] or 0
        suffix = WINNER_LABEL_SUFFIX.format(variant="")
        label_length = Delivery._meta.get_field("label").max_length - len(WINNER_LABEL_SUFFIX.format(variant="A"))
        params = {"now": connection.ops.adapt_datetimefield_value(now), "suffix": suffix,
                  "label_length": label_length, "last_delivery": last_delivery}
        with connection.cursor() as cursor:
            cursor.execute(_candidates_sql(), params)
            cursor.execute(f"ANALYZE {CANDIDATES}")  # a few hundred rows: the planner must know it
            cursor.execute(_decisions_sql(), params)
            cursor.execute(_insert_winners_sql(), params)
            cursor.execute(_update_tests_sql(), params)
            cursor.execute(f"DROP TABLE {DECISIONS}")
            cursor.execute(f"DROP TABLE {CANDIDATES}")

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        statuses: dict[str, int] = {}
        rows = ABTest.objects.order_by("pk").values_list(
            "pk", "status", "winner_variant", "winner_chosen_by_id", "decided_at", "winner_delivery__label",
            "winner_delivery__state", "winner_delivery__channel", "winner_delivery__kind", "winner_delivery__priority",
            "winner_delivery__campaign_id", "winner_delivery__ab_test_id", "winner_delivery__scheduled_at",
        )
        for pk, status, variant, chosen_by, decided_at, *winner, scheduled_at in rows.iterator():
            statuses[status] = statuses.get(status, 0) + 1
            line = [pk, status, variant, chosen_by, decided_at is not None, *winner, scheduled_at is not None]
            digest.update((repr(line) + "\n").encode())
        return {"tests": statuses, "deliveries": Delivery.objects.count(), "sha256": digest.hexdigest()}


# -- the bound -------------------------------------------------------------------------------------

CANDIDATES = "benchmark_ab_candidate"
DECISIONS = "benchmark_ab_decision"


def _in_test(variant: str, count: str) -> str:
    """``variant`` is one of the test's variants (A, B, and C when it has three)."""
    return f"({variant} IN ('A', 'B') OR ({variant} = 'C' AND {count} = 3))"


def _candidates_sql() -> str:
    """The tests ``decide`` would settle now, with the test delivery (the first marketing delivery
    of the test that is not a winner delivery): still testing and over, or a tie resolved by hand;
    a hand pick outside the test's variants is left alone."""
    if connection.vendor == "postgresql":
        period_over = "COALESCE(d.started_at, d.scheduled_at) + t.test_duration <= %(now)s"
    else:  # durations are microseconds on SQLite; the data stays an hour away from the boundary
        period_over = ("julianday(COALESCE(d.started_at, d.scheduled_at)) + t.test_duration / 86400000000.0 "
                       "<= julianday(%(now)s)")
    tests, deliveries = ABTest._meta.db_table, Delivery._meta.db_table
    return f"""
        CREATE TEMPORARY TABLE {CANDIDATES} AS
        SELECT t.id, t.label, t.campaign_id, t.variant_count, t.criterion, t.winner_sending, t.winner_variant,
               d.id AS delivery_id, COALESCE(d.channel, 'email') AS channel, COALESCE(d.priority, 0) AS priority
        FROM {tests} t
        LEFT JOIN {deliveries} d ON d.id = (
            SELECT MIN(x.id) FROM {deliveries} x
            WHERE x.ab_test_id = t.id AND x.kind = 'marketing'
              AND NOT EXISTS (SELECT 1 FROM {tests} w WHERE w.winner_delivery_id = x.id))
        WHERE t.winner_delivery_id IS NULL
          AND ((t.status = 'testing' AND {period_over})
               OR (t.status = 'awaiting_choice' AND t.winner_variant <> ''))
          AND (t.winner_variant = '' OR {_in_test("t.winner_variant", "t.variant_count")})
    """


def _decisions_sql() -> str:
    """Each candidate's new status and winner, into a temporary table: the figures of
    ``variant_figures`` as two grouped passes (logs by variant; tracking by its log's variant), the
    best score on the test's criterion, a tie when it is shared. Rates compare in integer
    hundredths: ``(20000 n + d) / (2 d)`` is ``100 n / d`` rounded half up to two decimals, exactly,
    on both databases."""
    logs, tracking = DeliveryLog._meta.db_table, TrackingLog._meta.db_table
    open_evidence = ", ".join(str(int(url_type)) for url_type in (UrlType.CLICK, UrlType.OPEN, UrlType.OPT_OUT,
                                                                     UrlType.MIRROR_PAGE))

    def hundredths(numerator: str) -> str:
        return f"(20000 * {numerator} + s.delivered) / (2 * s.delivered)"

    return f"""
        CREATE TEMPORARY TABLE {DECISIONS} AS
        WITH delivered AS (
            SELECT c.id AS test_id, l.variant, COUNT(*) AS delivered
            FROM {CANDIDATES} c JOIN {logs} l ON l.delivery_id = c.delivery_id
            WHERE c.winner_variant = '' AND l.status = {int(LogStatus.SENT)} AND {_in_test("l.variant", "c.variant_count")}
            GROUP BY c.id, l.variant
        ), tracked AS (
            SELECT c.id AS test_id, l.variant,
                   COUNT(DISTINCT tr.delivery_log_id) AS unique_opens,
                   COUNT(DISTINCT CASE WHEN tr.url_type = {int(UrlType.CLICK)} THEN tr.delivery_log_id END) AS unique_clicks,
                   COUNT(CASE WHEN tr.url_type = {int(UrlType.OPT_OUT)} THEN 1 END) AS unsubscribes
            FROM {CANDIDATES} c JOIN {tracking} tr ON tr.delivery_id = c.delivery_id
            JOIN {logs} l ON l.id = tr.delivery_log_id AND l.delivery_id = tr.delivery_id
            WHERE c.winner_variant = '' AND tr.url_type IN ({open_evidence})
              AND {_in_test("l.variant", "c.variant_count")}
            GROUP BY c.id, l.variant
        ), scores AS (  -- only variants that delivered something: the others cannot win
            SELECT s.test_id, s.variant,
                   CASE c.criterion
                       WHEN 'open_rate' THEN {hundredths("COALESCE(k.unique_opens, 0)")}
                       WHEN 'click_through_rate' THEN {hundredths("COALESCE(k.unique_clicks, 0)")}
                       ELSE -({hundredths("COALESCE(k.unsubscribes, 0)")})  -- the lowest wins
                   END AS score
            FROM delivered s JOIN {CANDIDATES} c ON c.id = s.test_id
            LEFT JOIN tracked k ON k.test_id = s.test_id AND k.variant = s.variant
        ), leaders AS (
            SELECT s.test_id, MIN(s.variant) AS variant, COUNT(*) AS leader_count
            FROM scores s
            JOIN (SELECT test_id, MAX(score) AS score FROM scores GROUP BY test_id) best
              ON best.test_id = s.test_id AND best.score = s.score
            GROUP BY s.test_id
        ), winners AS (
            SELECT c.id AS test_id, c.label, c.campaign_id, c.channel, c.priority, c.winner_sending,
                   CASE WHEN c.winner_variant <> '' THEN c.winner_variant
                        WHEN w.leader_count = 1 THEN w.variant ELSE '' END AS winner_variant
            FROM {CANDIDATES} c LEFT JOIN leaders w ON w.test_id = c.id
        )
        SELECT test_id, label, campaign_id, channel, priority, winner_variant,
               CASE WHEN winner_variant = '' THEN 'awaiting_choice'
                    WHEN winner_sending = 'automatic' THEN 'winner_sent'
                    ELSE 'awaiting_confirmation' END AS status
        FROM winners
    """


def _insert_winners_sql() -> str:
    """The winner deliveries, with the fields ``_send_winner`` sets (the indicators at their defaults)."""
    zeros = ("to_deliver", "sent", "delivered", "bounces", "hard_bounces", "soft_bounces", "opens", "unique_opens",
             "clicks", "unique_clicks", "unsubscribes", "mirror_pages", "delivered_rate", "bounce_rate", "open_rate",
             "click_through_rate", "unsubscribe_rate", "reactivity")
    return f"""
        INSERT INTO {Delivery._meta.db_table}
            (label, campaign_id, channel, kind, state, priority, scheduled_at, ab_test_id, created_at, updated_at,
             bounces_by_reason, {", ".join(zeros)})
        SELECT SUBSTR(label, 1, %(label_length)s) || %(suffix)s || winner_variant, campaign_id, channel,
               'marketing', 'scheduled', priority, %(now)s, test_id, %(now)s, %(now)s, '{{}}', {", ".join("0" for _ in zeros)}
        FROM {DECISIONS} WHERE status = 'winner_sent'
    """


def _update_tests_sql() -> str:
    tests, deliveries = ABTest._meta.db_table, Delivery._meta.db_table
    return f"""
        UPDATE {tests} SET
            status = n.status,
            winner_variant = n.winner_variant,
            decided_at = CASE WHEN n.status = 'awaiting_choice' THEN {tests}.decided_at ELSE %(now)s END,
            winner_delivery_id = (SELECT w.id FROM {deliveries} w
                                  WHERE w.ab_test_id = {tests}.id AND w.id > %(last_delivery)s)
        FROM {DECISIONS} n
        WHERE {tests}.id = n.test_id
    """


register(ABTestingCase())
