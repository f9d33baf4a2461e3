"""abTesting: figures per variant from aggregate queries, a winner per criterion, ties left to a
person, automatic vs confirm-first sending, hand-picked winners respected, and a winner delivery
that is never created twice — plus the admin page that shows the figures and picks the winner."""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterable
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core import mail
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from campaign import ab_tests
from campaign.ab_tests import Outcome, WinnerRefused, choose_winner, confirm_winner, variant_figures
from campaign.models import ABTest, Channel, Delivery, DeliveryLog, LogStatus, TrackingLog, UrlType
from tests.factories import ABTestFactory, DeliveryFactory, SuperUserFactory, UserFactory
from workflows import commands
from workflows.builtin import ab_testing
from workflows.engine import RunRequest, execute
from workflows.models import LogLevel, RunStatus, Trigger, Workflow, WorkflowLog, WorkflowRun, WorkflowState

OPEN, CLICK, OPT_OUT, MIRROR = UrlType.OPEN, UrlType.CLICK, UrlType.OPT_OUT, UrlType.MIRROR_PAGE
SENT, FAILED, PENDING, IGNORED = LogStatus.SENT, LogStatus.FAILED, LogStatus.PENDING, LogStatus.IGNORED

FIGURE_KEYS = ("variant", "delivered", "unique_opens", "unique_clicks", "unsubscribes",
               "open_rate", "click_through_rate", "unsubscribe_rate")


# -- data ------------------------------------------------------------------------------------------

def make_test(*, owner: Any = None, criterion: str = ABTest.Criterion.OPEN_RATE,
              sending: str = ABTest.WinnerSending.AUTOMATIC, variant_count: int = 2,
              started_hours_ago: float | None = 5, duration_hours: int = 4) -> tuple[ABTest, Delivery]:
    """A test and its test delivery; by default the 4-hour test period ended an hour ago."""
    test = ABTestFactory(owner=owner, criterion=criterion, winner_sending=sending, variant_count=variant_count,
                         test_duration=timedelta(hours=duration_hours), label="Subject line")
    started = None if started_hours_ago is None else timezone.now() - timedelta(hours=started_hours_ago)
    delivery = DeliveryFactory(campaign=test.campaign, ab_test=test, channel=Channel.SMS, priority=7,
                               state=Delivery.State.IN_PROGRESS, started_at=started)
    return test, delivery


def add_logs(delivery: Delivery, variant: str, specs: Iterable[tuple[int, tuple[int, ...]]]) -> None:
    """One log per ``(status, tracking types)``, with one tracking row per type listed."""
    specs = list(specs)
    logs = DeliveryLog.objects.bulk_create(
        DeliveryLog(delivery=delivery, address=f"{variant or 'none'}{index}@example.com", variant=variant, status=status)
        for index, (status, _) in enumerate(specs)
    )
    TrackingLog.objects.bulk_create(
        TrackingLog(delivery_log_id=log.pk, delivery=delivery, url_type=url_type)
        for log, (_, types) in zip(logs, specs, strict=True)
        for url_type in types
    )


def population(delivered: int, *, opened: int = 0, clicked: int = 0, unsubscribed: int = 0,
               failed: int = 2) -> list[tuple[int, tuple[int, ...]]]:
    """``delivered`` logs of which ``opened`` show an open (the first ``clicked`` by a click row
    only: a click implies an open; the others by two open rows), the first ``unsubscribed`` also
    an opt-out row; plus ``failed`` bounced logs that count nowhere."""
    assert clicked <= opened <= delivered and unsubscribed <= opened
    specs: list[tuple[int, tuple[int, ...]]] = []
    for index in range(delivered):
        types: tuple[int, ...] = (CLICK,) if index < clicked else (OPEN, OPEN) if index < opened else ()
        if index < unsubscribed:
            types += (OPT_OUT,)
        specs.append((SENT, types))
    return specs + [(FAILED, ())] * failed


