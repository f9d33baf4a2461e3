"""Client of the audience service: the member list of a shared audience, page by page.

Why a module of its own: importSharedAudience must not write anything from an answer it has not
understood, and it must hold one page in memory at a time, whatever the audience's size. This
module is the only place that knows the wire format, and every page it hands over is validated
completely:

- ``GET /audiences/<external_id>/members`` (first page: no ``cursor`` parameter), then
  ``GET /audiences/<external_id>/members?cursor=<c>`` with the ``next_cursor`` of the previous
  page, until ``next_cursor`` is ``null``.
- Answer: ``{"members": [{"id": str, "id_type": "visitor" | "declared"}, ...], "next_cursor": str | null}``.

A page that is not an object, a member without a non-empty text ``id`` (at most
:data:`MAX_ID_LENGTH` characters) or with another ``id_type``, a ``next_cursor`` that is neither
text nor ``null``, a cursor sent twice (the pagination would never end) or a page larger than
:data:`MAX_PAGE_MEMBERS` is a malformed answer: a permanent failure, raised before the page is
returned. Retries, timeouts and the bearer token are the shared HTTP layer's
(:mod:`campaign.integrations.http`); the token is scrubbed from every error this module raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from campaign.integrations.http import ServiceClient, expect, without_token
from campaign.models import AudienceMember, ExternalAccount

KIND = ExternalAccount.Kind.AUDIENCE

ID_TYPES = frozenset(AudienceMember.IdType.values)

#: Longest member id accepted (the staging column's size; a SHA-256 in hex is 64 characters).
MAX_ID_LENGTH = 255
#: Largest page accepted: one page is held in memory and staged in one transaction, so its size
#: must stay bounded whatever the service decides (100,000 short ids is ~20 MB of Python objects).
MAX_PAGE_MEMBERS = 100_000
#: Longest cursor accepted (it goes back in a query string).
MAX_CURSOR_LENGTH = 2_000


@dataclass(frozen=True)
class Member:
    id: str
    id_type: str  # "visitor" | "declared"


@dataclass(frozen=True)
class MembersPage:
    members: list[Member]
    next_cursor: str | None


class AudienceClient:
    """The member list of shared audiences, on one HTTP session of the account."""

    def __init__(self, account: ExternalAccount, *, sleep: Callable[[float], None] | None = None) -> None:
        self.account_name = account.name
        self._http = ServiceClient(account, sleep=sleep)
        self._secret = self._http.token

    def members_page(self, *, external_id: str, cursor: str | None = None) -> MembersPage:
        """One validated page of the audience's members (the first one without ``cursor``)."""
        path = f"audiences/{quote(external_id, safe='')}/members"
        params = {"cursor": cursor} if cursor is not None else None
        answer = self._guarded(lambda: self._http.get(path, params=params))
        where = f"GET /audiences/{external_id}/members" + (f" (cursor {cursor!r:.60})" if cursor is not None else "")
        return self._guarded(lambda: parse_members_page(answer, where=where))

    def pages(self, *, external_id: str) -> Iterator[MembersPage]:
        """Every page of the audience, in order, one request at a time; stops after the page whose
        ``next_cursor`` is null. A cursor the service already sent is a malformed answer."""
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            page = self.members_page(external_id=external_id, cursor=cursor)
            yield page
            if page.next_cursor is None:
                return
            expect(page.next_cursor not in seen,
                   f"GET /audiences/{external_id}/members: cursor {page.next_cursor!r:.60} was sent before "
                   "(the pagination would never end)")
            seen.add(page.next_cursor)
            cursor = page.next_cursor

    def _guarded(self, call: Callable[[], Any]) -> Any:
        return without_token(self._secret, call)


def parse_members_page(answer: Any, *, where: str) -> MembersPage:
    """A page in the wire format → :class:`MembersPage`, or :class:`ServiceError` saying what is wrong."""
    expect(isinstance(answer, dict), f"{where}: expected an object, got {_shape(answer)}")
    for key in ("members", "next_cursor"):
        expect(key in answer, f"{where}: no {key!r} in the answer (keys: {sorted(answer)[:10]})")
    items = answer["members"]
    expect(isinstance(items, list), f"{where}: 'members' must be a list, got {_shape(items)}")
    expect(len(items) <= MAX_PAGE_MEMBERS, f"{where}: {len(items)} members in one page (at most {MAX_PAGE_MEMBERS})")
    next_cursor = answer["next_cursor"]
    expect(next_cursor is None or (isinstance(next_cursor, str) and 0 < len(next_cursor) <= MAX_CURSOR_LENGTH),
           f"{where}: 'next_cursor' must be null or non-empty text of at most {MAX_CURSOR_LENGTH} characters, "
           f"got {next_cursor!r:.60}")
    members = []
    for index, item in enumerate(items):
        expect(isinstance(item, dict), f"{where} members[{index}]: expected an object, got {_shape(item)}")
        member_id, id_type = item.get("id"), item.get("id_type")
        expect(isinstance(member_id, str) and 0 < len(member_id) <= MAX_ID_LENGTH and "\x00" not in member_id,
               f"{where} members[{index}].id: expected non-empty text of at most {MAX_ID_LENGTH} characters "
               f"(no NUL), got {member_id!r:.60}")
        expect(id_type in ID_TYPES,
               f"{where} members[{index}].id_type: expected one of {sorted(ID_TYPES)}, got {id_type!r:.40}")
        members.append(Member(member_id, id_type))
    return MembersPage(members, next_cursor)


def _shape(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", type(None): "null"}.get(type(value), type(value).__name__)
