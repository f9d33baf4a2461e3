"""forecasting: the planned contacts of the deliveries in the forecast, and the exclusion of the
contacts that take a profile over the fatigue threshold.

The expected ForecastLog rows are computed here in plain Python from the rows as created, with
the rules written out again (codes and states as literals, not imported from the workflow), then
compared with every field of every row. Time is frozen: the reference time of a pass is ``NOW``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from campaign.models import ABTest, AppSubscription, Delivery, DeliveryLog, ForecastLog, Profile, Quarantine
from tests import factories
from tests.workflows.helpers import fail_on_call
from workflows import commands
from workflows.builtin import forecasting
from workflows.engine import RunRequest, execute
from workflows.models import RunStatus, Trigger, Workflow, WorkflowLog, WorkflowRun, WorkflowState

WORKFLOW_ID = "forecasting"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)

IGNORED, SENT, FAILED, PENDING, CANCELLED = 0, 1, 2, 6, 7

Key = tuple[int, int]  # (delivery id, profile id)
Row = tuple[str, datetime, bool, datetime]  # (channel, planned_at, excluded, computed_at)


def run(**overrides: Any) -> WorkflowRun:
    return commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides=overrides or None)


def forecast_rows() -> dict[Key, Row]:
    return {(row["delivery_id"], row["profile_id"]): (row["channel"], row["planned_at"], row["excluded"], row["computed_at"])
            for row in ForecastLog.objects.values("delivery_id", "profile_id", "channel", "planned_at", "excluded",
                                                  "computed_at")}


# --- The dataset and the independent computation ---------------------------------------------------


@dataclass
class Dataset:
    profiles: dict[str, int]  # name -> id
    deliveries: dict[str, int]  # name -> id


def build() -> Dataset:
    """Nine profiles, five deliveries in the forecast (two of them tied on priority), deliveries
    just outside it or not eligible, past sends inside and outside the period, stale rows."""
    def profile(name: str, **fields: Any) -> Profile:
        fields.setdefault("email", f"{name}@example.com")
        fields.setdefault("phone", f"+3360000{ord(name[0]):04d}")
        return factories.ProfileFactory(first_name=name, **fields)

    ann = profile("ann")
    bob = profile("bob")
    cat = profile("cat", phone="")                            # no phone: not an SMS target
    dan = profile("dan", blocklisted_email=True)              # opted out of email
    eve = profile("eve")                                      # email quarantined: not an email target
    fay = profile("fay", blocklisted_sms=True)                # email only "erroneous": still targeted
    gus = profile("gus", blocklisted_push=True)               # has a subscription, opted out of push
    hal = profile("hal")                                      # four messages this week already
    ivy = profile("ivy", email="")                            # no email; sent to only long ago
    factories.QuarantineFactory(address=eve.email, channel="email", status=Quarantine.Status.QUARANTINED)
    factories.QuarantineFactory(address=fay.email, channel="email", status=Quarantine.Status.ERRONEOUS)
    factories.QuarantineFactory(address=bob.phone, channel="sms", status=Quarantine.Status.DENYLISTED)
    factories.AppSubscriptionFactory(profile=ann)
    factories.AppSubscriptionFactory(profile=ann, application="com.example.news")  # two devices, one contact
    factories.AppSubscriptionFactory(profile=bob, disabled=True)
    factories.AppSubscriptionFactory(profile=gus)
    factories.AppSubscriptionFactory(profile=hal)

    campaign = factories.CampaignFactory()

    def delivery(label: str, channel: str, priority: int, scheduled_at: datetime | None, *, state: str = "scheduled",
                 kind: str = "marketing") -> Delivery:
        return factories.DeliveryFactory(label=label, campaign=campaign, channel=channel, priority=priority,
                                         scheduled_at=scheduled_at, state=state, kind=kind)

    deliveries = {
        "A": delivery("A", "email", 5, NOW + 3 * DAY),
        "B": delivery("B", "sms", 5, NOW - DAY, state="provisional"),    # ties with A on priority, earlier
        "C": delivery("C", "push", 1, NOW + DAY),
        "E": delivery("E", "email", 3, NOW + 6 * DAY, state="provisional"),  # prepared its target
        "F": delivery("F", "email", 0, NOW + 7 * DAY),                   # on the horizon: in
        "H": delivery("H", "sms", 2, NOW - 7 * DAY),                     # on the horizon back: in
        "late": delivery("late", "email", 9, NOW + 7 * DAY + SECOND),     # one second out
        "early": delivery("early", "email", 9, NOW - 7 * DAY - SECOND),   # one second out
        "draft": delivery("draft", "email", 9, NOW + DAY, state="draft"),
        "running": delivery("running", "email", 9, NOW - DAY, state="in_progress"),
        "proof": delivery("proof", "email", 9, NOW + DAY, kind="proof"),
        "unscheduled": delivery("unscheduled", "email", 9, None),
        "past": delivery("past", "email", 0, NOW - 3 * DAY, state="finished"),
    }
    E, past = deliveries["E"], deliveries["past"]

    def log(delivery_: Delivery, who: Profile | None, status: int, created_at: datetime) -> None:
        factories.DeliveryLogFactory(delivery=delivery_, profile=who, address=who.email if who else "anon@example.com",
                                     status=status, created_at=created_at, updated_at=created_at)

    # E's prepared target: ann and cat; dan opted out since; hal was ignored; an anonymous log.
    for who, status in ((ann, PENDING), (cat, PENDING), (dan, PENDING), (hal, IGNORED), (None, PENDING)):
        log(E, who, status, NOW - timedelta(hours=1))
    # Past sends.
    for hours in (2, 30, 50, 70):
        log(past, hal, SENT, NOW - timedelta(hours=hours))
    log(past, ann, FAILED, NOW - 7 * DAY)                 # on the bound: counts
    log(past, ann, SENT, NOW - 7 * DAY - SECOND)          # one second too old
    log(past, ann, IGNORED, NOW - DAY)
    log(past, ann, CANCELLED, NOW - DAY)
    log(past, bob, PENDING, NOW - timedelta(hours=2))
    log(past, ivy, SENT, NOW - 10 * DAY)
    log(past, None, SENT, NOW - DAY)
    log(deliveries["late"], fay, PENDING, NOW - DAY)      # a delivery outside the forecast: a past send
    log(deliveries["running"], fay, SENT, NOW - DAY)

    # Rows of an earlier pass: one of A for a profile no longer targeted, one of a delivery that left.
    factories.ForecastLogFactory(delivery=deliveries["A"], profile=dan, planned_at=NOW, excluded=True,
                                 computed_at=NOW - DAY)
    factories.ForecastLogFactory(delivery=deliveries["late"], profile=ann, planned_at=NOW, computed_at=NOW - DAY)
    factories.ForecastLogFactory(delivery=past, profile=bob, planned_at=NOW, computed_at=NOW - DAY)
    return Dataset(profiles={p.first_name: p.pk for p in (ann, bob, cat, dan, eve, fay, gus, hal, ivy)},
                   deliveries={label: d.pk for label, d in deliveries.items()})


def expected_forecast(*, now: datetime, horizon_days: int = 7, threshold: int = 5) -> dict[Key, Row]:
    """The ForecastLog rows the rules give over the database as it is now (read in full: the
    dataset is small), computed without the workflow's code."""
    start, end = now - timedelta(days=horizon_days), now + timedelta(days=horizon_days)
    profiles = {p["id"]: p for p in Profile.objects.values()}
    deliveries = {d["id"]: d for d in Delivery.objects.values()}
    logs = list(DeliveryLog.objects.values("delivery_id", "profile_id", "address", "status", "created_at"))
    subscriptions = list(AppSubscription.objects.values("profile_id", "disabled"))
    quarantine = list(Quarantine.objects.values("address", "channel", "status"))
    unreachable = {(q["address"], q["channel"]) for q in quarantine if q["status"] in ("quarantined", "denylisted")}
    denylisted = {(q["address"], q["channel"]) for q in quarantine if q["status"] == "denylisted"}
    # A/B tests: winner delivery id -> the test's first other marketing delivery (its test delivery).
    test_delivery = {}
    for test in ABTest.objects.exclude(winner_delivery=None).values("id", "winner_delivery_id"):
        own = sorted(d_id for d_id, d in deliveries.items()
                     if d["ab_test_id"] == test["id"] and d["kind"] == "marketing" and d_id != test["winner_delivery_id"])
        test_delivery[test["winner_delivery_id"]] = own[0] if own else None

    forecast = {d_id: d for d_id, d in deliveries.items()
                if d["kind"] == "marketing" and d["state"] in ("scheduled", "provisional")
                and d["scheduled_at"] is not None and start <= d["scheduled_at"] <= end}

    def targets(delivery: dict[str, Any]) -> set[int]:
        channel = delivery["channel"]
        reachable = {p_id for p_id, p in profiles.items() if not p[f"blocklisted_{channel}"]}
        own_logs = [log for log in logs if log["delivery_id"] == delivery["id"]]
        if own_logs:
            return {log["profile_id"] for log in own_logs
                    if log["status"] in (SENT, FAILED, PENDING) and log["profile_id"] in reachable
                    and (log["address"], channel) not in denylisted}
        if delivery["id"] in test_delivery:  # a winner: the rest of the target
            if test_delivery[delivery["id"]] is None:
                return set()
            reachable -= {log["profile_id"] for log in logs if log["delivery_id"] == test_delivery[delivery["id"]]}
        if channel == "push":
            return {s["profile_id"] for s in subscriptions if not s["disabled"]} & reachable
        address = "email" if channel == "email" else "phone"
        return {p_id for p_id in reachable
                if profiles[p_id][address] and (profiles[p_id][address], channel) not in unreachable}

    planned = {(d_id, p_id) for d_id, d in forecast.items() for p_id in targets(d)}
    past = {p_id: sum(1 for log in logs if log["profile_id"] == p_id and log["status"] in (SENT, FAILED, PENDING)
                      and start <= log["created_at"] <= now and log["delivery_id"] not in forecast)
            for p_id in profiles}
    rows = {}
    for p_id in profiles:
        mine = sorted((d_id for d_id, p in planned if p == p_id),
                      key=lambda d_id: (-forecast[d_id]["priority"], forecast[d_id]["scheduled_at"], d_id))
        for rank, d_id in enumerate(mine, start=1):
            rows[d_id, p_id] = (forecast[d_id]["channel"], forecast[d_id]["scheduled_at"], past[p_id] + rank > threshold,
                                now)  # computed_at: the reference time of the pass
    return rows


