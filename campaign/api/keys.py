"""The keys of the event API: creation, revocation and authentication.

Keys: ``Authorization: Bearer <key>``. Only the SHA-256 of a key is stored (``APIKey.key_hash``),
so a database dump does not leak usable keys; the key itself is shown once, at creation. A key
has 256 bits of randomness, so a fast unsalted hash is enough (salting and stretching protect
low-entropy passwords, not random tokens) and a lookup is one indexed equality.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from functools import cache

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from campaign.models import APIKey

#: Random bytes in a new key (256 bits); the key is their URL-safe base64 (43 characters).
KEY_BYTES = 32
PREFIX_LENGTH = 8

#: ``last_used_at`` is written at most this often per key, so that a busy client does not turn
#: every accepted event into two writes.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


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


@cache
def active_key_sql() -> str:
    """The lookup of an active key by its hash, written once: the ORM would build this query again
    for every event (0.3 ms of CPU, a sixth of a single event's cost in the web process)."""
    quote = connection.ops.quote_name
    column = {field.name: quote(field.column) for field in APIKey._meta.concrete_fields}
    return (f"SELECT {', '.join(column.values())} FROM {quote(APIKey._meta.db_table)} "
            f"WHERE {column['key_hash']} = %s AND {column['revoked_at']} IS NULL")


def authenticate(*, key: str) -> APIKey | None:
    """The active key ``key`` is, or None (unknown or revoked); records its use."""
    api_key = next(iter(APIKey.objects.raw(active_key_sql(), [hash_key(key)])), None)
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        APIKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key
