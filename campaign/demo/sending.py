"""The simulation of sending: each message's outcome, the provider's answers and the recipient's
reactions, split at the last consolidation into consolidated rows and raw rows.

Why it exists: this is where the tables come to agree with each other. A message is sent, the
provider answers after a delay (delivered, bounce, or deferred then retried), and a delivered
message may be opened, clicked or opted out of later. What happened before the cutoff
(``anchor - UNCONSOLIDATED_WINDOW``) is written as updateDeliveryExecInfo would have left it
(log status, tracking rows, quarantine, opt-outs); what happened after it is kept as raw feedback
and hits; nothing happens after the anchor.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from campaign.demo.bounces import Bounce
from campaign.demo.channels import CHANNELS
from campaign.demo.parameters import (
    AB_VARIANT_B_APPEAL,
    CLICK_DELAY_MEAN,
    CLICK_WITHOUT_PIXEL_SHARE,
    EXTRA_OPEN_PROBABILITY,
    NEVER_ACCEPTED_SHARE,
    OPEN_DELAYS,
    REACTION_MAX_DELAY,
    RETRY_DELAY_MEAN,
)
from campaign.demo.state import DeliveryPlan, SimulationState
from campaign.demo.vocabulary import OPT_OUT_URL, SITE, TRACKING_SITE
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
        if delivered_at is not None and self.rng.random() < engaged_share * appeal:
            self._react(plan, log_id=log_id, profile_index=profile_index, delivered_at=delivered_at)
        return log_id, status

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
