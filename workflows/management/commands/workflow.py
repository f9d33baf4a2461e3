"""``python manage.py workflow``: operate the technical workflows from a terminal or a script.

The command is a thin shell over :mod:`workflows.commands` (the same functions the admin and the
shell call, so a command means the same everywhere and is audited as ``cli:<os user>``) and over
:mod:`workflows.serializers` for ``--json``. Scripts rely on two things here: the JSON shapes,
and the exit codes below, each failure coming with one line on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandParser, DjangoHelpFormatter
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from workflows import commands, schedule_repair, schedules
from workflows.commands import CommandRefused
from workflows.definition import UnknownWorkflow, WorkflowDefinition, all_definitions, get_definition, resolve_id
from workflows.models import RunStatus, Trigger, Workflow, WorkflowRun
from workflows.serializers import last_run_of, run_to_dict, with_last_runs, workflow_to_dict

EXIT_OK = 0
#: ``run --sync``: the run ended ``failed``.
EXIT_RUN_FAILED = 1
#: Bad usage, unknown workflow id, invalid ``--set`` value (argparse also exits 2 on bad usage).
EXIT_USAGE = 2
#: The command was refused (e.g. run on a paused workflow without --force), or a ``run --sync``
#: did not complete: skipped (another run holds the workflow), paused or stopped mid-way.
EXIT_REFUSED = 3

#: What ``runs`` shows without ``--limit``: a screenful.
DEFAULT_RUNS_LIMIT = 20

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK}  success
  {EXIT_RUN_FAILED}  run --sync: the run failed (stderr gives the reason)
  {EXIT_USAGE}  bad usage, unknown workflow id, or invalid --set value
  {EXIT_REFUSED}  command refused (e.g. run on a paused workflow without --force), or
     run --sync did not complete (skipped, paused or stopped; stderr says why)
"""

STATE_COMMANDS = ("start", "pause", "resume", "stop", "restart")


class HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's option order, with the exit-code table kept as laid out."""


class CommandFailed(Exception):
    """Ends the command with ``exit_code`` after writing ``message`` as one line on stderr."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def engine_logs_at_warning(*, enabled: bool) -> Iterator[None]:
    """Keep the engine's INFO lines (one per run) off stderr, where scripts expect only the reason
    of a failure; ``-v 2`` shows them."""
    logger = logging.getLogger("workflows")
    previous = logger.level
    if enabled:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def actor_name() -> str:
    """``cli:<operating-system user>``, as the audit trail records a command given here."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor the password database
        user = "unknown"
    return f"cli:{user}"


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def validation_message(error: ValidationError) -> str:
    return "; ".join(error.messages)


def run_exit_code(run: WorkflowRun) -> int:
    """What a finished ``run --sync`` means for the caller."""
    if run.status == RunStatus.SUCCEEDED:
        return EXIT_OK
    if run.status == RunStatus.FAILED:
        return EXIT_RUN_FAILED
    return EXIT_REFUSED


def format_time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{rest:02d}s" if hours else f"{minutes}m{rest:02d}s"


def format_counters(counters: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in counters.items()) or "-"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[column]) for row in rows) for column in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows)


def describe_last_run(run: WorkflowRun | None) -> str:
    if run is None:
        return "never run"
    if run.duration_s is None:
        return f"#{run.pk} {run.status}"
    return f"#{run.pk} {run.status} in {format_duration(run.duration_s)}"


