"""updateDeliveryIndicators: every indicator against an independent computation, incrementality,
idempotence, and exactness after an interruption between batches.

The expected figures are computed here in plain Python (fractions, explicit half-up rounding)
from the log, tracking and quarantine rows of a small fixed dataset, never through the workflow's
SQL, with the platform's published formulas written out once more: the email table for email and
SMS, the push table for push deliveries.
"""

from __future__ import annotations

import importlib
import math
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from django.utils import timezone

from campaign.models import (
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
from tests.factories import CampaignFactory, DeliveryFactory, DeliveryLogFactory, QuarantineFactory
from workflows import commands
from workflows.builtin import update_delivery_indicators as indicators
from workflows.engine import RunRequest, execute
from workflows.models import RunStatus, Trigger, Workflow, WorkflowRun

WORKFLOW_ID = "updateDeliveryIndicators"
RATE_FIELDS = ("delivered_rate", "bounce_rate", "hard_bounce_rate", "soft_bounce_rate", "denylist_rate",
               "quarantine_rate", "rejected_rate", "open_rate", "unique_open_rate", "click_through_rate",
               "unsubscribe_rate", "mirror_page_rate", "reactivity")
COMPARED_FIELDS = tuple(name for name in indicators.INDICATOR_FIELDS if name != "indicators_updated_at")

#: Ids of delivery logs purged by cleanup: their tracking rows outlive them.
PURGED_LOG_IDS = (9_000_001, 9_000_002)

OPEN, CLICK, OPT_OUT, MIRROR = UrlType.OPEN, UrlType.CLICK, UrlType.OPT_OUT, UrlType.MIRROR_PAGE
CLICK_10, CLICK_11, IMPRESSION = UrlType.OTHER_CLICK_10, UrlType.OTHER_CLICK_11, UrlType.IMPRESSION
SENT, FAILED, IGNORED, PENDING, CANCELLED = (LogStatus.SENT, LogStatus.FAILED, LogStatus.IGNORED, LogStatus.PENDING,
                                             LogStatus.CANCELLED)
HARD, SOFT = FailureType.HARD, FailureType.SOFT
R = FailureReason


# -- the independent computation ------------------------------------------------------------------

def half_up_percentage(numerator: int, denominator: int, *, share: bool = True) -> Decimal:
    """100 * n / d to two decimals, half up, with exact fractions; 0 for a zero denominator. A
    share of the denominator is capped at 100; a count of repeated events is not."""
    if denominator == 0:
        return Decimal("0.00")
    hundredths = math.floor(Fraction(100 * 100 * numerator, denominator) + Fraction(1, 2))
    value = Decimal(hundredths).scaleb(-2)
    return min(value, Decimal("100.00")) if share else value


def expected_indicators(delivery: Delivery) -> dict[str, Any]:
    """The published formulas, row by row, over the delivery's logs, tracking and quarantine."""
    logs = list(DeliveryLog.objects.filter(delivery=delivery).values("status", "failure_type", "failure_reason", "address"))
    tracking = list(TrackingLog.objects.filter(delivery=delivery).values("delivery_log_id", "url_type"))
    quarantined = set(Quarantine.objects.filter(channel=delivery.channel, status=Quarantine.Status.QUARANTINED)
                      .values_list("address", flat=True))
    failed = [log for log in logs if log["status"] == FAILED]
    by_reason: dict[str, int] = {}
    for log in failed:
        by_reason[str(log["failure_reason"])] = by_reason.get(str(log["failure_reason"]), 0) + 1

    def failed_with(reason: int, failure_type: int | None = None) -> int:
        return sum(1 for log in failed
                   if log["failure_reason"] == reason and failure_type in (None, log["failure_type"]))

    def rows(*url_types: int) -> int:
        return sum(1 for row in tracking if row["url_type"] in url_types)

    def recipients(*url_types: int) -> int:
        return len({row["delivery_log_id"] for row in tracking if row["url_type"] in url_types})

    delivered = sum(1 for log in logs if log["status"] == SENT)
    bounces = len(failed)
    sent = delivered + bounces
    hard = sum(1 for log in failed if log["failure_type"] == HARD)
    soft = sum(1 for log in failed if log["failure_type"] == SOFT)
    on_denylist, rejected = failed_with(R.ON_DENYLIST, HARD), failed_with(R.REFUSED, HARD)
    quarantine = sum(1 for log in failed if log["address"] in quarantined)
    push = delivery.channel == Channel.PUSH
    if push:  # the push table: opens are open rows only
        opens, unique_opens = rows(OPEN), recipients(OPEN)
    else:  # the email table: Open = count(2) + unique(1, 2, 3, 6, 10, 11) − unique(2)
        opens = rows(OPEN) + recipients(CLICK, OPEN, OPT_OUT, MIRROR, CLICK_10, CLICK_11) - recipients(OPEN)
        unique_opens = recipients(CLICK, OPEN, OPT_OUT, MIRROR, CLICK_10, CLICK_11)
    clicks, unique_clicks = rows(CLICK, CLICK_10, CLICK_11), recipients(CLICK, CLICK_10, CLICK_11)
    unsubscribes, mirror_pages = rows(OPT_OUT), rows(MIRROR)
    return {
        "to_deliver": sum(1 for log in logs if log["status"] != IGNORED),
        "sent": sent,
        "delivered": delivered,
        "bounces": bounces,
        "hard_bounces": hard,
        "soft_bounces": soft,
        "bounces_by_reason": by_reason,
        "user_unknown": failed_with(R.USER_UNKNOWN),
        "invalid_domain": failed_with(R.INVALID_DOMAIN),
        "unreachable": failed_with(R.UNREACHABLE),
        "account_disabled": failed_with(R.ACCOUNT_DISABLED),
        "mailbox_full": failed_with(R.MAILBOX_FULL),
        "not_connected": failed_with(R.NOT_CONNECTED),
        "on_denylist": on_denylist,
        "refused": failed_with(R.REFUSED),
        "rejected": rejected,
        "quarantine": quarantine,
        "opens": opens,
        "unique_opens": unique_opens,
        "clicks": clicks,
        "unique_clicks": unique_clicks,
        "unsubscribes": unsubscribes,
        "mirror_pages": mirror_pages,
        "impressions": rows(IMPRESSION),
        "delivered_rate": half_up_percentage(delivered, sent),
        "bounce_rate": half_up_percentage(bounces, sent),
        "hard_bounce_rate": half_up_percentage(hard, sent),
        "soft_bounce_rate": half_up_percentage(soft, sent),
        "denylist_rate": half_up_percentage(on_denylist, sent),
        "quarantine_rate": half_up_percentage(quarantine, sent),
        "rejected_rate": half_up_percentage(rejected, sent),
        "open_rate": half_up_percentage(opens, delivered, share=False),
        "unique_open_rate": half_up_percentage(unique_opens, delivered),
        "click_through_rate": (half_up_percentage(clicks, delivered, share=False) if push
                               else half_up_percentage(unique_clicks, delivered)),
        "unsubscribe_rate": half_up_percentage(unsubscribes, delivered, share=False),
        "mirror_page_rate": half_up_percentage(mirror_pages, delivered, share=False),
        "reactivity": half_up_percentage(unique_clicks, unique_opens),
    }


def stored_indicators(delivery: Delivery) -> dict[str, Any]:
    delivery.refresh_from_db()
    return {name: getattr(delivery, name) for name in COMPARED_FIELDS}


def assert_indicators_exact(*deliveries: Delivery) -> None:
    for delivery in deliveries:
        assert stored_indicators(delivery) == expected_indicators(delivery), delivery.label


def snapshot() -> dict[int, tuple[Any, ...]]:
    """Every delivery's indicator fields, including when they were computed."""
    return {row[0]: row[1:] for row in Delivery.objects.order_by("pk").values_list("pk", *indicators.INDICATOR_FIELDS)}


# -- the dataset ----------------------------------------------------------------------------------

def add_logs(delivery: Delivery, *specs: tuple[Any, ...], updated_at: Any) -> list[DeliveryLog]:
    """Logs of ``(status, failure_type, failure_reason[, address])``, last touched at ``updated_at``."""
    return [
        DeliveryLogFactory(delivery=delivery, profile=None, status=spec[0], failure_type=spec[1],
                           failure_reason=spec[2], updated_at=updated_at, **({"address": spec[3]} if len(spec) > 3 else {}))
        for spec in specs
    ]


def track(log_or_id: DeliveryLog | int, url_type: int, times: int = 1, *, delivery: Delivery | None = None) -> None:
    log_id = log_or_id if isinstance(log_or_id, int) else log_or_id.pk
    delivery_id = delivery.pk if delivery is not None else log_or_id.delivery_id
    TrackingLog.objects.bulk_create(
        TrackingLog(delivery_log_id=log_id, delivery_id=delivery_id, url_type=url_type) for _ in range(times)
    )


LABELS = ("mixed", "nothing_sent", "half_up", "quiet", "push", "empty")
RECOMPUTED = LABELS[:-1]


@pytest.fixture
def dataset(db) -> dict[str, Delivery]:
    """Six deliveries, their logs last touched two days ago:

    - ``mixed`` (email): every status; a failure of each reason (a complaint: reason 8, type 2; a
      reason 8 of the ignored type; reason 20 hard and soft); addresses in each quarantine status,
      and one quarantined on another channel; repeated opens, a click without an open row, clicks
      of types 10 and 11, an opt-out, mirror pages, and tracking of purged logs. Its Open rate is
      above 100 %;
    - ``nothing_sent``: pending and ignored logs only (zero sent, zero delivered) but a tracking row;
    - ``half_up``: 32 delivered and one open, so the open rate is exactly 3.125 %;
    - ``quiet``: delivered logs without any tracking (reactivity over zero opens);
    - ``push``: impressions, opens, clicks with and without an open: the push table, whose
      click-through (interactions / delivered) is above 100 %;
    - ``empty``: no logs and no tracking: never recomputed.
    """
    two_days_ago = timezone.now() - timedelta(days=2)
    campaign = CampaignFactory()
    mixed, nothing_sent, half_up, quiet, push, empty = (
        DeliveryFactory(campaign=campaign, label=label, state=Delivery.State.FINISHED,
                        channel=Channel.PUSH if label == "push" else Channel.EMAIL)
        for label in LABELS
    )

    opened_often, clicked_only, opted_out, mirrored, busy, other_clicks, *silent = add_logs(
        mixed, *[(SENT, 0, 0)] * 10, updated_at=two_days_ago,
    )
    add_logs(
        mixed,
        (FAILED, HARD, R.USER_UNKNOWN, "quarantined@example.com"), (FAILED, HARD, R.USER_UNKNOWN),
        (FAILED, HARD, R.INVALID_DOMAIN), (FAILED, SOFT, R.UNREACHABLE, "soft-quarantined@example.com"),
        (FAILED, HARD, R.ACCOUNT_DISABLED), (FAILED, SOFT, R.MAILBOX_FULL, "erroneous@example.com"),
        (FAILED, SOFT, R.NOT_CONNECTED), (FAILED, HARD, R.ON_DENYLIST, "complained@example.com"),
        (FAILED, FailureType.IGNORED, R.ON_DENYLIST), (FAILED, HARD, R.REFUSED, "sms-quarantined@example.com"),
        (FAILED, SOFT, R.REFUSED), (FAILED, SOFT, R.NONE),
        (IGNORED, FailureType.IGNORED, R.USER_UNKNOWN, "excluded@example.com"), (IGNORED, 0, 0),
        (PENDING, 0, 0), (CANCELLED, 0, 0),
        updated_at=two_days_ago,
    )
    for address, channel, status in (
        ("quarantined@example.com", Channel.EMAIL, Quarantine.Status.QUARANTINED),
        ("soft-quarantined@example.com", Channel.EMAIL, Quarantine.Status.QUARANTINED),
        ("erroneous@example.com", Channel.EMAIL, Quarantine.Status.ERRONEOUS),
        ("complained@example.com", Channel.EMAIL, Quarantine.Status.DENYLISTED),
        ("sms-quarantined@example.com", Channel.SMS, Quarantine.Status.QUARANTINED),
        ("excluded@example.com", Channel.EMAIL, Quarantine.Status.QUARANTINED),
    ):
        QuarantineFactory(address=address, channel=channel, status=status)
    track(opened_often, OPEN, 3)
    track(opened_often, CLICK, 2)
    track(clicked_only, CLICK)
    track(opted_out, OPT_OUT)
    track(mirrored, MIRROR, 2)
    track(busy, OPEN)
    track(busy, CLICK)
    track(busy, OPT_OUT)
    track(other_clicks, CLICK_10)
    track(other_clicks, CLICK_11, 2)
    track(PURGED_LOG_IDS[0], OPEN, 2, delivery=mixed)
    track(PURGED_LOG_IDS[1], CLICK, delivery=mixed)
    assert len(silent) == 4

    pending_log, _, _ = add_logs(nothing_sent, (PENDING, 0, 0), (PENDING, 0, 0), (IGNORED, 0, 0), updated_at=two_days_ago)
    track(pending_log, MIRROR)

    half_up_logs = add_logs(half_up, *[(SENT, 0, 0)] * 32, *[(FAILED, SOFT, R.UNREACHABLE)] * 3,
                            updated_at=two_days_ago)
    track(half_up_logs[0], OPEN)
    track(half_up_logs[0], CLICK)

    add_logs(quiet, (SENT, 0, 0), (SENT, 0, 0), (FAILED, HARD, R.REFUSED), updated_at=two_days_ago)

    seen_and_opened, tapped, seen, _ = add_logs(push, *[(SENT, 0, 0)] * 4, updated_at=two_days_ago)
    add_logs(push, (FAILED, SOFT, R.UNREACHABLE), updated_at=two_days_ago)
    track(seen_and_opened, IMPRESSION)
    track(seen_and_opened, OPEN, 2)
    track(seen_and_opened, CLICK, 2)
    track(tapped, IMPRESSION)
    track(tapped, CLICK, 3)
    track(seen, IMPRESSION)
    return dict(zip(LABELS, (mixed, nothing_sent, half_up, quiet, push, empty), strict=True))


def run_workflow(**overrides: Any) -> WorkflowRun:
    return commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides=overrides or None)


