"""Idempotency keys of the event API: a retried request gets its first answer and stores nothing
more; the same key for a different event is refused 409; keys are scoped per API key and last
as long as the event stays in the live table. Concurrent duplicates make one event (PostgreSQL).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from campaign import api
from campaign.models import Event, EventHistory
from tests.campaign.api.helpers import URL


def send(client: Client, key: str, body: Any, *, idempotency_key: str | None, path: str = URL, raw: bytes | None = None) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    if idempotency_key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = idempotency_key
    data = raw if raw is not None else json.dumps(body).encode()
    return client.post(path, data=data, content_type="application/json", **headers)


def test_a_retry_gets_the_first_answer_and_stores_one_event(client, key):
    body = {"email": "ann@example.com", "context": {"order": 42}}
    first = send(client, key, body, idempotency_key="order-42")
    retries = [send(client, key, body, idempotency_key="order-42") for _ in range(3)]

    assert first.status_code == 202 and "Idempotent-Replayed" not in first
    assert [(retry.status_code, retry.json(), retry["Idempotent-Replayed"]) for retry in retries] == \
        [(202, first.json(), "true")] * 3
    event = Event.objects.get()
    assert (event.pk, event.idempotency_key, event.api_key.name) == (first.json()["id"], "order-42", "crm")


def test_the_same_request_written_differently_is_a_replay(client, key):
    first = send(client, key, None, idempotency_key="k", raw=b'{"email": "ann@example.com", "context": {"a": 1, "b": [2]}}')

    again = send(client, key, None, idempotency_key="k",
                 raw=b'{ "context": {"b": [2], "a": 1},\n "channel": "email", "email": "ann@example.com" }')

    assert again.status_code == 202 and again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert Event.objects.count() == 1


@pytest.mark.parametrize("changed", [
    {"email": "bob@example.com", "context": {"order": 42}},
    {"email": "ann@example.com", "context": {"order": 43}},
    {"email": "ann@example.com", "context": {"order": 42}, "channel": "push"},
    {"email": "ann@example.com", "phone": "+33612345678", "context": {"order": 42}},
    {"email": "ann@example.com", "context": {"order": 42.0}},
])
def test_the_same_key_for_a_different_event_is_refused_409_and_nothing_stored(client, key, changed):
    first = send(client, key, {"email": "ann@example.com", "context": {"order": 42}}, idempotency_key="k")

    response = send(client, key, changed, idempotency_key="k")

    assert response.status_code == 409
    assert "already used for a different event" in response.json()["error"]
    assert list(Event.objects.values_list("id", flat=True)) == [first.json()["id"]]


def test_the_same_key_for_another_event_type_is_refused_409(client, key):
    send(client, key, {"email": "ann@example.com"}, idempotency_key="k")

    response = send(client, key, {"email": "ann@example.com"}, idempotency_key="k", path="/api/events/password.reset")

    assert response.status_code == 409 and Event.objects.count() == 1


def test_keys_are_scoped_per_api_key(client, key):
    other = api.create_api_key(name="shop")[1]
    body = {"email": "ann@example.com"}

    mine = send(client, key, body, idempotency_key="k")
    theirs = send(client, other, body, idempotency_key="k")

    assert mine.status_code == theirs.status_code == 202 and mine.json()["id"] != theirs.json()["id"]
    assert sorted(Event.objects.values_list("api_key__name", flat=True)) == ["crm", "shop"]


def test_requests_without_a_key_are_never_deduplicated(client, key):
    send(client, key, {"email": "ann@example.com"}, idempotency_key=None)
    send(client, key, {"email": "ann@example.com"}, idempotency_key=None)

    assert Event.objects.count() == 2
    assert set(Event.objects.values_list("idempotency_key", "request_fingerprint")) == {(None, None)}


def test_a_revoked_key_gets_403_even_for_a_replay(client, key):
    send(client, key, {"email": "ann@example.com"}, idempotency_key="k")
    api.revoke_api_keys(names=["crm"])

    assert send(client, key, {"email": "ann@example.com"}, idempotency_key="k").status_code == 403


def test_a_key_can_be_used_again_once_its_event_left_the_live_table(client, key):
    """The window: an idempotency key lasts as long as its event stays in Event."""
    first = send(client, key, {"email": "ann@example.com"}, idempotency_key="k").json()["id"]
    event = Event.objects.get(pk=first)
    EventHistory.objects.create(id=event.pk, event_type=event.event_type, email=event.email, status="sent")
    event.delete()

    again = send(client, key, {"email": "ann@example.com"}, idempotency_key="k")

    assert again.status_code == 202 and "Idempotent-Replayed" not in again and again.json()["id"] != first
    assert Event.objects.count() == 1


@pytest.mark.parametrize("value", ["", " ", " leading", "trailing ", "x" * 256, "é", "tab\there", "nul\x00", "line\nbreak",
                                   "\x7f"])
def test_an_invalid_idempotency_key_is_refused_400(client, key, value):
    response = send(client, key, {"email": "ann@example.com"}, idempotency_key=value)

    assert response.status_code == 400
    assert "Idempotency-Key header: 1 to 255 printable ASCII characters" in response.json()["error"]
    assert Event.objects.count() == 0


@pytest.mark.parametrize("value", [
    "a", "x" * 255, "order 42 / retry", "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./", "550e8400-e29b-41d4",
])
def test_printable_ascii_keys_up_to_255_characters_are_accepted(client, key, value):
    first = send(client, key, {"email": "ann@example.com"}, idempotency_key=value)
    again = send(client, key, {"email": "ann@example.com"}, idempotency_key=value)

    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    assert Event.objects.get().idempotency_key == value


def test_a_refused_request_does_not_use_up_its_key(client, key):
    assert send(client, key, {"email": "not an address"}, idempotency_key="k").status_code == 400

    response = send(client, key, {"email": "bob@example.com"}, idempotency_key="k")

    assert response.status_code == 202 and "Idempotent-Replayed" not in response


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_duplicates_make_one_event():
    key = api.create_api_key(name="crm")[1]
    body = {"email": "ann@example.com", "context": {"order": 7}}
    answers: list[tuple[int, int, bool]] = []
    start = threading.Barrier(8)

    def client() -> None:
        try:
            start.wait()
            response = send(Client(), key, body, idempotency_key="same")
            answers.append((response.status_code, response.json()["id"], response.has_header("Idempotent-Replayed")))
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(answers) == 8 and {status for status, _, _ in answers} == {202}
    assert len({event_id for _, event_id, _ in answers}) == 1
    assert sorted(replayed for _, _, replayed in answers) == [False] + [True] * 7
    assert Event.objects.filter(idempotency_key="same").count() == 1