class Command(BaseCommand):
    help = "List, inspect, run and operate the technical workflows, and repair their schedules."
    #: Django's system checks (models, admin, URLconf...) are for ``manage.py check`` and
    #: ``migrate`` at a deploy; run before every command, they took a tenth of a second and loaded
    #: every view. The workflows' own configuration is checked when Django starts (WORKFLOW_QUEUES).
    requires_system_checks: list[str] = []

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        return super().create_parser(prog_name, subcommand, epilog=EXIT_CODES_HELP, formatter_class=HelpFormatter, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        # Django's CommandParser makes its sub-parsers CommandParsers too, so that under
        # call_command a usage error raises CommandError instead of exiting the process.
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        self._add(actions, "list", "List the workflows: state, schedule, next run, last run.", workflow_id=False, with_json=True)
        self._add(actions, "show", "Show one workflow: schedule, properties, activities, last run.", with_json=True)

        run = self._add(actions, "run", "Run a workflow now (queued through the broker unless --sync).", with_json=True)
        run.add_argument("--sync", action="store_true", help="Run in this process and print the run summary.")
        run.add_argument("--force", action="store_true", help="Run even when the workflow is paused or stopped.")
        run.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                         help="Override a property for this run only (repeatable).")

        for action in STATE_COMMANDS:
            self._add(actions, action, {
                "start": "Start the workflow: schedule enabled; a paused run continues where it halted.",
                "pause": "Pause the workflow: schedule disabled; a running run halts at its next batch.",
                "resume": "Resume a paused workflow (a stopped one cannot be resumed).",
                "stop": "Stop the workflow: schedule disabled; a running run halts as stopped.",
                "restart": "Stop, then start with a fresh run queued at once.",
            }[action])

        runs = self._add(actions, "runs", "List the workflow's most recent runs.", with_json=True)
        runs.add_argument("--limit", type=int, default=DEFAULT_RUNS_LIMIT, metavar="N",
                          help=f"How many runs, most recent first (default {DEFAULT_RUNS_LIMIT}).")

        repair = self._add(actions, "repair", (
            "Repair drifted schedules: recreate a deleted PeriodicTask with the schedule it had (else the\n"
            "definition's default), set its task back to workflows.<id>, enable it if and only if the workflow\n"
            "is started. Each repair is audited."
        ), workflow_id=False)
        repair.add_argument("workflow_id", metavar="ID", nargs="?", default=None,
                            help="Workflow id, case-insensitive; every workflow when omitted.")

    def _add(self, actions: Any, name: str, help_text: str, *,
             workflow_id: bool = True, with_json: bool = False) -> CommandParser:
        sub = actions.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES_HELP,
                                 formatter_class=HelpFormatter)
        if workflow_id:
            sub.add_argument("workflow_id", metavar="ID",
                             help="Workflow id, case-insensitive (aliases: reportingAggregate, updateDeliveryIndicator).")
        if with_json:
            sub.add_argument("--json", dest="as_json", action="store_true", help="Print JSON instead of text.")
        # Django reads -v before the action only; accepted after it too, the same option. Unset
        # here, it leaves the value given before the action (or Django's default) alone.
        sub.add_argument("-v", "--verbosity", type=int, choices=[0, 1, 2, 3], default=argparse.SUPPRESS,
                         help="0 quiet, 1 normal, 2 also the engine's log lines (one per run) on stderr.")
        return sub

    # -- dispatch ----------------------------------------------------------------------------
    def handle(self, *args: Any, action: str, **options: Any) -> None:
        handlers: dict[str, Callable[..., int]] = {
            "list": self.list_workflows, "show": self.show_workflow, "run": self.run_workflow,
            "runs": self.list_runs, "repair": self.repair_schedules,
            **dict.fromkeys(STATE_COMMANDS, self.change_state),
        }
        try:
            with engine_logs_at_warning(enabled=options["verbosity"] < 2):
                exit_code = handlers[action](action=action, **options)
        except CommandFailed as failure:
            self.fail(str(failure), failure.exit_code)
        if exit_code != EXIT_OK:
            raise SystemExit(exit_code)

    def fail(self, message: str, exit_code: int) -> NoReturn:
        self.stderr.write(f"workflow: {one_line(message)}")
        raise SystemExit(exit_code)

    def emit_json(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, indent=2, ensure_ascii=False))

    # -- sub-commands --------------------------------------------------------------------------
    def list_workflows(self, *, as_json: bool, **options: Any) -> int:
        order = {definition.id: position for position, definition in enumerate(all_definitions())}
        # Rows of workflows no longer declared in code are left out: they cannot run.
        pairs = sorted(with_last_runs(Workflow.objects.filter(pk__in=order)), key=lambda pair: order[pair[0].pk])
        missing = sorted(set(order) - {workflow.pk for workflow, _ in pairs}, key=order.__getitem__)
        if missing:
            self.stderr.write(f"workflow: no database row for {', '.join(missing)}; run `manage.py migrate`")
        if as_json:
            self.emit_json([workflow_to_dict(workflow, last_run=run) for workflow, run in pairs])
            return EXIT_OK
        rows = []
        for workflow, run in pairs:
            rows.append([
                workflow.pk, workflow.state, schedules.schedule_summary(workflow)["human"] or "-",
                format_time(schedules.next_run_at(workflow)), describe_last_run(run),
            ])
        self.stdout.write(format_table(["ID", "STATE", "SCHEDULE", "NEXT RUN", "LAST RUN"], rows))
        return EXIT_OK

    def show_workflow(self, *, workflow_id: str, as_json: bool, **options: Any) -> int:
        definition, workflow = self.lookup(workflow_id)
        last_run = last_run_of(workflow)
        if as_json:
            self.emit_json(workflow_to_dict(workflow, last_run=last_run))
            return EXIT_OK
        schedule = schedules.schedule_summary(workflow)
        stored = workflow.properties or {}
        lines = [
            f"{workflow.pk} — {workflow.label}",
            f"  {workflow.description}" if workflow.description else "",
            f"State:       {workflow.state}",
            "Schedule:    " + (f"{schedule['human']} ({schedule['crontab']}, {schedule['timezone']})"
                               if schedule["crontab"] else "on demand"),
            *[f"Drift:       {problem} (`workflow repair {workflow.pk}` repairs it)"
              for problem in schedules.drift_of(workflow, definition)],
            f"Next run:    {format_time(schedules.next_run_at(workflow))}",
            f"Last run:    {describe_last_run(last_run)}"
            + (f" — {last_run.reason}" if last_run is not None and last_run.reason else ""),
            f"Progress:    {format_progress(last_run)}" if last_run is not None and last_run.status == RunStatus.RUNNING else "",
            f"Cursors:     {format_counters(dict(sorted(workflow.cursors.items())))}" if workflow.cursors else "",
            f"History:     {workflow.history_days} days",
            "Properties:" + ("  -" if not definition.properties else ""),
        ]
        for prop in definition.properties:
            value = stored.get(prop.name, prop.default)
            origin = "set" if prop.name in stored else "default"
            lines.append(f"  {prop.name} = {value!r} ({origin}){'  ' + prop.help if prop.help else ''}")
        lines.append("Activities:" + ("  - (not implemented)" if not definition.implemented else ""))
        for position, name in enumerate(definition.activity_names, start=1):
            lines.append(f"  {position}. {name} ({(workflow.activity_modes or {}).get(name, 'normal')})")
        self.stdout.write("\n".join(line for line in lines if line))
        return EXIT_OK

    def run_workflow(self, *, workflow_id: str, as_json: bool, sync: bool, force: bool, assignments: list[str],
                     **options: Any) -> int:
        definition, workflow = self.lookup(workflow_id)
        try:
            overrides = definition.parse_overrides(assignments)
            bar = ProgressBar(self.stderr) if sync and not as_json and self.stderr.isatty() else None
            run = commands.run_now(workflow.pk, actor=actor_name(), trigger=Trigger.CLI, force=force,
                                   overrides=overrides, sync=sync, on_progress=bar.update if bar else None)
            if bar:
                bar.close()
        except ValidationError as error:
            raise CommandFailed(f"invalid --set for {workflow.pk}: {validation_message(error)}", EXIT_USAGE) from None
        except CommandRefused as refusal:
            raise CommandFailed(f"refused: {refusal}", EXIT_REFUSED) from None
        except BrokerError as error:
            raise CommandFailed(f"the broker is unreachable ({error}); run marked failed", EXIT_RUN_FAILED) from None
        run = WorkflowRun.objects.prefetch_related("activities").get(pk=run.pk)
        if as_json:
            self.emit_json(run_to_dict(run))
        elif sync:
            self.stdout.write(self.run_summary(run))
        else:
            self.stdout.write(f"Queued run #{run.pk} of {run.workflow_id} (task {run.celery_task_id}).")
        if not sync:
            return EXIT_OK
        exit_code = run_exit_code(run)
        if exit_code != EXIT_OK:
            self.stderr.write(f"workflow: run #{run.pk} of {run.workflow_id} {run.status}: "
                              f"{one_line(run.reason) or 'no reason given'}")
        return exit_code

    def change_state(self, *, action: str, workflow_id: str, **options: Any) -> int:
        _, workflow = self.lookup(workflow_id)
        before = workflow.state
        actor = actor_name()
        try:
            if action == "start":
                result = commands.start(workflow.pk, actor=actor)
            elif action == "resume":
                result = commands.resume(workflow.pk, actor=actor)
            elif action == "pause":
                result = commands.pause(workflow.pk, actor=actor)
            elif action == "stop":
                result = commands.stop(workflow.pk, actor=actor)
            else:
                result = commands.restart(workflow.pk, actor=actor, trigger=Trigger.CLI)
        except CommandRefused as refusal:
            raise CommandFailed(f"refused: {refusal}", EXIT_REFUSED) from None
        except BrokerError as error:
            raise CommandFailed(f"the broker is unreachable ({error}); run marked failed", EXIT_RUN_FAILED) from None
        if isinstance(result, WorkflowRun):
            self.stdout.write(f"{workflow.pk} restarted (was {before}); queued run #{result.pk}.")
        else:
            self.stdout.write(f"{workflow.pk} is {result.state} (was {before}).")
        return EXIT_OK

    def list_runs(self, *, workflow_id: str, as_json: bool, limit: int, **options: Any) -> int:
        if limit < 1:
            raise CommandFailed(f"--limit must be at least 1, got {limit}", EXIT_USAGE)
        _, workflow = self.lookup(workflow_id)
        runs = list(workflow.runs.order_by("-pk").prefetch_related("activities")[:limit])
        if as_json:
            self.emit_json([run_to_dict(run) for run in runs])
            return EXIT_OK
        if not runs:
            self.stdout.write(f"{workflow.pk} has no runs.")
            return EXIT_OK
        self.stdout.write(format_table(
            ["RUN", "TRIGGER", "STATUS", "STARTED", "DURATION", "COUNTERS", "REASON"],
            [[f"#{run.pk}", run.trigger, run.status, format_time(run.started_at), format_duration(run.duration_s),
              format_counters(run.counters or {}), one_line(run.reason) or "-"] for run in runs],
        ))
        return EXIT_OK

    def repair_schedules(self, *, workflow_id: str | None, **options: Any) -> int:
        if workflow_id is None:
            repairs = schedule_repair.repair_schedules(actor=actor_name())
            nothing = "No schedule needed a repair."
        else:
            _, workflow = self.lookup(workflow_id)
            repair = schedule_repair.repair_schedule(workflow.pk, actor=actor_name())
            repairs = [repair] if repair is not None else []
            nothing = f"{workflow.pk}: its schedule is as it should be; nothing to repair."
        for repair in repairs:
            self.stdout.write(f"{repair.workflow}: repaired. {repair.note}")
        if not repairs:
            self.stdout.write(nothing)
        return EXIT_OK

    # -- helpers -------------------------------------------------------------------------------
    def lookup(self, name: str) -> tuple[WorkflowDefinition, Workflow]:
        try:
            definition = get_definition(resolve_id(name))
        except UnknownWorkflow as error:
            raise CommandFailed(str(error.args[0]), EXIT_USAGE) from None
        workflow = Workflow.objects.select_related("periodic_task__crontab").filter(pk=definition.id).first()
        if workflow is None:
            raise CommandFailed(f"{definition.id} has no database row yet; run `manage.py migrate`", EXIT_USAGE)
        return definition, workflow

    def run_summary(self, run: WorkflowRun) -> str:
        lines = [
            f"Run #{run.pk} of {run.workflow_id}: {run.status}" + (f" — {one_line(run.reason)}" if run.reason else ""),
            f"Trigger:     {run.trigger}" + (f" (by {run.requested_by})" if run.requested_by else ""),
            f"Started:     {format_time(run.started_at)}",
            f"Finished:    {format_time(run.finished_at)}",
            f"Duration:    {format_duration(run.duration_s)}",
            f"Counters:    {format_counters(run.counters or {})}",
        ]
        activities = list(run.activities.all())
        lines.append("Activities:" + ("  -" if not activities else ""))
        for activity in activities:
            lines.append(f"  {activity.position + 1}. {activity.name}  {activity.status}  "
                         f"{format_counters(activity.counters or {})}"
                         + (f"  ({one_line(activity.message)})" if activity.message else ""))
        return "\n".join(lines)


def format_progress(run: WorkflowRun) -> str:
    """"12,000 / 50,000 rows (24%)", or the rows done when the total is unknown."""
    if run.progress_total:
        return f"{run.progress_done:,} / {run.progress_total:,} rows ({min(run.progress_done / run.progress_total, 1):.0%})"
    return f"{run.progress_done:,} rows"


class ProgressBar:
    """A one-line bar redrawn on a terminal after each batch of an in-process run."""

    WIDTH = 30

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.drawn = False

    def update(self, run: WorkflowRun) -> None:
        text = format_progress(run)
        if run.progress_total:
            filled = int(min(run.progress_done / run.progress_total, 1) * self.WIDTH)
            text = f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {text}"
        self.stream.write(f"\r{text}", ending="")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("")
