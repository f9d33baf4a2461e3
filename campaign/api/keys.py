"""The event API: ``POST /api/events/<eventType>`` creates a pending transactional Event,
and the API keys that authenticate it.

The API is the front door of real-time messages, called by the customer's own systems, so it
refuses anything it could not route later, and it says why: every refusal is a JSON body
``{"error": "..."}`` naming the field or the limit, and **nothing is stored on refusal** (the
only write, the Event row, happens after every check passed).

Keys: ``Authorization: Bearer <key>``. Only the SHA-256 of a key is stored (``APIKey.key_hash``),
so a database dump does not leak usable keys; the key itself is shown once, at creation. A key
has 256 bits of randomness, so a fast unsalted hash is enough (salting and stretching protect
low-entropy passwords, not random tokens) and a lookup is one indexed equality.

Status codes: 202 accepted; 400 malformed request (bad JSON, unknown field, wrong type, bad
format, bad event type); 401 no bearer credentials (with ``WWW-Authenticate``); 403 unknown or
revoked key; 405 not POST; 413 body over ``EVENT_MAX_BODY_BYTES`` (default 64 KiB).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from campaign.models import APIKey, Channel, Event, EventStatus

#: Largest accepted body, in bytes, unless ``settings.EVENT_MAX_BODY_BYTES`` says otherwise. An
#: event is a recipient and a small context; 64 KiB is generous for that and keeps one request's
#: memory small whatever the client sends.
DEFAULT_MAX_BODY_BYTES = 64 * 1024

#: Random bytes in a new key (256 bits); the key is their URL-safe base64 (43 characters).
KEY_BYTES = 32
PREFIX_LENGTH = 8

#: ``last_used_at`` is written at most this often per key, so that a busy client does not turn
#: every accepted event into two writes.
LAST_USED_RESOLUTION = timedelta(minutes=1)

EVENT_TYPE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
#: E.164 digits, with an optional leading "+": no spaces or punctuation, so the number is stored
#: exactly as the sending side will use it.
PHONE = re.compile(r"\+?[0-9]{6,15}")
EMAIL_MAX_LENGTH = 254  # Event.email (an EmailField) and RFC 5321
FIELDS = ("email", "phone", "context", "channel")

_validate_email = EmailValidator()


# --- Keys ----------------------------------------------------------------------------------------


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def set_new_key(api_key: APIKey) -> str:
    """Give ``api_key`` (not saved yet) a new random key's hash and prefix; returns the key."""
    key = secrets.token_urlsafe(KEY_BYTES)
    api_key.key_hash = hash_key(key)
    api_key.prefix = key[:PREFIX_LENGTH]
    return key


class KeyNameTaken(ValueError):
    pass


def create_api_key(*, name: str, created_by: AbstractBaseUser | None = None) -> tuple[APIKey, str]:
    """Create a key named ``name``; returns the row and the key, which is not stored anywhere."""
    name = name.strip()
    if not name:
        raise ValueError("an API key needs a name")
    api_key = APIKey(name=name, created_by=created_by)
    key = set_new_key(api_key)
    try:
        with transaction.atomic():
            api_key.save(force_insert=True)
    except IntegrityError:
        if APIKey.objects.filter(name=name).exists():
            raise KeyNameTaken(f"an API key named {name!r} already exists (revoked keys keep their name)") from None
        raise
    return api_key, key


def revoke_api_keys(*, names: list[str] | None = None, ids: list[int] | None = None) -> int:
    """Revoke the active keys among those named (or with those ids); returns how many were revoked."""
    keys = APIKey.objects.active()
    if names is not None:
        keys = keys.filter(name__in=names)
    if ids is not None:
        keys = keys.filter(pk__in=ids)
    return keys.update(revoked_at=timezone.now())


def authenticate(*, key: str) -> APIKey | None:
    """The active key ``key`` is, or None (unknown or revoked); records its use."""
    api_key = APIKey.objects.active().filter(key_hash=hash_key(key)).first()
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        APIKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key


# --- The endpoint --------------------------------------------------------------------------------


