"""Fixtures for the engine's tests: the sample workflow and a real Celery worker process; and for
the KPI tests, the fake analytics service (``fake_analytics.py``). Helpers are in ``helpers.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from campaign.models import Channel, Delivery, ExternalAccount
from tests.factories import CampaignFactory, DeliveryFactory, ExternalAccountFactory
from tests.workflows import sample_workflow
from tests.workflows.fake_analytics import TOKEN, TOKEN_ENV, FakeAnalytics
from tests.workflows.helpers import TEST_LEASE_SECONDS, seed_sample_sources
from workflows.schedules import ensure_workflow
from workflows.worker_process import WorkerProcess
from workflows.worker_process import current_database_url as database_url


@pytest.fixture
def sample(db, settings):
    """The sample workflow's row, the delivery its effects point to, and 50 source rows."""
    settings.WORKFLOW_LEASE_SECONDS = TEST_LEASE_SECONDS
    workflow = ensure_workflow(sample_workflow.definition)
    ensure_workflow(sample_workflow.quick_definition)
    seed_sample_sources(50, campaign_label="engine tests")
    return workflow


@pytest.fixture
def worker(transactional_db, settings) -> Iterator[WorkerProcess]:
    """A real worker on the sample workflow's queue, talking to the test database."""
    env = {
        "SECRET_KEY": settings.SECRET_KEY,
        "DATABASE_URL": database_url(),
        "WORKFLOW_EXTRA_MODULES": sample_workflow.__name__,
        "WORKFLOW_LEASE_SECONDS": str(TEST_LEASE_SECONDS),
    }
    process = WorkerProcess(queues=[sample_workflow.SAMPLE_QUEUE], env=env).start()
    try:
        yield process
    finally:
        process.stop()


# -- the KPI tests' fake analytics service ---------------------------------------------------------
@pytest.fixture
def service(db, httpserver, monkeypatch, waits) -> FakeAnalytics:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    ExternalAccountFactory(name="analytics", kind=ExternalAccount.Kind.ANALYTICS, base_url=httpserver.url_for("/"),
                           token_env=TOKEN_ENV, enabled=True, timeout_s=5)
    return FakeAnalytics(httpserver, TOKEN)


@pytest.fixture
def deliveries(db) -> dict[str, Delivery]:
    campaign = CampaignFactory(label="Spring sale")
    return {
        "news": DeliveryFactory(label="Newsletter", campaign=campaign),
        "reminder": DeliveryFactory(label="Reminder", campaign=campaign),
        "receipt": DeliveryFactory(label="Receipts (May)", campaign=None, kind=Delivery.Kind.TRANSACTIONAL),
        "sms": DeliveryFactory(label="SMS promo", campaign=campaign, channel=Channel.SMS),
    }
