"""Fixtures of the reliability suite: hosts (network namespaces, :mod:`tests.reliability.netns`)
running real ``celery worker`` and ``celery beat`` processes that reach PostgreSQL and the broker
only through forwarders on their link, so that a test can cut a host off, kill or freeze it.

The suite needs root, ``ip netns``, socat and PostgreSQL; it runs only when selected
(``-m reliability`` or ``RELIABILITY=1``), so ``make test`` stays fast. Without root or ``ip netns``
it is skipped, unless ``REQUIRE_NETNS=1`` (CI), which makes that a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection

from tests.reliability import netns
from tests.reliability.netns import Host, Hosts

#: Short leases, so that a takeover happens within seconds; long enough that a live run renews in time.
LEASE_SECONDS = 4
BEAT_LEASE_SECONDS = 3
READY_TIMEOUT_S = 60
HERE = Path(__file__).resolve().parent


def _selected(config: pytest.Config) -> bool:
    return os.environ.get("RELIABILITY") == "1" or "reliability" in (config.getoption("markexpr") or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in item.path.parents]
    if not mine:
        return
    if not _selected(config):
        skip = pytest.mark.skip(reason="the reliability suite runs when selected: -m reliability or RELIABILITY=1")
        for item in mine:
            item.add_marker(skip)
        return
    reason = netns.unavailable_reason()
    if not reason:
        return
    if os.environ.get("REQUIRE_NETNS") == "1":
        raise pytest.UsageError(f"REQUIRE_NETNS=1 but the reliability suite cannot create hosts: {reason}")
    skip = pytest.mark.skip(reason=f"the reliability suite needs network namespaces: {reason}")
    for item in mine:
        item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    setattr(item, f"report_{report.when}", report)  # the fixtures print the processes' logs on failure
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"report_{when}", None), "failed", False) for when in ("setup", "call"))


# -- processes on hosts ------------------------------------------------------------------------------

def forwarded_url(url: str, host: Host, *, default_port: int) -> str:
    """``url`` with its host and port replaced by a forwarder on ``host``'s link to them."""
    parts = urlsplit(url)
    address, port = host.forward(parts.port or default_port, target_host=parts.hostname or "127.0.0.1")
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{address}:{port}" if credentials else f"{address}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def database_url_for(host: Host) -> str:
    """The test database, through ``host``'s forwarder, with the host's name as PostgreSQL
    ``application_name``: the forwarder hides the source address, the name tells its sessions apart."""
    database = connection.settings_dict
    user = database.get("USER") or "postgres"
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    address, port = host.forward(int(database.get("PORT") or 5432), target_host=database.get("HOST") or "127.0.0.1")
    return f"postgres://{user}{password}@{address}:{port}/{database['NAME']}?application_name={host.name}"


def node_env(host: Host, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url_for(host),
        "CELERY_BROKER_URL": forwarded_url(settings.CELERY_BROKER_URL, host, default_port=6379),
        "SECRET_KEY": settings.SECRET_KEY,
        "VAR_DIR": str(settings.VAR_DIR),
        "WORKFLOW_LEASE_SECONDS": str(LEASE_SECONDS),
        "BEAT_LEASE_SECONDS": str(BEAT_LEASE_SECONDS),
        "WORKFLOW_EXTRA_MODULES": "tests.workflows.sample_workflow,tests.reliability.soak_workflow",
        "PYTHONUNBUFFERED": "1",
        "TZ": "UTC",  # log times in UTC: the beat scenarios read the minute of each send from them
        **extra,
    }


