"""Loaded into a real worker (``WORKFLOW_EXTRA_MODULES``) by the fencing tests: freezes the pool
process with SIGSTOP inside a unit of work, after its effects and before its fenced commit, as a
long garbage-collection pause, a stalled VM or a network partition would.

``FREEZE_AT=<workflow id>:<unit number>`` says where: the first run of that workflow to commit that
many units freezes once (a marker file under ``FREEZE_MARKER`` records it, so the run that takes
over is not frozen too). The test sends SIGCONT when it has seen what it wants.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from workflows.context import RunFence, unit_committing


def freeze_before_commit(sender: Any, *, workflow_id: str, run_id: int, unit: int, **kwargs: Any) -> None:
    target = os.environ.get("FREEZE_AT", "")
    marker = Path(os.environ["FREEZE_MARKER"]) if os.environ.get("FREEZE_MARKER") else None
    if not target or marker is None or target != f"{workflow_id}:{unit}" or marker.exists():
        return
    marker.write_text(f"{os.getpid()} {run_id}")
    os.kill(os.getpid(), signal.SIGSTOP)


unit_committing.connect(freeze_before_commit, sender=RunFence, dispatch_uid="freeze_before_commit")
