"""importSharedAudience — Import shared audience.

Why it exists: the audience service shares lists of people (a segment built on the web analytics
side, a partner's list) as member ids. Every hour this workflow pages through each enabled shared
audience, matches each id with a profile, and replaces the audience's membership (AudienceMember)
with what the service holds now, so deliveries can target the audience.

Invariants it keeps:

- **Readers see the old membership or the new one, never a mix.** Pages are staged in
  StagedAudienceMember, one unit of work per page (one short transaction with the page's
  counters, fenced by the run's lease; ids matched with profiles as they arrive, by indexed lookups
  over the page's ids). Only after the last page (``next_cursor`` null) are the audience's
  AudienceMember rows replaced, in ONE unit of work (delete, then insert ... select from the
  staging), together with its ``member_count``, ``unknown_count`` and ``imported_at``. A failure
  mid-pagination (the service unreachable after retries, a 4xx, a malformed page), a pause or a
  crash leaves the previous membership exactly as it was; the next run starts the audience again
  from its first page (cursors are the service's and may not outlive a listing).
- **No transaction is open during an HTTP call.** A page is fetched, then staged in its unit;
  between the unit and the request for the next page the run obeys pause and stop (a unit
  boundary), so a halted run asks the service for nothing more.
- **Memory is bounded by one page**, whatever the audience's size: ids go to the staging table
  page by page and every match, count and replacement is SQL over it.
- **Matching.** ``visitor`` ids match ``Profile.visitor_id``; ``declared`` ids match
  ``Profile.declared_id`` or, for an audience whose ``id_hashing`` is ``sha256``, the SHA-256 of it
  (``Profile.declared_id_sha256``, indexed: the service sends hashes, compared in lower case).
  Profiles written in bulk (COPY, bulk_create) bypass ``save()``, so the hashes missing are filled
  in the database, in bounded batches, before a hashed audience is matched. An id matching no
  profile is dropped and counted (``unknown_count``); a profile matched twice (visitor and
  declared) is one member, recorded as matched by its declared id.
- **One audience's failure is not the others'.** Each audience is imported on its own; those that
  fail keep their membership, are journaled, and fail the run at the end (transient if any failure
  was, so the engine retries; all of them are imported again then).
- **Skips.** No enabled shared audience → the run is ``skipped``. An audience whose account is
  disabled (or is not an audience account) is skipped and journaled; if that leaves none, the run
  is ``skipped`` with "no enabled audience account".
"""

from __future__ import annotations

import re
from typing import Any

from django.db import connection
from django.db.models import CharField, Func
from django.utils import timezone

from campaign.integrations.audience import KIND, AudienceClient, Member, MembersPage
from campaign.integrations.http import ConfigurationError, ServiceError, ServiceUnavailable
from campaign.models import AudienceMember, Profile, SharedAudience, StagedAudienceMember
from workflows.context import ActivityContext, Batch, SkipRun
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.errors import PermanentError, TransientError
from workflows.models import LogLevel
from workflows.sql import db_datetime, nth_id, table

WORKFLOW_ID = "importSharedAudience"

VISITOR, DECLARED = AudienceMember.IdType.VISITOR, AudienceMember.IdType.DECLARED
SHA256 = SharedAudience.IdHashing.SHA256

#: Staged rows deleted per statement (a range of ids) when the staging is cleared: each delete
#: stays well under a second, even on SQLite.
STAGING_DELETE_BATCH = 10_000
#: Profiles whose missing declared-id hash is filled per transaction (a range of ids): ~0.1 s each,
#: so a first import after a bulk load of a million profiles writes in short transactions.
HASH_FILL_BATCH = 5_000
#: Rows per INSERT statement when a page is staged on PostgreSQL (three arrays of this length).
STAGE_INSERT_BATCH = 5_000
#: Ids looked up per ``IN (...)`` statement when a page is matched with profiles (SQLite: at most
#: Django's 999 parameters a statement).
MATCH_CHUNK = 5_000

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class Sha256Hex(Func):
    """Lower-case hex SHA-256 of a text's UTF-8 bytes, computed by the database — the SQL twin of
    :func:`campaign.models.declared_id_hash`. PostgreSQL (11+) has ``sha256(bytea)`` built in
    (Django's own SHA256 needs the pgcrypto extension there); Django registers ``SHA256`` on
    every SQLite connection."""

    function = "SHA256"
    output_field = CharField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        return self.as_sql(compiler, connection, template="encode(sha256(convert_to(%(expressions)s, 'UTF8')), 'hex')",
                           **extra_context)


