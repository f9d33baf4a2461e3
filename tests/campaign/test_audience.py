"""push_targets: the one selection of push recipients skips disabled subscriptions and profiles
that opted out of push."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaign.audience import push_targets
from campaign.models import Profile
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
