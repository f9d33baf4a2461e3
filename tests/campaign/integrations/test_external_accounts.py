"""Secrets that cannot leave the worker: which variable an external account may read its token
from, and where the token may be sent.

The rules are checked twice, and both places are tested here: when an account is saved (the
model's ``clean()``, through the admin form too), and before every request of the HTTP client, for
rows saved before the rules existed. Servers are real ones on loopback (pytest-httpserver, plain
and HTTPS); the destination that must never be reached is TEST-NET-1 (192.0.2.1, unroutable), so a
connection attempt would show as a multi-second timeout instead of an immediate refusal.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date

import pytest
import requests
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from pytest_django.fixtures import Settings
from pytest_httpserver import HTTPServer
from werkzeug import Response

from campaign.integrations import accounts
from campaign.integrations.analytics import AnalyticsClient
from campaign.integrations.audience import AudienceClient
from campaign.integrations.http import ConfigurationError, ServiceClient, ServiceError
from campaign.models import ExternalAccount
from tests import factories

TOKEN = "accounts-token-7c1e9b3d5a"  # a test value, checked never to leak
TOKEN_ENV = "CAMPAIGN_TOKEN_TEST_EXTERNAL_ACCOUNTS"
INSTANCE_SECRET = "instance-secret-key-never-sent-4e8a2c"  # stands for the instance's SECRET_KEY
UNROUTABLE = "http://192.0.2.1:9999/"  # TEST-NET-1: nothing answers there


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv("SECRET_KEY", INSTANCE_SECRET)
    return TOKEN


@pytest.fixture
def other_server() -> Iterator[HTTPServer]:
    """A second loopback server: another origin (another port) than ``httpserver``."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


@pytest.fixture
def superuser_client(client: Client) -> Client:
    client.force_login(factories.SuperUserFactory())
    return client


def account(base_url: str, token_env: str = TOKEN_ENV, kind: str = ExternalAccount.Kind.ANALYTICS) -> ExternalAccount:
    return ExternalAccount(name=kind, kind=kind, base_url=base_url, token_env=token_env, timeout_s=5, enabled=True)


def refusals(account_: ExternalAccount) -> dict[str, list[str]]:
    """The field errors ``full_clean`` gives (what the admin shows), or {} when it is accepted."""
    try:
        account_.full_clean()
    except ValidationError as error:
        return error.message_dict
    return {}


# =============================================================================================
# At save: the token variable
# =============================================================================================
@pytest.mark.django_db
@pytest.mark.parametrize("name", ["SECRET_KEY", "DATABASE_URL", "EMAIL_URL", "CELERY_BROKER_URL", "METRICS_TOKEN",
                                  "ANALYTICS_TOKEN", "CAMPAIGN_TOKEN_", "CAMPAIGN_TOKEN__X", "CAMPAIGN_TOKEN_analytics",
                                  "XCAMPAIGN_TOKEN_ANALYTICS", "CAMPAIGN_TOKEN_ANALYTICS\n"])
def test_a_token_variable_without_the_dedicated_prefix_is_refused_with_the_rule(name: str) -> None:
    errors = refusals(account("https://analytics.example.com/", token_env=name))

    [message] = errors["token_env"]
    assert "CAMPAIGN_TOKEN_<NAME>" in message and "capitals, digits and underscores" in message
    assert set(errors) == {"token_env"}


@pytest.mark.django_db
def test_the_secret_key_scenario_names_the_variable_refused() -> None:
    errors = refusals(account("http://attacker.example:9999/", token_env="SECRET_KEY"))

    assert errors["token_env"][0].startswith("Token variable SECRET_KEY refused: ")
    assert "use https://" in errors["base_url"][0]


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["CAMPAIGN_TOKEN_ANALYTICS", "CAMPAIGN_TOKEN_AUDIENCE_2", "CAMPAIGN_TOKEN_9"])
def test_a_token_variable_with_the_prefix_is_accepted(name: str) -> None:
    assert refusals(account("https://analytics.example.com/", token_env=name)) == {}


@pytest.mark.django_db
def test_a_token_pasted_into_the_variable_field_is_not_echoed() -> None:
    [message] = refusals(account("https://analytics.example.com/", token_env="eyJhbGciOi.pasted-token"))["token_env"]

    assert "eyJhbGciOi" not in message and "(not a variable name)" in message