def expected_figures(specs_by_variant: dict[str, list[tuple[int, tuple[int, ...]]]]) -> list[dict[str, Any]]:
    """The figures, computed in plain Python from the specs (not from the database)."""
    def percent(numerator: int, denominator: int) -> Decimal:
        if denominator == 0:
            return Decimal("0.00")
        return (Decimal(numerator) * 100 / denominator).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)

    rows = []
    for variant, specs in specs_by_variant.items():
        delivered = sum(1 for status, _ in specs if status == SENT)
        opens = sum(1 for _, types in specs if set(types) & {OPEN, CLICK, OPT_OUT, MIRROR})
        clicks = sum(1 for _, types in specs if CLICK in types)
        unsubscribes = sum(types.count(OPT_OUT) for _, types in specs)
        rows.append({"variant": variant, "delivered": delivered, "unique_opens": opens, "unique_clicks": clicks,
                     "unsubscribes": unsubscribes, "open_rate": percent(opens, delivered),
                     "click_through_rate": percent(clicks, delivered),
                     "unsubscribe_rate": percent(unsubscribes, delivered)})
    return rows


def run_workflow() -> WorkflowRun:
    run = commands.run_now("abTesting", actor="test", sync=True)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    return run


def winner_deliveries(test: ABTest) -> list[Delivery]:
    return list(Delivery.objects.filter(ab_test=test, won_ab_test__isnull=False))


def journal() -> list[str]:
    return list(WorkflowLog.objects.filter(workflow_id="abTesting").order_by("id").values_list("message", flat=True))


@pytest.fixture
def owner(db: Any) -> Any:
    return UserFactory(email="owner@example.com")


# -- figures ---------------------------------------------------------------------------------------

def test_variant_figures_match_an_independent_count_of_logs_and_tracking(db: Any) -> None:
    test, delivery = make_test(variant_count=3)
    specs = {
        "A": [(SENT, (OPEN, OPEN, OPEN)), (SENT, (CLICK,)), (SENT, (OPEN, CLICK, CLICK)), (SENT, (MIRROR,)),
              (SENT, ()), (FAILED, ()), (PENDING, ()), (IGNORED, ())],
        "B": [(SENT, (OPT_OUT,)), (SENT, (OPEN, OPT_OUT, OPT_OUT)), (SENT, ()), (FAILED, (OPEN,)), (FAILED, ())],
        "C": [(FAILED, ()), (PENDING, ())],  # nothing delivered: every rate is 0
    }
    for variant, variant_specs in specs.items():
        add_logs(delivery, variant, variant_specs)
    add_logs(delivery, "", [(SENT, (OPEN, CLICK))] * 3)  # no variant: not part of the test
    _, other_delivery = make_test()
    add_logs(other_delivery, "A", [(SENT, (OPEN, CLICK, OPT_OUT))] * 4)

    figures = variant_figures(test)

    assert figures == expected_figures(specs)
    assert [row["variant"] for row in figures] == ["A", "B", "C"]
    assert figures[1]["unique_opens"] == 3, "an opt-out proves an open, and a failed log's open counts too"


def test_variant_figures_cost_the_same_few_queries_whatever_the_number_of_logs(db: Any) -> None:
    small, small_delivery = make_test()
    add_logs(small_delivery, "A", population(2, opened=1, clicked=1))
    large, large_delivery = make_test()
    add_logs(large_delivery, "A", population(300, opened=200, clicked=50, unsubscribed=10))
    add_logs(large_delivery, "B", population(300, opened=100, clicked=80, unsubscribed=5))

    with CaptureQueriesContext(connection) as small_queries:
        variant_figures(small)
    with CaptureQueriesContext(connection) as large_queries:
        figures = variant_figures(large)

    assert len(small_queries) == len(large_queries) == 3  # the test delivery, then one aggregate per side
    assert all("GROUP BY" in query["sql"].upper() for query in large_queries.captured_queries[1:])
    assert [row["unique_opens"] for row in figures] == [200, 100]


