"""A/B tests: each variant's figures, the winner they designate, and the winner delivery.

Why here: the same rules decide a test whether abTesting settles it at the end of its test period
or a person picks or confirms the winner in the admin, so they live with the domain, and the
workflow and the admin both call them.

The invariant this module keeps: **a test's winner delivery is created at most once**. Three paths
create it — :func:`decide` (the daily run, automatic mode), :func:`choose_winner` (a hand pick on a
test that is already over, automatic mode) and :func:`confirm_winner` (confirm-first mode) — and all
three go through :func:`_send_winner` on a test row locked with ``select_for_update`` inside one
transaction (a savepoint when the caller already holds one: the workflow's unit of work), after
checking the test's status and that ``winner_delivery`` (a one-to-one, so the database refuses a
second one too) is still empty. Rerunning the workflow, clicking twice, or two workers at once
therefore never send twice.

A winner chosen by hand (``winner_chosen_by`` set) is never overridden by the computation: it is
only applied when the test period ends (or at once, if it already has).

Figures come from two aggregate queries for any number of tests (logs grouped by delivery and
variant, tracking grouped by delivery and the variant of its log), never from logs loaded into
Python; the rates are then plain arithmetic on those few counts. They use the formulas of
updateDeliveryIndicators: a click implies an open.

A hand pick and a confirmation send :data:`winner_chosen` and :data:`winner_confirmed` inside their
transaction, so that whoever keeps a journal of the decisions (abTesting's) records them with it.

The winner goes to the rest of the target (:func:`winner_targets`): the profiles the test
delivery's channel may still reach (:mod:`campaign.audience`: an address quarantined or on the
denylist meanwhile is skipped) that did not get the test delivery. The sending side and the
forecast both read it from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.dispatch import Signal
from django.utils import timezone

from campaign.audience import channel_targets
from campaign.models import ABTest, Delivery, DeliveryLog, LogStatus, Profile, TrackingLog, UrlType
from campaign.rates import percent

#: Tracking types that prove a message was opened (a click, an opt-out or a mirror-page view
#: cannot happen without opening it), as in updateDeliveryIndicators' unique_opens.
OPEN_EVIDENCE_TYPES = (UrlType.CLICK, UrlType.OPEN, UrlType.OPT_OUT, UrlType.MIRROR_PAGE)

#: Rates are compared as shown: percent, two decimals (campaign.rates).
rate = percent

#: Statuses in which a winner may still be chosen by hand.
OPEN_STATUSES = (ABTest.Status.TESTING, ABTest.Status.AWAITING_CHOICE, ABTest.Status.AWAITING_CONFIRMATION)

#: The winner delivery's label: "<test label> — winner <variant>".
WINNER_LABEL_SUFFIX = " — winner {variant}"

#: Sent inside the transaction of a hand pick, after it is saved (``test``, ``variant``, ``user``).
winner_chosen = Signal()
#: Sent inside the transaction of a confirmation, after the winner delivery is created (``test``,
#: ``winner``: the delivery, ``user``).
winner_confirmed = Signal()


class Outcome(StrEnum):
    """What one decision did to a test; also the name of abTesting's counter."""

    NOT_STARTED = "not_started"  # no test delivery, or it has no start time
    NOT_ENDED = "not_ended"
    TIE = "tie"  # → awaiting_choice, owner notified
    AWAITING_CONFIRMATION = "awaiting_confirmation"  # confirm-first: owner notified
    WINNER_SENT = "winner_sent"
    ALREADY_SENT = "already_sent"  # the winner delivery exists: nothing created
    WAITING = "waiting"  # still waiting for a hand pick or a confirmation
    CHOSEN = "chosen"  # picked by hand before the end: applied when the test period ends
    INVALID_CHOICE = "invalid_choice"  # winner_variant is not one of the test's variants


@dataclass(frozen=True)
class Decision:
    test_id: int
    outcome: Outcome
    variant: str = ""
    chosen_by_hand: bool = False
    delivery_id: int | None = None
    figures: list[dict[str, Any]] = field(default_factory=list)


class WinnerRefused(Exception):
    """A hand pick or a confirmation that the test's state does not allow; the message says why."""


# -- figures ---------------------------------------------------------------------------------------

