"""A worker's graceful stop: a run hands over at its next unit boundary and continues elsewhere.

Celery's warm shutdown (SIGTERM to the worker) stops taking messages and then waits for the
tasks in progress; a workflow run can last an hour, longer than any supervisor waits before it
kills. So, when the worker starts its warm shutdown, it raises a flag its pool processes share
(an anonymous shared page, made before the pool forks); a run that sees it at its next unit
boundary commits what it has done, halts (``paused``, with the activity it stopped in), lets its
lease go, and sends its message again; any other worker continues it from the committed cursor,
as a resumed run. The stopping worker is free within one unit of work.

The worker may still take a message in the second or so before it stops consuming, even the one
just sent: a pool process of a stopping worker sends any run it gets back to the queue, unclaimed.

Pool processes leave their worker's process group as they start. A supervisor that stops the
worker by signalling its whole group (honcho, ``kill -TERM -PGID``) then reaches the worker alone,
which closes its pool: idle pool processes end cleanly when the pool hands them its end-of-work
marker, instead of being killed mid-read (which Celery logs as an error, and which can leave the
pool's queue lock held, so that the worker hangs until it is killed). A pool process signalled on
its own (a supervisor that signals every process of a cgroup, or an operator) still hands its run
over, and turns runs away for :data:`STOPPING_WINDOW_S` (a window, so that a pool process
signalled on its own cannot turn every later run away); an idle one ends at once, as it would
without this module. A killed worker's pool processes die with it (Celery's parent-death signal).
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import worker_process_init, worker_shutting_down

logger = logging.getLogger(__name__)

#: How long a pool process signalled on its own keeps sending runs away: its worker, if it stops
#: too, stops taking messages within a second or two, but may take one more meanwhile.
STOPPING_WINDOW_S = 30.0
_asked_at: float | None = None
#: True in a worker's pool process; elsewhere (the CLI's in-process runs) SIGTERM keeps its meaning.
_in_pool_process = False
#: One byte shared by a worker and the pool processes it forks (made here, at import, which is
#: before the fork): 1 once the worker has started its warm or cold shutdown.
_worker_stopping = mmap.mmap(-1, 1)
#: The process that imported this module: the worker itself; a process with another pid that
#: runs :func:`_in_pool` is one of its forked pool processes.
_imported_in_pid = os.getpid()


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
    """True in a stopping worker (and its pool processes), and in a pool process signalled on
    its own for :data:`STOPPING_WINDOW_S`: its runs go elsewhere."""
    if _worker_stopping[0]:
        return True
    return _asked_at is not None and time.monotonic() - _asked_at < STOPPING_WINDOW_S


def _ask_for_handover(signum: int, frame: Any) -> None:
    global _asked_at  # set from a signal handler, read at unit boundaries
    logger.warning("asked to stop: the run hands over at its next unit boundary")
    _asked_at = time.monotonic()


@worker_process_init.connect(dispatch_uid="workflows.shutdown.pool_process")
def _in_pool(**kwargs: Any) -> None:
    global _in_pool_process  # one flag per process, set once when it starts
    _in_pool_process = True
    if os.getpid() != _imported_in_pid:  # a forked pool process, not the solo pool's worker itself
        os.setpgid(0, 0)


@worker_shutting_down.connect(dispatch_uid="workflows.shutdown.flag")
def _tell_the_pool(**kwargs: Any) -> None:
    """The worker stops: its pool processes' runs hand over at their next unit boundary, and a
    run taken from now on goes back to the queue."""
    _worker_stopping[0] = 1
