"""The demo's sizes, shares and time line: the numbers the simulation draws from.

Why it exists: the proportions of the demo data (how many profiles have a phone, how often an
address bounces, how soon a recipient opens...) are what the seed_demo tests check and what an
operator may want to tune; gathered here, they read as one table instead of being scattered
through the simulation (each channel's own rates are in :mod:`campaign.demo.channels`). All
durations are relative to the anchor, the "now" of the data.
"""

from __future__ import annotations

from datetime import timedelta

# --------------------------------------------------------------------------------------------
# Sizes

DEFAULT_PROFILES = 10_000
DEFAULT_SEED = 20_240_601

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
#: Complained before: the mailbox provider refuses the address as on its suppression list (a hard
#: bounce of reason 8, which puts it on the denylist too). Complaints during the history: COMPLAINT_RATE.
SHARE_EMAIL_COMPLAINER = 0.001
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
#: Spam complaints (a mailbox provider's feedback loop) per delivered marketing email, and how long
#: after delivery they are reported; replies per delivered marketing SMS, the share of them that
#: are an opt-out keyword and of them from a number no profile has (a number recycled since, a
#: forwarded message), and how soon they come.
COMPLAINT_RATE = 0.001
COMPLAINT_DELAY_MEAN = timedelta(hours=8)
SMS_REPLY_RATE = 0.008
SMS_REPLY_OPT_OUT_SHARE = 0.7
SMS_REPLY_UNKNOWN_NUMBER_SHARE = 0.05
SMS_REPLY_DELAY_MEAN = timedelta(minutes=20)
#: The showcase of denylisting: one recipient of the running email newsletter complains and one
#: of the running SMS replies STOP, this long after delivery, in the window not consolidated yet
#: (whatever the draws above gave), so updateDeliveryExecInfo's first run denylists both.
SHOWCASE_REACTION_DELAY = timedelta(minutes=10)
RETRY_DELAY_MEAN = timedelta(hours=2)  # a deferred message is retried until accepted or validity ends
NEVER_ACCEPTED_SHARE = 0.05  # of deferred messages: still refused when validity ends (cancelled)
