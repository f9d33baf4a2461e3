"""Start a real Celery worker as a child process (``make demo`` and the engine's end-to-end tests).

The child gets the same settings as this process through the environment, so it talks to the
same database and broker; ``database_url`` points it at another database (the test database).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.conf import settings

READY_TIMEOUT_S = 60


def current_database_url() -> str:
    """The URL of the database this process is connected to now (e.g. a test or benchmark
    database), for a child process."""
    from django.db import connection

    database = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{database['NAME']}"
    user = database.get("USER") or "postgres"
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{database.get('HOST') or '127.0.0.1'}:{database.get('PORT') or 5432}/{database['NAME']}"


class WorkerProcess:
    def __init__(self, *, queues: list[str], env: dict[str, str] | None = None, concurrency: int = 1) -> None:
        self.queues = queues
        self.env = {**os.environ, **(env or {})}
        self.concurrency = concurrency
        self.log_path = Path(tempfile.mkstemp(prefix="worker-", suffix=".log", dir=settings.VAR_DIR)[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "campaign", "worker", "--loglevel", "INFO",
             "--concurrency", str(self.concurrency), "--pool", "prefork", "-Q", ",".join(self.queues),
             "--without-gossip", "--without-mingle", "-n", f"test-{os.getpid()}-{time.monotonic_ns()}@%h"],
            cwd=settings.BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}:\n{self.log()}")
            if " ready." in self.log():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the worker was not ready after {READY_TIMEOUT_S}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once: nothing gets to clean up."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
