"""Calling ``manage.py workflow`` in-process as an operator would: its exit code, standard output and
standard error. ``cliUnwritten`` is a declared workflow without activities (its runs fail with "not
implemented"), registered here once, at import."""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import StringIO
from typing import Any

from django.core.management import call_command

from workflows.definition import WorkflowDefinition, register
from workflows.schedules import ensure_workflow

UNWRITTEN = register(WorkflowDefinition(
    id="cliUnwritten", label="CLI unwritten", description="Test-only workflow declared without activities.",
    schedule=None,
))


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def workflow_cli(*args: str) -> Result:
    ensure_workflow(UNWRITTEN)
    stdout, stderr = StringIO(), StringIO()
    try:
        call_command("workflow", *args, stdout=stdout, stderr=stderr)
    except SystemExit as exit_:
        code = exit_.code
    else:
        code = 0
    return Result(code, stdout.getvalue(), stderr.getvalue())
