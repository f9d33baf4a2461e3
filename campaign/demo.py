"""Deterministic demo data for a fresh instance (``manage.py seed_demo``, run by ``make run``).

Why it exists: on a fresh install every technical workflow should find work to do -- raw feedback
and hits to consolidate, deliveries with stale indicators, an A/B test whose test period has just
ended, events waiting for a template, addresses to quarantine, old rows to purge -- and the
tables must agree with each other so that the workflows' results can be checked by eye.

How: the data is *simulated*, not drawn table by table. Each message has a send time, an outcome
reported by the provider after a short delay (delivered, bounce, or deferred then retried) and, when
delivered, opens, clicks and opt-outs at later times. Everything that happened before the last
consolidation (``anchor - UNCONSOLIDATED_WINDOW``) is already in the consolidated tables
(DeliveryLog status, TrackingLog, Quarantine, profile blocklist flags); what happened after it and
before the anchor is still raw (SendingFeedback, TrackingHit); nothing happens after the anchor.
So the database looks like one whose workers stopped two hours ago while the sending and tracking
sides kept writing: a fresh instance's first updateDeliveryExecInfo run has real work.

Invariants:

- Deterministic: a single ``random.Random(seed)`` is drawn in a fixed order, no set is iterated and
  the wall clock is never read (timestamps derive from ``anchor``). The same seed and anchor give
  the same rows; when the tables start empty, the ids are the same too.
- Fast (100,000 profiles, ~670,000 rows, in well under a minute on SQLite and PostgreSQL): one
  transaction; rows buffered per table and written in large batches, with ``bulk_create`` for the
  small tables and, for the six big ones (``ROW_TABLES``), plain tuples sent by COPY (PostgreSQL)
  or one prepared INSERT (SQLite): see :class:`_RowTable`. Every id is assigned here, after the
  tables' highest id, so rows reference rows not yet written and nothing is read back; the
  sequences are reset at the end. No query runs per row.
- Raw rows (SendingFeedback, TrackingHit) only describe what is not consolidated yet: the
  workflow that consumes them starts from an empty cursor and must not count anything twice.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from itertools import accumulate
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.management.color import no_style
from django.db import connection, models, transaction
from django.db.models import F, Max
from django.db.models.functions import Coalesce

from campaign.models import (
    ABTest,
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
    UrlType,
)

# --------------------------------------------------------------------------------------------
# Sizes and performance

DEFAULT_PROFILES = 10_000
DEFAULT_SEED = 20_240_601

#: Instances handed to one ``bulk_create`` call (one INSERT on PostgreSQL; Django splits it
#: further on SQLite, whose driver takes at most 999 parameters per statement).
BULK_BATCH_SIZE = 5_000
#: Instances buffered per table before they are written: bounds memory (~1 KB per instance)
#: to a few tens of MB whatever the number of profiles.
FLUSH_ROWS = 20_000
#: Ids per ``id IN (...)`` update: under SQLite's 999-parameter limit.
UPDATE_CHUNK = 900

# --------------------------------------------------------------------------------------------
# Time line (all relative to the anchor, the "now" of the data)

#: updateDeliveryExecInfo "last ran" this long before the anchor: everything newer is still raw.
#: Two hours of a running campaign give a few percent of its audience as raw feedback and hits.
UNCONSOLIDATED_WINDOW = timedelta(hours=2)
#: Marketing history. Longer than the 180-day delivery-log retention, so cleanup has work to do.
HISTORY_DAYS = 400
#: Most profiles existed before the history starts; the rest joined during it.
SHARE_PROFILES_CREATED_BEFORE_HISTORY = 0.75
PROFILE_OLDEST_DAYS = 1_500
#: Transactional messages of the last two months, in two finished and one running execution deliveries.
TRANSACTIONAL_DAYS = 60
#: Transactional events are processed within seconds and archived (mcSynch_local) an hour after;
#: the demo's transactional traffic stops this long before the anchor, so all of it is
#: consolidated and archived.
TRANSACTIONAL_ARCHIVE_LAG = UNCONSOLIDATED_WINDOW + timedelta(hours=1)
#: Live events waiting for updateEventsStatus arrived within this window before the anchor.
LIVE_EVENT_WINDOW = timedelta(minutes=20)
#: A few live events are older than the 1-day expiry of updateEventsStatus (they become too_old).
SHARE_LIVE_EVENTS_TOO_OLD = 0.03

# --------------------------------------------------------------------------------------------
# Profiles

SHARE_WITHOUT_EMAIL = 0.04
SHARE_EMAIL_WITH_NUMBER = 0.7  # emma.martin482@...: fewer shared addresses between homonyms
SHARE_WITH_PHONE = 0.65
SHARE_WITH_VISITOR_ID = 0.45  # seen on the web site or the app: matchable by shared audiences
SHARE_WITH_DECLARED_ID = 0.35  # known to the customer's CRM
SHARE_BLOCKLISTED_EMAIL = 0.012  # opted out before the history starts
SHARE_BLOCKLISTED_SMS = 0.006
SHARE_WITH_APP = 0.30  # installed the mobile app and accepted push notifications
SHARE_SECOND_DEVICE = 0.15  # of app users: a second device (phone + tablet)
SHARE_SUBSCRIPTION_DISABLED_LONG_AGO = 0.05  # tokens disabled before the history: cleanup purges them
SHARE_VISITORS_IN_AUDIENCE = 0.2  # of the profiles with a visitor id: the shared audience's last import

#: Persistent deliverability of an email address (per profile; the rest are fine).
SHARE_EMAIL_USER_UNKNOWN = 0.02
SHARE_EMAIL_INVALID_DOMAIN = 0.004  # typo in the domain: gmial.example
SHARE_EMAIL_ACCOUNT_DISABLED = 0.002
SHARE_EMAIL_COMPLAINER = 0.001  # complained once: the address goes on the denylist
#: Complainers quarantined before the history (at least this many, so every quarantine status shows).
MIN_COMPLAINERS_BEFORE_HISTORY = 3
SHARE_EMAIL_MAILBOX_FULL = 0.012
#: A full mailbox bounces this often; the other messages get through.
MAILBOX_FULL_BOUNCE_PROBABILITY = 0.7
#: Of the hard-bouncing addresses, this share already bounced before the history (quarantined then).
SHARE_QUARANTINED_BEFORE_HISTORY = 0.3

SHARE_PHONE_UNKNOWN_SUBSCRIBER = 0.01
SHARE_PHONE_OFTEN_ABSENT = 0.02  # phone switched off or abroad
ABSENT_BOUNCE_PROBABILITY = 0.5
SHARE_TOKEN_UNREGISTERED = 0.04  # app uninstalled since the token was registered
SHARE_TOKEN_INVALID = 0.003

# --------------------------------------------------------------------------------------------
# Deliveries

#: Marketing messages per profile over the history (plus ~0.3 transactional): ~4 logs per profile.
MARKETING_MESSAGES_PER_PROFILE = 3.6
TRANSACTIONAL_EVENTS_PER_PROFILE = 0.3
LIVE_EVENTS_PER_PROFILE = 0.01
MIN_LIVE_EVENTS = 40
#: Campaigns over the history (the current and the upcoming one come on top): enough for every
#: kind of delivery to appear, few enough for a readable delivery list.
MIN_PAST_CAMPAIGNS = 8
PROFILES_PER_EXTRA_CAMPAIGN = 25_000
#: Chances that a past campaign also has a reminder, an SMS and a push delivery.
REMINDER_PROBABILITY = 0.5
SMS_DELIVERY_PROBABILITY = 0.4
PUSH_DELIVERY_PROBABILITY = 0.45
#: Share of a campaign's target that receives the A/B test (the rest gets the winner).
AB_TEST_SHARE = 0.2
AB_VARIANT_B_APPEAL = 1.3  # variant B's subject line works better: a clear winner on open rate
#: A stopped delivery was stopped after sending this share; a failed one failed after this share.
STOPPED_AFTER_SHARE = 0.4
FAILED_AFTER_SHARE = 0.15
PROOF_EMAIL_ADDRESSES = ("qa.team@brand.example", "marketing.lead@brand.example", "copywriter@brand.example")
PROOF_PHONES = ("+33600000001", "+33600000002")

# --------------------------------------------------------------------------------------------
# Reactions (shares of delivered messages). Each delivery multiplies them by its own appeal.

DELIVERY_APPEAL_RANGE = (0.75, 1.3)
#: Delay between delivery and an open: (share of opens, mean delay). Privacy proxies (Apple Mail
#: Privacy Protection) fetch the pixel within minutes; people open within hours, or days later.
OPEN_DELAYS: tuple[tuple[float, timedelta], ...] = (
    (0.35, timedelta(minutes=10)),
    (0.40, timedelta(hours=2)),
    (0.25, timedelta(hours=30)),
)
REACTION_MAX_DELAY = timedelta(days=30)
CLICK_DELAY_MEAN = timedelta(minutes=3)
EXTRA_OPEN_PROBABILITY = 0.45  # chance of each further open (geometric: ~0.8 repeat opens per opener)
#: Clickers whose mail client blocked the tracking pixel: a click with no open row.
CLICK_WITHOUT_PIXEL_SHARE = 0.1
RETRY_DELAY_MEAN = timedelta(hours=2)  # a deferred message is retried until accepted or validity ends
NEVER_ACCEPTED_SHARE = 0.05  # of deferred messages: still refused when validity ends (cancelled)


@dataclass(frozen=True)
class Bounce:
    """A raw provider error and how the default BounceRules qualify it."""

    text: str
    failure_type: int
    failure_reason: int

    def render(self, address: str) -> str:
        return self.text.format(address=address, domain=address.rpartition("@")[2])


HARD, SOFT = FailureType.HARD.value, FailureType.SOFT.value

EMAIL_USER_UNKNOWN = (
    Bounce(
        "550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table",
        HARD, FailureReason.USER_UNKNOWN,
    ),
    Bounce(
        "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the "
        "recipient's email address for typos or unnecessary spaces.", HARD, FailureReason.USER_UNKNOWN,
    ),
    Bounce(
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient {address} not found by SMTP address lookup",
        HARD, FailureReason.USER_UNKNOWN,
    ),
    Bounce("554 delivery error: dd This user doesn't have a {domain} account ({address}) [0]", HARD, FailureReason.USER_UNKNOWN),
)
EMAIL_INVALID_DOMAIN = (
    Bounce(
        "Host or domain name not found. Name service error for name={domain} type=MX: Host not found",
        HARD, FailureReason.INVALID_DOMAIN,
    ),
    Bounce("554 5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent domain {domain}", HARD, FailureReason.INVALID_DOMAIN),
)
EMAIL_ACCOUNT_DISABLED = (
    Bounce("550 5.2.1 The email account that you tried to reach is disabled.", HARD, FailureReason.ACCOUNT_DISABLED),
    Bounce(
        "554 30 Sorry, your message to {address} cannot be delivered. This mailbox is disabled (554.30).",
        HARD, FailureReason.ACCOUNT_DISABLED,
    ),
)
EMAIL_DENYLISTED = (
    Bounce(
        "550 5.7.1 <{address}>: Recipient address rejected: address is on the suppression list after a spam complaint",
        HARD, FailureReason.ON_DENYLIST,
    ),
)
EMAIL_MAILBOX_FULL = (
    Bounce("452 4.2.2 Mailbox full", SOFT, FailureReason.MAILBOX_FULL),
    Bounce("552 5.2.2 <{address}>: Mailbox full - quota exceeded", SOFT, FailureReason.MAILBOX_FULL),
    Bounce("550 5.2.2 The email account that you tried to reach is over quota.", SOFT, FailureReason.MAILBOX_FULL),
)
EMAIL_REFUSED = (
    Bounce(
        "554 5.7.1 Service unavailable; Client host [203.0.113.25] blocked using zen.spamhaus.org; "
        "https://www.spamhaus.org/query/ip/203.0.113.25", SOFT, FailureReason.REFUSED,
    ),
    Bounce("550 5.7.1 Message rejected as spam by Content Filtering.", SOFT, FailureReason.REFUSED),
)
EMAIL_UNREACHABLE = (
    Bounce("421 4.4.2 mx1.{domain}: Connection timed out", SOFT, FailureReason.UNREACHABLE),
    Bounce("451 4.4.0 DNS resolving error for {domain}", SOFT, FailureReason.UNREACHABLE),
    Bounce("Connection refused by mx.{domain}[198.51.100.7]:25", SOFT, FailureReason.UNREACHABLE),
)
#: No default rule matches it: the workflow qualifies it soft / "not defined" (0).
EMAIL_UNQUALIFIED = (Bounce("554 Transaction failed", SOFT, FailureReason.NONE),)
SMS_UNKNOWN_SUBSCRIBER = (
    Bounce("SR error 1: Unknown subscriber", HARD, FailureReason.USER_UNKNOWN),
    Bounce("SMPP 0x0000000B ESME_RINVDSTADR: Invalid destination address", HARD, FailureReason.USER_UNKNOWN),
)
SMS_ABSENT = (
    Bounce("SR error 27: Absent subscriber", SOFT, FailureReason.NOT_CONNECTED),
    Bounce("SR error 31: Subscriber busy for MT SMS", SOFT, FailureReason.NOT_CONNECTED),
)
PUSH_UNREGISTERED = (
    Bounce("APNs 410 Unregistered: the device token is inactive for the topic", HARD, FailureReason.USER_UNKNOWN),
    Bounce("FCM 404 UNREGISTERED: Requested entity was not found.", HARD, FailureReason.USER_UNKNOWN),
)
PUSH_INVALID_TOKEN = (
    Bounce("APNs 400 BadDeviceToken", HARD, FailureReason.REFUSED),
    Bounce("FCM 400 INVALID_ARGUMENT: The registration token is not a valid FCM registration token", HARD, FailureReason.REFUSED),
)
#: Persistent behaviours of an email address: (share of addresses, bounces, chance of bouncing per message).
EMAIL_FATES: tuple[tuple[float, tuple[Bounce, ...], float], ...] = (
    (SHARE_EMAIL_USER_UNKNOWN, EMAIL_USER_UNKNOWN, 1.0),
    (SHARE_EMAIL_INVALID_DOMAIN, EMAIL_INVALID_DOMAIN, 1.0),
    (SHARE_EMAIL_ACCOUNT_DISABLED, EMAIL_ACCOUNT_DISABLED, 1.0),
    (SHARE_EMAIL_COMPLAINER, EMAIL_DENYLISTED, 1.0),
    (SHARE_EMAIL_MAILBOX_FULL, EMAIL_MAILBOX_FULL, MAILBOX_FULL_BOUNCE_PROBABILITY),
)
#: Every bounce text the demo generates, for the tests that check the default rules against them.
ALL_BOUNCES: tuple[Bounce, ...] = (
    EMAIL_USER_UNKNOWN + EMAIL_INVALID_DOMAIN + EMAIL_ACCOUNT_DISABLED + EMAIL_DENYLISTED + EMAIL_MAILBOX_FULL
    + EMAIL_REFUSED + EMAIL_UNREACHABLE + EMAIL_UNQUALIFIED + SMS_UNKNOWN_SUBSCRIBER + SMS_ABSENT
    + PUSH_UNREGISTERED + PUSH_INVALID_TOKEN
)

#: The default qualification rules: (priority, pattern, failure type, failure reason). Lower
#: priority is tried first; the patterns are case-insensitive and use only syntax that Python's
#: ``re`` and PostgreSQL's regular expressions read alike (no ``\b``). Platform conventions: an
#: address that does not exist, a wrong domain, a disabled account or a complaint are hard errors
#: (quarantined at once); a full mailbox, a phone out of reach, a spam block of the sending IP or an
#: unreachable server are soft (the address is quarantined only if they persist).
DEFAULT_BOUNCE_RULES: tuple[tuple[int, str, int, int], ...] = (
    (10, r"suppression list|denylist|spam complaint", HARD, FailureReason.ON_DENYLIST),
    (
        20,
        (r"user unknown|unknown user|no such user|does not exist|recipientnotfound|doesn't have an? .* account"
         r"|unknown subscriber|invalid destination address"),
        HARD, FailureReason.USER_UNKNOWN,
    ),
    (25, r"unregistered", HARD, FailureReason.USER_UNKNOWN),
    (30, r"baddevicetoken|not a valid .*registration token", HARD, FailureReason.REFUSED),
    (40, r"host or domain name not found|nonexistentdomain|domain not found", HARD, FailureReason.INVALID_DOMAIN),
    (
        50, r"account that you tried to reach is disabled|mailbox is disabled|account (is )?disabled",
        HARD, FailureReason.ACCOUNT_DISABLED,
    ),
    (60, r"mailbox full|over quota|quota exceeded|insufficient storage", SOFT, FailureReason.MAILBOX_FULL),
    (70, r"absent subscriber|subscriber busy|not connected", SOFT, FailureReason.NOT_CONNECTED),
    (80, r"spamhaus|blocked using|rejected as spam|blocklisted", SOFT, FailureReason.REFUSED),
    (90, r"timed out|connection refused|resolving error|unreachable", SOFT, FailureReason.UNREACHABLE),
)
#: (MX mask, max connections, max messages per hour): big providers take more, the rest a default.
DEFAULT_MX_RULES = (
    ("*.gmail.example", 20, 80_000), ("*.outlook.example", 10, 40_000), ("*.orange.example", 5, 20_000), ("*", 10, 30_000),
)
DEFAULT_DOMAIN_RULES = (("gmail.example", {"dkim": True, "list_unsubscribe": True}), ("orange.example", {"dkim": True}))


@dataclass(frozen=True)
class ChannelBehaviour:
    """How a channel's provider answers and how its recipients react."""

    messages_per_hour: int
    feedback_delay_mean_s: float  # between sending and the provider's answer
    validity: timedelta  # pending messages are cancelled after it
    deferral_share: float  # first attempt refused temporarily, retried later
    deferral_texts: tuple[str, ...]
    transient_bounces: tuple[tuple[tuple[Bounce, ...], float], ...]  # per message, whatever the address
    engaged_share: float  # recipients who react at all (open, click...) among delivered
    records_opens: bool
    click_given_engaged: float
    opt_out_given_engaged: float
    mirror_given_engaged: float