def counters_of(expected: dict[Key, Row]) -> dict[str, int]:
    excluded = [key for key, row in expected.items() if row[2]]
    return {
        "deliveries": len({d_id for d_id, _ in expected}),  # each delivery of these forecasts has targets
        "forecast_contacts": len(expected),
        "profiles": len({p_id for _, p_id in expected}),
        "profiles_over_threshold": len({p_id for _, p_id in excluded}),
        "exclusions": len(excluded),
    }


@pytest.fixture
def frozen(time_machine):
    time_machine.move_to(NOW, tick=False)


@pytest.fixture
def data(db, frozen) -> Dataset:
    return build()


# --- What is planned and what is excluded ------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_forecast_rows_and_exclusions_match_an_independent_computation(data, threshold):
    expected = expected_forecast(now=NOW, threshold=threshold)

    result = run(fatigue_threshold=threshold)

    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert forecast_rows() == expected
    for name, value in counters_of(expected).items():
        assert result.counters[name] == value, name
    assert result.counters["deliveries"] == 6, "A, B, C, E, F and H"
    assert result.counters["stale_contacts_removed"] == 2, "late's and past's rows of an earlier pass"


def test_the_forecast_holds_the_eligible_deliveries_and_the_defined_targets(data):
    run()

    p, d = data.profiles, data.deliveries
    targets = {label: {name for name, p_id in p.items()
                       if ForecastLog.objects.filter(delivery_id=d_id, profile_id=p_id).exists()}
               for label, d_id in d.items()}
    assert targets["A"] == targets["F"] == {"ann", "bob", "cat", "fay", "gus", "hal"}, "email population"
    assert targets["B"] == targets["H"] == {"ann", "dan", "eve", "gus", "hal", "ivy"}, "SMS population"
    assert targets["C"] == {"ann", "hal"}, "enabled subscriptions, not opted out of push"
    assert targets["E"] == {"ann", "cat"}, "the profiles its prepared logs contact"
    for label in ("late", "early", "draft", "running", "proof", "unscheduled", "past"):
        assert targets[label] == set(), label
    assert ForecastLog.objects.get(delivery_id=d["C"], profile_id=p["ann"]).channel == "push"


