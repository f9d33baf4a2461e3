"""Several beat processes, one dispatcher: the election (workflows.beat_leader), the scheduler
built on it (workflows.scheduler), and real ``celery beat`` processes killed and frozen."""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import time_machine
from celery.beat import Scheduler
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from project.celery import app as celery_app
from workflows import beat_leader, health
from workflows.beat_leader import Leadership
from workflows.models import BeatLease, BeatProcess, SchedulerHeartbeat
from workflows.scheduler import DatabaseScheduler, scheduled_slot
from workflows.tasks import SLOT_HEADER
from workflows.worker_process import current_database_url

START = datetime.datetime(2030, 3, 4, 8, 0, 10, tzinfo=datetime.UTC)


def attempt(leadership: Leadership) -> bool:
    """One renewal or take-over attempt now, whatever the attempt interval says."""
    leadership._next_attempt = 0.0
    return leadership.keep()


# --- the election -------------------------------------------------------------------------------

@pytest.mark.django_db
def test_one_process_leads_and_the_others_stand_by() -> None:
    first, second = Leadership("beat-a:1"), Leadership("beat-b:2")

    with time_machine.travel(START, tick=False):
        assert attempt(first) is True
        assert attempt(second) is False
        assert attempt(first) is True  # a renewal

    lease = BeatLease.objects.get()
    assert (lease.holder, lease.token, lease.lease_until) == ("beat-a:1", 1, START + first.lease)
    assert set(BeatProcess.objects.values_list("name", flat=True)) == {"beat-a:1", "beat-b:2"}


@pytest.mark.django_db
def test_a_standby_takes_over_an_expired_lease_and_the_former_leader_stops() -> None:
    first, second = Leadership("beat-a:1"), Leadership("beat-b:2")
    with time_machine.travel(START, tick=False):
        attempt(first)
    with time_machine.travel(START + first.lease - datetime.timedelta(seconds=1), tick=False):
        assert attempt(second) is False, "the lease is still live"

    with time_machine.travel(START + first.lease, tick=False):
        assert attempt(second) is True
        # The former leader, frozen meanwhile, wakes up: its confirmation before a dispatch fails.
        assert first.confirm() is False
        assert attempt(first) is False

    lease = BeatLease.objects.get()
    assert (lease.holder, lease.token, lease.acquired_at) == ("beat-b:2", 2, START + first.lease)
    assert beat_leader.cluster().leadership_changes == 2


@pytest.mark.django_db
def test_a_leader_whose_lease_expired_unnoticed_takes_it_back_without_a_change_of_leader() -> None:
    leader = Leadership("beat-a:1")
    with time_machine.travel(START, tick=False):
        attempt(leader)
    with time_machine.travel(START + 3 * leader.lease, tick=False):
        assert leader.confirm() is False
        assert attempt(leader) is True

    assert BeatLease.objects.get().token == 1


@pytest.mark.django_db
def test_a_clean_stop_hands_over_at_the_next_attempt() -> None:
    first, second = Leadership("beat-a:1"), Leadership("beat-b:2")
    with time_machine.travel(START, tick=False):
        attempt(first)
        first.release()
        assert attempt(second) is True

    assert list(BeatProcess.objects.values_list("name", flat=True)) == ["beat-b:2"]


@pytest.mark.django_db
def test_healthz_and_metrics_name_the_leader_and_its_standbys(client) -> None:
    first, second = Leadership("beat-a:1"), Leadership("beat-b:2")
    attempt(first)
    attempt(second)
    SchedulerHeartbeat.objects.create(pk=1, beat_at=timezone.now())

    beat = health.check_beat()
    metrics = client.get("/metrics").content.decode()

    assert beat.details["leader"] == "beat-a:1"
    assert [standby["name"] for standby in beat.details["standbys"]] == ["beat-b:2"]
    assert "leader beat-a:1, 1 standby" in beat.message
    assert "workflow_beat_leadership_changes_total 1.0" in metrics
    assert re.search(r'workflow_beat_process_heartbeat_timestamp_seconds\{process="beat-b:2",role="standby"\} \d', metrics)


# --- the scheduler on top of it -----------------------------------------------------------------

