"""The event API (``POST /api/events/<eventType>``), its keys, the ``apikey`` command and the keys'
admin; and a load test against a real server on loopback: every accepted event is stored, none lost.

Every refusal is checked for its status, its reason and that nothing was stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import IO, Any

import pytest
import requests
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from campaign import api
from campaign.models import APIKey, Event
from tests import factories
from workflows.worker_process import current_database_url

URL = "/api/events/order_confirmation"


@pytest.fixture
def key(db) -> str:
    return api.create_api_key(name="crm")[1]


def post(client: Client, body: Any, *, key: str | None, path: str = URL, raw: bytes | None = None, **extra: Any) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key is not None else {}
    data = raw if raw is not None else json.dumps(body).encode()
    return client.post(path, data=data, content_type="application/json", **headers, **extra)


# --- accepted ----------------------------------------------------------------------------------

ACCEPTED = [
    ({"email": "ann@example.com"}, {"email": "ann@example.com", "phone": "", "channel": "email", "payload": {}}),
    ({"phone": "+33612345678"}, {"email": "", "phone": "+33612345678", "channel": "sms", "payload": {}}),
    ({"phone": "0612345678", "context": {"code": "1234"}},
     {"email": "", "phone": "0612345678", "channel": "sms", "payload": {"code": "1234"}}),
    ({"email": "ann@example.com", "phone": "+33612345678"},
     {"email": "ann@example.com", "phone": "+33612345678", "channel": "email", "payload": {}}),
    ({"email": "ann@example.com", "phone": "+33612345678", "channel": "sms"},
     {"email": "ann@example.com", "phone": "+33612345678", "channel": "sms", "payload": {}}),
    ({"phone": "+33612345678", "channel": "push"}, {"email": "", "phone": "+33612345678", "channel": "push", "payload": {}}),
    ({"email": "ann@example.com", "channel": "push"},
     {"email": "ann@example.com", "phone": "", "channel": "push", "payload": {}}),
    ({"email": "ann@example.com", "context": {"order": {"id": 42, "items": [{"sku": "A", "qty": 2}], "gift": True,
                                                          "note": None, "total": 12.5, "name": "Zoë 🎁"}}},
     {"email": "ann@example.com", "phone": "", "channel": "email",
      "payload": {"order": {"id": 42, "items": [{"sku": "A", "qty": 2}], "gift": True, "note": None, "total": 12.5,
                            "name": "Zoë 🎁"}}}),
    ({"email": "ann@example.com", "context": {}}, {"email": "ann@example.com", "phone": "", "channel": "email", "payload": {}}),
]


@pytest.mark.parametrize("body, stored", ACCEPTED)
def test_valid_event_is_accepted_with_its_id_and_stored_pending(client, key, body, stored):
    before = timezone.now()
    response = post(client, body, key=key)

    assert response.status_code == 202, response.content
    assert response.json() == {"id": response.json()["id"], "status": "pending"}
    event = Event.objects.get(pk=response.json()["id"])
    assert {"email": event.email, "phone": event.phone, "channel": event.channel, "payload": event.payload} == stored
    assert (event.event_type, event.status, event.template_id, event.delivery_log_id, event.processed_at) == \
        ("order_confirmation", "pending", None, None, None)
    assert before <= event.created_at <= timezone.now() and event.updated_at == event.created_at


@pytest.mark.parametrize("event_type", ["a", "order.confirmed", "password_reset-v2", "X" * 64, "2024"])
def test_event_type_of_letters_digits_dot_underscore_dash_up_to_64_is_accepted(client, key, event_type):
    response = post(client, {"email": "ann@example.com"}, key=key, path=f"/api/events/{event_type}")

    assert response.status_code == 202
    assert Event.objects.get(pk=response.json()["id"]).event_type == event_type


def test_body_exactly_at_the_limit_is_accepted(client, key, settings):
    settings.EVENT_MAX_BODY_BYTES = 200
    body = {"email": "ann@example.com", "context": {"pad": ""}}
    body["context"]["pad"] = "x" * (200 - len(json.dumps(body).encode()))
    assert len(json.dumps(body).encode()) == 200

    assert post(client, body, key=key).status_code == 202


def test_csrf_is_not_required_the_key_authenticates(key):
    response = post(Client(enforce_csrf_checks=True), {"email": "ann@example.com"}, key=key)

    assert response.status_code == 202


# --- refused: 400 ------------------------------------------------------------------------------

REFUSED = [
    (b'{"email": "ann@example.com"', "malformed JSON"),
    (b"{'email': 'ann@example.com'}", "malformed JSON"),
    (b"", "empty body"),
    (b"   ", "empty body"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'["ann@example.com"]', "must be a JSON object, not an array"),
    (b'"ann@example.com"', "must be a JSON object, not a string"),
    (b"42", "must be a JSON object, not a number"),
    (b"null", "must be a JSON object, not null"),
    (b"{}", "missing recipient"),
    (b'{"context": {"a": 1}}', "missing recipient"),
    (b'{"channel": "email"}', "missing recipient"),
    (b'{"email": "ann@example.com", "name": "Ann", "age": 3}', "unknown field(s): age, name"),
    (b'{"Email": "ann@example.com"}', "unknown field(s): Email"),
    (b'{"email": 42}', "email: expected a string, got a number"),
    (b'{"email": null}', "email: expected a string, got null"),
    (b'{"email": ["ann@example.com"]}', "email: expected a string, got an array"),
    (b'{"phone": 33612345678}', "phone: expected a string, got a number"),
    (b'{"email": "ann@example.com", "context": [1, 2]}', "context: expected an object, got an array"),
    (b'{"email": "ann@example.com", "context": "order 42"}', "context: expected an object, got a string"),
    (b'{"email": "ann@example.com", "context": null}', "context: expected an object, got null"),
    (b'{"email": "ann@example.com", "channel": 1}', "channel: expected a string, got a number"),
    (b'{"email": "ann@example.com", "channel": true}', "channel: expected a string, got a boolean"),
    (b'{"email": "not an address"}', "email: not a valid email address"),
    (b'{"email": "ann@"}', "email: not a valid email address"),
    (b'{"email": ""}', "email: not a valid email address"),
    (json.dumps({"email": "a" * 250 + "@example.com"}).encode(), "email: at most 254 characters"),
    (b'{"phone": "06 12 34 56 78"}', "phone: expected 6 to 15 digits"),
    (b'{"phone": "call me"}', "phone: expected 6 to 15 digits"),
    (b'{"phone": "12345"}', "phone: expected 6 to 15 digits"),
    (b'{"phone": "+1234567890123456"}', "phone: expected 6 to 15 digits"),
    (b'{"phone": ""}', "phone: expected 6 to 15 digits"),
    (b'{"email": "ann@example.com", "channel": "fax"}', "channel: expected one of email, sms, push"),
    (b'{"phone": "+33612345678", "channel": "email"}', "channel email needs an email"),
    (b'{"email": "ann@example.com", "channel": "sms"}', "channel sms needs a phone"),
]


@pytest.mark.parametrize("raw, reason", REFUSED)
def test_invalid_body_is_refused_with_the_reason_and_nothing_is_stored(client, key, raw, reason):
    response = post(client, None, key=key, raw=raw)

    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert Event.objects.count() == 0


@pytest.mark.parametrize("event_type", ["X" * 65, "order%20confirmation", "commande_%C3%A9t%C3%A9", "a;b", "a%3Fb"])
def test_invalid_event_type_is_refused_and_nothing_is_stored(client, key, event_type):
    response = post(client, {"email": "ann@example.com"}, key=key, path=f"/api/events/{event_type}")

    assert response.status_code == 400
    assert "event type" in response.json()["error"]
    assert Event.objects.count() == 0


def test_event_type_with_a_slash_is_not_an_event_url(client, key):
    response = post(client, {"email": "ann@example.com"}, key=key, path="/api/events/a/b")

    assert response.status_code == 404
    assert Event.objects.count() == 0


def test_invalid_content_length_is_refused(client, key):
    response = post(client, {"email": "ann@example.com"}, key=key, CONTENT_LENGTH="lots")

    assert response.status_code == 400 and "Content-Length" in response.json()["error"]
    assert Event.objects.count() == 0


# --- refused: 413 ------------------------------------------------------------------------------


def test_body_over_the_limit_is_refused_413_and_nothing_is_stored(client, key, settings):
    settings.EVENT_MAX_BODY_BYTES = 200
    body = {"email": "ann@example.com", "context": {"pad": "x" * 200}}

    response = post(client, body, key=key)

    assert response.status_code == 413
    assert response.json()["error"] == f"body too large: {len(json.dumps(body))} bytes, the limit is 200 bytes"
    assert Event.objects.count() == 0


def test_default_limit_is_64_kib(client, key):
    at_limit = {"email": "ann@example.com", "context": {"pad": ""}}
    at_limit["context"]["pad"] = "x" * (65536 - len(json.dumps(at_limit)))
    over = {"email": "ann@example.com", "context": {"pad": at_limit["context"]["pad"] + "x"}}

    assert post(client, at_limit, key=key).status_code == 202
    assert post(client, over, key=key).status_code == 413
    assert Event.objects.count() == 1


def test_body_longer_than_its_content_length_claims_is_refused_413(key, settings):
    """The header is the client's word: the bytes actually read are counted too."""
    settings.EVENT_MAX_BODY_BYTES = 100
    request = RequestFactory().post(URL, data=b"{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
    request._stream = io.BytesIO(json.dumps({"email": "ann@example.com", "context": {"pad": "x" * 200}}).encode())

    response = api.post_event(request, "order_confirmation")

    assert response.status_code == 413 and "more than 100 bytes" in json.loads(response.content)["error"]
    assert Event.objects.count() == 0


def test_authentication_is_checked_before_the_body(client, settings):
    """A client without a key gets 401 whatever it sends: it learns nothing about the limits."""
    settings.EVENT_MAX_BODY_BYTES = 10

    response = post(client, {"email": "ann@example.com"}, key=None)

    assert response.status_code == 401


# --- refused: 401, 403, 405 --------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "Basic Y3JtOnNlY3JldA==", "Bearer", "Bearer   ", "Token abc"])
def test_missing_bearer_credentials_get_401_with_www_authenticate(client, key, header):
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    response = client.post(URL, data=json.dumps({"email": "ann@example.com"}), content_type="application/json", **extra)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="events"'
    assert "Authorization: Bearer" in response.json()["error"]
    assert Event.objects.count() == 0


def test_wrong_key_gets_403(client, key):
    response = post(client, {"email": "ann@example.com"}, key=key + "x")

    assert response.status_code == 403
    assert response.json() == {"error": "invalid or revoked API key"}
    assert Event.objects.count() == 0


def test_revoked_key_gets_403_and_other_keys_still_work(client, key):
    other = api.create_api_key(name="shop")[1]
    assert post(client, {"email": "ann@example.com"}, key=key).status_code == 202

    assert api.revoke_api_keys(names=["crm"]) == 1

    response = post(client, {"email": "ann@example.com"}, key=key)
    assert response.status_code == 403
    assert post(client, {"email": "bob@example.com"}, key=other).status_code == 202
    assert list(Event.objects.order_by("id").values_list("email", flat=True)) == ["ann@example.com", "bob@example.com"]


def test_bearer_scheme_is_case_insensitive(client, key):
    response = client.post(URL, data=json.dumps({"email": "ann@example.com"}), content_type="application/json",
                           HTTP_AUTHORIZATION=f"bearer {key}")

    assert response.status_code == 202


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete", "head", "options"])
def test_other_methods_get_405_allowing_post(client, key, method):
    response = getattr(client, method)(URL, HTTP_AUTHORIZATION=f"Bearer {key}")

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert Event.objects.count() == 0


# --- keys --------------------------------------------------------------------------------------


def test_key_is_stored_only_as_its_sha256_and_is_found_by_it(db):
    api_key, key = api.create_api_key(name="crm")

    stored = APIKey.objects.filter(pk=api_key.pk).values().get()
    assert stored["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert stored["prefix"] == key[:8]
    assert all(key not in str(value) for value in stored.values()), "the plaintext key is nowhere in the row"
    assert len(key) >= 43, "256 random bits"
    assert api.authenticate(key=key) == api_key
    assert api.authenticate(key=key[:-1]) is None


def test_two_keys_never_share_a_hash(db):
    keys = {api.create_api_key(name=f"k{index}")[1] for index in range(20)}

    assert len(keys) == 20 and APIKey.objects.values("key_hash").distinct().count() == 20


def test_use_of_a_key_is_recorded_at_most_once_a_minute(client, key, time_machine):
    time_machine.move_to(timezone.now(), tick=False)
    post(client, {"email": "ann@example.com"}, key=key)
    first = APIKey.objects.get(name="crm").last_used_at
    assert first == timezone.now()

    time_machine.shift(timedelta(seconds=30))
    post(client, {"email": "ann@example.com"}, key=key)
    assert APIKey.objects.get(name="crm").last_used_at == first

    time_machine.shift(timedelta(seconds=31))
    post(client, {"email": "ann@example.com"}, key=key)
    assert APIKey.objects.get(name="crm").last_used_at == timezone.now()


def test_key_name_is_unique_even_after_revocation(db):
    api.create_api_key(name="crm")
    api.revoke_api_keys(names=["crm"])

    with pytest.raises(api.KeyNameTaken, match="already exists"):
        api.create_api_key(name="crm")


# --- apikey command ----------------------------------------------------------------------------


def apikey(*arguments: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("apikey", *arguments, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_apikey_create_prints_the_key_once_and_it_works(client, db):
    out, err = apikey("create", "crm")

    key = out.strip()
    assert out == key + "\n", "only the key on standard output"
    assert "Copy it now: it is not shown again" in err and key[:8] in err and key not in err
    assert APIKey.objects.get(name="crm").key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert post(client, {"email": "ann@example.com"}, key=key).status_code == 202
    assert key not in apikey("list")[0] and key not in apikey("list", "--json")[0]


def test_apikey_create_refuses_a_taken_name(db):
    apikey("create", "crm")

    with pytest.raises(CommandError, match="already exists"):
        apikey("create", "crm")
    assert APIKey.objects.count() == 1


def test_apikey_revoke_makes_the_key_refused(client, db):
    key = apikey("create", "crm")[0].strip()

    out, _ = apikey("revoke", "crm")

    assert "Revoked API key 'crm'" in out
    assert APIKey.objects.get(name="crm").revoked_at is not None
    assert post(client, {"email": "ann@example.com"}, key=key).status_code == 403
    assert "already revoked" in apikey("revoke", "crm")[0]
    with pytest.raises(CommandError, match="no API key named 'nope'"):
        apikey("revoke", "nope")


def test_apikey_list_shows_names_prefixes_and_status_never_hashes(db):
    crm_key = apikey("create", "crm")[0].strip()
    apikey("create", "shop")
    apikey("revoke", "shop")
    crm = APIKey.objects.get(name="crm")

    text = apikey("list")[0]
    rows = json.loads(apikey("list", "--json")[0])

    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "PREFIX", "STATUS", "CREATED", "LAST", "USED"]
    assert lines[1].split()[:3] == ["crm", crm_key[:8], "active"] and lines[1].split()[-1] == "never"
    assert lines[2].split()[:3] == ["shop", APIKey.objects.get(name="shop").prefix, "revoked"]
    assert [(row["name"], row["status"]) for row in rows] == [("crm", "active"), ("shop", "revoked")]
    assert rows[0]["prefix"] == crm_key[:8] and rows[1]["revoked_at"] is not None
    assert crm.key_hash not in text and crm.key_hash not in json.dumps(rows)


def test_apikey_list_with_no_keys(db):
    assert apikey("list")[0] == "No API keys.\n"


# --- admin -------------------------------------------------------------------------------------


def test_admin_add_shows_the_key_once_and_stores_its_hash(admin_client, admin_user, client):
    response = admin_client.post(reverse("admin:campaign_apikey_add"), {"name": "crm"}, follow=True)

    assert response.status_code == 200
    messages = [str(message) for message in response.context["messages"]]
    shown = [message for message in messages if message.startswith("The key of 'crm' is ")]
    assert len(shown) == 1
    key = shown[0].removeprefix("The key of 'crm' is ").split(" ")[0]
    api_key = APIKey.objects.get(name="crm")
    assert (api_key.key_hash, api_key.prefix, api_key.created_by) \
        == (hashlib.sha256(key.encode()).hexdigest(), key[:8], admin_user)
    assert post(client, {"email": "ann@example.com"}, key=key).status_code == 202

    change = admin_client.get(reverse("admin:campaign_apikey_change", args=[api_key.pk]))
    listing = admin_client.get(reverse("admin:campaign_apikey_changelist"))
    for page in (change, listing):
        assert key not in page.content.decode() and api_key.key_hash not in page.content.decode()
        assert api_key.prefix in page.content.decode()


def test_admin_revoke_action_revokes_selected_keys(admin_client, client, db):
    crm_key = api.create_api_key(name="crm")[1]
    shop_key = api.create_api_key(name="shop")[1]

    response = admin_client.post(
        reverse("admin:campaign_apikey_changelist"),
        {"action": "revoke", "_selected_action": [APIKey.objects.get(name="crm").pk]}, follow=True,
    )

    assert "1 API key(s) revoked" in response.content.decode()
    assert post(client, {"email": "ann@example.com"}, key=crm_key).status_code == 403
    assert post(client, {"email": "ann@example.com"}, key=shop_key).status_code == 202


def test_admin_cannot_delete_keys_only_revoke_them(admin_client, db):
    api_key = api.create_api_key(name="crm")[0]

    response = admin_client.get(reverse("admin:campaign_apikey_delete", args=[api_key.pk]))

    assert response.status_code == 403
    assert APIKey.objects.filter(pk=api_key.pk).exists()


def test_admin_requires_permission_to_see_keys(client, db):
    staff = factories.StaffUserFactory()
    client.force_login(staff)

    assert client.get(reverse("admin:campaign_apikey_changelist")).status_code == 403


# --- load test on loopback ---------------------------------------------------------------------

LOAD_EVENTS = 10_000
LOAD_CLIENTS = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def gunicorn(*, workers: int = 2, threads: int = 4, production: bool = False) -> Iterator[tuple[str, IO[bytes]]]:
    """gunicorn from the venv on a free loopback port, on the test database: its base URL and its
    log (standard output and error), readable while it runs. The WSGI application on gthread
    workers, or with ``production`` the Procfile's ``gunicorn.conf.py`` (its asyncio worker)."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": current_database_url(), "SECRET_KEY": django_settings.SECRET_KEY,
           "ALLOWED_HOSTS": "127.0.0.1", "VAR_DIR": str(django_settings.VAR_DIR)}
    if production:
        env.update(WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS=str(workers), WEB_THREADS=str(threads), WEB_ACCESS_LOG="off")
        command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
    else:
        command = [sys.executable, "-m", "gunicorn", "project.wsgi", "--bind", f"127.0.0.1:{port}", "--workers",
                   str(workers), "--threads", str(threads), "--worker-class", "gthread"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, cwd=django_settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    requests.get(f"{base}/api/events/x", timeout=10)
                    break
                except (requests.ConnectionError, requests.Timeout):
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"gunicorn did not start:\n{log.read().decode(errors='replace')}") from None
                    time.sleep(0.2)
            yield base, log
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture
def server(transactional_db) -> Iterator[str]:
    """gunicorn (2 workers × 4 threads) on the test database; its base URL."""
    with gunicorn() as (base, _log):
        yield base


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_load_10000_events_from_concurrent_clients_none_lost(server):
    key = api.create_api_key(name="load")[1]
    accepted: dict[int, tuple[int, int]] = {}
    failures: list[str] = []
    lock = threading.Lock()
    per_client = LOAD_EVENTS // LOAD_CLIENTS

    def client(number: int) -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {key}"
            for sequence in range(per_client):
                body = {"email": f"load{number}-{sequence}@example.com", "context": {"client": number, "sequence": sequence}}
                try:
                    response = session.post(f"{server}/api/events/load.test", json=body, timeout=30)
                except requests.RequestException as problem:
                    with lock:
                        failures.append(f"client {number} #{sequence}: {problem}")
                    continue
                with lock:
                    if response.status_code == 202:
                        accepted[response.json()["id"]] = (number, sequence)
                    else:
                        failures.append(f"client {number} #{sequence}: {response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(number,)) for number in range(LOAD_CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    elapsed = time.monotonic() - started

    assert not any(thread.is_alive() for thread in threads), "the load did not finish in time"
    assert failures == [], f"{len(failures)} requests failed, e.g. {failures[:5]}"
    assert len(accepted) == LOAD_EVENTS, "every request accepted under its own id"
    stored = {event_id: (payload["client"], payload["sequence"]) for event_id, payload
              in Event.objects.filter(event_type="load.test").values_list("id", "payload")}
    assert stored == accepted, "every accepted id is in the database, with its own payload; nothing else is"
    assert Event.objects.filter(event_type="load.test", status="pending").count() == LOAD_EVENTS
    print(f"\n{LOAD_EVENTS} events from {LOAD_CLIENTS} clients in {elapsed:.1f}s ({LOAD_EVENTS / elapsed:.0f}/s)")