def test_figures_of_a_page_of_tests_are_each_tests_own_in_two_queries(db: Any) -> None:
    two, two_delivery = make_test()
    add_logs(two_delivery, "A", population(20, opened=9, clicked=4, unsubscribed=1))
    add_logs(two_delivery, "B", population(20, opened=12, clicked=2))
    three, three_delivery = make_test(variant_count=3)
    add_logs(three_delivery, "A", population(10, opened=3))
    add_logs(three_delivery, "C", population(10, opened=6, clicked=6))
    unsent, _ = make_test()
    own = {test.pk: variant_figures(test) for test in (two, three, unsent)}

    pairs = [(two, two_delivery), (three, three_delivery), (unsent, ab_tests.delivery_under_test(unsent))]
    with CaptureQueriesContext(connection) as queries:
        together = ab_tests.figures_of(pairs)

    assert together == own
    assert len(queries) == 2
    assert [row["variant"] for row in together[three.pk]] == ["A", "B", "C"]


# -- a winner per criterion -------------------------------------------------------------------------

def test_best_open_rate_wins_and_is_sent_automatically(owner: Any) -> None:
    test, delivery = make_test(owner=owner)
    add_logs(delivery, "A", population(10, opened=3))
    add_logs(delivery, "B", population(10, opened=5, clicked=2))  # clicks without an open row count as opens
    before = timezone.now()

    run = run_workflow()

    test.refresh_from_db()
    [winner] = winner_deliveries(test)
    assert (test.status, test.winner_variant, test.winner_chosen_by, test.winner_delivery) \
        == (ABTest.Status.WINNER_SENT, "B", None, winner)
    assert test.decided_at is not None and test.decided_at >= before
    assert (winner.label, winner.campaign_id, winner.channel, winner.kind, winner.state, winner.priority) \
        == ("Subject line — winner B", test.campaign_id, Channel.SMS, Delivery.Kind.MARKETING,
            Delivery.State.SCHEDULED, 7)
    assert before <= winner.scheduled_at <= timezone.now()
    assert run.counters == {"winner_sent": 1}
    assert mail.outbox == [], "an automatic winner needs nobody"
    assert any("winner B" in line and f"#{winner.pk}" in line for line in journal())


@pytest.mark.parametrize(("criterion", "expected"), [
    (ABTest.Criterion.OPEN_RATE, "A"),           # 60% against 40%
    (ABTest.Criterion.CLICK_THROUGH_RATE, "B"),  # 30% against 10%
    (ABTest.Criterion.UNSUBSCRIBE_RATE, "A"),    # lowest: 10% against 20%
])
def test_each_criterion_picks_its_own_winner(owner: Any, criterion: str, expected: str) -> None:
    test, delivery = make_test(owner=owner, criterion=criterion)
    add_logs(delivery, "A", population(10, opened=6, clicked=1, unsubscribed=1))
    add_logs(delivery, "B", population(10, opened=4, clicked=3, unsubscribed=2))

    run_workflow()

    test.refresh_from_db()
    assert (test.status, test.winner_variant) == (ABTest.Status.WINNER_SENT, expected)
    assert [d.label for d in winner_deliveries(test)] == [f"Subject line — winner {expected}"]


def test_a_variant_with_nothing_delivered_cannot_win_the_lowest_unsubscribe_rate(owner: Any) -> None:
    test, delivery = make_test(owner=owner, criterion=ABTest.Criterion.UNSUBSCRIBE_RATE)
    add_logs(delivery, "A", population(0, failed=5))  # 0% unsubscribes, but of nobody
    add_logs(delivery, "B", population(10, opened=4, unsubscribed=2))

    run_workflow()

    test.refresh_from_db()
    assert (test.status, test.winner_variant) == (ABTest.Status.WINNER_SENT, "B")


def test_three_variants_pick_the_single_best(owner: Any) -> None:
    test, delivery = make_test(owner=owner, variant_count=3, criterion=ABTest.Criterion.CLICK_THROUGH_RATE)
    add_logs(delivery, "A", population(10, opened=5, clicked=2))
    add_logs(delivery, "B", population(10, opened=5, clicked=3))
    add_logs(delivery, "C", population(20, opened=9, clicked=7))

    run_workflow()

    test.refresh_from_db()
    assert test.winner_variant == "C"


# -- ties ------------------------------------------------------------------------------------------

