"""Routing a workflow to a queue of its own (WORKFLOW_QUEUES): parsed strictly, checked against the
workflows, and followed by every sender, so that a heavy workflow runs on its own workers."""

from __future__ import annotations

import os

import pytest
from django.core.exceptions import ImproperlyConfigured

from project.config import ConfigError, parse_workflow_queues
from tests.workflows.helpers import effects, wait_for
from tests.workflows.sample_workflow import SAMPLE_ID
from workflows import commands
from workflows.definition import get_definition, load_definitions, queue_of
from workflows.models import RunStatus, WorkflowRun
from workflows.routing import route_task
from workflows.worker_process import WorkerProcess, current_database_url


def test_the_variable_maps_workflow_ids_to_queues() -> None:
    assert parse_workflow_queues({}) == {}
    assert parse_workflow_queues({"WORKFLOW_QUEUES": "cleanup=heavy, billing = reports.pdf"}) == {
        "cleanup": "heavy", "billing": "reports.pdf"}


@pytest.mark.parametrize(("raw", "message"), [
    ("cleanup", "expected WORKFLOW_ID=QUEUE items"),
    ("cleanup=", "expected WORKFLOW_ID=QUEUE items"),
    ("=heavy", "expected WORKFLOW_ID=QUEUE items"),
    ("cleanup=heavy queue", "expected WORKFLOW_ID=QUEUE items"),
    ("cleanup=a,,billing=b", "without empty items"),
    ("cleanup=a,cleanup=b", "'cleanup' is given twice"),
])
def test_a_malformed_value_is_refused_with_its_reason(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        parse_workflow_queues({"WORKFLOW_QUEUES": raw})
    assert "WORKFLOW_QUEUES" in str(refused.value)


def test_an_unknown_workflow_id_stops_the_process_at_start(settings) -> None:
    settings.WORKFLOW_QUEUES = {"cleanUp": "heavy"}

    with pytest.raises(ImproperlyConfigured, match="WORKFLOW_QUEUES names no workflow: cleanUp"):
        load_definitions()


def test_the_router_sends_a_listed_workflow_to_its_queue_and_the_others_to_their_definitions(settings) -> None:
    settings.WORKFLOW_QUEUES = {"cleanup": "heavy"}

    assert route_task("workflows.cleanup", (), {}, {}) == {"queue": "heavy"}
    assert route_task("workflows.billing", (), {}, {}) == {"queue": get_definition("billing").queue}
    assert queue_of(get_definition("cleanup")) == "heavy"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_workflow_routed_to_its_own_queue_runs_on_the_worker_that_consumes_it(sample, settings) -> None:
    heavy = f"heavy-{os.getpid()}"
    settings.WORKFLOW_QUEUES = {SAMPLE_ID: heavy}
    env = {"SECRET_KEY": settings.SECRET_KEY, "DATABASE_URL": current_database_url(),
           "WORKFLOW_EXTRA_MODULES": "tests.workflows.sample_workflow", "WORKFLOW_QUEUES": f"{SAMPLE_ID}={heavy}"}

    with WorkerProcess(queues=[heavy], env=env):
        run = commands.run_now(SAMPLE_ID, actor="test")
        wait_for(lambda: WorkflowRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED, what="the routed run")
    assert effects() == (50, 50)
