"""The simulation's transactional events: the archived traffic of the last months, with their
messages, and the live events just received.

Why it exists: transactional messages follow events, not campaigns. The archived events were
processed within seconds and archived an hour later (mcSynch_local), each with its delivery log
in the month's execution delivery; the live ones wait for updateEventsStatus, a few of them
already too old, and some types have no published template.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from campaign.demo.parameters import (
    LIVE_EVENT_WINDOW,
    LIVE_EVENTS_PER_PROFILE,
    MIN_LIVE_EVENTS,
    SHARE_LIVE_EVENTS_TOO_OLD,
    TRANSACTIONAL_EVENTS_PER_PROFILE,
)
from campaign.demo.planning import month_start
from campaign.demo.sending import Sending
from campaign.demo.state import DeliveryPlan
from campaign.demo.vocabulary import EVENT_LOCALES, EVENT_TYPES, SITE, EventTypeSpec
from campaign.models import Channel, Event, EventHistory, EventStatus, LogStatus


class EventTraffic(Sending):
    """Archived transactional events with their messages, and live events."""

    def _send_transactional_traffic(self, plans: list[DeliveryPlan]) -> None:
        """Events of the last months, processed at once and archived: EventHistory + their logs."""
        rng, recipients = self.rng, self.recipients
        end = self.transactional_end
        span = (self.transactional_end - self.transactional_start).total_seconds()
        count = round(TRANSACTIONAL_EVENTS_PER_PROFILE * self.profile_count)
        times = sorted(end - timedelta(seconds=round(rng.uniform(0, span))) for _ in range(count))
        specs = rng.choices(EVENT_TYPES, [spec.weight for spec in EVENT_TYPES], k=count)
        by_template_month = {(plan.template_id, plan.started_at): plan for plan in plans}
        for created_at, spec in zip(times, specs, strict=True):
            event_id = self.ids.take(Event)
            index = self._event_recipient(spec)
            email, phone = recipients.emails[index], recipients.phones[index]
            address = phone if spec.channel == Channel.SMS else email
            template = self.templates.get(spec.event_type)
            processed_at = created_at + timedelta(seconds=round(rng.uniform(1, 20)))
            # No published template for its type and channel: updateEventsStatus did not take it into account.
            status, template_id, log_id = EventStatus.NOT_TAKEN_INTO_ACCOUNT, None, None
            if template is not None and template.published:
                plan = by_template_month[(template.id, month_start(created_at))]
                fate = recipients.fate(spec.channel, index) if spec.channel != Channel.PUSH else None
                log_id, log_status = self._send_message(
                    plan, profile_index=None, address=address, fate=fate, created_at=processed_at, send_at=processed_at,
                    halt_at=None, variant="", appeal=1.0, engaged_share=spec.engaged_share, event_id=event_id,
                )
                status, template_id = _EVENT_STATUS_OF_LOG[log_status], template.id
            self.writer.add_row(EventHistory, (
                event_id, spec.event_type, str(spec.channel), self._event_payload(spec, index),
                email if spec.channel != Channel.SMS else "", phone if spec.channel == Channel.SMS else "", str(status),
                template_id, log_id, created_at, processed_at, processed_at + timedelta(hours=1, minutes=rng.randint(0, 10)),
            ))

    def _write_live_events(self) -> None:
        """Events just received, waiting for updateEventsStatus (a few expired already)."""
        rng, recipients = self.rng, self.recipients
        count = max(MIN_LIVE_EVENTS, round(LIVE_EVENTS_PER_PROFILE * self.profile_count))
        window = LIVE_EVENT_WINDOW.total_seconds()
        times = []
        for _ in range(count):
            if rng.random() < SHARE_LIVE_EVENTS_TOO_OLD:
                times.append(self.anchor - timedelta(hours=rng.uniform(25, 47)))
            else:
                times.append(self.anchor - timedelta(seconds=rng.uniform(1, window)))
        times = sorted(at.replace(microsecond=0) for at in times)
        specs = rng.choices(EVENT_TYPES, [spec.weight for spec in EVENT_TYPES], k=count)
        for created_at, spec in zip(times, specs, strict=True):
            index = self._event_recipient(spec)
            self.writer.add(Event(
                id=self.ids.take(Event), event_type=spec.event_type, channel=spec.channel,
                payload=self._event_payload(spec, index), email=recipients.emails[index] if spec.channel != Channel.SMS else "",
                phone=recipients.phones[index] if spec.channel == Channel.SMS else "", status=EventStatus.PENDING,
                created_at=created_at, updated_at=created_at,
            ))

    def _event_recipient(self, spec: EventTypeSpec) -> int:
        """A profile with the address the event's channel needs (events carry an email or a phone)."""
        candidates = self.recipients.reachable[Channel.SMS if spec.channel == Channel.SMS else Channel.EMAIL]
        return self.rng.choice(candidates) if candidates else self.rng.randrange(self.profile_count)

    def _event_payload(self, spec: EventTypeSpec, index: int) -> dict[str, Any]:
        rng = self.rng
        payload: dict[str, Any] = {"profileRef": f"P{self.recipients.ids[index]}", "locale": rng.choice(EVENT_LOCALES)}
        if spec.event_type in ("order_confirmation", "shipping_update"):
            payload["orderId"] = f"ORD-{rng.randrange(10**7):07d}"
            payload |= {"total": round(rng.uniform(9.9, 420.0), 2), "currency": "EUR"}
        if spec.event_type == "shipping_update":
            payload["carrier"] = rng.choice(("Colissimo", "DHL", "UPS", "Chronopost"))
        if spec.event_type in ("cart_abandoned", "back_in_stock"):
            payload["sku"] = f"SKU-{rng.randrange(10**5):05d}"
        if spec.event_type == "password_reset":
            payload["resetUrl"] = f"{SITE}/account/reset/{rng.getrandbits(64):016x}"
        return payload


_EVENT_STATUS_OF_LOG = {
    LogStatus.SENT: EventStatus.SENT,
    LogStatus.FAILED: EventStatus.DELIVERY_FAILED,
    LogStatus.IGNORED: EventStatus.IGNORED,
    LogStatus.CANCELLED: EventStatus.DELIVERY_FAILED,
    LogStatus.PENDING: EventStatus.PENDING_DELIVERY,
}