def test_a_tie_on_the_rounded_rate_waits_for_a_manual_choice_and_emails_the_owner(owner: Any) -> None:
    test, delivery = make_test(owner=owner)
    add_logs(delivery, "A", population(91, opened=41))   # 45.0549…% → 45.05
    add_logs(delivery, "B", population(111, opened=50))  # 45.0450…% → 45.05

    run = run_workflow()

    test.refresh_from_db()
    assert (test.status, test.winner_variant, test.winner_delivery_id, test.decided_at) \
        == (ABTest.Status.AWAITING_CHOICE, "", None, None)
    assert winner_deliveries(test) == []
    assert run.counters == {"tie": 1}
    [message] = mail.outbox
    assert message.to == ["owner@example.com"]
    assert "tie" in message.subject and "Subject line" in message.subject
    assert "open rate 45.05%" in message.body and "delivered 91" in message.body and "delivered 111" in message.body
    assert any("tie on best open rate" in line for line in journal())
    assert any("owner notified at owner@example.com" in line for line in journal())


def test_no_variant_delivered_is_a_tie_even_on_the_lowest_unsubscribe_rate(owner: Any) -> None:
    test, delivery = make_test(owner=owner, criterion=ABTest.Criterion.UNSUBSCRIBE_RATE)
    add_logs(delivery, "A", population(0, failed=3))
    add_logs(delivery, "B", population(0, failed=1))

    run_workflow()

    test.refresh_from_db()
    assert test.status == ABTest.Status.AWAITING_CHOICE
    assert len(mail.outbox) == 1


def test_a_tie_without_an_owner_email_is_journaled_as_a_warning(db: Any) -> None:
    test, delivery = make_test(owner=None)
    add_logs(delivery, "A", population(10, opened=5))
    add_logs(delivery, "B", population(10, opened=5))

    run_workflow()

    test.refresh_from_db()
    assert test.status == ABTest.Status.AWAITING_CHOICE
    assert mail.outbox == []
    assert WorkflowLog.objects.filter(workflow_id="abTesting", level=LogLevel.WARNING,
                                      message__contains="owner not notified").count() == 1


def test_a_tie_resolved_by_hand_in_the_form_is_sent_by_the_next_run(owner: Any) -> None:
    test, delivery = make_test(owner=owner)
    add_logs(delivery, "A", population(10, opened=5))
    add_logs(delivery, "B", population(10, opened=5))
    run_workflow()
    ABTest.objects.filter(pk=test.pk).update(winner_variant="A", winner_chosen_by=owner)  # what the change form does

    run = run_workflow()

    test.refresh_from_db()
    assert (test.status, test.winner_variant, test.winner_chosen_by) == (ABTest.Status.WINNER_SENT, "A", owner)
    assert len(winner_deliveries(test)) == 1
    assert run.counters == {"winner_sent": 1}


# -- confirm-first ---------------------------------------------------------------------------------

def test_confirm_first_notifies_and_waits_then_confirm_winner_sends_once(owner: Any) -> None:
    test, delivery = make_test(owner=owner, sending=ABTest.WinnerSending.CONFIRM)
    add_logs(delivery, "A", population(10, opened=7))
    add_logs(delivery, "B", population(10, opened=5))

    run_workflow()

    test.refresh_from_db()
    assert (test.status, test.winner_variant, test.winner_delivery_id) == (ABTest.Status.AWAITING_CONFIRMATION, "A", None)
    assert test.decided_at is not None
    assert winner_deliveries(test) == []
    [message] = mail.outbox
    assert message.to == ["owner@example.com"] and "confirm the winner A" in message.subject

    second = run_workflow()
    assert second.counters == {} and len(mail.outbox) == 1, "a test awaiting confirmation is not decided again"

    winner = confirm_winner(test.pk, user=owner)
    again = confirm_winner(test.pk, user=owner)
    run_workflow()

    test.refresh_from_db()
    assert again.pk == winner.pk
    assert winner_deliveries(test) == [winner]
    assert (test.status, test.winner_delivery_id) == (ABTest.Status.WINNER_SENT, winner.pk)
    assert (winner.label, winner.state) == ("Subject line — winner A", Delivery.State.SCHEDULED)
    assert any(f"confirmed by {owner.username}" in line for line in journal())


