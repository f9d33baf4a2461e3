"""``make run``: the Procfile under honcho, with time for every process to stop on its own.

On Ctrl-C or SIGTERM honcho sends SIGTERM to each process of the Procfile, then SIGKILL to any
still running 5 seconds after the first one stopped: a constant of honcho's, with no option. A
worker's warm shutdown can need more on the embedded broker, whose blocking loop notices a stop
only between two waits for messages of up to 2 s, and whose pool closes in steps of a second (7 to
8 s in all on a busy 2-core machine); a run in progress hands over at its next unit boundary
(workflows/shutdown.py). Killed, a worker rolls back its unit and leaves its run to be taken over
once its lease expires.

So ``make run`` starts honcho through this module (``python -m project.run start -f Procfile``,
any honcho command line works), which gives the processes :data:`STOP_GRACE_S` instead. A stop
asked for (Ctrl-C, SIGTERM) that every process obeyed in time ends with status 0, as a server
stopped on request does, rather than honcho's 130 or 143, which make reports as an error.
"""

from __future__ import annotations

import sys
from typing import Any

import honcho.command
import honcho.manager

#: Seconds honcho waits after the first process stopped before it kills the others: gunicorn's
#: own graceful timeout (``WEB_GRACEFUL_TIMEOUT``, 30 by default).
STOP_GRACE_S = 30
#: honcho's status when it stopped the processes because it got SIGINT or SIGTERM.
STOP_ASKED_STATUSES = (128 + 2, 128 + 15)


class Manager(honcho.manager.Manager):
    """honcho's process manager, which remembers whether it had to kill a process."""

    started: list[Manager] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.killed = False
        Manager.started.append(self)

    def kill(self) -> None:
        self.killed = True
        super().kill()


def main() -> None:
    honcho.manager.KILL_WAIT = STOP_GRACE_S
    honcho.command.Manager = Manager  # the name `honcho start` builds its manager with
    try:
        honcho.command.main()
    except SystemExit as exit_:
        stopped_on_request = exit_.code in STOP_ASKED_STATUSES and Manager.started
        if stopped_on_request and not any(manager.killed for manager in Manager.started):
            sys.exit(0)
        raise


if __name__ == "__main__":
    main()
