"""abTesting — A/B testing (SPEC §5).

Picks the winner of each A/B test whose test period has ended and sends it to the remainder
population (or waits for confirmation).

The invariant this module keeps: **a test's winner delivery is created at most once**. Three paths
create it — the daily run (automatic mode), :func:`choose_winner` (a hand pick on a test that is
already over, automatic mode) and :func:`confirm_winner` (confirm-first mode) — and all three go
through :func:`_send_winner` on a test row locked with ``select_for_update`` inside one
transaction, after checking the test's status and that ``winner_delivery`` (a one-to-one, so the
database refuses a second one too) is still empty. Rerunning the workflow, clicking twice, or two
workers at once therefore never send twice.

A winner chosen by hand (``winner_chosen_by`` set) is never overridden by the computation: the run
only applies it when the test period ends (or at once, if it already has).

Figures come from two aggregate queries per page of tests (logs grouped by delivery and variant,
tracking grouped by delivery and the variant of its log), never from logs loaded into Python; the
rates are then plain arithmetic on those few counts. They use the formulas of
updateDeliveryIndicators: a click implies an open. A page's tests, deliveries and figures are read
before any lock (:func:`read_page`); each test is then decided in its own transaction.

Owner notifications (a tie, a winner to confirm) are sent after the decision has committed: a
crash in between loses one email, never sends one twice, and the test's status tells the truth.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from campaign.models import ABTest, Delivery, DeliveryLog, LogStatus, TrackingLog, UrlType
from campaign.rates import percent
from workflows.context import ActivityContext
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.models import LogLevel, WorkflowLog

logger = logging.getLogger(__name__)

WORKFLOW_ID = "abTesting"

#: Test ids read per query. Tests are few (a handful a day); the bound only keeps one query small
#: if thousands were ever left in ``testing``.
TESTS_PER_PAGE = 100

#: Tracking types that prove a message was opened (a click, an opt-out or a mirror-page view
#: cannot happen without opening it), as in updateDeliveryIndicators' unique_opens.
OPEN_EVIDENCE_TYPES = (UrlType.CLICK, UrlType.OPEN, UrlType.OPT_OUT, UrlType.MIRROR_PAGE)

#: Rates are compared as shown: percent, two decimals (campaign.rates).

#: Statuses in which a winner may still be chosen by hand.
OPEN_STATUSES = (ABTest.Status.TESTING, ABTest.Status.AWAITING_CHOICE, ABTest.Status.AWAITING_CONFIRMATION)

#: The winner delivery's label: "<test label> — winner <variant>".
WINNER_LABEL_SUFFIX = " — winner {variant}"


class Outcome(StrEnum):
    """What one decision did to a test; also the name of the run's counter."""

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


def period_end(test: ABTest, delivery: Delivery | None) -> datetime | None:
    """When the test period ends: the test delivery's start (or scheduled time) + the duration;
    ``None`` while the test delivery has neither."""
    if delivery is None:
        return None
    start = delivery.started_at or delivery.scheduled_at
    return None if start is None else start + test.test_duration


rate = percent  # the platform's rate convention (campaign.rates)


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

@dataclass(frozen=True)
class Page:
    """What the decisions on a page of tests read before taking any lock: the tests (with their
    owner and campaign, for the journal and the emails), their test deliveries, and the figures of
    those whose period has ended. A handful of queries for the whole page."""

    tests: dict[int, ABTest]
    deliveries: dict[int, Delivery]
    figures: dict[int, list[dict[str, Any]]]


def read_page(test_ids: Sequence[int], *, now: datetime) -> Page:
    tests = ABTest.objects.select_related("owner", "campaign").in_bulk(test_ids)
    deliveries = deliveries_under_test(list(tests))
    ended = [(test, deliveries.get(test.pk)) for test in tests.values()
             if _may_need_figures(test, deliveries.get(test.pk), now)]
    return Page(tests, deliveries, figures_of(ended) if ended else {})


def decide(test_id: int, *, now: datetime, page: Page | None = None) -> Decision:
    """Settle one test if its period has ended: apply the hand-picked winner, or compute one, or
    mark a tie. Safe to call any number of times. ``page``: read beforehand (:func:`read_page`)."""
    # Figures are computed before the lock (an aggregate over the whole test delivery should not
    # hold a write transaction; on SQLite an immediate transaction locks the database). The
    # decision itself re-reads the test under lock and trusts only that.
    page = page or read_page([test_id], now=now)
    delivery = page.deliveries.get(test_id)
    figures = page.figures.get(test_id)

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
        _journal(f"{_name(test)}: variant {variant} chosen as winner by {user.get_username()}.")
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
        _journal(f"{_name(test)}: winner {test.winner_variant} confirmed by {user.get_username()}; "
                 f"delivery #{winner.pk} scheduled.")
        return winner


def _may_need_figures(test: ABTest, delivery: Delivery | None, now: datetime) -> bool:
    if test.winner_delivery_id is not None or test.winner_variant or test.status != ABTest.Status.TESTING:
        return False
    end = period_end(test, delivery)
    return end is not None and end <= now


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


# -- journal and notifications ---------------------------------------------------------------------

def _name(test: ABTest) -> str:
    return f"A/B test #{test.pk} {test.label!r}"


