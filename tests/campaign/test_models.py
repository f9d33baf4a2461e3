"""The domain model's contracts: the platform's published codes, the unique rows the workflows rely
on to be safe to run twice, the cross-field checks of ``clean()``, and logs that outlive each other."""

from __future__ import annotations

import datetime

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from campaign.models import (
    AppSubscription,
    Channel,
    DeliveryAggregate,
    DeliveryLog,
    EventHistory,
    FailureReason,
    FailureType,
    LogStatus,
    Quarantine,
    ReportSend,
    SendingFeedback,
    TrackingHit,
    TrackingLog,
    UrlType,
)
from tests import factories

# --- Codes: the platform's published values, checked against its KPI formulas ------------------


def test_log_status_codes_are_the_platform_broadlog_codes() -> None:
    assert {status.name: status.value for status in LogStatus} == {
        "PENDING": 6, "SENT": 1, "FAILED": 2, "IGNORED": 0, "CANCELLED": 7,
    }


def test_failure_type_codes_are_soft_1_hard_2_ignored_3() -> None:
    assert (FailureType.SOFT, FailureType.HARD, FailureType.IGNORED) == (1, 2, 3)
    assert set(FailureType.values) == {0, 1, 2, 3}


def test_failure_reason_codes_are_the_platform_values() -> None:
    assert {reason.name: reason.value for reason in FailureReason} == {
        "USER_UNKNOWN": 1, "INVALID_DOMAIN": 2, "UNREACHABLE": 3, "ACCOUNT_DISABLED": 4, "MAILBOX_FULL": 5,
        "NOT_CONNECTED": 6, "ON_DENYLIST": 8, "REFUSED": 20, "NONE": 0,
    }


def test_url_type_codes_are_the_platform_values() -> None:
    """1 click, 2 open, 3 opt-out, 6 mirror page, 7 push impression, and the two further click codes
    (10, 11) the platform's indicator formulas count."""
    assert {url_type.name: url_type.value for url_type in UrlType} == {
        "CLICK": 1, "OPEN": 2, "OPT_OUT": 3, "MIRROR_PAGE": 6, "IMPRESSION": 7, "OTHER_CLICK_10": 10,
        "OTHER_CLICK_11": 11,
    }


def test_channels_are_email_sms_and_push() -> None:
    assert set(Channel.values) == {"email", "sms", "push"}


@pytest.mark.django_db
def test_codes_are_stored_as_plain_integers() -> None:
    """Exports and KPI queries read the raw column: it must hold the code, not a label."""
    log = factories.DeliveryLogFactory(status=LogStatus.FAILED, failure_type=FailureType.HARD,
                                       failure_reason=FailureReason.REFUSED)

    stored = DeliveryLog.objects.filter(pk=log.pk).values("status", "failure_type", "failure_reason").get()

    assert stored == {"status": 2, "failure_type": 2, "failure_reason": 20}


# --- Unique rows --------------------------------------------------------------------------------


def assert_refused_as_duplicate(create) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        create()


@pytest.mark.django_db
def test_quarantine_holds_one_row_per_address_and_channel() -> None:
    factories.QuarantineFactory(address="jane@example.com", channel=Channel.EMAIL)

    assert_refused_as_duplicate(lambda: factories.QuarantineFactory(address="jane@example.com", channel=Channel.EMAIL))
    factories.QuarantineFactory(address="jane@example.com", channel=Channel.SMS)
    assert Quarantine.objects.filter(address="jane@example.com").count() == 2


@pytest.mark.django_db
def test_app_subscription_holds_one_row_per_application_and_device_token() -> None:
    factories.AppSubscriptionFactory(application="com.example.shop", device_token="token-1")

    assert_refused_as_duplicate(lambda: factories.AppSubscriptionFactory(application="com.example.shop", device_token="token-1"))
    factories.AppSubscriptionFactory(application="com.example.news", device_token="token-1")
    assert AppSubscription.objects.filter(device_token="token-1").count() == 2


@pytest.mark.django_db
def test_delivery_aggregate_holds_one_row_per_day_delivery_and_channel() -> None:
    day = datetime.date(2025, 3, 1)
    aggregate = factories.DeliveryAggregateFactory(day=day, channel=Channel.EMAIL)

    assert_refused_as_duplicate(
        lambda: factories.DeliveryAggregateFactory(day=day, delivery=aggregate.delivery, channel=Channel.EMAIL))
    factories.DeliveryAggregateFactory(day=day + datetime.timedelta(days=1), delivery=aggregate.delivery, channel=Channel.EMAIL)
    assert DeliveryAggregate.objects.filter(delivery=aggregate.delivery).count() == 2


@pytest.mark.django_db
def test_report_send_holds_one_row_per_share_and_due_time() -> None:
    due_at = timezone.now().replace(microsecond=0)
    send = factories.ReportSendFactory(due_at=due_at)

    assert_refused_as_duplicate(lambda: factories.ReportSendFactory(share=send.share, due_at=due_at))
    factories.ReportSendFactory(share=send.share, due_at=due_at + datetime.timedelta(days=1))
    assert ReportSend.objects.filter(share=send.share).count() == 2


