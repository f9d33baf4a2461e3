"""The domain of a marketing-campaign platform, as the technical workflows see it.

Data flows one way: the sending and tracking sides append raw rows (SendingFeedback, TrackingHit,
InboundSms); updateDeliveryExecInfo consolidates them into DeliveryLog, TrackingLog and Quarantine;
indicators on Delivery and DeliveryAggregate rows are computed from those logs; reports and KPI
exports read aggregates.

One module per area, all in the ``campaign`` app:

- :mod:`~campaign.models.codes`: channels and the platform's numeric codes;
- :mod:`~campaign.models.profiles`: profiles, push subscriptions, shared audiences;
- :mod:`~campaign.models.deliveries`: campaigns, A/B tests, message templates, deliveries;
- :mod:`~campaign.models.logs`: delivery and tracking logs, raw feedback, hits and SMS replies, forecast logs;
- :mod:`~campaign.models.deliverability`: quarantine, bounce, MX and domain rules;
- :mod:`~campaign.models.events`: live and archived transactional events;
- :mod:`~campaign.models.reporting`: aggregates, shared KPIs, reports, billing metrics;
- :mod:`~campaign.models.accounts`: API keys and external accounts.

Every model and public name is re-exported here: ``from campaign.models import X`` is the one way
the rest of the code imports the domain, wherever X lives.
"""

from campaign.models.accounts import APIKey, APIKeyQuerySet, ExternalAccount
from campaign.models.codes import FINAL_LOG_STATUSES, Channel, FailureReason, FailureType, LogStatus, UrlType
from campaign.models.deliverability import BounceRule, DomainRule, MxRule, Quarantine, RuleSource
from campaign.models.deliveries import ABTest, Campaign, Delivery, MessageTemplate
from campaign.models.events import (
    FINAL_EVENT_STATUSES,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    Event,
    EventFields,
    EventHistory,
    EventStatus,
)
from campaign.models.logs import DeliveryLog, ForecastLog, InboundSms, SendingFeedback, TrackingHit, TrackingLog
from campaign.models.profiles import (
    AppSubscription,
    AudienceMember,
    Profile,
    SharedAudience,
    StagedAudienceMember,
    declared_id_hash,
)
from campaign.models.reporting import (
    CustomerMetrics,
    DeliveryAggregate,
    KpiShareState,
    Report,
    ReportSend,
    ReportShare,
    SharedKpi,
)

__all__ = [
    "FINAL_EVENT_STATUSES",
    "FINAL_LOG_STATUSES",
    "IDEMPOTENCY_KEY_MAX_LENGTH",
    "ABTest",
    "APIKey",
    "APIKeyQuerySet",
    "AppSubscription",
    "AudienceMember",
    "BounceRule",
    "Campaign",
    "Channel",
    "CustomerMetrics",
    "Delivery",
    "DeliveryAggregate",
    "DeliveryLog",
    "DomainRule",
    "Event",
    "EventFields",
    "EventHistory",
    "EventStatus",
    "ExternalAccount",
    "FailureReason",
    "FailureType",
    "ForecastLog",
    "InboundSms",
    "KpiShareState",
    "LogStatus",
    "MessageTemplate",
    "MxRule",
    "Profile",
    "Quarantine",
    "Report",
    "ReportSend",
    "ReportShare",
    "RuleSource",
    "SendingFeedback",
    "SharedAudience",
    "SharedKpi",
    "StagedAudienceMember",
    "TrackingHit",
    "TrackingLog",
    "UrlType",
    "declared_id_hash",
]
