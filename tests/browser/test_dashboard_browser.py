"""The dashboard in headless Chromium at the narrowest and a common desktop width: it never scrolls
sideways, no column is cut off, no word breaks across lines, the legend keeps to one line, and a
cell's popover lists its runs with links.

The layout is measured in the browser (``scrollWidth`` against ``clientWidth``, one rectangle per
word), so a column squeezed by a long label fails here, not in front of an operator. Each width's
screenshot goes to the instance's var/screenshots/; the one with a popover open is the picture of
docs/getting-started.md (``UPDATE_DOC_IMAGES=1`` writes it to docs/images/).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from workflows.models import RunStatus, Workflow, WorkflowRun, WorkflowState

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SCREENSHOTS = Path(settings.VAR_DIR) / "screenshots"
DOC_IMAGES = Path(settings.BASE_DIR) / "docs" / "images" if os.environ.get("UPDATE_DOC_IMAGES") else SCREENSHOTS
PASSWORD = "browser-test-password"

#: Everything the page must fit, measured in the browser. ``overflowing``: elements whose content is
#: wider than their box (a column cut off); ``broken_words``: words drawn on more than one line.
LAYOUT_PROBLEMS = """
const page = document.documentElement;
const main = document.getElementById('content-main');
const overflowing = [...main.querySelectorAll('th, td, .legend li, .heat .day, .heat-axis span, .workflow-id')]
  .filter(element => element.offsetParent !== null && element.scrollWidth > element.clientWidth + 1)
  .map(element => element.tagName + '.' + element.className + ': ' + element.textContent.trim().slice(0, 40));
const brokenWords = [];
const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  if (node.parentElement.offsetParent === null) continue;  // hidden (a closed popover)
  for (const match of node.textContent.matchAll(/\\S+/g)) {
    const range = document.createRange();
    range.setStart(node, match.index);
    range.setEnd(node, match.index + match[0].length);
    const lines = new Set([...range.getClientRects()].filter(rect => rect.width > 0).map(rect => Math.round(rect.top)));
    if (lines.size > 1) brokenWords.push(match[0]);
  }
}
const legendTops = new Set([...document.querySelectorAll('#heat-legend li')].map(item => item.offsetTop));
return {
  viewport: page.clientWidth,
  scrolls_sideways: page.scrollWidth > page.clientWidth,
  table_right: Math.ceil(document.getElementById('workflow-dashboard').getBoundingClientRect().right),
  overflowing: overflowing,
  broken_words: brokenWords,
  legend_lines: legendTops.size,
};
"""


def add_run_history() -> None:
    """A week of runs, so the heat map (and its screenshot) shows something: frequent workflows with
    a failure now and then, a daily cleanup, and kpiSharing paused with its last slots skipped."""
    now = timezone.now()
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    statuses = {"updateDeliveryExecInfo": 6, "kpiSharing": 4, "updateEventsStatus": 6, "mcSynch_local": 1,
                "updateDeliveryIndicators": 1, "importSharedAudience": 1}
    runs = []
    for workflow_id, per_hour in statuses.items():
        for hour in range(1, 7 * 24):
            for slot in range(per_hour):
                at = this_hour - timedelta(hours=hour) + timedelta(minutes=slot * 7 + 1)
                status = (RunStatus.FAILED if (hour * 7 + slot) % 97 == 3 else
                          RunStatus.SKIPPED if (hour + slot) % 41 == 5 or (workflow_id == "kpiSharing" and hour < 3)
                          else RunStatus.SUCCEEDED)
                runs.append(WorkflowRun(workflow_id=workflow_id, trigger="schedule", status=status, created_at=at,
                                        started_at=at, finished_at=at + timedelta(seconds=2), duration_s=2.0,
                                        reason="workflow paused" if status == RunStatus.SKIPPED else ""))
    for hour in range(0, 7 * 24, 24):
        at = now - timedelta(hours=hour + 9)
        runs.append(WorkflowRun(workflow_id="cleanup", trigger="schedule", status=RunStatus.SUCCEEDED, created_at=at,
                                started_at=at, finished_at=at + timedelta(minutes=4), duration_s=240.0))
    WorkflowRun.objects.bulk_create(sorted(runs, key=lambda run: run.created_at))  # ids in time order, as in life
    Workflow.objects.filter(pk="kpiSharing").update(state=WorkflowState.PAUSED)


@pytest.fixture
def dashboard(browser, live_server, django_user_model):
    django_user_model.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    add_run_history()
    browser.get(f"{live_server.url}/admin/login/?next=/admin/workflows/dashboard/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 10).until(EC.presence_of_element_located((By.ID, "workflow-dashboard")))
    return browser


def show_at_width(browser, width: int) -> None:
    browser.set_window_size(width, 1000)
    WebDriverWait(browser, 10).until(lambda _: browser.execute_script("return window.innerWidth") == width)


@pytest.mark.parametrize("width", [1024, 1440, 1920])
def test_dashboard_fits_the_width_without_cut_columns_or_broken_words(dashboard, width):
    browser = dashboard
    show_at_width(browser, width)

    layout = browser.execute_script(LAYOUT_PROBLEMS)

    assert width - 20 <= layout["viewport"] <= width  # less the vertical scroll bar
    assert not layout["scrolls_sideways"]
    assert layout["table_right"] <= layout["viewport"]
    assert layout["overflowing"] == []
    assert layout["broken_words"] == []
    assert layout["legend_lines"] == 1
    cell = browser.find_element(By.CSS_SELECTOR, "#workflow-cleanup .heat .cell")
    assert cell.size["width"] >= 9 and cell.size["height"] >= 11
    labels = browser.find_elements(By.CSS_SELECTOR, "#workflow-cleanup .heat .day")
    assert [label.text for label in labels][-1] == timezone.localtime().strftime("%a %-d")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"dashboard-{width}.png"))


def test_dashboard_screenshot_with_a_popover_open(dashboard):
    """The documentation's picture: the top of the page at 1440 px, a kpiSharing hour listed."""
    browser = dashboard
    browser.set_window_size(1440, 1500)
    failed = browser.find_elements(By.CSS_SELECTOR, "#workflow-kpiSharing .heat .cell.status-failed")[0]

    ActionChains(browser).move_to_element(failed).perform()

    assert failed.find_element(By.CSS_SELECTOR, ".runs").is_displayed()
    DOC_IMAGES.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(DOC_IMAGES / "dashboard.png"))


