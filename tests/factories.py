"""factory_boy factories for the campaign domain, shared by every test module.

Plain on purpose: no Faker, no random choices. Unique columns come from ``factory.Sequence``, so a
test that needs a stable value passes it explicitly and every other value is predictable; times
default to the model's ``timezone.now`` so time-machine controls them. Each factory builds the
smallest valid row: a delivery log gets its delivery and profile, a tracking log shares its
delivery log's delivery.
"""

from __future__ import annotations

import datetime

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from campaign.models import (
    ABTest,
    APIKey,
    AppSubscription,
    AudienceMember,
    BounceRule,
    Campaign,
    Channel,
    CustomerMetrics,
    Delivery,
    DeliveryAggregate,
    DeliveryLog,
    DomainRule,
    Event,
    EventHistory,
    EventStatus,
    ExternalAccount,
    FailureReason,
    FailureType,
    ForecastLog,
    InboundSms,
    KpiShareState,
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
    SharedKpi,
    StagedAudienceMember,
    TrackingHit,
    TrackingLog,
    UrlType,
)


class UserFactory(factory.django.DjangoModelFactory):
    """A plain user. The password is unusable (hashing costs ~0.3 s a user): log in with
    ``client.force_login``, or pass ``password="..."`` to get a usable one."""

    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = factory.django.Password(None)
    is_staff = False
    is_superuser = False


class StaffUserFactory(UserFactory):
    """Staff without any permission: can reach the admin index, sees no model."""

    username = factory.Sequence(lambda n: f"staff{n}")
    is_staff = True


class SuperUserFactory(UserFactory):
    username = factory.Sequence(lambda n: f"admin{n}")
    is_staff = True
    is_superuser = True


class ProfileFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Profile

    email = factory.Sequence(lambda n: f"profile{n}@example.com")
    phone = factory.Sequence(lambda n: f"+3360{n:07d}")
    first_name = "Ada"
    last_name = factory.Sequence(lambda n: f"Recipient{n}")


class CampaignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Campaign

    label = factory.Sequence(lambda n: f"Campaign {n}")


class ABTestFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ABTest

    label = factory.Sequence(lambda n: f"A/B test {n}")
    campaign = factory.SubFactory(CampaignFactory)
    variant_count = 2
    test_duration = datetime.timedelta(hours=4)


class MessageTemplateFactory(factory.django.DjangoModelFactory):
    """A published email template for ``order_confirmation`` events."""

    class Meta:
        model = MessageTemplate

    label = factory.Sequence(lambda n: f"Template {n}")
    event_type = "order_confirmation"
    channel = Channel.EMAIL
    published = True
    published_at = factory.LazyFunction(timezone.now)


class DeliveryFactory(factory.django.DjangoModelFactory):
    """A draft marketing email delivery; pass ``state=...`` for the others."""

    class Meta:
        model = Delivery

    label = factory.Sequence(lambda n: f"Delivery {n}")
    campaign = factory.SubFactory(CampaignFactory)
    channel = Channel.EMAIL
    kind = Delivery.Kind.MARKETING
    state = Delivery.State.DRAFT


class DeliveryLogFactory(factory.django.DjangoModelFactory):
    """A pending message to a profile's email address."""

    class Meta:
        model = DeliveryLog

    delivery = factory.SubFactory(DeliveryFactory)
    profile = factory.SubFactory(ProfileFactory)
    address = factory.LazyAttributeSequence(
        lambda log, n: log.profile.email if log.profile is not None else f"recipient{n}@example.com"
    )
    status = LogStatus.PENDING
    failure_type = FailureType.NONE
    failure_reason = FailureReason.NONE


class SendingFeedbackFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SendingFeedback

    delivery_log = factory.SubFactory(DeliveryLogFactory)
    outcome = SendingFeedback.Outcome.DELIVERED
    error_text = ""


class InboundSmsFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InboundSms

    phone = factory.Sequence(lambda n: f"+3369{n:07d}")
    text = "STOP"
    short_code = "38111"


class TrackingHitFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TrackingHit

    delivery_log = factory.SubFactory(DeliveryLogFactory)
    url_type = UrlType.OPEN
    url = ""
    user_agent = "Mozilla/5.0 (test)"


class TrackingLogFactory(factory.django.DjangoModelFactory):
    """A consolidated open; the delivery is the delivery log's, as updateDeliveryExecInfo writes it."""

    class Meta:
        model = TrackingLog

    delivery_log = factory.SubFactory(DeliveryLogFactory)
    delivery = factory.SelfAttribute("delivery_log.delivery")
    url_type = UrlType.OPEN
    url = ""


class QuarantineFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Quarantine

    address = factory.Sequence(lambda n: f"bounced{n}@example.com")
    channel = Channel.EMAIL
    status = Quarantine.Status.ERRONEOUS
    error_count = 1
    failure_type = FailureType.SOFT
    failure_reason = FailureReason.MAILBOX_FULL


class AppSubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AppSubscription

    profile = factory.SubFactory(ProfileFactory)
    application = "com.example.shop"
    device_token = factory.Sequence(lambda n: f"device-token-{n:012d}")


