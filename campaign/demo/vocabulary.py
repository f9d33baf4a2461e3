"""The demo's words: names, mail domains, user agents, campaign themes, sites and event types.

Why it exists: realistic-looking data needs believable names and texts (reserved ``.example``
domains, so that no address can ever receive mail); kept apart from the numbers of
:mod:`campaign.demo.parameters`, they can grow without hiding the proportions.
"""

from __future__ import annotations

from dataclasses import dataclass

from campaign.models import Channel

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
#: The summary a mailbox provider's feedback loop reports a spam complaint with (ARF fields).
COMPLAINT_TEXT = "Feedback-Type: abuse; User-Agent: {domain} feedback loop; Reported-Domain: brand.example"
#: The short code the SMS are sent from, which replies go to.
SMS_SHORT_CODE = "38111"
#: Replies to a marketing SMS: opt-out keywords as people type them, and replies that are none
#: (updateDeliveryExecInfo compares the whole reply, ignoring case, accents and punctuation).
SMS_OPT_OUT_REPLIES = ("STOP", "Stop", "stop", "Stop.", "STOP!", "stop ", "Arrêt", "ARRET", "UNSUBSCRIBE", "Stop all")
SMS_OTHER_REPLIES = ("Thanks!", "Who is this?", "OK", "Stop sending me these please", "Is the sale on in stores too?", "YES")


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