CHANNELS: dict[str, ChannelBehaviour] = {
    Channel.EMAIL: ChannelBehaviour(
        messages_per_hour=120_000, feedback_delay_mean_s=25.0, validity=timedelta(days=3),
        deferral_share=0.03,
        deferral_texts=(
            "421 4.7.0 Try again later, closing connection.",
            ("450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional "
             "messages from being delivered."),
            "451 4.7.1 Greylisting in action, please come back later",
        ),
        transient_bounces=((EMAIL_REFUSED, 0.006), (EMAIL_UNREACHABLE, 0.006), (EMAIL_UNQUALIFIED, 0.001)),
        # Unique open rate ~15-30% of delivered; click ~3% (0.22 x 0.15); opt-out ~0.2%.
        engaged_share=0.22, records_opens=True,
        click_given_engaged=0.15, opt_out_given_engaged=0.01, mirror_given_engaged=0.004,
    ),
    Channel.SMS: ChannelBehaviour(
        messages_per_hour=30_000, feedback_delay_mean_s=8.0, validity=timedelta(days=1),
        deferral_share=0.02, deferral_texts=("SMPP 0x00000058 ESME_RTHROTTLED: Throttling error, retrying",),
        transient_bounces=((SMS_ABSENT, 0.01),),
        # Short-link clicks ~4% of delivered; STOP replies ~0.4%.
        engaged_share=0.045, records_opens=False,
        click_given_engaged=0.9, opt_out_given_engaged=0.1, mirror_given_engaged=0.0,
    ),
    Channel.PUSH: ChannelBehaviour(
        messages_per_hour=300_000, feedback_delay_mean_s=1.0, validity=timedelta(days=1),
        deferral_share=0.01, deferral_texts=("FCM 503 UNAVAILABLE: The server is overloaded, retry later",),
        transient_bounces=(),
        # App opened from the notification by ~7% of recipients.
        engaged_share=0.07, records_opens=True,
        click_given_engaged=0.0, opt_out_given_engaged=0.0, mirror_given_engaged=0.0,
    ),
}

# --------------------------------------------------------------------------------------------
# Names and texts

