"""reportingAggregates: daily per-delivery counters, checked against a plain-Python computation of
the platform's indicator formulas per day (message counters and their cohort on the send day,
tracking counters on the tracking day).

The fixed dataset spans 2024-03-29 .. 2024-04-02 in Europe/Paris, across the spring DST change
(2024-03-31 01:00 UTC: +01:00 → +02:00), with logs and tracking rows close to local midnight on
both sides of it, so a wrong zone, a UTC day or a fixed offset each put some row on the wrong day.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from campaign.models import (
    Channel,
    DeliveryAggregate,
    DeliveryLog,
    FailureReason,
    FailureType,
    LogStatus,
    Quarantine,
    TrackingLog,
    UrlType,
)
from tests.factories import DeliveryFactory, DeliveryLogFactory, QuarantineFactory, TrackingLogFactory
from workflows import commands
from workflows.builtin import reporting_aggregates
from workflows.builtin.reporting_aggregates import CHANGE_MARGIN, COUNTERS, TRACKING_COUNTERS
from workflows.engine import RunRequest, execute
from workflows.models import RunStatus, Trigger, Workflow, WorkflowLog, WorkflowRun, WorkflowState

WORKFLOW_ID = "reportingAggregates"
ZONE = "Europe/Paris"
PARIS = ZoneInfo(ZONE)

SENT, FAILED, IGNORED = LogStatus.SENT, LogStatus.FAILED, LogStatus.IGNORED
PENDING, CANCELLED = LogStatus.PENDING, LogStatus.CANCELLED
CLICK, OPEN, OPT_OUT, MIRROR = UrlType.CLICK, UrlType.OPEN, UrlType.OPT_OUT, UrlType.MIRROR_PAGE
CLICK_11, IMPRESSION = UrlType.OTHER_CLICK_11, UrlType.IMPRESSION
OPEN_EVIDENCE = (CLICK, OPEN, OPT_OUT, MIRROR, UrlType.OTHER_CLICK_10, CLICK_11)
CLICKS = (CLICK, UrlType.OTHER_CLICK_10, CLICK_11)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Deliveries: key → channel.
DELIVERIES = {"news": Channel.EMAIL, "promo_sms": Channel.SMS, "push": Channel.PUSH, "nothing_sent": Channel.EMAIL,
              "late": Channel.EMAIL}

# Logs: key → (delivery, created_at UTC, status). Paris days in the comments.
LOGS = {
    "a": ("news", "2024-03-29 22:30", SENT),       # 23:30 CET → 03-29
    "b": ("news", "2024-03-29 23:30", SENT),       # 00:30 CET → 03-30 (the UTC day is 03-29)
    "c": ("news", "2024-03-30 22:59", FAILED),     # 23:59 CET → 03-30
    "d": ("news", "2024-03-30 23:00", FAILED),     # 00:00 CET → 03-31
    "e": ("news", "2024-03-31 22:30", SENT),       # 00:30 CEST → 04-01 (a fixed +01:00 says 03-31)
    "f": ("news", "2024-03-31 21:59", IGNORED),    # 23:59 CEST → 03-31, not counted
    "g": ("news", "2024-04-01 10:00", PENDING),    # not counted
    "h": ("news", "2024-04-01 10:00", CANCELLED),  # not counted
    "i": ("promo_sms", "2024-03-30 12:00", SENT),
    "j": ("promo_sms", "2024-03-30 12:00", FAILED),
    "k": ("push", "2024-04-01 08:00", SENT),
    "l": ("nothing_sent", "2024-03-30 09:00", PENDING),
    "m": ("nothing_sent", "2024-03-30 09:00", IGNORED),
    "n": ("late", "2024-03-31 00:30", SENT),       # 01:30 CET → 03-31, the DST night
}

# The failed logs' failure type and reason; the address of c is in quarantine.
FAILURES = {
    "c": (FailureType.HARD, FailureReason.USER_UNKNOWN),
    "d": (FailureType.HARD, FailureReason.ON_DENYLIST),   # a complaint
    "j": (FailureType.HARD, FailureReason.REFUSED),        # rejected
}
QUARANTINED = ("c",)

# Tracking rows: (log, tracked_at UTC, url type). A log key of None is a purged log (no row).
TRACKING = [
    ("a", "2024-03-30 06:00", OPEN),
    ("a", "2024-03-30 07:00", OPEN),       # repeated open, same day: 2 opens, 1 unique
    ("a", "2024-03-31 21:00", CLICK),      # 23:00 CEST → 03-31
    ("a", "2024-03-31 23:30", OPEN),       # 01:30 CEST → 04-01: unique again on another day
    ("b", "2024-03-30 08:00", CLICK),      # a click without an open row still opens
    ("b", "2024-03-30 09:00", CLICK),
    ("b", "2024-03-30 10:00", OPT_OUT),
    ("e", "2024-04-01 06:00", MIRROR),     # a mirror page only: unique open, no open row
    ("e", "2024-04-01 07:00", CLICK_11),   # a click of type 11
    ("i", "2024-03-30 13:00", CLICK),
    ("k", "2024-04-01 09:00", OPEN),       # push: an impression, an open and a tap
    ("k", "2024-04-01 08:30", IMPRESSION),
    ("k", "2024-04-01 09:01", CLICK),
    (None, "2024-03-30 12:00", OPEN),      # its log was purged: the row still counts
    ("n", "2024-03-30 23:10", OPEN),       # 00:10 CET → 03-31
    ("n", "2024-03-31 12:00", OPEN),       # 14:00 CEST → 03-31: 2 opens, 1 unique
]


@dataclass
class Dataset:
    deliveries: dict[str, Any]
    logs: dict[str, DeliveryLog]


def expected_aggregates(dataset: Dataset) -> dict[tuple[date, int, str], dict[str, int]]:
    """The aggregate counters, from the database's source rows, in plain Python with zoneinfo."""
    rows: dict[tuple[date, int, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    channel = {delivery.pk: delivery.channel for delivery in dataset.deliveries.values()}
    quarantined = set(Quarantine.objects.filter(status=Quarantine.Status.QUARANTINED).values_list("address", "channel"))
    hits = list(TrackingLog.objects.all())
    for log in DeliveryLog.objects.all():
        if log.status not in (SENT, FAILED):
            continue
        push = channel[log.delivery_id] == Channel.PUSH
        row = rows[(log.created_at.astimezone(PARIS).date(), log.delivery_id, channel[log.delivery_id])]
        row["sent"] += 1
        if log.status == FAILED:
            row["bounces"] += 1
            row["hard_bounces"] += log.failure_type == FailureType.HARD
            row["soft_bounces"] += log.failure_type == FailureType.SOFT
            hard = log.failure_type == FailureType.HARD
            row["on_denylist"] += hard and log.failure_reason == FailureReason.ON_DENYLIST
            row["rejected"] += hard and log.failure_reason == FailureReason.REFUSED
            row["quarantine"] += (log.address, channel[log.delivery_id]) in quarantined
            continue
        row["delivered"] += 1
        # The send day's cohort: what this delivered message's recipient did, whenever.
        types = [hit.url_type for hit in hits if hit.delivery_log_id == log.pk]
        opened, pixel = any(t in OPEN_EVIDENCE for t in types), OPEN in types
        row["cohort_opens"] += types.count(OPEN) + (0 if push else opened - pixel)
        row["cohort_unique_opens"] += pixel if push else opened
        row["cohort_clicks"] += sum(t in CLICKS for t in types)
        row["cohort_unique_clicks"] += any(t in CLICKS for t in types)
        row["cohort_unsubscribes"] += OPT_OUT in types
        row["cohort_mirror_pages"] += MIRROR in types
    by_day: dict[tuple, list[TrackingLog]] = defaultdict(list)
    for hit in hits:
        by_day[(hit.tracked_at.astimezone(PARIS).date(), hit.delivery_id, channel[hit.delivery_id])].append(hit)
    for key, day_hits in by_day.items():
        row, push = rows[key], key[2] == Channel.PUSH
        opened = {hit.delivery_log_id for hit in day_hits if hit.url_type in OPEN_EVIDENCE}
        pixel = {hit.delivery_log_id for hit in day_hits if hit.url_type == OPEN}
        open_rows = sum(hit.url_type == OPEN for hit in day_hits)
        row["opens"] = open_rows if push else open_rows + len(opened) - len(pixel)
        row["unique_opens"] = len(pixel) if push else len(opened)
        row["clicks"] = sum(hit.url_type in CLICKS for hit in day_hits)
        row["unique_clicks"] = len({hit.delivery_log_id for hit in day_hits if hit.url_type in CLICKS})
        row["unsubscribes"] = sum(hit.url_type == OPT_OUT for hit in day_hits)
        row["mirror_pages"] = sum(hit.url_type == MIRROR for hit in day_hits)
        row["impressions"] = sum(hit.url_type == IMPRESSION for hit in day_hits)
    return dict(rows)


def has_tracking(row: dict[str, int]) -> bool:
    return any(row[name] for name in TRACKING_COUNTERS)


def stored_aggregates() -> dict[tuple[date, int, str], dict[str, int]]:
    return {
        (row.day, row.delivery_id, row.channel): {name: getattr(row, name) for name in COUNTERS}
        for row in DeliveryAggregate.objects.all()
    }


def updated_at_by_key() -> dict[tuple[date, int], datetime]:
    return {(row.day, row.delivery_id): row.updated_at for row in DeliveryAggregate.objects.all()}


def stored_cursor() -> dict[str, Any]:
    return Workflow.objects.get(pk=WORKFLOW_ID).cursors["changes"]


def run(**overrides: object) -> WorkflowRun:
    return commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides=overrides or None)


@pytest.fixture
def dataset(db, settings, time_machine) -> Dataset:
    settings.TIME_ZONE = ZONE
    time_machine.move_to(utc("2024-04-02 01:00:00"), tick=True)
    deliveries = {key: DeliveryFactory(channel=channel, label=key) for key, channel in DELIVERIES.items()}
    logs = {}
    for key, (delivery, created, status) in LOGS.items():
        failure_type, failure_reason = FAILURES.get(key, (FailureType.NONE, FailureReason.NONE))
        logs[key] = DeliveryLogFactory(delivery=deliveries[delivery], profile=None, status=status, created_at=utc(created),
                                       updated_at=utc(created) + timedelta(minutes=3), failure_type=failure_type,
                                       failure_reason=failure_reason)
    for key in QUARANTINED:
        QuarantineFactory(address=logs[key].address, channel=deliveries[LOGS[key][0]].channel,
                          status=Quarantine.Status.QUARANTINED)
    for log_key, tracked, url_type in TRACKING:
        if log_key is None:
            TrackingLog.objects.create(delivery_log_id=999_999, delivery=deliveries["news"], url_type=url_type,
                                       tracked_at=utc(tracked))
        else:
            TrackingLogFactory(delivery_log=logs[log_key], url_type=url_type, tracked_at=utc(tracked))
    return Dataset(deliveries=deliveries, logs=logs)


def message_part(rows: dict) -> dict:
    """Rows as they are after the messages phase alone (message and cohort counters): tracking
    counters still zero."""
    return {key: {**row, **dict.fromkeys(TRACKING_COUNTERS, 0)} for key, row in rows.items() if row["sent"]}


def test_first_run_writes_every_day_with_counts_in_the_instance_time_zone(dataset):
    finished = run()

    assert finished.status == RunStatus.SUCCEEDED, finished.reason
    expected = expected_aggregates(dataset)
    assert stored_aggregates() == expected
    news = dataset.deliveries["news"].pk
    # The DST evening: 22:30 UTC on 03-31 is 00:30 on 04-01 in Paris (a fixed +01:00 would say 03-31).
    assert expected[(date(2024, 4, 1), news, Channel.EMAIL)]["delivered"] == 1
    # 03-30: b delivered (clicked twice and opted out, another day's open rows: none), c a hard bounce
    # whose address is in quarantine; tracked that day: 3 open rows (a twice, a purged log), openers
    # a, b (by its clicks) and the purged log, 2 of them with an open row: Open = 3 + 3 − 2.
    assert expected[(date(2024, 3, 30), news, Channel.EMAIL)] == {
        **dict.fromkeys(COUNTERS, 0),
        "sent": 2, "delivered": 1, "bounces": 1, "hard_bounces": 1, "quarantine": 1,
        "cohort_opens": 1, "cohort_unique_opens": 1, "cohort_clicks": 2, "cohort_unique_clicks": 1,
        "cohort_unsubscribes": 1,
        "opens": 4, "unique_opens": 3, "clicks": 2, "unique_clicks": 1, "unsubscribes": 1,
    }
    push = dataset.deliveries["push"].pk
    assert expected[(date(2024, 4, 1), push, Channel.PUSH)] == {
        **dict.fromkeys(COUNTERS, 0), "sent": 1, "delivered": 1, "cohort_opens": 1, "cohort_unique_opens": 1,
        "cohort_clicks": 1, "cohort_unique_clicks": 1, "opens": 1, "unique_opens": 1, "clicks": 1, "unique_clicks": 1,
        "impressions": 1,
    }, "the push table: no implied opens"
    assert not DeliveryAggregate.objects.filter(delivery=dataset.deliveries["nothing_sent"]).exists(), \
        "a day with only pending or ignored messages has nothing to report"
    message_rows = sum(1 for row in expected.values() if row["sent"])
    tracking_rows = sum(1 for row in expected.values() if has_tracking(row))
    assert finished.counters == {"deliveries": 5, "tracking_days": 3, "rows_written": message_rows + tracking_rows}
    assert WorkflowLog.objects.filter(run=finished, message__startswith="First pass").exists()


def test_channel_is_the_deliverys_channel(dataset):
    run()

    assert set(DeliveryAggregate.objects.values_list("delivery__label", "channel").distinct()) == {
        ("news", "email"), ("promo_sms", "sms"), ("push", "push"), ("late", "email"),
    }


def test_cursors_end_at_the_pass_start_minus_the_margin_and_the_last_tracking_id(dataset):
    finished = run()

    cursors = stored_cursor()
    started = datetime.fromisoformat(cursors["logs_updated_after"]) + CHANGE_MARGIN
    assert finished.started_at - timedelta(seconds=5) <= started <= finished.finished_at
    assert cursors["tracking_id_after"] == TrackingLog.objects.order_by("-id").values_list("id", flat=True)[0]
    assert cursors["pass"] is None


def test_second_run_rewrites_nothing(dataset, time_machine):
    run()
    before, stamps = stored_aggregates(), updated_at_by_key()
    time_machine.shift(timedelta(hours=1))
    Workflow.objects.filter(pk=WORKFLOW_ID).update(cursors={})  # forget the cursors: recompute everything

    second = run()

    assert second.status == RunStatus.SUCCEEDED
    assert second.counters == {"deliveries": len(DELIVERIES), "tracking_days": 3, "rows_written": 0}
    assert stored_aggregates() == before
    assert updated_at_by_key() == stamps, "an unchanged row keeps the time its counters last changed"


def test_a_run_with_nothing_new_visits_nothing(dataset, time_machine):
    run()
    time_machine.shift(timedelta(days=1))

    second = run()

    assert second.status == RunStatus.SUCCEEDED
    assert second.counters == {}
    assert stored_aggregates() == expected_aggregates(dataset)
    assert stored_cursor()["pass"] is None


def test_only_the_changed_days_are_rewritten(dataset, time_machine):
    run()
    stamps = updated_at_by_key()
    time_machine.shift(timedelta(days=1))
    news, push = dataset.deliveries["news"], dataset.deliveries["push"]
    # A pending message of 04-01 is delivered now, and the push (sent 04-01) is opened again on 04-02.
    DeliveryLog.objects.filter(pk=dataset.logs["g"].pk).update(status=SENT, updated_at=datetime.now(UTC))
    TrackingLogFactory(delivery_log=dataset.logs["k"], url_type=OPEN, tracked_at=utc("2024-04-02 07:00"))

    second = run()

    assert stored_aggregates() == expected_aggregates(dataset)
    changed = {key for key, stamp in updated_at_by_key().items() if stamp != stamps.get(key)}
    # The open counts on its day (04-02) and in its message's send-day cohort (04-01).
    assert changed == {(date(2024, 4, 1), news.pk), (date(2024, 4, 2), push.pk), (date(2024, 4, 1), push.pk)}
    assert stored_aggregates()[(date(2024, 4, 1), push.pk, Channel.PUSH)]["cohort_opens"] == 2
    assert second.counters == {"deliveries": 2, "tracking_days": 1, "rows_written": 3}


def test_messages_and_tracking_halves_are_recounted_each_from_its_own_rows(dataset, time_machine):
    run()
    time_machine.shift(timedelta(hours=2))
    late = dataset.deliveries["late"]
    # Its only message of 03-31 turns out ignored; its open of that day stays.
    DeliveryLog.objects.filter(pk=dataset.logs["n"].pk).update(status=IGNORED, updated_at=datetime.now(UTC))

    run()

    assert stored_aggregates()[(date(2024, 3, 31), late.pk, Channel.EMAIL)] == {
        **dict.fromkeys(COUNTERS, 0), "opens": 2, "unique_opens": 1,
    }
    assert stored_aggregates() == expected_aggregates(dataset)


def test_a_day_whose_counts_fell_to_zero_is_updated_to_zeros(dataset, time_machine):
    run()
    time_machine.shift(timedelta(hours=2))
    proof = DeliveryFactory(label="proof", channel=Channel.EMAIL)
    message = DeliveryLogFactory(delivery=proof, profile=None, status=SENT, created_at=utc("2024-04-02 02:00"),
                                 updated_at=datetime.now(UTC))
    run()
    assert stored_aggregates()[(date(2024, 4, 2), proof.pk, Channel.EMAIL)]["sent"] == 1
    time_machine.shift(timedelta(hours=2))
    DeliveryLog.objects.filter(pk=message.pk).update(status=IGNORED, updated_at=datetime.now(UTC))

    third = run()

    assert stored_aggregates()[(date(2024, 4, 2), proof.pk, Channel.EMAIL)] == dict.fromkeys(COUNTERS, 0)
    assert third.counters == {"deliveries": 1, "rows_written": 1}


def test_a_rebuild_recounts_tracking_rows_that_were_removed(dataset, time_machine):
    run()
    time_machine.shift(timedelta(hours=1))
    promo = dataset.deliveries["promo_sms"]
    TrackingLog.objects.filter(delivery=promo).delete()  # a bot's clicks, removed by hand
    Workflow.objects.filter(pk=WORKFLOW_ID).update(cursors={})

    run()

    assert stored_aggregates()[(date(2024, 3, 30), promo.pk, Channel.SMS)] == {
        **dict.fromkeys(COUNTERS, 0), "sent": 2, "delivered": 1, "bounces": 1, "hard_bounces": 1, "rejected": 1,
    }
    assert stored_aggregates() == expected_aggregates(dataset)


def test_a_log_committed_late_within_the_margin_is_seen_by_the_next_run(dataset, time_machine):
    first = run()
    time_machine.shift(timedelta(hours=3))
    # Stamped before the first pass started, committed after it: only the margin catches it.
    DeliveryLogFactory(delivery=dataset.deliveries["push"], profile=None, status=SENT, created_at=utc("2024-04-01 09:30"),
                       updated_at=first.started_at - CHANGE_MARGIN / 2)

    run()

    assert stored_aggregates()[(date(2024, 4, 1), dataset.deliveries["push"].pk, Channel.PUSH)]["sent"] == 2
    assert stored_aggregates() == expected_aggregates(dataset)


def test_tracking_of_an_old_day_counts_on_its_tracking_day(dataset, time_machine):
    run()
    time_machine.shift(timedelta(days=2))
    promo = dataset.deliveries["promo_sms"]
    TrackingLogFactory(delivery_log=dataset.logs["i"], url_type=CLICK, tracked_at=utc("2024-03-30 14:00"))

    second = run()

    assert stored_aggregates()[(date(2024, 3, 30), promo.pk, Channel.SMS)]["clicks"] == 2
    assert stored_aggregates()[(date(2024, 3, 30), promo.pk, Channel.SMS)]["unique_clicks"] == 1
    assert stored_aggregates()[(date(2024, 3, 30), promo.pk, Channel.SMS)]["cohort_clicks"] == 2
    assert stored_aggregates() == expected_aggregates(dataset)
    # The day's other deliveries are unchanged; the promo's row is written by both halves: the
    # click's day and its message's send day (the cohort) are the same day.
    assert second.counters == {"deliveries": 1, "tracking_days": 1, "rows_written": 2}


@pytest.mark.parametrize(("deliveries_per_batch", "days_per_batch"), [(1, 1), (2, 2), (100, 14)])
def test_batch_sizes_do_not_change_the_rows(dataset, deliveries_per_batch, days_per_batch):
    finished = run(deliveries_per_batch=deliveries_per_batch, days_per_batch=days_per_batch)

    assert finished.status == RunStatus.SUCCEEDED, finished.reason
    assert stored_aggregates() == expected_aggregates(dataset)
    assert (finished.counters["deliveries"], finished.counters["tracking_days"]) == (len(DELIVERIES), 3)


def test_a_small_pass_is_one_transaction_and_a_crash_in_it_writes_nothing(dataset, monkeypatch):
    def crash(**kwargs: Any) -> int:
        raise RuntimeError("worker lost")

    monkeypatch.setattr(reporting_aggregates, "upsert_tracking", crash)
    crashed = run()
    monkeypatch.undo()

    assert crashed.status == RunStatus.FAILED
    assert not DeliveryAggregate.objects.exists(), "the messages half rolled back with the failed tracking half"
    assert Workflow.objects.get(pk=WORKFLOW_ID).cursors.get("changes") is None
    assert run().status == RunStatus.SUCCEEDED
    assert stored_aggregates() == expected_aggregates(dataset)


def test_a_run_interrupted_between_batches_resumes_and_matches_an_uninterrupted_run(dataset, monkeypatch):
    real_upsert = reporting_aggregates.upsert_messages
    calls = []

    def crash_on_third_batch(**kwargs: Any) -> int:
        calls.append(kwargs["delivery_ids"])
        if len(calls) == 3:
            raise RuntimeError("worker lost")
        return real_upsert(**kwargs)

    monkeypatch.setattr(reporting_aggregates, "upsert_messages", crash_on_third_batch)
    crashed = run(deliveries_per_batch=2)
    monkeypatch.setattr(reporting_aggregates, "upsert_messages", real_upsert)

    assert crashed.status == RunStatus.FAILED and "worker lost" in crashed.reason
    done = [delivery for batch in calls[:2] for delivery in batch]
    cursors = stored_cursor()
    assert (cursors["pass"]["phase"], cursors["pass"]["after"]) == ("messages", done[-1])
    assert cursors["logs_updated_after"] is None, "the window moves only when the pass is complete"
    expected = expected_aggregates(dataset)
    assert stored_aggregates() == message_part({key: row for key, row in expected.items() if key[1] in done})

    resumed = run(deliveries_per_batch=2)

    assert resumed.status == RunStatus.SUCCEEDED
    assert resumed.counters["deliveries"] == len(DELIVERIES) - len(done)
    assert stored_aggregates() == expected
    assert stored_cursor()["pass"] is None


def test_a_run_interrupted_in_the_tracking_phase_resumes_after_the_last_day_done(dataset, monkeypatch):
    real_upsert = reporting_aggregates.upsert_tracking
    calls = []

    def crash_on_second_day(**kwargs: Any) -> int:
        calls.append(kwargs["days"])
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real_upsert(**kwargs)

    monkeypatch.setattr(reporting_aggregates, "upsert_tracking", crash_on_second_day)
    assert run(days_per_batch=1).status == RunStatus.FAILED
    monkeypatch.setattr(reporting_aggregates, "upsert_tracking", real_upsert)
    assert calls[0] == [date(2024, 3, 30)]
    pass_state = stored_cursor()["pass"]
    assert (pass_state["phase"], pass_state["after"]) == ("tracking", "2024-03-30")

    resumed = run(days_per_batch=1)

    assert resumed.counters == {"tracking_days": 2, "rows_written": sum(
        1 for (day, _, _), row in expected_aggregates(dataset).items() if day > date(2024, 3, 30) and has_tracking(row))}
    assert stored_aggregates() == expected_aggregates(dataset)


def test_an_interrupted_incremental_pass_resumes_with_its_own_window(dataset, monkeypatch, time_machine):
    run()
    time_machine.shift(timedelta(days=1))
    news, nothing_sent = dataset.deliveries["news"], dataset.deliveries["nothing_sent"]
    for key in ("g", "l"):  # two deliveries' pending messages are delivered
        DeliveryLog.objects.filter(pk=dataset.logs[key].pk).update(status=SENT, updated_at=datetime.now(UTC))
    for key in ("a", "i", "k"):  # three deliveries are clicked today (04-03 in Paris)
        TrackingLogFactory(delivery_log=dataset.logs[key], url_type=CLICK, tracked_at=datetime.now(UTC))
    real_upsert = reporting_aggregates.upsert_messages

    def crash_on_second_delivery(**kwargs: Any) -> int:
        if kwargs["delivery_ids"] != [news.pk]:
            raise RuntimeError("database went away")
        return real_upsert(**kwargs)

    monkeypatch.setattr(reporting_aggregates, "upsert_messages", crash_on_second_delivery)
    assert run(deliveries_per_batch=1).status == RunStatus.FAILED
    monkeypatch.setattr(reporting_aggregates, "upsert_messages", real_upsert)
    time_machine.shift(timedelta(hours=1))
    window = stored_cursor()["pass"]["window"]

    resumed = run(deliveries_per_batch=1)

    # Left after the crash: promo and push (their messages' cohorts gained a click) and nothing_sent
    # (its message delivered): three send-day rows, and today's tracking rows of news, promo and push.
    assert resumed.counters == {"deliveries": 3, "tracking_days": 1, "rows_written": 6}
    assert stored_aggregates() == expected_aggregates(dataset)
    assert stored_aggregates()[(date(2024, 3, 30), nothing_sent.pk, Channel.EMAIL)]["delivered"] == 1
    cursors = stored_cursor()
    assert cursors["logs_updated_after"] == (datetime.fromisoformat(window["updated_until"]) - CHANGE_MARGIN).isoformat()


def test_a_pause_between_batches_halts_and_the_resumed_run_finishes_the_pass(dataset, monkeypatch):
    real_upsert = reporting_aggregates.upsert_messages

    def pause_after_first_batch(**kwargs: Any) -> int:
        written = real_upsert(**kwargs)
        Workflow.objects.filter(pk=WORKFLOW_ID).update(state=WorkflowState.PAUSED)
        return written

    monkeypatch.setattr(reporting_aggregates, "upsert_messages", pause_after_first_batch)
    halted = run(deliveries_per_batch=2)
    monkeypatch.setattr(reporting_aggregates, "upsert_messages", real_upsert)

    assert halted.status == RunStatus.PAUSED
    assert halted.counters == {"deliveries": 2, "rows_written": len(stored_aggregates())}
    Workflow.objects.filter(pk=WORKFLOW_ID).update(state=WorkflowState.STARTED)
    continued = execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=Trigger.SHELL, run_id=halted.pk))

    assert continued.status == RunStatus.SUCCEEDED
    assert stored_aggregates() == expected_aggregates(dataset)
    assert continued.counters["deliveries"] == len(DELIVERIES)


def test_days_follow_the_instance_time_zone(dataset, settings):
    settings.TIME_ZONE = "UTC"

    run()

    news = dataset.deliveries["news"].pk
    # In UTC, log b (23:30 UTC on 03-29) is sent on 03-29, with log a.
    assert stored_aggregates()[(date(2024, 3, 29), news, Channel.EMAIL)]["sent"] == 2
