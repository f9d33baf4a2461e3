"""The provider errors the demo's messages meet, and the default rules that qualify them.

Why it exists: a bounce text and its qualification belong together -- the simulation draws the
texts, the default BounceRules written with the data must qualify each one as declared here, and
a test checks both against each other (``ALL_BOUNCES``). The deliverability defaults written
with the demo data (bounce, MX and domain rules) live here too, beside the texts they match.
"""

from __future__ import annotations

from dataclasses import dataclass

from campaign.demo.parameters import (
    MAILBOX_FULL_BOUNCE_PROBABILITY,
    SHARE_EMAIL_ACCOUNT_DISABLED,
    SHARE_EMAIL_COMPLAINER,
    SHARE_EMAIL_INVALID_DOMAIN,
    SHARE_EMAIL_MAILBOX_FULL,
    SHARE_EMAIL_USER_UNKNOWN,
)
from campaign.models import FailureReason, FailureType


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
