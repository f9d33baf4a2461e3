"""``make run`` stopped as an operator stops it: SIGTERM to honcho (Ctrl-C does the same through
SIGINT), which sends SIGTERM to each process of the Procfile. Every process ends on its own within
honcho's grace (:data:`project.run.STOP_GRACE_S`): none is killed, no line says ERROR (as did
Celery's ``Process 'ForkPoolWorker-1' … exited with 'signal 15 (SIGTERM)'`` when the pool processes
got the signal too, after which a worker could hang on its pool's queue lock until killed), and the
status is 0.

The Procfile runs on this test run's database with the embedded broker in a folder of its own,
schedules disabled (no run starts meanwhile), on a free port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django_celery_beat.models import PeriodicTask

from project.run import STOP_GRACE_S
from workflows.benchmarks.event_ingestion import free_port
from workflows.worker_process import current_database_url

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

READY_TIMEOUT_S = 90
PROCFILE_PROCESSES = {"web", "worker1", "worker2", "beat1", "beat2"}


def all_ready(log: str) -> bool:
    return (log.count(" ready.") >= 2 and "Listening at" in log
            and len(re.findall(r"beat\d\.1 +\| .*beat: Starting", log)) >= 2)


def test_sigterm_stops_every_procfile_process_on_its_own_without_an_error_line(tmp_path: Path) -> None:
    PeriodicTask.objects.update(enabled=False)
    env = {name: value for name, value in os.environ.items() if name != "CELERY_BROKER_URL"}
    env.update({
        "DATABASE_URL": current_database_url(), "SECRET_KEY": settings.SECRET_KEY, "VAR_DIR": str(tmp_path),
        "WEB_BIND": f"127.0.0.1:{free_port()}", "WEB_WORKERS": "1", "WEB_THREADS": "2", "WORKER_CONCURRENCY": "2",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    log_path = tmp_path / "honcho.log"
    honcho = subprocess.Popen([sys.executable, "-m", "project.run", "start", "-f", "Procfile"], cwd=settings.BASE_DIR,
                              env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all_ready(log_path.read_text(errors="replace")):
            assert honcho.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        time.sleep(1)  # the pool processes wait for work

        asked = time.monotonic()
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(timeout=STOP_GRACE_S + 30)
        took = time.monotonic() - asked
    finally:
        for pid in re.findall(r"started \(pid=(\d+)\)", log_path.read_text(errors="replace")):
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()

    log = log_path.read_text(errors="replace")
    assert took < STOP_GRACE_S, log[-3000:]
    assert honcho.returncode == 0, "a stop asked for and obeyed in time is no error"
    assert set(re.findall(r"(\w+)\.1 stopped", log)) == PROCFILE_PROCESSES, log[-3000:]
    assert "SIGKILL" not in log
    assert not [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line], log[-3000:]
    assert "No hostname was supplied" not in log