# =============================================================================================
# At save: the base URL
# =============================================================================================
@pytest.mark.django_db
@pytest.mark.parametrize("url", ["https://analytics.example.com/v2/", "https://10.0.0.5:8443/", "https://[2001:db8::1]/"])
def test_an_https_base_url_is_accepted(url: str, settings: Settings) -> None:
    settings.INTEGRATIONS_ALLOW_LOOPBACK_HTTP = False
    assert refusals(account(url)) == {}


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/", "http://127.9.9.9/", "http://localhost:5000/api/", "http://[::1]:9/"])
def test_loopback_http_is_accepted_only_when_the_development_setting_is_on(url: str, settings: Settings) -> None:
    settings.INTEGRATIONS_ALLOW_LOOPBACK_HTTP = False
    [message] = refusals(account(url))["base_url"]
    assert "INTEGRATIONS_ALLOW_LOOPBACK_HTTP" in message

    settings.INTEGRATIONS_ALLOW_LOOPBACK_HTTP = True
    assert refusals(account(url)) == {}


@pytest.mark.django_db
@pytest.mark.parametrize("url", [UNROUTABLE, "http://attacker.example:9999/", "http://10.0.0.5/", "http://127.0.0.1.attacker.example/",
                                 "http://localhost.attacker.example/", "http://[::ffff:10.0.0.1]/", "http://0.0.0.0:8000/"])
def test_http_to_a_host_that_is_not_loopback_is_refused_even_in_development(url: str, settings: Settings) -> None:
    settings.INTEGRATIONS_ALLOW_LOOPBACK_HTTP = True
    [message] = refusals(account(url))["base_url"]
    assert "plain http:// would send the token in clear: use https://" in message


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["ftp://files.example.com/kpis/", "ftps://files.example.com/"])
def test_another_scheme_is_refused(url: str, settings: Settings) -> None:
    settings.INTEGRATIONS_ALLOW_LOOPBACK_HTTP = True
    [message] = refusals(account(url))["base_url"]
    assert "only https:// is accepted" in message


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["https://user:pw-4c2f@analytics.example.com/", "https://user@analytics.example.com/",
                                 "http://user:pw-4c2f@127.0.0.1:8080/"])
def test_a_url_carrying_credentials_is_refused_without_showing_them(url: str, settings: Settings) -> None:
    settings.INTEGRATIONS_ALLOW_LOOPBACK_HTTP = True
    [message] = refusals(account(url))["base_url"]
    assert "must not carry credentials" in message
    assert "pw-4c2f" not in message


def test_without_credentials_hides_the_user_and_password() -> None:
    assert accounts.without_credentials("https://user:pw@host.example:8443/a?b=1") == "https://***@host.example:8443/a?b=1"
    assert accounts.without_credentials("https://host.example/") == "https://host.example/"


# =============================================================================================
# At save, through the admin
# =============================================================================================
def admin_form(**overrides: str) -> dict[str, str]:
    return {"name": "analytics", "kind": "analytics", "base_url": "https://analytics.example.com/",
            "token_env": "CAMPAIGN_TOKEN_ANALYTICS", "timeout_s": "10", **overrides}


@pytest.mark.django_db
def test_the_admin_refuses_to_add_an_account_sending_the_secret_key_elsewhere(superuser_client: Client) -> None:
    response = superuser_client.post(reverse("admin:campaign_externalaccount_add"),
                                     admin_form(token_env="SECRET_KEY", base_url="http://attacker.example:9999/", enabled="on"))

    assert response.status_code == 200  # the form again, with its errors
    errors = response.context["adminform"].form.errors
    assert "CAMPAIGN_TOKEN_<NAME>" in errors["token_env"][0]
    assert "use https://" in errors["base_url"][0]
    assert not ExternalAccount.objects.exists()


@pytest.mark.django_db
def test_the_admin_change_form_keeps_the_row_when_the_token_variable_is_refused(superuser_client: Client) -> None:
    saved = factories.ExternalAccountFactory(name="analytics", token_env="CAMPAIGN_TOKEN_ANALYTICS")

    response = superuser_client.post(reverse("admin:campaign_externalaccount_change", args=[saved.pk]),
                                     admin_form(token_env="SECRET_KEY"))

    assert response.status_code == 200
    assert b"Token variable SECRET_KEY refused" in response.content
    saved.refresh_from_db()
    assert saved.token_env == "CAMPAIGN_TOKEN_ANALYTICS"