class Refused(Exception):
    """A request the API refuses: ``status`` and the reason given to the client."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


def max_body_bytes() -> int:
    return int(getattr(settings, "EVENT_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


def error(status: int, reason: str) -> JsonResponse:
    response = JsonResponse({"error": reason}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="events"'
    return response


def bearer_key(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Refused(401, "authentication required: send the API key as 'Authorization: Bearer <key>'")
    return credentials.strip()


def read_body(request: HttpRequest) -> bytes:
    """The body, refused (413) when over the limit, as announced or as actually sent.

    ``Content-Length`` is checked first so that an oversized body is refused without being read;
    the bytes are counted too, since the header is the client's word. ``request.read`` (rather than
    ``request.body``) reads at most one byte past the limit whatever the client sends.
    """
    limit = max_body_bytes()
    announced = request.META.get("CONTENT_LENGTH") or "0"
    try:
        length = int(announced)
    except ValueError:
        raise Refused(400, f"invalid Content-Length header: {announced!r}") from None
    if length > limit:
        raise Refused(413, f"body too large: {length} bytes, the limit is {limit} bytes")
    body = request.read(limit + 1)
    if len(body) > limit:
        raise Refused(413, f"body too large: more than {limit} bytes, the limit is {limit} bytes")
    return body


def parse_event(body: bytes) -> dict[str, Any]:
    """Validate a request body; returns the Event's fields (``email``, ``phone``, ``channel``,
    ``payload``) or raises :class:`Refused` naming the first problem found."""
    if not body.strip():
        raise Refused(400, "empty body: send a JSON object with an email or a phone")
    try:
        text = body.decode("utf-8-sig")  # JSON is UTF-8 (RFC 8259); a byte order mark is tolerated
    except UnicodeDecodeError:
        raise Refused(400, "malformed JSON: the body is not UTF-8") from None
    try:
        data = json.loads(text)
    except ValueError as problem:
        raise Refused(400, f"malformed JSON: {problem}") from None
    if not isinstance(data, dict):
        raise Refused(400, f"the body must be a JSON object, not {json_type(data)}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise Refused(400, f"unknown field(s): {', '.join(unknown)} (accepted: {', '.join(FIELDS)})")
    for name in FIELDS:
        expected = dict if name == "context" else str
        if name in data and not isinstance(data[name], expected):
            wanted = "an object" if expected is dict else "a string"
            raise Refused(400, f"{name}: expected {wanted}, got {json_type(data[name])}")

    email, phone = data.get("email"), data.get("phone")
    if email is None and phone is None:
        raise Refused(400, "missing recipient: give an email or a phone (or both)")
    if email is not None:
        if len(email) > EMAIL_MAX_LENGTH:
            raise Refused(400, f"email: at most {EMAIL_MAX_LENGTH} characters")
        try:
            _validate_email(email)
        except ValidationError:
            raise Refused(400, f"email: not a valid email address: {email!r}") from None
    if phone is not None and not PHONE.fullmatch(phone):
        raise Refused(400, f"phone: expected 6 to 15 digits with an optional leading '+', got {phone!r}")

    channel = data.get("channel", Channel.EMAIL if email is not None else Channel.SMS)
    if channel not in Channel.values:
        raise Refused(400, f"channel: expected one of {', '.join(Channel.values)}, got {channel!r}")
    if channel == Channel.EMAIL and email is None:
        raise Refused(400, "channel email needs an email")
    if channel == Channel.SMS and phone is None:
        raise Refused(400, "channel sms needs a phone")
    return {"email": email or "", "phone": phone or "", "channel": channel, "payload": data.get("context", {})}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


@csrf_exempt  # authenticated by an API key, not by a session cookie: no CSRF exposure
def post_event(request: HttpRequest, event_type: str) -> JsonResponse:
    """``POST /api/events/<eventType>``: 202 ``{"id", "status": "pending"}`` or an error."""
    if request.method != "POST":
        response = error(405, f"method {request.method} not allowed: use POST")
        response["Allow"] = "POST"
        return response
    try:
        key = bearer_key(request)
        if authenticate(key=key) is None:
            raise Refused(403, "invalid or revoked API key")
        if not EVENT_TYPE.fullmatch(event_type):
            raise Refused(400, "event type: 1 to 64 letters, digits, '_', '.' or '-'")
        fields = parse_event(read_body(request))
    except Refused as refused:
        return error(refused.status, refused.reason)
    now = timezone.now()
    event = Event.objects.create(
        event_type=event_type, status=EventStatus.PENDING, created_at=now, updated_at=now, **fields,
    )
    return JsonResponse({"id": event.pk, "status": event.status}, status=202)
