"""Hosts for the reliability suite: each a Linux network namespace joined to this machine by a
veth pair, so that a worker or a beat inside it can be cut off the network like a real host.

Why namespaces: killing a process tests a crash, but a partition is different: the process lives
on, its TCP connections stall, its transactions stay open on the server, and it wakes up later
believing it still holds its leases. Only a real link going down shows that.

Layout of one host (``N`` is a free /24 picked under a lock, so concurrent runs never collide)::

    this machine (root namespace)              namespace cmp<pid>h<N>
    10.231.N.1/30  <── veth cmp<pid>h<N>a ──>  10.231.N.2/30 (veth cmp<pid>h<N>b), lo up
    forwarders on 10.231.N.1:<port> ──> 127.0.0.1:<service port>

Invariants:

- A process inside the namespace reaches PostgreSQL and the broker **only** through the
  forwarders bound to the host-side address: its own loopback is not this machine's, and the
  namespace has no other route. So :meth:`Host.cut` (the host-side veth down) cuts it off every
  service at once, established connections included: packets are dropped, not refused, as in a
  real partition, until :meth:`Host.heal`.
- Everything is named ``cmp<pid>h<N>`` after the pytest process: :func:`sweep_leftovers` deletes
  the namespaces and veths of runs whose process is gone (a crash, a SIGKILL), never another
  live run's. The forwarders die with this process (``PR_SET_PDEATHSIG``) and with their host.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

PREFIX = "cmp"
#: The /16 the hosts' /30 links are carved from: private, and unused by this machine's networks.
SUBNET = "10.231"
#: Held while picking a free /24 and claiming it, so two pytest processes never pick the same one.
LOCK_PATH = Path("/run/lock/campaign-reliability-netns.lock")
#: Seconds a forwarder has to start listening.
FORWARDER_READY_S = 10

#: Host numbers keep growing within one pytest process: a test's hosts never reuse the name of a
#: previous test's host.
_host_numbers = itertools.count(1)
_NAME = re.compile(rf"^{PREFIX}(\d+)h(\d+)[ab]?$")
_PR_SET_PDEATHSIG = 1


class NetnsUnavailable(Exception):
    """Network namespaces cannot be used here (not root, no ``ip netns``, no socat)."""


def unavailable_reason() -> str:
    """Why hosts cannot be created here, or "" when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "socat"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"{PREFIX}{os.getpid()}probe"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if created.returncode != 0:
        return f"`ip netns add` failed: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return ""


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", namespace] if namespace else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it (pytest) dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> list[str]:
    """Delete the namespaces and veths left by runs of this suite whose pytest process is gone,
    killing the processes still inside those namespaces. Returns what was deleted."""
    deleted = []
    namespaces = _ip("netns", "list", check=False).stdout.split("\n")
    for line in namespaces:
        name = line.split(" ")[0].strip()
        match = _NAME.match(name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "delete", name, check=False)
        deleted.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        match = _NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _ip("link", "delete", name, check=False)
            deleted.append(name)
    return deleted


def _used_subnets() -> set[int]:
    """Third octets of the 10.231.x.0/24s configured on this machine now."""
    used = set()
    for match in re.finditer(rf"inet {re.escape(SUBNET)}\.(\d+)\.", _ip("-o", "-4", "addr", "show").stdout):
        used.add(int(match.group(1)))
    return used


class Forwarder:
    """A socat TCP forwarder: ``listen`` on the host-side address to ``target`` on loopback."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], log_path: Path) -> None:
        self.listen = listen
        self.target = target
        self.log_path = log_path
        host, port = listen
        self.process = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{port},bind={host},fork,reuseaddr", f"TCP:{target[0]}:{target[1]}"],
            stdout=subprocess.DEVNULL, stderr=log_path.open("ab"), start_new_session=True,
            preexec_fn=_die_with_parent,  # one prctl call, no lock taken
        )

    def wait_listening(self) -> None:
        deadline = time.monotonic() + FORWARDER_READY_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"socat {self.listen} exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection(self.listen, timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"socat on {self.listen} was not listening after {FORWARDER_READY_S}s")

    def stop(self) -> None:
        """Kill socat and the children it forked, one per connection."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


