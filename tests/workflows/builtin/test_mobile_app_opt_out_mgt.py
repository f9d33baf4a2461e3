"""mobileAppOptOutMgt: push subscriptions are disabled exactly for the tokens that hard push
failures with reason 1 (user unknown) or 20 (refused) reported.

The expected outcome is computed here in plain Python from the rows as created (codes written out,
not imported from the workflow), then compared with every subscription's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from campaign.audience import push_targets
from campaign.models import AppSubscription, DeliveryLog, Profile
from tests import factories
from tests.workflows.helpers import fail_on_call
from workflows import commands
from workflows.builtin import mobile_app_opt_out_mgt
from workflows.models import RunStatus, Workflow, WorkflowLog, WorkflowRun

WORKFLOW_ID = "mobileAppOptOutMgt"

FAILED, SENT, PENDING = 2, 1, 6
SOFT, HARD = 1, 2
USER_UNKNOWN, INVALID_DOMAIN, UNREACHABLE, REFUSED = 1, 2, 3, 20


@dataclass
class Dataset:
    now: datetime
    subscriptions: dict[int, dict[str, Any]]  # by id, as created
    logs: list[dict[str, Any]]  # as created


def run(**overrides: Any) -> WorkflowRun:
    return commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides=overrides or None)


def subscription_rows() -> dict[int, dict[str, Any]]:
    return {row["id"]: row for row in AppSubscription.objects.values(
        "id", "profile_id", "application", "device_token", "disabled", "disabled_reason", "updated_at")}


def build(now: datetime) -> Dataset:
    """Subscriptions and logs covering every rule; updated_at spread over the last hours."""
    alice, bob, carol = (factories.ProfileFactory(email=f"{name}@example.com") for name in ("alice", "bob", "carol"))
    push = factories.DeliveryFactory(channel="push", label="push")
    email = factories.DeliveryFactory(channel="email", label="email")
    sms = factories.DeliveryFactory(channel="sms", label="sms")
    old = now - timedelta(days=3)

    def subscription(profile: Profile, token: str, *, application: str = "com.example.shop", disabled: bool = False,
                     reason: int | None = None) -> None:
        factories.AppSubscriptionFactory(profile=profile, device_token=token, application=application,
                                         disabled=disabled, disabled_reason=reason, updated_at=old)

    subscription(alice, "tok-unknown")           # hard push failure, reason 1
    subscription(alice, "tok-refused")           # hard push failure, reason 20
    subscription(bob, "tok-soft")                # soft failure: stays
    subscription(bob, "tok-other-reason")        # hard, reason 3 unreachable: stays
    subscription(bob, "tok-ignored-type")        # failure type 3 (ignored): stays
    subscription(carol, "tok-sent")              # delivered: stays
    subscription(carol, "tok-pending")           # pending: stays
    subscription(carol, "tok-email")             # reason 1 but on an email delivery: stays
    subscription(carol, "tok-sms")               # reason 20 but on an SMS delivery: stays
    subscription(alice, "tok-shared", application="com.example.shop")    # log of alice: disabled
    subscription(bob, "tok-shared", application="com.example.news")      # same token, bob's: stays
    subscription(alice, "tok-anonymous", application="com.example.shop")  # log without profile: both
    subscription(bob, "tok-anonymous", application="com.example.news")
    subscription(carol, "tok-two-failures")      # reason 1, then 20 later: disabled for 1 (the first)
    subscription(bob, "tok-already", disabled=True, reason=USER_UNKNOWN)  # disabled earlier: untouched
    subscription(carol, "tok-other-profile")     # the log names alice: no match

    def log(delivery: Any, token: str, status: int, failure_type: int, reason: int, minutes_ago: int,
            profile: Profile | None = alice) -> None:
        factories.DeliveryLogFactory(delivery=delivery, profile=profile, address=token, status=status,
                                     failure_type=failure_type, failure_reason=reason,
                                     updated_at=now - timedelta(minutes=minutes_ago))

    log(push, "tok-unknown", FAILED, HARD, USER_UNKNOWN, 300)
    log(push, "tok-refused", FAILED, HARD, REFUSED, 290)
    log(push, "tok-soft", FAILED, SOFT, USER_UNKNOWN, 280, bob)
    log(push, "tok-other-reason", FAILED, HARD, UNREACHABLE, 270, bob)
    log(push, "tok-other-reason", FAILED, HARD, INVALID_DOMAIN, 265, bob)
    log(push, "tok-ignored-type", FAILED, 3, REFUSED, 260, bob)
    log(push, "tok-sent", SENT, 0, 0, 250, carol)
    log(push, "tok-pending", PENDING, 0, 0, 240, carol)
    log(email, "tok-email", FAILED, HARD, USER_UNKNOWN, 230, carol)
    log(sms, "tok-sms", FAILED, HARD, REFUSED, 220, carol)
    log(push, "tok-shared", FAILED, HARD, USER_UNKNOWN, 210, alice)
    log(push, "tok-anonymous", FAILED, HARD, REFUSED, 200, None)
    log(push, "tok-two-failures", FAILED, HARD, USER_UNKNOWN, 190, carol)
    log(push, "tok-two-failures", FAILED, HARD, REFUSED, 180, carol)
    log(push, "tok-already", FAILED, HARD, REFUSED, 170, bob)
    log(push, "tok-other-profile", FAILED, HARD, USER_UNKNOWN, 160, alice)
    log(push, "tok-no-subscription", FAILED, HARD, USER_UNKNOWN, 150, None)
    for index in range(8):  # ordinary traffic around the failures
        log(push, "tok-sent", SENT, 0, 0, 140 - index, carol)

    logs = list(DeliveryLog.objects.values("id", "delivery__channel", "profile_id", "address", "status",
                                           "failure_type", "failure_reason", "updated_at"))
    return Dataset(now=now, subscriptions=subscription_rows(), logs=logs)


def reporting_logs(data: Dataset, *, until: datetime) -> list[dict[str, Any]]:
    return [log for log in data.logs
            if log["delivery__channel"] == "push" and log["status"] == FAILED and log["failure_type"] == HARD
            and log["failure_reason"] in (USER_UNKNOWN, REFUSED) and log["updated_at"] <= until]


def expected_outcome(data: Dataset, *, until: datetime) -> tuple[dict[int, tuple[bool, int | None]], dict[str, int]]:
    """(id → (disabled, disabled_reason)) and the counters, computed from the rows as created."""
    failures = reporting_logs(data, until=until)
    outcome, counters = {}, {"failures": len(failures), "disabled": 0, "already_disabled": 0, "no_subscription": 0}
    for sub_id, sub in data.subscriptions.items():
        matching = sorted((log for log in failures if log["address"] == sub["device_token"]
                           and log["profile_id"] in (None, sub["profile_id"])),
                          key=lambda log: (log["updated_at"], log["id"]))
        if matching and sub["disabled"]:
            counters["already_disabled"] += 1
        if matching and not sub["disabled"]:
            counters["disabled"] += 1
            outcome[sub_id] = (True, matching[0]["failure_reason"])  # the first report disabled it
        else:
            outcome[sub_id] = (sub["disabled"], sub["disabled_reason"])
    for log in failures:
        if not any(sub["device_token"] == log["address"] and log["profile_id"] in (None, sub["profile_id"])
                   for sub in data.subscriptions.values()):
            counters["no_subscription"] += 1
    return outcome, counters


@pytest.fixture
def data(db) -> Dataset:
    return build(timezone.now())


def assert_subscriptions(data: Dataset, expected: dict[int, tuple[bool, int | None]], *, since: datetime) -> None:
    rows = subscription_rows()
    assert set(rows) == set(data.subscriptions)
    for sub_id, row in rows.items():
        before = data.subscriptions[sub_id]
        assert (row["disabled"], row["disabled_reason"]) == expected[sub_id], before["device_token"]
        changed = expected[sub_id] != (before["disabled"], before["disabled_reason"])
        if changed:
            assert row["updated_at"] >= since, f"{before['device_token']}: updated_at stamped"
        else:
            assert row["updated_at"] == before["updated_at"], f"{before['device_token']}: untouched"
        assert (row["profile_id"], row["application"], row["device_token"]) == \
            (before["profile_id"], before["application"], before["device_token"])


# --- What is disabled ---------------------------------------------------------------------------


def test_disables_exactly_the_subscriptions_reported_by_hard_push_failures_with_reason_1_or_20(data):
    started = timezone.now()
    expected, counters = expected_outcome(data, until=started)
    disabled_tokens = {data.subscriptions[i]["device_token"] for i, (off, _) in expected.items()
                       if off and not data.subscriptions[i]["disabled"]}
    assert disabled_tokens == {"tok-unknown", "tok-refused", "tok-shared", "tok-anonymous", "tok-two-failures"}

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert_subscriptions(data, expected, since=started)
    assert {key: result.counters[key] for key in counters} == counters == {
        "failures": 9, "disabled": 6, "already_disabled": 1, "no_subscription": 2}
    assert result.counters["logs_examined"] == len(data.logs)
    shared = AppSubscription.objects.get(device_token="tok-shared", application="com.example.news")
    assert not shared.disabled, "the log named alice: bob's subscription to the same token stays"
    assert AppSubscription.objects.get(device_token="tok-two-failures").disabled_reason == USER_UNKNOWN, "first report"
    assert WorkflowLog.objects.filter(run=result, message__contains="6 subscriptions disabled").exists()


def test_disabled_subscriptions_are_no_longer_push_targets(data):
    before = set(push_targets(Profile.objects.all()).values_list("device_token", flat=True))

    run()

    after = set(push_targets(Profile.objects.all()).values_list("device_token", flat=True))
    assert before - after == {"tok-unknown", "tok-refused", "tok-anonymous", "tok-two-failures"}
    assert "tok-shared" in after, "bob's subscription to the shared token is still a target"
    assert set(AppSubscription.objects.filter(disabled=False).values_list("id", flat=True)) == \
        set(push_targets(Profile.objects.all()).values_list("id", flat=True))


# --- Incremental, idempotent, interrupted ---------------------------------------------------------


def test_a_second_run_reads_no_log_again_and_changes_nothing(data):
    run()
    after_first = subscription_rows()

    second = run()

    assert second.status == RunStatus.SUCCEEDED
    assert subscription_rows() == after_first
    assert (second.counters["logs_examined"], second.counters["disabled"]) == (0, 0)


def test_rereading_every_log_from_scratch_disables_nothing_twice(data):
    first = run()
    after_first = subscription_rows()
    Workflow.objects.filter(pk=WORKFLOW_ID).update(cursors={})

    again = run()

    assert subscription_rows() == after_first, "updated_at of disabled rows is not stamped again"
    assert again.counters["disabled"] == 0
    assert again.counters["already_disabled"] == first.counters["disabled"] + first.counters["already_disabled"]


def test_logs_updated_within_the_margin_wait_for_a_later_run(data):
    late = factories.DeliveryLogFactory(
        delivery=factories.DeliveryFactory(channel="push"), profile=None, address="tok-pending", status=FAILED,
        failure_type=HARD, failure_reason=USER_UNKNOWN, updated_at=timezone.now() - timedelta(minutes=2),
    )

    run()
    assert not AppSubscription.objects.get(device_token="tok-pending").disabled, "inside the 10-minute margin"

    later = run(margin_minutes=1)
    assert AppSubscription.objects.get(device_token="tok-pending").disabled
    assert later.counters["logs_examined"] == 1 and later.counters["disabled"] == 1
    assert Workflow.objects.get(pk=WORKFLOW_ID).cursors[mobile_app_opt_out_mgt.CURSOR]["id"] == late.pk


def test_a_log_that_fails_after_the_last_run_is_picked_up_by_the_next(data):
    run()
    pending = DeliveryLog.objects.get(address="tok-pending")
    DeliveryLog.objects.filter(pk=pending.pk).update(
        status=FAILED, failure_type=HARD, failure_reason=REFUSED, updated_at=timezone.now() - timedelta(minutes=30))

    result = run()

    subscription = AppSubscription.objects.get(device_token="tok-pending")
    assert (subscription.disabled, subscription.disabled_reason) == (True, REFUSED)
    assert result.counters["logs_examined"] == 1


def test_a_run_interrupted_between_batches_then_rerun_ends_like_an_uninterrupted_run(data, monkeypatch):
    started = timezone.now()
    expected, counters = expected_outcome(data, until=started)
    monkeypatch.setattr(mobile_app_opt_out_mgt, "disable_reported_subscriptions",
                        fail_on_call(3, mobile_app_opt_out_mgt.disable_reported_subscriptions))

    crashed = run(batch_size=4)

    assert crashed.status == RunStatus.FAILED and "simulated crash" in crashed.reason
    assert crashed.counters["logs_examined"] == 8, "two committed batches of 4"
    partly = {data.subscriptions[i]["device_token"] for i, row in subscription_rows().items()
              if row["disabled"] and not data.subscriptions[i]["disabled"]}
    assert partly == {"tok-unknown", "tok-refused"}, "the first 8 logs (oldest first) name these two"

    monkeypatch.undo()
    rerun = run(batch_size=4)

    assert rerun.status == RunStatus.SUCCEEDED
    assert_subscriptions(data, expected, since=started)
    for name, value in counters.items():
        assert crashed.counters.get(name, 0) + rerun.counters[name] == value, name
    assert crashed.counters["logs_examined"] + rerun.counters["logs_examined"] == len(data.logs)


def test_batch_boundaries_do_not_change_the_result(data):
    started = timezone.now()
    expected, counters = expected_outcome(data, until=started)

    result = run(batch_size=1)

    assert_subscriptions(data, expected, since=started)
    for name in ("failures", "disabled", "no_subscription"):
        assert result.counters[name] == counters[name], name
    assert result.counters["already_disabled"] == counters["already_disabled"] + 1, \
        "tok-two-failures' second report, in a later batch, finds it disabled by the first"
