"""The channels and the platform's numeric codes, shared by logs, quarantine, events and rules.

The codes (log status, failure types and reasons, tracking URL types) are the platform's published
ones, so that KPIs can be checked against its formulas; they live apart from the models so that
every table speaks the same numbers.
"""

from __future__ import annotations

from django.db import models


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    PUSH = "push", "Push notification"


class LogStatus(models.IntegerChoices):
    """DeliveryLog.status, the platform's broadlog codes."""

    IGNORED = 0, "Ignored"
    SENT = 1, "Sent"
    FAILED = 2, "Failed"
    PENDING = 6, "Pending"
    CANCELLED = 7, "Cancelled"


#: Statuses after which a log never changes again.
FINAL_LOG_STATUSES = (LogStatus.IGNORED, LogStatus.SENT, LogStatus.FAILED, LogStatus.CANCELLED)


class FailureType(models.IntegerChoices):
    NONE = 0, "None"
    SOFT = 1, "Soft"
    HARD = 2, "Hard"
    IGNORED = 3, "Ignored"


class FailureReason(models.IntegerChoices):
    NONE = 0, "None / not defined"
    USER_UNKNOWN = 1, "User unknown"
    INVALID_DOMAIN = 2, "Invalid domain"
    UNREACHABLE = 3, "Unreachable"
    ACCOUNT_DISABLED = 4, "Account disabled"
    MAILBOX_FULL = 5, "Mailbox full"
    NOT_CONNECTED = 6, "Not connected"
    ON_DENYLIST = 8, "On denylist"
    REFUSED = 20, "Refused / rejected"


class UrlType(models.IntegerChoices):
    """TrackingHit.url_type and TrackingLog.url_type. The platform's indicator formulas also count
    codes 10 and 11 as clicks without naming them; 7 is the code of a push impression."""

    CLICK = 1, "Click"
    OPEN = 2, "Open"
    OPT_OUT = 3, "Opt-out"
    MIRROR_PAGE = 6, "Mirror page"
    IMPRESSION = 7, "Impression (push)"
    OTHER_CLICK_10 = 10, "Click (type 10)"
    OTHER_CLICK_11 = 11, "Click (type 11)"