def test_contacts_over_the_threshold_are_taken_from_the_lowest_priority_deliveries(data):
    run(fatigue_threshold=3)

    def excluded(name: str) -> set[str]:
        labels = {d_id: label for label, d_id in data.deliveries.items()}
        return {labels[d_id] for d_id in ForecastLog.objects.filter(profile_id=data.profiles[name], excluded=True)
                .values_list("delivery_id", flat=True)}

    # ann: 1 past send (the failed one on the bound), planned B, A (5), E (3), C (1), H (2), F (0).
    assert excluded("ann") == {"E", "H", "C", "F"}, "B and A kept: 1 + 2 = 3"
    # hal: 4 past sends, already over: every planned contact is excluded.
    assert excluded("hal") == {"A", "B", "C", "F", "H"}
    # cat: no past send, planned A (5), E (3), F (0): all three fit.
    assert excluded("cat") == set()


def test_the_earlier_scheduled_delivery_wins_a_tie_then_the_lower_id(db, frozen):
    who = factories.ProfileFactory()
    later = factories.DeliveryFactory(channel="email", priority=5, state="scheduled", scheduled_at=NOW + 2 * DAY)
    earlier = factories.DeliveryFactory(channel="email", priority=5, state="scheduled", scheduled_at=NOW + DAY)
    same_time_higher_id = factories.DeliveryFactory(channel="email", priority=5, state="scheduled", scheduled_at=NOW + DAY)
    urgent = factories.DeliveryFactory(channel="email", priority=6, state="scheduled", scheduled_at=NOW + 5 * DAY)

    for threshold, kept in ((1, {urgent}), (2, {urgent, earlier}), (3, {urgent, earlier, same_time_higher_id})):
        run(fatigue_threshold=threshold)
        assert set(ForecastLog.objects.filter(profile=who, excluded=False).values_list("delivery_id", flat=True)) == \
            {delivery.pk for delivery in kept}, threshold
    assert ForecastLog.objects.get(profile=who, delivery=later).excluded


