"""The simulation of sending: each message's outcome, the provider's answers and the recipient's
reactions (opens, clicks, opt-outs; spam complaints and SMS replies), split at the last
consolidation into consolidated rows and raw rows.

Why it exists: this is where the tables come to agree with each other. A message is sent, the
provider answers after a delay (delivered, bounce, or deferred then retried), and a delivered
message may be opened, clicked or opted out of later. What happened before the cutoff
(``anchor - UNCONSOLIDATED_WINDOW``) is written as updateDeliveryExecInfo would have left it
(log status, tracking rows, quarantine and denylist, opt-outs); what happened after it is kept as
raw feedback, hits and SMS replies; nothing happens after the anchor.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from campaign.demo.bounces import HARD, Bounce
from campaign.demo.channels import CHANNELS
from campaign.demo.parameters import (
    AB_VARIANT_B_APPEAL,
    CLICK_DELAY_MEAN,
    CLICK_WITHOUT_PIXEL_SHARE,
    COMPLAINT_DELAY_MEAN,
    COMPLAINT_RATE,
    EXTRA_OPEN_PROBABILITY,
    NEVER_ACCEPTED_SHARE,
    OPEN_DELAYS,
    REACTION_MAX_DELAY,
    RETRY_DELAY_MEAN,
    SHOWCASE_REACTION_DELAY,
    SMS_REPLY_DELAY_MEAN,
    SMS_REPLY_OPT_OUT_SHARE,
    SMS_REPLY_RATE,
    SMS_REPLY_UNKNOWN_NUMBER_SHARE,
)
from campaign.demo.state import DeliveryPlan, SimulationState
from campaign.demo.vocabulary import (
    COMPLAINT_TEXT,
    OPT_OUT_URL,
    SITE,
    SMS_OPT_OUT_REPLIES,
    SMS_OTHER_REPLIES,
    TRACKING_SITE,
)
from campaign.models import (
    Channel,
    Delivery,
    DeliveryLog,
    FailureReason,
    FailureType,
    LogStatus,
    Quarantine,
    SendingFeedback,
    TrackingLog,
    UrlType,
)


class Sending(SimulationState):
    """Messages of a delivery: targets, outcomes, provider answers and reactions."""

    def _send_delivery(self, plan: DeliveryPlan) -> None:
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
                if profile_index is not None:
                    self.ab_tested.add(profile_index)
                variant = "A" if rng.random() < 0.5 else "B"
                appeal *= AB_VARIANT_B_APPEAL if variant == "B" else 1.0
            self._send_message(
                plan, profile_index=profile_index, address=address, fate=fate, created_at=start, send_at=send_at,
                halt_at=halt_at, variant=variant, appeal=appeal, engaged_share=behaviour.engaged_share,
            )
        if plan.state in (Delivery.State.STOPPED, Delivery.State.FAILED):
            plan.finished_at = halt_at

    def _target(self, plan: DeliveryPlan) -> list[tuple[int | None, str, tuple[Bounce, float] | None]]:
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
        self, plan: DeliveryPlan, *, profile_index: int | None, address: str, fate: tuple[Bounce, float] | None,
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
        if delivered_at is None:
            return log_id, status
        if profile_index is not None and plan.kind == Delivery.Kind.MARKETING and self._complain_or_reply(
            plan, log_id=log_id, profile_index=profile_index, address=address, delivered_at=delivered_at,
        ):
            return log_id, status  # who complained or opted out by reply reacts no further
        if self.rng.random() < engaged_share * appeal:
            self._react(plan, log_id=log_id, profile_index=profile_index, delivered_at=delivered_at)
        return log_id, status

    def _complain_or_reply(
        self, plan: DeliveryPlan, *, log_id: int, profile_index: int, address: str, delivered_at: datetime,
    ) -> bool:
        """A spam complaint about a delivered email, or a reply to a delivered SMS (from the
        recipient's number, now and then from another). True when the recipient complained or
        replied an opt-out keyword."""
        rng = self.rng
        if plan.channel == Channel.EMAIL:
            if self._showcase(plan, profile_index, delivered_at):
                at = delivered_at + SHOWCASE_REACTION_DELAY
            elif rng.random() < COMPLAINT_RATE:
                at = delivered_at + timedelta(seconds=round(rng.expovariate(1 / COMPLAINT_DELAY_MEAN.total_seconds())))
            else:
                return False
            text = COMPLAINT_TEXT.format(domain=address.rpartition("@")[2])
            if at < self.cutoff:
                self._quarantine_state(Channel.EMAIL, address).record(at, HARD, FailureReason.ON_DENYLIST, text)
            elif at < self.anchor:
                self.raw_feedback.append((at, log_id, SendingFeedback.Outcome.COMPLAINT, text))
            return True
        if plan.channel != Channel.SMS:
            return False
        if self._showcase(plan, profile_index, delivered_at):
            self._reply(address, "STOP", delivered_at + SHOWCASE_REACTION_DELAY, opt_out=True)
            return True
        if rng.random() >= SMS_REPLY_RATE:
            return False
        opt_out = rng.random() < SMS_REPLY_OPT_OUT_SHARE
        text = rng.choice(SMS_OPT_OUT_REPLIES if opt_out else SMS_OTHER_REPLIES)
        if rng.random() < SMS_REPLY_UNKNOWN_NUMBER_SHARE:
            address = f"+447700900{rng.randrange(1000):03d}"  # a number reserved for fiction: no profile's
        at = delivered_at + timedelta(seconds=round(rng.expovariate(1 / SMS_REPLY_DELAY_MEAN.total_seconds())) + 1)
        self._reply(address, text, at, opt_out=opt_out)
        return opt_out and address == self.recipients.phones[profile_index]

    def _showcase(self, plan: DeliveryPlan, profile_index: int, delivered_at: datetime) -> bool:
        """Whether this message carries the showcase complaint or STOP reply of its channel: the
        first one of the running delivery delivered after the cutoff, early enough to be answered
        before the anchor, to a profile outside the A/B test that has not opted out."""
        due = (
            plan.channel in self.showcase_due and plan.state == Delivery.State.IN_PROGRESS and plan.ab_test_id is None
            and self.cutoff <= delivered_at and delivered_at + SHOWCASE_REACTION_DELAY < self.anchor
            and profile_index not in self.ab_tested and profile_index not in self.opted_out.get(plan.channel, {})
        )
        if due:
            self.showcase_due.discard(plan.channel)
        return due

    def _reply(self, phone: str, text: str, at: datetime, *, opt_out: bool) -> None:
        """An SMS reply: raw after the cutoff; before it, consolidated (an opt-out keyword put the
        number on the denylist)."""
        if at >= self.anchor:
            return
        if at >= self.cutoff:
            self.raw_replies.append((at, phone, text))
        elif opt_out:
            self._quarantine_state(Channel.SMS, phone).record(at, HARD, FailureReason.ON_DENYLIST, text)

    def _outcome(
        self, plan: DeliveryPlan, *, log_id: int, address: str, fate: tuple[Bounce, float] | None,
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
        self, plan: DeliveryPlan, *, address: str, fate: tuple[Bounce, float] | None, send_at: datetime,
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

    def _react(self, plan: DeliveryPlan, *, log_id: int, profile_index: int | None, delivered_at: datetime) -> None:
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