def _journal(message: str, *, level: str = LogLevel.INFO) -> None:
    """A journal line outside a run (hand picks and confirmations from the admin)."""
    WorkflowLog.objects.create(workflow_id=WORKFLOW_ID, level=level, message=message)


def format_figures(figures: list[dict[str, Any]]) -> str:
    """The figures as plain-text lines, for emails and the journal."""
    return "\n".join(
        f"  {row['variant']}: delivered {row['delivered']}, unique opens {row['unique_opens']}, "
        f"unique clicks {row['unique_clicks']}, unsubscribes {row['unsubscribes']}; "
        f"open rate {row['open_rate']}%, click-through rate {row['click_through_rate']}%, "
        f"unsubscribe rate {row['unsubscribe_rate']}%"
        for row in figures
    )


def notify_owner(test: ABTest, *, subject: str, body: str) -> str | None:
    """Email the test's owner. Returns the address written to, or ``None`` with the reason logged
    by the caller: no owner, no address, or a mail error (never raised, the decision stands)."""
    address = test.owner.email if test.owner is not None else ""
    if not address:
        return None
    try:
        send_mail(f"[A/B test] {subject}", body, None, [address])
    except (smtplib.SMTPException, OSError) as error:
        logger.error("could not email the owner of A/B test %s: %s", test.pk, error)
        return None
    return address


def _report(ctx: ActivityContext, decision: Decision, test: ABTest) -> None:
    """Journal a decision and send the owner the notification it calls for (``test``: as read
    before the decision; only what a decision does not change is used)."""
    if decision.outcome in (Outcome.NOT_STARTED, Outcome.NOT_ENDED, Outcome.WAITING):
        return
    name = _name(test)
    how = "chosen by hand" if decision.chosen_by_hand else "computed"
    criterion = test.get_criterion_display().lower()
    figures = f"\n{format_figures(decision.figures)}" if decision.figures else ""
    if decision.outcome == Outcome.INVALID_CHOICE:
        ctx.log(f"{name}: the chosen winner {decision.variant!r} is not one of its variants "
                f"({', '.join(test.variants)}); left as it is.", level=LogLevel.WARNING)
        return
    if decision.outcome == Outcome.ALREADY_SENT:
        ctx.log(f"{name}: winner already sent (delivery #{decision.delivery_id}); nothing created.")
        return
    if decision.outcome == Outcome.WINNER_SENT:
        ctx.log(f"{name}: winner {decision.variant} ({how}, {criterion}); winner delivery "
                f"#{decision.delivery_id} scheduled.{figures}")
        return
    if decision.outcome == Outcome.TIE:
        ctx.log(f"{name}: tie on {criterion}; waiting for a manual choice.{figures}")
        notified = notify_owner(test, subject=f"{test.label}: tie, choose the winner", body=(
            f"The A/B test {test.label!r} (campaign {test.campaign.label!r}) ended in a tie on {criterion}:\n"
            f"{format_figures(decision.figures)}\n\n"
            "No winner was sent. Choose one on the test's page in the admin (Campaign > A/B tests)."
        ))
    else:  # awaiting confirmation
        ctx.log(f"{name}: winner {decision.variant} ({how}, {criterion}); waiting for confirmation.{figures}")
        notified = notify_owner(test, subject=f"{test.label}: confirm the winner {decision.variant}", body=(
            f"The A/B test {test.label!r} (campaign {test.campaign.label!r}) ended; the winner is variant "
            f"{decision.variant} ({how}, {criterion}).\n{format_figures(decision.figures)}\n\n"
            "It is not sent until you confirm it on the test's page in the admin (Campaign > A/B tests)."
        ))
    if notified:
        ctx.log(f"{name}: owner notified at {notified}.")
    else:
        ctx.log(f"{name}: owner not notified (no owner with an email address, or the mail failed).",
                level=LogLevel.WARNING)


# -- the activity ----------------------------------------------------------------------------------

def decide_winners(ctx: ActivityContext) -> None:
    """Every test in ``testing``, and every tie resolved by hand since, gets :func:`decide`."""
    candidates = ABTest.objects.filter(
        Q(status=ABTest.Status.TESTING) | Q(status=ABTest.Status.AWAITING_CHOICE, winner_variant__gt="")
    )
    last_id = 0
    while True:
        ids = list(candidates.filter(pk__gt=last_id).order_by("pk").values_list("pk", flat=True)[:TESTS_PER_PAGE])
        now = timezone.now()
        page = read_page(ids, now=now)
        for test_id in ids:
            if test_id not in page.tests:  # deleted meanwhile
                continue
            ctx.checkpoint()  # each test commits on its own: pausing between two is safe
            decision = decide(test_id, now=now, page=page)
            ctx.count(decision.outcome.value)
            _report(ctx, decision, page.tests[test_id])
        if len(ids) < TESTS_PER_PAGE:
            return
        last_id = ids[-1]


definition = register(WorkflowDefinition(
    id=WORKFLOW_ID,
    label="A/B testing",
    description="Picks the winner of each A/B test whose test period has ended and sends it to the remainder population (or waits for confirmation).",
    schedule=Schedule("0 0 * * *"),
    activities=(decide_winners,),
))
