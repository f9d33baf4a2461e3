"""updateDeliveryExecInfo: feedback → logs, bounce qualification, quarantine, tracking, opt-outs,
delivery states; exactly-once under reruns and interruptions.

The fixed-dataset tests compare every written field with an independent plain-Python reading of
the rules (``reference``), which walks the raw rows one by one instead of in SQL batches.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from campaign.ab_tests import winner_targets
from campaign.models import (
    ABTest,
    BounceRule,
    Channel,
    Delivery,
    DeliveryLog,
    FailureReason,
    FailureType,
    ForecastLog,
    InboundSms,
    LogStatus,
    Profile,
    Quarantine,
    SendingFeedback,
    TrackingHit,
    TrackingLog,
    UrlType,
)
from tests.factories import (
    ABTestFactory,
    BounceRuleFactory,
    DeliveryFactory,
    DeliveryLogFactory,
    InboundSmsFactory,
    ProfileFactory,
    QuarantineFactory,
    SendingFeedbackFactory,
    TrackingHitFactory,
    TrackingLogFactory,
)
from workflows import commands
from workflows.builtin import update_delivery_exec_info as module
from workflows.engine import RunRequest, execute
from workflows.models import RunStatus, Trigger, Workflow, WorkflowState

ID = module.WORKFLOW_ID
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
BOUNCE, DELIVERED, DEFERRED, COMPLAINT = (SendingFeedback.Outcome.BOUNCE, SendingFeedback.Outcome.DELIVERED,
                                          SendingFeedback.Outcome.DEFERRED, SendingFeedback.Outcome.COMPLAINT)
IN_PROGRESS, FINISHED = Delivery.State.IN_PROGRESS, Delivery.State.FINISHED
ERRONEOUS, QUARANTINED, DENYLISTED = (Quarantine.Status.ERRONEOUS, Quarantine.Status.QUARANTINED,
                                      Quarantine.Status.DENYLISTED)


def run_workflow(**overrides: Any):
    return commands.run_now(ID, actor="test", sync=True, overrides=overrides or None)


def set_properties(**properties: Any) -> None:
    Workflow.objects.filter(pk=ID).update(properties=properties)


@pytest.fixture
def frozen(time_machine):
    time_machine.move_to(NOW, tick=False)
    return time_machine


@pytest.fixture
def rules(db) -> dict[str, BounceRule]:
    """Created in an order that differs from their priorities, so id order would give wrong answers."""
    return {
        "soft_unknown": BounceRuleFactory(pattern=r"unknown", failure_type=FailureType.SOFT,
                                          failure_reason=FailureReason.REFUSED, priority=50),
        "hard_unknown": BounceRuleFactory(pattern=r"user unknown|no such user", failure_type=FailureType.HARD,
                                          failure_reason=FailureReason.USER_UNKNOWN, priority=20),
        "mailbox_full": BounceRuleFactory(pattern=r"mailbox full|over quota", failure_type=FailureType.SOFT,
                                          failure_reason=FailureReason.MAILBOX_FULL, priority=60),
        "ignored": BounceRuleFactory(pattern=r"out of office", failure_type=FailureType.IGNORED,
                                     failure_reason=FailureReason.NONE, priority=5),
        "denylist": BounceRuleFactory(pattern=r"spam complaint", failure_type=FailureType.HARD,
                                      failure_reason=FailureReason.ON_DENYLIST, priority=10),
    }


def bounce(log: DeliveryLog, text: str, **fields: Any) -> SendingFeedback:
    return SendingFeedbackFactory(delivery_log=log, outcome=BOUNCE, error_text=text, **fields)


# ---------------------------------------------------------------------------------------------
# SendingFeedback → DeliveryLog, bounce qualification
# ---------------------------------------------------------------------------------------------

def test_delivered_feedback_marks_the_log_sent_and_stamps_updated_at(frozen, rules):
    log = DeliveryLogFactory(updated_at=NOW - DAY)
    SendingFeedbackFactory(delivery_log=log, outcome=DELIVERED)

    run = run_workflow()

    log.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert (log.status, log.failure_type, log.failure_reason, log.error_text) == (LogStatus.SENT, 0, 0, "")
    assert log.updated_at == NOW


def test_bounce_takes_type_and_reason_of_the_first_matching_rule_by_priority(frozen, rules):
    """Both the priority-50 rule ("unknown") and the priority-20 rule ("user unknown") match: 20 wins,
    though it was created after the other."""
    log = DeliveryLogFactory()
    bounce(log, "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown in virtual mailbox table")

    run_workflow()

    log.refresh_from_db()
    assert (log.status, log.failure_type, log.failure_reason) == (LogStatus.FAILED, FailureType.HARD, FailureReason.USER_UNKNOWN)
    assert log.error_text.startswith("550 5.1.1")


def test_lowering_a_rules_priority_value_makes_it_win(frozen, rules):
    BounceRule.objects.filter(pk=rules["soft_unknown"].pk).update(priority=1)
    log = DeliveryLogFactory()
    bounce(log, "User unknown")

    run_workflow()

    log.refresh_from_db()
    assert (log.failure_type, log.failure_reason) == (FailureType.SOFT, FailureReason.REFUSED)


def test_bounce_matching_no_rule_is_soft_with_reason_not_defined_and_keeps_the_text(frozen, rules):
    log = DeliveryLogFactory()
    bounce(log, "554 Transaction failed")

    run_workflow()

    log.refresh_from_db()
    assert (log.status, log.failure_type, log.failure_reason, log.error_text) == (
        LogStatus.FAILED, FailureType.SOFT, FailureReason.NONE, "554 Transaction failed")


def test_rules_match_anywhere_in_the_text_ignoring_case(frozen, rules):
    log = DeliveryLogFactory()
    bounce(log, "452 4.2.2 The recipient's MAILBOX FULL, try later")

    run_workflow()

    log.refresh_from_db()
    assert (log.failure_type, log.failure_reason) == (FailureType.SOFT, FailureReason.MAILBOX_FULL)


def test_a_word_boundary_pattern_means_what_python_re_says_on_every_backend(frozen, rules):
    """``\\b`` is a word boundary for Python (which validates the rules) and a backspace for
    PostgreSQL's regex: qualification happens in one place, so both backends agree."""
    BounceRuleFactory(pattern=r"\bblocked\b", failure_type=FailureType.SOFT, failure_reason=FailureReason.REFUSED, priority=1)
    matching, not_matching = DeliveryLogFactory(), DeliveryLogFactory()
    bounce(matching, "554 5.7.1 Client host blocked by policy")
    bounce(not_matching, "554 5.7.1 unblocked mailbox full")

    run_workflow()

    matching.refresh_from_db()
    not_matching.refresh_from_db()
    assert (matching.failure_type, matching.failure_reason) == (FailureType.SOFT, FailureReason.REFUSED)
    assert (not_matching.failure_type, not_matching.failure_reason) == (FailureType.SOFT, FailureReason.MAILBOX_FULL)


def test_deferred_feedback_leaves_the_log_pending_and_untouched(frozen, rules):
    log = DeliveryLogFactory(updated_at=NOW - DAY)
    SendingFeedbackFactory(delivery_log=log, outcome=DEFERRED, error_text="451 4.7.1 Greylisted, try again later")

    run = run_workflow()

    log.refresh_from_db()
    assert (log.status, log.failure_type, log.error_text, log.updated_at) == (LogStatus.PENDING, 0, "", NOW - DAY)
    assert run.counters["feedback_deferred"] == 1 and run.counters["logs_updated"] == 0


def test_the_last_feedback_of_a_log_in_a_batch_wins(frozen, rules):
    retried, failed_late = DeliveryLogFactory(), DeliveryLogFactory()
    bounce(retried, "452 Mailbox full")
    SendingFeedbackFactory(delivery_log=retried, outcome=DELIVERED)
    SendingFeedbackFactory(delivery_log=failed_late, outcome=DELIVERED)
    bounce(failed_late, "550 no such user")

    run_workflow()

    retried.refresh_from_db()
    failed_late.refresh_from_db()
    assert (retried.status, retried.failure_type, retried.error_text) == (LogStatus.SENT, 0, "")
    assert (failed_late.status, failed_late.failure_type, failed_late.failure_reason) == (
        LogStatus.FAILED, FailureType.HARD, FailureReason.USER_UNKNOWN)


