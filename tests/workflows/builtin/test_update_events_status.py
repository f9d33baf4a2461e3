"""updateEventsStatus: every status transition, routing to the latest published template, the
month's execution delivery, expiry, idempotent reruns and interrupted runs.

Expected results are computed here in plain Python from the rows as they were created (the
status codes and the routing rule are spelled out, not imported from the workflow), then compared
field by field with what the run left.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from campaign.models import Delivery, DeliveryLog, Event, MessageTemplate
from tests import factories
from workflows import commands
from workflows.builtin import update_events_status
from workflows.engine import RunRequest, execute
from workflows.models import RunStatus, Trigger, WorkflowRun

WORKFLOW_ID = "updateEventsStatus"
NOW = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)

#: Log status → event status, as the status rules say (written out, not imported).
OUTCOMES = {1: "sent", 2: "delivery_failed", 0: "ignored", 7: "ignored"}
FINAL = {"sent", "ignored", "delivery_failed", "not_taken_into_account", "too_old"}

EVENT_FIELDS = ("id", "event_type", "channel", "email", "phone", "status", "template_id", "delivery_log_id",
                "created_at", "processed_at", "updated_at")


@pytest.fixture
def now(time_machine) -> datetime:
    time_machine.move_to(NOW, tick=False)
    return NOW


def run(**overrides: Any) -> WorkflowRun:
    return commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides=overrides or None)


def template(label: str, event_type: str, channel: str, *, published: bool = True,
             published_ago: timedelta | None = timedelta(days=1)) -> MessageTemplate:
    published_at = NOW - published_ago if published and published_ago is not None else None
    return factories.MessageTemplateFactory(label=label, event_type=event_type, channel=channel, published=published,
                                            published_at=published_at)


def make_templates() -> None:
    """Routes of every kind: superseded versions, an unpublished newer draft, a published template
    without a publication time (ranked last), a type published on one channel only."""
    template("Order v1", "order", "email", published_ago=timedelta(days=30))
    template("Order v2", "order", "email", published_ago=timedelta(days=2))
    template("Order v3 draft", "order", "email", published=False)
    template("Order SMS", "order", "sms")
    template("Reset (no date)", "reset", "email", published_ago=None)
    template("Reset", "reset", "email", published_ago=timedelta(days=90))
    template("Shipping push", "shipping", "push")
    template("Newsletter draft", "newsletter", "email", published=False)


def make_events() -> None:
    """Pending events of routable and unroutable types, at every age around the expiry; events
    pending delivery with a log in each status; final events that must stay as they are."""
    ages = [timedelta(minutes=5), timedelta(hours=23, minutes=59), timedelta(hours=24, minutes=1), timedelta(days=3)]
    recipients = [("email", "a@example.com", ""), ("sms", "", "+33612345678"), ("push", "", "+33699999999"),
                  ("push", "b@example.com", "+33600000000")]
    index = 0
    for event_type in ("order", "reset", "shipping", "newsletter", "unknown.type-1"):
        for channel, email, phone in recipients:
            for age in ages:
                index += 1
                factories.EventFactory(event_type=event_type, channel=channel, email=email, phone=phone,
                                       payload={"n": index}, created_at=NOW - age, updated_at=NOW - age)
    delivery = factories.DeliveryFactory(kind=Delivery.Kind.TRANSACTIONAL, template=MessageTemplate.objects.get(label="Order v1"),
                                         state=Delivery.State.IN_PROGRESS, campaign=None)
    for log_status in (0, 1, 2, 6, 7, 1, 2):
        log = factories.DeliveryLogFactory(delivery=delivery, profile=None, address="c@example.com", status=log_status)
        event = factories.EventFactory(event_type="order", status="pending_delivery", template=delivery.template,
                                       delivery_log_id=log.pk, created_at=NOW - timedelta(hours=30))
        DeliveryLog.objects.filter(pk=log.pk).update(event_id=event.pk)
    factories.EventFactory(event_type="order", status="pending_delivery", delivery_log_id=None,
                           created_at=NOW - timedelta(hours=2))  # no log (set by hand): waits
    for status in FINAL:
        factories.EventFactory(event_type="order", status=status, created_at=NOW - timedelta(days=2),
                               processed_at=NOW - timedelta(days=2))


def snapshot() -> dict[int, dict[str, Any]]:
    return {row["id"]: row for row in Event.objects.values(*EVENT_FIELDS)}


def latest_template(event_type: str, channel: str) -> MessageTemplate | None:
    candidates = [t for t in MessageTemplate.objects.all() if t.published and (t.event_type, t.channel) == (event_type, channel)]
    if not candidates:
        return None
    return max(candidates, key=lambda t: (t.published_at is not None, t.published_at or NOW, t.pk))


def expected_outcome(event: dict[str, Any], *, now: datetime, expiry: timedelta, logs: dict[int, int]) -> dict[str, Any]:
    """What the run must make of one event: status, template, and (if routed) its log."""
    status = event["status"]
    if status == "pending":
        if event["created_at"] < now - expiry:
            return {"status": "too_old", "template_id": None, "final": True}
        chosen = latest_template(event["event_type"], event["channel"])
        if chosen is None:
            return {"status": "not_taken_into_account", "template_id": None, "final": True}
        address = {"email": event["email"], "sms": event["phone"]}.get(event["channel"]) or event["email"] or event["phone"]
        return {"status": "pending_delivery", "template_id": chosen.pk, "final": False, "address": address,
                "delivery_label": f"{chosen.label} — {now:%Y-%m}", "channel": chosen.channel}
    if status == "pending_delivery" and event["delivery_log_id"] in logs and logs[event["delivery_log_id"]] in OUTCOMES:
        return {"status": OUTCOMES[logs[event["delivery_log_id"]]], "template_id": event["template_id"], "final": True}
    return {"status": status, "template_id": event["template_id"], "unchanged": True}


def assert_run_result(before: dict[int, dict[str, Any]], *, now: datetime, expiry: timedelta = timedelta(hours=24),
                      logs_before: dict[int, int]) -> None:
    after = snapshot()
    assert set(after) == set(before), "no event appears or disappears"
    new_logs = {log.event_id: log for log in DeliveryLog.objects.exclude(pk__in=list(logs_before)).select_related("delivery")}
    routed = set()
    for event_id, event in before.items():
        expected = expected_outcome(event, now=now, expiry=expiry, logs=logs_before)
        got = after[event_id]
        assert (event_id, got["status"], got["template_id"]) == (event_id, expected["status"], expected["template_id"])
        if expected.get("unchanged"):
            assert got == event, f"event #{event_id} must not change"
            continue
        assert got["updated_at"] == now, f"event #{event_id}: a changed event is stamped"
        assert got["processed_at"] == (now if expected["final"] else None)
        if expected["status"] == "pending_delivery":
            routed.add(event_id)
            log = new_logs[event_id]
            assert got["delivery_log_id"] == log.pk
            assert (log.status, log.address, log.profile_id, log.variant, log.failure_type, log.failure_reason) == \
                (6, expected["address"], None, "", 0, 0)
            assert (log.created_at, log.updated_at) == (now, now)
            delivery = log.delivery
            assert (delivery.label, delivery.kind, delivery.template_id, delivery.channel, delivery.state, delivery.campaign_id) \
                == (expected["delivery_label"], "transactional", expected["template_id"], expected["channel"], "in_progress",
                    None)
        else:
            assert got["delivery_log_id"] == event["delivery_log_id"]
    assert set(new_logs) == routed, "exactly one new log per routed event, none for the others"
    assert DeliveryLog.objects.exclude(pk__in=list(logs_before)).count() == len(routed)


def log_statuses() -> dict[int, int]:
    return dict(DeliveryLog.objects.values_list("id", "status"))


def test_run_gives_every_event_its_status_template_and_log(db, now):
    make_templates()
    make_events()
    before, logs_before = snapshot(), log_statuses()

    result = run(batch_size=4, check_batch_size=4)

    assert result.status == RunStatus.SUCCEEDED
    assert_run_result(before, now=now, logs_before=logs_before)
    expected = [expected_outcome(event, now=now, expiry=timedelta(hours=24), logs=logs_before) for event in before.values()]
    statuses = [outcome["status"] for outcome in expected if not outcome.get("unchanged")]
    assert result.counters == {
        "too_old": statuses.count("too_old"),
        "sent": statuses.count("sent"),
        "delivery_failed": statuses.count("delivery_failed"),
        "ignored": statuses.count("ignored"),
        "routed": statuses.count("pending_delivery"),
        "not_taken_into_account": statuses.count("not_taken_into_account"),
        "deliveries_created": 4,
    }
    assert (statuses.count("pending_delivery"), statuses.count("too_old"), statuses.count("not_taken_into_account")) == \
        (10, 40, 30), "the dataset covers each case"


def test_routes_to_the_most_recently_published_template_of_the_type_and_channel(db, now):
    make_templates()
    events = {
        ("order", "email"): factories.EventFactory(event_type="order", channel="email"),
        ("order", "sms"): factories.EventFactory(event_type="order", channel="sms", email="", phone="+33611111111"),
        ("reset", "email"): factories.EventFactory(event_type="reset", channel="email"),
        ("shipping", "push"): factories.EventFactory(event_type="shipping", channel="push", email="", phone="+33622222222"),
    }

    run()

    labels = {pair: Event.objects.get(pk=event.pk).template.label for pair, event in events.items()}
    assert labels == {("order", "email"): "Order v2", ("order", "sms"): "Order SMS", ("reset", "email"): "Reset",
                      ("shipping", "push"): "Shipping push"}
    addresses = {pair: DeliveryLog.objects.get(event_id=event.pk).address for pair, event in events.items()}
    assert addresses == {("order", "email"): events["order", "email"].email, ("order", "sms"): "+33611111111",
                         ("reset", "email"): events["reset", "email"].email, ("shipping", "push"): "+33622222222"}


def test_event_type_or_channel_without_published_template_is_not_taken_into_account(db, now):
    make_templates()
    draft_only = factories.EventFactory(event_type="newsletter", channel="email")
    unknown = factories.EventFactory(event_type="never.heard-of", channel="email")
    other_channel = factories.EventFactory(event_type="reset", channel="sms", email="", phone="+33633333333")

    result = run()

    for event in (draft_only, unknown, other_channel):
        event.refresh_from_db()
        assert (event.status, event.template_id, event.delivery_log_id, event.processed_at) == \
            ("not_taken_into_account", None, None, now)
    assert DeliveryLog.objects.count() == 0 and Delivery.objects.count() == 0
    assert result.counters == {"not_taken_into_account": 3}


def test_expired_pending_event_becomes_too_old_and_is_never_routed(db, now):
    make_templates()
    expired = factories.EventFactory(event_type="order", created_at=now - timedelta(hours=7))
    fresh = factories.EventFactory(event_type="order", created_at=now - timedelta(hours=5))

    run(expiry_hours=6)

    expired.refresh_from_db()
    fresh.refresh_from_db()
    assert (expired.status, expired.processed_at, expired.delivery_log_id, expired.template_id) == ("too_old", now, None, None)
    assert fresh.status == "pending_delivery"
    assert list(DeliveryLog.objects.values_list("event_id", flat=True)) == [fresh.pk]


def test_final_log_status_is_copied_to_the_event_pending_delivery(db, now):
    make_templates()
    events = [factories.EventFactory(event_type="order") for _ in range(5)]
    run()
    logs = {event.pk: DeliveryLog.objects.get(event_id=event.pk) for event in events}
    for event, status in zip(events, (1, 2, 0, 7, 6), strict=True):
        DeliveryLog.objects.filter(pk=logs[event.pk].pk).update(status=status)

    second = run()

    statuses = list(Event.objects.filter(pk__in=[e.pk for e in events]).order_by("pk").values_list("status", "processed_at"))
    assert statuses == [("sent", now), ("delivery_failed", now), ("ignored", now), ("ignored", now), ("pending_delivery", None)]
    assert second.counters == {"sent": 1, "delivery_failed": 1, "ignored": 2}

    DeliveryLog.objects.filter(pk=logs[events[4].pk].pk).update(status=1)
    run()
    assert Event.objects.get(pk=events[4].pk).status == "sent"


def test_month_execution_delivery_is_created_once_and_reused_then_a_new_one_next_month(db, time_machine):
    time_machine.move_to(datetime(2026, 1, 10, 9, 0, tzinfo=UTC), tick=False)
    order = template("Order", "order", "email")
    factories.EventFactory.create_batch(3, event_type="order")
    run(batch_size=2, check_batch_size=2)
    january = Delivery.objects.get()
    assert (january.label, january.template_id, january.kind, january.state) == \
        ("Order — 2026-01", order.pk, "transactional", "in_progress")

    Delivery.objects.filter(pk=january.pk).update(state="finished")  # updateDeliveryExecInfo: nothing pending
    time_machine.move_to(datetime(2026, 1, 31, 23, 0, tzinfo=UTC), tick=False)
    factories.EventFactory(event_type="order")
    run()
    assert Delivery.objects.count() == 1, "reused within the month"
    assert DeliveryLog.objects.filter(delivery=january).count() == 4
    january.refresh_from_db()
    assert january.state == "in_progress", "a finished execution delivery that gets a pending log is in progress again"

    time_machine.move_to(datetime(2026, 2, 1, 0, 30, tzinfo=UTC), tick=False)
    factories.EventFactory(event_type="order")
    run()
    assert list(Delivery.objects.order_by("id").values_list("label", flat=True)) == ["Order — 2026-01", "Order — 2026-02"]


def test_month_follows_the_instance_time_zone(db, time_machine, settings):
    settings.TIME_ZONE = "Pacific/Auckland"  # UTC+13 in January
    time_machine.move_to(datetime(2026, 1, 31, 12, 0, tzinfo=UTC), tick=False)  # 1 Feb, 01:00 there
    template("Order", "order", "email")
    factories.EventFactory(event_type="order")

    run()

    delivery = Delivery.objects.get()
    assert delivery.label == "Order — 2026-02"
    start = datetime(2026, 2, 1, tzinfo=zoneinfo.ZoneInfo("Pacific/Auckland"))
    assert update_events_status.month_bounds(timezone.now())[0] == start


def test_month_bounds_keep_local_midnight_across_daylight_saving(settings):
    settings.TIME_ZONE = "Europe/Paris"
    zone = zoneinfo.ZoneInfo("Europe/Paris")
    start, end = update_events_status.month_bounds(datetime(2026, 3, 30, 12, 0, tzinfo=UTC))  # after the change
    assert (start, end) == (datetime(2026, 3, 1, tzinfo=zone), datetime(2026, 4, 1, tzinfo=zone))
    assert start.utcoffset() == timedelta(hours=1) and end.utcoffset() == timedelta(hours=2)


def test_second_run_changes_nothing(db, now):
    make_templates()
    make_events()
    run(batch_size=3, check_batch_size=3)
    events, logs, deliveries = snapshot(), list(DeliveryLog.objects.values()), list(Delivery.objects.values())

    again = run(batch_size=3, check_batch_size=3)

    assert again.status == RunStatus.SUCCEEDED
    assert snapshot() == events
    assert list(DeliveryLog.objects.values()) == logs
    assert list(Delivery.objects.values()) == deliveries
    assert again.counters == {}


def test_event_set_back_to_pending_with_a_log_is_never_given_a_second_one(db, now):
    make_templates()
    event = factories.EventFactory(event_type="order")
    run()
    first_log = DeliveryLog.objects.get(event_id=event.pk)
    Event.objects.filter(pk=event.pk).update(status="pending")  # an operator's edit in the admin

    run()

    event.refresh_from_db()
    assert (event.status, event.delivery_log_id) == ("pending_delivery", first_log.pk)
    assert DeliveryLog.objects.filter(event_id=event.pk).count() == 1


def test_event_with_a_lower_id_left_pending_is_still_routed(db, now):
    """A cursor that only moved forward would skip an event whose id is below those already
    processed (a late commit, an admin edit); each run starts at the lowest pending id."""
    make_templates()
    early, late = factories.EventFactory(event_type="order"), factories.EventFactory(event_type="order")
    Event.objects.filter(pk=early.pk).update(status="sent")  # as if it was not there yet
    run()
    assert Event.objects.get(pk=late.pk).status == "pending_delivery"
    Event.objects.filter(pk=early.pk).update(status="pending")

    run()

    assert Event.objects.get(pk=early.pk).status == "pending_delivery"
    assert DeliveryLog.objects.filter(event_id=early.pk).count() == 1


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("batch_function", ["expire_batch", "copy_outcomes_batch", "route_batch"])
def test_run_interrupted_between_batches_then_rerun_gives_the_uninterrupted_result(db, now, monkeypatch, batch_function):
    make_templates()
    make_events()
    before, logs_before = snapshot(), log_statuses()
    original = getattr(update_events_status, batch_function)
    calls = {"n": 0}

    def dies_in_the_third_batch(**arguments: Any) -> Any:
        calls["n"] += 1
        result = original(**arguments)  # its writes are done: the crash must roll them back
        if calls["n"] == 3:
            raise Interrupted("killed in the third batch")
        return result

    monkeypatch.setattr(update_events_status, batch_function, dies_in_the_third_batch)
    failed = run(batch_size=3, check_batch_size=3)

    assert failed.status == RunStatus.FAILED and "killed in the third batch" in failed.reason
    activity = failed.activities.order_by("-id").first()
    changed = sum(count for name, count in activity.counters.items() if name != "deliveries_created")
    assert 0 < changed <= 6, "two batches of 3 events committed, not the third"
    assert changed == 6 or batch_function == "copy_outcomes_batch", "every expired or routed event changes"
    monkeypatch.undo()

    rerun = run(batch_size=3, check_batch_size=3)

    assert rerun.status == RunStatus.SUCCEEDED
    assert_run_result(before, now=now, logs_before=logs_before)


def test_run_paused_between_batches_resumes_and_finishes_exactly(db, now, monkeypatch):
    make_templates()
    make_events()
    before, logs_before = snapshot(), log_statuses()
    original = update_events_status.route_batch
    calls = {"n": 0}

    def route_batch(**arguments: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            commands.pause(WORKFLOW_ID, actor="test")  # seen at the next batch boundary
        return original(**arguments)

    monkeypatch.setattr(update_events_status, "route_batch", route_batch)
    paused = run(batch_size=5, check_batch_size=5)
    assert (paused.status, paused.halted_activity) == (RunStatus.PAUSED, "route_events")
    assert Event.objects.filter(status="pending_delivery", delivery_log_id__isnull=False).count() > 0
    assert Event.objects.filter(status="pending").exists(), "halted before the end"

    commands.resume(WORKFLOW_ID, actor="test")
    continued = execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SHELL, run_id=paused.pk))

    assert continued.status == RunStatus.SUCCEEDED
    assert_run_result(before, now=now, logs_before=logs_before)


def test_expiry_takes_every_expired_event_across_batches_even_with_equal_creation_times(db, now):
    same = now - timedelta(days=2)
    expired = [factories.EventFactory(event_type="order", created_at=same) for _ in range(5)]
    expired += [factories.EventFactory(event_type="order", created_at=now - timedelta(days=3)) for _ in range(2)]
    fresh = factories.EventFactory(event_type="order", created_at=now - timedelta(hours=1))

    result = run(batch_size=2)

    assert set(Event.objects.filter(status="too_old").values_list("id", flat=True)) == {event.pk for event in expired}
    assert Event.objects.get(pk=fresh.pk).status == "not_taken_into_account"  # no template in this test
    assert result.activities.get(name="expire_events").counters == {"too_old": 7}


def test_event_appearing_in_the_middle_of_a_batch_is_left_pending_not_misrouted(db, now, monkeypatch):
    """A late commit inside the batch's id range, of a pair the batch did not look up, waits for the
    next run instead of being called not_taken_into_account."""
    make_templates()
    factories.EventFactory(id=10, event_type="order")
    factories.EventFactory(id=20, event_type="newsletter")
    original = update_events_status.latest_templates

    def late_commit_meanwhile(pairs: set[tuple[str, str]]) -> dict:
        factories.EventFactory(id=15, event_type="shipping", channel="push", email="", phone="+33644444444")
        return original(pairs)

    monkeypatch.setattr(update_events_status, "latest_templates", late_commit_meanwhile)
    batch = update_events_status.route_batch(after=0, limit=10)

    assert (batch.rows, batch.cursor) == (2, 20)
    assert dict(Event.objects.values_list("id", "status")) \
        == {10: "pending_delivery", 15: "pending", 20: "not_taken_into_account"}
    monkeypatch.undo()

    run()

    assert Event.objects.get(pk=15).status == "pending_delivery"
    assert DeliveryLog.objects.get(event_id=15).address == "+33644444444"
