"""How a workflow is declared in code, and the registry of every declared workflow.

A workflow is one module that builds a :class:`WorkflowDefinition` and registers it::

    definition = register(WorkflowDefinition(
        id="cleanup", label="Database cleanup", description="...",
        schedule=Schedule("0 4 * * *"),
        activities=(purge_delivery_logs, purge_tracking_logs, ...),
        properties=(IntegerProperty("batch_size", 5000, minimum=1, maximum=100_000), ...),
    ))

Activities are plain functions taking an :class:`workflows.context.ActivityContext`; they run in
order. A definition only declares: the Celery task ``workflows.<id>`` is made from it when the app
is ready (:mod:`workflows.apps` subscribes :func:`workflows.tasks.make_task` with :func:`on_register`),
so this module imports nothing of Celery and nothing that runs workflows.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

from workflows.properties import Property

if TYPE_CHECKING:
    from workflows.context import ActivityContext

Activity = Callable[["ActivityContext"], None]

#: Default bounded-batch size: large enough that per-batch overhead (one transaction, one cursor
#: write, one lease check) is noise, small enough that a batch holds its locks for well under a
#: second on a busy table.
DEFAULT_BATCH_SIZE = 5_000


@dataclass(frozen=True)
class Schedule:
    """A default schedule: a five-field crontab in a time zone (``None`` = the instance's)."""

    crontab: str
    timezone: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a whole run after a transient error (network, 5xx, lost database connection)."""

    max_retries: int = 3
    backoff_s: float = 30.0  # first delay; doubles each attempt, with full jitter
    backoff_max_s: float = 600.0


@dataclass(frozen=True)
class WorkflowDefinition:
    id: str
    label: str
    description: str
    schedule: Schedule | None
    activities: tuple[Activity, ...] = ()
    properties: tuple[Property, ...] = ()
    soft_time_limit_s: int = 1800
    hard_time_limit_s: int = 1900
    batch_size: int = DEFAULT_BATCH_SIZE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    queue: str = "celery"
    #: Fire one catch-up run when the schedule is re-enabled after missed slots.
    catch_up: bool = False
    #: Discard a queued scheduled message older than this (frequent workflows: the next slot will
    #: do the work); ``None`` keeps it.
    expire_s: int | None = None
    #: Workflows this one must never run at the same time as (either side may declare it): a
    #: claim is refused while one of them holds its lease.
    exclusive_with: tuple[str, ...] = ()
    #: How long a run refused because of ``exclusive_with`` waits (re-queued, polling) before it
    #: is skipped; the runs it waits for take seconds.
    wait_for_exclusive_s: int = 120

    def __post_init__(self) -> None:
        if not (0 < self.soft_time_limit_s < self.hard_time_limit_s <= settings.WORKFLOW_MAX_HARD_TIME_LIMIT):
            raise ValueError(
                f"{self.id}: need 0 < soft limit < hard limit <= {settings.WORKFLOW_MAX_HARD_TIME_LIMIT}s "
                "(the broker's visibility timeout is derived from that maximum)"
            )
        names = [activity.__name__ for activity in self.activities]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.id}: activity names must be unique")

    @property
    def implemented(self) -> bool:
        return bool(self.activities)

    @property
    def task_name(self) -> str:
        return f"workflows.{self.id}"

    @property
    def activity_names(self) -> list[str]:
        return [activity.__name__ for activity in self.activities]

    def get_property(self, name: str) -> Property:
        for prop in self.properties:
            if prop.name == name:
                return prop
        known = ", ".join(p.name for p in self.properties) or "none"
        raise ValidationError(f"unknown property {name!r} for {self.id} (known: {known})")

    def resolve_properties(self, stored: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults, then the stored values, then this run's overrides, each validated."""
        values = {prop.name: prop.default for prop in self.properties}
        for source in (stored, overrides or {}):
            for name, value in source.items():
                values[name] = self.get_property(name).validate(value)
        return values

    def parse_overrides(self, assignments: list[str]) -> dict[str, Any]:
        """``["key=value", ...]`` from the command line → validated values."""
        overrides = {}
        for assignment in assignments:
            name, sep, text = assignment.partition("=")
            if not sep:
                raise ValidationError(f"expected key=value, got {assignment!r}")
            overrides[name.strip()] = self.get_property(name.strip()).parse(text)
        return overrides


_REGISTRY: dict[str, WorkflowDefinition] = {}
#: Called with each registered definition (see :func:`on_register`).
_LISTENERS: list[Callable[[WorkflowDefinition], object]] = []

#: Spellings people use for a workflow's id, lower-cased → the id.
ALIASES = {
    "reportingaggregate": "reportingAggregates",
    "updatedeliveryindicator": "updateDeliveryIndicators",
}


def register(definition: WorkflowDefinition) -> WorkflowDefinition:
    """Add a definition to the registry (and hand it to the :func:`on_register` listeners)."""
    if definition.id in _REGISTRY and _REGISTRY[definition.id] is not definition:
        raise ValueError(f"workflow {definition.id!r} is declared twice")
    _REGISTRY[definition.id] = definition
    for listener in _LISTENERS:
        listener(definition)
    return definition


def on_register(listener: Callable[[WorkflowDefinition], object]) -> None:
    """Call ``listener`` with every definition registered so far, and with each one registered
    later (a test module's, imported after the app is ready)."""
    _LISTENERS.append(listener)
    for definition in list(_REGISTRY.values()):
        listener(definition)


def load_definitions() -> None:
    """Import every module of ``workflows.builtin`` and of ``settings.WORKFLOW_EXTRA_MODULES``."""
    import workflows.builtin as builtin

    for module in pkgutil.iter_modules(builtin.__path__):
        importlib.import_module(f"{builtin.__name__}.{module.name}")
    for name in getattr(settings, "WORKFLOW_EXTRA_MODULES", ()):
        importlib.import_module(name)
    unknown = sorted(set(settings.WORKFLOW_QUEUES) - set(_REGISTRY))
    if unknown:
        raise ImproperlyConfigured(f"WORKFLOW_QUEUES names no workflow: {', '.join(unknown)} "
                                   "(ids are case-sensitive; `manage.py workflow list` shows them)")


def queue_of(definition: WorkflowDefinition) -> str:
    """The queue the workflow's messages go to: the one ``WORKFLOW_QUEUES`` gives it, else its
    definition's. Beat, the commands and ``celery call`` all send through the router that asks."""
    return settings.WORKFLOW_QUEUES.get(definition.id, definition.queue)


def builtin_definitions() -> list[WorkflowDefinition]:
    """The platform's own workflows: the ``definition`` of each module of ``workflows.builtin``."""
    import workflows.builtin as builtin

    modules = [importlib.import_module(f"{builtin.__name__}.{module.name}") for module in pkgutil.iter_modules(builtin.__path__)]
    definitions = [module.definition for module in modules if isinstance(getattr(module, "definition", None), WorkflowDefinition)]
    return sorted(definitions, key=lambda definition: definition.id.lower())


def all_definitions() -> list[WorkflowDefinition]:
    return sorted(_REGISTRY.values(), key=lambda definition: definition.id.lower())


class UnknownWorkflow(LookupError):
    pass


def resolve_id(name: str) -> str:
    """The id a person meant: exact, case-insensitive, or a known alias."""
    if name in _REGISTRY:
        return name
    lowered = name.lower()
    for workflow_id in _REGISTRY:
        if workflow_id.lower() == lowered:
            return workflow_id
    if lowered in ALIASES:
        return ALIASES[lowered]
    if (meant := closest_id(name)) is not None:
        raise UnknownWorkflow(f"unknown workflow {name!r}; did you mean {meant!r}?")
    raise UnknownWorkflow(f"unknown workflow {name!r}; `workflow list` shows the ids")


#: How alike a mistyped id and a declared one must be for the second to be suggested (difflib's
#: ratio: "cleenup" and "cleanup" score 0.86; unrelated ids stay under 0.5).
SUGGESTION_CUTOFF = 0.75


def closest_id(name: str) -> str | None:
    """The declared id nearest to a mistyped one (case-insensitive, aliases included), if any is
    near enough."""
    candidates = {workflow_id.lower(): workflow_id for workflow_id in _REGISTRY} | ALIASES
    matches = difflib.get_close_matches(name.lower(), candidates, n=1, cutoff=SUGGESTION_CUTOFF)
    return candidates[matches[0]] if matches else None


def get_definition(name: str) -> WorkflowDefinition:
    return _REGISTRY[resolve_id(name)]
