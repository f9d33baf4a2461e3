"""abTesting — A/B testing.

Picks the winner of each A/B test whose test period has ended and sends it to the remainder
population (or waits for confirmation).

The rules of a decision, and the invariant that **a test's winner delivery is created at most
once**, are the domain's (:mod:`campaign.ab_tests`): the run, the admin's hand picks and its
confirmations all go through the same services, on a test row locked inside their transaction.
The run decides each test in its own unit of work (``ctx.each``): the locked decision (a savepoint
inside the unit), its counter and the run's progress commit together, fenced by the run's lease,
so pausing between two tests is safe and a run that lost its lease commits no decision.

A page's tests, deliveries and figures are read before any lock and outside any unit
(:func:`read_page`: a handful of aggregate queries for the whole page).

A decision's journal line is written in its unit, so it commits with the decision or not at all
(and costs no commit of its own). Owner notifications (a tie, a winner to confirm) follow once the
unit has committed: a crash in between loses one email, never sends one twice, and the test's
status tells the truth. Hand picks and confirmations made in the admin are journaled too, in their own
transaction (:data:`campaign.ab_tests.winner_chosen`, :data:`campaign.ab_tests.winner_confirmed`).
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.mail import send_mail
from django.db.models import Q
from django.dispatch import receiver
from django.utils import timezone

from campaign import ab_tests
from campaign.ab_tests import Decision, Outcome
from campaign.models import ABTest, Delivery
from workflows.context import ActivityContext
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.models import LogLevel, WorkflowLog

logger = logging.getLogger(__name__)

WORKFLOW_ID = "abTesting"

#: Test ids read per page. Tests are few (a handful a day, hundreds on a large platform's busy
#: day). A page's figures cost two aggregate queries whatever its size, and when its deliveries
#: make up much of the logs each query reads them all: a page holds a large day's tests so that a
#: run reads the logs once, and the bound only keeps the queries small if thousands were ever left
#: in ``testing``.
TESTS_PER_PAGE = 500

#: The winner delivery's label suffix (the benchmark's fingerprint builds the label too).
WINNER_LABEL_SUFFIX = ab_tests.WINNER_LABEL_SUFFIX


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
    """The :class:`Page` of ``test_ids``."""
    tests = ABTest.objects.select_related("owner", "campaign").in_bulk(test_ids)
    deliveries = ab_tests.deliveries_under_test(list(tests))
    ended = [(test, deliveries.get(test.pk)) for test in tests.values()
             if _may_need_figures(test, deliveries.get(test.pk), now)]
    return Page(tests, deliveries, ab_tests.figures_of(ended) if ended else {})


def decide(test_id: int, *, now: datetime, page: Page | None = None) -> Decision:
    """:func:`campaign.ab_tests.decide` with what :func:`read_page` read beforehand (read now when
    ``page`` is not given). Safe to call any number of times."""
    page = page or read_page([test_id], now=now)
    return ab_tests.decide(test_id, now=now, delivery=page.deliveries.get(test_id), figures=page.figures.get(test_id))


def _may_need_figures(test: ABTest, delivery: Delivery | None, now: datetime) -> bool:
    if test.winner_delivery_id is not None or test.winner_variant or test.status != ABTest.Status.TESTING:
        return False
    end = ab_tests.period_end(test, delivery)
    return end is not None and end <= now


def _still_running(test: ABTest, delivery: Delivery | None, now: datetime) -> Outcome | None:
    """NOT_STARTED or NOT_ENDED when :func:`campaign.ab_tests.decide` would find that the test, as
    read on the page, has not reached the end of its period (it changes nothing then); else None.
    A test edited after the page was read is decided by the next run."""
    if test.winner_delivery_id is not None or test.status != ABTest.Status.TESTING:
        return None
    end = ab_tests.period_end(test, delivery)
    if end is None:
        return Outcome.NOT_STARTED
    return Outcome.NOT_ENDED if end > now else None


# -- journal and notifications ---------------------------------------------------------------------

def _name(test: ABTest) -> str:
    return f"A/B test #{test.pk} {test.label!r}"


class _Wording(NamedTuple):
    name: str  # the test, as the journal names it
    how: str  # how the winner came about
    criterion: str  # what the variants were compared on


def _wording(decision: Decision, test: ABTest) -> _Wording:
    """The words a decision's journal line and its owner's email share, so that both tell it alike."""
    return _Wording(name=_name(test), how="chosen by hand" if decision.chosen_by_hand else "computed",
                    criterion=test.get_criterion_display().lower())


def _journal(message: str, *, level: str = LogLevel.INFO) -> None:
    """A journal line outside a run (hand picks and confirmations from the admin)."""
    WorkflowLog.objects.create(workflow_id=WORKFLOW_ID, level=level, message=message)


@receiver(ab_tests.winner_chosen, dispatch_uid=f"{WORKFLOW_ID}.journal_winner_chosen")
def journal_winner_chosen(sender: type[ABTest], *, test: ABTest, variant: str, user: AbstractBaseUser,
                          **kwargs: Any) -> None:
    _journal(f"{_name(test)}: variant {variant} chosen as winner by {user.get_username()}.")


@receiver(ab_tests.winner_confirmed, dispatch_uid=f"{WORKFLOW_ID}.journal_winner_confirmed")
def journal_winner_confirmed(sender: type[ABTest], *, test: ABTest, winner: Delivery, user: AbstractBaseUser,
                             **kwargs: Any) -> None:
    _journal(f"{_name(test)}: winner {test.winner_variant} confirmed by {user.get_username()}; "
             f"delivery #{winner.pk} scheduled.")


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


def _journal_decision(ctx: ActivityContext, decision: Decision, test: ABTest) -> None:
    """Journal a decision, inside the unit that commits it (``test``: as read before the decision;
    only what a decision does not change is used)."""
    if decision.outcome in (Outcome.NOT_STARTED, Outcome.NOT_ENDED, Outcome.WAITING):
        return
    name, how, criterion = _wording(decision, test)
    figures = f"\n{format_figures(decision.figures)}" if decision.figures else ""
    if decision.outcome == Outcome.INVALID_CHOICE:
        ctx.log(f"{name}: the chosen winner {decision.variant!r} is not one of its variants "
                f"({', '.join(test.variants)}); left as it is.", level=LogLevel.WARNING)
    elif decision.outcome == Outcome.ALREADY_SENT:
        ctx.log(f"{name}: winner already sent (delivery #{decision.delivery_id}); nothing created.")
    elif decision.outcome == Outcome.WINNER_SENT:
        ctx.log(f"{name}: winner {decision.variant} ({how}, {criterion}); winner delivery "
                f"#{decision.delivery_id} scheduled.{figures}")
    elif decision.outcome == Outcome.TIE:
        ctx.log(f"{name}: tie on {criterion}; waiting for a manual choice.{figures}")
    else:  # awaiting confirmation
        ctx.log(f"{name}: winner {decision.variant} ({how}, {criterion}); waiting for confirmation.{figures}")


def _notify(ctx: ActivityContext, decision: Decision, test: ABTest) -> None:
    """Send the owner the notification a committed decision calls for (a tie, a winner to
    confirm), and journal whether it went."""
    if decision.outcome not in (Outcome.TIE, Outcome.AWAITING_CONFIRMATION):
        return
    name, how, criterion = _wording(decision, test)
    if decision.outcome == Outcome.TIE:
        notified = notify_owner(test, subject=f"{test.label}: tie, choose the winner", body=(
            f"The A/B test {test.label!r} (campaign {test.campaign.label!r}) ended in a tie on {criterion}:\n"
            f"{format_figures(decision.figures)}\n\n"
            "No winner was sent. Choose one on the test's page in the admin (Campaign > A/B tests)."
        ))
    else:
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
    """Every test in ``testing``, and every tie resolved by hand since, gets :func:`decide`, each
    in its own unit of work, with its journal line; the email to its owner follows once that unit committed."""
    candidates = ABTest.objects.filter(
        Q(status=ABTest.Status.TESTING) | Q(status=ABTest.Status.AWAITING_CHOICE, winner_variant__gt="")
    )
    last_id = 0
    while True:
        ids = list(candidates.filter(pk__gt=last_id).order_by("pk").values_list("pk", flat=True)[:TESTS_PER_PAGE])
        now = timezone.now()
        page = read_page(ids, now=now)
        decided: dict[int, Decision] = {}

        def decide_one(test_id: int, page: Page = page, now: datetime = now,
                       decided: dict[int, Decision] = decided) -> dict[str, int]:
            decision = decided[test_id] = decide(test_id, now=now, page=page)
            _journal_decision(ctx, decision, page.tests[test_id])
            return {decision.outcome.value: 1}

        # A test still running is left as it is by a decision: count it without a locked unit of
        # its own, so a run costs the tests that ended, not every test in progress.
        waiting = {test_id: outcome for test_id in ids if test_id in page.tests
                   and (outcome := _still_running(page.tests[test_id], page.deliveries.get(test_id), now))}
        for outcome in waiting.values():
            ctx.count(outcome.value)
        to_decide = [test_id for test_id in ids if test_id not in waiting]
        ctx.each(_notified_once_committed(ctx, to_decide, page=page, decided=decided), decide_one)
        if len(ids) < TESTS_PER_PAGE:
            return
        last_id = ids[-1]


def _notified_once_committed(ctx: ActivityContext, ids: Sequence[int], *, page: Page,
                             decided: dict[int, Decision]) -> Iterator[int]:
    """The page's tests for ``ctx.each``, which asks for the next one only after the unit of the
    one before has committed: that is when its owner is notified. A unit that fails ends the
    loop before, so a decision rolled back is never reported."""
    for test_id in ids:
        if test_id not in page.tests:  # deleted meanwhile
            continue
        yield test_id
        _notify(ctx, decided.pop(test_id), page.tests[test_id])


definition = register(WorkflowDefinition(
    id=WORKFLOW_ID,
    label="A/B testing",
    description="Picks the winner of each A/B test whose test period has ended and sends it to the remainder population "
                "(or waits for confirmation).",
    schedule=Schedule("0 0 * * *"),
    activities=(decide_winners,),
))
