"""The platform's indicator table, in one place: which tracking url types and failure codes each
indicator counts, and how the per-day rates of the KPI page and the reports are derived.

Why a module of its own: the same definitions are written as SQL by updateDeliveryIndicators
(per delivery) and reportingAggregates (per day and delivery), and read back here by the KPI page
and the PDF reports; a formula written twice would drift. The full table, with the platform's
labels and formulas, is documented in ``docs/workflows/updateDeliveryIndicators.md``.

Per-day rates follow the send-day cohort: the messages delivered that day, and what their
recipients did whenever they did it (the ``cohort_*`` counters of DeliveryAggregate). Rates over
unique recipients therefore never exceed 100 %; the platform's Open rate counts repeated opens and
may, and so may a push delivery's click-through rate (interactions / delivered).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from django.db.models import Case, IntegerField, Sum, Value, When

from campaign.models import Channel, FailureReason, FailureType, UrlType
from campaign.rates import percent

#: Tracking that proves a message was opened (the platform's unique opens): a click, an opt-out or
#: a mirror-page view only comes from an opened message, even when the open pixel was blocked.
OPEN_EVIDENCE_URL_TYPES = (UrlType.CLICK, UrlType.OPEN, UrlType.OPT_OUT, UrlType.MIRROR_PAGE,
                           UrlType.OTHER_CLICK_10, UrlType.OTHER_CLICK_11)
#: What the platform counts as a click.
CLICK_URL_TYPES = (UrlType.CLICK, UrlType.OTHER_CLICK_10, UrlType.OTHER_CLICK_11)

#: Failed logs by reason: indicator field → failure reason, and failure type when the formula
#: also requires one.
REASON_INDICATORS: dict[str, tuple[int, int | None]] = {
    "user_unknown": (FailureReason.USER_UNKNOWN, None),
    "invalid_domain": (FailureReason.INVALID_DOMAIN, None),
    "unreachable": (FailureReason.UNREACHABLE, None),
    "account_disabled": (FailureReason.ACCOUNT_DISABLED, None),
    "mailbox_full": (FailureReason.MAILBOX_FULL, None),
    "not_connected": (FailureReason.NOT_CONNECTED, None),
    "on_denylist": (FailureReason.ON_DENYLIST, FailureType.HARD),
    "refused": (FailureReason.REFUSED, None),
    "rejected": (FailureReason.REFUSED, FailureType.HARD),
}

#: The per-day counters the rates below read (sums of DeliveryAggregate columns, plus
#: ``cohort_click_through``: see :func:`rate_sums`).
RATE_COUNTERS = ("sent", "delivered", "bounces", "hard_bounces", "soft_bounces", "on_denylist", "rejected",
                 "quarantine", "cohort_opens", "cohort_unique_opens", "cohort_click_through", "cohort_unsubscribes",
                 "cohort_mirror_pages")

#: The per-day rates, in display order, with the platform's labels.
RATE_LABELS = {
    "delivered_rate": "Delivered rate",
    "bounce_rate": "Bounce + error rate",
    "hard_bounce_rate": "Hard bounces rate",
    "soft_bounce_rate": "Soft bounce rate",
    "denylist_rate": "Denylist rate",
    "quarantine_rate": "Quarantine rate",
    "rejected_rate": "Rejected rate",
    "open_rate": "Open rate",
    "unique_open_rate": "Unique open rate",
    "click_through_rate": "Click through rate",
    "unsubscribe_rate": "Unsubscribe rate",
    "mirror_page_rate": "Mirror page rate",
}


def rate_sums() -> dict[str, Sum]:
    """``Sum`` of every counter of :data:`RATE_COUNTERS` over DeliveryAggregate rows. The
    click-through numerator depends on the channel: unique clickers for email and SMS, every
    interaction (click) for push, as the platform's push table defines it."""
    sums: dict[str, Sum] = {name: Sum(name) for name in RATE_COUNTERS if name != "cohort_click_through"}
    sums["cohort_click_through"] = Sum(Case(
        When(channel=Channel.PUSH, then="cohort_clicks"), default="cohort_unique_clicks", output_field=IntegerField(),
    ), default=Value(0))
    return sums


def day_rates(row: Mapping[str, int | None]) -> dict[str, Decimal]:
    """The rates of one day (or of any sum of days) of send-day cohort counters: over sent for
    delivery and failures, over delivered for what recipients did."""
    count = {name: int(row.get(name) or 0) for name in RATE_COUNTERS}
    sent, delivered = count["sent"], count["delivered"]
    return {
        "delivered_rate": percent(delivered, sent),
        "bounce_rate": percent(count["bounces"], sent),
        "hard_bounce_rate": percent(count["hard_bounces"], sent),
        "soft_bounce_rate": percent(count["soft_bounces"], sent),
        "denylist_rate": percent(count["on_denylist"], sent),
        "quarantine_rate": percent(count["quarantine"], sent),
        "rejected_rate": percent(count["rejected"], sent),
        "open_rate": percent(count["cohort_opens"], delivered),
        "unique_open_rate": percent(count["cohort_unique_opens"], delivered),
        "click_through_rate": percent(count["cohort_click_through"], delivered),
        "unsubscribe_rate": percent(count["cohort_unsubscribes"], delivered),
        "mirror_page_rate": percent(count["cohort_mirror_pages"], delivered),
    }