class EventFactory(factory.django.DjangoModelFactory):
    """A pending ``order_confirmation`` email event."""

    class Meta:
        model = Event

    event_type = "order_confirmation"
    channel = Channel.EMAIL
    payload = factory.Sequence(lambda n: {"order": n})
    email = factory.Sequence(lambda n: f"buyer{n}@example.com")
    status = EventStatus.PENDING


class EventHistoryFactory(factory.django.DjangoModelFactory):
    """An archived event; its id is the live event's, so it is given, not generated."""

    class Meta:
        model = EventHistory

    id = factory.Sequence(lambda n: 1_000_000 + n)
    event_type = "order_confirmation"
    channel = Channel.EMAIL
    email = factory.Sequence(lambda n: f"archived{n}@example.com")
    status = EventStatus.SENT
    processed_at = factory.LazyFunction(timezone.now)


class DeliveryAggregateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DeliveryAggregate

    day = factory.LazyFunction(lambda: timezone.localdate())
    delivery = factory.SubFactory(DeliveryFactory)
    channel = factory.SelfAttribute("delivery.channel")


class ForecastLogFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ForecastLog

    delivery = factory.SubFactory(DeliveryFactory, state=Delivery.State.SCHEDULED)
    profile = factory.SubFactory(ProfileFactory)
    channel = factory.SelfAttribute("delivery.channel")
    planned_at = factory.LazyFunction(timezone.now)


class ReportFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Report

    label = factory.Sequence(lambda n: f"Report {n}")
    kind = Report.Kind.DELIVERY_KPIS


class ReportShareFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReportShare

    report = factory.SubFactory(ReportFactory)
    recurrence = ReportShare.Recurrence.NOW


class ReportSendFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReportSend

    share = factory.SubFactory(ReportShareFactory)
    due_at = factory.LazyFunction(timezone.now)


class CustomerMetricsFactory(factory.django.DjangoModelFactory):
    """Billing figures of one month; successive rows are successive months from 2024-01."""

    class Meta:
        model = CustomerMetrics

    period_start = factory.Sequence(lambda n: datetime.date(2024 + n // 12, n % 12 + 1, 1))
    period_end = factory.LazyAttribute(
        lambda metrics: (metrics.period_start + datetime.timedelta(days=32)).replace(day=1) - datetime.timedelta(days=1)
    )


class ExternalAccountFactory(factory.django.DjangoModelFactory):
    """A disabled analytics account whose token variable is, by default, not set anywhere."""

    class Meta:
        model = ExternalAccount

    name = factory.Sequence(lambda n: f"account-{n}")
    kind = ExternalAccount.Kind.ANALYTICS
    base_url = "https://analytics.example.com/api/"
    token_env = factory.Sequence(lambda n: f"CAMPAIGN_TOKEN_TEST_ACCOUNT_{n}")
    enabled = False


class SharedAudienceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SharedAudience

    name = factory.Sequence(lambda n: f"Audience {n}")
    external_id = factory.Sequence(lambda n: f"aud-{n}")
    account = factory.SubFactory(ExternalAccountFactory, kind=ExternalAccount.Kind.AUDIENCE)


class AudienceMemberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AudienceMember

    audience = factory.SubFactory(SharedAudienceFactory)
    profile = factory.SubFactory(ProfileFactory)
    id_type = AudienceMember.IdType.DECLARED


class BounceRuleFactory(factory.django.DjangoModelFactory):
    """A hard "user unknown" rule; priorities increase with each rule created."""

    class Meta:
        model = BounceRule

    pattern = r"user unknown|no such user"
    failure_type = FailureType.HARD
    failure_reason = FailureReason.USER_UNKNOWN
    priority = factory.Sequence(lambda n: 100 + n)


class MxRuleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MxRule

    mx_mask = factory.Sequence(lambda n: f"*.mx{n}.example.com")
    max_connections = 10


class DomainRuleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DomainRule

    domain = factory.Sequence(lambda n: f"domain{n}.example.com")


class APIKeyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = APIKey

    name = factory.Sequence(lambda n: f"client-{n}")
    key_hash = factory.Sequence(lambda n: f"{n:064x}")
    prefix = factory.Sequence(lambda n: f"{n:08x}")


class SharedKpiFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SharedKpi

    day = factory.LazyFunction(lambda: timezone.localdate())
    delivery = factory.SubFactory(DeliveryFactory)
    sent = 10
    delivered = 9


class KpiShareStateFactory(factory.django.DjangoModelFactory):
    """The email channel's sharing state with a batch pending (the one row a channel has)."""

    class Meta:
        model = KpiShareState
        django_get_or_create = ("channel",)

    channel = Channel.EMAIL
    watermark_updated_at = factory.LazyFunction(lambda: timezone.now() - datetime.timedelta(minutes=15))
    watermark_aggregate_id = 41
    pending_batch_id = "5" * 64
    pending_rows = factory.LazyFunction(list)
    pending_watermark_updated_at = factory.LazyFunction(timezone.now)
    pending_watermark_aggregate_id = 42


class StagedAudienceMemberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = StagedAudienceMember

    audience = factory.SubFactory(SharedAudienceFactory)
    member_id = factory.Sequence(lambda n: f"visitor-{n}")
    id_type = AudienceMember.IdType.VISITOR
