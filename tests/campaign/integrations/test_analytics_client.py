"""The analytics client against a real HTTP server on loopback (pytest-httpserver): the exact
requests, the validation of every answer, retries and their waits, and the token kept out of errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from datetime import date

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from campaign.integrations import analytics
from campaign.integrations.analytics import ROW_KEYS, AnalyticsClient, KpiRow, batch_id_for
from campaign.integrations.http import ConfigurationError, ServiceError, ServiceUnavailable
from campaign.models import ExternalAccount

TOKEN = "client-token-8d2e4b6a0c"  # a test value, checked never to leak
TOKEN_ENV = "CAMPAIGN_TOKEN_TEST_ANALYTICS_CLIENT"
MAY_1, MAY_2 = date(2024, 5, 1), date(2024, 5, 2)


@pytest.fixture
def client(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, waits: list[float]) -> AnalyticsClient:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    account = ExternalAccount(name="analytics", kind=ExternalAccount.Kind.ANALYTICS, base_url=httpserver.url_for("/api/"),
                              token_env=TOKEN_ENV, timeout_s=2, enabled=True)
    return AnalyticsClient(account)


def row(day: date = MAY_1, delivery_id: int = 42, **counters: int) -> KpiRow:
    return KpiRow(day, 7, "Spring sale", delivery_id, "Newsletter", **counters)


def wire(day: str = "2024-05-01", delivery_id: int = 42, **overrides: object) -> dict[str, object]:
    values = {"date": day, "campaign_id": 7, "campaign_label": "Spring sale", "delivery_id": delivery_id,
              "delivery_label": "Newsletter", "sent": 10, "delivered": 9, "opened": 5, "unique_opens": 4, "clicked": 2,
              "unique_clicks": 1, "unsubscribed": 0, "bounces": 1}
    return {**values, **overrides}


def json_answer(payload: object, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json")


# -- the wire format -----------------------------------------------------------------------------
def test_a_row_has_the_protocol_s_keys_in_order():
    assert tuple(field.name for field in fields(KpiRow)) == ROW_KEYS
    assert list(row(sent=3).to_json()) == list(ROW_KEYS)
    assert KpiRow.from_json(row(opened=-2).to_json()) == row(opened=-2)


def test_push_sends_the_batch_id_and_rows_with_the_bearer_token(client, httpserver):
    rows = [row(sent=10, opened=-2), KpiRow(MAY_2, None, "", 43, "Receipts", bounces=1)]
    httpserver.expect_oneshot_request(
        "/api/kpis", method="POST", headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        json={"batch_id": "b1", "rows": [
            {"date": "2024-05-01", "campaign_id": 7, "campaign_label": "Spring sale", "delivery_id": 42,
             "delivery_label": "Newsletter", "sent": 10, "delivered": 0, "opened": -2, "unique_opens": 0, "clicked": 0,
             "unique_clicks": 0, "unsubscribed": 0, "bounces": 0},
            {"date": "2024-05-02", "campaign_id": None, "campaign_label": "", "delivery_id": 43,
             "delivery_label": "Receipts", "sent": 0, "delivered": 0, "opened": 0, "unique_opens": 0, "clicked": 0,
             "unique_clicks": 0, "unsubscribed": 0, "bounces": 1},
        ]},
    ).respond_with_json({"accepted": 2})

    assert client.push_kpis(batch_id="b1", rows=rows) == 2
    httpserver.check_assertions()


def test_fetch_asks_for_the_days_and_returns_validated_rows(client, httpserver):
    httpserver.expect_oneshot_request(
        "/api/kpis", method="GET", query_string={"from": "2024-05-01", "to": "2024-05-02"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).respond_with_json({"rows": [wire(), wire("2024-05-02", 43, campaign_id=None, campaign_label="", extra="ignored")]})

    rows = client.fetch_kpis(date_from=MAY_1, date_to=MAY_2)

    assert rows == [
        KpiRow(MAY_1, 7, "Spring sale", 42, "Newsletter", 10, 9, 5, 4, 2, 1, 0, 1),
        KpiRow(MAY_2, None, "", 43, "Newsletter", 10, 9, 5, 4, 2, 1, 0, 1),
    ]
    httpserver.check_assertions()


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("payload", "reason"), [
    ({"accepted": "x"}, "'accepted' must be an integer"),
    ({"accepted": None}, "'accepted' must be an integer"),
    ({"accepted": 1.0}, "'accepted' must be an integer"),
    ({}, "no 'accepted' in the answer"),
    ("accepted", "expected an object, got text"),
    ({"accepted": 0}, "accepted 0 of the 1 rows of batch b1"),
    ({"accepted": 2}, "accepted 2 of the 1 rows of batch b1"),
])
def test_a_malformed_push_answer_is_a_permanent_error(client, httpserver, payload, reason):
    httpserver.expect_oneshot_request("/api/kpis", method="POST").respond_with_response(json_answer(payload))

    with pytest.raises(ServiceError) as raised:
        client.push_kpis(batch_id="b1", rows=[row(sent=1)])

    assert reason in str(raised.value)
    assert len(httpserver.log) == 1  # not retried


@pytest.mark.parametrize(("payload", "reason"), [
    ([], "expected an object, got a list"),
    ({"rows": {}}, "'rows' must be a list, got an object"),
    ({"rows": [5]}, "rows[0]: expected an object, got int"),
    ({"rows": [{k: v for k, v in wire().items() if k != "bounces"}]}, "rows[0]: missing bounces"),
    ({"rows": [wire(day="01/05/2024")]}, "rows[0].date: expected YYYY-MM-DD"),
    ({"rows": [wire(day="2024-02-30")]}, "'2024-02-30' is not a date"),
    ({"rows": [wire(day="2024-04-30")]}, "date 2024-04-30 is outside the requested 2024-05-01 .. 2024-05-02"),
    ({"rows": [wire(delivery_id="42")]}, "rows[0].delivery_id: expected an integer"),
    ({"rows": [wire(campaign_id="7")]}, "rows[0].campaign_id: expected an integer or null"),
    ({"rows": [wire(delivery_label=None)]}, "rows[0].delivery_label: expected text"),
    ({"rows": [wire(opened=True)]}, "rows[0].opened: expected an integer, got True"),
    ({"rows": [wire(clicked=2.5)]}, "rows[0].clicked: expected an integer, got 2.5"),
    ({"rows": [wire(), wire(opened=6)]}, "rows[1]: a second row for 2024-05-01 and delivery 42"),
])
def test_a_malformed_fetch_answer_is_a_permanent_error(client, httpserver, payload, reason):
    httpserver.expect_oneshot_request("/api/kpis", method="GET").respond_with_response(json_answer(payload))

    with pytest.raises(ServiceError) as raised:
        client.fetch_kpis(date_from=MAY_1, date_to=MAY_2)

    assert reason in str(raised.value)
    assert str(raised.value).startswith("malformed answer: GET /kpis") or "is not a date" in str(raised.value)


def test_a_body_that_is_not_json_is_a_permanent_error(client, httpserver):
    httpserver.expect_oneshot_request("/api/kpis", method="GET").respond_with_data("<html>maintenance</html>")

    with pytest.raises(ServiceError, match="not JSON"):
        client.fetch_kpis(date_from=MAY_1, date_to=MAY_1)


# -- retries -------------------------------------------------------------------------------------
def test_5xx_answers_are_retried_with_backoff_then_succeed(client, httpserver, waits):
    for status in (500, 503):
        httpserver.expect_ordered_request("/api/kpis", method="POST").respond_with_data("busy", status=status)
    httpserver.expect_ordered_request("/api/kpis", method="POST").respond_with_json({"accepted": 1})

    assert client.push_kpis(batch_id="b1", rows=[row(sent=1)]) == 1

    assert len(httpserver.log) == 3
    assert len(waits) == 2 and 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0  # full jitter under 0.5 s × 2^n
    bodies = {request.get_data() for request, _ in httpserver.log}
    assert len(bodies) == 1  # the same batch each time


def test_5xx_answers_until_the_last_attempt_are_a_transient_failure(client, httpserver, waits):
    httpserver.expect_request("/api/kpis", method="POST").respond_with_data("busy", status=502)

    with pytest.raises(ServiceUnavailable, match="answered 502 \\(after 4 attempts\\)"):
        client.push_kpis(batch_id="b1", rows=[row(sent=1)])

    assert len(httpserver.log) == 4 and len(waits) == 3


def test_429_waits_for_retry_after(client, httpserver, waits):
    httpserver.expect_ordered_request("/api/kpis", method="GET").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "12"})
    httpserver.expect_ordered_request("/api/kpis", method="GET").respond_with_json({"rows": []})

    assert client.fetch_kpis(date_from=MAY_1, date_to=MAY_1) == []
    assert waits == [12.0]


def test_a_retry_after_too_long_to_wait_fails_at_once_as_transient(client, httpserver, waits):
    httpserver.expect_request("/api/kpis", method="GET").respond_with_data(
        "come back tomorrow", status=429, headers={"Retry-After": "3600"})

    with pytest.raises(ServiceUnavailable, match="answered 429"):
        client.fetch_kpis(date_from=MAY_1, date_to=MAY_1)

    assert waits == [] and len(httpserver.log) == 1


def test_a_4xx_is_not_retried(client, httpserver, waits):
    httpserver.expect_request("/api/kpis", method="POST").respond_with_data("unknown delivery 42", status=422)

    with pytest.raises(ServiceError, match="answered 422: unknown delivery 42"):
        client.push_kpis(batch_id="b1", rows=[row(sent=1)])

    assert len(httpserver.log) == 1 and waits == []


def test_a_connection_refused_is_retried_then_transient(monkeypatch, waits):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    account = ExternalAccount(name="analytics", kind=ExternalAccount.Kind.ANALYTICS, base_url="http://127.0.0.1:9/",
                              token_env=TOKEN_ENV, timeout_s=1)

    with pytest.raises(ServiceUnavailable, match="ConnectionError \\(after 4 attempts\\)"):
        AnalyticsClient(account).fetch_kpis(date_from=MAY_1, date_to=MAY_1)
    assert len(waits) == 3


# -- the token -----------------------------------------------------------------------------------
def test_the_token_is_scrubbed_from_an_error_that_echoes_it(client, httpserver):
    httpserver.expect_request("/api/kpis", method="POST").respond_with_handler(
        lambda request: Response(f"invalid credentials {request.headers['Authorization']}", status=401))

    with pytest.raises(ServiceError) as raised:
        client.push_kpis(batch_id="b1", rows=[row(sent=1)])

    assert "answered 401" in str(raised.value) and "[token]" in str(raised.value)
    assert TOKEN not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_an_unset_token_variable_is_a_configuration_error_naming_it(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    account = ExternalAccount(name="analytics", kind=ExternalAccount.Kind.ANALYTICS, base_url="http://127.0.0.1:9/",
                              token_env=TOKEN_ENV)

    with pytest.raises(ConfigurationError, match=TOKEN_ENV):
        AnalyticsClient(account)


# -- batch ids -----------------------------------------------------------------------------------
def test_the_batch_id_is_the_sha256_of_the_documented_canonical_json():
    rows = [row(MAY_2, 43, opened=1), row(MAY_1, 42, sent=2)]
    bases = {(MAY_2, 43): {"opened": 5}}
    zero = dict.fromkeys(analytics.COUNTERS, 0)
    canonical = [
        {"date": "2024-05-01", "delivery_id": 42, "from": zero, "add": {**zero, "sent": 2}},
        {"date": "2024-05-02", "delivery_id": 43, "from": {**zero, "opened": 5}, "add": {**zero, "opened": 1}},
    ]
    expected = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    assert batch_id_for(rows, bases=bases) == expected
    assert batch_id_for(list(reversed(rows)), bases=bases) == expected  # the order of the rows does not matter


def test_the_batch_id_changes_with_the_starting_totals_but_not_with_labels():
    increment = [row(opened=1)]
    relabelled = [KpiRow(MAY_1, 7, "Renamed", 42, "Renamed too", opened=1)]

    assert batch_id_for(increment, bases={}) == batch_id_for(relabelled, bases={})
    assert batch_id_for(increment, bases={}) != batch_id_for(increment, bases={(MAY_1, 42): {"opened": 1}})
    assert batch_id_for(increment, bases={}) != batch_id_for([row(opened=2)], bases={})


def test_an_empty_batch_is_refused_before_any_request(client, httpserver):
    with pytest.raises(ValueError, match="empty batch"):
        client.push_kpis(batch_id="b1", rows=[])
    assert httpserver.log == []