def test_a_delivery_with_logs_of_its_own_is_not_counted_twice(db, frozen):
    """Its pending logs are its planned contacts, not past sends."""
    who = factories.ProfileFactory()
    prepared = factories.DeliveryFactory(channel="email", priority=1, state="provisional", scheduled_at=NOW + DAY)
    factories.DeliveryLogFactory(delivery=prepared, profile=who, status=PENDING, created_at=NOW - SECOND)

    run(fatigue_threshold=1)

    assert list(ForecastLog.objects.values_list("delivery_id", "profile_id", "excluded")) == [(prepared.pk, who.pk, False)]


def test_a_prepared_log_whose_address_went_on_the_denylist_since_is_not_planned(db, frozen):
    kept, complained = factories.ProfileFactory(), factories.ProfileFactory()
    prepared = factories.DeliveryFactory(channel="email", state="provisional", scheduled_at=NOW + DAY)
    for who in (kept, complained):
        factories.DeliveryLogFactory(delivery=prepared, profile=who, status=PENDING, created_at=NOW - DAY)
    factories.QuarantineFactory(address=complained.email, channel="email", status=Quarantine.Status.DENYLISTED)
    factories.QuarantineFactory(address=kept.email, channel="sms", status=Quarantine.Status.DENYLISTED)  # other channel

    run()

    assert list(ForecastLog.objects.values_list("profile_id", flat=True)) == [kept.pk]
    assert forecast_rows() == expected_forecast(now=NOW)