def import_audiences(ctx: ActivityContext) -> None:
    """Import every enabled shared audience whose account is enabled."""
    audiences = list(SharedAudience.objects.filter(enabled=True).select_related("account").order_by("name", "id"))
    if not audiences:
        raise SkipRun("no enabled shared audience")
    importable = []
    for audience in audiences:
        account = audience.account
        if account.kind != KIND:
            why = f"its account {account.name!r} is of kind {account.kind}, not {KIND}"
        elif not account.enabled:
            why = f"its account {account.name!r} is disabled"
        else:
            importable.append(audience)
            continue
        ctx.log(f"Audience {audience.name!r} skipped: {why}; its membership is kept.", level=LogLevel.WARNING)
        ctx.count("audiences_skipped")
    if not importable:
        raise SkipRun(f"no enabled {KIND} account (for {len(audiences)} enabled shared "
                      f"audience{'s' if len(audiences) > 1 else ''})")

    clear_staging(ctx)  # what a crashed or halted import left
    if any(audience.id_hashing == SHA256 for audience in importable):
        fill_declared_id_hashes(ctx)

    clients: dict[int, AudienceClient] = {}
    failures: list[tuple[SharedAudience, Exception]] = []
    for audience in importable:
        try:
            if audience.account_id not in clients:
                clients[audience.account_id] = AudienceClient(audience.account)
            import_audience(ctx, audience=audience, client=clients[audience.account_id])
        except (ServiceError, ServiceUnavailable, ConfigurationError) as error:
            failures.append((audience, error))
            ctx.count("audiences_failed")
            ctx.log(f"Audience {audience.name!r} not imported: {error}. Its previous membership is kept.",
                    level=LogLevel.ERROR)
            clear_staging(ctx, audience=audience)
    if failures:
        reason = (f"{len(failures)} of {len(importable)} audience{'s' if len(importable) > 1 else ''} not imported "
                  "(previous membership kept): " + "; ".join(f"{audience.name}: {error}" for audience, error in failures))
        if any(isinstance(error, ServiceUnavailable) for _, error in failures):
            raise TransientError(reason)
        raise PermanentError(reason)


def import_audience(ctx: ActivityContext, *, audience: SharedAudience, client: AudienceClient) -> None:
    """Stage every page, one unit of work each, then replace the membership in one more unit."""
    hashed = audience.id_hashing == SHA256
    pages = received = not_hashes = 0

    def stage(page: MembersPage) -> None:
        stage_page(audience=audience, members=page.members, hashed=hashed)
        ctx.count("pages")
        ctx.count("ids_received", len(page.members))
        ctx.advance(len(page.members))

    def replace() -> tuple[int, int]:
        member_count, unknown_count = replace_membership(audience=audience, now=timezone.now())
        ctx.count("audiences_imported")
        ctx.count("members", member_count)
        ctx.count("unknown_ids", unknown_count)
        return member_count, unknown_count

    # Each page is fetched before its unit opens: no transaction is open during an HTTP call.
    for page in client.pages(external_id=audience.external_id):
        ctx.unit(lambda page=page: stage(page))
        pages += 1
        received += len(page.members)
        if hashed:
            not_hashes += sum(1 for member in page.members
                              if member.id_type == DECLARED and not _SHA256_HEX.match(member.id.lower()))
        if page.next_cursor is not None:
            # A unit boundary before asking for the next page: a pause or a stop that came while
            # this page was staged halts the run here, without one more request.
            ctx.unit(lambda: None)

    member_count, unknown_count = ctx.unit(replace)
    clear_staging(ctx, audience=audience)
    ctx.log(f"Audience {audience.name!r}: {received} ids in {pages} page{'s' if pages != 1 else ''}; "
            f"{member_count} members, {unknown_count} unknown ids dropped.")
    if not_hashes:
        ctx.log(f"Audience {audience.name!r} expects SHA-256 declared ids, but {not_hashes} of them are not 64 "
                "hexadecimal characters (counted as unknown): check its id hashing setting.", level=LogLevel.WARNING)


def stage_page(*, audience: SharedAudience, members: list[Member], hashed: bool) -> None:
    """Match one page's ids with profiles and stage them (inside the page's unit of work).

    Matching is one indexed ``IN`` lookup per chunk of ids (``visitor_id``, ``declared_id`` or
    ``declared_id_sha256``, all indexed): a page is bounded, so is every statement, and the plan
    does not depend on statistics of a staging table that is filled and emptied every hour. An id
    repeated within the page is staged once; across pages, the swap and the counts use DISTINCT."""
    if not members:
        return
    staged: dict[tuple[str, str], int | None] = {}  # (id_type, id) → profile id, in page order
    for member in members:
        staged[(member.id_type, member.id.lower() if hashed and member.id_type == DECLARED else member.id)] = None
    chunk_size = min(MATCH_CHUNK, connection.features.max_query_params or MATCH_CHUNK)
    for id_type, column in ((VISITOR, "visitor_id"), (DECLARED, "declared_id_sha256" if hashed else "declared_id")):
        wanted = [member_id for kind, member_id in staged if kind == id_type]
        for start in range(0, len(wanted), chunk_size):
            matches = (Profile.objects.filter(**{f"{column}__in": wanted[start:start + chunk_size]})
                       .order_by().values_list(column, "id"))
            for value, profile_id in matches:
                staged[(id_type, value)] = profile_id
    insert_staged(audience_id=audience.pk, rows=[(id_type, member_id, profile_id)
                                                 for (id_type, member_id), profile_id in staged.items()])