FIRST_NAMES = (
    "Emma", "Louise", "Jade", "Alice", "Chloe", "Lina", "Mia", "Lea", "Manon", "Julia", "Camille", "Sarah",
    "Ines", "Zoe", "Anna", "Clara", "Eva", "Lucie", "Olivia", "Sofia", "Charlotte", "Amelia", "Grace", "Hannah",
    "Gabriel", "Leo", "Raphael", "Arthur", "Louis", "Lucas", "Adam", "Jules", "Hugo", "Mael", "Liam", "Noah",
    "Nathan", "Ethan", "Paul", "Tom", "Sacha", "Theo", "Oscar", "Victor", "Samuel", "Thomas", "Oliver", "Jack",
    "Harry", "George", "Daniel", "Martin", "David", "Marie", "Nicolas", "Julien", "Pierre", "Sophie", "Laura", "Anne",
)
LAST_NAMES = (
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau", "Simon",
    "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux", "Vincent", "Fournier", "Morel",
    "Girard", "Andre", "Mercier", "Dupont", "Lambert", "Bonnet", "Francois", "Martinez", "Legrand", "Smith",
    "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel", "Wright", "Walker", "Evans",
    "Muller", "Schmidt", "Schneider", "Fischer", "Weber", "Rossi", "Russo", "Ferrari", "Esposito", "Bianchi",
    "Lopez", "Gonzalez", "Fernandez", "Silva", "Santos", "Costa", "Nguyen", "Kowalski",
)
#: Mailbox providers, with their share of addresses. The reserved ``.example`` top-level domain
#: (RFC 2606) keeps realistic-looking addresses that can never receive mail.
EMAIL_DOMAINS = (
    ("gmail.example", 30), ("outlook.example", 12), ("hotmail.example", 8), ("yahoo.example", 9),
    ("icloud.example", 8), ("orange.example", 9), ("free.example", 6), ("laposte.example", 4),
    ("gmx.example", 3), ("corp-mail.example", 11),
)
TYPO_DOMAINS = ("gmial.example", "hotmial.example", "yaho.example", "outlok.example", "gmail.exmaple")
APPLICATIONS = ("com.brand.shop.ios", "com.brand.shop.android")
USER_AGENTS = (
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148", 30),
    ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)", 25),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0 Safari/537.36", 15),
    ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17531; Pro)", 10),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0 Mobile Safari/537.36", 12),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)", 8),
)
#: Campaign themes by launch month (1 = January), so that labels match their dates.
CAMPAIGN_THEMES = {
    1: ("Winter clearance", "New year offers"), 2: ("Valentine's Day", "Loyalty rewards"),
    3: ("Spring collection", "Product launch"), 4: ("Easter weekend", "Garden days"),
    5: ("Mother's Day", "Customer survey"), 6: ("Summer sale", "Father's Day"),
    7: ("Travel season", "Summer sale"), 8: ("Back to school", "Late summer deals"),
    9: ("Autumn essentials", "Store opening"), 10: ("Halloween", "Anniversary sale"),
    11: ("Black Friday", "Cyber Monday"), 12: ("Christmas gifts", "Last-minute gifts"),
}
EVENT_LOCALES = ("fr_FR", "en_GB", "de_DE")
SITE = "https://www.brand.example"
TRACKING_SITE = "https://t.brand.example"
OPT_OUT_URL = f"{SITE}/preferences/unsubscribe"


@dataclass(frozen=True)
class EventTypeSpec:
    """A transactional event type: its channel, its template (if any) and its share of traffic."""

    event_type: str
    channel: str
    label: str
    template: str  # "published", "draft" (never published) or "none"
    weight: float
    engaged_share: float  # transactional messages are opened far more than marketing ones


EVENT_TYPES = (
    EventTypeSpec("order_confirmation", Channel.EMAIL, "Order confirmation", "published", 0.34, 0.55),
    EventTypeSpec("password_reset", Channel.EMAIL, "Password reset", "published", 0.16, 0.7),
    EventTypeSpec("account_created", Channel.EMAIL, "Welcome", "published", 0.10, 0.5),
    EventTypeSpec("shipping_update", Channel.SMS, "Shipping update", "published", 0.20, 0.1),
    # Events with no published template: updateEventsStatus marks them not_taken_into_account.
    EventTypeSpec("cart_abandoned", Channel.EMAIL, "Cart reminder", "draft", 0.12, 0.0),
    EventTypeSpec("back_in_stock", Channel.PUSH, "Back in stock", "none", 0.08, 0.0),
)


# --------------------------------------------------------------------------------------------
# Public entry points


@dataclass
class SeedResult:
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
    Report, CustomerMetrics, ForecastLog, DeliveryAggregate, TrackingLog, TrackingHit, SendingFeedback,
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
    Delivery, DeliveryLog, TrackingLog, SendingFeedback, TrackingHit, Event, EventHistory, Quarantine, SharedAudience,
    AudienceMember, Report, ReportShare,
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
        ids = _IdAllocator.from_database(SEEDED_MODELS)
        deleted = delete_domain_data() if replace else {}
        generator = _DemoGenerator(profile_count=profiles, rng=random.Random(seed), anchor=anchor, ids=ids)
        generator.run()
        _reset_sequences(SEEDED_MODELS)
    counts = {name: generator.writer.counts[name] for name in sorted(generator.writer.counts)}
    statuses = {LogStatus(code).label: count for code, count in sorted(generator.log_statuses.items())}
    return SeedResult(counts=counts, log_statuses=statuses, seconds=time.monotonic() - started, deleted=deleted)


# --------------------------------------------------------------------------------------------
# Writing


#: The big tables (~90 % of the rows), written from plain tuples in this column order (attnames).
ROW_TABLES: dict[type[models.Model], tuple[str, ...]] = {
    Profile: (
        "id", "email", "phone", "first_name", "last_name", "visitor_id", "declared_id", "blocklisted_email",
        "blocklisted_sms", "blocklisted_push", "created_at", "updated_at",
    ),
    AppSubscription: ("profile_id", "application", "device_token", "disabled", "disabled_reason", "created_at", "updated_at"),
    AudienceMember: ("audience_id", "profile_id", "id_type", "imported_at"),
    DeliveryLog: (
        "id", "delivery_id", "profile_id", "address", "variant", "event_id", "status", "failure_type",
        "failure_reason", "error_text", "created_at", "updated_at",
    ),
    TrackingLog: ("delivery_log_id", "delivery_id", "url_type", "url", "tracked_at"),
    EventHistory: (
        "id", "event_type", "channel", "payload", "email", "phone", "status", "template_id", "delivery_log_id",
        "created_at", "processed_at", "archived_at",
    ),
}


class _RowTable:
    """One big table written from tuples: COPY on PostgreSQL (psycopg2), one prepared INSERT run by
    ``executemany`` on SQLite, bulk_create elsewhere.

    Why not bulk_create: it spends ~25 us a row building a model instance and compiling each value,
    which alone would take most of the one-minute budget at 100,000 profiles; and a multi-row
    INSERT costs PostgreSQL twice the server time of COPY. Values are given in the order of
    ``ROW_TABLES`` and adapted once per column type, as Django's own adapters would.
    """

    def __init__(self, model: type[models.Model], attnames: Sequence[str]) -> None:
        meta = model._meta
        self.model = model
        self.attnames = tuple(attnames)
        self.fields = [next(f for f in meta.concrete_fields if f.attname == name) for name in self.attnames]
        # Columns the demo does not set (none today) get their model default, so a new column
        # with a default does not break the seeding.
        self.extra_fields = [f for f in meta.concrete_fields if f.attname not in self.attnames and not f.primary_key]
        self.extra_values = tuple(f.get_default() for f in self.extra_fields)
        self.rows: list[tuple[Any, ...]] = []
        self.assigns_ids = False  # set by the writer when the caller's rows have no id

    def write(self) -> int:
        rows, self.rows = self.rows, []
        if not rows:
            return 0
        if self.extra_values:
            rows = [row + self.extra_values for row in rows]
        fields = self.fields + self.extra_fields
        if connection.vendor == "postgresql" and connection.Database.__name__ == "psycopg2":
            self._copy(fields, rows)
        elif connection.vendor == "sqlite":
            self._execute_many(fields, rows)
        else:
            names = [f.attname for f in fields]
            instances = [self.model(**dict(zip(names, row, strict=True))) for row in rows]
            self.model.objects.bulk_create(instances, batch_size=BULK_BATCH_SIZE)
        return len(rows)

    def _copy(self, fields: list[models.Field], rows: list[tuple[Any, ...]]) -> None:
        adapters = [_copy_adapter(f) for f in fields]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows(
            tuple(
                COPY_NULL if value is None else adapt(value) if adapt else value
                for adapt, value in zip(adapters, row, strict=True)
            )
            for row in rows
        )
        buffer.seek(0)
        quote = connection.ops.quote_name
        columns = ", ".join(quote(f.column) for f in fields)
        sql = f"COPY {quote(self.model._meta.db_table)} ({columns}) FROM STDIN WITH (FORMAT csv, NULL '{COPY_NULL}')"
        with connection.cursor() as cursor:
            cursor.cursor.copy_expert(sql, buffer)  # the psycopg2 cursor under Django's wrapper

    def _execute_many(self, fields: list[models.Field], rows: list[tuple[Any, ...]]) -> None:
        adapters = [_sqlite_adapter(f) for f in fields]
        if any(adapters):
            rows = [
                tuple(
                    adapt(value) if adapt and value is not None else value
                    for adapt, value in zip(adapters, row, strict=True)
                )
                for row in rows
            ]
        quote = connection.ops.quote_name
        columns = ", ".join(quote(f.column) for f in fields)
        placeholders = ", ".join(["%s"] * len(fields))
        with connection.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {quote(self.model._meta.db_table)} ({columns}) VALUES ({placeholders})", rows)


#: How COPY spells NULL here; an unquoted empty field is then an empty string, as Django writes it.
COPY_NULL = "\\N"


def _copy_adapter(field: models.Field) -> Any:
    """COPY's text form of a value, or None when ``str()`` (the csv module's default) is right."""
    if isinstance(field, models.DateTimeField):
        return datetime.isoformat  # aware, so the offset is kept
    if isinstance(field, models.JSONField):
        return json.dumps
    if isinstance(field, models.BooleanField):
        return lambda value: "t" if value else "f"
    return None


def _sqlite_adapter(field: models.Field) -> Any:
    if isinstance(field, models.DateTimeField):
        return connection.ops.adapt_datetimefield_value  # naive UTC text, as Django stores it
    if isinstance(field, models.JSONField):
        return json.dumps
    return None