def deliveries_under_test(test_ids: Sequence[int]) -> dict[int, Delivery]:
    """The delivery that carries each test's variants: the test's first marketing delivery that
    is not a winner delivery. One query for any number of tests."""
    deliveries: dict[int, Delivery] = {}
    candidates = (Delivery.objects.filter(ab_test_id__in=test_ids, kind=Delivery.Kind.MARKETING, won_ab_test__isnull=True)
                  .order_by("ab_test_id", "pk"))
    for delivery in candidates:
        deliveries.setdefault(delivery.ab_test_id, delivery)
    return deliveries


def delivery_under_test(test: ABTest) -> Delivery | None:
    return deliveries_under_test([test.pk]).get(test.pk)


def won_test(delivery: Delivery) -> ABTest | None:
    """The A/B test whose winner delivery ``delivery`` is, or None."""
    if delivery.ab_test_id is None:
        return None
    return ABTest.objects.filter(winner_delivery_id=delivery.pk).first()


def winner_targets(test: ABTest, profiles: QuerySet[Profile] | None = None) -> QuerySet[Profile]:
    """The rest of the test's target, whom the winner delivery goes to: among ``profiles`` (all
    by default), those the test delivery's channel may reach now (not opted out, an address that is
    neither quarantined nor on the denylist, or a push target) and that got no message of the test
    delivery. Nobody while the test has no test delivery. A queryset, never evaluated here; the test
    delivery's logs are probed per profile through their profile index."""
    delivery = delivery_under_test(test)
    if delivery is None:
        return Profile.objects.none()
    profiles = profiles if profiles is not None else Profile.objects.all()
    tested = DeliveryLog.objects.filter(delivery_id=delivery.pk, profile_id=OuterRef("pk"))
    return channel_targets(profiles.exclude(Exists(tested)), channel=delivery.channel)


def period_end(test: ABTest, delivery: Delivery | None) -> datetime | None:
    """When the test period ends: the test delivery's start (or scheduled time) + the duration;
    ``None`` while the test delivery has neither."""
    if delivery is None:
        return None
    start = delivery.started_at or delivery.scheduled_at
    return None if start is None else start + test.test_duration


def variant_figures(test: ABTest, *, delivery: Delivery | None = None) -> list[dict[str, Any]]:
    """Per variant of ``test`` (in order A, B, C): delivered, unique_opens, unique_clicks,
    unsubscribes, open_rate, click_through_rate, unsubscribe_rate (percent, two decimals)."""
    delivery = delivery if delivery is not None else delivery_under_test(test)
    return figures_of([(test, delivery)])[test.pk]


def figures_of(tests: Sequence[tuple[ABTest, Delivery | None]]) -> dict[int, list[dict[str, Any]]]:
    """:func:`variant_figures` of several tests (each with its test delivery), by test id.

    Two aggregate queries over the test deliveries, whatever their number and size. Logs with
    another variant (or none) are ignored; tracking rows whose log was purged cannot be
    attributed and are too.
    """
    by_delivery = {delivery.pk: test for test, delivery in tests if delivery is not None}
    variants = sorted({variant for test, _ in tests for variant in test.variants})
    delivered: dict[tuple[int, str], int] = {}
    tracked: dict[tuple[int, str], dict[str, int]] = {}
    if by_delivery:
        delivered = {
            (delivery_id, variant): count
            for delivery_id, variant, count in DeliveryLog.objects.filter(
                delivery_id__in=by_delivery, status=LogStatus.SENT, variant__in=variants,
            ).order_by().values_list("delivery_id", "variant").annotate(count=Count("id"))
        }
        tracked = {
            (row.pop("delivery_id"), row.pop("delivery_log__variant")): row
            for row in TrackingLog.objects.filter(
                delivery_id__in=by_delivery, url_type__in=OPEN_EVIDENCE_TYPES, delivery_log__variant__in=variants,
                # True of every row (a tracking row's delivery is its log's, denormalised); it lets
                # PostgreSQL read the deliveries' logs through their delivery index and hash-join
                # them instead of probing the primary key once per tracking row (3x faster).
                delivery_log__delivery_id__in=by_delivery,
            )
            .order_by()
            .values("delivery_id", "delivery_log__variant")
            .annotate(
                unique_opens=Count("delivery_log_id", distinct=True),
                unique_clicks=Count("delivery_log_id", distinct=True, filter=Q(url_type=UrlType.CLICK)),
                unsubscribes=Count("id", filter=Q(url_type=UrlType.OPT_OUT)),
            )
        }
    delivery_of = {test.pk: delivery.pk if delivery is not None else None for test, delivery in tests}
    return {test.pk: [_variant_row(variant, delivered.get((delivery_of[test.pk], variant), 0),
                                   tracked.get((delivery_of[test.pk], variant), {}))
                      for variant in test.variants]
            for test, _ in tests}