def insert_staged(*, audience_id: int, rows: list[tuple[str, str, int | None]]) -> None:
    """Insert (id_type, member_id, profile_id) rows: one statement over arrays on PostgreSQL, one
    prepared statement run for every row on SQLite (model instances would cost more than the SQL)."""
    staged = table(StagedAudienceMember)
    columns = "(audience_id, id_type, member_id, profile_id)"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            for start in range(0, len(rows), STAGE_INSERT_BATCH):
                chunk = rows[start:start + STAGE_INSERT_BATCH]
                cursor.execute(
                    f"INSERT INTO {staged} {columns} SELECT %s, * FROM unnest(%s::varchar[], %s::varchar[], %s::bigint[])",
                    [audience_id, [row[0] for row in chunk], [row[1] for row in chunk], [row[2] for row in chunk]],
                )
        else:
            cursor.executemany(f"INSERT INTO {staged} {columns} VALUES (%s, %s, %s, %s)",
                               [(audience_id, *row) for row in rows])


def replace_membership(*, audience: SharedAudience, now: Any) -> tuple[int, int]:
    """Replace the audience's members with the matched staged ids; returns (members, unknown ids).
    Inside one unit of work: readers see the old rows until it commits."""
    members, staged, profiles = (table(model) for model in (AudienceMember, StagedAudienceMember, Profile))
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {members} WHERE audience_id = %s", [audience.pk])
        cursor.execute(
            f"INSERT INTO {members} (audience_id, profile_id, id_type, imported_at) "
            f"SELECT %s, s.profile_id, MIN(s.id_type), %s FROM {staged} s "
            f"JOIN {profiles} p ON p.id = s.profile_id "  # a profile deleted since it was matched is left out
            f"WHERE s.audience_id = %s GROUP BY s.profile_id",
            [audience.pk, db_datetime(now), audience.pk],
        )
        member_count = cursor.rowcount
    unknown_count = (StagedAudienceMember.objects.filter(audience_id=audience.pk, profile__isnull=True)
                     .values("id_type", "member_id").distinct().count())
    SharedAudience.objects.filter(pk=audience.pk).update(member_count=member_count, unknown_count=unknown_count, imported_at=now)
    return member_count, unknown_count


def fill_declared_id_hashes(ctx: ActivityContext) -> None:
    """Fill ``Profile.declared_id_sha256`` where a bulk write left it empty, in the database, in
    bounded batches of ids (one short unit of work each, until the last range)."""
    missing = Profile.objects.filter(declared_id__isnull=False, declared_id_sha256__isnull=True)

    def fill(after: int, limit: int) -> Batch:
        bound = nth_id(missing.filter(id__gt=after), limit)
        batch = missing.filter(id__gt=after) if bound is None else missing.filter(id__gt=after, id__lte=bound)
        filled = batch.update(declared_id_sha256=Sha256Hex("declared_id"))
        return Batch(rows=filled, cursor=bound, counters={"declared_ids_hashed": filled} if filled else None,
                     done=bound is None)

    filled = ctx.batches(None, fill, start=0, batch_size=HASH_FILL_BATCH)
    if filled:
        ctx.log(f"Filled the SHA-256 of {filled} declared ids written in bulk.")


def clear_staging(ctx: ActivityContext, *, audience: SharedAudience | None = None) -> None:
    """Delete staged rows (one audience's, or all), at most STAGING_DELETE_BATCH per unit of work:
    fenced like every commit, so a run that lost its lease never deletes what the run that took
    over has staged since."""
    rows = (StagedAudienceMember.objects.all() if audience is None
            else StagedAudienceMember.objects.filter(audience_id=audience.pk))

    def step(position: None, limit: int) -> Batch:
        bound = nth_id(rows, limit)
        (rows if bound is None else rows.filter(id__lte=bound)).delete()
        return Batch(rows=0, cursor=None, done=bound is None)

    ctx.batches(None, step, start=None, batch_size=STAGING_DELETE_BATCH)


definition = register(WorkflowDefinition(
    id=WORKFLOW_ID,
    label="Import shared audience",
    description="Imports the members of each enabled shared audience from the audience service, "
                "replacing the membership atomically.",
    schedule=Schedule("0 * * * *"),
    activities=(import_audiences,),
    expire_s=3600,  # a late message is dropped: the next slot does the same work
))
