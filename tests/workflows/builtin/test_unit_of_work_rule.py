"""Every workflow does its work through the engine's one unit-of-work primitive.

Exactly-once and fencing are argued once, in ``workflows/context.py``; a workflow module that
opened its own transaction around a batch, called the checkpoint or wrote the run's fields would
need an argument of its own, and could commit after its run lost its lease. This test reads the
source of every workflow module and fails on any of those.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import workflows.builtin

MODULES = sorted(
    Path(importlib.import_module(f"workflows.builtin.{module.name}").__file__)
    for module in pkgutil.iter_modules(workflows.builtin.__path__)
)

#: The engine's own: a workflow module never calls them.
ENGINE_ONLY_CALLS = {"checkpoint", "_checkpoint", "save_counters", "save_progress", "commit_bookkeeping", "atomic"}


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "django.db" and any(
            alias.name == "transaction" for alias in node.names
        ):
            found.append(f"line {node.lineno}: imports django.db.transaction")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ENGINE_ONLY_CALLS:
            found.append(f"line {node.lineno}: calls .{node.func.attr}()")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute)
                        and target.value.attr == "run"):
                    found.append(f"line {node.lineno}: assigns to run.{target.attr}")
    return found


def test_the_workflow_modules_are_found():
    assert len(MODULES) >= 15


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.stem)
def test_a_workflow_module_leaves_transactions_checkpoints_and_run_fields_to_the_engine(path: Path):
    assert violations(path) == []


def test_the_rule_catches_each_kind_of_violation(tmp_path: Path):
    offender = tmp_path / "offender.py"
    offender.write_text(
        "from django.db import transaction\n"
        "def activity(ctx):\n"
        "    ctx.checkpoint()\n"
        "    with transaction.atomic():\n"
        "        ctx.run.progress_done += 1\n"
        "        ctx.save_counters()\n"
    )
    assert sorted(violations(offender)) == [
        "line 1: imports django.db.transaction", "line 3: calls .checkpoint()", "line 4: calls .atomic()",
        "line 5: assigns to run.progress_done", "line 6: calls .save_counters()",
    ]
