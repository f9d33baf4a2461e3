"""Fuzzing the event API with hypothesis: random JSON-ish bodies (NaN, infinities, huge numbers,
\\u0000, lone surrogates, deep nesting, random unicode), random bytes and random idempotency keys,
to both endpoints. Whatever is sent: never a 5xx; a 4xx is a JSON reason and stores nothing; a
202 stores exactly its new events (none for a replay).

Bounded for CI: a fixed number of examples per test (10 to 15 s per database on the 2-core
machine through the test client), a per-example deadline far above a request's few milliseconds,
and no example database written into the source tree.
"""

from __future__ import annotations

import json
import string
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign import api
from campaign.models import Event
from tests.campaign.api.helpers import gunicorn, raw_http

FUZZ = settings(max_examples=1000, deadline=timedelta(seconds=5), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Any code point, lone surrogates and NUL included.
any_text = st.text(st.characters(exclude_categories=()), max_size=20)
nasty_numbers = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e308", "1e-400", "9" * 400,
                                 "9" * 5000, "-0", "0.1e1", "1E+2"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), any_text)
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)), max_leaves=12)
emails = st.one_of(st.emails(), any_text, st.sampled_from(["ann@example.com", "ann@", '"a\\\\b"@example.com']))
phones = st.one_of(st.from_regex(r"\+?[0-9]{6,15}", fullmatch=True), any_text)
idempotency_keys = st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"]), st.text(string.printable, max_size=8),
                             st.text(st.characters(max_codepoint=255), max_size=300))


@st.composite
def events(draw: st.DrawFn, *, batch_item: bool = False) -> Any:
    """An event-ish object: mostly a valid recipient with a random context (where the nasty values
    go), sometimes random fields and values, sometimes not an object at all."""
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return draw(json_values)
    event: dict[str, Any] = {}
    if shape <= 6:
        event["email" if draw(st.booleans()) else "phone"] = draw(st.sampled_from(["ann@example.com", "+33612345678"]))
        if "phone" in event:
            event["phone"] = "+33612345678"
        else:
            event["email"] = "ann@example.com"
    else:
        if draw(st.booleans()):
            event["email"] = draw(emails)
        if draw(st.booleans()):
            event["phone"] = draw(phones)
        if draw(st.integers(0, 3)) == 0:
            event["channel"] = draw(st.one_of(st.sampled_from(["email", "sms", "push", "fax"]), json_values))
        if draw(st.integers(0, 4)) == 0:
            event[draw(any_text)] = draw(json_values)
    if draw(st.integers(0, 4)) > 0:
        event["context"] = draw(st.one_of(st.dictionaries(any_text, json_values, max_size=4),
                                          st.dictionaries(st.text(max_size=5), json_values, max_size=4), json_values))
    if batch_item and draw(st.booleans()):
        event["idempotency_key"] = draw(st.one_of(idempotency_keys, json_values))
    return event


def encode(value: Any, *, draw: st.DrawFn) -> bytes:
    """JSON text of ``value`` (NaN and infinities written as Python does), sometimes with a nasty
    number, a deep nesting or a cut inserted."""
    text = json.dumps(value, allow_nan=True)
    trick = draw(st.integers(0, 5))
    if trick == 0 and text.endswith("}") and len(text) > 2:
        text = text[:-1] + f', "context": {{"n": {draw(nasty_numbers)}}}}}'
    elif trick == 1 and text.endswith("}") and len(text) > 2:
        depth = draw(st.integers(20, 3000))
        text = text[:-1] + ', "context": {"deep": ' + "[" * depth + "]" * depth + "}}"
    elif trick == 2:
        text = text[:draw(st.integers(0, len(text)))]
    return text.encode("utf-8", "surrogatepass") if draw(st.integers(0, 9)) == 0 else text.encode()


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    """(path, body, Idempotency-Key header or None)."""
    event_type = draw(st.sampled_from(["order", "password.reset"])) if draw(st.integers(0, 4)) else \
        draw(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=70))
    path = f"/api/events/{quote(event_type, safe='')}"
    if draw(st.booleans()):
        path += "/batch"
        body_value: Any = {"events": draw(st.lists(events(batch_item=True), max_size=6))}
        if draw(st.integers(0, 9)) == 0:
            body_value = draw(json_values)
    else:
        body_value = draw(events())
    body = draw(st.binary(max_size=200)) if draw(st.integers(0, 9)) == 0 else encode(body_value, draw=draw)
    return path, body, draw(idempotency_keys) if draw(st.integers(0, 2)) == 0 else None


def check_answer(response_status: int, answer: Any, stored: int, *, batch: bool, replayed_header: bool) -> None:
    assert response_status < 500, answer
    if response_status == 202:
        if batch:
            assert stored == sum(1 for item in answer["events"] if not item.get("replayed")), answer
        else:
            assert stored == (0 if replayed_header else 1), answer
    else:
        assert 400 <= response_status < 500 and set(answer) == {"error"}, answer
        assert stored == 0, answer


def test_fuzzed_requests_never_get_a_5xx_and_store_only_on_202(db):
    key = api.create_api_key(name="fuzz")[1]
    client = Client(raise_request_exception=False)

    @FUZZ
    @given(requests())
    def one(request: tuple[str, bytes, str | None]) -> None:
        path, body, idempotency_key = request
        headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
        if idempotency_key is not None:
            headers["HTTP_IDEMPOTENCY_KEY"] = idempotency_key
        before = Event.objects.count()
        response = client.post(path, data=body, content_type="application/json", **headers)
        stored = Event.objects.count() - before
        if response.status_code == 404:  # an event type with a "/" in it (quoted) is not an API URL
            assert stored == 0
            return
        check_answer(response.status_code, response.json(), stored, batch=path.endswith("/batch"),
                     replayed_header=response.has_header("Idempotent-Replayed"))

    one()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_fuzzed_requests_through_gunicorn_never_get_a_5xx_nor_log_a_traceback():
    key = api.create_api_key(name="fuzz")[1]
    with gunicorn(workers=1, threads=2) as (base, log):

        @settings(FUZZ, max_examples=100)
        @given(requests())
        def one(request: tuple[str, bytes, str | None]) -> None:
            path, body, idempotency_key = request
            header = "" if idempotency_key is None or any(c in idempotency_key for c in "\r\n") else \
                f"Idempotency-Key: {idempotency_key}\r\n"
            before = Event.objects.count()
            status, _headers, answer = raw_http(base, (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n{header}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1") + body)
            stored = Event.objects.count() - before
            assert status < 500, (status, answer)
            if status in (202, 400, 403, 409, 413):  # gunicorn itself may refuse a header it deems invalid (400, no JSON)
                if status == 202 or answer.startswith(b"{"):
                    check_answer(status, json.loads(answer), stored, batch=path.endswith("/batch"),
                                 replayed_header="idempotent-replayed" in _headers)
            else:
                assert stored == 0 and status == 404, (status, answer)

        one()
        log.seek(0)
        server_log = log.read().decode(errors="replace")
    assert "Traceback" not in server_log and "Internal Server Error" not in server_log, server_log[-3000:]
