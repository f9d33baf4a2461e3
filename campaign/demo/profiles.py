"""The simulation's profiles: who they are, which addresses and devices they have, and how each
address will behave for the whole history.

Why it exists: an address's fate (it does not exist, its mailbox is often full, its device token
was unregistered...) is drawn once, with the profile, so that the same address fails the same way
in every delivery and the quarantine builds up as on a real platform. Addresses quarantined
before the history starts are set up here too.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from campaign.demo.bounces import (
    EMAIL_DENYLISTED,
    EMAIL_FATES,
    EMAIL_INVALID_DOMAIN,
    HARD,
    PUSH_INVALID_TOKEN,
    PUSH_UNREGISTERED,
    SMS_ABSENT,
    SMS_UNKNOWN_SUBSCRIBER,
    Bounce,
)
from campaign.demo.parameters import (
    ABSENT_BOUNCE_PROBABILITY,
    HISTORY_DAYS,
    MIN_COMPLAINERS_BEFORE_HISTORY,
    PROFILE_OLDEST_DAYS,
    SHARE_BLOCKLISTED_EMAIL,
    SHARE_BLOCKLISTED_SMS,
    SHARE_EMAIL_COMPLAINER,
    SHARE_EMAIL_WITH_NUMBER,
    SHARE_PHONE_OFTEN_ABSENT,
    SHARE_PHONE_UNKNOWN_SUBSCRIBER,
    SHARE_PROFILES_CREATED_BEFORE_HISTORY,
    SHARE_QUARANTINED_BEFORE_HISTORY,
    SHARE_SECOND_DEVICE,
    SHARE_SUBSCRIPTION_DISABLED_LONG_AGO,
    SHARE_TOKEN_INVALID,
    SHARE_TOKEN_UNREGISTERED,
    SHARE_WITH_APP,
    SHARE_WITH_DECLARED_ID,
    SHARE_WITH_PHONE,
    SHARE_WITH_VISITOR_ID,
    SHARE_WITHOUT_EMAIL,
)
from campaign.demo.state import SimulationState
from campaign.demo.vocabulary import APPLICATIONS, FIRST_NAMES, LAST_NAMES, TYPO_DOMAINS
from campaign.models import AppSubscription, Channel, FailureReason, Profile


class ProfileSimulation(SimulationState):
    """Profiles, their push subscriptions and the quarantine that predates the history."""

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
