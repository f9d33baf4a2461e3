"""The simulation's order: one random generator drawn in a fixed order, area by area.

Why it exists: determinism depends on the order of the draws, so that order is stated in one
place, :meth:`DemoGenerator.run`; each area of the simulation is a module of its own
(:mod:`~campaign.demo.profiles`, :mod:`~campaign.demo.planning`, :mod:`~campaign.demo.sending`,
:mod:`~campaign.demo.events`, :mod:`~campaign.demo.finishing`), combined here into one generator
that shares one :class:`~campaign.demo.state.SimulationState`.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import models

from campaign.demo.bounces import DEFAULT_BOUNCE_RULES, DEFAULT_DOMAIN_RULES, DEFAULT_MX_RULES
from campaign.demo.events import EventTraffic
from campaign.demo.finishing import Finishing
from campaign.demo.planning import DeliveryPlanning
from campaign.demo.profiles import ProfileSimulation
from campaign.models import BounceRule, Delivery, DomainRule, ExternalAccount, MxRule


class DemoGenerator(ProfileSimulation, DeliveryPlanning, EventTraffic, Finishing):
    """Draws the whole data set from one random generator, in a fixed order."""

    def run(self) -> None:
        self.user = demo_user()
        self._write_rules_and_accounts()
        self._write_profiles()
        self._write_subscriptions()
        self._seed_prior_quarantine()
        campaigns = self._write_campaigns()
        self._write_templates()
        plans = self._plan_deliveries(campaigns)
        self._write_deliveries(plans)
        self.writer.flush_all()  # reference rows first: logs and tracking rows point to them
        marketing = [p for p in plans if p.sends_messages and p.kind != Delivery.Kind.TRANSACTIONAL]
        for plan in sorted(marketing, key=lambda p: (p.started_at, p.id)):  # quarantine and opt-outs build up in time order
            self._send_delivery(plan)
        self._send_transactional_traffic([p for p in plans if p.kind == Delivery.Kind.TRANSACTIONAL])
        self._write_live_events()
        self._write_raw_rows()
        self._write_quarantine()
        self._write_audience()
        self._write_report()
        self.writer.flush_all()
        self._finish_deliveries(plans)
        self._finish_profiles()

    # -- reference data ----------------------------------------------------------------------

    def _write_rules_and_accounts(self) -> None:
        """Default deliverability rules and the external accounts, unless they are set up already
        (they are configuration more than data: an operator may have loaded them before)."""
        written: list[type[models.Model]] = []
        if not BounceRule.objects.exists():
            for priority, pattern, failure_type, failure_reason in DEFAULT_BOUNCE_RULES:
                self.writer.add(BounceRule(
                    pattern=pattern, failure_type=failure_type, failure_reason=failure_reason, priority=priority,
                ))
            written.append(BounceRule)
        if not MxRule.objects.exists():
            for mask, connections, per_hour in DEFAULT_MX_RULES:
                self.writer.add(MxRule(mx_mask=mask, max_connections=connections, max_messages_per_hour=per_hour))
            written.append(MxRule)
        if not DomainRule.objects.exists():
            for domain, options in DEFAULT_DOMAIN_RULES:
                self.writer.add(DomainRule(domain=domain, options=options))
            written.append(DomainRule)
        existing = set(ExternalAccount.objects.values_list("name", flat=True))
        for kind in ExternalAccount.Kind:
            if kind.value not in existing:
                # Disabled until an operator sets the URL and the token variable for real.
                self.writer.add(ExternalAccount(
                    name=kind.value, kind=kind, base_url=f"https://{kind.value}.example.invalid",
                    token_env=f"CAMPAIGN_TOKEN_{kind.value.upper()}", timeout_s=10.0, enabled=False,
                ))
        self.writer.flush_all()
        # bulk_create stamps auto_now fields with the wall clock: pin them to the data's time line.
        for model in written:
            model.objects.update(updated_at=self.anchor - timedelta(days=30))


def demo_user() -> AbstractBaseUser:
    """The owner and report recipient: the first superuser, else a staff user who cannot log in."""
    user_model = get_user_model()
    user = user_model.objects.filter(is_superuser=True).order_by("id").first()
    if user is not None:
        return user
    user = user_model.objects.filter(username="analyst").first()
    if user is None:
        user = user_model(username="analyst", email="analyst@localhost", is_staff=True)
        user.set_unusable_password()
        user.save()
    return user
