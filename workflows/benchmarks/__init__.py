"""Benchmark cases for ``python manage.py benchmark``.

Each heavy workflow has one case module here that registers a :class:`BenchmarkCase`: how to fill
a database at a chosen scale, the *minimal hand-written SQL* that produces the same rows on the
same data (the bound the workflow is measured against), a fingerprint of the output rows (so the
two are checked to agree, not just timed), and how to add 1% new rows for the incremental run.

The engine's fixed cost per run is measured apart (:mod:`workflows.benchmarks.fixed_cost`): it
has no rows and no SQL bound, only latencies.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from typing import Any

_CASES: dict[str, BenchmarkCase] = {}


class BenchmarkCase(ABC):
    #: The workflow measured (its id).
    workflow_id: str = ""
    #: Whether a run after new rows reads only those (so belongs on the scale curve); False for a
    #: workflow that recomputes a whole period on purpose.
    incremental: bool = True

    @abstractmethod
    def populate(self, *, rows: int, seed: int) -> None:
        """Fill the (empty) domain tables: ``rows`` is the scale, in source rows (e.g. delivery logs)."""

    @abstractmethod
    def sql_bound(self) -> None:
        """The minimal SQL doing the workflow's work on this data; run inside a transaction that the
        runner rolls back afterwards."""

    @abstractmethod
    def fingerprint(self) -> Any:
        """A compact, order-independent summary of the rows the work produces (sums, counts)."""

    @abstractmethod
    def add_increment(self, *, rows: int, seed: int) -> None:
        """Add ``rows`` new source rows after a full run (the incremental case)."""

    def settle(self) -> bool:
        """After the full run, bring the data to the state an incremental run starts from in
        production (e.g. the sending side finalising what the full run routed); True when the
        workflow must then run once, unmeasured, to catch up with it. By default nothing changes."""
        return False

    def properties(self) -> dict[str, Any]:
        """Property overrides for the measured runs (e.g. a batch size)."""
        return {}


def register(case: BenchmarkCase) -> BenchmarkCase:
    _CASES[case.workflow_id] = case
    return case


def all_cases() -> dict[str, BenchmarkCase]:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in {"child", "cleanup_partitions", "data", "event_ingestion", "fixed_cost", "noop_workflow",
                               "runner", "scale_curve"}:
            importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(_CASES.items(), key=lambda item: item[0].lower()))
