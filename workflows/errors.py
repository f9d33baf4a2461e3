"""Which errors are worth retrying.

Only transient errors are retried (with backoff and jitter): the network, a 5xx or 429 answer, the
database connection lost or locked. Anything else is a permanent failure with a clear reason: a
retry would fail the same way and hide the real problem.
"""

from __future__ import annotations

import redis.exceptions
import requests
from django.db import InterfaceError, OperationalError

# The classes are the integrations' (they raise them); activities import them from here or there.
from campaign.integrations.errors import PermanentError, TransientError

__all__ = ["TRANSIENT_HTTP_STATUSES", "TRANSIENT_TYPES", "PermanentError", "TransientError", "describe", "is_transient"]


TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    requests.ConnectionError,
    requests.Timeout,
    OperationalError,
    InterfaceError,
    ConnectionError,
    redis.exceptions.ConnectionError,
)


#: HTTP answers worth another try: rate limited, or the server's own trouble.
TRANSIENT_HTTP_STATUSES = frozenset({429, 500, 502, 503, 504})


def is_transient(error: BaseException) -> bool:
    if isinstance(error, PermanentError):
        return False
    if isinstance(error, requests.HTTPError):
        return error.response is not None and error.response.status_code in TRANSIENT_HTTP_STATUSES
    return isinstance(error, TRANSIENT_TYPES)


def describe(error: BaseException) -> str:
    """One line an operator can act on: the error's type and message, never a traceback."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, (TransientError, PermanentError)):
        return message or type(error).__name__
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
