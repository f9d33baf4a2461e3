"""The event API's endpoints: one event, a batch of events, and the API's OpenAPI description.

Every refusal is a JSON body ``{"error": "..."}`` naming the field or the limit, and **nothing is
stored on refusal**: the checks (method, key, event type, headers, size, JSON, fields) all run
before the only write. Checking the key first means a client without one learns nothing else.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from pathlib import Path

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from campaign.api import parsing, storing
from campaign.api.keys import authenticate
from campaign.api.parsing import Refused
from campaign.models import APIKey

#: The OpenAPI 3.1 description of this API, served as is at ``/api/openapi.json``.
OPENAPI_PATH = Path(__file__).with_name("openapi.json")


def error(status: int, reason: str) -> JsonResponse:
    response = JsonResponse({"error": reason}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="events"'
    return response


def method_not_allowed(request: HttpRequest, allowed: str) -> JsonResponse:
    response = error(405, f"method {request.method} not allowed: use {allowed}")
    response["Allow"] = allowed
    return response


def authenticated(request: HttpRequest, event_type: str) -> APIKey:
    """The request's active key, once the event type is checked too; or :class:`Refused`."""
    api_key = authenticate(key=parsing.bearer_key(request))
    if api_key is None:
        raise Refused(403, "invalid or revoked API key")
    parsing.check_event_type(event_type)
    return api_key


@csrf_exempt  # authenticated by an API key, not by a session cookie: no CSRF exposure
def post_event(request: HttpRequest, event_type: str) -> JsonResponse:
    """``POST /api/events/<eventType>``: 202 ``{"id", "status": "pending"}`` or an error. A replay
    (same ``Idempotency-Key``, same request) gets the first answer, marked ``Idempotent-Replayed``."""
    if request.method != "POST":
        return method_not_allowed(request, "POST")
    try:
        api_key = authenticated(request, event_type)
        idempotency_key = parsing.idempotency_key_header(request)
        body = parsing.read_body(request, limit=parsing.max_body_bytes())
        parsed = parsing.parse_json(body)
        event = parsing.check_event(parsed.value, escaped=parsed.escaped)
        if idempotency_key is not None:
            event = replace(event, idempotency_key=idempotency_key)
        stored = storing.store_event(event_type=event_type, event=event, api_key=api_key)
    except Refused as refused:
        return error(refused.status, refused.reason)
    response = JsonResponse({"id": stored.id, "status": "pending"}, status=202)
    if stored.replayed:
        response["Idempotent-Replayed"] = "true"
    return response


@csrf_exempt  # authenticated by an API key, not by a session cookie: no CSRF exposure
def post_event_batch(request: HttpRequest, event_type: str) -> JsonResponse:
    """``POST /api/events/<eventType>/batch``: 202 ``{"events": [{"id", "status"}, ...]}`` in request
    order (``"replayed": true`` on events an earlier request stored), or an error and nothing stored."""
    if request.method != "POST":
        return method_not_allowed(request, "POST")
    try:
        api_key = authenticated(request, event_type)
        if "HTTP_IDEMPOTENCY_KEY" in request.META:
            raise Refused(400, "Idempotency-Key header: not used by the batch endpoint; give each event "
                               "its own idempotency_key")
        body = parsing.read_body(request, limit=parsing.max_batch_body_bytes())
        parsed = parsing.parse_json(body)
        events = parsing.check_batch(parsed.value, escaped=parsed.escaped)
        stored = storing.store_batch(event_type=event_type, events=events, api_key=api_key)
    except Refused as refused:
        return error(refused.status, refused.reason)
    answers = [{"id": one.id, "status": "pending", "replayed": True} if one.replayed else
               {"id": one.id, "status": "pending"} for one in stored]
    return JsonResponse({"events": answers}, status=202)


@cache
def openapi_bytes() -> bytes:
    return OPENAPI_PATH.read_bytes()


def openapi_document(request: HttpRequest) -> HttpResponse:
    """``GET /api/openapi.json``: the API's OpenAPI 3.1 description (public, like this documentation)."""
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(request, "GET, HEAD")
    return HttpResponse(openapi_bytes(), content_type="application/json")