@pytest.fixture
def every_minute(db) -> PeriodicTask:
    """The only enabled schedule: a task every minute, last sent at 07:59."""
    PeriodicTask.objects.update(enabled=False)
    return PeriodicTask.objects.create(
        name="beat-test", task="beat.test", crontab=CrontabSchedule.objects.create(minute="*", timezone="UTC"),
        last_run_at=START.replace(minute=59, hour=7, second=0),
    )


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(process, entry) of each message the schedulers would send, instead of sending it."""
    sends: list[tuple[str, str]] = []

    def record(scheduler: DatabaseScheduler, entry, producer=None, advance=True, **kwargs):
        sends.append((scheduler.leadership.name, entry.name))

    monkeypatch.setattr(Scheduler, "apply_async", record)
    return sends


@pytest.fixture(autouse=True)
def _keep_the_test_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """django-celery-beat closes connections it finds outside autocommit, as a test's is."""
    monkeypatch.setattr("django_celery_beat.schedulers.close_old_connections", lambda: None)


def scheduler_named(name: str) -> DatabaseScheduler:
    scheduler = DatabaseScheduler(app=celery_app, lazy=True)
    scheduler.leadership.name = name
    return scheduler


def tick_until_idle(scheduler: DatabaseScheduler) -> None:
    """Tick as beat's loop does, until the scheduler has nothing due (a tick returning 0 sent one)."""
    for _ in range(10):
        scheduler.leadership._next_attempt = 0.0
        if scheduler.tick() > 0:
            return


def test_only_the_leader_sends_and_its_successor_does_not_resend_the_slot(every_minute, sent) -> None:
    first, second = scheduler_named("beat-a:1"), scheduler_named("beat-b:2")
    with time_machine.travel(START, tick=False):  # 08:00:10: the 08:00 slot is due
        tick_until_idle(first)
        tick_until_idle(second)

    assert sent == [("beat-a:1", "beat-test")]
    # The leader wrote when it sent, not minutes later as django-celery-beat batches it.
    assert PeriodicTask.objects.get(pk=every_minute.pk).last_run_at == START

    # The leader freezes; its standby takes over within the same minute and reads the schedule.
    with time_machine.travel(START + first.leadership.lease + datetime.timedelta(seconds=1), tick=False):
        tick_until_idle(second)
        tick_until_idle(first)  # woken up: no longer the leader
    assert sent == [("beat-a:1", "beat-test")], "the 08:00 slot was sent once"

    with time_machine.travel(START.replace(minute=1, second=1), tick=False):
        tick_until_idle(second)
        tick_until_idle(first)
    assert sent == [("beat-a:1", "beat-test"), ("beat-b:2", "beat-test")]


def test_a_leader_frozen_between_deciding_and_sending_sends_nothing(every_minute, sent, monkeypatch) -> None:
    """The confirmation happens right before the send: a standby took over while the leader
    was frozen after its last renewal, so the woken leader drops the due entry."""
    first, second = scheduler_named("beat-a:1"), scheduler_named("beat-b:2")
    with time_machine.travel(START - datetime.timedelta(seconds=20), tick=False):  # 07:59:50, nothing due
        tick_until_idle(first)
    with time_machine.travel(START + first.leadership.lease, tick=False):
        attempt(second.leadership)
        # The former leader goes on with the tick it had started: the lease renewal is not due.
        first.leadership._next_attempt = time.monotonic() + 60
        first.tick()

    assert sent == []
    assert PeriodicTask.objects.get(pk=every_minute.pk).last_run_at == START.replace(minute=59, hour=7, second=0)


def test_every_beat_names_the_same_slot_for_a_due_entry(every_minute, monkeypatch) -> None:
    """The slot comes from the schedule and ``last_run_at`` alone, so a frozen leader and its
    successor, both reading 07:59, send the 08:00 slot under one name and the engine runs it once."""
    slots: list[tuple[str, str]] = []
    monkeypatch.setattr(Scheduler, "apply_async", lambda scheduler, entry, producer=None, advance=True, **kwargs:
                        slots.append((scheduler.leadership.name, entry.options["headers"][SLOT_HEADER])))
    every_minute.last_run_at = START.replace(minute=58, hour=7, second=0)  # beat was down at 07:59
    every_minute.save()
    first = scheduler_named("beat-a:1")
    with time_machine.travel(START, tick=False):
        tick_until_idle(first)
    PeriodicTask.objects.filter(pk=every_minute.pk).update(last_run_at=every_minute.last_run_at)  # as if unsent
    second = scheduler_named("beat-b:2")
    with time_machine.travel(START + first.leadership.lease + datetime.timedelta(seconds=1), tick=False):
        tick_until_idle(second)

    assert slots == [("beat-a:1", "2030-03-04T07:59:00+00:00"), ("beat-b:2", "2030-03-04T07:59:00+00:00")]


