"""Two beats on two hosts and an every-minute schedule: the leader is SIGKILLed just before a
slot, then its successor is frozen (SIGSTOP) just before the next one and resumed after it. Every
slot fires exactly once: sent once by whichever beat led (counted in the beats' own logs) and run
once by the worker (counted from the runs and their slots).
"""

from __future__ import annotations

import datetime
import json
import re
import signal
import time
from collections import Counter

import pytest
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from tests.reliability.conftest import BEAT_LEASE_SECONDS, Cluster, Node
from tests.workflows import sample_workflow
from tests.workflows.helpers import wait_for
from tests.workflows.sample_workflow import QUICK_ID, SAMPLE_QUEUE
from workflows.models import RunStatus, Trigger, WorkflowRun
from workflows.schedules import ensure_workflow

pytestmark = [pytest.mark.reliability, pytest.mark.postgres,
              pytest.mark.django_db(transaction=True, serialized_rollback=True)]

TASK = f"workflows.{QUICK_ID}"
#: Faults land this many seconds into a minute: the takeover (under two beat leases) spans the next
#: slot, which the successor must send late, once.
FAULT_SECOND = 58
#: A frozen leader is resumed this many seconds into the next minute, after its successor sent that slot.
THAW_SECOND = 15
_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+: ")


def every_minute_schedule() -> PeriodicTask:
    """The only enabled schedule: the quick sample workflow every minute."""
    PeriodicTask.objects.update(enabled=False)
    ensure_workflow(sample_workflow.quick_definition)
    return PeriodicTask.objects.create(
        name="reliability: quick sample every minute", task=TASK, queue=SAMPLE_QUEUE,
        kwargs=json.dumps({"trigger": "schedule"}), crontab=CrontabSchedule.objects.create(minute="*", timezone="UTC"),
    )


def sleep_until_second(second: int, *, at_least: float = 0) -> datetime.datetime:
    """Sleep until ``second`` seconds into a minute, at least ``at_least`` seconds from now."""
    now = time.time()
    target = (int(now + at_least) // 60) * 60 + second
    if target < now + at_least:
        target += 60
    time.sleep(target - time.time())
    return datetime.datetime.fromtimestamp(target, datetime.UTC)


def send_slots(beats: list[Node], *, task: str = TASK) -> Counter[datetime.datetime]:
    """The minute of each send of ``task`` in every beat's log (the beats log in UTC)."""
    sends: Counter[datetime.datetime] = Counter()
    for beat in beats:
        for line in beat.sends(task):
            stamp = datetime.datetime.strptime(_LOG_TIME.match(line).group(1), "%Y-%m-%d %H:%M:%S")
            sends[stamp.replace(second=0, tzinfo=datetime.UTC)] += 1
    return sends


def take_over(cluster: Cluster, former: Node) -> float:
    """Seconds until a beat other than ``former`` leads."""
    return wait_for(lambda: (cluster.leader() or former) is not former, what="a standby to take over",
                    timeout=6 * BEAT_LEASE_SECONDS)


def test_every_slot_fires_once_when_the_leader_is_killed_and_its_successor_frozen(cluster: Cluster) -> None:
    every_minute_schedule()
    cluster.worker(queues=[SAMPLE_QUEUE])
    cluster.beat()
    cluster.beat()
    wait_for(lambda: cluster.leader() is not None, what="a leader", timeout=30)

    killed = cluster.leader()
    sleep_until_second(FAULT_SECOND, at_least=10)
    killed.kill()
    kill_failover_s = take_over(cluster, killed)
    cluster.beat(killed.host)  # a new standby where the killed one ran

    frozen = cluster.leader()
    frozen_at = sleep_until_second(FAULT_SECOND, at_least=10)
    frozen.signal(signal.SIGSTOP)
    freeze_failover_s = take_over(cluster, frozen)
    frozen_sends = len(frozen.sends(TASK))
    sleep_until_second(THAW_SECOND, at_least=5)
    frozen.signal(signal.SIGCONT)
    wait_for(lambda: "lost the beat lease" in frozen.log(), what="the resumed beat to notice", timeout=10)
    last_slot = sleep_until_second(5, at_least=5).replace(second=0)  # one more slot, sent by the new leader
    wait_for(lambda: WorkflowRun.objects.filter(workflow_id=QUICK_ID, slot=last_slot, status=RunStatus.SUCCEEDED).exists(),
             what=f"the run of the {last_slot:%H:%M} slot", timeout=30)
    for beat in cluster.beats():
        beat.stop()

    sends = send_slots(cluster.beats())
    first_slot = min(sends)
    slots = [first_slot + datetime.timedelta(minutes=index) for index in range(int((last_slot - first_slot).seconds / 60) + 1)]
    runs = Counter(WorkflowRun.objects.filter(workflow_id=QUICK_ID, trigger=Trigger.SCHEDULE, status=RunStatus.SUCCEEDED)
                   .values_list("slot", flat=True))
    missed = [slot for slot in slots if sends[slot] == 0]
    doubled = [slot for slot in slots if sends[slot] > 1]

    assert len(slots) >= 3 and frozen_at.replace(second=0) + datetime.timedelta(minutes=1) in slots
    assert not missed and not doubled, f"sends per slot: {dict(sends)}"
    assert all(runs[slot] == 1 for slot in slots), (
        f"runs per slot: {dict(runs)}; runs: "
        f"{list(WorkflowRun.objects.filter(workflow_id=QUICK_ID).values_list('pk', 'status', 'reason', 'slot', 'trigger'))}")
    assert len(frozen.sends(TASK)) == frozen_sends, "the resumed former leader sent nothing"
    assert not WorkflowRun.objects.filter(workflow_id=QUICK_ID, status=RunStatus.SKIPPED).exists(), "no duplicate to skip"
    assert kill_failover_s < 2 * BEAT_LEASE_SECONDS + 1 and freeze_failover_s < 2 * BEAT_LEASE_SECONDS + 1
    assert timezone.now() - last_slot < datetime.timedelta(minutes=2)
    print(f"\nbeat leader SIGKILLed at :{FAULT_SECOND}: failover {kill_failover_s:.1f} s; next leader SIGSTOPped at "
          f":{FAULT_SECOND} and resumed at :{THAW_SECOND}: failover {freeze_failover_s:.1f} s, sent nothing once resumed "
          f"(beat lease {BEAT_LEASE_SECONDS} s); slots {len(slots)}, each sent once and run once: slots missed "
          f"{len(missed)}, sent twice {len(doubled)}")