def _variant_row(variant: str, sent: int, counts: dict[str, int]) -> dict[str, Any]:
    unique_opens = counts.get("unique_opens", 0)
    unique_clicks = counts.get("unique_clicks", 0)
    unsubscribes = counts.get("unsubscribes", 0)
    return {
        "variant": variant,
        "delivered": sent,
        "unique_opens": unique_opens,
        "unique_clicks": unique_clicks,
        "unsubscribes": unsubscribes,
        "open_rate": rate(unique_opens, sent),
        "click_through_rate": rate(unique_clicks, sent),
        "unsubscribe_rate": rate(unsubscribes, sent),
    }


def winner_of(figures: list[dict[str, Any]], *, criterion: str) -> str | None:
    """The variant that wins on ``criterion`` (an :class:`ABTest.Criterion`, named like the rate
    it compares), or ``None`` on a tie.

    A variant with nothing delivered has no rate to speak of: it cannot win, and when no variant
    delivered anything the test is a tie. Rates compare as displayed (two decimals).
    """
    eligible = [row for row in figures if row["delivered"] > 0]
    if not eligible:
        return None
    values = [row[criterion] for row in eligible]
    best = min(values) if criterion == ABTest.Criterion.UNSUBSCRIBE_RATE else max(values)
    leaders = [row["variant"] for row in eligible if row[criterion] == best]
    return leaders[0] if len(leaders) == 1 else None


# -- decisions -------------------------------------------------------------------------------------

def decide(test_id: int, *, now: datetime, delivery: Delivery | None,
           figures: list[dict[str, Any]] | None) -> Decision:
    """Settle one test if its period has ended: apply the hand-picked winner, or compute one, or
    mark a tie. Safe to call any number of times.

    ``delivery`` and ``figures`` (``None`` if not computed) were read before the lock: an
    aggregate over the whole test delivery should not hold a write transaction (on SQLite an
    immediate transaction locks the database). The decision re-reads the test under lock and
    trusts only that."""
    with transaction.atomic():
        test = ABTest.objects.select_for_update().get(pk=test_id)
        if test.winner_delivery_id is not None:
            if test.status in (ABTest.Status.TESTING, ABTest.Status.AWAITING_CHOICE):
                test.status = ABTest.Status.WINNER_SENT  # the status lied: the delivery is the truth
                test.save(update_fields=["status"])
            return Decision(test.pk, Outcome.ALREADY_SENT, test.winner_variant, delivery_id=test.winner_delivery_id)
        if test.status == ABTest.Status.TESTING:
            end = period_end(test, delivery)
            if end is None:
                return Decision(test.pk, Outcome.NOT_STARTED)
            if end > now:
                return Decision(test.pk, Outcome.NOT_ENDED)
        elif not (test.status == ABTest.Status.AWAITING_CHOICE and test.winner_variant):
            return Decision(test.pk, Outcome.WAITING, test.winner_variant)

        if test.winner_variant:
            if test.winner_variant not in test.variants:
                return Decision(test.pk, Outcome.INVALID_CHOICE, test.winner_variant)
            return _settle(test, delivery, now=now, chosen_by_hand=test.winner_chosen_by_id is not None)

        if figures is None:  # a hand pick was withdrawn between the two reads
            figures = variant_figures(test, delivery=delivery)
        winner = winner_of(figures, criterion=test.criterion)
        if winner is None:
            test.status = ABTest.Status.AWAITING_CHOICE
            test.save(update_fields=["status"])
            return Decision(test.pk, Outcome.TIE, figures=figures)
        test.winner_variant, test.winner_chosen_by = winner, None
        decision = _settle(test, delivery, now=now, chosen_by_hand=False)
        return Decision(decision.test_id, decision.outcome, winner, delivery_id=decision.delivery_id, figures=figures)