# -- the formulas ---------------------------------------------------------------------------------

def test_first_run_computes_every_indicator_of_every_delivery_with_logs_or_tracking(dataset):
    run = run_workflow()

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert_indicators_exact(*(dataset[label] for label in RECOMPUTED))
    assert run.counters["deliveries"] == len(RECOMPUTED)
    empty = Delivery.objects.get(pk=dataset["empty"].pk)
    assert empty.indicators_updated_at is None and empty.sent == 0


def test_mixed_delivery_figures_match_the_published_table_by_hand(dataset):
    """The same figures written out, so a mistake shared by both computations would still show."""
    run_workflow()

    mixed = Delivery.objects.get(pk=dataset["mixed"].pk)
    assert (mixed.to_deliver, mixed.delivered, mixed.bounces, mixed.sent) == (24, 10, 12, 22)
    assert (mixed.hard_bounces, mixed.soft_bounces) == (6, 5), "the ignored-type bounce is neither"
    assert mixed.bounces_by_reason == {"0": 1, "1": 2, "2": 1, "3": 1, "4": 1, "5": 1, "6": 1, "8": 2, "20": 2}
    assert (mixed.user_unknown, mixed.invalid_domain, mixed.unreachable, mixed.account_disabled, mixed.mailbox_full,
            mixed.not_connected) == (2, 1, 1, 1, 1, 1), "the excluded (ignored) log's reason does not count"
    assert (mixed.on_denylist, mixed.refused, mixed.rejected) == (1, 2, 1), "denylist and rejected need type 2"
    assert mixed.quarantine == 2, "quarantined on email: not erroneous, denylisted, or quarantined for SMS only"
    # Open rows 6 (3 + 1 + 2 of a purged log), 8 recipients with an open, a click, an opt-out or a
    # mirror page (the purged logs' included), 3 of them with an open row: 6 + 8 − 3.
    assert (mixed.opens, mixed.unique_opens) == (11, 8)
    assert (mixed.clicks, mixed.unique_clicks) == (8, 5), "types 1, 10 and 11 are clicks"
    assert (mixed.unsubscribes, mixed.mirror_pages, mixed.impressions) == (2, 2, 0)
    assert (mixed.delivered_rate, mixed.bounce_rate) == (Decimal("45.45"), Decimal("54.55"))
    assert (mixed.hard_bounce_rate, mixed.soft_bounce_rate) == (Decimal("27.27"), Decimal("22.73"))
    assert (mixed.denylist_rate, mixed.quarantine_rate, mixed.rejected_rate) \
        == (Decimal("4.55"), Decimal("9.09"), Decimal("4.55"))
    assert mixed.open_rate == Decimal("110.00"), "Open / Delivered counts repeated opens: above 100 %"
    assert (mixed.unique_open_rate, mixed.click_through_rate) == (Decimal("80.00"), Decimal("50.00"))
    assert (mixed.unsubscribe_rate, mixed.mirror_page_rate, mixed.reactivity) \
        == (Decimal("20.00"), Decimal("20.00"), Decimal("62.50"))


