"""The event API answers a 4xx with a JSON reason, never a 500, for any bytes a client sends:
values PostgreSQL cannot store (NaN, infinities, \\u0000, lone surrogates), deep nesting, and
chunked bodies (read within the limit). Nothing is stored on refusal, and nothing is logged at
ERROR (no traceback for a client's mistake).
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.test import Client, RequestFactory
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from campaign import api
from campaign.api import parsing
from campaign.models import Event
from tests.campaign.api.helpers import URL, gunicorn, post, raw_http


def nested(depth: int, *, leaf: str = "1") -> str:
    """A context nesting ``depth`` levels inside the event object (which is level 1)."""
    inner = leaf
    for level in range(depth, 1, -1):  # from the innermost level out to the context's (level 2)
        inner = f'{{"k": {inner}}}' if level % 2 == 0 else f"[{inner}]"
    return inner


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    return 0


UNSTORABLE = [
    (b'{"email": "ann@example.com", "context": {"total": NaN}}', "NaN is not a number JSON allows"),
    (b'{"email": "ann@example.com", "context": {"total": Infinity}}', "Infinity is not a number JSON allows"),
    (b'{"email": "ann@example.com", "context": {"total": -Infinity}}', "-Infinity is not a number JSON allows"),
    (b'{"email": "ann@example.com", "context": {"total": 1e400}}', "number out of range: 1e400"),
    (b'{"email": "ann@example.com", "context": {"total": -1.5E+999}}', "number out of range"),
    (b'{"email": "ann@example.com", "context": [1e400]}', "number out of range"),
    (b'{"email": "ann@example.com", "context": {"a": [1, {"b": 1e400}]}}', "number out of range"),
    (b'{"email": "ann@example.com", "context": {"note": "a\\u0000b"}}', "cannot contain \\u0000"),
    (b'{"email": "ann@example.com", "context": {"a\\u0000": 1}}', "key 'a\\x00'"),
    (b'{"email": "ann@example.com", "context": {"list": ["ok", "\\u0000"]}}', "array item"),
    (b'{"email": "ann@example.com", "context": {"note": "\\ud800"}}', "lone surrogate"),
    (b'{"email": "ann@example.com", "context": {"note": "x\\udfff"}}', "lone surrogate"),
    (b'{"email": "ann@example.com", "context": {"\\udc00": 1}}', "lone surrogate"),
    (b'{"email": "ann@example.com", "context": {"deep": [[[[{"x": "\\ud83d"}]]]]}}', "lone surrogate"),
    (b'{"email": "ann@ex\\ud800ample.com"}', "lone surrogate"),
    (b'{"email": "ann\\u0000@example.com"}', "cannot contain \\u0000"),
    (b'{"phone": "+33612345678\\u0000"}', "cannot contain \\u0000"),
    (b'{"email": "ann@example.com", "channel": "email\\u0000"}', "cannot contain \\u0000"),
    (b'{"email": "ann@example.com", "\\ud800": 1}', "unknown field(s): '\\ud800'"),
    (b'{"email": "ann@example.com", "context": {"n": ' + b"9" * 5000 + b"}}", "malformed JSON"),
    (b'{"email": "ann@example.com", "context": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nesting too deep"),
    (b"[" * 60_000, "nesting too deep"),
    (b'{"email": "ann@example.com", "context": ' + nested(33).encode() + b"}", "nesting too deep: at most 32 levels"),
]


@pytest.mark.parametrize("raw, reason", UNSTORABLE)
def test_unstorable_values_are_refused_400_with_a_reason_and_nothing_stored(client, key, settings, caplog, raw, reason):
    settings.EVENT_MAX_BODY_BYTES = 1_000_000
    with caplog.at_level(logging.WARNING):
        response = post(client, None, key=key, raw=raw)

    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    assert reason in response.json()["error"]
    assert Event.objects.count() == 0
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]


def test_nesting_of_exactly_32_levels_is_accepted(client, key):
    body = b'{"email": "ann@example.com", "context": ' + nested(32).encode() + b"}"

    response = post(client, None, key=key, raw=body)

    assert response.status_code == 202, response.content
    assert 1 + depth_of(Event.objects.get().payload) == 32


@pytest.mark.parametrize("value", ["1e308", "-1.7976931348623157e308", "1e-400", "123456789012345678901234567890", "-0.0"])
def test_large_finite_numbers_are_stored(client, key, value):
    response = post(client, None, key=key, raw=f'{{"email": "ann@example.com", "context": {{"n": {value}}}}}'.encode())

    assert response.status_code == 202, response.content
    stored = Event.objects.get().payload["n"]
    assert stored == json.loads(value) or float(stored) == json.loads(value), "jsonb may write 1e308 as its 309 digits"


@pytest.mark.parametrize("text", ["Zoë 🎁", "\\ud83c\\udf81 pair escape", "tab\\tnew line\\n", "\\u00e9\\uffff"])
def test_valid_unicode_and_escapes_are_stored_as_sent(client, key, text):
    response = post(client, None, key=key, raw=f'{{"email": "ann@example.com", "context": {{"t": "{text}"}}}}'.encode())

    assert response.status_code == 202, response.content
    assert Event.objects.get().payload == {"t": json.loads(f'"{text}"')}


@pytest.mark.parametrize("length", ["-1", "-100", "1.5", "0x10"])
def test_invalid_content_length_values_are_refused(client, key, length):
    response = post(client, {"email": "ann@example.com"}, key=key, CONTENT_LENGTH=length)

    assert response.status_code == 400 and "Content-Length" in response.json()["error"]
    assert Event.objects.count() == 0


# --- chunked bodies (no Content-Length) ------------------------------------------------------------


def chunked_request(key: str, body: bytes, *, terminated: bool = True) -> Any:
    """A request as gunicorn passes a chunked one: no CONTENT_LENGTH, the de-chunked body in
    ``wsgi.input``, and ``wsgi.input_terminated`` set."""
    request = RequestFactory().post(URL, data=b"", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}",
                                    HTTP_TRANSFER_ENCODING="chunked")
    request.META.pop("CONTENT_LENGTH", None)
    request.META["wsgi.input"] = io.BytesIO(body)
    if terminated:
        request.META["wsgi.input_terminated"] = True
    return request


def test_chunked_body_is_read_and_stored(key):
    response = api.post_event(chunked_request(key, b'{"email": "ann@example.com"}'), "order_confirmation")

    assert response.status_code == 202, response.content
    assert Event.objects.get().email == "ann@example.com"


def test_chunked_body_over_the_limit_is_refused_413_after_reading_one_byte_past_it(key, settings):
    settings.EVENT_MAX_BODY_BYTES = 100
    body = json.dumps({"email": "ann@example.com", "context": {"pad": "x" * 10_000}}).encode()
    request = chunked_request(key, body)

    response = api.post_event(request, "order_confirmation")

    assert response.status_code == 413 and "more than 100 bytes" in json.loads(response.content)["error"]
    assert request.META["wsgi.input"].tell() == 101, "never more than the limit plus one byte is read"
    assert Event.objects.count() == 0


def test_chunked_body_on_a_server_that_does_not_end_its_input_is_refused_411(key):
    response = api.post_event(chunked_request(key, b'{"email": "ann@example.com"}', terminated=False), "order_confirmation")

    assert response.status_code == 411 and "Content-Length" in json.loads(response.content)["error"]
    assert Event.objects.count() == 0


def chunked(path: str, key: str, body: bytes, *, chunk_size: int = 7) -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + chunk_size]), body[i:i + chunk_size])
                      for i in range(0, len(body), chunk_size))
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() \
        + chunks + b"0\r\n\r\n"


@pytest.mark.parametrize("production", [False, True], ids=["gthread", "gunicorn.conf.py"])
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_under_gunicorn_chunked_bodies_are_read_within_the_limit_and_bad_bytes_get_400_without_traceback(production):
    key = api.create_api_key(name="crm")[1]
    with gunicorn(workers=1, threads=2, production=production) as (base, log):
        accepted = raw_http(base, chunked(URL, key, json.dumps({"email": "ann@example.com", "context": {"n": 1}}).encode()))
        over = raw_http(base, chunked(URL, key,
                                      json.dumps({"email": "ann@example.com", "context": {"pad": "x" * 70_000}}).encode(),
                                      chunk_size=4096))
        batch = raw_http(base, chunked(f"{URL}/batch", key, json.dumps({"events": [{"phone": "+33612345678"}] * 3}).encode()))
        refused = [
            raw_http(base, chunked(URL, key, body)) for body in
            (b'{"email": "ann@example.com", "context": {"x": NaN}}', b'{"email": "ann@example.com", "context": {"x": "\\u0000"}}',
             b'{"email": "ann@example.com", "context": ' + b"[" * 5000 + b"]" * 5000 + b"}")
        ]
        log.seek(0)
        server_log = log.read().decode(errors="replace")

    assert accepted[0] == 202, accepted
    assert over[0] == 413 and b"the limit is 65536 bytes" in over[2]
    assert batch[0] == 202 and len(json.loads(batch[2])["events"]) == 3
    assert [status for status, _, _ in refused] == [400, 400, 400]
    assert all(headers["content-type"] == "application/json" for _, headers, _ in refused)
    assert list(Event.objects.order_by("id").values_list("email", "payload")) == \
        [("ann@example.com", {"n": 1})] + [("", {})] * 3
    assert "Traceback" not in server_log and "Internal Server Error" not in server_log


def test_a_client_without_a_key_gets_401_even_for_unstorable_bytes(db):
    response = Client().post(URL, data=b'{"email": "ann@example.com", "context": {"x": NaN}}', content_type="application/json")

    assert response.status_code == 401


def test_limits_are_named_constants():
    assert (parsing.MAX_NESTING_DEPTH, parsing.DEFAULT_MAX_BODY_BYTES, parsing.DEFAULT_MAX_BATCH_BODY_BYTES,
            parsing.DEFAULT_MAX_BATCH) == (32, 65_536, 4 * 1024 * 1024, 500)


@hypothesis_settings(max_examples=2000, deadline=None, database=None)
@given(st.one_of(st.emails(), st.text(max_size=40), st.from_regex(r"[a-zA-Z0-9.!#%+_-]{1,8}@[a-z0-9.-]{1,12}", fullmatch=True)))
def test_the_fast_email_check_agrees_with_djangos_validator(address):
    """The precompiled pattern only short-cuts addresses Django's EmailValidator accepts."""
    try:
        EmailValidator()(address)
        valid = True
    except ValidationError:
        valid = False

    assert parsing.is_email(address) == valid
    if parsing.SIMPLE_EMAIL.fullmatch(address):
        assert valid