def test_an_interval_entry_is_due_one_period_after_its_last_run(db) -> None:
    task = PeriodicTask.objects.create(
        name="every-ten-seconds", task="beat.test", last_run_at=START,
        interval=IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS))

    assert scheduled_slot(ModelEntry(task, app=celery_app)) == START.replace(second=20)


# --- real beat processes --------------------------------------------------------------------------

LEASE_S = 3
QUEUE = f"beat-test-{os.getpid()}"


class Beat:
    """A ``celery beat`` process on the test database, with a short lease."""

    def __init__(self) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="beat-", suffix=".log", dir=settings.VAR_DIR)[1])
        env = {**os.environ, "DATABASE_URL": current_database_url(), "SECRET_KEY": settings.SECRET_KEY,
               "BEAT_LEASE_SECONDS": str(LEASE_S), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "campaign", "beat", "--loglevel", "INFO",
             "--schedule", str(self.log_path.with_suffix(".db"))],
            cwd=settings.BASE_DIR, env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.name = f"{os.uname().nodename}:{self.process.pid}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sends(self) -> int:
        return self.log().count("Sending due task beat-test")

    def leads(self) -> bool:
        return f"beat {self.name}: leads the dispatch" in self.log()

    def signal(self, number: int) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, number)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def wait_for(condition: Callable[[], bool], *, what: str, timeout: float) -> float:
    """Seconds until ``condition`` held."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.fixture
def beats(transactional_db) -> Iterator[Callable[[], Beat]]:
    """Start beats on a schedule of one task every second, sent to a queue nobody consumes
    (deleted at the end), with every workflow's schedule disabled."""
    PeriodicTask.objects.update(enabled=False)
    PeriodicTask.objects.create(
        name="beat-test", task="beat.test", queue=QUEUE,
        interval=IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS),
    )
    started: list[Beat] = []

    def start() -> Beat:
        beat = Beat()
        started.append(beat)
        return beat

    try:
        yield start
    finally:
        for beat in started:
            beat.stop()
        with celery_app.connection_for_write() as connection:
            # The queue as Celery declares it for this broker (on RabbitMQ a quorum queue on a topic
            # exchange): declaring it with other arguments would be refused.
            queue = celery_app.amqp.queues[QUEUE](connection.default_channel)
            queue.declare()  # kombu deletes only a queue its channel knows
            queue.delete()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_killed_leader_is_replaced_within_two_lease_periods(beats) -> None:
    leader = beats()
    wait_for(leader.leads, what="the first beat to lead", timeout=60)
    standby = beats()
    wait_for(lambda: BeatProcess.objects.filter(pk=standby.name).exists(), what="the standby's heartbeat", timeout=60)
    wait_for(lambda: leader.sends() >= 2, what="the leader to send", timeout=30)
    assert standby.sends() == 0

    leader.signal(signal.SIGKILL)
    took_over_after = wait_for(standby.leads, what="the standby to take over", timeout=6 * LEASE_S)
    wait_for(lambda: standby.sends() >= 2, what="the new leader to send", timeout=30)

    assert took_over_after < 2 * LEASE_S
    assert BeatLease.objects.get().holder == standby.name


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_frozen_leader_is_replaced_and_sends_nothing_once_woken(beats) -> None:
    leader = beats()
    wait_for(leader.leads, what="the first beat to lead", timeout=60)
    standby = beats()
    wait_for(lambda: BeatProcess.objects.filter(pk=standby.name).exists(), what="the standby's heartbeat", timeout=60)

    leader.signal(signal.SIGSTOP)
    sent_before_the_freeze = leader.sends()
    took_over_after = wait_for(standby.leads, what="the standby to take over", timeout=6 * LEASE_S)
    leader.signal(signal.SIGCONT)
    wait_for(lambda: "lost the beat lease" in leader.log(), what="the woken leader to notice", timeout=3 * LEASE_S)
    time.sleep(LEASE_S)

    assert took_over_after < 2 * LEASE_S
    assert leader.sends() == sent_before_the_freeze
    assert BeatLease.objects.get().holder == standby.name
    assert standby.sends() >= LEASE_S
