"""Which errors are worth retrying.

Only transient errors are retried (with backoff and jitter): the network, a 5xx or 429 answer, the
database connection lost or locked. Anything else is a permanent failure with a clear reason: a
retry would fail the same way and hide the real problem.

The network errors of requests and redis are recognised without importing either library: an error
of a library that no code has imported cannot have been raised, so only the loaded ones are looked
at (each takes some 50 ms to import, which every ``manage.py`` command would otherwise pay).
"""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError

# The classes are the integrations' (they raise them); activities import them from here or there.
from campaign.integrations.errors import PermanentError, TransientError

__all__ = ["TRANSIENT_HTTP_STATUSES", "TRANSIENT_TYPES", "PermanentError", "TransientError", "describe", "is_transient",
           "library_transient_types"]


#: Transient whatever the library: ours, the database's, the operating system's network errors
#: (requests' and redis' are added by :func:`library_transient_types`).
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    OperationalError,
    InterfaceError,
    ConnectionError,
)


#: HTTP answers worth another try: rate limited, or the server's own trouble.
TRANSIENT_HTTP_STATUSES = frozenset({429, 500, 502, 503, 504})


def library_transient_types() -> tuple[type[BaseException], ...]:
    """The connection errors and timeouts of requests and redis, of those two that are loaded."""
    found: list[type[BaseException]] = []
    if (requests := sys.modules.get("requests")) is not None:
        found += [requests.ConnectionError, requests.Timeout]
    if (redis_exceptions := sys.modules.get("redis.exceptions")) is not None:
        found.append(redis_exceptions.ConnectionError)
    return tuple(found)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, PermanentError):
        return False
    requests = sys.modules.get("requests")
    if requests is not None and isinstance(error, requests.HTTPError):
        return error.response is not None and error.response.status_code in TRANSIENT_HTTP_STATUSES
    return isinstance(error, TRANSIENT_TYPES + library_transient_types())


def describe(error: BaseException) -> str:
    """One line an operator can act on: the error's type and message, never a traceback."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, (TransientError, PermanentError)):
        return message or type(error).__name__
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
