"""A worker's graceful stop: a run hands over at its next unit boundary and continues elsewhere.

Celery's warm shutdown (SIGTERM to the worker) stops taking messages and then waits for the
tasks in progress; a workflow run can last an hour, longer than any supervisor waits before it
kills. So, on the worker's SIGTERM, each pool process running a run is told to hand it over: at
its next unit boundary the run commits what it has done, halts (``paused``, with the activity it
stopped in), lets its lease go, and sends its message again; any other worker continues it from
the committed cursor, as a resumed run. The stopping worker is free within one unit of work.

The worker may still take a message in the second or so before it stops consuming, even the one
just sent: a pool process asked to stop sends any run it gets back to the queue, unclaimed, for
:data:`STOPPING_WINDOW_S` (a window, so that a pool process signalled on its own cannot turn every
later run away). An idle pool process ends at once on SIGTERM, as it would without this module.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import worker_process_init, worker_shutting_down

logger = logging.getLogger(__name__)

#: How long a pool process asked to stop keeps sending runs away: its worker stops taking
#: messages within a second or two, but may take one more meanwhile, even the run just handed over.
STOPPING_WINDOW_S = 30.0
_asked_at: float | None = None
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


def stopping() -> bool:
    """True in a pool process asked to stop (for :data:`STOPPING_WINDOW_S`): its runs go elsewhere."""
    return _asked_at is not None and time.monotonic() - _asked_at < STOPPING_WINDOW_S


def _ask_for_handover(signum: int, frame: Any) -> None:
    global _asked_at  # set from a signal handler, read at unit boundaries
    logger.warning("asked to stop: the run hands over at its next unit boundary")
    _asked_at = time.monotonic()


@worker_process_init.connect(dispatch_uid="workflows.shutdown.pool_process")
def _in_pool(**kwargs: Any) -> None:
    global _in_pool_process  # one flag per process, set once when it starts
    _in_pool_process = True


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
