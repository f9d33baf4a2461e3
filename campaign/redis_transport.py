"""kombu's Redis transport, with channels that keep their server's address after the connection
dropped, so that a worker rides through a Redis outage.

Why it exists: when a worker loses Redis, Celery first drops the transport's link to its
connection settings (``Connection.collect``), then closes the connection. Closing a Redis channel
requeues the messages it had delivered but not yet seen acknowledged, and doing so needs a Redis
client, built from those settings: kombu raised ``AttributeError: 'NoneType' object has no
attribute 'hostname'``, which Celery treats as unrecoverable: the worker stopped as soon as its
running tasks ended, and every message queued after Redis came back waited for a worker.
Acknowledging, after the outage, a task that ran through it failed the same way.

Invariant: a channel builds its clients from the parameters it used while connected. A requeue or
an acknowledgement after the loss then either reaches Redis (it came back) or fails with a
connection error, which Celery and kombu handle; a message whose requeue failed stays in Redis's
``unacked`` hash and is delivered again after the visibility timeout.

Selected by ``CELERY_BROKER_TRANSPORT`` for ``redis://`` and ``rediss://`` URLs (project/config.py).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):
    _kept_connparams: dict[bool, dict[str, Any]] | None = None

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        kept = self._kept_connparams
        if kept is None:
            kept = self._kept_connparams = {}
        if self.connection.client is not None or asynchronous not in kept:
            kept[asynchronous] = super()._connparams(asynchronous=asynchronous)
        return dict(kept[asynchronous])


class Transport(redis.Transport):
    Channel = Channel
