"""The event API: ``POST /api/events/<eventType>`` (one event) and ``POST /api/events/<eventType>/batch``
create pending transactional Events, authenticated by API keys; ``GET /api/openapi.json``
describes them. See docs/event-api.md.

The API is the front door of real-time messages, called by the customer's own systems, so it
refuses anything it could not store or route later, and says why: every refusal is a 4xx with a
JSON body ``{"error": "..."}``, whatever bytes the client sent, and nothing is stored on refusal.

- ``keys``: creating, revoking and authenticating API keys (only their SHA-256 is stored);
- ``parsing``: reading the body within its limit and checking it (JSON, numbers, nesting,
  strings, fields) before the database sees it;
- ``storing``: the inserts, and idempotency keys (a retried request gets its first answer);
- ``views``: the endpoints; ``openapi.json``: the API's OpenAPI 3.1 description.
"""

from campaign.api.keys import KeyNameTaken, authenticate, create_api_key, hash_key, revoke_api_keys, set_new_key
from campaign.api.parsing import DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH_BODY_BYTES, DEFAULT_MAX_BODY_BYTES, MAX_NESTING_DEPTH
from campaign.api.views import openapi_document, post_event, post_event_batch

__all__ = [
    "DEFAULT_MAX_BATCH", "DEFAULT_MAX_BATCH_BODY_BYTES", "DEFAULT_MAX_BODY_BYTES", "MAX_NESTING_DEPTH", "KeyNameTaken",
    "authenticate", "create_api_key", "hash_key", "openapi_document", "post_event", "post_event_batch",
    "revoke_api_keys", "set_new_key",
]