@pytest.mark.django_db
def test_the_admin_saves_an_account_that_follows_the_rules(superuser_client: Client) -> None:
    response = superuser_client.post(reverse("admin:campaign_externalaccount_add"), admin_form())

    assert response.status_code == 302
    assert ExternalAccount.objects.get().token_env == "CAMPAIGN_TOKEN_ANALYTICS"


@pytest.mark.django_db
def test_the_admin_says_an_old_row_s_variable_is_refused_without_reading_it(
    superuser_client: Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECRET_KEY", INSTANCE_SECRET)
    ExternalAccount.objects.bulk_create([account("https://analytics.example.com/", token_env="SECRET_KEY")])  # no clean()
    row = ExternalAccount.objects.get()

    page = superuser_client.get(reverse("admin:campaign_externalaccount_change", args=[row.pk]))
    listed = superuser_client.get(reverse("admin:campaign_externalaccount_changelist"))

    assert b"Token variable SECRET_KEY refused" in page.content
    assert b"SECRET_KEY is set" not in page.content
    for response in (page, listed):
        assert INSTANCE_SECRET.encode() not in response.content


# =============================================================================================
# At send time: rows saved before the rules are refused before any connection
# =============================================================================================
def test_an_old_row_naming_the_secret_key_is_refused_before_any_request(httpserver: HTTPServer, token: str) -> None:
    row = account(httpserver.url_for("/"), token_env="SECRET_KEY")

    with pytest.raises(ConfigurationError) as raised:
        AnalyticsClient(row)

    assert str(raised.value).startswith("analytics: token variable SECRET_KEY refused: ")
    assert "CAMPAIGN_TOKEN_<NAME>" in str(raised.value) and "nothing was sent" in str(raised.value)
    assert INSTANCE_SECRET not in str(raised.value)
    assert httpserver.log == []


def test_a_token_is_never_sent_over_plain_http_to_a_host_that_is_not_loopback(token: str, waits: list[float]) -> None:
    started = time.monotonic()

    with pytest.raises(ConfigurationError) as raised:
        AnalyticsClient(account(UNROUTABLE)).fetch_kpis(date_from=date(2024, 5, 1), date_to=date(2024, 5, 1))

    # A connection attempt to TEST-NET-1 would take the 5 s timeout, four times over.
    assert time.monotonic() - started < 1.0
    assert waits == []
    assert str(raised.value) == (f"analytics: the base URL: {UNROUTABLE!r} refused: plain http:// would send the token "
                                 "in clear: use https:// (http:// is accepted only to a loopback address, in "
                                 "development); nothing was sent")
    assert TOKEN not in str(raised.value)


class RecordingSession(requests.Session):
    """A session that records the requests it is asked to make, and makes none."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def request(self, method: str, url: str, *args: object, **kwargs: object) -> requests.Response:  # type: ignore[override]
        self.calls.append(url)
        raise AssertionError(f"no request may be made ({method} {url})")


def test_every_request_url_is_checked_not_only_the_base_url(token: str) -> None:
    """An account changed after the client was made (or a path that would change the host) is
    refused at the request, before the session is used."""
    client = ServiceClient(account("https://analytics.example.com/"), session=RecordingSession())
    client.account.base_url = UNROUTABLE

    with pytest.raises(ConfigurationError, match="plain http:// would send the token in clear"):
        client.get("kpis")

    assert client.session.calls == []


def test_loopback_http_is_refused_at_send_time_when_the_setting_is_off(httpserver: HTTPServer, token: str,
                                                                      settings: Settings) -> None:
    settings.INTEGRATIONS_ALLOW_LOOPBACK_HTTP = False
    httpserver.expect_request("/audiences/a/members").respond_with_json({"members": [], "next_cursor": None})

    with pytest.raises(ConfigurationError, match="INTEGRATIONS_ALLOW_LOOPBACK_HTTP is on"):
        AudienceClient(account(httpserver.url_for("/"), kind=ExternalAccount.Kind.AUDIENCE))

    assert httpserver.log == []


def test_loopback_http_carries_the_token_when_the_setting_is_on(httpserver: HTTPServer, token: str, waits: list[float],
                                                               settings: Settings) -> None:
    settings.INTEGRATIONS_ALLOW_LOOPBACK_HTTP = True
    httpserver.expect_request("/audiences/a/members", headers={"Authorization": f"Bearer {TOKEN}"}).respond_with_json(
        {"members": [{"id": "v-1", "id_type": "visitor"}], "next_cursor": None})

    page = AudienceClient(account(httpserver.url_for("/"), kind=ExternalAccount.Kind.AUDIENCE)).members_page(external_id="a")

    assert [member.id for member in page.members] == ["v-1"]
    httpserver.check_assertions()


def test_https_carries_the_token_whatever_the_development_setting(https_server: HTTPServer, token: str,
                                                                  settings: Settings) -> None:
    settings.INTEGRATIONS_ALLOW_LOOPBACK_HTTP = False
    https_server.expect_request("/api/kpis", headers={"Authorization": f"Bearer {TOKEN}"}).respond_with_json({"rows": []})

    assert ServiceClient(account(https_server.url_for("/api/"))).get("kpis") == {"rows": []}
    https_server.check_assertions()


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://127.0.0.1:2121/", "only https:// is accepted (got ftp://)"),
    ("https://user:pw-9d1e@analytics.example.com/", "must not carry credentials"),
])
def test_an_old_row_with_another_scheme_or_credentials_is_refused_at_send_time(url: str, reason: str, token: str) -> None:
    with pytest.raises(ConfigurationError, match=reason.replace("(", r"\(").replace(")", r"\)")) as raised:
        AnalyticsClient(account(url))
    assert "pw-9d1e" not in str(raised.value)


# =============================================================================================
# Redirects
# =============================================================================================
def test_a_redirect_to_another_origin_is_not_followed_and_gets_no_token(httpserver: HTTPServer, other_server: HTTPServer,
                                                                       token: str, waits: list[float]) -> None:
    other_server.expect_request("/collect").respond_with_json({"rows": []})
    httpserver.expect_request("/api/kpis").respond_with_response(
        Response(status=302, headers={"Location": other_server.url_for("/collect")}))

    with pytest.raises(ServiceError) as raised:
        ServiceClient(account(httpserver.url_for("/api/"))).get("kpis")

    assert f"GET kpis answered 302, a redirect to {other_server.url_for('/collect')!r}, not followed" in str(raised.value)
    assert other_server.log == []  # the other origin never saw a request, let alone the token
    assert len(httpserver.log) == 1 and waits == []  # permanent: not retried


def test_an_https_redirect_down_to_plain_http_on_the_same_host_is_not_followed(
    https_server: HTTPServer, httpserver: HTTPServer, token: str,
) -> None:
    # Both listen on loopback: "localhost" over TLS, and plain http on 127.0.0.1 / another port.
    httpserver.expect_request("/api/kpis").respond_with_json({"rows": []})
    https_server.expect_request("/api/kpis").respond_with_response(
        Response(status=301, headers={"Location": httpserver.url_for("/api/kpis")}))

    with pytest.raises(ServiceError, match="answered 301, a redirect to .* not followed"):
        ServiceClient(account(https_server.url_for("/api/"))).get("kpis")

    assert httpserver.log == []


def test_a_redirect_on_the_same_origin_is_not_followed_either(httpserver: HTTPServer, token: str) -> None:
    httpserver.expect_request("/api/kpis").respond_with_response(Response(status=307, headers={"Location": "/api/v2/kpis"}))
    httpserver.expect_request("/api/v2/kpis").respond_with_json({"rows": []})

    with pytest.raises(ServiceError, match="answered 307, a redirect to '/api/v2/kpis', not followed"):
        ServiceClient(account(httpserver.url_for("/api/"))).get("kpis")

    assert [request.path for request, _ in httpserver.log] == ["/api/kpis"]


def test_a_redirect_location_carrying_credentials_is_not_shown(httpserver: HTTPServer, token: str) -> None:
    httpserver.expect_request("/api/kpis").respond_with_response(
        Response(status=302, headers={"Location": "https://u:pw-77ab@elsewhere.example/"}))

    with pytest.raises(ServiceError) as raised:
        ServiceClient(account(httpserver.url_for("/api/"))).get("kpis")

    assert "pw-77ab" not in str(raised.value) and "https://***@elsewhere.example/" in str(raised.value)