class _BulkWriter:
    """Buffers rows per model and writes them FLUSH_ROWS at a time: model instances with
    bulk_create, the big tables of ROW_TABLES from tuples."""

    def __init__(self, ids: _IdAllocator) -> None:
        self._ids = ids
        self._buffers: dict[type[models.Model], list[models.Model]] = {}
        self._row_tables: dict[type[models.Model], _RowTable] = {}
        self.counts: Counter[str] = Counter()
        self.models_written: list[type[models.Model]] = []

    def add(self, obj: models.Model) -> None:
        model = type(obj)
        if obj.pk is None:
            obj.pk = self._ids.take(model)
        buffer = self._buffers.get(model)
        if buffer is None:
            buffer = self._buffers[model] = []
            self._written(model)
        buffer.append(obj)
        if len(buffer) >= FLUSH_ROWS:
            self.flush(model)

    def add_all(self, objs: Iterable[models.Model]) -> None:
        for obj in objs:
            self.add(obj)

    def add_row(self, model: type[models.Model], row: tuple[Any, ...]) -> None:
        """A row of a ROW_TABLES model, its values in that table's column order (the id first
        when the table's columns list it; otherwise the writer assigns it)."""
        table = self._row_tables.get(model)
        if table is None:
            columns = ROW_TABLES[model]
            table = self._row_tables[model] = _RowTable(model, columns if "id" in columns else ("id", *columns))
            table.assigns_ids = "id" not in columns
            self._written(model)
        table.rows.append((self._ids.take(model), *row) if table.assigns_ids else row)
        if len(table.rows) >= FLUSH_ROWS:
            self.flush(model)

    def flush(self, model: type[models.Model]) -> None:
        table = self._row_tables.get(model)
        if table is not None:
            self.counts[model.__name__] += table.write()
        buffer = self._buffers.get(model)
        if buffer:
            model.objects.bulk_create(buffer, batch_size=BULK_BATCH_SIZE)
            self.counts[model.__name__] += len(buffer)
            buffer.clear()

    def flush_all(self) -> None:
        for model in self.models_written:
            self.flush(model)

    def _written(self, model: type[models.Model]) -> None:
        if model not in self.models_written:
            self.models_written.append(model)


class _IdAllocator:
    """Hands out ids after the highest existing ones, for every table the demo writes: rows can
    reference rows not yet written, and the ids do not depend on the state of the sequences."""

    #: Archiving keeps an event's id: live and archived events share one id space.
    SHARED_ID_SPACE: dict[type[models.Model], type[models.Model]] = {EventHistory: Event}

    def __init__(self, next_ids: dict[type[models.Model], int]) -> None:
        self._next = next_ids

    @classmethod
    def from_database(cls, model_list: Iterable[type[models.Model]]) -> _IdAllocator:
        next_ids: dict[type[models.Model], int] = {}
        for model in model_list:
            key = cls.SHARED_ID_SPACE.get(model, model)
            top = model.objects.aggregate(top=Max("pk"))["top"] or 0
            next_ids[key] = max(next_ids.get(key, 1), top + 1)
        return cls(next_ids)

    def take(self, model: type[models.Model]) -> int:
        key = self.SHARED_ID_SPACE.get(model, model)
        value = self._next[key]
        self._next[key] = value + 1
        return value

    def peek(self, model: type[models.Model]) -> int:
        return self._next[self.SHARED_ID_SPACE.get(model, model)]


def _reset_sequences(model_list: Sequence[type[models.Model]]) -> None:
    """Explicit ids do not advance PostgreSQL sequences (SQLite's AUTOINCREMENT follows by itself)."""
    statements = connection.ops.sequence_reset_sql(no_style(), list(model_list))
    if statements:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)


def _update_in_chunks(queryset: models.QuerySet, ids: Sequence[int], **values: Any) -> None:
    for start in range(0, len(ids), UPDATE_CHUNK):
        queryset.filter(id__in=ids[start : start + UPDATE_CHUNK]).update(**values)


# --------------------------------------------------------------------------------------------
# The simulation


@dataclass
class _DeliveryPlan:
    """A delivery to write, and how its messages are simulated."""

    label: str
    channel: str
    kind: str
    state: str
    created_at: datetime
    campaign_id: int | None = None
    id: int = 0
    priority: int = 0
    template_id: int | None = None
    ab_test_id: int | None = None
    scheduled_at: datetime | None = None
    validity_end: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    audience_weight: float = 0.0  # share of the channel's reachable profiles, before scaling
    send_window: timedelta = timedelta(0)  # when 0: audience / the channel's throughput
    halt_after_share: float | None = None  # stopped / failed after sending this share
    appeal: float = 1.0
    proof_addresses: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    last_final_at: datetime | None = None

    @property
    def sends_messages(self) -> bool:
        return self.started_at is not None

    def to_model(self) -> Delivery:
        return Delivery(
            id=self.id, label=self.label, campaign_id=self.campaign_id, channel=self.channel, kind=self.kind,
            state=self.state, priority=self.priority, template_id=self.template_id, ab_test_id=self.ab_test_id,
            scheduled_at=self.scheduled_at, validity_end=self.validity_end, started_at=self.started_at,
            finished_at=self.finished_at, created_at=self.created_at, updated_at=self.created_at,
        )


@dataclass
class _QuarantineState:
    """The quarantine of one address, kept the way updateDeliveryExecInfo keeps it."""

    address: str
    channel: str
    status: str = Quarantine.Status.ERRONEOUS
    error_count: int = 0
    first_error_at: datetime | None = None
    last_error_at: datetime | None = None
    quarantined_at: datetime | None = None
    failure_type: int = FailureType.NONE
    failure_reason: int = FailureReason.NONE
    error_text: str = ""

    #: The rules of updateDeliveryExecInfo, at its defaults: an address is quarantined at the 5th
    #: significant soft error, errors count only when at least 1 day apart, and the count resets
    #: when the last significant error is older than 10 days.
    SOFT_ERRORS_TO_QUARANTINE = 5
    SIGNIFICANT_ERROR_GAP = timedelta(days=1)
    ERROR_COUNT_RESET_AFTER = timedelta(days=10)

    def record(self, at: datetime, failure_type: int, failure_reason: int, text: str) -> None:
        if self.quarantined_at is not None:
            return
        if self.first_error_at is None:
            self.first_error_at = at
        self.failure_type, self.failure_reason, self.error_text = failure_type, failure_reason, text
        if failure_type == HARD:
            self.error_count += 1
            self.last_error_at = at
            self.quarantined_at = at
            denylisted = failure_reason == FailureReason.ON_DENYLIST
            self.status = Quarantine.Status.DENYLISTED if denylisted else Quarantine.Status.QUARANTINED
            return
        if self.last_error_at is not None and at - self.last_error_at > self.ERROR_COUNT_RESET_AFTER:
            self.error_count = 0
        if self.last_error_at is None or at - self.last_error_at >= self.SIGNIFICANT_ERROR_GAP:
            self.error_count += 1
            self.last_error_at = at
        if self.error_count >= self.SOFT_ERRORS_TO_QUARANTINE:
            self.quarantined_at = at
            self.status = Quarantine.Status.QUARANTINED

    def is_quarantined(self, at: datetime) -> bool:
        return self.quarantined_at is not None and self.quarantined_at <= at

    def to_model(self) -> Quarantine:
        return Quarantine(
            address=self.address, channel=self.channel, status=self.status, error_count=self.error_count,
            first_error_at=self.first_error_at, last_error_at=self.last_error_at, failure_type=self.failure_type,
            failure_reason=self.failure_reason, error_text=self.error_text, created_at=self.first_error_at,
            updated_at=self.last_error_at,
        )


@dataclass
class _Recipients:
    """Per-profile data the simulation needs, in parallel lists indexed by profile position."""

    ids: list[int] = field(default_factory=list)
    created_at: list[datetime] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    push_tokens: list[str] = field(default_factory=list)
    # A bounce the address gets on each message with the given probability, or None.
    email_fate: list[tuple[Bounce, float] | None] = field(default_factory=list)
    phone_fate: list[tuple[Bounce, float] | None] = field(default_factory=list)
    token_fate: list[tuple[Bounce, float] | None] = field(default_factory=list)
    # Reachable at the start of the history (has the address, not blocklisted), per channel.
    reachable: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in CHANNELS})
    with_visitor_id: list[int] = field(default_factory=list)

    def address(self, channel: str, index: int) -> str:
        if channel == Channel.EMAIL:
            return self.emails[index]
        if channel == Channel.SMS:
            return self.phones[index]
        return self.push_tokens[index]

    def fate(self, channel: str, index: int) -> tuple[Bounce, float] | None:
        if channel == Channel.EMAIL:
            return self.email_fate[index]
        if channel == Channel.SMS:
            return self.phone_fate[index]
        return self.token_fate[index]