@pytest.mark.django_db
def test_an_event_can_be_archived_only_once_by_key_on_sqlite_by_the_archiving_on_postgresql(is_postgres) -> None:
    factories.EventHistoryFactory(id=4242)

    if not is_postgres:
        assert_refused_as_duplicate(lambda: factories.EventHistoryFactory(id=4242))
        assert EventHistory.objects.filter(id=4242).count() == 1
        return
    # The partitioned archive's key must include its partition key: mcSynch_local skips an id
    # already archived (its tests show it), nothing else writes the archive.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
                       [EventHistory._meta.db_table])
        assert cursor.fetchone() == ("PRIMARY KEY (id, archived_at)",)


# --- clean(): cross-field checks the admin and the services rely on -----------------------------


@pytest.mark.django_db
def test_ab_test_shorter_than_one_hour_is_refused() -> None:
    ab_test = factories.ABTestFactory(test_duration=datetime.timedelta(minutes=59))

    with pytest.raises(ValidationError) as refused:
        ab_test.full_clean()

    assert "test_duration" in refused.value.message_dict
    ab_test.test_duration = datetime.timedelta(hours=1)
    ab_test.full_clean()


@pytest.mark.django_db
def test_ab_test_winner_must_be_one_of_its_variants() -> None:
    ab_test = factories.ABTestFactory(variant_count=2, winner_variant="C")

    with pytest.raises(ValidationError) as refused:
        ab_test.full_clean()

    assert refused.value.message_dict["winner_variant"] == ["Choose one of A, B."]
    ab_test.variant_count = 3
    ab_test.full_clean()


@pytest.mark.django_db
def test_bounce_rule_with_an_invalid_regular_expression_is_refused_with_the_reason() -> None:
    rule = factories.BounceRuleFactory.build(pattern="mailbox (full")

    with pytest.raises(ValidationError) as refused:
        rule.full_clean()

    [message] = refused.value.message_dict["pattern"]
    assert message.startswith("Not a valid regular expression: missing ), unterminated subpattern")


@pytest.mark.django_db
def test_bounce_rule_with_a_valid_regular_expression_is_accepted() -> None:
    factories.BounceRuleFactory.build(pattern=r"mailbox (is )?full|quota exceeded").full_clean()


@pytest.mark.django_db
@pytest.mark.parametrize("token_env", ["analytics_token", "ANALYTICS-TOKEN", "1TOKEN", "Bearer abc123", "",
                                       "ANALYTICS_TOKEN", "SECRET_KEY", "CAMPAIGN_TOKEN_", "campaign_token_analytics"])
def test_external_account_token_variable_must_carry_the_token_prefix(token_env: str) -> None:
    account = factories.ExternalAccountFactory.build(token_env=token_env)

    with pytest.raises(ValidationError) as refused:
        account.full_clean()

    assert "token_env" in refused.value.message_dict


@pytest.mark.django_db
def test_external_account_token_variable_name_is_accepted() -> None:
    factories.ExternalAccountFactory.build(token_env="CAMPAIGN_TOKEN_ANALYTICS_2").full_clean()


@pytest.mark.django_db
def test_report_share_ending_before_it_starts_is_refused() -> None:
    share = factories.ReportShareFactory(start_date=datetime.date(2025, 3, 10), end_date=datetime.date(2025, 3, 9))

    with pytest.raises(ValidationError) as refused:
        share.full_clean()

    assert "end_date" in refused.value.message_dict
    share.end_date = share.start_date
    share.full_clean()


# --- Logs outlive each other --------------------------------------------------------------------


@pytest.mark.django_db
def test_purging_a_delivery_log_keeps_the_rows_that_point_to_it() -> None:
    tracking = factories.TrackingLogFactory()
    log = tracking.delivery_log
    feedback = factories.SendingFeedbackFactory(delivery_log=log)
    hit = factories.TrackingHitFactory(delivery_log=log)
    event = factories.EventFactory(delivery_log=log)

    DeliveryLog.objects.filter(pk=log.pk).delete()
    # On PostgreSQL foreign keys are checked at commit; check them now, inside the test.
    connection.check_constraints()

    assert TrackingLog.objects.filter(pk=tracking.pk, delivery_log_id=log.pk).exists()
    assert SendingFeedback.objects.filter(pk=feedback.pk, delivery_log_id=log.pk).exists()
    assert TrackingHit.objects.filter(pk=hit.pk, delivery_log_id=log.pk).exists()
    event.refresh_from_db()
    assert event.delivery_log_id == log.pk


@pytest.mark.django_db
def test_deleting_a_delivery_log_instance_does_not_cascade_to_tracking_logs() -> None:
    """The ORM's own collector (``instance.delete()``) must not follow the reverse relation either."""
    tracking = factories.TrackingLogFactory()

    _, per_model = tracking.delivery_log.delete()

    assert per_model == {"campaign.DeliveryLog": 1}
    assert TrackingLog.objects.filter(pk=tracking.pk).exists()