def test_confirm_winner_refuses_a_test_that_is_not_awaiting_confirmation(owner: Any) -> None:
    test, _ = make_test(owner=owner, sending=ABTest.WinnerSending.CONFIRM)

    with pytest.raises(WinnerRefused, match="not awaiting confirmation"):
        confirm_winner(test.pk, user=owner)

    assert winner_deliveries(test) == []


# -- hand-picked winners ---------------------------------------------------------------------------

def test_a_winner_picked_before_the_end_waits_for_it_then_beats_the_computation(owner: Any) -> None:
    test, delivery = make_test(owner=owner, started_hours_ago=1)  # ends in 3 hours
    add_logs(delivery, "A", population(10, opened=1))
    add_logs(delivery, "B", population(10, opened=9))

    decision = choose_winner(test.pk, variant="A", user=owner)
    early = run_workflow()

    test.refresh_from_db()
    assert decision.outcome == Outcome.CHOSEN
    assert (test.status, test.winner_variant, test.winner_chosen_by) == (ABTest.Status.TESTING, "A", owner)
    assert winner_deliveries(test) == [] and early.counters == {"not_ended": 1}

    with time_machine.travel(timezone.now() + timedelta(hours=3, minutes=1)):
        late = run_workflow()

    test.refresh_from_db()
    assert (test.status, test.winner_variant, test.winner_chosen_by) == (ABTest.Status.WINNER_SENT, "A", owner)
    assert [d.label for d in winner_deliveries(test)] == ["Subject line — winner A"]
    assert late.counters == {"winner_sent": 1}
    assert any("winner A (chosen by hand" in line for line in journal())


def test_a_winner_picked_on_a_test_that_is_over_is_sent_at_once(owner: Any) -> None:
    test, delivery = make_test(owner=owner)
    add_logs(delivery, "A", population(10, opened=1))
    add_logs(delivery, "B", population(10, opened=9))

    decision = choose_winner(test.pk, variant="A", user=owner)

    test.refresh_from_db()
    assert decision.outcome == Outcome.WINNER_SENT
    assert (test.status, test.winner_variant, test.winner_delivery_id) \
        == (ABTest.Status.WINNER_SENT, "A", decision.delivery_id)
    assert run_workflow().counters == {}


def test_a_winner_picked_in_confirm_first_mode_still_waits_for_confirmation(owner: Any) -> None:
    test, delivery = make_test(owner=owner, sending=ABTest.WinnerSending.CONFIRM, started_hours_ago=1)
    add_logs(delivery, "A", population(10, opened=1))
    add_logs(delivery, "B", population(10, opened=9))
    choose_winner(test.pk, variant="A", user=owner)

    with time_machine.travel(timezone.now() + timedelta(hours=4)):
        run_workflow()

    test.refresh_from_db()
    assert (test.status, test.winner_variant, test.winner_delivery_id) == (ABTest.Status.AWAITING_CONFIRMATION, "A", None)
    assert "confirm the winner A" in mail.outbox[0].subject


def test_choose_winner_refuses_an_unknown_variant_and_a_sent_test(owner: Any) -> None:
    test, delivery = make_test(owner=owner)
    add_logs(delivery, "A", population(10, opened=5))

    with pytest.raises(WinnerRefused, match="not a variant"):
        choose_winner(test.pk, variant="C", user=owner)
    choose_winner(test.pk, variant="B", user=owner)
    with pytest.raises(WinnerRefused, match="already sent"):
        choose_winner(test.pk, variant="A", user=owner)

    test.refresh_from_db()
    assert test.winner_variant == "B"
    assert len(winner_deliveries(test)) == 1


# -- reruns, tests not over, interruptions -----------------------------------------------------------

def test_a_rerun_creates_nothing_twice_even_if_the_status_was_set_back_by_hand(owner: Any) -> None:
    test, delivery = make_test(owner=owner)
    add_logs(delivery, "A", population(10, opened=7))
    add_logs(delivery, "B", population(10, opened=5))
    run_workflow()
    [winner] = winner_deliveries(test)

    assert run_workflow().counters == {}
    ABTest.objects.filter(pk=test.pk).update(status=ABTest.Status.TESTING)  # an edit in the change form
    rerun = run_workflow()

    test.refresh_from_db()
    assert rerun.counters == {"already_sent": 1}
    assert winner_deliveries(test) == [winner]
    assert Delivery.objects.filter(ab_test=test).count() == 2  # the test delivery and one winner
    assert (test.status, test.winner_delivery_id) == (ABTest.Status.WINNER_SENT, winner.pk)