def test_a_deferral_after_a_bounce_does_not_reopen_the_log(frozen, rules):
    log = DeliveryLogFactory()
    bounce(log, "452 Mailbox full")
    SendingFeedbackFactory(delivery_log=log, outcome=DEFERRED)

    run_workflow()

    log.refresh_from_db()
    assert (log.status, log.failure_reason) == (LogStatus.FAILED, FailureReason.MAILBOX_FULL)


def test_an_invalid_rule_pattern_fails_the_run_with_its_reason_and_consumes_nothing(frozen, rules):
    broken = BounceRuleFactory(pattern="(unclosed", priority=1)
    log = DeliveryLogFactory()
    SendingFeedbackFactory(delivery_log=log, outcome=DELIVERED)

    run = run_workflow()

    log.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert f"bounce rule #{broken.pk} has an invalid pattern" in run.reason
    assert log.status == LogStatus.PENDING
    assert module.FEEDBACK_CURSOR not in Workflow.objects.get(pk=ID).cursors


def test_feedback_for_a_log_that_no_longer_exists_is_consumed_without_effect(frozen, rules):
    SendingFeedbackFactory(delivery_log_id=987654, outcome=BOUNCE, error_text="550 user unknown")

    run = run_workflow()

    assert run.status == RunStatus.SUCCEEDED
    assert run.counters["logs_updated"] == 0
    assert not Quarantine.objects.exists()
    assert Workflow.objects.get(pk=ID).cursors[module.FEEDBACK_CURSOR] == SendingFeedback.objects.get().pk


# ---------------------------------------------------------------------------------------------
# Quarantine
# ---------------------------------------------------------------------------------------------

def quarantine_of(address: str, channel: str = Channel.EMAIL) -> Quarantine:
    return Quarantine.objects.get(address=address, channel=channel)


def soft_bounce_now(address: str, *, channel: str = Channel.EMAIL) -> None:
    """A "mailbox full" bounce received now (time-machine's now), on a new log of ``address``."""
    delivery = DeliveryFactory(channel=channel, state=IN_PROGRESS)
    bounce(DeliveryLogFactory(delivery=delivery, profile=None, address=address), "452 4.2.2 Mailbox full")


def test_a_hard_bounce_quarantines_the_address_at_once(frozen, rules):
    QuarantineFactory(address="gone@example.com", status=ERRONEOUS, error_count=1, last_error_at=NOW - 2 * DAY)
    bounce(DeliveryLogFactory(profile=None, address="gone@example.com"), "550 5.1.1 User unknown")

    run = run_workflow()

    entry = quarantine_of("gone@example.com")
    assert (entry.status, entry.error_count, entry.last_error_at) == (QUARANTINED, 2, NOW)
    assert (entry.failure_type, entry.failure_reason) == (FailureType.HARD, FailureReason.USER_UNKNOWN)
    assert run.counters["addresses_quarantined"] == 1


def test_soft_errors_count_only_when_a_day_after_the_last_counted_one(frozen, rules):
    soft_bounce_now("full@example.com")
    run_workflow()
    assert (quarantine_of("full@example.com").error_count, quarantine_of("full@example.com").last_error_at) == (1, NOW)

    frozen.move_to(NOW + timedelta(hours=23, minutes=59), tick=False)
    soft_bounce_now("full@example.com")
    run_workflow()
    entry = quarantine_of("full@example.com")
    assert (entry.error_count, entry.last_error_at, entry.first_error_at) == (1, NOW, NOW), "23h59 later: not significant"

    frozen.move_to(NOW + DAY, tick=False)  # exactly one day after the last counted error
    soft_bounce_now("full@example.com")
    run_workflow()
    entry = quarantine_of("full@example.com")
    assert (entry.status, entry.error_count, entry.last_error_at) == (ERRONEOUS, 2, NOW + DAY)


def test_the_fifth_significant_soft_error_quarantines_the_address(frozen, rules):
    statuses = []
    for day in range(5):
        frozen.move_to(NOW + day * DAY, tick=False)
        soft_bounce_now("full@example.com")
        run_workflow()
        entry = quarantine_of("full@example.com")
        statuses.append((entry.status, entry.error_count))

    assert statuses == [(ERRONEOUS, 1), (ERRONEOUS, 2), (ERRONEOUS, 3), (ERRONEOUS, 4), (QUARANTINED, 5)]
    assert quarantine_of("full@example.com").failure_reason == FailureReason.MAILBOX_FULL


def test_the_counter_restarts_when_the_last_counted_error_is_older_than_ten_days(frozen, rules):
    for day in range(3):
        frozen.move_to(NOW + day * DAY, tick=False)
        soft_bounce_now("kept@example.com")
        soft_bounce_now("reset@example.com")
    run_workflow()
    last = NOW + 2 * DAY

    frozen.move_to(last + 10 * DAY, tick=False)  # exactly 10 days: not older than 10 days
    soft_bounce_now("kept@example.com")
    frozen.move_to(last + 10 * DAY + timedelta(seconds=1), tick=False)
    soft_bounce_now("reset@example.com")
    run_workflow()

    kept, reset = quarantine_of("kept@example.com"), quarantine_of("reset@example.com")
    assert (kept.error_count, kept.first_error_at, kept.last_error_at) == (4, NOW, last + 10 * DAY)
    assert (reset.status, reset.error_count, reset.first_error_at) == (ERRONEOUS, 1, last + 10 * DAY + timedelta(seconds=1))


def test_errors_of_one_run_are_replayed_in_order_with_the_same_rules(frozen, rules):
    """Five bounces received over five days but consolidated by a single run count like five runs."""
    for day in range(5):
        frozen.move_to(NOW + day * DAY + timedelta(hours=day), tick=False)
        soft_bounce_now("late@example.com")
        frozen.move_to(NOW + day * DAY + timedelta(hours=day + 1), tick=False)
        soft_bounce_now("late@example.com")  # an hour later: not significant
    run = run_workflow()

    entry = quarantine_of("late@example.com")
    assert (entry.status, entry.error_count, entry.last_error_at) == (QUARANTINED, 5, NOW + 4 * DAY + timedelta(hours=4))
    assert run.counters["significant_errors"] == 5 and run.counters["soft_bounces"] == 10


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"quarantine_threshold": 2}, [(ERRONEOUS, 1), (QUARANTINED, 2)]),
        ({"quarantine_threshold": 3}, [(ERRONEOUS, 1), (ERRONEOUS, 2)]),
        ({"error_interval_days": 3}, [(ERRONEOUS, 1), (ERRONEOUS, 1)]),
        ({"counter_reset_days": 1, "error_interval_days": 1}, [(ERRONEOUS, 1), (ERRONEOUS, 1)]),
    ],
)
def test_threshold_interval_and_reset_are_properties(frozen, rules, properties, expected):
    """Two soft bounces 2 days apart: counted twice by default, so a threshold of 2 quarantines;
    an interval of 3 days does not count the second; a reset after 1 day restarts at 1."""
    set_properties(**properties)
    seen = []
    for day in (0, 2):
        frozen.move_to(NOW + day * DAY, tick=False)
        soft_bounce_now("prop@example.com")
        run_workflow()
        entry = quarantine_of("prop@example.com")
        seen.append((entry.status, entry.error_count))

    assert seen == expected


def test_invalid_quarantine_properties_are_refused(db):
    with pytest.raises(ValidationError, match="quarantine_threshold: must be at least 1"):
        run_workflow(quarantine_threshold=0)


def test_ignored_failures_do_not_count(frozen, rules):
    QuarantineFactory(address="away@example.com", status=ERRONEOUS, error_count=4, last_error_at=NOW - 2 * DAY)
    bounce(DeliveryLogFactory(profile=None, address="away@example.com"), "Auto-reply: out of office")
    bounce(DeliveryLogFactory(profile=None, address="new@example.com"), "Auto-reply: out of office")

    run_workflow()

    entry = quarantine_of("away@example.com")
    assert (entry.status, entry.error_count, entry.last_error_at) == (ERRONEOUS, 4, NOW - 2 * DAY)
    assert not Quarantine.objects.filter(address="new@example.com").exists()
    assert DeliveryLog.objects.get(address="new@example.com").failure_type == FailureType.IGNORED