def test_push_delivery_figures_follow_the_push_table_by_hand(dataset):
    run_workflow()

    push = Delivery.objects.get(pk=dataset["push"].pk)
    assert (push.sent, push.delivered, push.bounces, push.unreachable) == (5, 4, 1, 1)
    assert (push.impressions, push.opens, push.unique_opens) == (3, 2, 1), "a tap or an impression is no open"
    assert (push.clicks, push.unique_clicks) == (5, 2)
    assert push.click_through_rate == Decimal("125.00"), "interactions / delivered"
    assert (push.open_rate, push.unique_open_rate, push.delivered_rate) \
        == (Decimal("50.00"), Decimal("25.00"), Decimal("80.00"))


def test_rates_round_half_up_and_zero_denominators_give_zero(dataset):
    run_workflow()

    half_up = Delivery.objects.get(pk=dataset["half_up"].pk)
    assert half_up.open_rate == Decimal("3.13"), "3.125 rounds half up, not to even"
    assert half_up.unique_open_rate == Decimal("3.13")
    assert (half_up.delivered_rate, half_up.bounce_rate, half_up.reactivity) \
        == (Decimal("91.43"), Decimal("8.57"), Decimal("100.00"))
    nothing_sent = Delivery.objects.get(pk=dataset["nothing_sent"].pk)
    assert (nothing_sent.sent, nothing_sent.delivered, nothing_sent.unique_opens) == (0, 0, 1)
    assert all(getattr(nothing_sent, name) == 0 for name in RATE_FIELDS)
    quiet = Delivery.objects.get(pk=dataset["quiet"].pk)
    assert (quiet.unique_opens, quiet.reactivity) == (0, Decimal("0.00"))
    assert (quiet.refused, quiet.rejected, quiet.rejected_rate) == (1, 1, Decimal("33.33"))


