"""Reading and checking what a client sends to the event API, before the database sees any of it.

Why it exists: the body is the client's bytes, and everything a client can send must end in an
answer it can act on (a 4xx with a reason), never in a 500 and a traceback in the error log. So
a body is accepted only if PostgreSQL can store it as it is: the JSON is parsed with its numbers
checked (``NaN``, ``Infinity`` and ``1e400`` are not JSON numbers jsonb can hold), its nesting
is bounded, and no string (key or value) holds ``\\u0000`` or a lone surrogate (neither can be
stored in jsonb or in a text column).

Invariants:

- Every function here either returns checked values or raises :class:`Refused` with the status
  and the reason; nothing here writes.
- Reading is bounded: at most one byte past the limit is read, whatever the headers say; a
  chunked body (no ``Content-Length``) is read from the server's de-chunked input only when the
  server says that input ends (``wsgi.input_terminated``, set by gunicorn), else it is refused
  with 411.
- No recursion on client data: json.loads' own recursion limit is caught, and the depth and
  string checks walk the parsed value with an explicit stack.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.http import HttpRequest

from campaign.models import IDEMPOTENCY_KEY_MAX_LENGTH, Channel

#: Largest accepted body of ``POST /api/events/<eventType>``, in bytes, unless
#: ``settings.EVENT_MAX_BODY_BYTES`` says otherwise. An event is a recipient and a small context;
#: 64 KiB is generous for that and keeps one request's memory small whatever the client sends.
DEFAULT_MAX_BODY_BYTES = 64 * 1024

#: Largest accepted body of the batch endpoint, in bytes, unless
#: ``settings.EVENT_MAX_BATCH_BODY_BYTES`` says otherwise: 8 KiB per event for a full batch of 500,
#: several times a typical event, while a request's parsed body stays within a few tens of MB.
DEFAULT_MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024

#: Most events in one batch request, unless ``settings.EVENT_MAX_BATCH`` says otherwise: one
#: ``INSERT`` of 500 rows takes a few tens of milliseconds, so a batch's transaction stays short.
DEFAULT_MAX_BATCH = 500

#: Deepest nesting of one event's JSON object, the object itself being level 1 (its context is
#: level 2). Template contexts nest a few levels; 32 is far above that, and far below the
#: recursion limits of json.loads and of anything that walks a payload later (rendering, encoders).
MAX_NESTING_DEPTH = 32

EVENT_TYPE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
#: E.164 digits, with an optional leading "+": no spaces or punctuation, so the number is stored
#: exactly as the sending side will use it.
PHONE = re.compile(r"\+?[0-9]{6,15}")
EMAIL_MAX_LENGTH = 254  # Event.email (an EmailField) and RFC 5321
#: The common ASCII address, accepted without Django's EmailValidator (7.6 us a call against 0.7 us): a
#: subset of what the validator accepts, so any other address is judged by the validator itself.
SIMPLE_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*"
    r"\.(?!-)[A-Za-z-]{2,63}(?<!-)"
)
#: An idempotency key: printable ASCII, no leading or trailing space.
IDEMPOTENCY_KEY = re.compile(r"[!-~](?:[ -~]*[!-~])?")
#: What jsonb and text columns cannot hold: NUL and UTF-16 surrogates (only a lone one can reach
#: here, from a ``\\ud800`` escape; a pair escape is decoded into one character).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

FIELDS = ("email", "phone", "context", "channel")
BATCH_ITEM_FIELDS = (*FIELDS, "idempotency_key")
CHANNELS = frozenset(Channel.values)
FIELD_SETS = {fields: frozenset(fields) for fields in (FIELDS, BATCH_ITEM_FIELDS)}

_validate_email = EmailValidator()


class Refused(Exception):
    """A request the API refuses: ``status`` and the reason given to the client."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class CheckedEvent:
    """One checked event: what becomes an Event row, and its idempotency key if any."""

    email: str
    phone: str
    channel: str
    payload: dict[str, Any]
    idempotency_key: str | None = None

    def fingerprint(self, event_type: str) -> str:
        """SHA-256 of the event type and the canonical fields (defaults applied, keys sorted), so
        that a retry matches its first attempt whatever the key order or the spacing."""
        canonical = json.dumps(
            [event_type, self.email, self.phone, self.channel, self.payload],
            sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


# --- Limits --------------------------------------------------------------------------------------


def max_body_bytes() -> int:
    return int(getattr(settings, "EVENT_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


def max_batch_body_bytes() -> int:
    return int(getattr(settings, "EVENT_MAX_BATCH_BODY_BYTES", DEFAULT_MAX_BATCH_BODY_BYTES))


def max_batch() -> int:
    return int(getattr(settings, "EVENT_MAX_BATCH", DEFAULT_MAX_BATCH))


# --- Headers and URL -----------------------------------------------------------------------------


def bearer_key(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Refused(401, "authentication required: send the API key as 'Authorization: Bearer <key>'")
    return credentials.strip()


def check_event_type(event_type: str) -> None:
    if not EVENT_TYPE.fullmatch(event_type):
        raise Refused(400, "event type: 1 to 64 letters, digits, '_', '.' or '-'")


def check_idempotency_key(value: str, *, where: str) -> str:
    if len(value) > IDEMPOTENCY_KEY_MAX_LENGTH or not IDEMPOTENCY_KEY.fullmatch(value):
        raise Refused(400, f"{where}: 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters, "
                           "not starting or ending with a space")
    return value


def idempotency_key_header(request: HttpRequest) -> str | None:
    value = request.META.get("HTTP_IDEMPOTENCY_KEY")
    return None if value is None else check_idempotency_key(value, where="Idempotency-Key header")


# --- Body ----------------------------------------------------------------------------------------


def read_body(request: HttpRequest, *, limit: int) -> bytes:
    """The body, refused (413) when over ``limit``, as announced or as actually sent.

    ``Content-Length`` is checked first so that an oversized body is refused without being read;
    the bytes are counted too, since the header is the client's word. ``request.read`` (rather than
    ``request.body``) reads at most one byte past the limit whatever the client sends. Without a
    ``Content-Length``, Django's WSGI request reads nothing (its stream is bounded by that header),
    so a chunked body is read from the server's input, which gunicorn de-chunks and ends. (Under
    ASGI the server has read the whole body already, and ``request.read`` returns it.)
    """
    announced = request.META.get("CONTENT_LENGTH") or ""
    chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    if announced == "" and chunked and "wsgi.input" in request.META:  # under ASGI, request.read has it all
        if not request.META.get("wsgi.input_terminated"):
            raise Refused(411, "this server cannot read a chunked body: send a Content-Length")
        body = read_at_most(request.META["wsgi.input"], limit + 1)
    else:
        try:
            length = int(announced or "0")
        except ValueError:
            length = -1
        if length < 0:
            raise Refused(400, f"invalid Content-Length header: {announced!r}")
        if length > limit:
            raise Refused(413, f"body too large: {length} bytes, the limit is {limit} bytes")
        body = request.read(limit + 1)
    if len(body) > limit:
        raise Refused(413, f"body too large: more than {limit} bytes, the limit is {limit} bytes")
    return body


def read_at_most(stream: Any, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``, fewer only at its end (a read may return less)."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _refuse_constant(name: str) -> Any:
    raise Refused(400, f"malformed JSON: {name} is not a number JSON allows (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Refused(400, f"number out of range: {text[:40]} (numbers must be finite, within ±1.8e308)")
    return value


@dataclass(frozen=True, slots=True)
class JsonBody:
    """A parsed body, and whether its text has a ``\\u`` escape: without one no string in it can
    hold NUL or a lone surrogate (strict JSON refuses raw control characters, and UTF-8 cannot
    encode a surrogate), so the per-string check can be skipped."""

    value: Any
    escaped: bool


def parse_json(body: bytes) -> JsonBody:
    """The JSON value of ``body`` (UTF-8), its numbers finite; refused when empty or malformed."""
    if not body.strip():
        raise Refused(400, "empty body: send a JSON object")
    try:
        text = body.decode("utf-8-sig")  # JSON is UTF-8 (RFC 8259); a byte order mark is tolerated
    except UnicodeDecodeError:
        raise Refused(400, "malformed JSON: the body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise Refused(400, f"nesting too deep: at most {MAX_NESTING_DEPTH} levels of objects and arrays") from None
    except ValueError as problem:  # JSONDecodeError, or an integer of more than 4,300 digits
        raise Refused(400, f"malformed JSON: {problem}") from None
    return JsonBody(value, escaped="\\u" in text)


def check_storable(value: Any, *, where: str, strings: bool = True) -> None:
    """Refuse nesting deeper than MAX_NESTING_DEPTH (``value`` being level 1) and, with ``strings``,
    strings (keys included) holding NUL or a lone surrogate. Iterative: the depth is the client's."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING_DEPTH:
            raise Refused(400, f"{where}nesting too deep: at most {MAX_NESTING_DEPTH} levels of objects and arrays")
        if isinstance(node, dict):
            for key, item in node.items():
                if isinstance(item, (dict, list)):
                    stack.append((item, depth + 1))
                if strings:
                    if UNSTORABLE.search(key):
                        raise Refused(400, f"{where}key {key!r}: {unstorable_reason()}")
                    if isinstance(item, str) and UNSTORABLE.search(item):
                        raise Refused(400, f"{where}value of {key!r}: {unstorable_reason()}")
        else:
            for item in node:
                if isinstance(item, (dict, list)):
                    stack.append((item, depth + 1))
                elif strings and isinstance(item, str) and UNSTORABLE.search(item):
                    raise Refused(400, f"{where}array item: {unstorable_reason()}")


def unstorable_reason() -> str:
    return "strings cannot contain \\u0000 or a lone surrogate (\\ud800-\\udfff)"


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


def field_names(names: list[str]) -> str:
    """Names for a reason: as they are, or quoted and escaped when they hold control characters."""
    return ", ".join(name if name.isprintable() else repr(name) for name in names)


def is_email(value: str) -> bool:
    if SIMPLE_EMAIL.fullmatch(value):
        return True
    try:
        _validate_email(value)
    except ValidationError:
        return False
    return True


def check_event(data: Any, *, at: str = "", fields: tuple[str, ...] = FIELDS, escaped: bool = True) -> CheckedEvent:
    """Validate one event object; ``at`` names it in reasons (``events[3]``, or empty for a whole
    body), ``escaped`` is :attr:`JsonBody.escaped`. Returns the Event's fields or raises
    :class:`Refused` naming the first problem found."""
    if not isinstance(data, dict):
        raise Refused(400, f"{at or 'the body'} must be a JSON object, not {json_type(data)}")
    where = f"{at}." if at else ""
    if not data.keys() <= FIELD_SETS[fields]:
        unknown = sorted(set(data) - set(fields))
        raise Refused(400, f"{at}{': ' if at else ''}unknown field(s): {field_names(unknown)} "
                           f"(accepted: {', '.join(fields)})")
    email, phone, context = data.get("email"), data.get("phone"), data.get("context", {})
    channel, key = data.get("channel"), data.get("idempotency_key")
    for name, value, expected in (("email", email, str), ("phone", phone, str), ("context", context, dict),
                                  ("channel", channel, str), ("idempotency_key", key, str)):
        if value is not None and not isinstance(value, expected) or value is None and name in data:
            wanted = "an object" if expected is dict else "a string"
            raise Refused(400, f"{where}{name}: expected {wanted}, got {json_type(value)}")
    check_storable(data, where=where, strings=escaped)

    whole = f"{at}: " if at else ""
    if email is None and phone is None:
        raise Refused(400, f"{whole}missing recipient: give an email or a phone (or both)")
    if email is not None:
        if len(email) > EMAIL_MAX_LENGTH:
            raise Refused(400, f"{where}email: at most {EMAIL_MAX_LENGTH} characters")
        if not is_email(email):
            raise Refused(400, f"{where}email: not a valid email address: {email!r}")
    if phone is not None and not PHONE.fullmatch(phone):
        raise Refused(400, f"{where}phone: expected 6 to 15 digits with an optional leading '+', got {phone!r}")

    if channel is None:
        channel = Channel.EMAIL.value if email is not None else Channel.SMS.value
    elif channel not in CHANNELS:
        raise Refused(400, f"{where}channel: expected one of {', '.join(Channel.values)}, got {channel!r}")
    if channel == Channel.EMAIL and email is None:
        raise Refused(400, f"{whole}channel email needs an email")
    if channel == Channel.SMS and phone is None:
        raise Refused(400, f"{whole}channel sms needs a phone")
    if key is not None:
        check_idempotency_key(key, where=f"{where}idempotency_key")
    return CheckedEvent(email=email or "", phone=phone or "", channel=channel, payload=context, idempotency_key=key)


def check_batch(data: Any, *, escaped: bool = True) -> list[CheckedEvent]:
    """Validate a batch body ``{"events": [...]}``; all events or a refusal naming the first bad one."""
    if not isinstance(data, dict):
        raise Refused(400, f"the body must be a JSON object, not {json_type(data)}")
    unknown = sorted(set(data) - {"events"})
    if unknown:
        raise Refused(400, f"unknown field(s): {field_names(unknown)} (accepted: events)")
    events = data.get("events")
    if not isinstance(events, list):
        raise Refused(400, f"events: expected an array, got {json_type(events) if 'events' in data else 'nothing'}")
    if not events:
        raise Refused(400, "events: give at least one event")
    limit = max_batch()
    if len(events) > limit:
        raise Refused(400, f"events: at most {limit} events per request, got {len(events)}")
    checked = [check_event(item, at=f"events[{index}]", fields=BATCH_ITEM_FIELDS, escaped=escaped)
               for index, item in enumerate(events)]
    first_with: dict[str, int] = {}
    for index, event in enumerate(checked):
        if event.idempotency_key is not None:
            earlier = first_with.setdefault(event.idempotency_key, index)
            if earlier != index:
                raise Refused(400, f"events[{index}].idempotency_key: same key as events[{earlier}]")
    return checked
