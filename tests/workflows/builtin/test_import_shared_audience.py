"""importSharedAudience against a real audience service on loopback (pytest-httpserver): pagination,
visitor / declared / hashed declared ids, unknown ids, the membership replaced in full and
atomically, failures mid-pagination that leave the previous membership untouched, skips, and
readers that see the old or the new membership, never a mix (PostgreSQL).

Expected memberships are computed by ``expected_import``, a plain-Python reading of the matching rules over
the profiles and the pages served."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from campaign.models import (
    AudienceMember,
    ExternalAccount,
    Profile,
    SharedAudience,
    StagedAudienceMember,
    declared_id_hash,
)
from tests.factories import AudienceMemberFactory, ExternalAccountFactory, ProfileFactory, SharedAudienceFactory
from workflows import commands
from workflows.builtin import import_shared_audience as module
from workflows.engine import RunRequest, execute
from workflows.models import ActivityRun, RunStatus, Trigger, Workflow, WorkflowLog, WorkflowRun, WorkflowState

ID = module.WORKFLOW_ID
TOKEN = "audience-token-1e6b3f9d2a"  # a test value, checked never to leak
TOKEN_ENV = "CAMPAIGN_TOKEN_TEST_IMPORT_AUDIENCE"
VISITOR, DECLARED = "visitor", "declared"
SHA256 = SharedAudience.IdHashing.SHA256


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run() -> WorkflowRun:
    return commands.run_now(ID, actor="test", sync=True)


def journal(result: WorkflowRun) -> list[str]:
    return list(WorkflowLog.objects.filter(run=result).order_by("id").values_list("message", flat=True))


def membership(audience: SharedAudience) -> set[tuple[int, str]]:
    return set(AudienceMember.objects.filter(audience=audience).values_list("profile_id", "id_type"))


@pytest.fixture
def account(db, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, waits: list[float]) -> ExternalAccount:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return ExternalAccountFactory(name="audience", kind=ExternalAccount.Kind.AUDIENCE, base_url=httpserver.url_for("/"),
                                  token_env=TOKEN_ENV, timeout_s=2, enabled=True)


def serve(httpserver: HTTPServer, external_id: str, pages: Sequence[Sequence[tuple[str, str]]],
          handlers: dict[int, Callable[[Request], Response]] | None = None) -> None:
    """Serve ``pages`` of (id, id_type) at /audiences/<external_id>/members: the first without a
    cursor, page i at cursor ``p<i>``. ``handlers`` replace the answer of some pages."""
    path = f"/audiences/{external_id}/members"
    for index, page in enumerate(pages):
        query = "" if index == 0 else {"cursor": f"p{index}"}
        if handlers and index in handlers:
            httpserver.expect_request(path, query_string=query).respond_with_handler(handlers[index])
            continue
        next_cursor = f"p{index + 1}" if index + 1 < len(pages) else None
        httpserver.expect_request(path, query_string=query).respond_with_json(
            {"members": [{"id": member_id, "id_type": id_type} for member_id, id_type in page], "next_cursor": next_cursor})


@dataclass
class Expected:
    members: set[tuple[int, str]]
    unknown: int


def expected_import(pages: Sequence[Sequence[tuple[str, str]]], *, hashed: bool) -> Expected:
    """The matching rules in plain Python: visitor ids match visitor_id, declared ids declared_id (or its
    SHA-256, case-insensitively, when hashed); distinct unknown ids are counted; a profile matched
    both ways is one member, matched by its declared id."""
    by_visitor = {profile.visitor_id: profile.pk for profile in Profile.objects.exclude(visitor_id=None)}
    by_declared = {(sha(profile.declared_id) if hashed else profile.declared_id): profile.pk
                   for profile in Profile.objects.exclude(declared_id=None)}
    matched: dict[int, str] = {}
    unknown: set[tuple[str, str]] = set()
    for page in pages:
        for member_id, id_type in page:
            key = member_id.lower() if hashed and id_type == DECLARED else member_id
            profile_id = (by_visitor if id_type == VISITOR else by_declared).get(key)
            if profile_id is None:
                unknown.add((id_type, key))
            elif id_type == DECLARED or profile_id not in matched:
                matched[profile_id] = id_type
    return Expected(set(matched.items()), len(unknown))


@pytest.fixture
def profiles(db) -> list[Profile]:
    """Six profiles: 0-1 visitor ids only, 2-3 declared ids only, 4 both, 5 neither."""
    return [
        ProfileFactory(visitor_id="v-0"), ProfileFactory(visitor_id="v-1"),
        ProfileFactory(declared_id="CRM-2"), ProfileFactory(declared_id="CRM-3"),
        ProfileFactory(visitor_id="v-4", declared_id="CRM-4"), ProfileFactory(),
    ]


# -- success paths -------------------------------------------------------------------------------
def test_pages_are_followed_and_the_membership_is_replaced_by_the_matched_profiles(account, profiles, httpserver):
    web = SharedAudienceFactory(name="Web buyers", external_id="aud-web", account=account, member_count=2)
    other = SharedAudienceFactory(name="Other", external_id="aud-other", account=account, enabled=False)
    AudienceMemberFactory(audience=web, profile=profiles[5], id_type=VISITOR)  # gone from the service: removed
    AudienceMemberFactory(audience=web, profile=profiles[0], id_type=VISITOR)  # still there: stays
    AudienceMemberFactory(audience=other, profile=profiles[5], id_type=DECLARED)  # another audience: untouched
    pages = [
        [("v-0", VISITOR), ("CRM-2", DECLARED), ("ghost-1", VISITOR)],
        [("v-1", VISITOR), ("CRM-99", DECLARED)],
        [("CRM-3", DECLARED), ("v-0", VISITOR), ("v-404", VISITOR)],
    ]
    serve(httpserver, "aud-web", pages)
    started = timezone.now()

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    expected = expected_import(pages, hashed=False)
    assert expected.members == {(profiles[0].pk, VISITOR), (profiles[2].pk, DECLARED), (profiles[1].pk, VISITOR),
                                (profiles[3].pk, DECLARED)}
    assert membership(web) == expected.members
    assert membership(other) == {(profiles[5].pk, DECLARED)}
    web.refresh_from_db()
    assert (web.member_count, web.unknown_count) == (4, 3) == (len(expected.members), expected.unknown)
    assert started <= web.imported_at <= timezone.now()
    assert set(AudienceMember.objects.filter(audience=web).values_list("imported_at", flat=True)) == {web.imported_at}
    assert [request.args.get("cursor") for request, _ in httpserver.log] == [None, "p1", "p2"]
    assert all(request.headers["Authorization"] == f"Bearer {TOKEN}" for request, _ in httpserver.log)
    assert result.counters == {"pages": 3, "ids_received": 8, "members": 4, "unknown_ids": 3, "audiences_imported": 1}
    assert "Audience 'Web buyers': 8 ids in 3 pages; 4 members, 3 unknown ids dropped." in journal(result)
    assert not StagedAudienceMember.objects.exists()


def test_hashed_declared_ids_match_the_sha256_of_declared_ids(account, profiles, httpserver):
    bulk = Profile.objects.bulk_create([Profile(email="bulk@example.com", declared_id="Zoë-7")])[0]  # no save(): no hash
    assert Profile.objects.get(pk=bulk.pk).declared_id_sha256 is None
    hashed = SharedAudienceFactory(external_id="aud-h", account=account, id_hashing=SHA256)
    pages = [
        [(sha("CRM-2"), DECLARED), (sha("CRM-3").upper(), DECLARED)],
        [(sha("Zoë-7"), DECLARED), ("CRM-4", DECLARED), ("v-0", VISITOR), (sha("nobody"), DECLARED)],
    ]
    serve(httpserver, "aud-h", pages)

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    expected = expected_import(pages, hashed=True)
    assert expected.members == {(profiles[2].pk, DECLARED), (profiles[3].pk, DECLARED), (bulk.pk, DECLARED),
                                (profiles[0].pk, VISITOR)}
    assert membership(hashed) == expected.members
    hashed.refresh_from_db()
    assert (hashed.member_count, hashed.unknown_count) == (4, 2) == (len(expected.members), expected.unknown)
    assert Profile.objects.get(pk=bulk.pk).declared_id_sha256 == sha("Zoë-7")  # filled in SQL, same as Python
    assert result.counters["declared_ids_hashed"] == 1
    assert any("1 of them are not 64 hexadecimal characters" in line for line in journal(result))


def test_a_plain_audience_does_not_match_hashes_nor_a_hashed_one_plain_ids(account, profiles, httpserver):
    plain = SharedAudienceFactory(name="A plain", external_id="aud-p", account=account)
    hashed = SharedAudienceFactory(name="B hashed", external_id="aud-h", account=account, id_hashing=SHA256)
    serve(httpserver, "aud-p", [[(sha("CRM-2"), DECLARED), ("CRM-3", DECLARED)]])
    serve(httpserver, "aud-h", [[(sha("CRM-2"), DECLARED), ("CRM-3", DECLARED)]])

    assert run().status == RunStatus.SUCCEEDED

    assert membership(plain) == {(profiles[3].pk, DECLARED)}
    assert membership(hashed) == {(profiles[2].pk, DECLARED)}
    assert SharedAudience.objects.get(pk=plain.pk).unknown_count == 1
    assert SharedAudience.objects.get(pk=hashed.pk).unknown_count == 1


def test_a_profile_matched_twice_is_one_member_and_repeated_unknown_ids_count_once(account, profiles, httpserver):
    audience = SharedAudienceFactory(external_id="aud-1", account=account)
    pages = [[("v-4", VISITOR), ("ghost", VISITOR)], [("CRM-4", DECLARED), ("ghost", VISITOR), ("ghost", DECLARED)]]
    serve(httpserver, "aud-1", pages)

    assert run().status == RunStatus.SUCCEEDED

    assert membership(audience) == expected_import(pages, hashed=False).members == {(profiles[4].pk, DECLARED)}
    audience.refresh_from_db()
    assert (audience.member_count, audience.unknown_count) == (1, 2)


def test_an_empty_audience_empties_the_membership(account, profiles, httpserver):
    audience = SharedAudienceFactory(external_id="aud-1", account=account, member_count=1)
    AudienceMemberFactory(audience=audience, profile=profiles[0], id_type=VISITOR)
    serve(httpserver, "aud-1", [[]])

    assert run().status == RunStatus.SUCCEEDED

    assert membership(audience) == set()
    assert SharedAudience.objects.get(pk=audience.pk).member_count == 0


def test_a_second_run_gives_the_same_membership(account, profiles, httpserver):
    audience = SharedAudienceFactory(external_id="aud-1", account=account)
    pages = [[("v-0", VISITOR), ("CRM-3", DECLARED)], [("v-1", VISITOR), ("x", VISITOR)]]
    serve(httpserver, "aud-1", pages)
    assert run().status == RunStatus.SUCCEEDED
    first = membership(audience)

    second = run()

    assert second.status == RunStatus.SUCCEEDED
    assert membership(audience) == first == expected_import(pages, hashed=False).members
    assert AudienceMember.objects.filter(audience=audience).count() == 3
    assert SharedAudience.objects.get(pk=audience.pk).unknown_count == 1
    assert not StagedAudienceMember.objects.exists()


# -- failures mid-pagination: the previous membership stays ---------------------------------------
def drop_connection(request: Request) -> Response:
    """Close the socket without answering."""
    client_socket: socket.socket = request.environ["werkzeug.socket"]
    client_socket.shutdown(socket.SHUT_RDWR)
    client_socket.close()
    return Response("never sent")


def slow(request: Request) -> Response:
    time.sleep(0.6)  # above the account's timeout, set to 0.2 s by the test
    return Response('{"members": [], "next_cursor": null}', content_type="application/json")


def answer_500(request: Request) -> Response:
    return Response("internal error", status=500)


def malformed(request: Request) -> Response:
    return Response('{"members": [{"id": "v-1", "id_type": "cookie"}], "next_cursor": null}', content_type="application/json")


def not_json(request: Request) -> Response:
    return Response('{"members": [', content_type="application/json")


def unauthorized(request: Request) -> Response:
    return Response(f"token {TOKEN} revoked", status=401)


@pytest.mark.parametrize(("handler", "reason"), [
    (answer_500, "GET audiences/aud-1/members answered 500 (after 4 attempts)"),
    (drop_connection, "failed: ConnectionError (after 4 attempts)"),
    (slow, "failed: ReadTimeout (after 4 attempts)"),
    (malformed, "malformed answer: GET /audiences/aud-1/members (cursor 'p1') members[0].id_type"),
    (not_json, "answered a body that is not JSON"),
    (unauthorized, "GET audiences/aud-1/members answered 401: token [token] revoked"),
], ids=["500", "dropped-connection", "timeout", "malformed", "not-json", "401"])
def test_a_failure_on_page_two_leaves_the_previous_membership_untouched(account, profiles, httpserver, waits, handler, reason):
    account.timeout_s = 0.2
    account.save()
    audience = SharedAudienceFactory(name="Buyers", external_id="aud-1", account=account, member_count=2, unknown_count=5)
    AudienceMemberFactory(audience=audience, profile=profiles[4], id_type=DECLARED)
    AudienceMemberFactory(audience=audience, profile=profiles[5], id_type=VISITOR)
    before = membership(audience)
    serve(httpserver, "aud-1", [[("v-0", VISITOR), ("v-1", VISITOR)], []], handlers={1: handler})

    result = run()

    assert result.status == RunStatus.FAILED
    assert result.reason.startswith("1 of 1 audience not imported (previous membership kept): Buyers: audience: ") \
        or result.reason.startswith("1 of 1 audience not imported (previous membership kept): Buyers: malformed answer")
    assert reason in result.reason
    assert membership(audience) == before
    audience.refresh_from_db()
    assert (audience.member_count, audience.unknown_count, audience.imported_at) == (2, 5, None)
    assert not StagedAudienceMember.objects.exists()
    assert result.counters["pages"] == 1 and result.counters["audiences_failed"] == 1
    assert TOKEN not in result.reason
    assert not any(TOKEN in line for line in WorkflowLog.objects.values_list("message", flat=True))
    assert not ActivityRun.objects.filter(message__contains=TOKEN).exists()


def test_a_crash_between_pages_then_a_rerun_gives_the_uninterrupted_result(account, profiles, httpserver, monkeypatch):
    audience = SharedAudienceFactory(external_id="aud-1", account=account)
    AudienceMemberFactory(audience=audience, profile=profiles[5], id_type=VISITOR)
    pages = [[("v-0", VISITOR)], [("CRM-2", DECLARED), ("nope", DECLARED)], [("v-4", VISITOR)]]
    serve(httpserver, "aud-1", pages)
    real_stage_page = module.stage_page
    staged_pages = []

    def crash_on_the_third_page(**kwargs: Any) -> None:
        staged_pages.append(kwargs["members"])
        if len(staged_pages) == 3:
            raise RuntimeError("worker lost")
        real_stage_page(**kwargs)

    monkeypatch.setattr(module, "stage_page", crash_on_the_third_page)
    crashed = run()
    assert crashed.status == RunStatus.FAILED and "worker lost" in crashed.reason
    assert membership(audience) == {(profiles[5].pk, VISITOR)}
    assert StagedAudienceMember.objects.filter(audience=audience).count() == 3  # pages 1-2, left by the crash

    monkeypatch.setattr(module, "stage_page", real_stage_page)
    rerun = run()

    assert rerun.status == RunStatus.SUCCEEDED, rerun.reason
    expected = expected_import(pages, hashed=False)
    assert membership(audience) == expected.members == {(profiles[0].pk, VISITOR), (profiles[2].pk, DECLARED),
                                                        (profiles[4].pk, VISITOR)}
    assert SharedAudience.objects.get(pk=audience.pk).unknown_count == expected.unknown == 1
    assert not StagedAudienceMember.objects.exists()


def test_a_pause_between_pages_keeps_the_old_membership_and_the_resumed_run_imports_it_all(
        account, profiles, httpserver, monkeypatch):
    audience = SharedAudienceFactory(external_id="aud-1", account=account)
    AudienceMemberFactory(audience=audience, profile=profiles[5], id_type=VISITOR)
    pages = [[("v-0", VISITOR)], [("CRM-3", DECLARED)]]
    serve(httpserver, "aud-1", pages)
    real_stage_page = module.stage_page

    def pause_after_the_first_page(**kwargs: Any) -> None:
        real_stage_page(**kwargs)
        commands.pause(ID, actor="operator")

    monkeypatch.setattr(module, "stage_page", pause_after_the_first_page)
    paused = run()

    assert (paused.status, paused.halted_activity) == (RunStatus.PAUSED, "import_audiences")
    assert membership(audience) == {(profiles[5].pk, VISITOR)}

    monkeypatch.setattr(module, "stage_page", real_stage_page)
    Workflow.objects.filter(pk=ID).update(state=WorkflowState.STARTED)  # what resume does, without the broker
    continued = execute(RunRequest(workflow_id=ID, trigger=Trigger.SHELL, run_id=paused.pk))

    assert (continued.pk, continued.status) == (paused.pk, RunStatus.SUCCEEDED)
    assert membership(audience) == expected_import(pages, hashed=False).members == {
        (profiles[0].pk, VISITOR), (profiles[3].pk, DECLARED)}
    assert [request.args.get("cursor") for request, _ in httpserver.log] == [None, None, "p1"]  # from the first page again
    assert not StagedAudienceMember.objects.exists()


def test_one_failing_audience_does_not_keep_the_others_from_being_imported(account, profiles, httpserver):
    good = SharedAudienceFactory(name="Good", external_id="aud-good", account=account)
    bad = SharedAudienceFactory(name="Bad", external_id="aud-bad", account=account)
    AudienceMemberFactory(audience=bad, profile=profiles[5], id_type=VISITOR)
    serve(httpserver, "aud-good", [[("v-1", VISITOR)]])
    serve(httpserver, "aud-bad", [[("v-0", VISITOR)], []], handlers={1: malformed})

    result = run()

    assert result.status == RunStatus.FAILED
    assert result.reason.startswith("1 of 2 audiences not imported (previous membership kept): Bad: malformed answer")
    assert membership(good) == {(profiles[1].pk, VISITOR)}
    assert membership(bad) == {(profiles[5].pk, VISITOR)}
    assert result.counters["audiences_imported"] == 1 and result.counters["audiences_failed"] == 1


# -- skips ------------------------------------------------------------------------------------
def test_no_enabled_shared_audience_skips_the_run(account, httpserver):
    SharedAudienceFactory(account=account, enabled=False)

    result = run()

    assert (result.status, result.reason) == (RunStatus.SKIPPED, "no enabled shared audience")
    assert httpserver.log == []


def test_audiences_whose_account_is_disabled_skip_the_run_and_are_journaled(account, profiles, httpserver):
    account.enabled = False
    account.save()
    audience = SharedAudienceFactory(name="Buyers", account=account)
    AudienceMemberFactory(audience=audience, profile=profiles[0], id_type=VISITOR)

    result = run()

    assert result.status == RunStatus.SKIPPED
    assert result.reason == "no enabled audience account (for 1 enabled shared audience)"
    assert "Audience 'Buyers' skipped: its account 'audience' is disabled; its membership is kept." in journal(result)
    assert membership(audience) == {(profiles[0].pk, VISITOR)}
    assert httpserver.log == []


def test_an_audience_of_a_disabled_account_is_skipped_while_the_others_are_imported(account, profiles, httpserver):
    disabled_account = ExternalAccountFactory(name="old-audience", kind=ExternalAccount.Kind.AUDIENCE, enabled=False)
    stale = SharedAudienceFactory(name="Stale", external_id="aud-stale", account=disabled_account)
    AudienceMemberFactory(audience=stale, profile=profiles[0], id_type=VISITOR)
    fresh = SharedAudienceFactory(name="Fresh", external_id="aud-fresh", account=account)
    serve(httpserver, "aud-fresh", [[("v-1", VISITOR)]])

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert membership(fresh) == {(profiles[1].pk, VISITOR)}
    assert membership(stale) == {(profiles[0].pk, VISITOR)}
    assert result.counters["audiences_skipped"] == 1
    assert "Audience 'Stale' skipped: its account 'old-audience' is disabled; its membership is kept." in journal(result)


def test_an_unset_token_variable_fails_naming_the_variable_not_the_token(account, profiles, monkeypatch, httpserver):
    SharedAudienceFactory(name="Buyers", account=account)
    monkeypatch.delenv(TOKEN_ENV)

    result = run()

    assert result.status == RunStatus.FAILED
    assert f"the environment variable {TOKEN_ENV} (its token) is not set" in result.reason
    assert httpserver.log == []


# -- the hash column ------------------------------------------------------------------------------
def test_profile_save_keeps_the_declared_id_hash(db):
    profile = ProfileFactory(declared_id="CRM-1")
    assert profile.declared_id_sha256 == sha("CRM-1") == declared_id_hash("CRM-1")
    profile.declared_id = "CRM-2"
    profile.save(update_fields=["declared_id"])
    assert Profile.objects.get(pk=profile.pk).declared_id_sha256 == sha("CRM-2")
    profile.declared_id = None
    profile.save()
    assert Profile.objects.get(pk=profile.pk).declared_id_sha256 is None


def test_the_database_hash_equals_the_python_hash(db):
    ids = ["CRM-1", "Zoë-ß-東京", "a b\\c'd"]
    Profile.objects.bulk_create([Profile(email=f"p{n}@example.com", declared_id=value) for n, value in enumerate(ids)])
    Profile.objects.filter(declared_id__in=ids).update(declared_id_sha256=module.Sha256Hex("declared_id"))
    assert dict(Profile.objects.filter(declared_id__in=ids).values_list("declared_id", "declared_id_sha256")) == {
        value: declared_id_hash(value) for value in ids
    }


# -- readers during an import (PostgreSQL: another connection, while the import is paused mid-way) --
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_readers_see_the_old_or_the_new_membership_never_a_mix(httpserver, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    account = ExternalAccountFactory(name="audience", kind=ExternalAccount.Kind.AUDIENCE, base_url=httpserver.url_for("/"),
                                     token_env=TOKEN_ENV, timeout_s=10, enabled=True)
    people = Profile.objects.bulk_create([Profile(email=f"r{n}@example.com", visitor_id=f"v-{n}") for n in range(1200)])
    audience = SharedAudienceFactory(external_id="aud-big", account=account)
    AudienceMember.objects.bulk_create(AudienceMember(audience=audience, profile=p, id_type=VISITOR) for p in people[:600])
    old = {p.pk for p in people[:600]}
    new = {p.pk for p in people[300:1200]}  # overlaps the old one: a mix would show up as a third set
    pages = [[(f"v-{n}", VISITOR) for n in range(start, start + 150)] for start in range(300, 1200, 150)]

    paused, resume = threading.Event(), threading.Event()

    def hold_page_three(request: Request) -> Response:
        paused.set()
        resume.wait(timeout=20)
        members = [{"id": member_id, "id_type": id_type} for member_id, id_type in pages[2]]
        return Response(json.dumps({"members": members, "next_cursor": "p3"}), content_type="application/json")

    serve(httpserver, "aud-big", pages, handlers={2: hold_page_three})
    observations: list[frozenset[int]] = []
    during_pause: list[tuple[frozenset[int], int]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                seen = frozenset(AudienceMember.objects.filter(audience_id=audience.pk).values_list("profile_id", flat=True))
                observations.append(seen)
                if paused.is_set() and not resume.is_set():
                    during_pause.append((seen, StagedAudienceMember.objects.filter(audience_id=audience.pk).count()))
                    if len(during_pause) >= 5:
                        resume.set()
        except BaseException as error:  # reported by the test thread
            errors.append(error)
            resume.set()
        finally:
            connection.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = run()
    finally:
        stop.set()
        resume.set()
        thread.join(timeout=30)

    assert errors == []
    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert len(during_pause) >= 5
    assert all(seen == old and staged == 300 for seen, staged in during_pause)  # two pages staged, none visible
    assert set(observations) <= {frozenset(old), frozenset(new)}
    assert set(AudienceMember.objects.filter(audience=audience).values_list("profile_id", flat=True)) == new
    assert SharedAudience.objects.get(pk=audience.pk).member_count == 900
