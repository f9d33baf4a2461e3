"""updateDeliveryIndicators: every indicator against an independent computation, incrementality,
idempotence, and exactness after an interruption between batches.

The expected figures are computed here in plain Python (fractions, explicit half-up rounding)
from the log and tracking rows of a small fixed dataset, never through the workflow's SQL.
"""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from django.utils import timezone

from campaign.models import Delivery, DeliveryLog, FailureReason, FailureType, LogStatus, TrackingLog, UrlType
from tests.factories import CampaignFactory, DeliveryFactory, DeliveryLogFactory
from workflows import commands
from workflows.builtin import update_delivery_indicators as indicators
from workflows.engine import RunRequest, execute
from workflows.models import RunStatus, Trigger, Workflow, WorkflowRun

WORKFLOW_ID = "updateDeliveryIndicators"
RATE_FIELDS = ("delivered_rate", "bounce_rate", "open_rate", "click_through_rate", "unsubscribe_rate", "reactivity")
COMPARED_FIELDS = tuple(name for name in indicators.INDICATOR_FIELDS if name != "indicators_updated_at")

#: Ids of delivery logs purged by cleanup: their tracking rows outlive them.
PURGED_LOG_IDS = (9_000_001, 9_000_002)

OPEN, CLICK, OPT_OUT, MIRROR = UrlType.OPEN, UrlType.CLICK, UrlType.OPT_OUT, UrlType.MIRROR_PAGE
SENT, FAILED, IGNORED, PENDING, CANCELLED = (LogStatus.SENT, LogStatus.FAILED, LogStatus.IGNORED, LogStatus.PENDING,
                                             LogStatus.CANCELLED)
HARD, SOFT = FailureType.HARD, FailureType.SOFT


# -- the independent computation ------------------------------------------------------------------

def half_up_percentage(numerator: int, denominator: int) -> Decimal:
    """100 * n / d to two decimals, half up, with exact fractions; 0 for a zero denominator."""
    if denominator == 0:
        return Decimal("0.00")
    hundredths = math.floor(Fraction(100 * 100 * numerator, denominator) + Fraction(1, 2))
    return min(Decimal(hundredths).scaleb(-2), Decimal("100.00"))


