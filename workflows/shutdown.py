"""A worker's graceful stop: a run hands over at its next unit boundary and continues elsewhere.

Celery's warm shutdown (SIGTERM to the worker) stops taking messages and then waits for the
tasks in progress; a workflow run can last an hour, longer than any supervisor waits before it
kills. So, on the worker's SIGTERM, each pool process running a run is told to hand it over: at
its next unit boundary the run commits what it has done, halts (``paused``, with the activity it
stopped in), lets its lease go, and sends its message again; any other worker continues it from
the committed cursor, as a resumed run. The stopping worker is free within one unit of work.

An idle pool process ends at once on SIGTERM, as it would without this module.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import task_prerun, worker_process_init, worker_shutting_down

logger = logging.getLogger(__name__)

#: Set in a pool process that was asked to stop while a run was in progress.
requested = threading.Event()
#: True in a worker's pool process; elsewhere (the CLI's in-process runs) SIGTERM keeps its meaning.
_in_pool_process = False


@contextmanager
def run_in_progress() -> Iterator[None]:
    """Around a run's activities: a SIGTERM meanwhile asks for a handover instead of killing the
    process (billiard's own handler, which ends it, is back as soon as the run ends)."""
    if not _in_pool_process or threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; a threaded pool stops with its process
        return
    previous = signal.signal(signal.SIGTERM, _ask_for_handover)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ask_for_handover(signum: int, frame: Any) -> None:
    logger.warning("asked to stop: the run hands over at its next unit boundary")
    requested.set()


@worker_process_init.connect(dispatch_uid="workflows.shutdown.pool_process")
def _in_pool(**kwargs: Any) -> None:
    global _in_pool_process  # noqa: PLW0603 - one flag per process, set once when it starts
    _in_pool_process = True


@task_prerun.connect(dispatch_uid="workflows.shutdown.fresh_task")
def _forget(**kwargs: Any) -> None:
    """A new task in this process: an earlier request was served by the handover it caused."""
    requested.clear()


@worker_shutting_down.connect(dispatch_uid="workflows.shutdown.forward")
def _forward_to_pool(**kwargs: Any) -> None:
    """The worker stops: its pool processes hand their runs over (a supervisor that signals the
    whole process group, as honcho and systemd do by default, has told them already)."""
    from billiard.process import active_children

    for child in active_children():
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
