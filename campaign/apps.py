from django.apps import AppConfig


class CampaignConfig(AppConfig):
    """The domain: profiles, deliveries, logs, tracking, events, reports, audiences, rules."""

    name = "campaign"
    verbose_name = "Campaign"
