"""Who a delivery may reach: push_targets skips disabled subscriptions and profiles that opted out
of push; address_targets skips opted-out profiles and addresses quarantined or on the denylist;
an A/B winner goes to the rest of the test's target, with the same exclusions."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaign.ab_tests import winner_targets
from campaign.audience import address_targets, channel_targets, push_targets
from campaign.models import Channel, LogStatus, Profile, Quarantine
from tests import factories

pytestmark = pytest.mark.django_db


def tokens(queryset) -> set[str]:
    return set(queryset.values_list("device_token", flat=True))


def test_push_targets_are_the_enabled_subscriptions_of_the_profiles_given():
    alice, bob, carol = factories.ProfileFactory(), factories.ProfileFactory(), factories.ProfileFactory()
    factories.AppSubscriptionFactory(profile=alice, device_token="alice-phone")
    factories.AppSubscriptionFactory(profile=alice, device_token="alice-tablet")
    factories.AppSubscriptionFactory(profile=alice, device_token="alice-old-phone", disabled=True, disabled_reason=1)
    factories.AppSubscriptionFactory(profile=bob, device_token="bob-phone")
    factories.AppSubscriptionFactory(profile=carol, device_token="carol-phone")

    targets = push_targets(Profile.objects.filter(pk__in=[alice.pk, bob.pk]))

    assert tokens(targets) == {"alice-phone", "alice-tablet", "bob-phone"}


def test_profiles_that_opted_out_of_push_are_not_targets():
    opted_out = factories.ProfileFactory(blocklisted_push=True)
    email_only_opt_out = factories.ProfileFactory(blocklisted_email=True)
    factories.AppSubscriptionFactory(profile=opted_out, device_token="opted-out")
    factories.AppSubscriptionFactory(profile=email_only_opt_out, device_token="still-reachable-by-push")

    assert tokens(push_targets(Profile.objects.all())) == {"still-reachable-by-push"}


def test_push_targets_can_be_limited_to_one_application():
    profile = factories.ProfileFactory()
    factories.AppSubscriptionFactory(profile=profile, application="com.example.shop", device_token="shop")
    factories.AppSubscriptionFactory(profile=profile, application="com.example.news", device_token="news")

    assert tokens(push_targets(Profile.objects.all(), application="com.example.news")) == {"news"}


def test_push_targets_is_one_query_with_the_profiles_as_a_subquery():
    profile = factories.ProfileFactory()
    factories.AppSubscriptionFactory(profile=profile, device_token="one")

    with CaptureQueriesContext(connection) as queries:
        result = list(push_targets(Profile.objects.filter(email=profile.email)))

    assert [subscription.device_token for subscription in result] == ["one"]
    assert len(queries.captured_queries) == 1, "the profiles are never loaded into Python"


def ids(queryset) -> set[int]:
    return set(queryset.values_list("pk", flat=True))


@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS])
def test_address_targets_skip_opt_outs_empty_addresses_and_quarantined_or_denylisted_ones(channel):
    field = "email" if channel == Channel.EMAIL else "phone"
    fine, erroneous, quarantined, denylisted, empty = (factories.ProfileFactory() for _ in range(5))
    opted_out = factories.ProfileFactory(**{f"blocklisted_{channel}": True})
    Profile.objects.filter(pk=empty.pk).update(**{field: ""})
    for who, status in ((erroneous, Quarantine.Status.ERRONEOUS), (quarantined, Quarantine.Status.QUARANTINED),
                        (denylisted, Quarantine.Status.DENYLISTED)):
        factories.QuarantineFactory(address=getattr(who, field), channel=channel, status=status)
    other_channel = Channel.SMS if channel == Channel.EMAIL else Channel.EMAIL
    factories.QuarantineFactory(address=getattr(fine, field), channel=other_channel, status=Quarantine.Status.DENYLISTED)

    assert ids(address_targets(Profile.objects.all(), channel=channel)) == {fine.pk, erroneous.pk}
    assert ids(channel_targets(Profile.objects.all(), channel=channel)) == {fine.pk, erroneous.pk}
    assert opted_out.pk not in ids(address_targets(Profile.objects.all(), channel=channel))


def test_channel_targets_for_push_are_the_profiles_with_a_push_target():
    with_device, without_device, opted_out = (factories.ProfileFactory() for _ in range(3))
    Profile.objects.filter(pk=opted_out.pk).update(blocklisted_push=True)
    factories.AppSubscriptionFactory(profile=with_device)
    factories.AppSubscriptionFactory(profile=opted_out)

    assert ids(channel_targets(Profile.objects.all(), channel=Channel.PUSH)) == {with_device.pk}


def test_the_winner_goes_to_the_rest_of_the_target_without_denylisted_or_quarantined_addresses():
    tested, rest, denylisted, quarantined, opted_out = (factories.ProfileFactory() for _ in range(5))
    Profile.objects.filter(pk=opted_out.pk).update(blocklisted_email=True)
    test = factories.ABTestFactory()
    test_delivery = factories.DeliveryFactory(channel=Channel.EMAIL, ab_test=test)
    factories.DeliveryLogFactory(delivery=test_delivery, profile=tested, status=LogStatus.SENT, variant="A")
    factories.QuarantineFactory(address=denylisted.email, status=Quarantine.Status.DENYLISTED)
    factories.QuarantineFactory(address=quarantined.email, status=Quarantine.Status.QUARANTINED)

    assert ids(winner_targets(test)) == {rest.pk}
    assert ids(winner_targets(test, Profile.objects.filter(pk__in=[tested.pk, denylisted.pk]))) == set()


def test_a_test_without_a_test_delivery_has_no_winner_targets():
    factories.ProfileFactory()

    assert ids(winner_targets(factories.ABTestFactory())) == set()
