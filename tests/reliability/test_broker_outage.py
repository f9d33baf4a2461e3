"""The broker killed for a few seconds under a running workflow, then restarted on the same port
with its data: Redis (append-only file, fsync at every write) and RabbitMQ (a node of its own,
quorum queues).

The worker and beat run on hosts that reach the broker through their link's forwarder. The test
asserts what an operator needs: both processes are still up once the broker is back, the run that
was under way ends with every source exactly once (its message is redelivered when the worker
could not acknowledge it), runs queued after the outage execute, and the scheduled workflow's next
slots run. The figures (outage, time to recover) are printed (pytest -s shows them).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tests.reliability.conftest import Cluster, forwarded_url
from tests.workflows import sample_workflow
from tests.workflows.helpers import effects, seed_sample_sources, wait_for
from tests.workflows.sample_workflow import QUICK_ID, SAMPLE_ID, SAMPLE_QUEUE
from workflows.benchmarks.event_ingestion import free_port
from workflows.models import FINAL_RUN_STATUSES, RunStatus, Workflow, WorkflowRun
from workflows.schedules import ensure_workflow
from workflows.worker_process import current_database_url

pytestmark = [pytest.mark.reliability, pytest.mark.postgres,
              pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SOURCES = 1_000
#: 50 batches of 20, each pausing 200 ms: a run of about 10 s, under way during the whole outage.
PROPERTIES = {"batch_size": 20, "sleep_ms": 200}
OUTAGE_S = 5
BROKER_READY_TIMEOUT_S = 60
#: The scheduled workflow's period: several slots fall in the outage, and several after it.
SLOT_EVERY_S = 2


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + BROKER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the broker did not listen on {port} within {BROKER_READY_TIMEOUT_S} s:\n"
                       f"{log.read_text(errors='replace')}")


class BrokerServer:
    """A broker server of this test alone, on its own port, killed and restarted with its data."""

    kind = ""
    default_port = 0

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.log_path = directory / "broker.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> float:
        """Start the server; returns the seconds until it accepted connections."""
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv(), cwd=self.directory, env=self.env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        wait_listening(self.port, self.process, self.log_path)
        self.wait_ready()
        return time.monotonic() - started

    def wait_ready(self) -> None:
        """Listening is not always serving (RabbitMQ opens its port before its queues are back)."""

    def pending(self, queue: str) -> int:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL the server: nothing is flushed, no client is told."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class RedisServer(BrokerServer):
    """Persistence as a production broker needs it: every write in the append-only file, fsync'd
    before the reply, so a message Redis accepted survives a kill."""

    kind = "redis"
    default_port = 6379

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", ""]

    def pending(self, queue: str) -> int:
        """Messages waiting in ``queue`` plus those delivered and not acknowledged."""
        def ask(*command: str) -> int:
            result = subprocess.run(["redis-cli", "-p", str(self.port), *command], capture_output=True, text=True,
                                    timeout=10, check=True)
            return int(result.stdout.strip())

        return ask("llen", queue) + ask("hlen", "unacked")


RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class RabbitMQNode(BrokerServer):
    """A RabbitMQ node of its own (name, ports, data folder), run as the ``rabbitmq`` user so that
    it shares the machine's Erlang cookie and ``rabbitmqctl`` reaches it. No plugin is enabled, and
    neither ``/etc/rabbitmq/rabbitmq.conf`` nor ``rabbitmq-env.conf`` is read."""

    kind = "rabbitmq"
    default_port = 5672

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.dist_port = free_port()
        self.node = f"rel{os.getpid()}x{self.port}@localhost"
        (directory / "enabled_plugins").write_text("")
        (directory / "rabbitmq-env.conf").write_text("")
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
        )
        shutil.chown(directory, "rabbitmq", "rabbitmq")
        for path in directory.iterdir():
            shutil.chown(path, "rabbitmq", "rabbitmq")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": "/var/lib/rabbitmq",  # the machine's Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
        }

    def argv(self) -> list[str]:
        return ["runuser", "-u", "rabbitmq", "--", str(RABBITMQ_BIN / "rabbitmq-server")]

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "rabbitmq", "--", str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
                              env=self.env(), capture_output=True, text=True, timeout=timeout, check=False)

    def wait_ready(self) -> None:
        result = self.ctl("await_startup", "--timeout", str(BROKER_READY_TIMEOUT_S), timeout=BROKER_READY_TIMEOUT_S + 10)
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl await_startup failed:\n{result.stdout}{result.stderr}\n{self.log()}")

    def pending(self, queue: str) -> int:
        """Messages in ``queue``, ready or delivered and not acknowledged."""
        result = self.ctl("list_queues", "--quiet", "--no-table-headers", "name", "messages", timeout=30)
        counts = dict(line.split() for line in result.stdout.splitlines() if line.strip())
        return int(counts.get(queue, 0))

    def kill(self) -> None:
        super().kill()
        # beam may outlive the shell that started it if it left the process group: stop by node name.
        self.ctl("stop", timeout=30)


BROKERS = {"redis": (RedisServer, "redis-server"), "rabbitmq": (RabbitMQNode, str(RABBITMQ_BIN / "rabbitmq-server"))}


@pytest.fixture(params=sorted(BROKERS))
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerServer]:
    server_class, executable = BROKERS[request.param]
    if not shutil.which(executable):
        pytest.skip(f"{executable} is not installed")
    # Not under tmp_path: pytest's folders are private to root, and the RabbitMQ node runs as rabbitmq.
    directory = Path(tempfile.mkdtemp(prefix=f"outage-{request.param}-"))
    request.addfinalizer(lambda: shutil.rmtree(directory, ignore_errors=True))
    server = server_class(directory)
    startup_s = server.start()
    print(f"{server.kind} started in {startup_s:.1f} s on port {server.port}")
    try:
        yield server
    finally:
        server.kill()
        if any(getattr(getattr(request.node, f"report_{when}", None), "failed", False) for when in ("setup", "call")):
            print(f"\n----- log of the {server.kind} server (last 80 lines) -----")
            print("\n".join(server.log().splitlines()[-80:]))


@pytest.fixture
def sources(transactional_db: None) -> int:
    ensure_workflow(sample_workflow.definition)
    ensure_workflow(sample_workflow.quick_definition)
    Workflow.objects.filter(pk=SAMPLE_ID).update(properties=PROPERTIES)
    seed_sample_sources(SOURCES, campaign_label="broker outage")
    return SOURCES


def queue_run(workflow_id: str, broker: BrokerServer) -> int:
    """Queue a run the way an operator does (``manage.py workflow run``), sent to ``broker``."""
    env = {**os.environ, "CELERY_BROKER_URL": broker.url, "DATABASE_URL": current_database_url(),
           "SECRET_KEY": settings.SECRET_KEY, "WORKFLOW_EXTRA_MODULES": sample_workflow.__name__}
    result = subprocess.run([sys.executable, "manage.py", "workflow", "run", workflow_id], cwd=settings.BASE_DIR,
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    queued = re.match(r"Queued run #(\d+) ", result.stdout)
    assert result.returncode == 0 and queued, f"queueing {workflow_id} failed:\n{result.stdout}{result.stderr}"
    return int(queued.group(1))


def reconnected_after(log: str, moment: datetime.datetime) -> float | None:
    """Seconds from ``moment`` to the first ``Connected to`` line of a worker's log after it."""
    for line in log.splitlines():
        if "Connected to" in line and line.startswith("["):
            logged = datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
            if logged >= moment:
                return (logged - moment).total_seconds()
    return None


