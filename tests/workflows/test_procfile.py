"""The workers as the Procfile starts them: each has its own node name, so ``celery status``
lists every one and Celery warns of no duplicate (two workers called ``celery@<host>`` would share
one name: replies to control commands get mixed up and ``celery status`` shows one of them)."""

from __future__ import annotations

import os
import re
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

from workflows.worker_process import current_database_url as database_url

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

#: This test's own queue, so that the workers take no message another test left on the default one.
QUEUE = f"procfile-{os.getpid()}"
READY_TIMEOUT_S = 60


def procfile_entries(prefix: str) -> dict[str, str]:
    """The Procfile's commands whose process name starts with ``prefix``."""
    entries = {}
    for line in (Path(settings.BASE_DIR) / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip().startswith(prefix):
            entries[name.strip()] = command.strip()
    return entries


def process_env() -> dict[str, str]:
    """The Procfile's environment, on the test database, with this virtualenv's ``celery`` first."""
    return {**os.environ, "SECRET_KEY": settings.SECRET_KEY, "DATABASE_URL": database_url(), "WORKER_CONCURRENCY": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture
def procfile_workers(transactional_db) -> Iterator[list[tuple[subprocess.Popen[bytes], Path]]]:
    env = process_env()
    started = []
    for command in procfile_entries("worker").values():
        log_path = Path(tempfile.mkstemp(prefix="procfile-worker-", suffix=".log", dir=settings.VAR_DIR)[1])
        process = subprocess.Popen(["bash", "-c", f"exec {command} -Q {QUEUE}"], cwd=settings.BASE_DIR, env=env,
                                   stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        started.append((process, log_path))
    try:
        yield started
    finally:
        for process, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_every_procfile_worker_has_its_own_name_and_celery_status_lists_them_all(procfile_workers):
    assert len(procfile_workers) >= 2, "the Procfile shows how to run several workers"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all(" ready." in log.read_text(errors="replace") for _, log in procfile_workers):
        assert time.monotonic() < deadline, "\n".join(log.read_text(errors="replace") for _, log in procfile_workers)
        assert all(process.poll() is None for process, _ in procfile_workers)
        time.sleep(0.2)

    status = subprocess.run([sys.executable, "-m", "celery", "-A", "campaign", "status", "--timeout", "10"],
                            cwd=settings.BASE_DIR, env=process_env(),
                            capture_output=True, text=True, timeout=60, check=False)

    listed = set(re.findall(r"^->\s+(\S+): OK", status.stdout, flags=re.MULTILINE))
    host = socket.gethostname()
    assert {f"worker{number}@{host}" for number in range(1, len(procfile_workers) + 1)} <= listed, status.stdout
    logs = "".join(log.read_text(errors="replace") for _, log in procfile_workers)
    assert "DuplicateNodenameWarning" not in logs + status.stderr
