"""The demo's entry points: what ``manage.py seed_demo`` (and ``make run``) call.

Why it exists: the command needs a few things besides the data itself -- the anchor (the "now"
of the data), the guard against a database in use, the deletion behind ``--force`` and a summary
of what was written -- and they all decide *around* the simulation, never inside it. Invariant:
one call of :func:`seed_demo` is one transaction; ids continue after the highest existing ones.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as time_of_day

from django.db import connection, models, transaction

from campaign import partitions
from campaign.bulk_load import reset_sequences
from campaign.demo.simulation import DemoGenerator
from campaign.demo.writer import IdAllocator
from campaign.models import (
    ABTest,
    AppSubscription,
    AudienceMember,
    BounceRule,
    Campaign,
    CustomerMetrics,
    Delivery,
    DeliveryAggregate,
    DeliveryLog,
    DomainRule,
    Event,
    EventHistory,
    ExternalAccount,
    ForecastLog,
    InboundSms,
    LogStatus,
    MessageTemplate,
    MxRule,
    Profile,
    Quarantine,
    Report,
    ReportSend,
    ReportShare,
    SendingFeedback,
    SharedAudience,
    TrackingHit,
    TrackingLog,
)


@dataclass
class SeedResult:
    """What seed_demo wrote: rows per model, delivery logs per status label, the time taken, and the
    rows deleted first (per table) when it replaced existing data."""

    counts: dict[str, int]
    log_statuses: dict[str, int]
    seconds: float
    deleted: dict[str, int] = field(default_factory=dict)


def default_anchor() -> datetime:
    """Today at 00:00 UTC: the data is recent, and the same all day long."""
    today = datetime.now(tz=UTC).date()
    return anchor_from_date(today)


def anchor_from_date(day: date) -> datetime:
    return datetime.combine(day, time_of_day(0, 0), tzinfo=UTC)


def database_has_domain_data() -> bool:
    """The guard of seed_demo: any profile or delivery means the instance is in use."""
    return Profile.objects.exists() or Delivery.objects.exists()


#: The campaign app's data tables, in an order in which deleting leaves no dangling reference.
#: API keys (credentials, not data) are not in it: --force keeps them, like users.
DOMAIN_MODELS_DELETE_ORDER: tuple[type[models.Model], ...] = (
    AudienceMember, SharedAudience, ExternalAccount, ReportSend, ReportShare.recipients.through, ReportShare,
    Report, CustomerMetrics, ForecastLog, DeliveryAggregate, TrackingLog, TrackingHit, SendingFeedback, InboundSms,
    EventHistory, Event, Quarantine, AppSubscription, DeliveryLog, ABTest, Delivery, MessageTemplate, Campaign,
    Profile, BounceRule, MxRule, DomainRule,
)


def delete_domain_data() -> dict[str, int]:
    """Delete the rows of DOMAIN_MODELS_DELETE_ORDER (users, API keys and workflow state are kept).

    One ``DELETE`` per table, leaves first: the ORM's cascade collector would load every row of
    the big tables into memory. The schedules of the deleted report shares go too.
    """
    from django_celery_beat.models import PeriodicTask

    share_tasks = list(ReportShare.objects.exclude(periodic_task=None).values_list("periodic_task_id", flat=True))
    deleted: dict[str, int] = {}
    with connection.cursor() as cursor:
        for model in DOMAIN_MODELS_DELETE_ORDER:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")
            deleted[model._meta.db_table] = cursor.rowcount
    if share_tasks:
        PeriodicTask.objects.filter(id__in=share_tasks).delete()
    return deleted


#: The tables seed_demo writes; it assigns all their ids itself.
SEEDED_MODELS: tuple[type[models.Model], ...] = (
    BounceRule, MxRule, DomainRule, ExternalAccount, Profile, AppSubscription, Campaign, MessageTemplate, ABTest,
    Delivery, DeliveryLog, TrackingLog, SendingFeedback, TrackingHit, InboundSms, Event, EventHistory, Quarantine,
    SharedAudience, AudienceMember, Report, ReportShare,
)


def seed_demo(*, profiles: int, seed: int, anchor: datetime, replace: bool = False) -> SeedResult:
    """Write the demo data in one transaction; with ``replace``, delete the campaign data first.

    Ids continue after the highest existing ones (read before deleting), so the id cursors the
    workflows keep on the raw tables never skip the new rows.
    """
    if profiles < 1:
        raise ValueError("profiles must be at least 1")
    started = time.monotonic()
    with transaction.atomic():
        ids = IdAllocator.from_database(SEEDED_MODELS)
        deleted = delete_domain_data() if replace else {}
        generator = DemoGenerator(profile_count=profiles, rng=random.Random(seed), anchor=anchor, ids=ids)
        generator.run()
        reset_sequences(*SEEDED_MODELS)
        # The demo's past months were written to the default partitions (PostgreSQL): give each
        # its own partition, as the partition maintenance would.
        partitions.ensure_partitions()
    counts = {name: generator.writer.counts[name] for name in sorted(generator.writer.counts)}
    statuses = {LogStatus(code).label: count for code, count in sorted(generator.log_statuses.items())}
    return SeedResult(counts=counts, log_statuses=statuses, seconds=time.monotonic() - started, deleted=deleted)