def status_of(run_id: int) -> str:
    return WorkflowRun.objects.values_list("status", flat=True).get(pk=run_id)


def test_worker_and_beat_ride_through_a_broker_outage_and_lose_no_run(cluster: Cluster, broker: BrokerServer,
                                                                      sources: int) -> None:
    PeriodicTask.objects.update(enabled=False)
    PeriodicTask.objects.create(
        name="outage-quick", task=f"workflows.{QUICK_ID}", queue=SAMPLE_QUEUE, kwargs=json.dumps({"trigger": "schedule"}),
        interval=IntervalSchedule.objects.create(every=SLOT_EVERY_S, period=IntervalSchedule.SECONDS),
    )
    host = cluster.host()
    broker_url = forwarded_url(broker.url, host, default_port=broker.default_port)
    worker = cluster.worker(host, queues=[SAMPLE_QUEUE], concurrency=2, CELERY_BROKER_URL=broker_url)
    beat = cluster.beat(host, CELERY_BROKER_URL=broker_url)
    wait_for(lambda: WorkflowRun.objects.filter(workflow_id=QUICK_ID, status=RunStatus.SUCCEEDED).exists(),
             what="a first scheduled slot to run", timeout=60)

    under_way = queue_run(SAMPLE_ID, broker)
    wait_for(lambda: effects()[0] >= 100, what="the run under way", timeout=60)

    broker.kill()
    killed_at, killed_local = time.monotonic(), datetime.datetime.now()
    time.sleep(OUTAGE_S)
    restart_s = broker.start()
    back_at, back, back_local = time.monotonic(), timezone.now(), datetime.datetime.now()
    outage_s = back_at - killed_at
    after = [queue_run(QUICK_ID, broker), queue_run(SAMPLE_ID, broker)]

    wait_for(lambda: status_of(after[0]) in FINAL_RUN_STATUSES, what="a run queued after the outage", timeout=120)
    recovered_s = time.monotonic() - back_at
    wait_for(lambda: status_of(under_way) in FINAL_RUN_STATUSES and status_of(after[1]) in FINAL_RUN_STATUSES,
             what="the run under way and the one queued after", timeout=180)
    wait_for(lambda: WorkflowRun.objects.filter(workflow_id=QUICK_ID, trigger="schedule", created_at__gt=back,
                                                status=RunStatus.SUCCEEDED).count() >= 3,
             what="the scheduled workflow's next slots", timeout=60)

    assert worker.alive and beat.alive, "the worker and beat rode through the outage"
    beat.stop()
    # Nothing left for later: every message taken before, during or after the outage was acknowledged
    # (on Redis, one left unacknowledged would come back only after the visibility timeout).
    wait_for(lambda: broker.pending(SAMPLE_QUEUE) == 0, what="every message acknowledged", timeout=60)
    assert status_of(under_way) == RunStatus.SUCCEEDED, "the run under way went on through the outage"
    assert "Unrecoverable error" not in worker.log()
    runs = WorkflowRun.objects.filter(workflow_id=SAMPLE_ID).order_by("pk")
    statuses = {run.pk: (run.status, run.reason) for run in runs}
    assert effects() == (SOURCES, SOURCES), f"every source exactly once; runs: {statuses}"
    assert not WorkflowRun.objects.filter(status=RunStatus.QUEUED).exclude(workflow_id=QUICK_ID).exists()
    reconnected = reconnected_after(worker.log(), killed_local)
    assert reconnected is not None, "the worker reconnected"
    reconnect_s = max(0.0, reconnected - (back_local - killed_local).total_seconds())
    print(f"{broker.kind}: outage {outage_s:.1f} s (restart {restart_s:.1f} s), worker reconnected {reconnect_s:.1f} s "
          f"after the broker was back, first run after it done "
          f"{recovered_s:.1f} s after the broker was back (queueing it took a CLI start); "
          f"runs of the sample workflow: {statuses}")