def expected_indicators(delivery: Delivery) -> dict[str, Any]:
    """The indicator formulas, row by row, over the delivery's logs and tracking."""
    logs = list(DeliveryLog.objects.filter(delivery=delivery).values("id", "status", "failure_type", "failure_reason"))
    tracking = list(TrackingLog.objects.filter(delivery=delivery).values("delivery_log_id", "url_type"))
    failed = [log for log in logs if log["status"] == FAILED]
    by_reason: dict[str, int] = {}
    for log in failed:
        by_reason[str(log["failure_reason"])] = by_reason.get(str(log["failure_reason"]), 0) + 1

    delivered = sum(1 for log in logs if log["status"] == SENT)
    bounces = len(failed)
    sent = delivered + bounces
    unique_opens = len({row["delivery_log_id"] for row in tracking if row["url_type"] in (CLICK, OPEN, OPT_OUT, MIRROR)})
    unique_clicks = len({row["delivery_log_id"] for row in tracking if row["url_type"] == CLICK})
    unsubscribes = sum(1 for row in tracking if row["url_type"] == OPT_OUT)
    return {
        "to_deliver": sum(1 for log in logs if log["status"] != IGNORED),
        "sent": sent,
        "delivered": delivered,
        "bounces": bounces,
        "hard_bounces": sum(1 for log in failed if log["failure_type"] == HARD),
        "soft_bounces": sum(1 for log in failed if log["failure_type"] == SOFT),
        "bounces_by_reason": by_reason,
        "opens": sum(1 for row in tracking if row["url_type"] == OPEN),
        "unique_opens": unique_opens,
        "clicks": sum(1 for row in tracking if row["url_type"] == CLICK),
        "unique_clicks": unique_clicks,
        "unsubscribes": unsubscribes,
        "mirror_pages": sum(1 for row in tracking if row["url_type"] == MIRROR),
        "delivered_rate": half_up_percentage(delivered, sent),
        "bounce_rate": half_up_percentage(bounces, sent),
        "open_rate": half_up_percentage(unique_opens, delivered),
        "click_through_rate": half_up_percentage(unique_clicks, delivered),
        "unsubscribe_rate": half_up_percentage(unsubscribes, delivered),
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

def add_logs(delivery: Delivery, *specs: tuple[int, int, int], updated_at: Any) -> list[DeliveryLog]:
    """Logs of ``(status, failure_type, failure_reason)``, last touched at ``updated_at``."""
    return [
        DeliveryLogFactory(delivery=delivery, profile=None, status=status, failure_type=failure_type,
                           failure_reason=failure_reason, updated_at=updated_at)
        for status, failure_type, failure_reason in specs
    ]


def track(log_or_id: DeliveryLog | int, url_type: int, times: int = 1, *, delivery: Delivery | None = None) -> None:
    log_id = log_or_id if isinstance(log_or_id, int) else log_or_id.pk
    delivery_id = delivery.pk if delivery is not None else log_or_id.delivery_id
    TrackingLog.objects.bulk_create(
        TrackingLog(delivery_log_id=log_id, delivery_id=delivery_id, url_type=url_type) for _ in range(times)
    )


@pytest.fixture
def dataset(db) -> dict[str, Delivery]:
    """Five deliveries, their logs last touched two days ago:

    - ``mixed``: every status, bounces of each type and several reasons, repeated opens, a click
      without an open row, an opt-out, mirror pages, and tracking of purged logs;
    - ``nothing_sent``: pending and ignored logs only (zero sent, zero delivered) but a tracking row;
    - ``half_up``: 32 delivered and one open, so the open rate is exactly 3.125 %;
    - ``quiet``: delivered logs without any tracking (reactivity over zero opens);
    - ``empty``: no logs and no tracking: never recomputed.
    """
    two_days_ago = timezone.now() - timedelta(days=2)
    campaign = CampaignFactory()
    mixed, nothing_sent, half_up, quiet, empty = (
        DeliveryFactory(campaign=campaign, label=label, state=Delivery.State.FINISHED)
        for label in ("mixed", "nothing_sent", "half_up", "quiet", "empty")
    )

    opened_often, clicked_only, opted_out, mirrored, busy, *silent = add_logs(
        mixed, *[(SENT, 0, 0)] * 10, updated_at=two_days_ago,
    )
    add_logs(
        mixed,
        (FAILED, HARD, FailureReason.USER_UNKNOWN), (FAILED, HARD, FailureReason.USER_UNKNOWN),
        (FAILED, HARD, FailureReason.INVALID_DOMAIN), (FAILED, SOFT, FailureReason.MAILBOX_FULL),
        (FAILED, SOFT, FailureReason.NONE), (FAILED, FailureType.IGNORED, FailureReason.ON_DENYLIST),
        (IGNORED, 0, 0), (IGNORED, 0, 0), (PENDING, 0, 0), (CANCELLED, 0, 0),
        updated_at=two_days_ago,
    )
    track(opened_often, OPEN, 3)
    track(opened_often, CLICK, 2)
    track(clicked_only, CLICK)
    track(opted_out, OPT_OUT)
    track(mirrored, MIRROR, 2)
    track(busy, OPEN)
    track(busy, CLICK)
    track(busy, OPT_OUT)
    track(PURGED_LOG_IDS[0], OPEN, 2, delivery=mixed)
    track(PURGED_LOG_IDS[1], CLICK, delivery=mixed)
    assert len(silent) == 5

    pending_log, _, _ = add_logs(nothing_sent, (PENDING, 0, 0), (PENDING, 0, 0), (IGNORED, 0, 0), updated_at=two_days_ago)
    track(pending_log, MIRROR)

    half_up_logs = add_logs(half_up, *[(SENT, 0, 0)] * 32, *[(FAILED, SOFT, FailureReason.UNREACHABLE)] * 3,
                            updated_at=two_days_ago)
    track(half_up_logs[0], OPEN)
    track(half_up_logs[0], CLICK)

    add_logs(quiet, (SENT, 0, 0), (SENT, 0, 0), (FAILED, HARD, FailureReason.REFUSED), updated_at=two_days_ago)
    return {"mixed": mixed, "nothing_sent": nothing_sent, "half_up": half_up, "quiet": quiet, "empty": empty}


def run_workflow(**overrides: Any) -> WorkflowRun:
    return commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides=overrides or None)


# -- the formulas ---------------------------------------------------------------------------------

def test_first_run_computes_every_indicator_of_every_delivery_with_logs_or_tracking(dataset):
    run = run_workflow()

    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert_indicators_exact(dataset["mixed"], dataset["nothing_sent"], dataset["half_up"], dataset["quiet"])
    assert run.counters["deliveries"] == 4
    empty = Delivery.objects.get(pk=dataset["empty"].pk)
    assert empty.indicators_updated_at is None and empty.sent == 0


