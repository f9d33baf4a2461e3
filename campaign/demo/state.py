"""The simulation's state: the deliveries it plans, the addresses it quarantines, the recipients
it draws, and what all the areas of the simulation share.

Why it exists: the simulation is split by area (profiles, planning, sending, events, finishing),
and every area reads and updates the same state in the same run; this module holds that state
and its small records, so that an area module holds only what the area does.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import accumulate

from django.contrib.auth.base_user import AbstractBaseUser

from campaign.demo.bounces import HARD, Bounce
from campaign.demo.channels import CHANNELS
from campaign.demo.parameters import HISTORY_DAYS, TRANSACTIONAL_ARCHIVE_LAG, TRANSACTIONAL_DAYS, UNCONSOLIDATED_WINDOW
from campaign.demo.vocabulary import EMAIL_DOMAINS, USER_AGENTS
from campaign.demo.writer import BulkWriter, IdAllocator
from campaign.models import Channel, Delivery, FailureReason, FailureType, MessageTemplate, Quarantine


@dataclass
class DeliveryPlan:
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
class QuarantineState:
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
        """One error: a bounce, or a denylisting (a spam complaint, an SMS opt-out keyword, a hard
        bounce of reason 8), which also takes a quarantined address onto the denylist."""
        denylisting = failure_type == HARD and failure_reason == FailureReason.ON_DENYLIST
        if self.status == Quarantine.Status.DENYLISTED or (self.quarantined_at is not None and not denylisting):
            return
        if self.first_error_at is None:
            self.first_error_at = at
        self.failure_type, self.failure_reason, self.error_text = failure_type, failure_reason, text
        if self.last_error_at is not None and at - self.last_error_at > self.ERROR_COUNT_RESET_AFTER:
            self.error_count, self.first_error_at = 0, at
        if failure_type == HARD:
            self.error_count += 1
            self.last_error_at = at
            if self.quarantined_at is None:
                self.quarantined_at = at
            self.status = Quarantine.Status.DENYLISTED if denylisting else Quarantine.Status.QUARANTINED
            return
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
class Recipients:
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


class SimulationState:
    """What the areas of the simulation share: the random generator (drawn in a fixed order), the
    time line, the writer and ids, the recipients and everything built up while sending."""

    def __init__(self, *, profile_count: int, rng: random.Random, anchor: datetime, ids: IdAllocator) -> None:
        self.profile_count = profile_count
        self.rng = rng
        self.anchor = anchor
        self.cutoff = anchor - UNCONSOLIDATED_WINDOW
        self.history_start = anchor - timedelta(days=HISTORY_DAYS)
        self.ids = ids
        self.writer = BulkWriter(ids)
        self.recipients = Recipients()
        self.quarantine: dict[tuple[str, str], QuarantineState] = {}
        # Profile position -> time of the consolidated opt-out, per channel.
        self.opted_out: dict[str, dict[int, datetime]] = {Channel.EMAIL: {}, Channel.SMS: {}}
        self.raw_feedback: list[tuple[datetime, int, str, str]] = []
        self.raw_hits: list[tuple[datetime, int, int, str, str]] = []
        self.raw_replies: list[tuple[datetime, str, str]] = []  # (received_at, phone, text)
        # Profile positions that got the A/B test delivery (the winner goes to the others).
        self.ab_tested: set[int] = set()
        # The showcase complaint and STOP reply (SHOWCASE_REACTION_DELAY), once each.
        self.showcase_due: set[str] = {Channel.EMAIL, Channel.SMS}
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

    def _quarantine_state(self, channel: str, address: str) -> QuarantineState:
        key = (channel, address)
        state = self.quarantine.get(key)
        if state is None:
            state = self.quarantine[key] = QuarantineState(address=address, channel=channel)
        return state