def test_quarantine_is_kept_per_address_and_channel(frozen, rules):
    soft_bounce_now("+33600000001", channel=Channel.SMS)
    soft_bounce_now("+33600000001", channel=Channel.PUSH)
    bounce(DeliveryLogFactory(delivery=DeliveryFactory(channel=Channel.PUSH), profile=None, address="+33600000001"),
           "unregistered: no such user")

    run_workflow()

    sms = quarantine_of("+33600000001", Channel.SMS)
    assert (sms.status, sms.error_count) == (ERRONEOUS, 1)
    assert quarantine_of("+33600000001", Channel.PUSH).status == QUARANTINED


def test_a_quarantined_or_denylisted_address_stays_as_it_is(frozen, rules):
    quarantined = QuarantineFactory(address="q@example.com", status=QUARANTINED, error_count=5, error_text="old")
    denylisted = QuarantineFactory(address="d@example.com", status=Quarantine.Status.DENYLISTED, error_count=0)
    soft_bounce_now("q@example.com")
    soft_bounce_now("d@example.com")

    run_workflow()

    assert (quarantine_of("q@example.com").status, quarantine_of("q@example.com").error_count,
            quarantine_of("q@example.com").error_text) == (QUARANTINED, 5, "old")
    assert quarantine_of("d@example.com").status == Quarantine.Status.DENYLISTED
    assert quarantined.updated_at == quarantine_of("q@example.com").updated_at
    assert denylisted.updated_at == quarantine_of("d@example.com").updated_at


def test_a_released_address_starts_counting_afresh(frozen, rules):
    QuarantineFactory(address="back@example.com", status=Quarantine.Status.VALID, error_count=4, last_error_at=NOW - 2 * DAY)
    soft_bounce_now("back@example.com")

    run_workflow()

    entry = quarantine_of("back@example.com")
    assert (entry.status, entry.error_count, entry.first_error_at, entry.last_error_at) == (ERRONEOUS, 1, NOW, NOW)


# ---------------------------------------------------------------------------------------------
# Denylisting: spam complaints, SMS opt-out keywords
# ---------------------------------------------------------------------------------------------

def complaint(log: DeliveryLog, text: str = "Feedback-Type: abuse", **fields: Any) -> SendingFeedback:
    return SendingFeedbackFactory(delivery_log=log, outcome=COMPLAINT, error_text=text, **fields)


def sms_log(phone: str, *, status: int = LogStatus.PENDING) -> DeliveryLog:
    delivery = DeliveryFactory(channel=Channel.SMS, state=IN_PROGRESS, validity_end=NOW + DAY)
    return DeliveryLogFactory(delivery=delivery, profile=ProfileFactory(phone=phone), address=phone, status=status)


def test_a_spam_complaint_puts_the_address_on_the_denylist_and_leaves_its_log_sent(frozen, rules):
    log = DeliveryLogFactory(profile=None, address="angry@example.com", status=LogStatus.SENT, updated_at=NOW - DAY)
    complaint(log, "Feedback-Type: abuse; User-Agent: mail.example FBL", received_at=NOW - timedelta(hours=1))

    run = run_workflow()

    entry = quarantine_of("angry@example.com")
    assert (entry.status, entry.failure_type, entry.failure_reason) == (DENYLISTED, FailureType.HARD, FailureReason.ON_DENYLIST)
    assert (entry.error_text, entry.error_count, entry.last_error_at) == (
        "Feedback-Type: abuse; User-Agent: mail.example FBL", 1, NOW - timedelta(hours=1))
    log.refresh_from_db()
    assert (log.status, log.failure_reason, log.updated_at) == (LogStatus.SENT, 0, NOW - DAY), "the message was delivered"
    assert (run.counters["feedback_complaint"], run.counters["addresses_denylisted"]) == (1, 1)
    assert run.counters.get("hard_bounces", 0) == 0 and run.counters["logs_updated"] == 0


def test_the_pending_logs_of_a_denylisted_address_fail_with_reason_8_on_its_channel_only(frozen, rules):
    """The platform records a message to an address on the denylist at the time of sending as
    failed, hard (type 2), reason 8: the messages not sent yet are never sent."""
    profile = ProfileFactory(email="angry@example.com", phone="+33611111111")
    email = DeliveryFactory(channel=Channel.EMAIL, state=IN_PROGRESS, validity_end=NOW + DAY)
    sms = DeliveryFactory(channel=Channel.SMS, state=IN_PROGRESS, validity_end=NOW + DAY)
    complained = DeliveryLogFactory(delivery=email, profile=profile, address=profile.email, status=LogStatus.SENT)
    pending = DeliveryLogFactory(delivery=DeliveryFactory(channel=Channel.EMAIL, state=IN_PROGRESS), profile=profile,
                                 address=profile.email)
    pending_sms = DeliveryLogFactory(delivery=sms, profile=profile, address=profile.phone)
    other = DeliveryLogFactory(delivery=email, address="calm@example.com")
    complaint(complained)

    run = run_workflow()

    pending.refresh_from_db()
    assert (pending.status, pending.failure_type, pending.failure_reason, pending.error_text, pending.updated_at) == (
        LogStatus.FAILED, FailureType.HARD, FailureReason.ON_DENYLIST, "Address on denylist", NOW)
    assert DeliveryLog.objects.get(pk=pending_sms.pk).status == LogStatus.PENDING, "another channel"
    assert DeliveryLog.objects.get(pk=other.pk).status == LogStatus.PENDING, "another address"
    assert run.counters["logs_denylisted"] == 1


def test_an_answer_about_a_log_failed_by_the_denylist_still_says_what_happened(frozen, rules):
    angry = DeliveryLogFactory(profile=None, address="angry@example.com", status=LogStatus.SENT)
    pending = DeliveryLogFactory(profile=None, address="angry@example.com")
    complaint(angry)
    run_workflow()
    assert DeliveryLog.objects.get(pk=pending.pk).failure_reason == FailureReason.ON_DENYLIST

    SendingFeedbackFactory(delivery_log=pending, outcome=DELIVERED)
    run_workflow()

    pending.refresh_from_db()
    assert (pending.status, pending.failure_type, pending.failure_reason) == (LogStatus.SENT, 0, 0)
    assert quarantine_of("angry@example.com").status == DENYLISTED


def test_a_hard_bounce_of_reason_8_puts_the_address_on_the_denylist(frozen, rules):
    bounce(DeliveryLogFactory(profile=None, address="listed@example.com"), "550 refused after a spam complaint")

    run = run_workflow()

    assert quarantine_of("listed@example.com").status == DENYLISTED
    assert (run.counters["addresses_denylisted"], run.counters["addresses_quarantined"]) == (1, 0)


def test_a_complaint_denylists_a_quarantined_address_and_leaves_a_denylisted_one_as_it_is(frozen, rules):
    QuarantineFactory(address="q@example.com", status=QUARANTINED, error_count=5, last_error_at=NOW - 3 * DAY)
    denylisted = QuarantineFactory(address="d@example.com", status=DENYLISTED, error_count=1, error_text="first report")
    complaint(DeliveryLogFactory(profile=None, address="q@example.com", status=LogStatus.SENT))
    complaint(DeliveryLogFactory(profile=None, address="d@example.com", status=LogStatus.SENT), "second report")

    run = run_workflow()

    entry = quarantine_of("q@example.com")
    assert (entry.status, entry.error_count, entry.failure_reason, entry.last_error_at) == (
        DENYLISTED, 6, FailureReason.ON_DENYLIST, NOW)
    assert quarantine_of("d@example.com").error_text == "first report"
    assert quarantine_of("d@example.com").updated_at == denylisted.updated_at
    assert run.counters["addresses_denylisted"] == 1


