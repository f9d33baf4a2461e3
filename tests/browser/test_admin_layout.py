"""The workflow admin's pages fit a 1024 px and a 1440 px window: no column cut off or scrolled out
of sight, no label broken inside a word (:mod:`tests.browser.layout` measures them in Chromium).

The pages are filled with what makes them wide: a cleanup run's fourteen activities with their
counters, a journal entry with a long unbroken token, a failed run's long reason, consecutive
errors, an audit entry with a long note, the longest property and activity names. Each page's
screenshot at each width is saved under the instance's var/screenshots/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings

from tests.browser.layout import WIDTHS, full_page_screenshot, layout_problems, open_at_width
from workflows import commands
from workflows.audit import audit
from workflows.models import LogLevel, RunStatus, Trigger, Workflow, WorkflowLog, WorkflowRun

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SCREENSHOTS = Path(settings.VAR_DIR) / "screenshots"
SCREENSHOTS.mkdir(parents=True, exist_ok=True)

LONG_TOKEN = "x" * 300
LONG_COUNTERS = {f"{name}_removed": 123456 for name in (
    "delivery_logs", "tracking_logs", "sending_feedback", "tracking_hits", "events", "archived_events",
    "delivery_aggregates", "forecast_logs", "deliveries", "app_subscriptions", "journal_entries", "workflow_runs")}


def fill_history() -> dict[str, int]:
    """Runs, journal and audit entries that make the pages wide; the ids the pages need."""
    run = commands.run_now("cleanup", actor="layout test", trigger=Trigger.SHELL, sync=True, force=True)
    traceback = f'Traceback (most recent call last):\n  File "{LONG_TOKEN}.py"\nValueError: {LONG_TOKEN}'
    WorkflowLog.objects.create(workflow_id="cleanup", run=run, activity="purge_delivery_aggregates", level=LogLevel.ERROR,
                               message=traceback)
    WorkflowRun.objects.create(workflow_id="updateDeliveryExecInfo", trigger=Trigger.SCHEDULE, status=RunStatus.SUCCEEDED,
                               duration_s=4.2, counters=LONG_COUNTERS)
    WorkflowRun.objects.create(workflow_id="kpiSharing", trigger=Trigger.ADMIN, requested_by="a.very.long.user.name",
                               status=RunStatus.FAILED, duration_s=9000, reason=f"HTTP 503 from the analytics API: {LONG_TOKEN}")
    Workflow.objects.filter(pk="kpiSharing").update(consecutive_errors=2)
    commands.pause("billing", actor="layout test", note="paused for the " + "quarterly audit " * 20)
    audit("cleanup", "edit", actor="layout test", changes={"supervisors": ["", "operations@example.com\n" * 6]},
          note=LONG_TOKEN)
    return {"run": run.pk}


PAGES: dict[str, Callable[[dict[str, int]], str]] = {
    "workflow-list": lambda ids: "/admin/workflows/workflow/",
    "workflow-page": lambda ids: "/admin/workflows/workflow/cleanup/change/",
    "workflow-page-longest-names": lambda ids: "/admin/workflows/workflow/updateDeliveryIndicators/change/",
    "workflow-page-quarantine-threshold": lambda ids: "/admin/workflows/workflow/updateDeliveryExecInfo/change/",
    "run-page": lambda ids: f"/admin/workflows/workflowrun/{ids['run']}/change/",
    "run-list": lambda ids: "/admin/workflows/workflowrun/",
    "journal": lambda ids: "/admin/workflows/workflowlog/",
    "audit-trail": lambda ids: "/admin/workflows/workflowaudit/",
    "workflow-history": lambda ids: "/admin/workflows/workflow/cleanup/history/",
    "force-run": lambda ids: "/admin/workflows/workflow/billing/command/force_run/",
}


@pytest.mark.parametrize("page", list(PAGES))
def test_page_fits_the_window_at_1024_and_1440_px(logged_in, live_server, page: str) -> None:
    browser = logged_in
    ids = fill_history()
    problems = {}
    for width in WIDTHS:
        open_at_width(browser, live_server.url + PAGES[page](ids), width)
        assert browser.find_elements("css selector", "#content"), f"{page} did not render"
        problems[width] = layout_problems(browser)
        full_page_screenshot(browser, SCREENSHOTS / f"layout-{page}-{width}.png")
    assert problems == {width: [] for width in WIDTHS}


def test_the_check_sees_a_cut_off_column_and_a_label_broken_mid_word(logged_in, live_server) -> None:
    """The measures can fail: Django's own 160 px labels, and a column that cannot shrink."""
    browser = logged_in
    open_at_width(browser, f"{live_server.url}/admin/workflows/workflow/updateDeliveryIndicators/change/", 1024)
    browser.execute_script("""document.head.insertAdjacentHTML("beforeend", `<style>
        .aligned label { min-width: 160px !important; width: 160px !important; white-space: normal !important;
                         overflow-wrap: break-word !important; }</style>`)""")
    assert any('"recompute_changed_deliveries:" breaks across lines' in problem for problem in layout_problems(browser))

    open_at_width(browser, f"{live_server.url}/admin/workflows/workflow/", 1024)
    browser.execute_script("""document.querySelector("#result_list tbody td.field-schedule_display")
                              .insertAdjacentHTML("beforeend", `<span style="white-space:nowrap">${"x".repeat(300)}</span>`)""")
    problems = layout_problems(browser)
    assert any("div.results" in problem and "hides" in problem for problem in problems), problems
    assert any("th.column-last_run_counters" in problem and "beyond the" in problem for problem in problems), problems


def test_the_lists_forced_run_page_fits_and_forces_nothing_until_confirmed(logged_in, live_server) -> None:
    """The action's confirmation page, reached as an operator does (tick, choose, Go), with the
    longest workflow ids and a paused run, at both widths; then its button forces the runs."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    browser = logged_in
    commands.pause("cleanup", actor="layout test")
    WorkflowRun.objects.create(workflow_id="cleanup", trigger=Trigger.SCHEDULE, status=RunStatus.PAUSED,
                               halted_activity="purge_released_quarantine", reason="workflow paused")
    selected = ("cleanup", "updateDeliveryIndicators", "updateDeliveryExecInfo")
    problems = {}
    for width in WIDTHS:
        open_at_width(browser, f"{live_server.url}/admin/workflows/workflow/", width)
        for workflow_id in selected:
            browser.find_element(By.XPATH, f"//tr[.//a[text()='{workflow_id}']]//input[@class='action-select']").click()
        Select(browser.find_element(By.NAME, "action")).select_by_value("force_run_workflows")
        browser.find_element(By.NAME, "index").click()
        WebDriverWait(browser, 30).until(EC.presence_of_element_located((By.ID, "confirm-force-run")))
        problems[width] = layout_problems(browser)
        full_page_screenshot(browser, SCREENSHOTS / f"layout-force-run-from-the-list-{width}.png")
    assert problems == {width: [] for width in WIDTHS}
    assert not WorkflowRun.objects.filter(status=RunStatus.QUEUED).exists()

    browser.find_element(By.ID, "confirm-force-run").click()
    message = WebDriverWait(browser, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    assert "Forced a run of 3 workflows" in message.text
    assert sorted(WorkflowRun.objects.filter(status=RunStatus.QUEUED).values_list("workflow_id", flat=True)) == sorted(selected)