def test_an_ab_winner_plans_the_rest_of_the_target_without_denylisted_addresses(db, frozen):
    tested, rest, complained, quarantined, erroneous = (factories.ProfileFactory() for _ in range(5))
    test = factories.ABTestFactory()
    test_delivery = factories.DeliveryFactory(channel="email", ab_test=test, state="finished",
                                              started_at=NOW - 2 * DAY, scheduled_at=NOW - 2 * DAY)
    factories.DeliveryLogFactory(delivery=test_delivery, profile=tested, status=SENT, variant="A", created_at=NOW - 2 * DAY)
    factories.QuarantineFactory(address=complained.email, channel="email", status=Quarantine.Status.DENYLISTED)
    factories.QuarantineFactory(address=quarantined.email, channel="email", status=Quarantine.Status.QUARANTINED)
    factories.QuarantineFactory(address=erroneous.email, channel="email", status=Quarantine.Status.ERRONEOUS)
    winner = factories.DeliveryFactory(channel="email", ab_test=test, state="scheduled", scheduled_at=NOW)
    ABTest.objects.filter(pk=test.pk).update(winner_delivery=winner, winner_variant="A", status="winner_sent")

    run()

    planned = set(ForecastLog.objects.filter(delivery=winner).values_list("profile_id", flat=True))
    assert planned == {rest.pk, erroneous.pk}, "not the tested one, not the quarantined nor the denylisted address"
    assert forecast_rows() == expected_forecast(now=NOW)


# --- Rerun, horizon, interruptions ---------------------------------------------------------------------


def test_a_second_run_writes_the_same_rows(data):
    first = run(fatigue_threshold=3)
    rows = forecast_rows()

    second = run(fatigue_threshold=3)

    assert forecast_rows() == rows == expected_forecast(now=NOW, threshold=3)
    for name in ("deliveries", "forecast_contacts", "profiles", "profiles_over_threshold", "exclusions"):
        assert second.counters[name] == first.counters[name], name
    assert second.counters["stale_contacts_removed"] == 0


def test_a_delivery_leaving_the_horizon_loses_its_rows_and_frees_its_profiles(data):
    run(fatigue_threshold=3)
    ann, a = data.profiles["ann"], data.deliveries["A"]
    assert ForecastLog.objects.filter(delivery_id=a).exists()
    assert ForecastLog.objects.get(delivery_id=data.deliveries["E"], profile_id=ann).excluded

    Delivery.objects.filter(pk=a).update(scheduled_at=NOW + 8 * DAY)
    result = run(fatigue_threshold=3)

    assert not ForecastLog.objects.filter(delivery_id=a).exists()
    assert forecast_rows() == expected_forecast(now=NOW, threshold=3)
    assert not ForecastLog.objects.get(delivery_id=data.deliveries["E"], profile_id=ann).excluded, "A's slot is free"
    assert result.counters["stale_contacts_removed"] == 6
    assert result.counters["deliveries"] == 5


def test_time_moving_on_takes_deliveries_out_of_the_horizon(data, time_machine):
    run()
    later = NOW + DAY + SECOND
    time_machine.move_to(later, tick=False)

    run()

    rows = ForecastLog.objects.values_list("delivery_id", flat=True).distinct()
    assert data.deliveries["H"] not in set(rows), "scheduled 7 days before the first run: now 8 days and 1 s back"
    assert set(rows) == {d_id for d_id, _ in expected_forecast(now=later)}
    assert set(ForecastLog.objects.values_list("computed_at", flat=True)) == {later}


def test_batch_boundaries_do_not_change_the_result(data):
    expected = expected_forecast(now=NOW, threshold=3)

    result = run(fatigue_threshold=3, batch_size=1)

    assert forecast_rows() == expected
    for name, value in counters_of(expected).items():
        assert result.counters[name] == value, name


def done_part(expected: dict[Key, Row], upto: int) -> dict[Key, Row]:
    return {key: row for key, row in expected.items() if key[1] <= upto}


