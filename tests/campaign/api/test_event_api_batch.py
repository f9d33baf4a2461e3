"""``POST /api/events/<eventType>/batch``: up to EVENT_MAX_BATCH events, all or nothing, ids in
request order, per-event idempotency keys; and its throughput on the database of the run.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from campaign import api
from campaign.models import Event

BATCH_URL = "/api/events/order_confirmation/batch"


def send(client: Client, key: str, body: Any, *, raw: bytes | None = None, path: str = BATCH_URL, **extra: Any) -> Any:
    data = raw if raw is not None else json.dumps(body).encode()
    return client.post(path, data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}", **extra)


def test_a_batch_is_stored_in_request_order(client, key):
    events = [{"email": "ann@example.com", "context": {"n": 0}}, {"phone": "+33612345678"},
              {"email": "bob@example.com", "phone": "0612345678", "channel": "sms", "context": {"n": 2}},
              {"phone": "+33612345678", "channel": "push"}]

    response = send(client, key, {"events": events})

    assert response.status_code == 202, response.content
    answers = response.json()["events"]
    assert [answer["status"] for answer in answers] == ["pending"] * 4 and all("replayed" not in a for a in answers)
    stored = {event.pk: event for event in Event.objects.all()}
    assert [(stored[a["id"]].email, stored[a["id"]].phone, stored[a["id"]].channel, stored[a["id"]].payload)
            for a in answers] == [("ann@example.com", "", "email", {"n": 0}), ("", "+33612345678", "sms", {}),
                                  ("bob@example.com", "0612345678", "sms", {"n": 2}), ("", "+33612345678", "push", {})]
    assert {(event.event_type, event.status, event.api_key.name) for event in stored.values()} == \
        {("order_confirmation", "pending", "crm")}


@pytest.mark.parametrize("events, reason", [
    ([{"email": "ann@example.com"}] * 3 + [{"email": "ann@"}], "events[3].email: not a valid email address: 'ann@'"),
    ([{"email": "ann@example.com"}, {"phone": "12"}], "events[1].phone: expected 6 to 15 digits"),
    ([{"email": "ann@example.com"}, {}], "events[1]: missing recipient"),
    ([{"email": "ann@example.com", "name": "Ann"}], "events[0]: unknown field(s): name"),
    ([{"email": "ann@example.com"}, "ann@example.com"], "events[1] must be a JSON object, not a string"),
    ([{"email": "ann@example.com", "context": {"a": "\u0000"}}], "events[0].value of 'a'"),
    ([{"email": "ann@example.com", "idempotency_key": ""}], "events[0].idempotency_key: 1 to 255 printable ASCII"),
    ([{"email": "ann@example.com", "idempotency_key": 7}], "events[0].idempotency_key: expected a string, got a number"),
    ([{"email": "a@example.com", "idempotency_key": "k"}, {"email": "b@example.com", "idempotency_key": "k"}],
     "events[1].idempotency_key: same key as events[0]"),
    ([{"email": "ann@example.com", "channel": "sms"}], "events[0]: channel sms needs a phone"),
    ([], "events: give at least one event"),
])
def test_any_invalid_event_refuses_the_whole_batch_naming_it(client, key, events, reason):
    response = send(client, key, {"events": events})

    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert Event.objects.count() == 0


@pytest.mark.parametrize("raw, reason", [
    (b'[{"email": "ann@example.com"}]', "the body must be a JSON object, not an array"),
    (b'{"email": "ann@example.com"}', "unknown field(s): email (accepted: events)"),
    (b'{}', "events: expected an array, got nothing"),
    (b'{"events": {"email": "ann@example.com"}}', "events: expected an array, got an object"),
    (b'{"events": [{"email": "ann@example.com", "context": {"x": NaN}}]}', "NaN"),
    (b'{"events": [' + b"[" * 3000 + b"]" * 3000 + b"]}", "nesting too deep"),
])
def test_a_malformed_batch_is_refused(client, key, raw, reason):
    response = send(client, key, None, raw=raw)

    assert response.status_code == 400 and reason in response.json()["error"]
    assert Event.objects.count() == 0


def test_an_event_may_nest_as_deep_in_a_batch_as_alone(client, key):
    context: Any = {}
    for _ in range(30):  # the event object is level 1, its context level 2: 31 + 1 = 32 levels
        context = {"k": context}

    response = send(client, key, {"events": [{"email": "ann@example.com", "context": context}]})

    assert response.status_code == 202, response.content


def test_at_most_event_max_batch_events(client, key, settings):
    settings.EVENT_MAX_BATCH = 3

    assert send(client, key, {"events": [{"phone": "+33612345678"}] * 3}).status_code == 202
    response = send(client, key, {"events": [{"phone": "+33612345678"}] * 4})

    assert response.status_code == 400 and response.json()["error"] == "events: at most 3 events per request, got 4"
    assert Event.objects.count() == 3


def test_default_batch_limits_fit_a_full_batch_of_ordinary_events(client, key):
    events = [{"email": f"user{n}@example.com", "context": {"order": n, "items": [{"sku": "A-1", "qty": 2}], "pad": "x" * 6000},
               "idempotency_key": f"order-{n}"} for n in range(api.DEFAULT_MAX_BATCH)]
    body = json.dumps({"events": events}).encode()
    assert len(body) < api.DEFAULT_MAX_BATCH_BODY_BYTES

    response = send(client, key, None, raw=body)

    assert response.status_code == 202, response.content[:300]
    assert Event.objects.count() == 500


def test_a_batch_over_the_batch_body_limit_is_refused_413(client, key, settings):
    settings.EVENT_MAX_BATCH_BODY_BYTES = 1000
    body = json.dumps({"events": [{"email": "ann@example.com", "context": {"pad": "x" * 1000}}]}).encode()

    response = send(client, key, None, raw=body)

    assert response.status_code == 413 and "the limit is 1000 bytes" in response.json()["error"]
    assert Event.objects.count() == 0


def test_the_batch_body_limit_is_separate_from_the_single_event_limit(client, key, settings):
    settings.EVENT_MAX_BODY_BYTES = 1024
    events = [{"email": "ann@example.com", "context": {"pad": "x" * 2000}}]

    assert send(client, key, {"events": events}).status_code == 202
    assert send(client, key, events[0], path="/api/events/order_confirmation").status_code == 413


def test_items_with_a_used_key_return_the_stored_id_and_are_not_stored_again(client, key):
    single = client.post("/api/events/order_confirmation", data=json.dumps({"email": "ann@example.com"}),
                         content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_IDEMPOTENCY_KEY="a")
    batch = [{"email": "ann@example.com", "idempotency_key": "a"}, {"email": "bob@example.com", "idempotency_key": "b"},
             {"email": "cat@example.com"}]

    first = send(client, key, {"events": batch}).json()["events"]
    again = send(client, key, {"events": batch}).json()["events"]

    assert first[0] == {"id": single.json()["id"], "status": "pending", "replayed": True}
    assert "replayed" not in first[1] and "replayed" not in first[2]
    assert again[0] == first[0] and again[1] == {**first[1], "replayed": True}
    assert "replayed" not in again[2] and again[2]["id"] != first[2]["id"], "an event without a key is new each time"
    assert sorted(Event.objects.values_list("email", flat=True)) == \
        ["ann@example.com", "bob@example.com", "cat@example.com", "cat@example.com"]


def test_a_used_key_for_a_different_event_refuses_the_whole_batch_409(client, key):
    send(client, key, {"events": [{"email": "ann@example.com", "idempotency_key": "a"}]})

    response = send(client, key, {"events": [{"email": "new@example.com", "idempotency_key": "n"},
                                             {"email": "bob@example.com", "idempotency_key": "a"}]})

    assert response.status_code == 409
    assert response.json()["error"].startswith("events[1].idempotency_key: this idempotency key was already used")
    assert list(Event.objects.values_list("email", flat=True)) == ["ann@example.com"]


def test_the_idempotency_key_header_is_refused_on_a_batch(client, key):
    response = send(client, key, {"events": [{"email": "ann@example.com"}]}, HTTP_IDEMPOTENCY_KEY="k")

    assert response.status_code == 400 and "give each event its own idempotency_key" in response.json()["error"]
    assert Event.objects.count() == 0


def test_batch_authentication_and_method(client, key):
    assert client.post(BATCH_URL, data="{}", content_type="application/json").status_code == 401
    assert send(client, key + "x", {"events": [{"email": "ann@example.com"}]}).status_code == 403
    assert send(client, key, {"events": [{"email": "a@example.com"}]}, path="/api/events/a%20b/batch").status_code == 400
    response = client.get(BATCH_URL, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 405 and response["Allow"] == "POST"
    assert Event.objects.count() == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_batches_sharing_keys_store_each_key_once():
    key = api.create_api_key(name="crm")[1]
    events = [{"email": f"user{n}@example.com", "idempotency_key": f"k{n}"} for n in range(50)]
    answers: list[list[int]] = []
    start = threading.Barrier(6)

    def client(offset: int) -> None:
        try:
            start.wait()
            rotated = events[offset:] + events[:offset]
            response = send(Client(), key, {"events": rotated})
            assert response.status_code == 202, response.content
            by_key = {event["idempotency_key"]: answer["id"]
                      for event, answer in zip(rotated, response.json()["events"], strict=True)}
            answers.append([by_key[f"k{n}"] for n in range(50)])
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(offset * 7,)) for offset in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(answers) == 6 and all(ids == answers[0] for ids in answers), "every client got the same id per key"
    assert Event.objects.count() == 50


BATCHES = 20


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_batch_throughput(client):
    """Measured, not asserted (the machine's load varies): events/s through the batch endpoint,
    one client in process, batches of 500 ordinary events. See docs/performance.md for figures."""
    key = api.create_api_key(name="bench")[1]
    bodies = [json.dumps({"events": [{"email": f"user{batch}-{n}@example.com", "context": {"order": {"id": n, "total": 12.5}}}
                                     for n in range(api.DEFAULT_MAX_BATCH)]}) for batch in range(BATCHES)]
    started = time.perf_counter()
    for body in bodies:
        assert send(client, key, None, raw=body.encode(), path="/api/events/bench/batch").status_code == 202
    elapsed = time.perf_counter() - started
    assert Event.objects.filter(event_type="bench").count() == BATCHES * api.DEFAULT_MAX_BATCH
    print(f"\n{BATCHES * api.DEFAULT_MAX_BATCH} events in {BATCHES} batches: {BATCHES * api.DEFAULT_MAX_BATCH / elapsed:.0f} "
          f"events/s on {connection.vendor}")


def test_batch_values_round_trip_exactly_whatever_their_characters(client, key):
    """On PostgreSQL the batch goes by COPY, whose text format escapes backslashes, tabs and newlines."""
    context = {"path": "C:\\new\\table", "text": "tab\there\nline\r\nend", "quote": "\"'", "slash\\key": "\\N",
               "unicode": "Zoë 🎁 \u2028", "nested": [{"a": None, "b": True, "c": 1.5, "d": -7}]}
    events = [{"email": '"ann\\\\tab"@example.com', "context": context, "idempotency_key": "back\\slash\\N"},
              {"phone": "+33612345678", "context": {"\\t": "\\"}}]

    response = send(client, key, {"events": events})

    assert response.status_code == 202, response.content
    first, second = (Event.objects.get(pk=answer["id"]) for answer in response.json()["events"])
    assert (first.email, first.payload, first.idempotency_key) == ('"ann\\\\tab"@example.com', context, "back\\slash\\N")
    assert second.payload == {"\\t": "\\"} and second.idempotency_key is None and second.request_fingerprint is None
    assert (first.template_id, first.delivery_log_id, first.processed_at) == (None, None, None)
    assert send(client, key, {"events": events[:1]}).json()["events"] == [{"id": first.pk, "status": "pending", "replayed": True}]
