"""The simulation's campaigns, templates and deliveries, planned before any message is sent.

Why it exists: every kind of delivery must appear (finished, stopped, failed, in progress,
scheduled, provisional, draft; proofs, an A/B test, transactional executions), spread over the
history so that each workflow finds its case. The plans fix each delivery's dates, audience
share and appeal; :mod:`campaign.demo.sending` then simulates their messages.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from campaign.demo.channels import CHANNELS
from campaign.demo.parameters import (
    AB_TEST_SHARE,
    DELIVERY_APPEAL_RANGE,
    FAILED_AFTER_SHARE,
    HISTORY_DAYS,
    MARKETING_MESSAGES_PER_PROFILE,
    MIN_PAST_CAMPAIGNS,
    PROFILES_PER_EXTRA_CAMPAIGN,
    PROOF_EMAIL_ADDRESSES,
    PROOF_PHONES,
    PUSH_DELIVERY_PROBABILITY,
    REMINDER_PROBABILITY,
    SMS_DELIVERY_PROBABILITY,
    STOPPED_AFTER_SHARE,
)
from campaign.demo.state import DeliveryPlan, SimulationState
from campaign.demo.vocabulary import CAMPAIGN_THEMES, EVENT_TYPES, SITE
from campaign.models import ABTest, Campaign, Channel, Delivery, MessageTemplate


class DeliveryPlanning(SimulationState):
    """Campaigns with their launch times, event templates and the plan of every delivery."""

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

    def _plan_deliveries(self, campaigns: list[tuple[Campaign, datetime]]) -> list[DeliveryPlan]:
        *past, (current, _), (upcoming, _) = campaigns
        plans: list[DeliveryPlan] = []
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
                   state: str = Delivery.State.FINISHED, priority: int = 5) -> DeliveryPlan:
        rng = self.rng
        plan = DeliveryPlan(
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

    def _proof(self, main: DeliveryPlan, campaign: Campaign) -> DeliveryPlan:
        start = main.scheduled_at - timedelta(days=1)
        addresses = PROOF_EMAIL_ADDRESSES if main.channel == Channel.EMAIL else PROOF_PHONES
        return DeliveryPlan(
            label=f"Proof: {main.label}", channel=main.channel, kind=Delivery.Kind.PROOF, state=Delivery.State.FINISHED,
            campaign_id=campaign.id, created_at=main.created_at, scheduled_at=start, started_at=start,
            validity_end=start + CHANNELS[main.channel].validity, proof_addresses=addresses, links=main.links,
        )

    def _plan_past_campaign(self, campaign: Campaign, launch: datetime, position: int, count: int) -> list[DeliveryPlan]:
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

    def _plan_current_campaign(self, campaign: Campaign) -> list[DeliveryPlan]:
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

    def _plan_upcoming_campaign(self, campaign: Campaign) -> list[DeliveryPlan]:
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

    def _scale_audiences(self, plans: list[DeliveryPlan]) -> None:
        """Scale the audience weights so that marketing sends ~MARKETING_MESSAGES_PER_PROFILE per profile."""
        reachable = {channel: len(indexes) for channel, indexes in self.recipients.reachable.items()}
        sending = [plan for plan in plans if plan.sends_messages and not plan.proof_addresses]
        expected = sum(plan.audience_weight * reachable[plan.channel] for plan in sending)
        scale = MARKETING_MESSAGES_PER_PROFILE * self.profile_count / expected if expected else 0.0
        for plan in sending:
            plan.audience_weight = min(1.0, plan.audience_weight * scale)

    def _plan_transactional(self) -> list[DeliveryPlan]:
        """One execution delivery per published template and month; the current month's is running."""
        first_month = month_start(self.transactional_start)
        current_month = month_start(self.anchor - timedelta(microseconds=1))
        plans = []
        for template in self.templates.values():
            if not template.published:
                continue
            month = first_month
            while month <= current_month:
                next_month = month_start(month + timedelta(days=32))
                running = month == current_month
                plans.append(DeliveryPlan(
                    label=f"{template.label} - {month:%Y-%m}", channel=template.channel, kind=Delivery.Kind.TRANSACTIONAL,
                    state=Delivery.State.IN_PROGRESS if running else Delivery.State.FINISHED, template_id=template.id,
                    created_at=month, scheduled_at=month, started_at=month, validity_end=next_month,
                ))
                month = next_month
        return plans

    def _write_deliveries(self, plans: list[DeliveryPlan]) -> None:
        self.writer.add_all(plan.to_model() for plan in plans)


def month_start(moment: datetime) -> datetime:
    """The first instant of ``moment``'s month: transactional deliveries are monthly executions."""
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
