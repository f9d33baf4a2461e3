"""``python -m workflows.benchmarks.child ID '{"property": value}'``: run one workflow in this fresh
process, as a worker would, and print its run (the CLI's JSON of a run) with this process's peak memory.

The peak is read from /proc (VmHWM), which starts afresh at exec: the parent's memory, large after
filling a database, does not leak into the figure as it does in the child's ``ru_maxrss``.
"""

from __future__ import annotations

import json
import os
import sys


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return 0.0


def main(workflow_id: str, overrides_json: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from workflows import commands
    from workflows.definition import get_definition
    from workflows.models import Trigger
    from workflows.serializers import run_to_dict

    definition = get_definition(workflow_id)
    overrides = {name: definition.get_property(name).validate(value) for name, value in json.loads(overrides_json).items()}
    run = commands.run_now(definition.id, actor="benchmark", trigger=Trigger.CLI, force=True,
                           overrides=overrides or None, sync=True)
    print(json.dumps({"run": run_to_dict(run), "peak_rss_mb": round(peak_rss_mb(), 1)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