def test_the_url_types_and_failure_reasons_of_the_formulas_are_known_codes():
    assert {10, 11, 7} <= set(UrlType.values)
    assert {1, 2, 3, 4, 5, 6, 8, 20} <= set(FailureReason.values)
    assert Delivery._meta.get_field("opens").help_text.startswith("count(url type 2) + unique(")


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [(1, 32, "3.13"), (1, 3, "33.33"), (2, 3, "66.67"), (201, 20_000, "1.01"), (0, 0, "0.00"), (5, 0, "0.00"),
     (7, 6, "100.00"), (6, 6, "100.00")],
)
def test_percentage_is_exact_half_up_with_two_decimals(numerator, denominator, expected):
    assert indicators.percentage(numerator, denominator) == Decimal(expected)
    assert str(indicators.percentage(numerator, denominator)) == expected


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [(7, 6, "116.67"), (11, 10, "110.00"), (1, 32, "3.13"), (5, 0, "0.00"), (10**9, 1, "999999.99")],
)
def test_event_percentage_may_exceed_100_but_not_its_column(numerator, denominator, expected):
    assert str(indicators.event_percentage(numerator, denominator)) == expected


# -- incrementality -------------------------------------------------------------------------------

def test_second_run_recomputes_only_the_deliveries_whose_logs_or_tracking_changed(dataset):
    run_workflow()
    before = snapshot()
    mixed, half_up, quiet = dataset["mixed"], dataset["half_up"], dataset["quiet"]

    pending = DeliveryLog.objects.get(delivery=mixed, status=PENDING)
    DeliveryLog.objects.filter(pk=pending.pk).update(status=SENT, updated_at=timezone.now())  # as updateDeliveryExecInfo does
    track(DeliveryLog.objects.filter(delivery=half_up, status=SENT).order_by("pk")[1], CLICK)

    second = run_workflow()

    assert second.status == RunStatus.SUCCEEDED, second.reason
    after = snapshot()
    assert {pk for pk in after if after[pk] != before[pk]} == {mixed.pk, half_up.pk}
    assert_indicators_exact(mixed, half_up)
    assert Delivery.objects.get(pk=mixed.pk).delivered == 11
    assert Delivery.objects.get(pk=half_up.pk).unique_clicks == 2
    assert after[quiet.pk] == before[quiet.pk], "an untouched delivery keeps its indicators_updated_at"
    assert (second.counters["changed_logs"], second.counters["new_tracking"], second.counters["deliveries"]) == (1, 1, 2)


