"""The hosts themselves: a process inside one reaches this machine's services only through its
forwarders, and a cut link really stops its traffic, established connections included, until healed."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from tests.reliability import netns
from tests.reliability.conftest import Cluster
from tests.workflows.helpers import wait_for

pytestmark = [pytest.mark.reliability]

#: Runs inside the namespace: one TCP connection, a Redis PING every 0.2 s, one line per answer or timeout.
PINGER = """
import socket, sys, time
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
connection.settimeout(0.5)
while True:
    try:
        connection.sendall(b"PING\\r\\n")
        answer = connection.recv(64)
        print("ok" if answer.startswith(b"+PONG") else f"bad {answer!r}", flush=True)
    except TimeoutError:
        print("timeout", flush=True)
    except OSError as error:
        print(f"error {error}", flush=True)
        break
    time.sleep(0.2)
"""


def connects(cluster: Cluster, host: netns.Host, address: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=1).close()"
    return host.run([sys.executable, "-c", probe]).returncode == 0


def redis_port() -> int:
    return urlsplit(settings.CELERY_BROKER_URL).port or 6379


def test_a_host_reaches_this_machine_only_through_its_forwarders(cluster: Cluster) -> None:
    host = cluster.host()
    address, port = host.forward(redis_port())

    assert connects(cluster, host, address, port)
    assert not connects(cluster, host, "127.0.0.1", redis_port()), "the namespace's loopback is its own"
    assert not connects(cluster, host, address, redis_port()), "only the forwarded port is open on the link"


def test_a_cut_stalls_an_established_connection_refuses_new_ones_and_a_heal_resumes_it(cluster: Cluster, tmp_path: Path) -> None:
    host = cluster.host()
    address, port = host.forward(redis_port())
    log = tmp_path / "pinger.log"
    pinger = host.popen([sys.executable, "-c", PINGER, address, str(port)], env={"PATH": "/usr/bin:/bin"}, log_path=log)
    try:
        wait_for(lambda: log.read_text().count("ok") >= 3, what="pings through the forwarder", timeout=10)
        host.cut()
        cut_at = len(log.read_text().splitlines())
        time.sleep(3)
        during_cut = log.read_text().splitlines()[cut_at + 1:]  # one answer may have been on its way
        assert not connects(cluster, host, address, port), "a new connection cannot be made while cut"
        host.heal()
        healed_at = len(log.read_text().splitlines())
        wait_for(lambda: "ok" in log.read_text().splitlines()[healed_at:], what="the same connection to resume", timeout=30)
    finally:
        pinger.kill()
        pinger.wait(timeout=10)

    assert during_cut and set(during_cut) == {"timeout"}, during_cut
    assert not [line for line in log.read_text().splitlines() if line.startswith(("error", "bad"))], "no reset: a stall"
    print(f"\ncut: {len(during_cut)} pings timed out in 3 s, none answered; the connection resumed after the heal")


def test_sweep_deletes_the_hosts_of_a_dead_run_and_leaves_live_ones(cluster: Cluster) -> None:
    live = cluster.host()
    dead_pid = 2 ** 22 + 1  # above the default pid_max: never a live process
    orphan = netns.Host(99, log_dir=cluster.log_dir)
    orphan.name = f"{netns.PREFIX}{dead_pid}h99"
    orphan.outside_veth, orphan.inside_veth = f"{orphan.name}a", f"{orphan.name}b"
    try:
        orphan.create()
        deleted = netns.sweep_leftovers()
    finally:
        orphan.delete()

    assert orphan.name in deleted
    assert live.name not in deleted and not live.is_cut
    assert orphan.name not in netns._ip("netns", "list").stdout
    # Its veth goes with the namespace (or with the sweep, if it outlived it).
    wait_for(lambda: orphan.outside_veth not in netns._ip("-o", "link", "show").stdout, what="the veth to go", timeout=10)