def test_dashboard_shows_every_workflow_its_grid_and_last_run(dashboard):
    browser = dashboard

    rows = browser.find_elements(By.CSS_SELECTOR, "#workflow-dashboard tbody tr")
    assert len(rows) >= 15
    assert "Every 10 minutes" in browser.find_element(By.ID, "workflow-updateDeliveryExecInfo").text
    assert len(browser.find_element(By.ID, "workflow-cleanup").find_elements(By.CSS_SELECTOR, ".heat .cell")) == 7 * 24
    failed = browser.find_elements(By.CSS_SELECTOR, "#workflow-updateDeliveryExecInfo .heat .cell.status-failed .mark")
    assert failed and failed[0].text == "✕"
    last_run = browser.find_element(By.CSS_SELECTOR, "#workflow-kpiSharing .last-run").text
    assert last_run.startswith("Succeeded") and "Since then skipped" in last_run and "workflow paused" in last_run


@pytest.mark.parametrize("width", [1024, 1440])
@pytest.mark.parametrize("hour", [0, 23])
def test_a_cell_popover_lists_its_runs_with_links_and_stays_on_screen(dashboard, live_server, width, hour):
    browser = dashboard
    show_at_width(browser, width)
    cells = browser.find_elements(By.CSS_SELECTOR, "#workflow-updateDeliveryExecInfo .heat .cell")
    cell = next(cell for cell in cells[hour::24] if "status-" in cell.get_attribute("class"))

    ActionChains(browser).move_to_element(cell).perform()
    popover = cell.find_element(By.CSS_SELECTOR, ".runs")
    WebDriverWait(browser, 5).until(lambda _: popover.is_displayed())

    links = popover.find_elements(By.CSS_SELECTOR, "li a")
    assert len(links) == 5 and all("/admin/workflows/workflowrun/" in link.get_attribute("href") for link in links)
    assert popover.find_element(By.CSS_SELECTOR, "a.more").text == "+1 more"
    assert popover.rect["x"] >= 0 and popover.rect["x"] + popover.rect["width"] <= width
    assert not browser.execute_script("return document.documentElement.scrollWidth > document.documentElement.clientWidth")

    target = links[0].get_attribute("href")
    ActionChains(browser).move_to_element(links[0]).click().perform()
    WebDriverWait(browser, 10).until(EC.url_to_be(target))
