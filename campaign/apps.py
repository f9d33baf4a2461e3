from django.apps import AppConfig
from django.db.models.signals import post_migrate


class CampaignConfig(AppConfig):
    """The domain: profiles, deliveries, logs, tracking, events, reports, audiences, rules."""

    name = "campaign"
    verbose_name = "Campaign"

    def ready(self) -> None:
        post_migrate.connect(ensure_partitions_after_migrate, sender=self)


def ensure_partitions_after_migrate(sender: AppConfig, using: str, **kwargs: object) -> None:
    """``migrate`` leaves the log tables partitioned up to three months ahead (PostgreSQL)."""
    from django.db import connections

    from campaign import partitions

    if partitions.enabled(connections[using]):
        partitions.ensure_partitions()