class Node:
    """A ``celery worker`` or ``celery beat`` process on a host."""

    def __init__(self, role: str, name: str, host: Host, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.role = role
        self.name = name
        self.host = host
        self.log_path = log_dir / f"{name}.log"
        self.process = host.popen(argv, env=env, log_path=self.log_path, cwd=settings.BASE_DIR)
        #: The beat's name in the election (``hostname:pid``): the process exec'd by ``ip netns exec`` keeps its pid.
        self.beat_name = f"{os.uname().nodename}:{self.process.pid}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, marker: str) -> Node:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            if marker in self.log():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready after {READY_TIMEOUT_S}s:\n{self.log()}")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, number: int) -> None:
        """Send ``number`` to the whole process group (a worker's pool processes too)."""
        if self.alive:
            os.killpg(self.process.pid, number)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (a warm shutdown), SIGKILL if it does not end in time."""
        if not self.alive:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def leads(self) -> bool:
        return f"beat {self.beat_name}: leads the dispatch" in self.log()

    def sends(self, task: str) -> list[str]:
        """The log lines of this beat's sends of ``task``."""
        return [line for line in self.log().splitlines() if "Sending due task" in line and f"({task})" in line]

    def __repr__(self) -> str:
        return f"{self.name} on {self.host.name}"


class Cluster:
    """The hosts and processes of one test, all stopped and deleted at its end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.hosts = Hosts(log_dir)
        self.nodes: list[Node] = []
        self._numbers = {"worker": 0, "beat": 0}

    def host(self) -> Host:
        return self.hosts.add()

    def _name(self, role: str) -> str:
        self._numbers[role] += 1
        return f"{role}{self._numbers[role]}"

    def worker(self, host: Host | None = None, *, queues: list[str], concurrency: int = 1, **env: str) -> Node:
        host = host or self.host()
        name = self._name("worker")
        argv = [sys.executable, "-m", "celery", "-A", "campaign", "worker", "--loglevel", "INFO",
                "--concurrency", str(concurrency), "--pool", "prefork", "-Q", ",".join(queues),
                "--without-gossip", "--without-mingle", "-n", f"{name}-{os.getpid()}@%h"]
        node = Node("worker", name, host, argv, node_env(host, **env), self.log_dir)
        self.nodes.append(node)
        return node.wait_ready(" ready.")

    def beat(self, host: Host | None = None, **env: str) -> Node:
        host = host or self.host()
        name = self._name("beat")
        argv = [sys.executable, "-m", "celery", "-A", "campaign", "beat", "--loglevel", "INFO",
                "--schedule", str(self.log_dir / f"{name}-schedule.db")]
        node = Node("beat", name, host, argv, node_env(host, **env), self.log_dir)
        self.nodes.append(node)
        return node.wait_ready("beat: Starting")

    def beats(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "beat"]

    def leader(self) -> Node | None:
        """The live beat the election row names, if any."""
        from workflows.models import BeatLease

        holder = BeatLease.objects.filter(pk=1).values_list("holder", flat=True).first()
        return next((node for node in self.beats() if node.beat_name == holder and node.alive), None)

    def teardown(self, *, print_logs: bool) -> None:
        for host in self.hosts:
            if host.is_cut:
                host.heal()
        for node in self.nodes:
            node.signal(signal.SIGCONT)
        for node in self.nodes:
            node.stop(timeout=15)
        if print_logs:
            for node in self.nodes:
                print(f"\n----- log of {node} (last 150 lines) -----")
                print("\n".join(node.log().splitlines()[-150:]))
        self.hosts.delete_all()


@pytest.fixture(scope="session", autouse=True)
def _sweep_leftover_hosts(request: pytest.FixtureRequest) -> None:
    """Namespaces left by a crashed run of the suite go before any test creates its own."""
    if _selected(request.config) and not netns.unavailable_reason():
        deleted = netns.sweep_leftovers()
        if deleted:
            print(f"deleted leftovers of crashed runs: {', '.join(deleted)}")


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """Hosts and their processes; logs printed when the test failed; everything deleted at the end."""
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.teardown(print_logs=failed(request))


def terminate_backends(application_name: str) -> list[int]:
    """``pg_terminate_backend`` on every session of one host; returns their pids."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
                       [application_name])
        pids = [row[0] for row in cursor.fetchall()]
        for pid in pids:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    return pids


def backends_of(application_name: str) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name])
        return {row[0] for row in cursor.fetchall()}