def test_a_complaint_about_a_purged_log_is_consumed_without_effect(frozen, rules):
    SendingFeedbackFactory(delivery_log_id=424242, outcome=COMPLAINT, error_text="Feedback-Type: abuse")

    run = run_workflow()

    assert not Quarantine.objects.exists()
    assert (run.counters["feedback_complaint"], run.counters["complaints_without_log"]) == (1, 1)


@pytest.mark.parametrize("text", ["STOP", "stop", "Stop.", " STOP! ", "s.t.o.p", "Stop all", "ARRET", "Arrêt",
                                  "UNSUBSCRIBE", "unsubscribe.", "Cancel", "END", "quit", "opt-out", "REVOKE"])
def test_an_opt_out_keyword_puts_the_number_on_the_sms_denylist(frozen, rules, text):
    pending = sms_log("+33622222222")
    InboundSmsFactory(phone="+33622222222", text=text, received_at=NOW - timedelta(minutes=5))

    run = run_workflow()

    entry = quarantine_of("+33622222222", Channel.SMS)
    assert (entry.status, entry.failure_type, entry.failure_reason, entry.error_text, entry.last_error_at) == (
        DENYLISTED, FailureType.HARD, FailureReason.ON_DENYLIST, text, NOW - timedelta(minutes=5))
    assert DeliveryLog.objects.get(pk=pending.pk).failure_reason == FailureReason.ON_DENYLIST
    assert (run.counters["sms_replies"], run.counters["sms_opt_outs"], run.counters["sms_replies_ignored"]) == (1, 1, 0)
    assert not Quarantine.objects.filter(channel=Channel.EMAIL).exists()


@pytest.mark.parametrize("text", ["Stop please", "STOPPED", "don't stop", "Thanks!", "", "?!", "YES", "START"])
def test_a_reply_that_is_not_a_keyword_as_a_whole_is_consumed_without_effect(frozen, rules, text):
    pending = sms_log("+33622222222")
    InboundSmsFactory(phone="+33622222222", text=text)

    run = run_workflow()

    assert not Quarantine.objects.exists()
    assert DeliveryLog.objects.get(pk=pending.pk).status == LogStatus.PENDING
    assert (run.counters["sms_replies"], run.counters["sms_opt_outs"], run.counters["sms_replies_ignored"]) == (1, 0, 1)


def test_a_reply_from_a_number_no_profile_has_is_denylisted_and_counted(frozen, rules):
    ProfileFactory(phone="+33633333333")
    InboundSmsFactory(phone="+33 6 99 99 99 99", text="STOP")  # nobody's
    InboundSmsFactory(phone="0033633333333", text="STOP")  # a profile's, written another way

    run = run_workflow()

    assert set(Quarantine.objects.values_list("address", "channel", "status")) == {
        ("+33699999999", Channel.SMS, DENYLISTED), ("+33633333333", Channel.SMS, DENYLISTED)}
    assert (run.counters["sms_opt_outs"], run.counters["sms_opt_outs_unknown_number"]) == (2, 1)


def test_the_opt_out_keywords_are_a_property(frozen, rules):
    set_properties(opt_out_keywords="HALT, ne plus recevoir")
    InboundSmsFactory(phone="+33644444444", text="halt")
    InboundSmsFactory(phone="+33655555555", text="Ne plus recevoir.")
    InboundSmsFactory(phone="+33666666666", text="STOP")

    run_workflow()

    assert set(Quarantine.objects.values_list("address", flat=True)) == {"+33644444444", "+33655555555"}


@pytest.mark.parametrize("value", ["", " , ,", "STOP, ?!"])
def test_an_opt_out_keyword_list_without_words_is_refused(db, value):
    with pytest.raises(ValidationError, match="opt_out_keywords"):
        run_workflow(opt_out_keywords=value)


def test_denylisting_on_the_fixed_dataset(frozen, rules):
    data = build_dataset(rules)
    expected = reference(now=NOW)

    run = run_workflow()

    assert_matches(observed(), expected)
    statuses = {key: entry["status"] for key, entry in expected["quarantine"].items() if entry["status"] == DENYLISTED}
    assert statuses == dict.fromkeys([
        ("kim@example.com", Channel.EMAIL), ("ivan@example.com", Channel.EMAIL), ("complainer@example.com", Channel.EMAIL),
        ("+33620000001", Channel.SMS), ("+33620000002", Channel.SMS), ("+33699999999", Channel.SMS)], DENYLISTED)
    failed = DeliveryLog.objects.filter(failure_reason=FailureReason.ON_DENYLIST, error_text="Address on denylist")
    assert sorted(failed.values_list("address", flat=True)) == ["+33620000001", "+33620000002", "kim@example.com"]
    assert DeliveryLog.objects.get(address="+33620000000").status == LogStatus.PENDING, "kim's SMS: another channel"
    assert DeliveryLog.objects.get(address="+33620000003").status == LogStatus.PENDING, "nora said no keyword"
    assert data.deliveries["email2"].logs.filter(status=LogStatus.PENDING).exists()
    assert {name: run.counters[name] for name in (
        "feedback_complaint", "complaints_without_log", "addresses_denylisted", "logs_denylisted", "sms_replies",
        "sms_opt_outs", "sms_replies_ignored", "sms_opt_outs_unknown_number")} == {
        "feedback_complaint": 4, "complaints_without_log": 1, "addresses_denylisted": 6, "logs_denylisted": 3,
        "sms_replies": 6, "sms_opt_outs": 4, "sms_replies_ignored": 2, "sms_opt_outs_unknown_number": 1}


def test_a_complaint_and_a_stop_reply_are_skipped_by_forecasting_and_by_the_ab_winner(frozen, rules):
    """From the raw rows to targeting: updateDeliveryExecInfo denylists, abTesting sends the winner
    to the rest of the target, forecasting plans the coming deliveries; neither reaches the two."""
    ann, bob, cat, dan, eve = (ProfileFactory(email=f"{name}@example.com", phone=f"+3363000000{i}")
                               for i, name in enumerate(["ann", "bob", "cat", "dan", "eve"]))
    test = ABTestFactory(test_duration=timedelta(hours=4), winner_sending=ABTest.WinnerSending.AUTOMATIC)
    test_delivery = DeliveryFactory(campaign=test.campaign, ab_test=test, channel=Channel.EMAIL,
                                    state=Delivery.State.FINISHED, started_at=NOW - DAY)
    for who, variant in ((dan, "A"), (eve, "B")):
        log = DeliveryLogFactory(delivery=test_delivery, profile=who, address=who.email, variant=variant,
                                 status=LogStatus.SENT)
        if variant == "A":
            TrackingLogFactory(delivery_log=log)  # A opened: A wins
    newsletter = DeliveryFactory(channel=Channel.EMAIL, state=FINISHED)
    sms = DeliveryFactory(channel=Channel.SMS, state=FINISHED)
    complaint(DeliveryLogFactory(delivery=newsletter, profile=bob, address=bob.email, status=LogStatus.SENT))
    DeliveryLogFactory(delivery=sms, profile=cat, address=cat.phone, status=LogStatus.SENT)
    InboundSmsFactory(phone=cat.phone, text="Stop.")
    teaser = DeliveryFactory(channel=Channel.EMAIL, state=Delivery.State.SCHEDULED, scheduled_at=NOW + 2 * DAY)
    launch_sms = DeliveryFactory(channel=Channel.SMS, state=Delivery.State.PROVISIONAL, scheduled_at=NOW + 3 * DAY)

    assert run_workflow().status == RunStatus.SUCCEEDED
    assert commands.run_now("abTesting", actor="test", sync=True).status == RunStatus.SUCCEEDED
    assert commands.run_now("forecasting", actor="test", sync=True).status == RunStatus.SUCCEEDED

    test.refresh_from_db()
    assert (test.status, test.winner_variant) == (ABTest.Status.WINNER_SENT, "A")

    def planned(delivery: Delivery) -> set[int]:
        return set(ForecastLog.objects.filter(delivery=delivery).values_list("profile_id", flat=True))

    assert set(winner_targets(test).values_list("pk", flat=True)) == {ann.pk, cat.pk}
    assert planned(test.winner_delivery) == {ann.pk, cat.pk}, "the rest of the target, without bob"
    assert planned(teaser) == {ann.pk, cat.pk, dan.pk, eve.pk}, "bob complained"
    assert planned(launch_sms) == {ann.pk, bob.pk, dan.pk, eve.pk}, "cat replied STOP"