def choose_winner(test_id: int, *, variant: str, user: AbstractBaseUser, now: datetime | None = None) -> Decision:
    """Pick the winner by hand. Before the end of the test period the pick waits for it (the run
    applies it then); on a test that is over it applies at once: automatic mode sends the winner,
    confirm-first mode waits for :func:`confirm_winner`."""
    now = now or timezone.now()
    with transaction.atomic():
        test = ABTest.objects.select_for_update().get(pk=test_id)
        if test.winner_delivery_id is not None:
            raise WinnerRefused(f"the winner ({test.winner_variant}) was already sent")
        if test.status not in OPEN_STATUSES:
            raise WinnerRefused(f"the test is {test.get_status_display().lower()}")
        if variant not in test.variants:
            raise WinnerRefused(f"{variant!r} is not a variant of this test (choose {', '.join(test.variants)})")
        test.winner_variant, test.winner_chosen_by = variant, user
        test.save(update_fields=["winner_variant", "winner_chosen_by"])
        winner_chosen.send(ABTest, test=test, variant=variant, user=user)
        delivery = delivery_under_test(test)
        end = period_end(test, delivery)
        if test.status == ABTest.Status.TESTING and (end is None or end > now):
            return Decision(test.pk, Outcome.CHOSEN, variant, chosen_by_hand=True)
        return _settle(test, delivery, now=now, chosen_by_hand=True)


def confirm_winner(test_id: int, *, user: AbstractBaseUser) -> Delivery:
    """Send the winner of a test awaiting confirmation; returns the winner delivery. Idempotent:
    once sent, returns the same delivery and creates nothing."""
    with transaction.atomic():
        test = ABTest.objects.select_for_update().get(pk=test_id)
        if test.winner_delivery_id is not None:
            return Delivery.objects.get(pk=test.winner_delivery_id)
        if test.status != ABTest.Status.AWAITING_CONFIRMATION or not test.winner_variant:
            raise WinnerRefused(f"the test is {test.get_status_display().lower()}, not awaiting confirmation")
        winner = _send_winner(test, delivery_under_test(test), now=timezone.now(), decided=False)
        winner_confirmed.send(ABTest, test=test, winner=winner, user=user)
        return winner


def _settle(test: ABTest, delivery: Delivery | None, *, now: datetime, chosen_by_hand: bool) -> Decision:
    """Apply ``test.winner_variant`` on a locked test: send it (automatic) or wait (confirm-first)."""
    if test.winner_sending == ABTest.WinnerSending.AUTOMATIC:
        winner = _send_winner(test, delivery, now=now, decided=True)
        return Decision(test.pk, Outcome.WINNER_SENT, test.winner_variant, chosen_by_hand, delivery_id=winner.pk)
    test.status, test.decided_at = ABTest.Status.AWAITING_CONFIRMATION, now
    test.save(update_fields=["status", "decided_at", "winner_variant", "winner_chosen_by"])
    return Decision(test.pk, Outcome.AWAITING_CONFIRMATION, test.winner_variant, chosen_by_hand)


def _send_winner(test: ABTest, delivery: Delivery | None, *, now: datetime, decided: bool) -> Delivery:
    """Create the winner delivery of a locked test whose ``winner_delivery`` is empty, and mark the
    test sent. The caller holds the transaction: both commit together or not at all."""
    suffix = WINNER_LABEL_SUFFIX.format(variant=test.winner_variant)
    label_field = Delivery._meta.get_field("label")
    winner = Delivery.objects.create(
        label=test.label[: label_field.max_length - len(suffix)] + suffix,
        campaign_id=test.campaign_id,
        channel=delivery.channel if delivery is not None else Delivery._meta.get_field("channel").default,
        kind=Delivery.Kind.MARKETING,
        state=Delivery.State.SCHEDULED,
        priority=delivery.priority if delivery is not None else 0,
        scheduled_at=now,
        ab_test=test,
    )
    test.winner_delivery, test.status = winner, ABTest.Status.WINNER_SENT
    fields = ["winner_delivery", "status", "winner_variant", "winner_chosen_by"]
    if decided or test.decided_at is None:
        test.decided_at = now
        fields.append("decided_at")
    test.save(update_fields=fields)
    return winner
