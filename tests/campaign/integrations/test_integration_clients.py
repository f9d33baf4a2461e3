"""The audience and deliverability clients against real HTTP(S) servers on loopback
(pytest-httpserver): the exact requests, the complete validation of every answer, retries and their
waits, HTTPS-only for deliverability, and the token kept out of errors."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from campaign.integrations import audience
from campaign.integrations.audience import AudienceClient, Member, MembersPage
from campaign.integrations.deliverability import BounceRuleSpec, DeliverabilityClient, DomainRuleSpec, MxRuleSpec
from campaign.integrations.http import MAX_ATTEMPTS, ConfigurationError, ServiceError, ServiceUnavailable
from campaign.models import ExternalAccount

TOKEN = "clients-token-5f1c9a7e3b"  # a test value, checked never to leak
TOKEN_ENV = "CAMPAIGN_TOKEN_TEST_INTEGRATION_CLIENTS"


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN


def account(kind: str, base_url: str, timeout_s: float = 2) -> ExternalAccount:
    return ExternalAccount(name=kind, kind=kind, base_url=base_url, token_env=TOKEN_ENV, timeout_s=timeout_s, enabled=True)


@pytest.fixture
def audience_client(httpserver: HTTPServer, token: str, waits: list[float]) -> AudienceClient:
    return AudienceClient(account(ExternalAccount.Kind.AUDIENCE, httpserver.url_for("/v1/")))


@pytest.fixture
def rules_client(https_server: HTTPServer, token: str, waits: list[float]) -> DeliverabilityClient:
    return DeliverabilityClient(account(ExternalAccount.Kind.DELIVERABILITY, https_server.url_for("/api/")))


def json_answer(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json", headers=headers)


def drop_connection(request: Request) -> Response:
    """Close the socket without answering: the client sees the connection dropped."""
    connection: socket.socket = request.environ["werkzeug.socket"]
    connection.shutdown(socket.SHUT_RDWR)
    connection.close()
    return Response("never sent")


# =============================================================================================
# Audience
# =============================================================================================
def test_audience_pages_follow_next_cursor_until_null_with_the_bearer_token(audience_client, httpserver):
    httpserver.expect_ordered_request(
        "/v1/audiences/aud-1/members", query_string="", headers={"Authorization": f"Bearer {TOKEN}"},
    ).respond_with_json({"members": [{"id": "v-1", "id_type": "visitor"}, {"id": "CRM-1", "id_type": "declared"}],
                         "next_cursor": "c2"})
    httpserver.expect_ordered_request("/v1/audiences/aud-1/members", query_string={"cursor": "c2"}).respond_with_json(
        {"members": [], "next_cursor": "c3"})
    httpserver.expect_ordered_request("/v1/audiences/aud-1/members", query_string={"cursor": "c3"}).respond_with_json(
        {"members": [{"id": "v-9", "id_type": "visitor"}], "next_cursor": None})

    pages = list(audience_client.pages(external_id="aud-1"))

    assert pages == [
        MembersPage([Member("v-1", "visitor"), Member("CRM-1", "declared")], "c2"),
        MembersPage([], "c3"),
        MembersPage([Member("v-9", "visitor")], None),
    ]
    httpserver.check_assertions()
    assert len(httpserver.log) == 3


def test_audience_external_id_is_quoted_into_the_path(audience_client, httpserver):
    httpserver.expect_request("/v1/audiences/web/buyers EU/members").respond_with_json({"members": [], "next_cursor": None})
    assert list(audience_client.pages(external_id="web/buyers EU")) == [MembersPage([], None)]
    assert httpserver.log[0][0].environ["REQUEST_URI"] == "/v1/audiences/web%2Fbuyers%20EU/members"


def test_audience_a_cursor_sent_twice_is_refused_instead_of_looping(audience_client, httpserver):
    httpserver.expect_request("/v1/audiences/a/members", query_string="").respond_with_json({"members": [], "next_cursor": "x"})
    httpserver.expect_request("/v1/audiences/a/members", query_string={"cursor": "x"}).respond_with_json(
        {"members": [], "next_cursor": "x"})
    with pytest.raises(ServiceError, match="cursor 'x' was sent before"):
        list(audience_client.pages(external_id="a"))
    assert len(httpserver.log) == 2


@pytest.mark.parametrize(("body", "message"), [
    ([], "expected an object, got a list"),
    ({"next_cursor": None}, "no 'members'"),
    ({"members": []}, "no 'next_cursor'"),
    ({"members": {"id": "x"}, "next_cursor": None}, "'members' must be a list"),
    ({"members": [], "next_cursor": 5}, "'next_cursor' must be null or non-empty text"),
    ({"members": [], "next_cursor": ""}, "'next_cursor' must be null or non-empty text"),
    ({"members": ["v-1"], "next_cursor": None}, r"members\[0\]: expected an object, got text"),
    ({"members": [{"id_type": "visitor"}], "next_cursor": None}, r"members\[0\]\.id: expected non-empty text"),
    ({"members": [{"id": "", "id_type": "visitor"}], "next_cursor": None}, r"members\[0\]\.id"),
    ({"members": [{"id": 12, "id_type": "visitor"}], "next_cursor": None}, r"members\[0\]\.id"),
    ({"members": [{"id": "x" * 256, "id_type": "visitor"}], "next_cursor": None}, r"members\[0\]\.id"),
    ({"members": [{"id": "a\u0000b", "id_type": "visitor"}], "next_cursor": None}, r"members\[0\]\.id"),
    ({"members": [{"id": "v", "id_type": "visitor"}, {"id": "e", "id_type": "email"}], "next_cursor": None},
     r"members\[1\]\.id_type: expected one of \['declared', 'visitor'\], got 'email'"),
])
def test_audience_a_page_of_the_wrong_shape_is_refused_with_the_reason(audience_client, httpserver, body, message):
    httpserver.expect_request("/v1/audiences/a/members").respond_with_json(body)
    with pytest.raises(ServiceError, match=message) as raised:
        audience_client.members_page(external_id="a")
    assert str(raised.value).startswith("malformed answer: GET /audiences/a/members")


def test_audience_a_page_too_large_is_refused(audience_client, httpserver, monkeypatch):
    monkeypatch.setattr(audience, "MAX_PAGE_MEMBERS", 2)
    httpserver.expect_request("/v1/audiences/a/members").respond_with_json(
        {"members": [{"id": str(n), "id_type": "visitor"} for n in range(3)], "next_cursor": None})
    with pytest.raises(ServiceError, match="3 members in one page"):
        audience_client.members_page(external_id="a")


def test_audience_a_body_that_is_not_json_is_refused(audience_client, httpserver):
    httpserver.expect_request("/v1/audiences/a/members").respond_with_data("<html>maintenance</html>", content_type="text/html")
    with pytest.raises(ServiceError, match="not JSON"):
        audience_client.members_page(external_id="a")


def test_audience_500s_are_retried_with_backoff_then_succeed(audience_client, httpserver, waits):
    httpserver.expect_ordered_request("/v1/audiences/a/members").respond_with_data("oops", status=500)
    httpserver.expect_ordered_request("/v1/audiences/a/members").respond_with_data("oops", status=503)
    httpserver.expect_ordered_request("/v1/audiences/a/members").respond_with_json({"members": [], "next_cursor": None})

    assert audience_client.members_page(external_id="a") == MembersPage([], None)
    assert len(waits) == 2
    assert 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0  # exponential backoff, full jitter


def test_audience_429_waits_the_retry_after_the_service_asked(audience_client, httpserver, waits):
    httpserver.expect_ordered_request("/v1/audiences/a/members").respond_with_response(
        json_answer({"error": "slow down"}, status=429, headers={"Retry-After": "7"}))
    httpserver.expect_ordered_request("/v1/audiences/a/members").respond_with_json({"members": [], "next_cursor": None})

    assert audience_client.members_page(external_id="a").members == []
    assert waits == [7.0]


def test_audience_5xx_every_time_gives_up_as_unavailable(audience_client, httpserver, waits):
    httpserver.expect_request("/v1/audiences/a/members").respond_with_data("down", status=502)
    with pytest.raises(ServiceUnavailable, match=f"answered 502 \\(after {MAX_ATTEMPTS} attempts\\)"):
        audience_client.members_page(external_id="a")
    assert len(httpserver.log) == MAX_ATTEMPTS
    assert len(waits) == MAX_ATTEMPTS - 1


def test_audience_a_timeout_is_retried_then_given_up(httpserver, token, waits):
    client = AudienceClient(account(ExternalAccount.Kind.AUDIENCE, httpserver.url_for("/"), timeout_s=0.2))

    def slow(request: Request) -> Response:
        time.sleep(0.5)
        return json_answer({"members": [], "next_cursor": None})

    httpserver.expect_request("/audiences/a/members").respond_with_handler(slow)
    with pytest.raises(ServiceUnavailable, match="ReadTimeout"):
        client.members_page(external_id="a")
    assert len(waits) == MAX_ATTEMPTS - 1


def test_audience_a_dropped_connection_is_retried_then_given_up(audience_client, httpserver, waits):
    httpserver.expect_request("/v1/audiences/a/members").respond_with_handler(drop_connection)
    with pytest.raises(ServiceUnavailable, match="ConnectionError"):
        audience_client.members_page(external_id="a")
    assert len(waits) == MAX_ATTEMPTS - 1


def test_audience_401_is_permanent_and_an_echoed_token_is_scrubbed(audience_client, httpserver, waits):
    httpserver.expect_request("/v1/audiences/a/members").respond_with_data(f"bad token Bearer {TOKEN}", status=401)
    with pytest.raises(ServiceError) as raised:
        audience_client.members_page(external_id="a")
    assert "answered 401" in str(raised.value)
    assert TOKEN not in str(raised.value) and "[token]" in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert waits == [] and len(httpserver.log) == 1


def test_audience_an_unset_token_variable_is_a_configuration_error_naming_it(httpserver, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=TOKEN_ENV):
        AudienceClient(account(ExternalAccount.Kind.AUDIENCE, httpserver.url_for("/")))


# =============================================================================================
# Deliverability
# =============================================================================================
RULES = {
    "bounce_rules": [
        {"pattern": r"user (unknown|not found)", "failure_type": 2, "failure_reason": 1, "priority": 10},
        {"pattern": r"quota exceeded", "failure_type": 1, "failure_reason": 5, "priority": 20},
    ],
    "mx_rules": [
        {"mx_mask": "*.mail.example.com", "max_connections": 5, "max_messages_per_hour": 3600, "tls": "required"},
        {"mx_mask": "mx.other.example", "max_connections": None},
    ],
    "domain_rules": [{"domain": "example.com", "max_per_hour": 100}, {"domain": "example.org"}],
    "generated_at": "2026-03-10T02:00:00Z",
}


def test_rules_are_fetched_over_https_and_returned_validated(rules_client, https_server):
    https_server.expect_request("/api/rules", method="GET", headers={"Authorization": f"Bearer {TOKEN}"}).respond_with_json(RULES)

    rules = rules_client.fetch_rules()

    assert rules.bounce_rules == [
        BounceRuleSpec(r"user (unknown|not found)", 2, 1, 10), BounceRuleSpec("quota exceeded", 1, 5, 20),
    ]
    assert rules.mx_rules == [MxRuleSpec("*.mail.example.com", 5, 3600, {"tls": "required"}), MxRuleSpec("mx.other.example")]
    assert rules.domain_rules == [DomainRuleSpec("example.com", {"max_per_hour": 100}), DomainRuleSpec("example.org")]
    https_server.check_assertions()


def test_rules_an_http_base_url_is_refused_before_any_request(httpserver, token):
    url = httpserver.url_for("/api/")
    with pytest.raises(ConfigurationError) as raised:
        DeliverabilityClient(account(ExternalAccount.Kind.DELIVERABILITY, url))
    assert "https://" in str(raised.value) and url in str(raised.value)
    assert httpserver.log == []


def test_rules_a_certificate_the_client_does_not_trust_is_not_accepted(https_server, token, waits, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    https_server.expect_request("/rules").respond_with_json(RULES)
    client = DeliverabilityClient(account(ExternalAccount.Kind.DELIVERABILITY, https_server.url_for("/")))
    with pytest.raises(ConfigurationError, match="TLS certificate is not trusted"):
        client.fetch_rules()
    assert https_server.log == []  # no request was ever answered
    assert waits == [], "an untrusted certificate is not retried: waiting cannot fix it"


def with_bounce(**overrides: Any) -> dict[str, Any]:
    rule = {"pattern": "user unknown", "failure_type": 2, "failure_reason": 1, "priority": 10, **overrides}
    return {"bounce_rules": [RULES["bounce_rules"][0], {k: v for k, v in rule.items() if v is not ...}],
            "mx_rules": [], "domain_rules": []}


@pytest.mark.parametrize(("body", "message"), [
    ([], "expected an object, got a list"),
    ({"bounce_rules": [], "mx_rules": []}, "no 'domain_rules'"),
    ({"bounce_rules": {}, "mx_rules": [], "domain_rules": []}, "'bounce_rules' must be a list"),
    (with_bounce(pattern="user (unknown"), r"bounce_rules\[1\]\.pattern 'user \(unknown' is not a valid regular expression"),
    (with_bounce(pattern=""), r"bounce_rules\[1\]\.pattern: expected non-empty text"),
    (with_bounce(pattern=7), r"bounce_rules\[1\]\.pattern: expected non-empty text"),
    (with_bounce(pattern="x" * 501), r"bounce_rules\[1\]\.pattern: expected non-empty text of at most 500"),
    (with_bounce(priority=...), r"bounce_rules\[1\]: missing priority"),
    (with_bounce(failure_type=0), r"bounce_rules\[1\]\.failure_type: expected 1 \(soft\), 2 \(hard\) or 3"),
    (with_bounce(failure_type=4), r"bounce_rules\[1\]\.failure_type"),
    (with_bounce(failure_type="2"), r"bounce_rules\[1\]\.failure_type"),
    (with_bounce(failure_type=True), r"bounce_rules\[1\]\.failure_type"),
    (with_bounce(failure_reason=7), r"bounce_rules\[1\]\.failure_reason: expected one of \[0, 1, 2, 3, 4, 5, 6, 8, 20\]"),
    (with_bounce(priority=1.5), r"bounce_rules\[1\]\.priority: expected an integer"),
    (with_bounce(priority=2**31), r"bounce_rules\[1\]\.priority"),
    ({"bounce_rules": [], "mx_rules": [{"max_connections": 1}], "domain_rules": []}, r"mx_rules\[0\]: missing mx_mask"),
    ({"bounce_rules": [], "mx_rules": [{"mx_mask": "a b"}], "domain_rules": []}, r"mx_rules\[0\]\.mx_mask"),
    ({"bounce_rules": [], "mx_rules": [{"mx_mask": "m", "max_connections": -1}], "domain_rules": []},
     r"mx_rules\[0\]\.max_connections: expected a non-negative integer or null"),
    ({"bounce_rules": [], "mx_rules": [{"mx_mask": "m", "max_messages_per_hour": "10"}], "domain_rules": []},
     r"mx_rules\[0\]\.max_messages_per_hour"),
    ({"bounce_rules": [], "mx_rules": [{"mx_mask": "M"}, {"mx_mask": "m"}], "domain_rules": []},
     r"mx_rules\[1\]: mx_mask 'm' already given by mx_rules\[0\]"),
    ({"bounce_rules": [], "mx_rules": [], "domain_rules": [{"domain": None}]}, r"domain_rules\[0\]\.domain"),
    ({"bounce_rules": [], "mx_rules": [], "domain_rules": ["example.com"]}, r"domain_rules\[0\]: expected an object"),
    ({"bounce_rules": [], "mx_rules": [], "domain_rules": [{"domain": "a.example"}, {"domain": "A.example"}]},
     r"domain_rules\[1\]: domain 'A.example' already given"),
    ({"bounce_rules": [], "mx_rules": [], "domain_rules": [{"domain": "a.example", "note": "x\u0000"}]},
     r"domain_rules\[0\] settings: text with a NUL character"),
])
def test_rules_an_answer_of_the_wrong_shape_is_refused_with_the_reason(rules_client, https_server, body, message):
    https_server.expect_request("/api/rules").respond_with_json(body)
    with pytest.raises(ServiceError, match=message) as raised:
        rules_client.fetch_rules()
    assert str(raised.value).startswith("malformed answer: GET /rules")


def test_rules_500_then_success_is_retried_with_backoff(rules_client, https_server, waits):
    https_server.expect_ordered_request("/api/rules").respond_with_data("busy", status=500)
    https_server.expect_ordered_request("/api/rules").respond_with_json(RULES)
    assert len(rules_client.fetch_rules().bounce_rules) == 2
    assert len(waits) == 1 and 0 <= waits[0] <= 0.5


def test_rules_429_with_an_http_date_retry_after_is_honoured(rules_client, https_server, waits):
    https_server.expect_ordered_request("/api/rules").respond_with_response(
        json_answer({}, status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))  # in the past: no wait
    https_server.expect_ordered_request("/api/rules").respond_with_json(RULES)
    assert len(rules_client.fetch_rules().domain_rules) == 2
    assert waits == [0.0]


def test_rules_401_is_permanent_and_the_token_is_scrubbed(rules_client, https_server, waits):
    https_server.expect_request("/api/rules").respond_with_data(f"who is {TOKEN}?", status=401)
    with pytest.raises(ServiceError, match="answered 401") as raised:
        rules_client.fetch_rules()
    assert TOKEN not in str(raised.value)
    assert waits == []