# ---------------------------------------------------------------------------------------------
# TrackingHit → TrackingLog, opt-outs
# ---------------------------------------------------------------------------------------------

def test_hits_become_tracking_logs_with_the_delivery_of_their_log(frozen, rules):
    log = DeliveryLogFactory()
    open_hit = TrackingHitFactory(delivery_log=log, url_type=UrlType.OPEN, hit_at=NOW - timedelta(hours=3))
    click = TrackingHitFactory(delivery_log=log, url_type=UrlType.CLICK, url="https://shop.example.com/a", hit_at=NOW - DAY)
    TrackingHitFactory(delivery_log_id=987654, url_type=UrlType.OPEN)  # its log was purged

    run = run_workflow()

    rows = list(TrackingLog.objects.order_by("id").values_list("delivery_log_id", "delivery_id", "url_type", "url", "tracked_at"))
    assert rows == [
        (log.pk, log.delivery_id, UrlType.OPEN, "", open_hit.hit_at),
        (log.pk, log.delivery_id, UrlType.CLICK, "https://shop.example.com/a", click.hit_at),
    ]
    assert (run.counters["hits"], run.counters["tracking_logs_written"], run.counters["hits_without_log"]) == (3, 2, 1)


@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS, Channel.PUSH])
def test_an_opt_out_blocklists_the_profile_for_the_delivery_channel_only(frozen, rules, channel):
    profile = ProfileFactory(updated_at=NOW - DAY)
    log = DeliveryLogFactory(delivery=DeliveryFactory(channel=channel), profile=profile)
    TrackingHitFactory(delivery_log=log, url_type=UrlType.OPT_OUT)
    other = ProfileFactory()
    TrackingHitFactory(delivery_log=DeliveryLogFactory(delivery=DeliveryFactory(channel=channel), profile=other),
                       url_type=UrlType.CLICK)

    run = run_workflow()

    profile.refresh_from_db()
    flags = {Channel.EMAIL: profile.blocklisted_email, Channel.SMS: profile.blocklisted_sms,
             Channel.PUSH: profile.blocklisted_push}
    assert flags == {c: c == channel for c in flags}
    assert profile.updated_at == NOW
    assert Profile.objects.filter(pk=other.pk, blocklisted_email=False, blocklisted_sms=False, blocklisted_push=False).exists()
    assert run.counters["profiles_blocklisted"] == 1


def test_an_opt_out_of_a_log_without_profile_blocklists_nobody(frozen, rules):
    TrackingHitFactory(delivery_log=DeliveryLogFactory(profile=None, address="guest@example.com"), url_type=UrlType.OPT_OUT)

    run = run_workflow()

    assert run.status == RunStatus.SUCCEEDED and run.counters["profiles_blocklisted"] == 0
    assert TrackingLog.objects.get().url_type == UrlType.OPT_OUT


# ---------------------------------------------------------------------------------------------
# Delivery states
# ---------------------------------------------------------------------------------------------

def test_pending_logs_past_validity_are_cancelled_and_the_delivery_finishes(frozen, rules):
    delivery = DeliveryFactory(state=IN_PROGRESS, validity_end=NOW - timedelta(minutes=1))
    pending = DeliveryLogFactory(delivery=delivery, updated_at=NOW - DAY)
    deferred = DeliveryLogFactory(delivery=delivery)
    SendingFeedbackFactory(delivery_log=deferred, outcome=DEFERRED)
    sent = DeliveryLogFactory(delivery=delivery, status=LogStatus.SENT, updated_at=NOW - DAY)

    run = run_workflow()

    assert [(log.status, log.updated_at)
            for log in DeliveryLog.objects.filter(pk__in=[pending.pk, deferred.pk, sent.pk]).order_by("pk")] \
        == [(LogStatus.CANCELLED, NOW), (LogStatus.CANCELLED, NOW), (LogStatus.SENT, NOW - DAY)]
    delivery.refresh_from_db()
    assert (delivery.state, delivery.finished_at) == (FINISHED, NOW)
    assert (run.counters["logs_cancelled"], run.counters["deliveries_finished"]) == (2, 1)


def test_a_delivery_finishes_once_every_log_is_final_even_before_validity_ends(frozen, rules):
    delivery = DeliveryFactory(state=IN_PROGRESS, validity_end=NOW + 3 * DAY)
    SendingFeedbackFactory(delivery_log=DeliveryLogFactory(delivery=delivery), outcome=DELIVERED)
    bounce(DeliveryLogFactory(delivery=delivery), "550 no such user")

    run_workflow()

    delivery.refresh_from_db()
    assert delivery.state == FINISHED


def test_a_delivery_with_a_pending_log_within_validity_stays_in_progress(frozen, rules):
    delivery = DeliveryFactory(state=IN_PROGRESS, validity_end=NOW + timedelta(minutes=1))
    SendingFeedbackFactory(delivery_log=DeliveryLogFactory(delivery=delivery), outcome=DELIVERED)
    waiting = DeliveryLogFactory(delivery=delivery)
    unlimited = DeliveryFactory(state=IN_PROGRESS, validity_end=None)
    DeliveryLogFactory(delivery=unlimited)

    run_workflow()

    assert Delivery.objects.get(pk=delivery.pk).state == IN_PROGRESS
    assert Delivery.objects.get(pk=unlimited.pk).state == IN_PROGRESS
    assert DeliveryLog.objects.get(pk=waiting.pk).status == LogStatus.PENDING


def test_a_delivery_without_logs_finishes_only_once_its_validity_ended(frozen, rules):
    preparing = DeliveryFactory(state=IN_PROGRESS, validity_end=NOW + DAY)
    expired = DeliveryFactory(state=IN_PROGRESS, validity_end=NOW - DAY)

    run_workflow()

    assert Delivery.objects.get(pk=preparing.pk).state == IN_PROGRESS
    assert Delivery.objects.get(pk=expired.pk).state == FINISHED


def test_pending_logs_of_a_stopped_delivery_are_cancelled_but_its_state_is_kept(frozen, rules):
    stopped = DeliveryFactory(state=Delivery.State.STOPPED, validity_end=NOW - DAY)
    log = DeliveryLogFactory(delivery=stopped)

    run_workflow()

    assert DeliveryLog.objects.get(pk=log.pk).status == LogStatus.CANCELLED
    assert Delivery.objects.get(pk=stopped.pk).state == Delivery.State.STOPPED


def test_cancellation_runs_in_bounded_batches(frozen, rules):
    delivery = DeliveryFactory(state=IN_PROGRESS, validity_end=NOW - DAY)
    DeliveryLog.objects.bulk_create(DeliveryLog(delivery=delivery, address=f"p{i}@example.com") for i in range(7))

    run = run_workflow(batch_size=2)

    assert run.counters["logs_cancelled"] == 7
    assert not DeliveryLog.objects.filter(status=LogStatus.PENDING).exists()


# ---------------------------------------------------------------------------------------------
# A fixed dataset against an independent reading of the rules
# ---------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    deliveries: dict[str, Delivery]
    profiles: dict[str, Profile]