def test_mixed_delivery_figures_match_the_spec_by_hand(dataset):
    """The same figures written out, so a mistake shared by both computations would still show."""
    run_workflow()

    mixed = Delivery.objects.get(pk=dataset["mixed"].pk)
    assert (mixed.to_deliver, mixed.delivered, mixed.bounces, mixed.sent) == (18, 10, 6, 16)
    assert (mixed.hard_bounces, mixed.soft_bounces) == (3, 2), "the ignored-type bounce is neither"
    assert mixed.bounces_by_reason == {"1": 2, "2": 1, "5": 1, "0": 1, "8": 1}
    assert (mixed.opens, mixed.clicks, mixed.unsubscribes, mixed.mirror_pages) == (6, 5, 2, 2)
    # Opened: opened_often, clicked_only (a click implies an open), opted_out, mirrored, busy, both purged logs.
    assert (mixed.unique_opens, mixed.unique_clicks) == (7, 4)
    assert (mixed.delivered_rate, mixed.bounce_rate) == (Decimal("62.50"), Decimal("37.50"))
    assert (mixed.open_rate, mixed.click_through_rate, mixed.unsubscribe_rate) \
        == (Decimal("70.00"), Decimal("40.00"), Decimal("20.00"))
    assert mixed.reactivity == Decimal("57.14")


def test_rates_round_half_up_and_zero_denominators_give_zero(dataset):
    run_workflow()

    half_up = Delivery.objects.get(pk=dataset["half_up"].pk)
    assert half_up.open_rate == Decimal("3.13"), "3.125 rounds half up, not to even"
    assert (half_up.delivered_rate, half_up.bounce_rate, half_up.reactivity) \
        == (Decimal("91.43"), Decimal("8.57"), Decimal("100.00"))
    nothing_sent = Delivery.objects.get(pk=dataset["nothing_sent"].pk)
    assert (nothing_sent.sent, nothing_sent.delivered, nothing_sent.unique_opens) == (0, 0, 1)
    assert all(getattr(nothing_sent, name) == 0 for name in RATE_FIELDS)
    quiet = Delivery.objects.get(pk=dataset["quiet"].pk)
    assert (quiet.unique_opens, quiet.reactivity) == (0, Decimal("0.00"))


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [(1, 32, "3.13"), (1, 3, "33.33"), (2, 3, "66.67"), (201, 20_000, "1.01"), (0, 0, "0.00"), (5, 0, "0.00"),
     (7, 6, "100.00"), (6, 6, "100.00")],
)
def test_percentage_is_exact_half_up_with_two_decimals(numerator, denominator, expected):
    assert indicators.percentage(numerator, denominator) == Decimal(expected)
    assert str(indicators.percentage(numerator, denominator)) == expected


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
    assert (stored.to_deliver, stored.delivered, stored.bounces, stored.sent, stored.hard_bounces) == (18, 10, 6, 16, 3)
    assert stored.bounces_by_reason == {"1": 2, "2": 1, "5": 1, "0": 1, "8": 1}
    assert (stored.mirror_pages, stored.unique_opens) == (3, 7)
    assert (stored.open_rate, stored.reactivity) == (Decimal("70.00"), Decimal("57.14"))


def test_watermarks_move_to_the_pass_start_minus_the_margin_and_the_last_tracking_id(dataset):
    run = run_workflow()

    cursors = Workflow.objects.get(pk=WORKFLOW_ID).cursors
    assert cursors["pass"] is None
    assert cursors["tracking_id"] == TrackingLog.objects.order_by("-pk").values_list("pk", flat=True)[0]
    watermark = timezone.datetime.fromisoformat(cursors["logs_updated_at"])
    assert run.started_at - indicators.LOG_TIMESTAMP_SAFETY_MARGIN - timedelta(seconds=5) < watermark
    assert watermark <= run.started_at + timedelta(seconds=5) - indicators.LOG_TIMESTAMP_SAFETY_MARGIN


def test_a_full_pass_sizes_its_batches_by_the_rows_its_deliveries_read(dataset):
    """mixed reads 20 logs + 15 tracking rows; the next three read 4, 37 and 3."""
    step = indicators._every_delivery_step(100)

    first = step({"after": 0, "take": 1}, 1)
    second = step(first.cursor, 1)

    assert (first.rows, first.cursor) == (1, {"after": dataset["mixed"].pk, "take": 3}), "100 / 35 rows a delivery"
    assert (second.rows, second.cursor) == (3, {"after": dataset["quiet"].pk, "take": 7}), "3 * 100 / 44 rows"
    assert step(second.cursor, 1).rows == 0, "empty is never recomputed: the pass is over"


# -- reruns and interruptions ---------------------------------------------------------------------

def test_a_forced_full_recompute_gives_the_same_figures(dataset):
    run_workflow()
    first = {pk: values[:-1] for pk, values in snapshot().items()}

    again = run_workflow(recompute_all=True)

    assert again.counters["deliveries"] == 4
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
    assert rerun.counters["deliveries"] == 2, "continued where the failed run stopped"
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
