"""The soak: three workers on three hosts and two beats on two more, every built-in workflow on an
every-minute schedule over seeded demo data, and a fault at a steady pace, in rotation: a worker's
link cut, a worker killed, the beat leader frozen then resumed, the beat leader's link cut.

At the end (everything healed, beats stopped, runs drained) it checks:

- no two runs of a workflow overlapped, except a run that lost its lease with the run that took
  it over, and then the former committed no activity after the latter started;
- no lease is stuck and no run is left running;
- every schedule slot of the soak was sent by exactly one beat, exactly once, none missed;
- the data equal a control computed without faults (:mod:`tests.reliability.control`).

``SOAK_SECONDS`` sets the duration (180 by default, CI; ``make soak``: 600).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg2
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from campaign import demo
from tests.reliability import control, soak_workflow
from tests.reliability.conftest import BEAT_LEASE_SECONDS, LEASE_SECONDS, Cluster, Node
from tests.reliability.test_beat_failover import send_slots
from tests.workflows.helpers import wait_for
from workflows import commands, reaper
from workflows.definition import builtin_definitions
from workflows.models import ActivityRun, ActivityStatus, RunStatus, Workflow, WorkflowLog, WorkflowRun
from workflows.schedules import ensure_workflow
from workflows.tasks import REAP_ABANDONED_RUNS_TASK

pytestmark = [pytest.mark.reliability, pytest.mark.postgres,
              pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SOAK_SECONDS = int(os.environ.get("SOAK_SECONDS", "180"))
#: Small demo data: the first runs do real work (consolidation, purges, aggregates) within seconds.
PROFILES = 1_000
#: The first fault comes once every workflow has run at least once; then one every FAULT_EVERY_S.
FIRST_FAULT_S = 20
FAULT_EVERY_S = min(120, max(30, (SOAK_SECONDS - 40) // 4))
#: A cut lasts three workflow leases: the cut-off run's lease expires and the reaper may take it over.
CUT_S = 3 * LEASE_SECONDS
#: A frozen beat leader is resumed after this long: its successor has led for a while by then.
FREEZE_S = 4 * BEAT_LEASE_SECONDS
DRAIN_S = 120
#: Run once on the seeded data, before the control is copied. The demo data holds logs older than
#: cleanup's retention that these workflows never read: deliveries whose indicators and aggregates
#: were never computed, failed push logs whose invalid tokens were never disabled. Read before or
#: after cleanup purges those logs, the results differ, so the end state would depend on which
#: workflow happened to run first, faults or not. In production they read a log within hours, months
#: before it is old enough to be purged.
SUMMARISED_BEFORE = ("updateDeliveryIndicators", "reportingAggregates", "mobileAppOptOutMgt")
#: The soak workflow numbers about 20 a second (batches of 10, 400 ms each): more than a soak can
#: do, so a run is under way all along; the rest is done in-process at the end.
SOAK_NUMBERS = 25 * SOAK_SECONDS
WORKER_CONCURRENCY = 2
ENDED_BY_TAKEOVER = ("abandoned", "lease lost")


@dataclass
class Fault:
    kind: str
    at: float  # epoch seconds
    target: str
    failover_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        failover = f", failover {self.failover_s:.1f} s" if self.failover_s is not None else ""
        return f"{self.kind} ({self.target}) at +{self.at - SOAK_START[0]:.0f} s{failover}"


SOAK_START = [0.0]


class Soak:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.queues = sorted({definition.queue for definition in builtin_definitions()} | {"celery"})
        self.workers: list[Node] = []
        self.faults: list[Fault] = []

    def start(self) -> None:
        for _ in range(3):
            self.workers.append(self.cluster.worker(queues=self.queues, concurrency=WORKER_CONCURRENCY))
        self.cluster.beat()
        self.cluster.beat()

    def leader(self) -> Node:
        wait_for(lambda: self.cluster.leader() is not None, what="a beat leader", timeout=6 * BEAT_LEASE_SECONDS)
        return self.cluster.leader()

    def busiest_worker(self, offset: int) -> Node:
        """A live worker running a run now if any (its log names the run's task id), else by rotation."""
        live = [worker for worker in self.workers if worker.alive]
        running = set(WorkflowRun.objects.filter(status=RunStatus.RUNNING).values_list("celery_task_id", flat=True))
        for worker in live:
            log = worker.log()
            if any(task_id and task_id in log for task_id in running):
                return worker
        return live[offset % len(live)]

    def take_over(self, former: Node) -> float:
        return wait_for(lambda: (self.cluster.leader() or former) is not former, what="a standby to take over",
                        timeout=6 * BEAT_LEASE_SECONDS)

    def inject(self, number: int) -> Fault:
        kind = ("cut a worker's link", "kill a worker", "freeze the beat leader", "cut the beat leader's link")[number % 4]
        if kind == "cut a worker's link":
            worker = self.busiest_worker(number)
            fault = Fault(kind, time.time(), worker.name)
            worker.host.cut()
            time.sleep(CUT_S)
            worker.host.heal()
        elif kind == "kill a worker":
            worker = self.busiest_worker(number)
            fault = Fault(kind, time.time(), worker.name)
            worker.kill()
            self.workers.remove(worker)
            replacement = self.cluster.worker(worker.host, queues=self.queues, concurrency=WORKER_CONCURRENCY)
            self.workers.append(replacement)
            fault.notes.append(f"replaced by {replacement.name}")
        elif kind == "freeze the beat leader":
            leader = self.leader()
            fault = Fault(kind, time.time(), leader.name)
            leader.signal(signal.SIGSTOP)
            fault.failover_s = self.take_over(leader)
            time.sleep(max(0.0, FREEZE_S - (time.time() - fault.at)))
            leader.signal(signal.SIGCONT)
        else:
            leader = self.leader()
            fault = Fault(kind, time.time(), leader.name)
            leader.host.cut()
            fault.failover_s = self.take_over(leader)
            time.sleep(max(0.0, CUT_S - (time.time() - fault.at)))
            leader.host.heal()
        self.faults.append(fault)
        print(f"fault: {fault}", flush=True)
        return fault


def every_minute_schedules() -> list[str]:
    """Every built-in workflow and the reaper on an every-minute crontab; the other housekeeping
    task off. Returns the task names scheduled."""
    every_minute = CrontabSchedule.objects.create(minute="*", timezone="UTC")
    PeriodicTask.objects.update(enabled=False)
    tasks = []
    ensure_workflow(soak_workflow.definition)
    Workflow.objects.filter(pk=soak_workflow.SOAK_ID).update(properties={"total": SOAK_NUMBERS})
    for definition in [*builtin_definitions(), soak_workflow.definition]:
        task, _ = PeriodicTask.objects.get_or_create(
            name=definition.id, defaults={"task": definition.task_name, "kwargs": json.dumps({"trigger": "schedule"}),
                                          "queue": definition.queue, "crontab": every_minute})
        tasks.append(task.task)
    tasks.append(REAP_ABANDONED_RUNS_TASK)
    # A first send one minute from now, not a catch-up of everything at once.
    PeriodicTask.objects.filter(task__in=tasks).update(crontab=every_minute, interval=None, enabled=True,
                                                      last_run_at=timezone.now())
    return tasks


def copy_database(source: str, target: str) -> None:
    """``CREATE DATABASE target TEMPLATE source``: nobody may be connected to ``source`` meanwhile."""
    connection.close()
    params = connection.settings_dict
    admin = psycopg2.connect(host=params.get("HOST") or "127.0.0.1", port=params.get("PORT") or 5432,
                             user=params.get("USER") or "postgres", password=params.get("PASSWORD") or None, dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
        if source:
            cursor.execute(f'CREATE DATABASE "{target}" TEMPLATE "{source}"')
    admin.close()


def control_url(name: str) -> str:
    params = connection.settings_dict
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    user, host, port = params.get("USER") or "postgres", params.get("HOST") or "127.0.0.1", params.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{name}"


def overlaps() -> tuple[int, list[str]]:
    """(pairs of overlapping runs explained by a takeover, unexplained overlaps)."""
    explained, problems = 0, []
    runs = (WorkflowRun.objects.exclude(status__in=[RunStatus.SKIPPED, RunStatus.QUEUED]).filter(started_at__isnull=False)
            .order_by("workflow_id", "started_at").values("pk", "workflow_id", "started_at", "finished_at", "reason"))
    by_workflow: dict[str, list[dict]] = {}
    for run in runs:
        by_workflow.setdefault(run["workflow_id"], []).append(run)
    for workflow_runs in by_workflow.values():
        for index, earlier in enumerate(workflow_runs):
            for later in workflow_runs[index + 1:]:
                if earlier["finished_at"] is None or later["started_at"] < earlier["finished_at"]:
                    if earlier["reason"] not in ENDED_BY_TAKEOVER:
                        problems.append(f"run #{earlier['pk']} and run #{later['pk']} of {earlier['workflow_id']} overlap")
                        continue
                    late = ActivityRun.objects.filter(run_id=earlier["pk"], status=ActivityStatus.SUCCEEDED,
                                                      finished_at__gt=later["started_at"])
                    if late.exists():
                        problems.append(f"run #{earlier['pk']} committed an activity after run #{later['pk']} took over")
                    explained += 1
    return explained, problems


def numbers() -> tuple[int, int]:
    """(journal rows of the soak workflow's numbers, distinct numbers among them)."""
    rows = WorkflowLog.objects.filter(workflow_id=soak_workflow.SOAK_ID, message__startswith=soak_workflow.EFFECT_PREFIX)
    return rows.count(), rows.values("message").distinct().count()


def test_soak_with_a_fault_at_a_steady_pace_loses_and_doubles_nothing(cluster: Cluster) -> None:
    wall_start = time.monotonic()
    demo.seed_demo(profiles=PROFILES, seed=demo.DEFAULT_SEED, anchor=demo.default_anchor())
    for workflow_id in SUMMARISED_BEFORE:
        commands.run_now(workflow_id, actor="soak", force=True, sync=True)
    test_database = connection.settings_dict["NAME"]
    control_database = f"{test_database}_control"
    copy_database(test_database, control_database)
    try:
        tasks = every_minute_schedules()
        soak = Soak(cluster)
        soak.start()
        SOAK_START[0] = time.time()
        print(f"\nsoak: {SOAK_SECONDS} s, {len(tasks)} tasks every minute, a fault every {FAULT_EVERY_S} s from "
              f"+{FIRST_FAULT_S} s", flush=True)
        next_fault, number = SOAK_START[0] + FIRST_FAULT_S, 0
        while time.time() < SOAK_START[0] + SOAK_SECONDS:
            if time.time() >= next_fault and time.time() + CUT_S + 5 < SOAK_START[0] + SOAK_SECONDS:
                soak.inject(number)
                number += 1
                next_fault += FAULT_EVERY_S
            time.sleep(0.5)
        soak_end = time.time()

        for host in cluster.hosts:
            if host.is_cut:
                host.heal()
        commands.pause(soak_workflow.SOAK_ID, actor="soak")  # its run halts at its next batch
        for beat in cluster.beats():
            beat.signal(signal.SIGCONT)
            beat.stop()
        # Drain: the runs under way finish; a run whose worker died is reaped here (beat is gone).
        def drained() -> bool:
            reaper.reap_abandoned_runs()
            return not WorkflowRun.objects.filter(status__in=[RunStatus.RUNNING, RunStatus.QUEUED]).exists()

        drain_s = wait_for(drained, what="the runs to drain", timeout=DRAIN_S)
        for worker in soak.workers:
            worker.stop()

        # -- checks on the history -----------------------------------------------------------
        runs = Counter(WorkflowRun.objects.values_list("status", flat=True))
        soak_runs = Counter(f"{status}: {reason}" if reason else status for status, reason in
                            WorkflowRun.objects.filter(workflow_id=soak_workflow.SOAK_ID).values_list("status", "reason"))
        numbered_in_soak = numbers()
        cursor_in_soak = Workflow.objects.get(pk=soak_workflow.SOAK_ID).cursors.get("number", 0)
        taken_over, problems = overlaps()
        stuck = list(Workflow.objects.filter(lease_holder__isnull=False).values_list("pk", "lease_holder"))
        sends = Counter()
        per_task: dict[str, Counter] = {}
        for task in tasks:
            per_task[task] = send_slots(cluster.beats(), task=task)
        first_slot = datetime.datetime.fromtimestamp(SOAK_START[0] + 60, datetime.UTC).replace(second=0, microsecond=0)
        last_slot = datetime.datetime.fromtimestamp(soak_end - 5, datetime.UTC).replace(second=0, microsecond=0)
        slots = []
        while first_slot <= last_slot:
            slots.append(first_slot)
            first_slot += datetime.timedelta(minutes=1)
        for counts in per_task.values():
            for slot in slots:
                sends[min(counts[slot], 2)] += 1
        missed = [(task, slot) for task, counts in per_task.items() for slot in slots if counts[slot] == 0]
        doubled = [(task, slot, n) for task, counts in per_task.items() for slot, n in counts.items() if n > 1]
        dedup_skips = WorkflowRun.objects.filter(status=RunStatus.SKIPPED, reason__icontains="slot").count()

        # -- the data against the control ----------------------------------------------------
        final_passes = control.settle()
        rest = commands.run_now(soak_workflow.SOAK_ID, actor="soak", force=True, sync=True, overrides={"sleep_ms": 0})
        result = subprocess.run([sys.executable, "-m", "tests.reliability.control"], cwd=settings.BASE_DIR,
                                env={**os.environ, "DATABASE_URL": control_url(control_database)},
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        control_passes = len({line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("control pass")})
        tables = control.compared_columns()
        with connection.cursor() as cursor:
            soaked = control.fingerprints(cursor, tables)
        control_connection = psycopg2.connect(control_url(control_database))
        try:
            controlled = control.fingerprints(control_connection.cursor(), tables)
            with connection.cursor() as cursor:
                explained_differences = [control.differences(cursor, control_connection.cursor(), table, columns)
                                         for table, columns in tables.items() if soaked[table] != controlled[table]]
        finally:
            control_connection.close()
    finally:
        copy_database("", control_database)

    differing = {table: (soaked[table], controlled[table]) for table in tables if soaked[table] != controlled[table]}
    rows = sum(count for count, _ in soaked.values())
    print(f"soak: {len(soak.faults)} faults: " + "; ".join(str(fault) for fault in soak.faults))
    print(f"soak: runs {dict(runs)}; overlaps explained by a takeover {taken_over}; drained in {drain_s:.1f} s")
    print(f"soak: slots {len(slots)} x {len(tasks)} tasks: sent once {sends[1]}, missed {len(missed)}, "
          f"sent twice {len(doubled)}, duplicates skipped by the engine {dedup_skips}")
    not_succeeded = sorted({(wid, f"{status}: {reason}")
                            for wid, status, reason in final_passes[-1] if status != RunStatus.SUCCEEDED})
    print(f"soak: settled after {len(final_passes)} canonical passes (the control after {control_passes}); in the last "
          f"pass not succeeded: {not_succeeded}")
    print(f"soak: rows compared with the control {rows - sum(soaked[t][0] for t in differing)}/{rows} in {len(tables)} "
          f"tables, differing tables {sorted(differing)}")
    print(f"soak: soak workflow: runs {dict(soak_runs)}; numbered during the soak {numbered_in_soak[0]} "
          f"(distinct {numbered_in_soak[1]}, cursor {cursor_in_soak}), after the last run {numbers()[0]}/{SOAK_NUMBERS}")
    print(f"soak: wall time {time.monotonic() - wall_start:.0f} s")

    assert rest.status == RunStatus.SUCCEEDED, rest.reason
    assert numbered_in_soak == (cursor_in_soak, cursor_in_soak), "during the soak, each number up to the cursor once"
    assert numbers() == (SOAK_NUMBERS, SOAK_NUMBERS), "every number exactly once"
    assert not problems, problems
    assert not stuck, f"leases still held after the drain: {stuck}"
    assert not missed, f"slots missed: {missed}"
    assert not doubled, f"slots sent twice: {doubled}"
    assert not differing, "tables differing from the control:\n" + "\n".join(explained_differences)