def build_dataset(rules: dict[str, BounceRule]) -> Dataset:
    """Every case at once: each outcome, each rule, repeated and out-of-order feedback, quarantine
    histories, opt-outs per channel, orphans, deliveries in each situation."""
    deliveries = {
        "email": DeliveryFactory(channel=Channel.EMAIL, state=IN_PROGRESS, validity_end=NOW + 2 * DAY),
        "email2": DeliveryFactory(channel=Channel.EMAIL, state=IN_PROGRESS, validity_end=NOW + 5 * DAY),
        "sms": DeliveryFactory(channel=Channel.SMS, state=IN_PROGRESS, validity_end=NOW - DAY),
        "push": DeliveryFactory(channel=Channel.PUSH, state=IN_PROGRESS, validity_end=None),
        "stopped": DeliveryFactory(channel=Channel.EMAIL, state=Delivery.State.STOPPED, validity_end=NOW - 3 * DAY),
        "empty": DeliveryFactory(channel=Channel.EMAIL, state=IN_PROGRESS, validity_end=NOW + DAY),
        "empty_expired": DeliveryFactory(channel=Channel.EMAIL, state=IN_PROGRESS, validity_end=NOW - timedelta(hours=1)),
        "draft": DeliveryFactory(channel=Channel.EMAIL, state=Delivery.State.DRAFT),
    }
    names = ["alice", "bob", "carol", "dave", "erin", "frank"]
    profiles = {name: ProfileFactory(email=f"{name}@example.com", phone=f"+3361000000{i}") for i, name in enumerate(names)}
    QuarantineFactory(address="carol@example.com", error_count=4, first_error_at=NOW - 9 * DAY, last_error_at=NOW - 5 * DAY)
    QuarantineFactory(address="hank@example.com", error_count=3, first_error_at=NOW - 20 * DAY, last_error_at=NOW - 12 * DAY)
    QuarantineFactory(address="ivan@example.com", status=QUARANTINED, error_count=5, error_text="kept")
    QuarantineFactory(address="judy@example.com", status=Quarantine.Status.VALID, error_count=2, last_error_at=NOW - 2 * DAY)

    def log(delivery: str, who: str, *, channel_address: str | None = None) -> DeliveryLog:
        profile = profiles.get(who)
        address = channel_address or (profile.email if profile else f"{who}@example.com")
        return DeliveryLogFactory(delivery=deliveries[delivery], profile=profile, address=address, updated_at=NOW - 7 * DAY)

    def feedback(target: DeliveryLog, outcome: str, text: str = "", *, ago: timedelta) -> None:
        SendingFeedbackFactory(delivery_log=target, outcome=outcome, error_text=text, received_at=NOW - ago)

    def hit(target: DeliveryLog | int, url_type: int, url: str = "", *, ago: timedelta) -> None:
        fields = {"delivery_log_id": target} if isinstance(target, int) else {"delivery_log": target}
        TrackingHitFactory(url_type=url_type, url=url, hit_at=NOW - ago, **fields)

    alice = log("email", "alice")
    feedback(alice, DELIVERED, ago=3 * DAY)
    feedback(log("email", "bob"), BOUNCE, "550 5.1.1 User unknown", ago=3 * DAY)
    feedback(log("email", "carol"), BOUNCE, "452 Mailbox full", ago=3 * DAY)
    feedback(log("email", "dave"), BOUNCE, "Auto-reply: out of office", ago=3 * DAY)
    erin = log("email", "erin")
    feedback(erin, BOUNCE, "554 Transaction failed", ago=3 * DAY)
    guest = log("email", "guest")
    feedback(guest, BOUNCE, "452 over quota", ago=3 * DAY)
    feedback(guest, DELIVERED, ago=2 * DAY)
    frank = log("email", "frank")
    feedback(frank, DEFERRED, "451 try later", ago=3 * DAY)
    feedback(frank, BOUNCE, "552 Mailbox full - quota exceeded", ago=2 * DAY)
    feedback(frank, DEFERRED, "451 try later", ago=2 * DAY)
    feedback(log("email", "complainer"), BOUNCE, "550 address on list after a SPAM COMPLAINT", ago=3 * DAY)
    for ago in (2 * DAY, 1.5 * DAY, 0.9 * DAY):  # greg: counted, not counted (12 h), counted (1.1 days)
        feedback(log("email2", "greg"), BOUNCE, "Mailbox full", ago=ago)
    feedback(log("email2", "hank"), BOUNCE, "mailbox full", ago=DAY)  # last counted 11 days before: reset
    feedback(log("email2", "ivan"), BOUNCE, "mailbox full", ago=DAY)  # already quarantined
    feedback(log("email2", "judy"), BOUNCE, "mailbox full", ago=DAY)  # released earlier: fresh count
    log("email2", "alice")  # no feedback yet: email2 stays in progress
    alice_sms = log("sms", "alice", channel_address=profiles["alice"].phone)
    feedback(alice_sms, DELIVERED, ago=2 * DAY)
    log("sms", "bob", channel_address=profiles["bob"].phone)  # never answered: cancelled
    carol_sms = log("sms", "carol", channel_address=profiles["carol"].phone)
    feedback(carol_sms, DEFERRED, "SR error 27: Absent subscriber", ago=2 * DAY)
    feedback(log("sms", "erin", channel_address="erin@example.com"), BOUNCE, "SR: unknown subscriber", ago=2 * DAY)
    dave_push = log("push", "dave", channel_address="token-dave")
    feedback(dave_push, DEFERRED, "APNs 429 TooManyRequests", ago=DAY)
    erin_push = log("push", "erin", channel_address="token-erin")
    feedback(erin_push, DELIVERED, ago=DAY)
    log("stopped", "frank")
    SendingFeedbackFactory(delivery_log_id=987654, outcome=DELIVERED, received_at=NOW - DAY)

    hit(alice, UrlType.OPEN, ago=2 * DAY)
    hit(alice, UrlType.OPEN, ago=timedelta(days=1, hours=20))
    hit(alice, UrlType.CLICK, "https://shop.example.com/spring", ago=timedelta(days=1, hours=19))
    hit(alice, UrlType.OPT_OUT, "https://shop.example.com/unsubscribe", ago=timedelta(days=1, hours=18))
    hit(erin, UrlType.MIRROR_PAGE, "https://mirror.example.com/m/1", ago=DAY)
    hit(guest, UrlType.OPT_OUT, ago=DAY)  # no profile: nothing to blocklist
    hit(alice_sms, UrlType.OPT_OUT, ago=DAY)
    hit(erin_push, UrlType.OPT_OUT, ago=timedelta(hours=5))
    hit(erin_push, UrlType.CLICK, "app://promo", ago=timedelta(hours=4))
    hit(987654, UrlType.OPEN, ago=timedelta(hours=3))
    add_denylisting_cases()
    return Dataset(deliveries=deliveries, profiles=profiles)


def add_denylisting_cases() -> None:
    """Spam complaints and SMS replies, on logs of two more deliveries that stay in progress (so
    the counters of the cases above are unchanged): a complaint about a message already consolidated
    as sent, whose address still has a pending message (failed by the denylisting) and a pending SMS
    (another channel: untouched); a second complaint of the same address; a complaint about a
    quarantined address; one about a purged log; opt-out replies in several spellings, from known and
    unknown numbers, and replies that are not keywords."""
    weekly = DeliveryFactory(channel=Channel.EMAIL, state=IN_PROGRESS, validity_end=NOW + 5 * DAY)
    sms2 = DeliveryFactory(channel=Channel.SMS, state=IN_PROGRESS, validity_end=NOW + DAY)
    kim, lena, mona, nora = (ProfileFactory(email=f"{name}@example.com", phone=f"+3362000000{i}")
                             for i, name in enumerate(["kim", "lena", "mona", "nora"]))

    def log(delivery: Delivery, profile: Profile | None, address: str, status: int = LogStatus.PENDING) -> DeliveryLog:
        return DeliveryLogFactory(delivery=delivery, profile=profile, address=address, status=status,
                                  updated_at=NOW - 7 * DAY)

    def complaint(target: DeliveryLog | int, *, ago: timedelta) -> None:
        fields = {"delivery_log_id": target} if isinstance(target, int) else {"delivery_log": target}
        SendingFeedbackFactory(outcome=COMPLAINT, error_text="Feedback-Type: abuse; Source: mail.example",
                               received_at=NOW - ago, **fields)

    kim_sent = log(weekly, kim, kim.email, LogStatus.SENT)
    log(weekly, kim, kim.email)  # pending: fails with reason 8
    log(sms2, kim, kim.phone)  # pending SMS: an email complaint leaves it as it is
    complaint(kim_sent, ago=DAY)
    complaint(kim_sent, ago=timedelta(hours=20))  # a second report: already on the denylist
    complaint(log(weekly, None, "ivan@example.com", LogStatus.SENT), ago=timedelta(hours=5))  # quarantined before
    complaint(987655, ago=timedelta(hours=4))
    log(weekly, lena, lena.email)  # pending, never answered: weekly stays in progress
    for who in (lena, mona, nora):
        log(sms2, who, who.phone)

    def reply(phone: str, text: str, *, ago: timedelta) -> None:
        InboundSmsFactory(phone=phone, text=text, received_at=NOW - ago)

    reply(lena.phone, "Stop.", ago=DAY)
    reply("0033 6 20 00 00 02", " arrêt ", ago=timedelta(hours=20))  # mona, written another way
    reply("+33699999999", "UNSUBSCRIBE", ago=timedelta(hours=10))  # a number no profile has
    reply(nora.phone, "Thanks, see you!", ago=timedelta(hours=9))
    reply(nora.phone, "stop please", ago=timedelta(hours=8))  # not a keyword as a whole
    reply(lena.phone, "STOP", ago=timedelta(hours=2))  # already on the denylist