def test_a_test_not_yet_ended_is_left_untouched(owner: Any) -> None:
    running, delivery = make_test(owner=owner, started_hours_ago=3.9)
    add_logs(delivery, "A", population(10, opened=7))
    add_logs(delivery, "B", population(10, opened=5))
    unsent, _ = make_test(owner=owner, started_hours_ago=None)  # the test delivery has not started
    before = {test.pk: ABTest.objects.filter(pk=test.pk).values().get() for test in (running, unsent)}

    run = run_workflow()

    assert {test.pk: ABTest.objects.filter(pk=test.pk).values().get() for test in (running, unsent)} == before
    assert run.counters == {"not_ended": 1, "not_started": 1}
    assert winner_deliveries(running) == [] and mail.outbox == []


def test_a_test_still_running_is_counted_without_a_locked_decision(owner: Any, monkeypatch: Any) -> None:
    """A run's cost follows the tests that ended: one still in its period takes no lock and no unit."""
    running, _ = make_test(owner=owner, started_hours_ago=1)
    ended, delivery = make_test(owner=owner, started_hours_ago=5)
    add_logs(delivery, "A", population(10, opened=7))
    add_logs(delivery, "B", population(10, opened=5))
    decided: list[int] = []
    real_decide = ab_tests.decide

    def recording_decide(test_id: int, **kwargs: Any) -> Any:
        decided.append(test_id)
        return real_decide(test_id, **kwargs)

    monkeypatch.setattr(ab_tests, "decide", recording_decide)
    run = run_workflow()

    assert decided == [ended.pk]
    assert run.counters == {"not_ended": 1, "winner_sent": 1}
    assert ABTest.objects.get(pk=running.pk).status == ABTest.Status.TESTING


def test_the_test_period_starts_at_the_scheduled_time_when_the_delivery_has_no_start(owner: Any) -> None:
    test, delivery = make_test(owner=owner, started_hours_ago=None)
    Delivery.objects.filter(pk=delivery.pk).update(scheduled_at=timezone.now() - timedelta(hours=4, minutes=1))
    add_logs(delivery, "A", population(10, opened=7))
    add_logs(delivery, "B", population(10, opened=5))

    run_workflow()

    test.refresh_from_db()
    assert (test.status, test.winner_variant) == (ABTest.Status.WINNER_SENT, "A")


def test_a_run_that_fails_half_way_is_completed_by_the_next_without_doubles(owner: Any, monkeypatch: Any) -> None:
    tests = []
    for _ in range(3):
        test, delivery = make_test(owner=owner)
        add_logs(delivery, "A", population(10, opened=7))
        add_logs(delivery, "B", population(10, opened=5))
        tests.append(test)
    real_decide, calls = ab_testing.decide, []

    def failing_decide(test_id: int, **kwargs: Any) -> ab_tests.Decision:
        calls.append(test_id)
        if len(calls) == 2:
            raise RuntimeError("worker lost")
        return real_decide(test_id, **kwargs)

    monkeypatch.setattr(ab_testing, "decide", failing_decide)
    failed = commands.run_now("abTesting", actor="test", sync=True)
    monkeypatch.setattr(ab_testing, "decide", real_decide)
    rerun = run_workflow()

    assert failed.status == RunStatus.FAILED
    assert rerun.counters == {"winner_sent": 2}
    for test in tests:
        test.refresh_from_db()
        assert (test.status, test.winner_variant) == (ABTest.Status.WINNER_SENT, "A")
        assert len(winner_deliveries(test)) == 1