@pytest.mark.parametrize("function, call", [
    ("forecast_targets", 10),      # batch size 2 over 6 deliveries: one profile a batch; crash in the 2nd
    ("clear_slice", 3),            # at the start of the 3rd batch
    ("planning_statement", 4),     # in the 4th batch, its old rows deleted
])
def test_a_run_interrupted_between_batches_then_rerun_ends_like_an_uninterrupted_run(data, monkeypatch, function, call):
    expected = expected_forecast(now=NOW, threshold=3)
    monkeypatch.setattr(forecasting, function, fail_on_call(call, getattr(forecasting, function)))

    crashed = run(fatigue_threshold=3, batch_size=2)

    assert crashed.status == RunStatus.FAILED and "simulated crash" in crashed.reason
    done = Workflow.objects.get(pk=WORKFLOW_ID).cursors[forecasting.PROFILE_CURSOR]
    assert done == sorted(data.profiles.values())[{"forecast_targets": 0, "clear_slice": 1, "planning_statement": 2}[function]]
    rows = forecast_rows()
    assert rows != expected, "the crash left the forecast half done"
    assert done_part(rows, done) == done_part(expected, done), "the committed profiles are complete, exclusions included"

    monkeypatch.undo()
    rerun = run(fatigue_threshold=3, batch_size=2)

    assert rerun.status == RunStatus.SUCCEEDED
    assert forecast_rows() == expected
    for name, value in counters_of(expected).items():
        assert rerun.counters[name] == value, f"{name}: a new pass counts everything once"


def test_a_paused_run_resumes_its_pass_where_it_halted(data, monkeypatch):
    expected = expected_forecast(now=NOW, threshold=3)
    real = forecasting.forecast_batch
    calls = {"n": 0}

    def pause_during_the_second_batch(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            commands.pause(WORKFLOW_ID, actor="test")
        return real(*args, **kwargs)

    monkeypatch.setattr(forecasting, "forecast_batch", pause_during_the_second_batch)
    paused = run(fatigue_threshold=3, batch_size=2)
    assert (paused.status, paused.halted_activity) == (RunStatus.PAUSED, "compute_forecast")
    assert Workflow.objects.get(pk=WORKFLOW_ID).cursors[forecasting.PROFILE_CURSOR] == data.profiles["bob"]

    Workflow.objects.filter(pk=WORKFLOW_ID).update(state=WorkflowState.STARTED)
    resumed = execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SHELL, run_id=paused.pk))

    assert resumed.pk == paused.pk and resumed.status == RunStatus.SUCCEEDED
    assert calls["n"] == len(data.profiles) + 1, "each profile once, then the empty batch that ends the pass"
    assert WorkflowLog.objects.filter(run=resumed, message__startswith="New forecast pass").count() == 1, "one pass"
    assert forecast_rows() == expected
    for name, value in counters_of(expected).items():
        assert resumed.counters[name] == value, f"{name}: nothing counted twice"


def test_the_journal_gives_the_counts(data):
    expected = counters_of(expected_forecast(now=NOW, threshold=3))

    result = run(fatigue_threshold=3)

    messages = list(WorkflowLog.objects.filter(run=result).values_list("message", flat=True))
    assert (f"{expected['forecast_contacts']} contacts planned by 6 deliveries for {expected['profiles']} profiles; "
            f"{expected['profiles_over_threshold']} profiles over the fatigue threshold of 3 messages; "
            f"{expected['exclusions']} contacts excluded; 2 contacts of deliveries no longer in the forecast "
            "removed.") in messages
    assert any(message.startswith("New forecast pass: reference time 2026-03-10T12:00:00+00:00; 6 deliveries")
               for message in messages)


# --- Admin -----------------------------------------------------------------------------------------------


def test_the_delivery_page_shows_its_forecast_counts(data, client: Client):
    run(fatigue_threshold=3)
    expected = expected_forecast(now=NOW, threshold=3)
    a = data.deliveries["A"]
    planned = sum(1 for d_id, _ in expected if d_id == a)
    excluded = sum(1 for (d_id, _), row in expected.items() if d_id == a and row[2])
    assert (planned, excluded) == (6, 1), "hal is over the threshold"
    client.force_login(factories.SuperUserFactory())

    page = client.get(reverse("admin:campaign_delivery_change", args=[a]))
    draft = client.get(reverse("admin:campaign_delivery_change", args=[data.deliveries["draft"]]))

    assert page.status_code == 200
    assert f"{planned} planned contacts, {excluded} of them excluded" in page.content.decode()
    assert f"delivery__id__exact={a}" in page.content.decode()
    assert "No planned contacts" in draft.content.decode()
    assert "forecast_counts" in page.context["adminform"].readonly_fields
