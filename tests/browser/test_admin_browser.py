"""End to end in headless Chromium: log in, pause, run now, a refused crontab (the dashboard has its
own, tests/browser/test_dashboard_browser.py).

Each test saves a screenshot of what it checked, under the instance's var/screenshots/; with
``UPDATE_DOC_IMAGES=1`` they replace the ones the documentation shows, in docs/images/ (a plain
test run leaves the working tree as it found it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.layout import full_page_screenshot
from workflows.models import RunStatus, WorkflowRun
from workflows.worker_process import WorkerProcess, current_database_url

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SCREENSHOTS = (Path(settings.BASE_DIR) / "docs" / "images" if os.environ.get("UPDATE_DOC_IMAGES")
               else Path(settings.VAR_DIR) / "screenshots")
SCREENSHOTS.mkdir(parents=True, exist_ok=True)


def wait(browser, condition, timeout: float = 30):
    return WebDriverWait(browser, timeout).until(condition)


def test_pausing_a_workflow_changes_its_badge(logged_in, live_server):
    browser = logged_in
    browser.get(f"{live_server.url}/admin/workflows/workflow/")
    row = browser.find_element(By.XPATH, "//tr[.//a[text()='cleanup']]")
    assert "Started" in row.text
    row.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("pause_workflows")
    browser.find_element(By.NAME, "index").click()

    wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    row = browser.find_element(By.XPATH, "//tr[.//a[text()='cleanup']]")
    assert row.find_element(By.CSS_SELECTOR, ".workflow-state").text == "Paused"
    browser.save_screenshot(str(SCREENSHOTS / "workflow-list-paused.png"))


def test_run_now_shows_the_run_and_its_journal(logged_in, live_server, settings):
    browser = logged_in
    env = {"DATABASE_URL": current_database_url(), "SECRET_KEY": settings.SECRET_KEY}
    with WorkerProcess(queues=["celery"], env=env):
        browser.get(f"{live_server.url}/admin/workflows/workflow/abTesting/change/")
        browser.find_element(By.ID, "command-run_now").click()
        wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
        wait(browser, lambda _: WorkflowRun.objects.filter(workflow_id="abTesting", status=RunStatus.SUCCEEDED).exists())

    run = WorkflowRun.objects.get(workflow_id="abTesting")
    browser.get(f"{live_server.url}/admin/workflows/workflowrun/{run.pk}/change/")
    page = browser.find_element(By.ID, "content").text
    assert "Succeeded" in page
    assert f"Run #{run.pk} started (admin, by admin)." in page
    assert "decide_winners" in page
    full_page_screenshot(browser, SCREENSHOTS / "run-page.png")


def test_an_invalid_crontab_is_refused_with_its_message(logged_in, live_server):
    browser = logged_in
    browser.get(f"{live_server.url}/admin/workflows/workflow/cleanup/change/")
    field = browser.find_element(By.NAME, "schedule_crontab")
    field.clear()
    field.send_keys("0 0 31 2 *")
    browser.find_element(By.NAME, "_save").click()

    error = wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, ".errorlist")))
    assert "never" in error.text
    browser.save_screenshot(str(SCREENSHOTS / "crontab-refused.png"))

    field = browser.find_element(By.NAME, "schedule_crontab")
    field.clear()
    field.send_keys("30 5 * * 1-5")
    browser.find_element(By.NAME, "_save").click()
    wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    browser.get(f"{live_server.url}/admin/workflows/workflow/")
    assert "At 05:30, Monday through Friday" in browser.find_element(By.XPATH, "//tr[.//a[text()='cleanup']]").text
