"""The campaign admin: every page loads, access is refused to the right people, read-only tables stay
read-only, and the big tables' pages stay usable (raw ids, exact searches, no lost orphans)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.widgets import ForeignKeyRawIdWidget
from django.contrib.auth.models import Permission
from django.db import connection, models
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from campaign.admin import ReadOnlyAdmin
from campaign.models import (
    ABTest,
    APIKey,
    AppSubscription,
    AudienceMember,
    BounceRule,
    Campaign,
    CustomerMetrics,
    Delivery,
    DeliveryAggregate,
    DeliveryLog,
    DomainRule,
    Event,
    EventHistory,
    ExternalAccount,
    ForecastLog,
    InboundSms,
    KpiShareState,
    LogStatus,
    MessageTemplate,
    MxRule,
    Profile,
    Quarantine,
    Report,
    ReportSend,
    ReportShare,
    SendingFeedback,
    SharedAudience,
    SharedKpi,
    StagedAudienceMember,
    TrackingHit,
    TrackingLog,
)
from tests import factories

pytestmark = pytest.mark.django_db

#: One factory per model of the campaign app, to put a row on every admin page.
ROW_FACTORIES: dict[type[models.Model], Callable[..., models.Model]] = {
    Profile: factories.ProfileFactory,
    Campaign: factories.CampaignFactory,
    ABTest: factories.ABTestFactory,
    MessageTemplate: factories.MessageTemplateFactory,
    Delivery: factories.DeliveryFactory,
    DeliveryLog: factories.DeliveryLogFactory,
    SendingFeedback: factories.SendingFeedbackFactory,
    TrackingHit: factories.TrackingHitFactory,
    InboundSms: factories.InboundSmsFactory,
    TrackingLog: factories.TrackingLogFactory,
    Quarantine: factories.QuarantineFactory,
    AppSubscription: factories.AppSubscriptionFactory,
    Event: factories.EventFactory,
    EventHistory: factories.EventHistoryFactory,
    DeliveryAggregate: factories.DeliveryAggregateFactory,
    ForecastLog: factories.ForecastLogFactory,
    Report: factories.ReportFactory,
    ReportShare: factories.ReportShareFactory,
    ReportSend: factories.ReportSendFactory,
    CustomerMetrics: factories.CustomerMetricsFactory,
    ExternalAccount: factories.ExternalAccountFactory,
    SharedAudience: factories.SharedAudienceFactory,
    AudienceMember: factories.AudienceMemberFactory,
    BounceRule: factories.BounceRuleFactory,
    MxRule: factories.MxRuleFactory,
    DomainRule: factories.DomainRuleFactory,
    APIKey: factories.APIKeyFactory,
    SharedKpi: factories.SharedKpiFactory,
    KpiShareState: factories.KpiShareStateFactory,
    StagedAudienceMember: factories.StagedAudienceMemberFactory,
}

#: Written by other systems or computed by workflows: viewing only.
READ_ONLY_MODELS = [
    SendingFeedback, TrackingHit, InboundSms, DeliveryLog, TrackingLog, EventHistory,
    DeliveryAggregate, ForecastLog, CustomerMetrics, ReportSend, AudienceMember, SharedKpi, KpiShareState,
    StagedAudienceMember,
]
EDITABLE_MODELS = [model for model in ROW_FACTORIES if model not in READ_ONLY_MODELS]

#: Tables that grow without bound: their changelist never counts the whole table.
LARGE_MODELS = [Profile, DeliveryLog, SendingFeedback, TrackingHit, InboundSms, TrackingLog, Event, EventHistory, ForecastLog]

ALL_MODELS = list(ROW_FACTORIES)


def admin_url(model: type[models.Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def ids(models_: list[type[models.Model]]) -> list[str]:
    return [model.__name__ for model in models_]


@pytest.fixture
def superuser_client(client: Client) -> Client:
    client.force_login(factories.SuperUserFactory())
    return client


# --- Coverage of the model ----------------------------------------------------------------------


def test_every_campaign_model_has_an_admin_page() -> None:
    campaign_models = set(apps.get_app_config("campaign").get_models())
    registered = {model for model in admin.site._registry if model._meta.app_label == "campaign"}
    assert campaign_models - registered == set()
    # The tests below cover exactly the registered models.
    assert set(ROW_FACTORIES) == campaign_models


def test_read_only_models_are_exactly_the_ones_other_systems_or_workflows_write() -> None:
    read_only = {model for model, model_admin in admin.site._registry.items()
                 if model._meta.app_label == "campaign" and isinstance(model_admin, ReadOnlyAdmin)}
    assert read_only == set(READ_ONLY_MODELS)


# --- Pages load for a superuser -----------------------------------------------------------------


@pytest.mark.parametrize("model", ALL_MODELS, ids=ids(ALL_MODELS))
def test_changelist_lists_the_rows_for_a_superuser(superuser_client: Client, model: type[models.Model]) -> None:
    row = ROW_FACTORIES[model]()

    response = superuser_client.get(admin_url(model, "changelist"))

    assert response.status_code == 200
    assert row.pk in [obj.pk for obj in response.context["cl"].result_list]


@pytest.mark.parametrize("model", ALL_MODELS, ids=ids(ALL_MODELS))
def test_change_page_shows_the_row_for_a_superuser(superuser_client: Client, model: type[models.Model]) -> None:
    row = ROW_FACTORIES[model]()

    response = superuser_client.get(admin_url(model, "change", row.pk))

    assert response.status_code == 200
    assert response.context["original"].pk == row.pk


@pytest.mark.parametrize("model", EDITABLE_MODELS, ids=ids(EDITABLE_MODELS))
def test_add_page_loads_for_editable_models(superuser_client: Client, model: type[models.Model]) -> None:
    response = superuser_client.get(admin_url(model, "add"))

    assert response.status_code == 200
    assert response.context["add"] is True


# --- Access control -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ALL_MODELS, ids=ids(ALL_MODELS))
def test_staff_without_permissions_is_refused_the_changelist(client: Client, model: type[models.Model]) -> None:
    client.force_login(factories.StaffUserFactory())

    response = client.get(admin_url(model, "changelist"))

    assert response.status_code == 403


@pytest.mark.parametrize("model", ALL_MODELS, ids=ids(ALL_MODELS))
def test_non_staff_user_is_sent_to_the_login_page(client: Client, model: type[models.Model]) -> None:
    client.force_login(factories.UserFactory())
    url = admin_url(model, "changelist")

    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert url in response["Location"]


def test_view_permission_is_enough_to_read_a_read_only_table(client: Client) -> None:
    log = factories.DeliveryLogFactory()
    viewer = factories.StaffUserFactory()
    viewer.user_permissions.add(Permission.objects.get(codename="view_deliverylog"))
    client.force_login(viewer)

    assert client.get(admin_url(DeliveryLog, "changelist")).status_code == 200
    assert client.get(admin_url(DeliveryLog, "change", log.pk)).status_code == 200
    assert client.get(admin_url(DeliveryLog, "add")).status_code == 403


def test_change_permission_on_a_read_only_table_still_does_not_allow_changes(client: Client) -> None:
    log = factories.DeliveryLogFactory(status=LogStatus.PENDING)
    editor = factories.StaffUserFactory()
    editor.user_permissions.add(*Permission.objects.filter(codename__in=["change_deliverylog", "delete_deliverylog"]))
    client.force_login(editor)

    response = client.post(admin_url(DeliveryLog, "change", log.pk), {"status": LogStatus.SENT})

    assert response.status_code == 403
    log.refresh_from_db()
    assert log.status == LogStatus.PENDING


# --- Read-only tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", READ_ONLY_MODELS, ids=ids(READ_ONLY_MODELS))
def test_read_only_table_refuses_add_change_and_delete(superuser_client: Client, model: type[models.Model]) -> None:
    row = ROW_FACTORIES[model]()

    assert superuser_client.get(admin_url(model, "add")).status_code == 403
    assert superuser_client.post(admin_url(model, "change", row.pk), {}).status_code == 403
    assert superuser_client.get(admin_url(model, "delete", row.pk)).status_code == 403
    assert superuser_client.post(admin_url(model, "delete", row.pk), {"post": "yes"}).status_code == 403
    assert model.objects.filter(pk=row.pk).exists()


@pytest.mark.parametrize("model", READ_ONLY_MODELS, ids=ids(READ_ONLY_MODELS))
def test_read_only_table_offers_no_delete_action_nor_save_button(superuser_client: Client, model: type[models.Model]) -> None:
    row = ROW_FACTORIES[model]()

    changelist = superuser_client.get(admin_url(model, "changelist"))
    change_page = superuser_client.get(admin_url(model, "change", row.pk))

    assert b'value="delete_selected"' not in changelist.content
    assert b'name="_save"' not in change_page.content


def test_bulk_delete_action_is_offered_on_an_editable_table(superuser_client: Client) -> None:
    """The counterpart of the read-only checks above: the markers they look for do exist."""
    row = factories.QuarantineFactory()

    changelist = superuser_client.get(admin_url(Quarantine, "changelist"))
    change_page = superuser_client.get(admin_url(Quarantine, "change", row.pk))

    assert b'value="delete_selected"' in changelist.content
    assert b'name="_save"' in change_page.content


# --- Big tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", LARGE_MODELS, ids=ids(LARGE_MODELS))
def test_large_table_changelist_does_not_count_the_whole_table(superuser_client: Client, model: type[models.Model]) -> None:
    ROW_FACTORIES[model]()

    response = superuser_client.get(admin_url(model, "changelist"), {"q": "no-such-thing"})

    assert response.status_code == 200
    assert response.context["cl"].full_result_count is None


@pytest.mark.parametrize("model", EDITABLE_MODELS, ids=ids(EDITABLE_MODELS))
def test_foreign_keys_to_big_tables_are_raw_ids_not_select_boxes(superuser_client: Client, model: type[models.Model]) -> None:
    response = superuser_client.get(admin_url(model, "add"))

    form = response.context["adminform"].form
    for field in model._meta.get_fields():
        if field.is_relation and field.concrete and field.related_model in (Profile, DeliveryLog) and field.name in form.fields:
            widget = getattr(form.fields[field.name].widget, "widget", form.fields[field.name].widget)
            assert isinstance(widget, ForeignKeyRawIdWidget), f"{model.__name__}.{field.name} renders {type(widget).__name__}"


@pytest.mark.parametrize("model", [DeliveryLog, TrackingLog], ids=["DeliveryLog", "TrackingLog"])
def test_log_changelist_queries_do_not_grow_with_the_rows_shown(superuser_client: Client, model: type[models.Model]) -> None:
    delivery = factories.DeliveryFactory(state=Delivery.State.FINISHED)

    def make_row() -> None:
        log = factories.DeliveryLogFactory(delivery=delivery)
        if model is TrackingLog:
            factories.TrackingLogFactory(delivery_log=log)

    make_row()
    with CaptureQueriesContext(connection) as one_row:
        superuser_client.get(admin_url(model, "changelist"))
    for _ in range(5):
        make_row()

    with CaptureQueriesContext(connection) as six_rows:
        response = superuser_client.get(admin_url(model, "changelist"))

    assert len(response.context["cl"].result_list) == 6
    assert len(six_rows) == len(one_row)


def test_tracking_log_of_a_purged_delivery_log_stays_listed_and_viewable(superuser_client: Client) -> None:
    tracking = factories.TrackingLogFactory()
    purged_log_id = tracking.delivery_log_id
    DeliveryLog.objects.filter(pk=purged_log_id).delete()

    changelist = superuser_client.get(admin_url(TrackingLog, "changelist"))
    change_page = superuser_client.get(admin_url(TrackingLog, "change", tracking.pk))

    assert [obj.pk for obj in changelist.context["cl"].result_list] == [tracking.pk]
    assert f"#{purged_log_id}".encode() in changelist.content
    assert change_page.status_code == 200


@pytest.mark.parametrize("model", [SendingFeedback, TrackingHit, TrackingLog],
                         ids=["SendingFeedback", "TrackingHit", "TrackingLog"])
def test_raw_and_tracking_rows_are_searched_by_delivery_log_id(superuser_client: Client, model: type[models.Model]) -> None:
    wanted = ROW_FACTORIES[model]()
    ROW_FACTORIES[model]()

    by_id = superuser_client.get(admin_url(model, "changelist"), {"q": str(wanted.delivery_log_id)})
    by_text = superuser_client.get(admin_url(model, "changelist"), {"q": "abc"})

    assert [obj.pk for obj in by_id.context["cl"].result_list] == [wanted.pk]
    assert list(by_text.context["cl"].result_list) == []


def test_sms_replies_are_searched_by_exact_phone_number(superuser_client: Client) -> None:
    wanted = factories.InboundSmsFactory(phone="+33612345678", text="STOP")
    factories.InboundSmsFactory(phone="+33612345679", text="STOP")

    exact = superuser_client.get(admin_url(InboundSms, "changelist"), {"q": "+33612345678"})
    partial = superuser_client.get(admin_url(InboundSms, "changelist"), {"q": "+3361234567"})

    assert [obj.pk for obj in exact.context["cl"].result_list] == [wanted.pk]
    assert list(partial.context["cl"].result_list) == []


# --- Delivery: search, filters, indicators, deletion --------------------------------------------


def test_delivery_search_matches_label_and_campaign_label(superuser_client: Client) -> None:
    spring = factories.DeliveryFactory(label="Spring sale teaser")
    in_campaign = factories.DeliveryFactory(label="Reminder", campaign=factories.CampaignFactory(label="Spring 2025"))
    factories.DeliveryFactory(label="Winter newsletter")

    response = superuser_client.get(admin_url(Delivery, "changelist"), {"q": "spring"})

    assert {obj.pk for obj in response.context["cl"].result_list} == {spring.pk, in_campaign.pk}


def test_delivery_state_filter_keeps_only_that_state(superuser_client: Client) -> None:
    finished = factories.DeliveryFactory(state=Delivery.State.FINISHED)
    factories.DeliveryFactory(state=Delivery.State.DRAFT)
    factories.DeliveryFactory(state=Delivery.State.IN_PROGRESS)

    response = superuser_client.get(admin_url(Delivery, "changelist"), {"state__exact": Delivery.State.FINISHED})

    assert [obj.pk for obj in response.context["cl"].result_list] == [finished.pk]


def test_delivery_change_form_shows_indicators_read_only(superuser_client: Client) -> None:
    delivery = factories.DeliveryFactory(state=Delivery.State.FINISHED, sent=120, delivered=100, open_rate="25.50",
                                         bounces_by_reason={"20": 1, "1": 3, "5": 2})

    response = superuser_client.get(admin_url(Delivery, "change", delivery.pk))

    adminform = response.context["adminform"]
    fieldsets = dict(adminform.fieldsets)
    assert "Indicators" in fieldsets
    assert {"sent", "delivered", "open_rate", "indicators_updated_at"} <= set(adminform.readonly_fields)
    assert not {"sent", "delivered", "open_rate"} & set(adminform.form.fields)
    assert b"User unknown: 3, Mailbox full: 2, Refused / rejected: 1" in response.content


def test_delivery_indicators_cannot_be_changed_through_the_form(superuser_client: Client) -> None:
    delivery = factories.DeliveryFactory(label="Newsletter", sent=120)
    form_data = {
        "label": "Newsletter (renamed)", "campaign": delivery.campaign_id, "channel": "email", "kind": "marketing",
        "state": "draft", "priority": "0", "template": "", "ab_test": "", "scheduled_at_0": "", "scheduled_at_1": "",
        "validity_end_0": "", "validity_end_1": "", "sent": "999",
    }

    response = superuser_client.post(admin_url(Delivery, "change", delivery.pk), form_data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    delivery.refresh_from_db()
    assert delivery.label == "Newsletter (renamed)"
    assert delivery.sent == 120


def test_delivery_logs_link_opens_the_logs_of_that_delivery(superuser_client: Client) -> None:
    delivery = factories.DeliveryFactory(state=Delivery.State.FINISHED)
    mine = factories.DeliveryLogFactory(delivery=delivery)
    factories.DeliveryLogFactory()

    response = superuser_client.get(admin_url(DeliveryLog, "changelist"), {"delivery__id__exact": delivery.pk})

    assert [obj.pk for obj in response.context["cl"].result_list] == [mine.pk]
    change_page = superuser_client.get(admin_url(Delivery, "change", delivery.pk))
    assert f"?delivery__id__exact={delivery.pk}".encode() in change_page.content


def test_sent_delivery_cannot_be_deleted_from_the_admin(superuser_client: Client) -> None:
    finished = factories.DeliveryFactory(state=Delivery.State.FINISHED)
    factories.DeliveryLogFactory(delivery=finished)
    draft = factories.DeliveryFactory(state=Delivery.State.DRAFT)

    assert superuser_client.post(admin_url(Delivery, "delete", finished.pk), {"post": "yes"}).status_code == 403
    assert superuser_client.post(admin_url(Delivery, "delete", draft.pk), {"post": "yes"}).status_code == 302
    assert list(Delivery.objects.values_list("pk", flat=True)) == [finished.pk]
    changelist = superuser_client.get(admin_url(Delivery, "changelist"))
    assert b'value="delete_selected"' not in changelist.content


# --- DeliveryLog: search and filters ------------------------------------------------------------


def test_delivery_log_search_finds_the_exact_address(superuser_client: Client) -> None:
    wanted = factories.DeliveryLogFactory(address="jane.doe@example.com")
    factories.DeliveryLogFactory(address="john.doe@example.com")

    exact = superuser_client.get(admin_url(DeliveryLog, "changelist"), {"q": "jane.doe@example.com"})
    partial = superuser_client.get(admin_url(DeliveryLog, "changelist"), {"q": "doe@example"})

    assert [obj.pk for obj in exact.context["cl"].result_list] == [wanted.pk]
    # Exact on purpose: a "contains" search would scan every log.
    assert list(partial.context["cl"].result_list) == []


def test_delivery_log_search_by_id_or_digits_only_address(superuser_client: Client) -> None:
    by_id = factories.DeliveryLogFactory()
    phone = factories.DeliveryLogFactory(profile=None, address="33612345678")

    id_search = superuser_client.get(admin_url(DeliveryLog, "changelist"), {"q": str(by_id.pk)})
    phone_search = superuser_client.get(admin_url(DeliveryLog, "changelist"), {"q": "33612345678"})

    assert [obj.pk for obj in id_search.context["cl"].result_list] == [by_id.pk]
    assert [obj.pk for obj in phone_search.context["cl"].result_list] == [phone.pk]


def test_delivery_log_status_filter_keeps_only_that_status(superuser_client: Client) -> None:
    failed = factories.DeliveryLogFactory(status=LogStatus.FAILED)
    factories.DeliveryLogFactory(status=LogStatus.SENT)
    factories.DeliveryLogFactory(status=LogStatus.PENDING)

    response = superuser_client.get(admin_url(DeliveryLog, "changelist"), {"status__exact": str(LogStatus.FAILED.value)})

    assert [obj.pk for obj in response.context["cl"].result_list] == [failed.pk]


# --- ExternalAccount: the token stays in the environment ----------------------------------------


def test_external_account_form_says_whether_the_token_variable_is_set_without_its_value(
    superuser_client: Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    account = factories.ExternalAccountFactory(token_env="CAMPAIGN_TOKEN_ADMIN_TEST_ANALYTICS")
    monkeypatch.setenv("CAMPAIGN_TOKEN_ADMIN_TEST_ANALYTICS", "s3cr3t-bearer-value")

    with_token = superuser_client.get(admin_url(ExternalAccount, "change", account.pk))
    listed = superuser_client.get(admin_url(ExternalAccount, "changelist"))
    monkeypatch.delenv("CAMPAIGN_TOKEN_ADMIN_TEST_ANALYTICS")
    without_token = superuser_client.get(admin_url(ExternalAccount, "change", account.pk))

    assert b"CAMPAIGN_TOKEN_ADMIN_TEST_ANALYTICS is set" in with_token.content
    assert b"CAMPAIGN_TOKEN_ADMIN_TEST_ANALYTICS is not set" in without_token.content
    for response in (with_token, listed, without_token):
        assert b"s3cr3t-bearer-value" not in response.content
    assert b"never stored in the database" in with_token.content


# --- A/B test -----------------------------------------------------------------------------------


def test_ab_test_winner_chosen_in_the_admin_records_who_chose_it(client: Client) -> None:
    administrator = factories.SuperUserFactory()
    client.force_login(administrator)
    ab_test = factories.ABTestFactory(status=ABTest.Status.AWAITING_CHOICE)
    form_data = {
        "label": ab_test.label, "campaign": ab_test.campaign_id, "owner": "", "status": ABTest.Status.AWAITING_CHOICE,
        "variant_count": "2", "criterion": ABTest.Criterion.OPEN_RATE, "test_duration": "04:00:00",
        "remainder_percent": "80", "winner_sending": ABTest.WinnerSending.AUTOMATIC, "winner_variant": "B",
        "winner_delivery": "",
    }

    response = client.post(admin_url(ABTest, "change", ab_test.pk), form_data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    ab_test.refresh_from_db()
    assert ab_test.winner_variant == "B"
    assert ab_test.winner_chosen_by == administrator


def test_ab_test_winner_outside_the_variants_is_refused_by_the_form(superuser_client: Client) -> None:
    ab_test = factories.ABTestFactory(variant_count=2)
    form_data = {
        "label": ab_test.label, "campaign": ab_test.campaign_id, "owner": "", "status": ABTest.Status.TESTING,
        "variant_count": "2", "criterion": ABTest.Criterion.OPEN_RATE, "test_duration": "04:00:00",
        "remainder_percent": "80", "winner_sending": ABTest.WinnerSending.AUTOMATIC, "winner_variant": "C",
        "winner_delivery": "",
    }

    response = superuser_client.post(admin_url(ABTest, "change", ab_test.pk), form_data)

    assert response.status_code == 200
    assert "winner_variant" in response.context["adminform"].form.errors
    ab_test.refresh_from_db()
    assert ab_test.winner_variant == ""


@pytest.mark.parametrize("term", ["²", "99999999999999999999999"], ids=["unicode-digit", "beyond-bigint"])
def test_id_searches_with_unusual_digits_find_nothing_instead_of_failing(superuser_client: Client, term: str) -> None:
    factories.TrackingLogFactory()

    for model in (DeliveryLog, TrackingLog):
        response = superuser_client.get(admin_url(model, "changelist"), {"q": term})

        assert response.status_code == 200
        assert list(response.context["cl"].result_list) == []


@pytest.mark.parametrize("model", [Event, AppSubscription], ids=["Event", "AppSubscription"])
def test_admin_edit_moves_the_updated_at_cursor(superuser_client: Client, model: type[models.Model]) -> None:
    """updated_at is not auto_now, and incremental scans read it: an admin edit must be seen."""
    row = ROW_FACTORIES[model]()
    model.objects.filter(pk=row.pk).update(updated_at=row.updated_at - datetime.timedelta(days=3))
    before = model.objects.get(pk=row.pk).updated_at
    page = superuser_client.get(admin_url(model, "change", row.pk))
    form = page.context["adminform"].form
    data = {name: form[name].value() if form[name].value() is not None else "" for name in form.fields}
    if model is AppSubscription:
        data["disabled"] = "on"
    data = {name: value for name, value in data.items() if value is not False}

    response = superuser_client.post(admin_url(model, "change", row.pk), data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    assert model.objects.get(pk=row.pk).updated_at > before
