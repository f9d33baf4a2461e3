"""The dashboard's heat map: each workflow's runs of the last 7 calendar days as a grid of days ×
hours (the instance's time zone), each cell coloured by the most serious status of its runs, a
failure also marked by a symbol (colour-blind readers), and a popover listing the cell's runs with
links to them.

Two queries whatever the number of runs: the hour's count of each status, and at most
:data:`RUNS_PER_CELL` runs of each hour (picked by a window function, most serious first). The
grid's HTML is built here rather than in the template: a busy week is thousands of cells, and the
template language would take seconds over them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from urllib.parse import urlencode

from django.db.models import Case, Count, F, Value, When, Window
from django.db.models.functions import Coalesce, RowNumber, TruncHour
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from workflows.models import RunStatus, WorkflowRun

HEAT_MAP_DAYS = 7
#: A cell's popover lists this many of its runs (the most serious first); the others are one link
#: away, on the run list filtered to the cell's hour. Five lines keep the popover small, and a
#: workflow every 10 minutes shows all but one run of an hour.
RUNS_PER_CELL = 5
#: Cells of the first hours open their popover to the right, the others to the left, so that a
#: popover never reaches past the grid's right edge (the page would scroll sideways).
POPOVER_OPENS_RIGHT_BEFORE_HOUR = 4

#: When an hour holds runs of several statuses, the cell shows the most serious one.
SEVERITY = [RunStatus.FAILED, RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.STOPPED, RunStatus.QUEUED,
            RunStatus.SUCCEEDED, RunStatus.SKIPPED]
#: Drawn on a failed cell, on its legend swatch and before a failed run in a popover, so that a
#: failure does not rest on its colour alone.
FAILURE_MARK = "✕"


def format_duration(seconds: float | None) -> str:
    """``2.0 s``, ``4 min 02 s``, ``1 h 05 min``; an em dash when unknown."""
    if seconds is None:
        return "—"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def run_url(run_id: int) -> str:
    return reverse("admin:workflows_workflowrun_change", args=[run_id])


@dataclass(frozen=True)
class Links:
    """The admin URLs a grid links to, reversed once per page rather than once per run (thousands of
    ``reverse`` calls would cost most of the page's time)."""

    run_prefix: str
    run_suffix: str
    run_list: str

    @classmethod
    def reverse(cls) -> Links:
        prefix, suffix = run_url(0).rsplit("/0/", 1)
        return cls(run_prefix=f"{prefix}/", run_suffix=f"/{suffix}",
                   run_list=reverse("admin:workflows_workflowrun_changelist"))

    def run(self, run_id: int) -> str:
        return f"{self.run_prefix}{run_id}{self.run_suffix}"


@dataclass(frozen=True)
class CellRun:
    """One run as a cell's popover lists it; ``at`` is when it started, or was queued."""

    id: int
    status: str
    at: datetime
    duration_s: float | None

    def description(self, zone: tzinfo) -> str:
        """``✕ Failed · 14:03:12 · 2.0 s``: what follows the run's ``#id`` in a popover."""
        mark = f"{FAILURE_MARK} " if self.status == RunStatus.FAILED else ""
        return f"{mark}{RunStatus(self.status).label} · {self.at.astimezone(zone):%H:%M:%S} · {format_duration(self.duration_s)}"


@dataclass
class Cell:
    """One hour of one workflow: how many runs of each status, and the first of them to list."""

    workflow_id: str
    day: date
    hour: int
    future: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    runs: list[CellRun] = field(default_factory=list)

    @property
    def status(self) -> str | None:
        return next((status for status in SEVERITY if self.counts.get(status)), None)

    @property
    def failed(self) -> bool:
        return self.status == RunStatus.FAILED

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def more(self) -> int:
        """How many runs of the hour the popover does not list."""
        return self.total - len(self.runs)

    @property
    def css_class(self) -> str:
        if self.status:
            return f"cell status-{self.status}"
        return "cell future" if self.future else "cell"

    @property
    def title(self) -> str:
        """``Sat 28 Nov 12:00–13:00: 1 failed, 5 succeeded``."""
        when = f"{self.day:%a} {self.day.day} {self.day:%b} {self.hour:02d}:00–{(self.hour + 1) % 24:02d}:00"
        if not self.counts:
            return f"{when}: no run"
        detail = ", ".join(f"{self.counts[status]} {RunStatus(status).label.lower()}"
                           for status in SEVERITY if self.counts.get(status))
        return f"{when}: {detail}"

    def more_url(self, links: Links) -> str:
        """The run list filtered to the workflow and the cell's day and hour (of the current time zone,
        as the grid's: an hour that occurs twice when the clocks go back is one cell and one list)."""
        query = urlencode({"workflow__id__exact": self.workflow_id, "created_at__date": self.day.isoformat(),
                           "created_at__hour": self.hour})
        return f"{links.run_list}?{query}"

    def html(self, links: Links, zone: tzinfo) -> str:
        """The cell; with runs, focusable, its popover inside (shown on hover and focus by the CSS)."""
        if not self.counts:
            return f'<span class="{self.css_class}"></span>'
        title = escape(self.title)
        mark = f'<span class="mark" aria-hidden="true">{FAILURE_MARK}</span>' if self.failed else ""
        side = " opens-right" if self.hour < POPOVER_OPENS_RIGHT_BEFORE_HOUR else ""
        lines = "".join(f'<li><a href="{links.run(run.id)}">#{run.id}</a> {run.description(zone)}</li>'
                        for run in self.runs)
        more = f'<a class="more" href="{escape(self.more_url(links))}">+{self.more} more</a>' if self.more else ""
        return (f'<div class="{self.css_class}" tabindex="0" aria-label="{title}">{mark}'
                f'<div class="runs{side}"><strong>{title}</strong><ul>{lines}</ul>{more}</div></div>')


@dataclass
class HeatDay:
    day: date
    is_today: bool
    cells: list[Cell]


def grid_html(days: list[HeatDay], *, links: Links | None = None) -> SafeString:
    """The grid's cells, each day's line headed by its label (``Sat 28``, today's in bold)."""
    links = links or Links.reverse()
    zone = timezone.get_current_timezone()
    parts = []
    for line in days:
        today = " today" if line.is_today else ""
        parts.append(f'<span class="day{today}">{line.day:%a} {line.day.day}</span>')
        parts.extend(cell.html(links, zone) for cell in line.cells)
    return mark_safe("".join(parts))  # fixed markup around numbers, statuses and escaped text


@dataclass
class HeatMap:
    """The runs created over the last days (today included), by workflow, day and hour of the
    instance's time zone."""

    days: list[date]
    today: date
    current_hour: int
    cells: dict[str, dict[tuple[date, int], Cell]]

    def grid(self, workflow_id: str) -> list[HeatDay]:
        """One line per day, oldest first, of 24 cells each (hours without runs included)."""
        by_hour = self.cells.get(workflow_id, {})
        return [
            HeatDay(day=day, is_today=day == self.today, cells=[
                by_hour.get((day, hour)) or Cell(workflow_id=workflow_id, day=day, hour=hour,
                                                  future=day == self.today and hour > self.current_hour)
                for hour in range(24)
            ])
            for day in self.days
        ]

    def totals(self, workflow_id: str) -> dict[str, int]:
        """Runs of the period by status, most serious first (statuses without runs left out)."""
        totals: dict[str, int] = {}
        for cell in self.cells.get(workflow_id, {}).values():
            for status, count in cell.counts.items():
                totals[status] = totals.get(status, 0) + count
        return {status: totals[status] for status in SEVERITY if status in totals}


def severity_rank() -> Case:
    return Case(*(When(status=status, then=Value(rank)) for rank, status in enumerate(SEVERITY)),
                default=Value(len(SEVERITY)))


def heat_map(*, now: datetime, days: int = HEAT_MAP_DAYS) -> HeatMap:
    """The heat map of the ``days`` calendar days up to ``now``'s, in two queries."""
    zone: tzinfo = timezone.get_current_timezone()
    local_now = timezone.localtime(now, zone)
    today = local_now.date()
    day_list = [today - timedelta(days=back) for back in range(days - 1, -1, -1)]
    period = WorkflowRun.objects.filter(
        created_at__gte=datetime.combine(day_list[0], time(), tzinfo=zone),
        created_at__lt=datetime.combine(today + timedelta(days=1), time(), tzinfo=zone),
    ).annotate(hour=TruncHour("created_at", tzinfo=zone))
    cells: dict[str, dict[tuple[date, int], Cell]] = {}

    def cell_of(workflow_id: str, hour: datetime) -> Cell:
        local = timezone.localtime(hour, zone)
        key = (local.date(), local.hour)
        by_hour = cells.setdefault(workflow_id, {})
        if key not in by_hour:
            by_hour[key] = Cell(workflow_id=workflow_id, day=key[0], hour=key[1])
        return by_hour[key]

    for row in period.order_by().values("workflow_id", "hour", "status").annotate(runs=Count("id")):
        cell = cell_of(row["workflow_id"], row["hour"])
        cell.counts[row["status"]] = cell.counts.get(row["status"], 0) + row["runs"]
    listed = (
        period.annotate(position=Window(RowNumber(), partition_by=[F("workflow_id"), F("hour")],
                                        order_by=[severity_rank().asc(), F("created_at").asc(), F("id").asc()]),
                        at=Coalesce("started_at", "created_at"))
        .filter(position__lte=RUNS_PER_CELL)
        .order_by("workflow_id", "hour", "position")
        .values_list("workflow_id", "hour", "id", "status", "at", "duration_s")
    )
    for workflow_id, hour, *run in listed:
        cell_of(workflow_id, hour).runs.append(CellRun(*run))
    return HeatMap(days=day_list, today=today, current_hour=local_now.hour, cells=cells)
