"""The event API under load: real gunicorn, started with the project's gunicorn.conf.py on a free
loopback port against the benchmark's database, driven by concurrent keep-alive clients.

Three measurements, each reported as requests/s (events/s for batches), p50/p95/p99 latency in
milliseconds and the client's own CPU share:

- ``POST /api/events/<eventType>`` from :data:`SINGLE_CLIENTS` (8, then 32) concurrent clients;
- ``POST /api/events/<eventType>/batch`` (:data:`BATCH_SIZE` events a request) from
  :data:`BATCH_CLIENTS` clients, when the endpoint is deployed (a 404 says it is not: skipped).

The clients are coroutines of one asyncio loop in this process, each on its own keep-alive
connection, speaking just enough HTTP/1.1: a thread per client would spend, on this 2-core
machine, the CPU that the server needs. The client's CPU time over the wall time is reported, so
that a client-bound figure is seen as such.

Nothing lost, nothing doubled: every request carries a sequence number in its context; after the
run, the events stored under the run's event type must be exactly the accepted ones, each under the
id its 202 gave, with its own sequence number, and their count the number accepted. Any refusal,
any difference, fails the benchmark.

The clients send ``X-Forwarded-Proto: https``, as the reverse proxy in front does (docs/deployment.md):
with ``DATABASE_URL`` set, the production settings redirect plain HTTP to HTTPS.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command

from workflows.benchmarks.fixed_cost import percentile
from workflows.benchmarks.runner import BenchmarkError
from workflows.worker_process import current_database_url

#: The name ``--only`` knows the case by.
CASE_NAME = "eventIngestion"
#: Concurrent clients of the single-event endpoint, one measurement each.
SINGLE_CLIENTS = (8, 32)
#: Concurrent clients of the batch endpoint.
BATCH_CLIENTS = 8
#: Events per batch request: the endpoint's limit is 500; 500 measures its best case.
BATCH_SIZE = 500
#: Unmeasured requests per client first: connections opened in every worker thread, code warm.
WARMUP_REQUESTS_PER_CLIENT = 5
#: Longest wait for the server to answer at start-up, and for one response.
START_TIMEOUT_S = 60
RESPONSE_TIMEOUT_S = 60
#: Without an explicit count: one single-event request per this many ``--rows`` (5,000 per
#: measurement at the default 100,000 rows, 100 at CI's 2,000), at least :data:`MIN_REQUESTS`; and
#: as many batched events as rows, at least one batch per client.
ROWS_PER_REQUEST = 20
MIN_REQUESTS = 100
GUNICORN_CONFIG = "gunicorn.conf.py"


@dataclass(frozen=True)
class Load:
    """One measurement: ``clients`` concurrent clients sending ``requests`` requests."""

    endpoint: str
    clients: int
    requests: int
    events: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    #: This process's CPU time (the clients) over the wall time: 1.0 is one core busy.
    client_cpu_share: float
    #: CPU time of the gunicorn processes over the wall time (Linux), None elsewhere.
    server_cpu_share: float | None
    refused: int
    lost: int
    duplicated: int
    problems: list[str] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return round(self.requests / self.seconds, 1) if self.seconds else 0.0

    @property
    def events_per_s(self) -> float:
        return round(self.events / self.seconds, 1) if self.seconds else 0.0

    @property
    def intact(self) -> bool:
        return self.refused == 0 and self.lost == 0 and self.duplicated == 0

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "requests_per_s": self.requests_per_s, "events_per_s": self.events_per_s}


@dataclass(frozen=True)
class EventIngestionResult:
    database: str
    config: str
    workers: int
    threads: int
    single: list[Load]
    batch: Load | None
    #: Why the batch figures are missing; empty when they were measured.
    batch_skipped: str
    load_average: float

    @property
    def intact(self) -> bool:
        return all(load.intact for load in [*self.single, *([self.batch] if self.batch else [])])

    def as_json(self) -> dict[str, Any]:
        return {
            "case": CASE_NAME, "database": self.database, "config": self.config, "workers": self.workers,
            "threads": self.threads, "single": [load.as_json() for load in self.single],
            "batch": self.batch.as_json() if self.batch else None, "batch_skipped": self.batch_skipped,
            "load_average": self.load_average,
        }


def requests_for_rows(rows: int) -> int:
    return max(MIN_REQUESTS, rows // ROWS_PER_REQUEST)


def run_event_ingestion(*, requests: int, batch_events: int, config: Path | None = None) -> EventIngestionResult:
    """Measure the event API; ``config`` is a gunicorn configuration file (default: the project's)."""
    from campaign.api import create_api_key

    if requests < 1 or batch_events < 1:
        raise BenchmarkError("the event ingestion case needs at least one request")
    call_command("flush", interactive=False, verbosity=0)
    key = create_api_key(name="benchmark")[1]
    config = config or Path(settings.BASE_DIR) / GUNICORN_CONFIG
    with web_server(config) as server:
        single = [measure_single(server, key=key, clients=clients, requests=requests) for clients in SINGLE_CLIENTS]
        batch, skipped = measure_batch(server, key=key, clients=BATCH_CLIENTS, events=batch_events)
    from django.db import connection

    return EventIngestionResult(
        database=connection.vendor, config=str(config), workers=server.workers, threads=server.threads,
        single=single, batch=batch, batch_skipped=skipped, load_average=round(os.getloadavg()[0], 2),
    )


# --- the server ----------------------------------------------------------------------------------


@dataclass
class Server:
    host: str
    port: int
    pid: int
    workers: int
    threads: int

    def cpu_seconds(self) -> float | None:
        """User and system CPU of the gunicorn master and its workers so far (Linux's /proc)."""
        total = 0.0
        try:
            ticks = os.sysconf("SC_CLK_TCK")
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            for pid in [self.pid, *map(int, children)]:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except (OSError, ValueError, IndexError):
            return None
        return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def web_server(config: Path, *, env: dict[str, str] | None = None) -> Iterator[Server]:
    """gunicorn with ``config`` on a free loopback port and this process's database; stopped (its
    whole process group) on exit."""
    port = free_port()
    environment = {
        **os.environ, "DATABASE_URL": current_database_url(), "SECRET_KEY": settings.SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1", "VAR_DIR": str(settings.VAR_DIR), "WEB_BIND": f"127.0.0.1:{port}",
        **(env or {}),
    }
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", str(config)], cwd=settings.BASE_DIR, env=environment,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            workers, threads = _sizes(config, environment)
            server = Server(host="127.0.0.1", port=port, pid=process.pid, workers=workers, threads=threads)
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _answers(server):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise BenchmarkError(f"gunicorn did not start:\n{log.read().decode(errors='replace')[-3000:]}")
                time.sleep(0.2)
            yield server
        finally:
            stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group that ``process`` leads, SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _sizes(config: Path, environment: dict[str, str]) -> tuple[int, int]:
    """Workers and threads per worker that ``config`` gives in ``environment``, for the report."""
    completed = subprocess.run(
        [sys.executable, "-c", ("import runpy, sys; c = runpy.run_path(sys.argv[1]); "
                                "print(c.get('workers', 1), c.get('threads_per_worker', c.get('threads', 1)))"),
         str(config)],
        cwd=settings.BASE_DIR, env=environment, capture_output=True, text=True, check=False,
    )
    try:
        workers, threads = completed.stdout.split()
        return int(workers), int(threads)
    except ValueError:
        return 0, 0


def _answers(server: Server) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=5) as connection:
            connection.sendall(b"GET /api/events/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return connection.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


# --- the clients ---------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened when the server closes it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, *, key: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.server.host, self.server.port)
        assert self.reader is not None
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"X-Forwarded-Proto: https\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
        content = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, content

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def _drive(server: Server, *, clients: int, items: list[Any], warmup: list[Any], key: str,
                 request: Callable[[Any], tuple[str, bytes]],
                 accept: Callable[[Any, int, bytes], str | None]) -> tuple[list[float], list[str], float]:
    """Send each of ``items`` once, spread over ``clients`` connections (after ``warmup``, untimed);
    ``accept`` checks a response and returns a problem or None. Returns latencies, problems, wall time."""
    connections = [Connection(server) for _ in range(clients)]
    latencies: list[float] = []
    problems: list[str] = []

    async def client(connection: Connection, queue: list[Any], timed: bool) -> None:
        while queue:
            item = queue.pop()
            path, body = request(item)
            started = time.perf_counter()
            try:
                status, content = await asyncio.wait_for(connection.post(path, body, key=key), RESPONSE_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as error:
                problems.append(f"{path}: {type(error).__name__}: {error}")
                await connection.close()
                continue
            if timed:
                latencies.append(time.perf_counter() - started)
            problem = accept(item, status, content)
            if problem:
                problems.append(problem)

    try:
        warm = list(warmup)
        await asyncio.gather(*(client(connection, warm, False) for connection in connections))
        pending = list(reversed(items))
        started = time.perf_counter()
        await asyncio.gather(*(client(connection, pending, True) for connection in connections))
        wall = time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()
    return latencies, problems, wall


def _measured(server: Server, run: Callable[[], Any]) -> tuple[Any, float, float | None]:
    """Run ``run`` and return its result, this process's CPU share and the server's."""
    cpu_before, server_before, wall_before = time.process_time(), server.cpu_seconds(), time.perf_counter()
    result = run()
    wall = time.perf_counter() - wall_before
    server_after = server.cpu_seconds()
    client_share = round((time.process_time() - cpu_before) / wall, 2)
    server_share = (round((server_after - server_before) / wall, 2)
                    if server_before is not None and server_after is not None else None)
    return result, client_share, server_share


def _check_stored(event_type: str, accepted: dict[int, int]) -> tuple[int, int, list[str]]:
    """(lost, duplicated, examples): accepted ids missing or stored with another sequence number;
    stored events no 202 gave, or a sequence number stored twice."""
    from campaign.models import Event

    stored = {event_id: payload.get("n") for event_id, payload in
              Event.objects.filter(event_type=event_type).values_list("id", "payload")}
    lost = [event_id for event_id, number in accepted.items() if stored.get(event_id) != number]
    numbers = list(stored.values())
    duplicated = (len(stored) - len(set(stored) & set(accepted))) + (len(numbers) - len(set(numbers)))
    examples = [f"{event_type}: event #{event_id} accepted but not stored as sent" for event_id in lost[:3]]
    if duplicated:
        examples.append(f"{event_type}: {len(stored)} events stored for {len(accepted)} accepted")
    return len(lost), duplicated, examples


def measure_single(server: Server, *, key: str, clients: int, requests: int) -> Load:
    event_type = f"benchmark.single.{clients}"
    accepted: dict[int, int] = {}

    def request(number: int) -> tuple[str, bytes]:
        body = {"email": f"load{number}@example.com", "context": {"n": number, "order": f"A-{number:08d}"}}
        kind = event_type if number >= 0 else "benchmark.warmup"
        return f"/api/events/{kind}", json.dumps(body).encode()

    def accept(number: int, status: int, content: bytes) -> str | None:
        if status != 202:
            return f"single #{number}: {status} {content[:200]!r}"
        if number >= 0:
            event_id = json.loads(content)["id"]
            if event_id in accepted:
                return f"single #{number}: id {event_id} given twice"
            accepted[event_id] = number
        return None

    warmup = [-1 - number for number in range(WARMUP_REQUESTS_PER_CLIENT * clients)]
    (latencies, problems, wall), client_share, server_share = _measured(server, lambda: asyncio.run(_drive(
        server, clients=clients, items=list(range(requests)), warmup=warmup, key=key, request=request, accept=accept)))
    lost, duplicated, examples = _check_stored(event_type, accepted)
    return _load(f"POST /api/events/{event_type}", clients, requests, requests, wall, latencies, client_share,
                 server_share, refused=requests - len(accepted), lost=lost, duplicated=duplicated,
                 problems=problems + examples)


def measure_batch(server: Server, *, key: str, clients: int, events: int) -> tuple[Load | None, str]:
    event_type = "benchmark.batch"
    path = f"/api/events/{event_type}/batch"
    probe = asyncio.run(_probe(server, path, key=key))
    if probe == 404:
        return None, f"{path} answers 404: the batch endpoint is not deployed"
    batches = max(clients, -(-events // BATCH_SIZE))
    accepted: dict[int, int] = {}

    def request(batch: int) -> tuple[str, bytes]:
        first = batch * BATCH_SIZE
        items = [{"email": f"batch{number}@example.com", "context": {"n": number}, "idempotency_key": f"bench-{number}"}
                 for number in range(first, first + BATCH_SIZE)]
        kind = path if batch >= 0 else "/api/events/benchmark.warmup/batch"
        return kind, json.dumps({"events": items}).encode()

    def accept(batch: int, status: int, content: bytes) -> str | None:
        if status != 202:
            return f"batch #{batch}: {status} {content[:200]!r}"
        if batch < 0:
            return None
        answered = json.loads(content)["events"]
        if len(answered) != BATCH_SIZE:
            return f"batch #{batch}: {len(answered)} results for {BATCH_SIZE} events"
        for offset, item in enumerate(answered):
            if item["id"] in accepted:
                return f"batch #{batch}: id {item['id']} given twice"
            accepted[item["id"]] = batch * BATCH_SIZE + offset
        return None

    warmup = [-1 - number for number in range(clients)]
    (latencies, problems, wall), client_share, server_share = _measured(server, lambda: asyncio.run(_drive(
        server, clients=clients, items=list(range(batches)), warmup=warmup, key=key, request=request, accept=accept)))
    lost, duplicated, examples = _check_stored(event_type, accepted)
    total = batches * BATCH_SIZE
    return _load(f"POST {path}", clients, batches, total, wall, latencies, client_share, server_share,
                 refused=total - len(accepted), lost=lost, duplicated=duplicated, problems=problems + examples), ""


async def _probe(server: Server, path: str, *, key: str) -> int:
    connection = Connection(server)
    try:
        status, _ = await connection.post(path, b'{"events": []}', key=key)
    finally:
        await connection.close()
    return status


def _load(endpoint: str, clients: int, requests: int, events: int, wall: float, latencies: list[float],
          client_share: float, server_share: float | None, *, refused: int, lost: int, duplicated: int,
          problems: list[str]) -> Load:
    def ms(share: float) -> float:
        return round(percentile(latencies, share) * 1000, 2) if latencies else 0.0

    return Load(endpoint=endpoint, clients=clients, requests=requests, events=events, seconds=round(wall, 3),
                p50_ms=ms(0.50), p95_ms=ms(0.95), p99_ms=ms(0.99), client_cpu_share=client_share,
                server_cpu_share=server_share, refused=refused, lost=lost, duplicated=duplicated,
                problems=problems[:10])