def test_a_pause_between_two_tests_halts_after_the_first_and_the_resumed_run_decides_the_second(
        owner: Any, monkeypatch: Any) -> None:
    first, first_delivery = make_test(owner=owner)
    add_logs(first_delivery, "A", population(10, opened=5))
    add_logs(first_delivery, "B", population(10, opened=5))  # a tie: the owner is emailed
    second, second_delivery = make_test(owner=owner)
    add_logs(second_delivery, "A", population(10, opened=7))
    add_logs(second_delivery, "B", population(10, opened=5))
    real_decide = ab_testing.decide

    def pause_after_the_first(test_id: int, **kwargs: Any) -> ab_tests.Decision:
        decision = real_decide(test_id, **kwargs)
        commands.pause("abTesting", actor="operator")
        return decision

    monkeypatch.setattr(ab_testing, "decide", pause_after_the_first)
    paused = commands.run_now("abTesting", actor="test", sync=True)
    monkeypatch.setattr(ab_testing, "decide", real_decide)

    assert (paused.status, paused.halted_activity) == (RunStatus.PAUSED, "decide_winners")
    first.refresh_from_db()
    assert first.status == ABTest.Status.AWAITING_CHOICE
    assert len(mail.outbox) == 1, "the first test's decision committed: its owner is told before the run halts"
    assert winner_deliveries(second) == []

    Workflow.objects.filter(pk="abTesting").update(state=WorkflowState.STARTED)  # what resume does, without the broker
    continued = execute(RunRequest(workflow_id="abTesting", trigger=Trigger.SHELL, run_id=paused.pk))

    assert (continued.pk, continued.status) == (paused.pk, RunStatus.SUCCEEDED)
    second.refresh_from_db()
    assert (second.status, second.winner_variant) == (ABTest.Status.WINNER_SENT, "A")
    assert len(winner_deliveries(second)) == 1 and winner_deliveries(first) == []
    assert len(mail.outbox) == 1
    assert continued.counters == {"tie": 1, "winner_sent": 1}


def test_a_hand_pick_and_a_confirmation_are_journaled_with_who_made_them(owner: Any) -> None:
    test, delivery = make_test(owner=owner, sending=ABTest.WinnerSending.CONFIRM)
    add_logs(delivery, "A", population(10, opened=5))

    choose_winner(test.pk, variant="B", user=owner)
    winner = confirm_winner(test.pk, user=owner)

    assert journal() == [
        f"A/B test #{test.pk} 'Subject line': variant B chosen as winner by {owner.username}.",
        f"A/B test #{test.pk} 'Subject line': winner B confirmed by {owner.username}; delivery #{winner.pk} scheduled.",
    ]