def test_a_run_without_changes_recomputes_nothing(dataset):
    run_workflow()
    before = snapshot()

    second = run_workflow()

    assert second.counters.get("deliveries", 0) == 0
    assert snapshot() == before


def test_a_delivery_changed_many_times_is_recomputed_once_per_pass(dataset):
    run_workflow()
    mixed = dataset["mixed"]
    DeliveryLog.objects.filter(delivery=mixed, status=PENDING).update(status=SENT, updated_at=timezone.now())
    DeliveryLog.objects.filter(delivery=mixed, status=CANCELLED).update(updated_at=timezone.now())
    busy = DeliveryLog.objects.filter(delivery=mixed, status=SENT).order_by("pk")[0]
    track(busy, OPEN, 3)

    run = run_workflow(changed_rows_per_batch=1)

    assert (run.counters["changed_logs"], run.counters["new_tracking"]) == (2, 3)
    assert run.counters["deliveries"] == 1
    assert_indicators_exact(mixed)


def test_a_log_stamped_before_the_last_pass_but_committed_after_it_is_still_seen(dataset):
    """The commit-order race: the next watermark stays a safety margin behind the pass's start."""
    run_workflow()
    quiet = dataset["quiet"]
    pass_opened = timezone.now() - timedelta(seconds=5)  # stamped just before the first run looked
    DeliveryLog.objects.filter(delivery=quiet, status=FAILED).update(status=SENT, failure_type=0, failure_reason=0,
                                                                     updated_at=pass_opened)

    run_workflow()

    assert Delivery.objects.get(pk=quiet.pk).delivered == 3
    assert_indicators_exact(quiet)


