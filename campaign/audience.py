"""Who a delivery may reach: the single place that turns profiles into push targets.

There is no sending engine in this project, but several parts choose recipients (a winner
delivery of an A/B test, the forecast, the demo data). Push recipients are devices, not profiles,
and two rules decide which devices may still be reached:

- a subscription disabled by mobileAppOptOutMgt (its token was reported unregistered or invalid)
  or by an operator is never targeted again: deliveries created afterwards skip disabled
  subscriptions;
- a profile that opted out of push (``Profile.blocklisted_push``) is not contacted by push at all.

Every selection of push recipients goes through :func:`push_targets`, so those rules live in one
place and a test of this function is a test of all of them.
"""

from __future__ import annotations

from django.db.models import QuerySet

from campaign.models import AppSubscription, Profile


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