def test_the_domain_services_import_nothing_of_the_workflows_app() -> None:
    tree = ast.parse(Path(ab_tests.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}

    assert "campaign.models" in imported
    assert {name for name in imported if name and name.split(".")[0] == "workflows"} == set()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_simultaneous_confirmations_create_one_winner_delivery(is_postgres: bool) -> None:
    if not is_postgres:
        pytest.skip("row locks are what is tested; SQLite serialises writers anyway")
    owner = UserFactory(email="owner@example.com")
    test, delivery = make_test(owner=owner, sending=ABTest.WinnerSending.CONFIRM)
    add_logs(delivery, "A", population(10, opened=7))
    add_logs(delivery, "B", population(10, opened=5))
    run_workflow()
    barrier, results = threading.Barrier(4), []

    def confirm() -> None:
        try:
            barrier.wait()
            results.append(confirm_winner(test.pk, user=owner).pk)
        finally:
            connection.close()  # this thread's own connection: left open, it blocks dropping the test database

    threads = [threading.Thread(target=confirm) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 4 and len(set(results)) == 1
    assert len(winner_deliveries(test)) == 1


# -- admin -----------------------------------------------------------------------------------------

def change_url(test: ABTest) -> str:
    return reverse("admin:campaign_abtest_change", args=[test.pk])


def pick_url(test: ABTest, variant: str) -> str:
    return reverse("admin:campaign_abtest_pick_winner", args=[test.pk, variant])


def admin_client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_admin_page_shows_each_variants_figures(db: Any) -> None:
    test, delivery = make_test()
    add_logs(delivery, "A", population(8, opened=4, clicked=2, unsubscribed=1))
    add_logs(delivery, "B", population(3, opened=1))

    response = admin_client(SuperUserFactory()).get(change_url(test))

    assert response.status_code == 200
    assert response.context["variant_figures"][0] == {
        **expected_figures({"A": population(8, opened=4, clicked=2, unsubscribed=1)})[0],
        "is_winner": False, "pick_url": pick_url(test, "A"),
    }
    html = response.content.decode()
    row_a = html[html.index('id="variant-A"'):html.index('id="variant-B"')]
    for value in (">8<", ">4<", ">2<", ">1<", ">50.00<", ">25.00<", ">12.50<"):
        assert value in row_a
    assert ">33.33<" in html[html.index('id="variant-B"'):]
    assert 'id="pick-winner-A"' in html and 'id="pick-winner-B"' in html
    assert 'id="confirm-winner"' not in html


def test_admin_pick_winner_button_sets_the_winner_and_who_chose_it(db: Any) -> None:
    test, delivery = make_test(started_hours_ago=1)
    add_logs(delivery, "A", population(10, opened=5))
    admin = SuperUserFactory()

    response = admin_client(admin).post(pick_url(test, "B"), follow=True)

    test.refresh_from_db()
    assert (test.winner_variant, test.winner_chosen_by, test.status) == ("B", admin, ABTest.Status.TESTING)
    assert response.redirect_chain[-1][0] == change_url(test)
    assert any("takes effect when the test period ends (sent then)" in str(m) for m in get_messages(response.wsgi_request))
    assert 'class="winner"' in response.content.decode()


def test_admin_confirm_button_sends_a_winner_awaiting_confirmation(owner: Any) -> None:
    test, delivery = make_test(owner=owner, sending=ABTest.WinnerSending.CONFIRM)
    add_logs(delivery, "A", population(10, opened=7))
    add_logs(delivery, "B", population(10, opened=5))
    run_workflow()
    client = admin_client(SuperUserFactory())
    assert 'id="confirm-winner"' in client.get(change_url(test)).content.decode()

    client.post(reverse("admin:campaign_abtest_confirm_winner", args=[test.pk]))
    client.post(reverse("admin:campaign_abtest_confirm_winner", args=[test.pk]))

    test.refresh_from_db()
    assert test.status == ABTest.Status.WINNER_SENT
    assert len(winner_deliveries(test)) == 1


def test_admin_confirm_action_confirms_selected_tests(owner: Any) -> None:
    test, delivery = make_test(owner=owner, sending=ABTest.WinnerSending.CONFIRM)
    add_logs(delivery, "A", population(10, opened=7))
    add_logs(delivery, "B", population(10, opened=5))
    run_workflow()
    waiting, _ = make_test(owner=owner, started_hours_ago=1)

    response = admin_client(SuperUserFactory()).post(
        reverse("admin:campaign_abtest_changelist"),
        {"action": "confirm_winners", "_selected_action": [test.pk, waiting.pk], "index": 0}, follow=True,
    )

    test.refresh_from_db()
    assert test.status == ABTest.Status.WINNER_SENT and len(winner_deliveries(test)) == 1
    assert winner_deliveries(waiting) == []
    assert any("not awaiting confirmation" in str(m) for m in get_messages(response.wsgi_request))


def test_admin_view_only_user_sees_figures_but_cannot_pick(db: Any, django_user_model: Any) -> None:
    test, delivery = make_test(started_hours_ago=1)
    add_logs(delivery, "A", population(10, opened=5))
    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(content_type__app_label="campaign", codename="view_abtest"))
    client = admin_client(viewer)

    page = client.get(change_url(test))
    refused = client.post(pick_url(test, "A"))
    not_post = admin_client(SuperUserFactory()).get(pick_url(test, "A"))

    assert page.status_code == 200 and 'id="variant-A"' in page.content.decode()
    assert 'id="pick-winner-A"' not in page.content.decode()
    assert refused.status_code == 403 and not_post.status_code == 405
    test.refresh_from_db()
    assert test.winner_variant == "" and test.winner_chosen_by is None


def test_admin_pick_of_an_unknown_variant_is_refused_with_a_message(db: Any) -> None:
    test, _ = make_test(started_hours_ago=1)

    response = admin_client(SuperUserFactory()).post(pick_url(test, "C"), follow=True)

    test.refresh_from_db()
    assert test.winner_variant == ""
    assert any("not a variant" in str(m) for m in get_messages(response.wsgi_request))