def test_new_tracking_on_a_purged_log_updates_tracking_counts_and_keeps_log_counts(dataset):
    run_workflow()
    mixed = dataset["mixed"]
    DeliveryLog.objects.filter(delivery=mixed).delete()  # cleanup purged every log of the delivery
    track(PURGED_LOG_IDS[0], MIRROR, delivery=mixed)

    run_workflow()

    stored = Delivery.objects.get(pk=mixed.pk)
    assert (stored.to_deliver, stored.delivered, stored.bounces, stored.sent, stored.hard_bounces) == (24, 10, 12, 22, 6)
    assert stored.bounces_by_reason == {"0": 1, "1": 2, "2": 1, "3": 1, "4": 1, "5": 1, "6": 1, "8": 2, "20": 2}
    assert (stored.user_unknown, stored.on_denylist, stored.rejected, stored.quarantine) == (2, 1, 1, 2)
    assert (stored.mirror_pages, stored.unique_opens, stored.opens) == (3, 8, 11)
    assert (stored.open_rate, stored.reactivity, stored.mirror_page_rate) \
        == (Decimal("110.00"), Decimal("62.50"), Decimal("30.00"))


def test_watermarks_move_to_the_pass_start_minus_the_margin_and_the_last_tracking_id(dataset):
    run = run_workflow()

    cursors = Workflow.objects.get(pk=WORKFLOW_ID).cursors
    assert cursors["pass"] is None
    assert cursors["tracking_id"] == TrackingLog.objects.order_by("-pk").values_list("pk", flat=True)[0]
    watermark = timezone.datetime.fromisoformat(cursors["logs_updated_at"])
    assert run.started_at - indicators.LOG_TIMESTAMP_SAFETY_MARGIN - timedelta(seconds=5) < watermark
    assert watermark <= run.started_at + timedelta(seconds=5) - indicators.LOG_TIMESTAMP_SAFETY_MARGIN