class Host:
    """One network namespace joined to this machine by a veth pair; see the module note."""

    def __init__(self, number: int, *, log_dir: Path) -> None:
        self.number = number
        self.name = f"{PREFIX}{os.getpid()}h{number}"
        self.outside_veth = f"{self.name}a"
        self.inside_veth = f"{self.name}b"
        self.log_dir = log_dir
        self.octet: int | None = None
        self.forwarders: list[Forwarder] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._created = False

    # -- addresses ---------------------------------------------------------------------------
    @property
    def outside_address(self) -> str:
        """This machine's end of the link: where the forwarders listen."""
        return f"{SUBNET}.{self.octet}.1"

    @property
    def inside_address(self) -> str:
        """The namespace's own address: the source of every packet the host sends."""
        return f"{SUBNET}.{self.octet}.2"

    # -- life cycle --------------------------------------------------------------------------
    def create(self) -> Host:
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        with LOCK_PATH.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _used_subnets()
            self.octet = next(octet for octet in range(1, 255) if octet not in used)
            self._created = True  # from here on, delete() has something to undo
            _ip("netns", "add", self.name)
            _ip("link", "add", self.outside_veth, "type", "veth", "peer", "name", self.inside_veth)
            _ip("link", "set", self.inside_veth, "netns", self.name)
            _ip("addr", "add", f"{self.outside_address}/30", "dev", self.outside_veth)
        _ip("link", "set", self.outside_veth, "up")
        _ip("addr", "add", f"{self.inside_address}/30", "dev", self.inside_veth, namespace=self.name)
        _ip("link", "set", self.inside_veth, "up", namespace=self.name)
        _ip("link", "set", "lo", "up", namespace=self.name)
        return self

    def delete(self) -> None:
        """Kill what runs inside, stop the forwarders, delete the namespace and the veth pair."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGCONT)
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
        for forwarder in self.forwarders:
            forwarder.stop()
        if not self._created:
            return
        for pid in subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("link", "delete", self.outside_veth, check=False)  # deletes its peer too
        _ip("netns", "delete", self.name, check=False)
        self._created = False

    # -- what a test does with it ------------------------------------------------------------
    def forward(self, port: int, *, target_host: str = "127.0.0.1") -> tuple[str, int]:
        """A forwarder from this host's link to ``target_host:port`` on this machine; returns the
        (address, port) a process inside the namespace connects to."""
        with socket.socket() as probe:  # a free port on the link address
            probe.bind((self.outside_address, 0))
            listen_port = probe.getsockname()[1]
        forwarder = Forwarder((self.outside_address, listen_port), (target_host, port),
                              self.log_dir / f"{self.name}-socat-{port}.log")
        self.forwarders.append(forwarder)
        forwarder.wait_listening()
        return self.outside_address, listen_port

    def cut(self) -> None:
        """Take the link down: every packet to and from the host is dropped, established
        connections stall (no reset), new ones time out."""
        _ip("link", "set", self.outside_veth, "down")

    def heal(self) -> None:
        """Bring the link back; stalled connections resume where they were (unless a side gave up)."""
        _ip("link", "set", self.outside_veth, "up")
        # The namespace's end comes back with the carrier; wait until the link really passes packets.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = _ip("-o", "link", "show", self.inside_veth, namespace=self.name).stdout
            if "LOWER_UP" in state and ",UP" in state:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: the link did not come back up")

    @property
    def is_cut(self) -> bool:
        return "state DOWN" in _ip("-o", "link", "show", self.outside_veth).stdout

    def popen(self, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None = None
              ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace, in its own process group, output to ``log_path``."""
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv], env=dict(env), cwd=cwd, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(self, argv: Sequence[str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the namespace and return its result."""
        return subprocess.run(["ip", "netns", "exec", self.name, *argv],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.inside_address})"


class Hosts:
    """The hosts of one test: created on demand, all deleted at the end, even on failure."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.created: list[Host] = []

    def add(self) -> Host:
        host = Host(next(_host_numbers), log_dir=self.log_dir)
        self.created.append(host)
        return host.create()

    def delete_all(self) -> None:
        errors = []
        for host in reversed(self.created):
            try:
                host.delete()
            except Exception as error:  # delete every host, then report
                errors.append(f"{host.name}: {error}")
        self.created.clear()
        if errors:
            raise RuntimeError("; ".join(errors))

    def __iter__(self) -> Iterator[Host]:
        return iter(self.created)
