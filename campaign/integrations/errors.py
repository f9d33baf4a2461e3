"""The two kinds of failure an external service (or anything an activity calls) can raise.

They live with the integrations because the clients raise them, and the domain sits below the
workflow engine: the engine classifies them (:func:`workflows.errors.is_transient`), the clients
never ask how.

- :class:`TransientError`: may pass by itself (a 503, a timeout); the engine retries the run.
- :class:`PermanentError`: will not pass by itself (bad configuration, a malformed answer); the
  message is the run's reason.
"""

from __future__ import annotations


class TransientError(Exception):
    """Raise from an activity for a failure that may pass by itself (a 503, a timeout)."""


class PermanentError(Exception):
    """Raise from an activity for a failure that will not pass by itself (bad configuration, a
    malformed answer); the message is the run's reason."""