def test_a_full_pass_sizes_its_batches_by_the_rows_its_deliveries_read(dataset):
    """mixed reads 26 logs + 18 tracking rows; the next four read 4, 37, 3 and 14."""
    step = indicators._every_delivery_step(100)

    first = step({"after": 0, "take": 1}, 1)
    second = step(first.cursor, 1)

    assert (first.rows, first.cursor) == (1, {"after": dataset["mixed"].pk, "take": 2}), "100 / 44 rows a delivery"
    assert (second.rows, second.cursor) == (2, {"after": dataset["half_up"].pk, "take": 5}), "2 * 100 / 41 rows"
    third = step(second.cursor, 1)
    assert (third.rows, third.cursor["after"]) == (2, dataset["push"].pk)
    assert step(third.cursor, 1).rows == 0, "empty is never recomputed: the pass is over"


# -- reruns and interruptions ---------------------------------------------------------------------

def test_a_forced_full_recompute_gives_the_same_figures(dataset):
    run_workflow()
    first = {pk: values[:-1] for pk, values in snapshot().items()}

    again = run_workflow(recompute_all=True)

    assert again.counters["deliveries"] == len(RECOMPUTED)
    assert {pk: values[:-1] for pk, values in snapshot().items()} == first
    assert_indicators_exact(*(delivery for label, delivery in dataset.items() if label != "empty"))


def fail_on_call(monkeypatch: pytest.MonkeyPatch, failing_call: int) -> None:
    """Make the ``failing_call``-th recomputation raise, as a worker dying mid-batch would."""
    real = indicators.recompute_indicators
    calls = 0

    def recompute(*, delivery_ids: list[int], now: Any) -> indicators.Recomputed:
        nonlocal calls
        calls += 1
        if calls == failing_call:
            raise RuntimeError("worker lost")
        return real(delivery_ids=delivery_ids, now=now)

    monkeypatch.setattr(indicators, "recompute_indicators", recompute)


def test_a_full_pass_interrupted_between_batches_is_continued_and_ends_exact(dataset, monkeypatch):
    fail_on_call(monkeypatch, 3)
    failed = run_workflow(source_rows_per_batch=1)  # one delivery per batch
    assert failed.status == RunStatus.FAILED and "worker lost" in failed.reason
    done_before = {pk: values for pk, values in snapshot().items() if values[-1] is not None}
    assert len(done_before) == 2, "the two committed batches stay; the failed one rolled back"
    monkeypatch.undo()

    rerun = run_workflow(source_rows_per_batch=1)

    assert rerun.status == RunStatus.SUCCEEDED
    assert rerun.counters["deliveries"] == len(RECOMPUTED) - 2, "continued where the failed run stopped"
    after = snapshot()
    assert all(after[pk] == values for pk, values in done_before.items())
    assert_indicators_exact(*(delivery for label, delivery in dataset.items() if label != "empty"))
    assert Workflow.objects.get(pk=WORKFLOW_ID).cursors["pass"] is None


