"""``make run``: the Procfile under honcho, with time for every process to stop on its own.

On Ctrl-C or SIGTERM honcho sends SIGTERM to each process of the Procfile, then SIGKILL to any
still running 5 seconds after the first one stopped: a constant of honcho's, with no option. A
worker's warm shutdown can need more on the embedded broker, whose blocking loop notices a stop
only between two waits for messages of up to 2 s, and whose pool closes in steps of a second (7 to
8 s in all on a busy 2-core machine); a run in progress hands over at its next unit boundary
(workflows/shutdown.py). Killed, a worker rolls back its unit and leaves its run to be taken over
once its lease expires.

So ``make run`` starts honcho through this module (``python -m project.run start -f Procfile``,
any honcho command line works), which gives the processes :data:`STOP_GRACE_S` instead.
"""

from __future__ import annotations

import honcho.manager
from honcho.command import main

#: Seconds honcho waits after the first process stopped before it kills the others: gunicorn's
#: own graceful timeout (``WEB_GRACEFUL_TIMEOUT``, 30 by default).
STOP_GRACE_S = 30

if __name__ == "__main__":
    honcho.manager.KILL_WAIT = STOP_GRACE_S
    main()