ASCII_LETTERS_AND_DIGITS = "abcdefghijklmnopqrstuvwxyz0123456789"
#: The workflow's default opt-out keywords, as the reference compares them.
KEYWORDS = {"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "revoke", "arret"}


def reference(*, now: datetime, threshold: int = 5, interval_days: int = 1, reset_days: int = 10) -> dict[str, Any]:
    """What the database must hold after consolidation, read off the rules one raw row at a time."""
    rule_rows = sorted(BounceRule.objects.values_list("priority", "id", "pattern", "failure_type", "failure_reason"))

    def qualify(text: str) -> tuple[int, int]:
        for _priority, _id, pattern, failure_type, failure_reason in rule_rows:
            if re.search(pattern, text, flags=re.IGNORECASE):
                return failure_type, failure_reason
        return FailureType.SOFT, FailureReason.NONE

    channel_of = dict(Delivery.objects.values_list("id", "channel"))
    logs = {row["id"]: row for row in DeliveryLog.objects.values(
        "id", "delivery_id", "profile_id", "address", "status", "failure_type", "failure_reason", "error_text", "updated_at")}
    quarantine = {(row.pop("address"), row.pop("channel")): row for row in Quarantine.objects.values(
        "address", "channel", "status", "error_count", "first_error_at", "last_error_at", "failure_type", "failure_reason",
        "error_text")}

    def record_error(key: tuple[str, str], at: datetime, failure_type: int, failure_reason: int, text: str) -> None:
        """One error of an address; a hard error of reason 8 puts it on the denylist, and its logs
        still pending on that channel then fail with that reason."""
        entry = quarantine.get(key)
        denylisting = (failure_type, failure_reason) == (FailureType.HARD, FailureReason.ON_DENYLIST)
        if failure_type == FailureType.IGNORED or (entry and entry["status"] == DENYLISTED):
            return
        if entry and entry["status"] == QUARANTINED and not denylisting:
            return
        if entry is None or entry["status"] == Quarantine.Status.VALID:
            entry = quarantine[key] = {"error_count": 0, "first_error_at": at, "last_error_at": None}
        last = entry["last_error_at"]
        if last is not None and at - last > timedelta(days=reset_days):
            entry.update(error_count=0, first_error_at=at, last_error_at=None)
            last = None
        if failure_type == FailureType.HARD or last is None or at - last >= timedelta(days=interval_days):
            entry.update(error_count=entry["error_count"] + 1, last_error_at=at)
        quarantined = failure_type == FailureType.HARD or entry["error_count"] >= threshold
        entry.update(status=DENYLISTED if denylisting else QUARANTINED if quarantined else ERRONEOUS,
                     failure_type=failure_type, failure_reason=failure_reason, error_text=text)
        if entry["first_error_at"] is None:
            entry["first_error_at"] = at
        if denylisting:
            for log in logs.values():
                if (log["address"], channel_of[log["delivery_id"]]) == key and log["status"] == LogStatus.PENDING:
                    log.update(status=LogStatus.FAILED, failure_type=FailureType.HARD,
                               failure_reason=FailureReason.ON_DENYLIST, error_text="Address on denylist", updated_at=now)

    for feedback in SendingFeedback.objects.order_by("id"):
        log = logs.get(feedback.delivery_log_id)
        if log is None or feedback.outcome == DEFERRED:
            continue
        key = (log["address"], channel_of[log["delivery_id"]])
        if feedback.outcome == COMPLAINT:
            record_error(key, feedback.received_at, FailureType.HARD, FailureReason.ON_DENYLIST, feedback.error_text)
            continue
        if feedback.outcome == DELIVERED:
            log.update(status=LogStatus.SENT, failure_type=0, failure_reason=0, error_text="", updated_at=now)
            continue
        failure_type, failure_reason = qualify(feedback.error_text)
        log.update(status=LogStatus.FAILED, failure_type=failure_type, failure_reason=failure_reason,
                   error_text=feedback.error_text, updated_at=now)
        record_error(key, feedback.received_at, failure_type, failure_reason, feedback.error_text)

    for reply in InboundSms.objects.order_by("id"):
        word = "".join(c for c in unicodedata.normalize("NFKD", reply.text.lower()) if c in ASCII_LETTERS_AND_DIGITS)
        number = reply.phone.replace(" ", "")
        number = "+" + number[2:] if number.startswith("00") else number
        if word in KEYWORDS:
            record_error((number, Channel.SMS), reply.received_at, FailureType.HARD, FailureReason.ON_DENYLIST, reply.text)

    blocklist = {row["id"]: row
                 for row in Profile.objects.values("id", "blocklisted_email", "blocklisted_sms", "blocklisted_push")}
    tracking = []
    for hit in TrackingHit.objects.order_by("id"):
        log = logs.get(hit.delivery_log_id)
        if log is None:
            continue
        tracking.append((hit.delivery_log_id, log["delivery_id"], hit.url_type, hit.url, hit.hit_at))
        if hit.url_type == UrlType.OPT_OUT and log["profile_id"] is not None:
            blocklist[log["profile_id"]][f"blocklisted_{channel_of[log['delivery_id']]}"] = True

    deliveries = {row["id"]: row for row in Delivery.objects.values("id", "state", "validity_end", "finished_at")}
    for log in logs.values():
        validity_end = deliveries[log["delivery_id"]]["validity_end"]
        if log["status"] == LogStatus.PENDING and validity_end is not None and validity_end < now:
            log.update(status=LogStatus.CANCELLED, updated_at=now)
    for delivery_id, delivery in deliveries.items():
        own = [log for log in logs.values() if log["delivery_id"] == delivery_id]
        ended = delivery["validity_end"] is not None and delivery["validity_end"] < now
        if delivery["state"] == IN_PROGRESS and not any(log["status"] == LogStatus.PENDING for log in own) and (ended or own):
            delivery.update(state=FINISHED, finished_at=now)
        del delivery["validity_end"]

    return {
        "logs": {log_id: {k: v for k, v in row.items() if k not in ("id", "delivery_id", "profile_id", "address")}
                 for log_id, row in logs.items()},
        "quarantine": quarantine,
        "tracking": tracking,
        "profiles": blocklist,
        "deliveries": deliveries,
    }


def observed() -> dict[str, Any]:
    return {
        "logs": {row.pop("id"): row for row in DeliveryLog.objects.values(
            "id", "status", "failure_type", "failure_reason", "error_text", "updated_at")},
        "quarantine": {(row.pop("address"), row.pop("channel")): row for row in Quarantine.objects.values(
            "address", "channel", "status", "error_count", "first_error_at", "last_error_at", "failure_type",
            "failure_reason", "error_text")},
        "tracking": list(TrackingLog.objects.order_by("id")
                         .values_list("delivery_log_id", "delivery_id", "url_type", "url", "tracked_at")),
        "profiles": {row["id"]: row
                     for row in Profile.objects.values("id", "blocklisted_email", "blocklisted_sms", "blocklisted_push")},
        "deliveries": {row["id"]: row for row in Delivery.objects.values("id", "state", "finished_at")},
    }


def assert_matches(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    for part in expected:  # part by part, so a failure names what differs
        assert actual[part] == expected[part], part


def test_a_run_writes_exactly_what_the_spec_says_on_a_fixed_dataset(frozen, rules):
    data = build_dataset(rules)
    expected = reference(now=NOW)

    run = run_workflow()

    assert run.status == RunStatus.SUCCEEDED
    assert_matches(observed(), expected)
    # A few spot checks that the reference itself reads the rules right.
    assert expected["quarantine"][("carol@example.com", Channel.EMAIL)]["status"] == QUARANTINED
    assert expected["quarantine"][("greg@example.com", Channel.EMAIL)]["error_count"] == 2
    assert expected["quarantine"][("hank@example.com", Channel.EMAIL)]["error_count"] == 1
    assert expected["quarantine"][("erin@example.com", Channel.SMS)]["status"] == ERRONEOUS
    assert expected["profiles"][data.profiles["alice"].pk] | {"id": 0} == {
        "id": 0, "blocklisted_email": True, "blocklisted_sms": True, "blocklisted_push": False}
    states = {name: Delivery.objects.get(pk=delivery.pk).state for name, delivery in data.deliveries.items()}
    assert states == {"email": FINISHED, "email2": IN_PROGRESS, "sms": FINISHED, "push": IN_PROGRESS,
                      "stopped": Delivery.State.STOPPED, "empty": IN_PROGRESS, "empty_expired": FINISHED,
                      "draft": Delivery.State.DRAFT}
    assert {name: run.counters[name] for name in ("feedback_delivered", "feedback_bounce", "feedback_deferred",
                                                   "hard_bounces", "soft_bounces", "ignored_bounces", "hits",
                                                   "tracking_logs_written", "logs_cancelled", "deliveries_finished")} == {
        "feedback_delivered": 5, "feedback_bounce": 14, "feedback_deferred": 4, "hard_bounces": 2, "soft_bounces": 11,
        "ignored_bounces": 1, "hits": 10, "tracking_logs_written": 9, "logs_cancelled": 3, "deliveries_finished": 3}


def test_the_same_dataset_with_other_properties_follows_them(frozen, rules):
    build_dataset(rules)
    expected = reference(now=NOW, threshold=2, interval_days=0, reset_days=3)
    set_properties(quarantine_threshold=2, error_interval_days=0, counter_reset_days=3)

    run_workflow(batch_size=3)

    assert_matches(observed(), expected)


def test_a_second_run_changes_nothing(frozen, rules):
    build_dataset(rules)
    run_workflow()
    first = observed()

    frozen.move_to(NOW + timedelta(minutes=10), tick=False)
    second = run_workflow()

    assert observed() == first, "no row rewritten, no updated_at moved"
    assert second.counters.get("logs_updated", 0) == 0 and second.counters.get("tracking_logs_written", 0) == 0
    assert second.counters.get("logs_cancelled", 0) == 0 and second.counters.get("deliveries_finished", 0) == 0
    assert second.counters.get("addresses_denylisted", 0) == 0 and second.counters.get("logs_denylisted", 0) == 0


def test_new_raw_rows_are_consolidated_by_the_next_run_only(frozen, rules):
    build_dataset(rules)
    run_workflow()
    log = DeliveryLogFactory(delivery=DeliveryFactory(state=IN_PROGRESS, validity_end=NOW + DAY))
    SendingFeedbackFactory(delivery_log=log, outcome=DELIVERED)
    TrackingHitFactory(delivery_log=log, url_type=UrlType.OPEN)

    run = run_workflow()

    assert (run.counters["feedback_delivered"], run.counters["logs_updated"], run.counters["hits"]) == (1, 1, 1)
    assert run.progress_done == 2
    assert DeliveryLog.objects.get(pk=log.pk).status == LogStatus.SENT


class Crash(RuntimeError):
    pass


def crash_after(monkeypatch: pytest.MonkeyPatch, name: str, calls: int) -> None:
    """Make ``module.<name>`` raise on call number ``calls + 1`` — inside a batch's transaction."""
    original = getattr(module, name)
    seen = {"calls": 0}

    def wrapper(**kwargs: Any) -> Any:
        seen["calls"] += 1
        if seen["calls"] > calls:
            raise Crash(f"killed in batch {seen['calls']}")
        return original(**kwargs)

    monkeypatch.setattr(module, name, wrapper)


@pytest.mark.parametrize("step", ["_update_logs", "update_quarantine", "fail_pending_logs", "_insert_tracking_logs",
                                  "_apply_opt_outs"])
def test_a_run_killed_inside_a_batch_then_rerun_gives_the_uninterrupted_result(frozen, rules, monkeypatch, step):
    build_dataset(rules)
    expected = reference(now=NOW)

    with monkeypatch.context() as patch:
        if step == "update_quarantine":
            original = module.update_quarantine
            seen = {"calls": 0}

            def flaky(bounces: Any, *, policy: Any) -> Any:
                seen["calls"] += 1
                if seen["calls"] > 2:
                    raise Crash("killed while writing the quarantine")
                return original(bounces, policy=policy)

            patch.setattr(module, "update_quarantine", flaky)
        else:
            crash_after(patch, step, calls=2)
        crashed = run_workflow(batch_size=3)
    assert crashed.status == RunStatus.FAILED and "killed" in crashed.reason
    assert observed() != expected, "the crash happened before the end"

    rerun = run_workflow(batch_size=3)

    assert rerun.status == RunStatus.SUCCEEDED
    assert_matches(observed(), expected)


def test_a_run_killed_while_reading_sms_replies_then_rerun_gives_the_uninterrupted_result(frozen, rules, monkeypatch):
    build_dataset(rules)
    expected = reference(now=NOW)
    original_errors, original_keywords = module.record_errors, module.opt_out_keywords
    seen = {"in_sms_activity": False, "sms_batches": 0}

    def keywords(setting: str) -> Any:  # read once, when the SMS activity starts
        seen["in_sms_activity"] = True
        return original_keywords(setting)

    def flaky(events: Any, *, policy: Any, now: datetime) -> Any:
        if seen["in_sms_activity"]:
            seen["sms_batches"] += 1
            if seen["sms_batches"] == 2:
                raise Crash("killed while denylisting numbers")
        return original_errors(events, policy=policy, now=now)

    with monkeypatch.context() as patch:
        patch.setattr(module, "opt_out_keywords", keywords)
        patch.setattr(module, "record_errors", flaky)
        crashed = run_workflow(batch_size=2)
    assert crashed.status == RunStatus.FAILED and "killed" in crashed.reason
    cursors = Workflow.objects.get(pk=ID).cursors
    assert cursors[module.FEEDBACK_CURSOR] == SendingFeedback.objects.order_by("-id")[0].pk
    assert 0 < cursors[module.INBOUND_SMS_CURSOR] < InboundSms.objects.order_by("-id")[0].pk

    rerun = run_workflow(batch_size=2)

    assert rerun.status == RunStatus.SUCCEEDED
    assert_matches(observed(), expected)


def test_a_run_paused_between_batches_continues_to_the_uninterrupted_result(frozen, rules, monkeypatch):
    build_dataset(rules)
    expected = reference(now=NOW)
    original = module._update_logs
    seen = {"calls": 0}

    def pause_after_second_batch(**kwargs: Any) -> int:
        seen["calls"] += 1
        if seen["calls"] == 2:
            commands.pause(ID, actor="operator")
        return original(**kwargs)

    monkeypatch.setattr(module, "_update_logs", pause_after_second_batch)
    paused = run_workflow(batch_size=4)
    assert (paused.status, paused.halted_activity) == (RunStatus.PAUSED, "consolidate_sending_feedback")
    assert Workflow.objects.get(pk=ID).cursors[module.FEEDBACK_CURSOR] == SendingFeedback.objects.order_by("id")[7].pk

    Workflow.objects.filter(pk=ID).update(state=WorkflowState.STARTED)
    continued = execute(RunRequest(workflow_id=ID, trigger=Trigger.SHELL, run_id=paused.pk))

    assert continued.status == RunStatus.SUCCEEDED
    assert_matches(observed(), expected)
