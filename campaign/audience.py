"""Who a delivery may reach: the single place that turns profiles into targets.

There is no sending engine in this project, but several parts choose recipients (a winner
delivery of an A/B test, the forecast, the demo data). The rules that decide who may still be
contacted on a channel live here, so that a test of these functions is a test of all of them:

- a profile that opted out of a channel (``Profile.blocklisted_<channel>``) is not contacted on it;
- an email address or a phone number that is quarantined or on the denylist (``Quarantine``
  status ``quarantined`` or ``denylisted`` on that channel) is not contacted, whoever holds it; an
  ``erroneous`` one is still tried;
- push recipients are devices, not profiles: a subscription disabled by mobileAppOptOutMgt (its
  token was reported unregistered or invalid) or by an operator is never targeted again.

Every selection goes through :func:`channel_targets`, :func:`address_targets` or
:func:`push_targets`; :func:`on_denylist` is the test for logs prepared before their address went
on the denylist.
"""

from __future__ import annotations

from django.db.models import Exists, OuterRef, QuerySet

from campaign.models import AppSubscription, Channel, Profile, Quarantine

#: Quarantine statuses whose address is never targeted (an ``erroneous`` address still is).
EXCLUDED_QUARANTINE_STATUSES = (Quarantine.Status.QUARANTINED, Quarantine.Status.DENYLISTED)

#: The profile flag that opts out of each channel.
BLOCKLIST_FIELD = {
    Channel.EMAIL: "blocklisted_email",
    Channel.SMS: "blocklisted_sms",
    Channel.PUSH: "blocklisted_push",
}

#: The profile column holding the address, for the channels whose address is on the profile.
ADDRESS_FIELD = {Channel.EMAIL: "email", Channel.SMS: "phone"}


def push_targets(profiles: QuerySet[Profile], *, application: str | None = None) -> QuerySet[AppSubscription]:
    """The enabled push subscriptions of ``profiles`` (a queryset, evaluated as a subquery: never
    loaded into Python), leaving out profiles that opted out of push; only those of
    ``application`` when given."""
    targets = AppSubscription.objects.filter(
        profile__in=profiles.values("pk"), disabled=False, profile__blocklisted_push=False,
    )
    if application is not None:
        targets = targets.filter(application=application)
    return targets


def excluded_address(address: OuterRef | str, channel: str) -> Exists:
    """True when ``address`` (a value, or a column of the outer query) is quarantined or on the
    denylist on ``channel``: one probe of the quarantine's (address, channel) index."""
    return Exists(Quarantine.objects.filter(address=address, channel=channel, status__in=EXCLUDED_QUARANTINE_STATUSES))


def on_denylist(address: OuterRef | str, channel: str) -> Exists:
    """True when ``address`` is on the denylist on ``channel``."""
    return Exists(Quarantine.objects.filter(address=address, channel=channel, status=Quarantine.Status.DENYLISTED))


def address_targets(profiles: QuerySet[Profile], *, channel: str) -> QuerySet[Profile]:
    """The profiles of ``profiles`` an email or SMS delivery may contact: not opted out of the
    channel, with an address that is neither quarantined nor on the denylist."""
    field = ADDRESS_FIELD[channel]
    return (profiles.filter(**{BLOCKLIST_FIELD[channel]: False})
            .exclude(**{field: ""})
            .exclude(excluded_address(OuterRef(field), channel)))


def channel_targets(profiles: QuerySet[Profile], *, channel: str) -> QuerySet[Profile]:
    """The profiles of ``profiles`` a delivery on ``channel`` may contact: :func:`address_targets`
    for email and SMS, the profiles with a push target (:func:`push_targets`) for push."""
    if channel == Channel.PUSH:
        return profiles.filter(Exists(push_targets(profiles).filter(profile_id=OuterRef("pk"))))
    return address_targets(profiles, channel=channel)