class _DemoGenerator:
    """Draws the whole data set from one random generator, in a fixed order."""

    def __init__(self, *, profile_count: int, rng: random.Random, anchor: datetime, ids: _IdAllocator) -> None:
        self.profile_count = profile_count
        self.rng = rng
        self.anchor = anchor
        self.cutoff = anchor - UNCONSOLIDATED_WINDOW
        self.history_start = anchor - timedelta(days=HISTORY_DAYS)
        self.ids = ids
        self.writer = _BulkWriter(ids)
        self.recipients = _Recipients()
        self.quarantine: dict[tuple[str, str], _QuarantineState] = {}
        # Profile position -> time of the consolidated opt-out, per channel.
        self.opted_out: dict[str, dict[int, datetime]] = {Channel.EMAIL: {}, Channel.SMS: {}}
        self.raw_feedback: list[tuple[datetime, int, str, str]] = []
        self.raw_hits: list[tuple[datetime, int, int, str, str]] = []
        self.log_statuses: Counter[int] = Counter()
        self.user: AbstractBaseUser | None = None
        self.templates: dict[str, MessageTemplate] = {}
        self.email_domains = [name for name, _ in EMAIL_DOMAINS]
        self.email_domain_cum_weights = list(accumulate(weight for _, weight in EMAIL_DOMAINS))
        self.user_agents = [agent for agent, _ in USER_AGENTS]
        self.user_agent_cum_weights = list(accumulate(weight for _, weight in USER_AGENTS))
        # Transactional traffic: the last TRANSACTIONAL_DAYS, up to the archiving lag.
        self.transactional_end = anchor - TRANSACTIONAL_ARCHIVE_LAG
        self.transactional_start = self.transactional_end - timedelta(days=TRANSACTIONAL_DAYS)

    def run(self) -> None:
        self.user = _demo_user()
        self._write_rules_and_accounts()
        self._write_profiles()
        self._write_subscriptions()
        self._seed_prior_quarantine()
        campaigns = self._write_campaigns()
        self._write_templates()
        plans = self._plan_deliveries(campaigns)
        self._write_deliveries(plans)
        self.writer.flush_all()  # reference rows first: logs and tracking rows point to them
        marketing = [p for p in plans if p.sends_messages and p.kind != Delivery.Kind.TRANSACTIONAL]
        for plan in sorted(marketing, key=lambda p: (p.started_at, p.id)):  # quarantine and opt-outs build up in time order
            self._send_delivery(plan)
        self._send_transactional_traffic([p for p in plans if p.kind == Delivery.Kind.TRANSACTIONAL])
        self._write_live_events()
        self._write_raw_rows()
        self._write_quarantine()
        self._write_audience()
        self._write_report()
        self.writer.flush_all()
        self._finish_deliveries(plans)
        self._finish_profiles()

    # -- reference data ----------------------------------------------------------------------

    def _write_rules_and_accounts(self) -> None:
        """Default deliverability rules and the external accounts, unless they are set up already
        (they are configuration more than data: an operator may have loaded them before)."""
        written: list[type[models.Model]] = []
        if not BounceRule.objects.exists():
            for priority, pattern, failure_type, failure_reason in DEFAULT_BOUNCE_RULES:
                self.writer.add(BounceRule(
                    pattern=pattern, failure_type=failure_type, failure_reason=failure_reason, priority=priority,
                ))
            written.append(BounceRule)
        if not MxRule.objects.exists():
            for mask, connections, per_hour in DEFAULT_MX_RULES:
                self.writer.add(MxRule(mx_mask=mask, max_connections=connections, max_messages_per_hour=per_hour))
            written.append(MxRule)
        if not DomainRule.objects.exists():
            for domain, options in DEFAULT_DOMAIN_RULES:
                self.writer.add(DomainRule(domain=domain, options=options))
            written.append(DomainRule)
        existing = set(ExternalAccount.objects.values_list("name", flat=True))
        for kind in ExternalAccount.Kind:
            if kind.value not in existing:
                # Disabled until an operator sets the URL and the token variable for real.
                self.writer.add(ExternalAccount(
                    name=kind.value, kind=kind, base_url=f"https://{kind.value}.example.invalid",
                    token_env=f"CAMPAIGN_TOKEN_{kind.value.upper()}", timeout_s=10.0, enabled=False,
                ))
        self.writer.flush_all()
        # bulk_create stamps auto_now fields with the wall clock: pin them to the data's time line.
        for model in written:
            model.objects.update(updated_at=self.anchor - timedelta(days=30))

    # -- profiles ----------------------------------------------------------------------------

    def _write_profiles(self) -> None:
        rng, recipients = self.rng, self.recipients
        ages = sorted((self._profile_age() for _ in range(self.profile_count)), reverse=True)
        first_id = self.ids.peek(Profile)
        for index, age in enumerate(ages):
            profile_id = self.ids.take(Profile)
            created_at = self.anchor - age
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            email, email_fate = ("", None) if rng.random() < SHARE_WITHOUT_EMAIL else self._email_address(first, last)
            phone = self._phone_number() if rng.random() < SHARE_WITH_PHONE else ""
            blocklisted_email = bool(email) and rng.random() < SHARE_BLOCKLISTED_EMAIL
            blocklisted_sms = bool(phone) and rng.random() < SHARE_BLOCKLISTED_SMS
            visitor_id = str(uuid.UUID(int=rng.getrandbits(128), version=4)) if rng.random() < SHARE_WITH_VISITOR_ID else None
            declared_id = f"CRM-{profile_id - first_id + 1:08d}" if rng.random() < SHARE_WITH_DECLARED_ID else None
            self.writer.add_row(Profile, (
                profile_id, email, phone, first, last, visitor_id, declared_id, blocklisted_email, blocklisted_sms,
                False, created_at, created_at,
            ))
            recipients.ids.append(profile_id)
            recipients.created_at.append(created_at)
            recipients.emails.append(email)
            recipients.email_fate.append(email_fate)
            recipients.phones.append(phone)
            recipients.push_tokens.append("")
            recipients.token_fate.append(None)
            recipients.phone_fate.append(self._phone_fate() if phone else None)
            if visitor_id is not None:
                recipients.with_visitor_id.append(index)
            if email and not blocklisted_email:
                recipients.reachable[Channel.EMAIL].append(index)
            if phone and not blocklisted_sms:
                recipients.reachable[Channel.SMS].append(index)

    def _profile_age(self) -> timedelta:
        rng = self.rng
        if rng.random() < SHARE_PROFILES_CREATED_BEFORE_HISTORY:
            days = rng.uniform(HISTORY_DAYS, PROFILE_OLDEST_DAYS)
        else:
            days = rng.uniform(1, HISTORY_DAYS)
        return timedelta(seconds=round(days * 86_400))

    def _email_address(self, first: str, last: str) -> tuple[str, tuple[Bounce, float] | None]:
        """An address, and (drawn at the same time) how it behaves for the whole history."""
        rng = self.rng
        draw = rng.random()
        fate: tuple[Bounce, float] | None = None
        domain = rng.choices(self.email_domains, cum_weights=self.email_domain_cum_weights)[0]
        for share, bounces, probability in EMAIL_FATES:
            if draw < share:
                fate = (rng.choice(bounces), probability)
                if bounces is EMAIL_INVALID_DOMAIN:
                    domain = rng.choice(TYPO_DOMAINS)
                break
            draw -= share
        separator = rng.choice((".", "_", "", "."))
        suffix = str(rng.randint(1, 999)) if rng.random() < SHARE_EMAIL_WITH_NUMBER else ""
        return f"{first}{separator}{last}{suffix}@{domain}".lower(), fate

    def _phone_number(self) -> str:
        return f"+33{self.rng.choice('67')}{self.rng.randrange(10**8):08d}"

    def _phone_fate(self) -> tuple[Bounce, float] | None:
        draw = self.rng.random()
        if draw < SHARE_PHONE_UNKNOWN_SUBSCRIBER:
            return (self.rng.choice(SMS_UNKNOWN_SUBSCRIBER), 1.0)
        if draw < SHARE_PHONE_UNKNOWN_SUBSCRIBER + SHARE_PHONE_OFTEN_ABSENT:
            return (self.rng.choice(SMS_ABSENT), ABSENT_BOUNCE_PROBABILITY)
        return None

    def _write_subscriptions(self) -> None:
        """Push subscriptions; a push delivery goes to each profile's first live device token."""
        rng, recipients = self.rng, self.recipients
        for index, profile_id in enumerate(recipients.ids):
            if rng.random() >= SHARE_WITH_APP:
                continue
            devices = 2 if rng.random() < SHARE_SECOND_DEVICE else 1
            for _ in range(devices):
                application = rng.choice(APPLICATIONS)
                token = self._device_token(application)
                created_at = recipients.created_at[index] + timedelta(seconds=rng.randrange(86_400 * 30))
                created_at = min(created_at, self.anchor - timedelta(days=2))
                if rng.random() < SHARE_SUBSCRIPTION_DISABLED_LONG_AGO and created_at < self.history_start:
                    # Reported unregistered before the history: older than the 180-day retention.
                    lifetime = (self.history_start - created_at).total_seconds()
                    disabled_at = created_at + timedelta(seconds=round(lifetime * rng.random()))
                    self.writer.add_row(AppSubscription, (
                        profile_id, application, token, True, int(FailureReason.USER_UNKNOWN), created_at, disabled_at,
                    ))
                    continue
                self.writer.add_row(AppSubscription, (profile_id, application, token, False, None, created_at, created_at))
                if not recipients.push_tokens[index]:
                    recipients.push_tokens[index] = token
                    recipients.token_fate[index] = self._token_fate()
                    recipients.reachable[Channel.PUSH].append(index)

    def _device_token(self, application: str) -> str:
        if application.endswith(".ios"):
            return f"{self.rng.getrandbits(256):064x}"  # APNs: 32 bytes in hex
        return f"{self.rng.getrandbits(88):022x}:APA91b{self.rng.getrandbits(512):0128x}"  # FCM registration token

    def _token_fate(self) -> tuple[Bounce, float] | None:
        draw = self.rng.random()
        if draw < SHARE_TOKEN_UNREGISTERED:
            return (self.rng.choice(PUSH_UNREGISTERED), 1.0)
        if draw < SHARE_TOKEN_UNREGISTERED + SHARE_TOKEN_INVALID:
            return (self.rng.choice(PUSH_INVALID_TOKEN), 1.0)
        return None

    def _seed_prior_quarantine(self) -> None:
        """Addresses quarantined before the history: some hard-bouncing ones, and a few
        complainers whose addresses the feedback loop put on the denylist."""
        rng, recipients = self.rng, self.recipients
        reachable = recipients.reachable[Channel.EMAIL]
        complainer_count = max(MIN_COMPLAINERS_BEFORE_HISTORY, round(SHARE_EMAIL_COMPLAINER * len(reachable)))
        complainers = rng.sample(reachable, min(len(reachable), complainer_count))
        for index in complainers:
            recipients.email_fate[index] = (EMAIL_DENYLISTED[0], 1.0)
        complained_before = dict.fromkeys(complainers)
        for index in reachable:
            fate = recipients.email_fate[index]
            if fate is None or fate[0].failure_type != HARD:
                continue
            if index not in complained_before and rng.random() >= SHARE_QUARANTINED_BEFORE_HISTORY:
                continue
            at = self.history_start - timedelta(seconds=round(rng.uniform(1, 300) * 86_400))
            address, bounce = recipients.emails[index], fate[0]
            state = self._quarantine_state(Channel.EMAIL, address)
            state.record(at, bounce.failure_type, bounce.failure_reason, bounce.render(address))

    # -- campaigns, templates, deliveries ----------------------------------------------------

    def _write_campaigns(self) -> list[tuple[Campaign, datetime]]:
        """Past campaigns spread over the history, the current one and the upcoming one, with their launch times."""
        past = MIN_PAST_CAMPAIGNS + self.profile_count // PROFILES_PER_EXTRA_CAMPAIGN
        span = HISTORY_DAYS - 10  # the last past campaign ends well before its deliveries' validity
        launches = [self.history_start + timedelta(days=span * (i + self.rng.uniform(0.1, 0.9)) / past) for i in range(past)]
        launches.append(self.anchor - timedelta(hours=4))  # the current campaign: deliveries in progress
        launches.append(self.anchor + timedelta(days=2))  # the upcoming one: scheduled, provisional, draft
        campaigns = []
        labels: Counter[str] = Counter()
        for launch in launches:
            launch = launch.replace(minute=0, second=0, microsecond=0)
            label = f"{self.rng.choice(CAMPAIGN_THEMES[launch.month])} {launch:%Y}"
            labels[label] += 1
            if labels[label] > 1:
                label = f"{label} ({labels[label]})"
            campaign = Campaign(
                id=self.ids.take(Campaign), label=label, owner=self.user,
                created_at=launch - timedelta(seconds=round(self.rng.uniform(7, 21) * 86_400)),
            )
            campaigns.append((campaign, launch))
            self.writer.add(campaign)
        return campaigns

    def _write_templates(self) -> None:
        published_at = self.anchor - timedelta(days=HISTORY_DAYS)
        for spec in EVENT_TYPES:
            if spec.template == "none":
                continue
            published = spec.template == "published"
            template = MessageTemplate(
                id=self.ids.take(MessageTemplate), label=spec.label, event_type=spec.event_type, channel=spec.channel,
                published=published, published_at=published_at if published else None,
                created_at=published_at - timedelta(days=3),
            )
            self.templates[spec.event_type] = template
            self.writer.add(template)
        # A newer draft of a published template: routing must keep using the published one.
        self.writer.add(MessageTemplate(
            id=self.ids.take(MessageTemplate), label="Order confirmation (redesign, draft)", event_type="order_confirmation",
            channel=Channel.EMAIL, published=False, created_at=self.anchor - timedelta(days=4),
        ))

    def _plan_deliveries(self, campaigns: list[tuple[Campaign, datetime]]) -> list[_DeliveryPlan]:
        *past, (current, _), (upcoming, _) = campaigns
        plans: list[_DeliveryPlan] = []
        for position, (campaign, launch) in enumerate(past):
            plans.extend(self._plan_past_campaign(campaign, launch, position, len(past)))
        plans.extend(self._plan_current_campaign(current))
        plans.extend(self._plan_upcoming_campaign(upcoming))
        self._scale_audiences(plans)
        plans.extend(self._plan_transactional())
        plans.sort(key=lambda plan: plan.created_at)
        for plan in plans:
            plan.id = self.ids.take(Delivery)
        return plans

    def _marketing(self, campaign: Campaign, suffix: str, channel: str, *, start: datetime | None, weight: float,
                   state: str = Delivery.State.FINISHED, priority: int = 5) -> _DeliveryPlan:
        rng = self.rng
        plan = _DeliveryPlan(
            label=f"{campaign.label} - {suffix}", channel=channel, kind=Delivery.Kind.MARKETING, state=state,
            campaign_id=campaign.id, priority=priority,
            created_at=campaign.created_at + timedelta(minutes=rng.randint(60, 72 * 60)),
            audience_weight=weight, appeal=rng.uniform(*DELIVERY_APPEAL_RANGE),
        )
        if start is not None:
            plan.scheduled_at = start
            plan.validity_end = start + CHANNELS[channel].validity
            if state not in (Delivery.State.SCHEDULED, Delivery.State.PROVISIONAL, Delivery.State.DRAFT):
                plan.started_at = start
        if state == Delivery.State.DRAFT:
            plan.scheduled_at = plan.validity_end = None
        slug = campaign.label.lower().replace("'", "").replace(" ", "-")
        plan.links = (f"{SITE}/{slug}?utm_medium={channel}", f"{SITE}/{slug}/bestsellers?utm_medium={channel}", f"{SITE}/stores")
        return plan

    def _proof(self, main: _DeliveryPlan, campaign: Campaign) -> _DeliveryPlan:
        start = main.scheduled_at - timedelta(days=1)
        addresses = PROOF_EMAIL_ADDRESSES if main.channel == Channel.EMAIL else PROOF_PHONES
        return _DeliveryPlan(
            label=f"Proof: {main.label}", channel=main.channel, kind=Delivery.Kind.PROOF, state=Delivery.State.FINISHED,
            campaign_id=campaign.id, created_at=main.created_at, scheduled_at=start, started_at=start,
            validity_end=start + CHANNELS[main.channel].validity, proof_addresses=addresses, links=main.links,
        )

    def _plan_past_campaign(self, campaign: Campaign, launch: datetime, position: int, count: int) -> list[_DeliveryPlan]:
        rng = self.rng
        main = self._marketing(campaign, "newsletter", Channel.EMAIL, start=launch, weight=rng.uniform(0.4, 0.8), priority=10)
        plans = [main, self._proof(main, campaign)]
        reminder_at = launch + timedelta(days=rng.randint(3, 7))
        latest_finished_start = self.cutoff - CHANNELS[Channel.EMAIL].validity - timedelta(days=1)
        if rng.random() < REMINDER_PROBABILITY and reminder_at < latest_finished_start:
            plans.append(self._marketing(campaign, "reminder", Channel.EMAIL, start=reminder_at, weight=rng.uniform(0.15, 0.35)))
        if rng.random() < SMS_DELIVERY_PROBABILITY or position == count // 3:
            sms_at = launch + timedelta(hours=rng.randint(2, 30))
            sms = self._marketing(campaign, "SMS", Channel.SMS, start=sms_at, weight=rng.uniform(0.2, 0.5), priority=8)
            plans.append(sms)
            if position == count // 3:
                plans.append(self._proof(sms, campaign))
        if rng.random() < PUSH_DELIVERY_PROBABILITY:
            push_at = launch + timedelta(hours=rng.randint(1, 48))
            plans.append(self._marketing(campaign, "push", Channel.PUSH, start=push_at, weight=rng.uniform(0.4, 0.9), priority=3))
        if position == count // 2:
            # An operator stopped a follow-up that went out with the wrong offer.
            stopped = self._marketing(
                campaign, "follow-up", Channel.EMAIL, start=launch + timedelta(days=1), weight=0.08, state=Delivery.State.STOPPED,
            )
            stopped.send_window, stopped.halt_after_share = timedelta(hours=6), STOPPED_AFTER_SHARE
            plans.append(stopped)
        if position == count - 2:
            # The SMS connector rejected the account's credentials mid-way.
            failed = self._marketing(
                campaign, "flash SMS", Channel.SMS, start=launch + timedelta(days=2), weight=0.1, state=Delivery.State.FAILED,
            )
            failed.send_window, failed.halt_after_share = timedelta(hours=2), FAILED_AFTER_SHARE
            plans.append(failed)
        return plans

    def _plan_current_campaign(self, campaign: Campaign) -> list[_DeliveryPlan]:
        anchor = self.anchor
        ab_test = ABTest(
            id=self.ids.take(ABTest), label=f"{campaign.label}: subject line", campaign_id=campaign.id, owner=self.user,
            variant_count=2, criterion=ABTest.Criterion.OPEN_RATE, test_duration=timedelta(days=1),
            remainder_percent=round(100 * (1 - AB_TEST_SHARE)), winner_sending=ABTest.WinnerSending.AUTOMATIC,
            created_at=anchor - timedelta(days=3),
        )
        self.writer.add(ab_test)
        # The test went out 27 hours ago: its 1-day test period (and its validity) ended three hours
        # ago, before the last consolidation, so the test is final and abTesting picks a winner.
        test = self._marketing(
            campaign, "A/B test", Channel.EMAIL, start=anchor - timedelta(hours=27), weight=0.6 * AB_TEST_SHARE, priority=10,
        )
        test.ab_test_id, test.validity_end = ab_test.id, test.started_at + timedelta(days=1)
        # The current newsletter goes to most of the base (weights are relative: see _scale_audiences).
        newsletter = self._marketing(campaign, "newsletter", Channel.EMAIL, start=anchor - timedelta(hours=4), weight=1.6,
                                     state=Delivery.State.IN_PROGRESS, priority=9)
        newsletter.send_window = timedelta(hours=8)  # throttled: half of it is still to send at the anchor
        sms = self._marketing(
            campaign, "SMS", Channel.SMS, start=anchor - timedelta(hours=3), weight=0.6, state=Delivery.State.IN_PROGRESS,
            priority=8,
        )
        sms.send_window = timedelta(hours=4)
        push = self._marketing(
            campaign, "push", Channel.PUSH, start=anchor - timedelta(minutes=40), weight=0.7, state=Delivery.State.IN_PROGRESS,
        )
        push.send_window = timedelta(hours=1)
        return [test, self._proof(test, campaign), newsletter, sms, push]

    def _plan_upcoming_campaign(self, campaign: Campaign) -> list[_DeliveryPlan]:
        """Deliveries not sent yet, within the 7-day forecast horizon: no logs."""
        anchor, state = self.anchor, Delivery.State
        upcoming = (
            ("teaser", Channel.EMAIL, timedelta(days=2, hours=8), state.SCHEDULED, 10),
            ("teaser push", Channel.PUSH, timedelta(days=5, hours=18), state.SCHEDULED, 5),
            ("launch", Channel.EMAIL, timedelta(days=3, hours=9), state.PROVISIONAL, 8),
            ("launch SMS", Channel.SMS, timedelta(days=6, hours=11), state.PROVISIONAL, 6),
            ("last chance", Channel.EMAIL, None, state.DRAFT, 5),
            ("last chance SMS", Channel.SMS, None, state.DRAFT, 5),
        )
        return [
            self._marketing(
                campaign, suffix, channel, start=anchor + after if after else None, weight=0, state=delivery_state,
                priority=priority,
            )
            for suffix, channel, after, delivery_state, priority in upcoming
        ]

    def _scale_audiences(self, plans: list[_DeliveryPlan]) -> None:
        """Scale the audience weights so that marketing sends ~MARKETING_MESSAGES_PER_PROFILE per profile."""
        reachable = {channel: len(indexes) for channel, indexes in self.recipients.reachable.items()}
        sending = [plan for plan in plans if plan.sends_messages and not plan.proof_addresses]
        expected = sum(plan.audience_weight * reachable[plan.channel] for plan in sending)
        scale = MARKETING_MESSAGES_PER_PROFILE * self.profile_count / expected if expected else 0.0
        for plan in sending:
            plan.audience_weight = min(1.0, plan.audience_weight * scale)

    def _plan_transactional(self) -> list[_DeliveryPlan]:
        """One execution delivery per published template and month; the current month's is running."""
        first_month = _month_start(self.transactional_start)
        current_month = _month_start(self.anchor - timedelta(microseconds=1))
        plans = []
        for template in self.templates.values():
            if not template.published:
                continue
            month = first_month
            while month <= current_month:
                next_month = _month_start(month + timedelta(days=32))
                running = month == current_month
                plans.append(_DeliveryPlan(
                    label=f"{template.label} - {month:%Y-%m}", channel=template.channel, kind=Delivery.Kind.TRANSACTIONAL,
                    state=Delivery.State.IN_PROGRESS if running else Delivery.State.FINISHED, template_id=template.id,
                    created_at=month, scheduled_at=month, started_at=month, validity_end=next_month,
                ))
                month = next_month
        return plans

    def _write_deliveries(self, plans: list[_DeliveryPlan]) -> None:
        self.writer.add_all(plan.to_model() for plan in plans)

    # -- sending -----------------------------------------------------------------------------

    def _send_delivery(self, plan: _DeliveryPlan) -> None:
        """Simulate a marketing delivery or a proof: one log per recipient, in target order."""
        rng = self.rng
        start = plan.started_at
        assert start is not None
        if plan.proof_addresses:
            targets: list[tuple[int | None, str, tuple[Bounce, float] | None]] = [(None, a, None) for a in plan.proof_addresses]
        else:
            targets = self._target(plan)
        behaviour = CHANNELS[plan.channel]
        window = plan.send_window or timedelta(hours=max(len(targets), 1) / behaviour.messages_per_hour)
        halt_at = start + window * plan.halt_after_share if plan.halt_after_share is not None else None
        step = window / max(len(targets), 1)
        for position, (profile_index, address, fate) in enumerate(targets):
            send_at = start + step * position
            variant = ""
            appeal = plan.appeal
            if plan.ab_test_id is not None:
                variant = "A" if rng.random() < 0.5 else "B"
                appeal *= AB_VARIANT_B_APPEAL if variant == "B" else 1.0
            self._send_message(
                plan, profile_index=profile_index, address=address, fate=fate, created_at=start, send_at=send_at,
                halt_at=halt_at, variant=variant, appeal=appeal, engaged_share=behaviour.engaged_share,
            )
        if plan.state in (Delivery.State.STOPPED, Delivery.State.FAILED):
            plan.finished_at = halt_at

    def _target(self, plan: _DeliveryPlan) -> list[tuple[int | None, str, tuple[Bounce, float] | None]]:
        """A random slice of the channel's reachable profiles, in profile order, without those
        created after the delivery or opted out before it."""
        recipients, start = self.recipients, plan.started_at
        reachable = recipients.reachable[plan.channel]
        size = round(plan.audience_weight * len(reachable))
        chosen = sorted(self.rng.sample(reachable, min(size, len(reachable))))
        opted_out = self.opted_out.get(plan.channel, {})
        targets = []
        for index in chosen:
            if recipients.created_at[index] > start:
                continue
            opted_out_at = opted_out.get(index)
            if opted_out_at is not None and opted_out_at <= start:
                continue
            targets.append((index, recipients.address(plan.channel, index), recipients.fate(plan.channel, index)))
        return targets

    def _send_message(
        self, plan: _DeliveryPlan, *, profile_index: int | None, address: str, fate: tuple[Bounce, float] | None,
        created_at: datetime, send_at: datetime, halt_at: datetime | None, variant: str, appeal: float,
        engaged_share: float, event_id: int | None = None,
    ) -> tuple[int, int]:
        """One message: its log, its raw feedback and its reactions. Returns the log's id and status."""
        log_id = self.ids.take(DeliveryLog)
        profile_id = self.recipients.ids[profile_index] if profile_index is not None else None
        status, failure_type, failure_reason, error_text, updated_at, delivered_at = self._outcome(
            plan, log_id=log_id, address=address, fate=fate, created_at=created_at, send_at=send_at, halt_at=halt_at,
        )
        self.writer.add_row(DeliveryLog, (
            log_id, plan.id, profile_id, address, variant, event_id, status, failure_type, failure_reason, error_text,
            created_at, updated_at,
        ))
        self.log_statuses[status] += 1
        if status != LogStatus.PENDING and (plan.last_final_at is None or updated_at > plan.last_final_at):
            plan.last_final_at = updated_at
        if delivered_at is not None and self.rng.random() < engaged_share * appeal:
            self._react(plan, log_id=log_id, profile_index=profile_index, delivered_at=delivered_at)
        return log_id, status

    def _outcome(
        self, plan: _DeliveryPlan, *, log_id: int, address: str, fate: tuple[Bounce, float] | None,
        created_at: datetime, send_at: datetime, halt_at: datetime | None,
    ) -> tuple[int, int, int, str, datetime, datetime | None]:
        """(status, failure type, failure reason, error text, updated_at, delivered_at) of one log.

        The provider's answers older than the cutoff are consolidated into the log; newer ones
        become raw feedback rows and leave the log pending.
        """
        channel = plan.channel
        quarantine = self.quarantine.get((channel, address))
        if quarantine is not None and quarantine.is_quarantined(send_at):
            text = "Address on denylist" if quarantine.status == Quarantine.Status.DENYLISTED else "Address in quarantine"
            return LogStatus.IGNORED, FailureType.IGNORED, quarantine.failure_reason, text, created_at, None
        if halt_at is not None and send_at >= halt_at:
            return LogStatus.CANCELLED, FailureType.NONE, FailureReason.NONE, "", halt_at, None
        if send_at >= self.anchor:
            return LogStatus.PENDING, FailureType.NONE, FailureReason.NONE, "", created_at, None
        answers = self._provider_answers(plan, address=address, fate=fate, send_at=send_at)
        status, failure_type, failure_reason, error_text = LogStatus.PENDING, FailureType.NONE, FailureReason.NONE, ""
        updated_at, delivered_at = created_at, None
        for outcome, bounce, text, at in answers:
            if at >= self.anchor:
                break
            if outcome == SendingFeedback.Outcome.DELIVERED:
                delivered_at = at
            if at >= self.cutoff:
                self.raw_feedback.append((at, log_id, outcome, text))
                continue
            updated_at = at
            if outcome == SendingFeedback.Outcome.DELIVERED:
                status = LogStatus.SENT
            elif outcome == SendingFeedback.Outcome.BOUNCE:
                assert bounce is not None
                status, error_text = LogStatus.FAILED, text
                failure_type, failure_reason = bounce.failure_type, bounce.failure_reason
                self._quarantine_state(channel, address).record(at, bounce.failure_type, bounce.failure_reason, text)
            else:
                error_text = text  # deferred: the log stays pending with the provider's last word
        expired = plan.validity_end is not None and send_at < plan.validity_end < self.cutoff
        if status == LogStatus.PENDING and expired:
            # Still refused when validity ended: updateDeliveryExecInfo cancelled it.
            status, updated_at = LogStatus.CANCELLED, plan.validity_end
            delivered_at = None
        return status, failure_type, failure_reason, error_text, updated_at, delivered_at

    def _provider_answers(
        self, plan: _DeliveryPlan, *, address: str, fate: tuple[Bounce, float] | None, send_at: datetime,
    ) -> list[tuple[str, Bounce | None, str, datetime]]:
        """What the provider reports for one message, in time order: (outcome, bounce, text, at)."""
        rng, behaviour = self.rng, CHANNELS[plan.channel]
        answered_at = send_at + timedelta(seconds=round(rng.expovariate(1 / behaviour.feedback_delay_mean_s), 3))
        bounce = fate[0] if fate is not None and rng.random() < fate[1] else None
        if bounce is None and not plan.proof_addresses:
            draw = rng.random()
            for bounces, share in behaviour.transient_bounces:
                if draw < share:
                    bounce = rng.choice(bounces)
                    break
                draw -= share
        if bounce is not None:
            return [(SendingFeedback.Outcome.BOUNCE, bounce, bounce.render(address), answered_at)]
        # Proofs and transactional messages go through dedicated, unthrottled connections: no deferral.
        if plan.proof_addresses or plan.kind == Delivery.Kind.TRANSACTIONAL or rng.random() >= behaviour.deferral_share:
            return [(SendingFeedback.Outcome.DELIVERED, None, "", answered_at)]
        answers: list[tuple[str, Bounce | None, str, datetime]] = [
            (SendingFeedback.Outcome.DEFERRED, None, rng.choice(behaviour.deferral_texts), answered_at)
        ]
        accepted_at = answered_at + timedelta(seconds=round(rng.expovariate(1 / RETRY_DELAY_MEAN.total_seconds())))
        never = rng.random() < NEVER_ACCEPTED_SHARE
        if not never and (plan.validity_end is None or accepted_at < plan.validity_end):
            answers.append((SendingFeedback.Outcome.DELIVERED, None, "", accepted_at))
        return answers

    def _react(self, plan: _DeliveryPlan, *, log_id: int, profile_index: int | None, delivered_at: datetime) -> None:
        """Opens, clicks, opt-outs and mirror-page views of one engaged recipient."""
        rng, behaviour = self.rng, CHANNELS[plan.channel]
        first = delivered_at + self._open_delay()
        reactions: list[tuple[int, str, datetime]] = []
        clicked = rng.random() < behaviour.click_given_engaged
        if behaviour.records_opens and not (clicked and rng.random() < CLICK_WITHOUT_PIXEL_SHARE):
            reactions.append((UrlType.OPEN, "", first))
            at = first
            while rng.random() < EXTRA_OPEN_PROBABILITY:
                at += self._open_delay()
                reactions.append((UrlType.OPEN, "", at))
        if clicked:
            at = first + timedelta(seconds=round(rng.expovariate(1 / CLICK_DELAY_MEAN.total_seconds())))
            reactions.append((UrlType.CLICK, rng.choice(plan.links) if plan.links else SITE, at))
        if rng.random() < behaviour.mirror_given_engaged:
            reactions.append((UrlType.MIRROR_PAGE, f"{TRACKING_SITE}/mirror/{log_id}", first + timedelta(seconds=5)))
        if profile_index is not None and rng.random() < behaviour.opt_out_given_engaged:
            at = first + timedelta(seconds=round(rng.uniform(10, 600)))
            reactions.append((UrlType.OPT_OUT, OPT_OUT_URL if plan.channel == Channel.EMAIL else "", at))
            if at < self.cutoff and plan.channel in self.opted_out:
                self.opted_out[plan.channel].setdefault(profile_index, at)
        user_agent = rng.choices(self.user_agents, cum_weights=self.user_agent_cum_weights)[0]
        limit = delivered_at + REACTION_MAX_DELAY
        for url_type, url, at in reactions:
            if at >= self.anchor or at > limit:
                continue
            if at < self.cutoff:
                self.writer.add_row(TrackingLog, (log_id, plan.id, url_type, url, at))
            else:
                self.raw_hits.append((at, log_id, url_type, url, user_agent))

    def _open_delay(self) -> timedelta:
        draw = self.rng.random()
        for share, mean in OPEN_DELAYS:  # noqa: B007 - `mean` is read after the loop: the bucket the draw fell in
            if draw < share:
                break
            draw -= share
        return timedelta(seconds=round(self.rng.expovariate(1 / mean.total_seconds())) + 1)

    def _quarantine_state(self, channel: str, address: str) -> _QuarantineState:
        key = (channel, address)
        state = self.quarantine.get(key)
        if state is None:
            state = self.quarantine[key] = _QuarantineState(address=address, channel=channel)
        return state

    # -- transactional traffic and events ----------------------------------------------------

    def _send_transactional_traffic(self, plans: list[_DeliveryPlan]) -> None:
        """Events of the last months, processed at once and archived: EventHistory + their logs."""
        rng, recipients = self.rng, self.recipients
        end = self.transactional_end
        span = (self.transactional_end - self.transactional_start).total_seconds()
        count = round(TRANSACTIONAL_EVENTS_PER_PROFILE * self.profile_count)
        times = sorted(end - timedelta(seconds=round(rng.uniform(0, span))) for _ in range(count))
        specs = rng.choices(EVENT_TYPES, [spec.weight for spec in EVENT_TYPES], k=count)
        by_template_month = {(plan.template_id, plan.started_at): plan for plan in plans}
        for created_at, spec in zip(times, specs, strict=True):
            event_id = self.ids.take(Event)
            index = self._event_recipient(spec)
            email, phone = recipients.emails[index], recipients.phones[index]
            address = phone if spec.channel == Channel.SMS else email
            template = self.templates.get(spec.event_type)
            processed_at = created_at + timedelta(seconds=round(rng.uniform(1, 20)))
            # No published template for its type and channel: updateEventsStatus did not take it into account.
            status, template_id, log_id = EventStatus.NOT_TAKEN_INTO_ACCOUNT, None, None
            if template is not None and template.published:
                plan = by_template_month[(template.id, _month_start(created_at))]
                fate = recipients.fate(spec.channel, index) if spec.channel != Channel.PUSH else None
                log_id, log_status = self._send_message(
                    plan, profile_index=None, address=address, fate=fate, created_at=processed_at, send_at=processed_at,
                    halt_at=None, variant="", appeal=1.0, engaged_share=spec.engaged_share, event_id=event_id,
                )
                status, template_id = _EVENT_STATUS_OF_LOG[log_status], template.id
            self.writer.add_row(EventHistory, (
                event_id, spec.event_type, str(spec.channel), self._event_payload(spec, index),
                email if spec.channel != Channel.SMS else "", phone if spec.channel == Channel.SMS else "", str(status),
                template_id, log_id, created_at, processed_at, processed_at + timedelta(hours=1, minutes=rng.randint(0, 10)),
            ))

    def _write_live_events(self) -> None:
        """Events just received, waiting for updateEventsStatus (a few expired already)."""
        rng, recipients = self.rng, self.recipients
        count = max(MIN_LIVE_EVENTS, round(LIVE_EVENTS_PER_PROFILE * self.profile_count))
        window = LIVE_EVENT_WINDOW.total_seconds()
        times = []
        for _ in range(count):
            if rng.random() < SHARE_LIVE_EVENTS_TOO_OLD:
                times.append(self.anchor - timedelta(hours=rng.uniform(25, 47)))
            else:
                times.append(self.anchor - timedelta(seconds=rng.uniform(1, window)))
        times = sorted(at.replace(microsecond=0) for at in times)
        specs = rng.choices(EVENT_TYPES, [spec.weight for spec in EVENT_TYPES], k=count)
        for created_at, spec in zip(times, specs, strict=True):
            index = self._event_recipient(spec)
            self.writer.add(Event(
                id=self.ids.take(Event), event_type=spec.event_type, channel=spec.channel,
                payload=self._event_payload(spec, index), email=recipients.emails[index] if spec.channel != Channel.SMS else "",
                phone=recipients.phones[index] if spec.channel == Channel.SMS else "", status=EventStatus.PENDING,
                created_at=created_at, updated_at=created_at,
            ))

    def _event_recipient(self, spec: EventTypeSpec) -> int:
        """A profile with the address the event's channel needs (events carry an email or a phone)."""
        candidates = self.recipients.reachable[Channel.SMS if spec.channel == Channel.SMS else Channel.EMAIL]
        return self.rng.choice(candidates) if candidates else self.rng.randrange(self.profile_count)

    def _event_payload(self, spec: EventTypeSpec, index: int) -> dict[str, Any]:
        rng = self.rng
        payload: dict[str, Any] = {"profileRef": f"P{self.recipients.ids[index]}", "locale": rng.choice(EVENT_LOCALES)}
        if spec.event_type in ("order_confirmation", "shipping_update"):
            payload["orderId"] = f"ORD-{rng.randrange(10**7):07d}"
            payload |= {"total": round(rng.uniform(9.9, 420.0), 2), "currency": "EUR"}
        if spec.event_type == "shipping_update":
            payload["carrier"] = rng.choice(("Colissimo", "DHL", "UPS", "Chronopost"))
        if spec.event_type in ("cart_abandoned", "back_in_stock"):
            payload["sku"] = f"SKU-{rng.randrange(10**5):05d}"
        if spec.event_type == "password_reset":
            payload["resetUrl"] = f"{SITE}/account/reset/{rng.getrandbits(64):016x}"
        return payload

    # -- the rest ----------------------------------------------------------------------------

    def _write_raw_rows(self) -> None:
        """Raw rows in arrival order, as the sending and tracking sides append them."""
        self.raw_feedback.sort(key=lambda row: (row[0], row[1]))
        for received_at, log_id, outcome, text in self.raw_feedback:
            self.writer.add(SendingFeedback(delivery_log_id=log_id, outcome=outcome, error_text=text, received_at=received_at))
        self.raw_hits.sort(key=lambda row: (row[0], row[1], row[2]))
        for hit_at, log_id, url_type, url, user_agent in self.raw_hits:
            self.writer.add(TrackingHit(delivery_log_id=log_id, url_type=url_type, url=url, user_agent=user_agent, hit_at=hit_at))

    def _write_quarantine(self) -> None:
        self.writer.add_all(state.to_model() for state in self.quarantine.values())
        self.writer.flush(Quarantine)
        # bulk_create stamped updated_at (auto_now) with the wall clock; the table was empty before.
        Quarantine.objects.update(updated_at=F("last_error_at"))

    def _write_audience(self) -> None:
        """A shared audience as its last hourly import left it, an hour ago."""
        account = ExternalAccount.objects.get(name="audience")
        imported_at = self.anchor - timedelta(hours=1)
        visitors = self.recipients.with_visitor_id
        chosen = sorted(self.rng.sample(visitors, round(len(visitors) * SHARE_VISITORS_IN_AUDIENCE)))
        audience = SharedAudience(
            id=self.ids.take(SharedAudience), name="Web visitors - high purchase intent", external_id="aud-7f3c21",
            account=account, enabled=True,
            imported_at=imported_at, member_count=len(chosen), unknown_count=self.rng.randint(5, 60),
        )
        audience.save(force_insert=True)
        self.writer.counts["SharedAudience"] += 1
        matched_by = str(AudienceMember.IdType.VISITOR)
        for index in chosen:
            self.writer.add_row(AudienceMember, (audience.id, self.recipients.ids[index], matched_by, imported_at))

    def _write_report(self) -> None:
        created_at = self.anchor - timedelta(days=20)
        report = Report(
            id=self.ids.take(Report), label="Email KPIs - last 7 days", kind=Report.Kind.DELIVERY_KPIS, period_days=7,
            created_by=self.user, created_at=created_at,
        )
        report.save(force_insert=True)
        # Weekly, Mondays at 08:00: its schedule (a beat entry) is the report-sharing code's to create.
        share = ReportShare(
            id=self.ids.take(ReportShare), report=report, recurrence=ReportShare.Recurrence.WEEKLY, send_time=time_of_day(8, 0),
            time_zone="UTC", day_of_week=0, start_date=created_at.date(), created_by=self.user, created_at=created_at,
        )
        share.save(force_insert=True)
        share.recipients.set([self.user])
        self.writer.counts["Report"] += 1
        self.writer.counts["ReportShare"] += 1

    def _finish_deliveries(self, plans: list[_DeliveryPlan]) -> None:
        """Set what the simulation decided (end times) and pin updated_at, which bulk_create stamped."""
        for plan in plans:
            if plan.state == Delivery.State.FINISHED and plan.finished_at is None:
                plan.finished_at = plan.last_final_at or plan.validity_end
        deliveries = [plan.to_model() for plan in plans]
        Delivery.objects.bulk_update(deliveries, ["finished_at"], batch_size=500)
        Delivery.objects.filter(id__in=[plan.id for plan in plans]).update(
            updated_at=Coalesce(F("finished_at"), F("started_at"), F("created_at")),
        )

    def _finish_profiles(self) -> None:
        """Opt-outs consolidated during the simulation (updated by updateDeliveryExecInfo's last run)."""
        ids = self.recipients.ids
        for channel, flag in ((Channel.EMAIL, "blocklisted_email"), (Channel.SMS, "blocklisted_sms")):
            opted_out = [ids[index] for index in sorted(self.opted_out[channel])]
            _update_in_chunks(Profile.objects.all(), opted_out, **{flag: True, "updated_at": self.cutoff})


_EVENT_STATUS_OF_LOG = {
    LogStatus.SENT: EventStatus.SENT,
    LogStatus.FAILED: EventStatus.DELIVERY_FAILED,
    LogStatus.IGNORED: EventStatus.IGNORED,
    LogStatus.CANCELLED: EventStatus.DELIVERY_FAILED,
    LogStatus.PENDING: EventStatus.PENDING_DELIVERY,
}


def _month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _demo_user() -> AbstractBaseUser:
    """The owner and report recipient: the first superuser, else a staff user who cannot log in."""
    user_model = get_user_model()
    user = user_model.objects.filter(is_superuser=True).order_by("id").first()
    if user is not None:
        return user
    user = user_model.objects.filter(username="analyst").first()
    if user is None:
        user = user_model(username="analyst", email="analyst@localhost", is_staff=True)
        user.set_unusable_password()
        user.save()
    return user