def test_an_incremental_pass_interrupted_between_batches_ends_like_an_uninterrupted_one(dataset, monkeypatch):
    run_workflow()
    mixed, half_up, quiet = dataset["mixed"], dataset["half_up"], dataset["quiet"]
    now = timezone.now()
    DeliveryLog.objects.filter(delivery=mixed, status=PENDING).update(status=SENT, updated_at=now - timedelta(seconds=1))
    DeliveryLog.objects.filter(delivery=quiet, status=FAILED).update(status=SENT, failure_type=0, failure_reason=0,
                                                                     updated_at=now)
    track(DeliveryLog.objects.filter(delivery=half_up, status=SENT).order_by("pk")[5], OPEN, 2)
    track(DeliveryLog.objects.filter(delivery=mixed, status=SENT).order_by("pk")[0], CLICK)

    fail_on_call(monkeypatch, 2)
    failed = run_workflow(changed_rows_per_batch=1)
    assert failed.status == RunStatus.FAILED
    assert Workflow.objects.get(pk=WORKFLOW_ID).cursors["pass"] is not None, "the pass stays open"
    monkeypatch.undo()

    rerun = run_workflow(changed_rows_per_batch=1)

    assert rerun.status == RunStatus.SUCCEEDED
    assert_indicators_exact(mixed, half_up, quiet)
    assert (Delivery.objects.get(pk=quiet.pk).delivered, Delivery.objects.get(pk=half_up.pk).opens) == (3, 3)
    following = run_workflow().counters
    assert following.get("new_tracking", 0) == 0, "the closed pass moved the tracking watermark"
    assert following["changed_logs"] == 2, "logs stamped within the safety margin are seen once more, harmlessly"
    assert_indicators_exact(mixed, half_up, quiet)


def test_a_run_paused_between_batches_continues_on_resume_and_ends_exact(dataset, monkeypatch):
    real = indicators.recompute_indicators

    def recompute_then_pause(*, delivery_ids: list[int], now: Any) -> indicators.Recomputed:
        written = real(delivery_ids=delivery_ids, now=now)
        if not Workflow.objects.filter(pk=WORKFLOW_ID, state="paused").exists():
            commands.pause(WORKFLOW_ID, actor="test")  # an operator pauses while the batch runs
        return written

    monkeypatch.setattr(indicators, "recompute_indicators", recompute_then_pause)
    paused = run_workflow(source_rows_per_batch=1)
    assert paused.status == RunStatus.PAUSED
    assert sum(1 for values in snapshot().values() if values[-1] is not None) == 1, "the batch in hand finished"
    monkeypatch.undo()

    commands.resume(WORKFLOW_ID, actor="test")  # would enqueue the paused run; here it runs in process
    continued = execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SHELL, run_id=paused.pk))

    assert continued.status == RunStatus.SUCCEEDED
    assert_indicators_exact(*(delivery for label, delivery in dataset.items() if label != "empty"))


# -- declaration ----------------------------------------------------------------------------------

def test_definition_keeps_its_id_schedule_and_declares_its_batch_properties():
    definition = indicators.definition

    assert (definition.id, definition.schedule.crontab, definition.expire_s) == (WORKFLOW_ID, "0 * * * *", 3600)
    assert definition.resolve_properties({}) == {
        "source_rows_per_batch": indicators.DEFAULT_SOURCE_ROWS_PER_BATCH,
        "changed_rows_per_batch": indicators.DEFAULT_CHANGED_ROWS_PER_BATCH,
        "recompute_all": False,
    }
    assert definition.task_name == "workflows.updateDeliveryIndicators"


def test_the_upgrade_migration_makes_the_next_run_recompute_every_delivery(dataset):
    """The migration that added the full table forgets the cursors: existing deliveries get the new
    fields at the next run, a full pass, without anyone setting recompute_all."""
    from django.apps import apps

    upgrade = importlib.import_module("workflows.migrations.0009_recompute_platform_indicators")
    run_workflow()
    Delivery.objects.update(opens=0, open_rate=0, quarantine=0, indicators_updated_at=None)  # as before the upgrade

    upgrade.forget_cursors(apps, None)
    rerun = run_workflow()

    assert rerun.counters["deliveries"] == len(RECOMPUTED)
    assert_indicators_exact(*(dataset[label] for label in RECOMPUTED))
    assert Workflow.objects.get(pk="reportingAggregates").cursors == {}
