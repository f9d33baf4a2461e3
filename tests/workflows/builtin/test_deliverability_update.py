"""deliverabilityUpdate against a real HTTPS service on loopback (a test CA trusted through
REQUESTS_CA_BUNDLE): the service's rules replace the previous service rules in one transaction,
local rules stay; an http:// URL, an unreachable service, a refusal or a malformed answer fail the
run and leave every rule exactly as it was; updateDeliveryExecInfo qualifies bounces with the new
rules on its next run."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from campaign.models import (
    BounceRule,
    DeliveryLog,
    DomainRule,
    ExternalAccount,
    FailureReason,
    FailureType,
    LogStatus,
    MxRule,
    RuleSource,
)
from tests.factories import (
    BounceRuleFactory,
    DeliveryLogFactory,
    DomainRuleFactory,
    ExternalAccountFactory,
    MxRuleFactory,
    SendingFeedbackFactory,
)
from workflows import commands
from workflows.builtin import deliverability_update as module
from workflows.builtin import update_delivery_exec_info
from workflows.models import ActivityRun, RunStatus, WorkflowLog, WorkflowRun

ID = module.WORKFLOW_ID
TOKEN = "deliverability-token-7c2a9e41b8"  # a test value, checked never to leak
TOKEN_ENV = "CAMPAIGN_TOKEN_TEST_DELIVERABILITY_UPDATE"
LOCAL, SERVICE = RuleSource.LOCAL, RuleSource.SERVICE
HARD, SOFT, IGNORED = FailureType.HARD, FailureType.SOFT, FailureType.IGNORED

RULES = {
    "bounce_rules": [
        {"pattern": r"user (unknown|not found)", "failure_type": 2, "failure_reason": 1, "priority": 10},
        {"pattern": r"quota exceeded|mailbox full", "failure_type": 1, "failure_reason": 5, "priority": 20},
        {"pattern": r"auto.?reply", "failure_type": 3, "failure_reason": 0, "priority": 90},
    ],
    "mx_rules": [
        {"mx_mask": "*.mail.example.com", "max_connections": 5, "max_messages_per_hour": 3600, "tls": "required"},
        {"mx_mask": "mx.other.example"},
    ],
    "domain_rules": [{"domain": "example.com", "max_per_hour": 100}, {"domain": "example.org"}],
}


def run(**overrides: Any) -> WorkflowRun:
    return commands.run_now(ID, actor="test", sync=True, overrides=overrides or None)


def journal(result: WorkflowRun) -> list[str]:
    return list(WorkflowLog.objects.filter(run=result).order_by("id").values_list("message", flat=True))


def snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every rule row, every column: equal before and after means nothing was written."""
    return {
        "bounce": list(BounceRule.objects.order_by("id").values_list(
            "id", "pattern", "failure_type", "failure_reason", "priority", "source", "updated_at")),
        "mx": list(MxRule.objects.order_by("id").values_list(
            "id", "mx_mask", "max_connections", "max_messages_per_hour", "options", "source", "updated_at")),
        "domain": list(DomainRule.objects.order_by("id").values_list("id", "domain", "options", "source", "updated_at")),
    }


def rules_now() -> dict[str, set[tuple[Any, ...]]]:
    return {
        "bounce": set(BounceRule.objects.values_list("pattern", "failure_type", "failure_reason", "priority", "source")),
        "mx": {(mask, connections, per_hour, json.dumps(options, sort_keys=True), source)
               for mask, connections, per_hour, options, source
               in MxRule.objects.values_list("mx_mask", "max_connections", "max_messages_per_hour", "options", "source")},
        "domain": {(domain, json.dumps(options, sort_keys=True), source)
                   for domain, options, source in DomainRule.objects.values_list("domain", "options", "source")},
    }


@pytest.fixture
def account(db, https_server: HTTPServer, monkeypatch: pytest.MonkeyPatch, waits: list[float]) -> ExternalAccount:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return ExternalAccountFactory(name="deliverability", kind=ExternalAccount.Kind.DELIVERABILITY,
                                  base_url=https_server.url_for("/api/"), token_env=TOKEN_ENV, timeout_s=2, enabled=True)


@pytest.fixture
def current_rules(db) -> None:
    """Rules from the previous update (service) and rules an operator added (local)."""
    BounceRuleFactory(pattern="user unknown", failure_type=HARD, failure_reason=FailureReason.USER_UNKNOWN, priority=10,
                      source=SERVICE)
    BounceRuleFactory(pattern="quota", failure_type=HARD, failure_reason=FailureReason.REFUSED, priority=15, source=SERVICE)
    BounceRuleFactory(pattern="blocked by our policy", failure_type=HARD, failure_reason=FailureReason.ON_DENYLIST,
                      priority=5, source=LOCAL)
    MxRuleFactory(mx_mask="*.old.example", max_connections=1, source=SERVICE)
    MxRuleFactory(mx_mask="*.partner.example", max_connections=2, options={"note": "agreed by phone"}, source=LOCAL)
    DomainRuleFactory(domain="old.example", source=SERVICE)
    DomainRuleFactory(domain="intranet.example", options={"max_per_hour": 10}, source=LOCAL)


# -- success --------------------------------------------------------------------------------------
def test_the_service_rules_replace_the_previous_service_rules_and_local_rules_stay(account, current_rules, https_server):
    https_server.expect_request("/api/rules", method="GET", headers={"Authorization": f"Bearer {TOKEN}"}).respond_with_json(RULES)

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert rules_now() == {
        "bounce": {
            (r"user (unknown|not found)", HARD, FailureReason.USER_UNKNOWN, 10, SERVICE),
            (r"quota exceeded|mailbox full", SOFT, FailureReason.MAILBOX_FULL, 20, SERVICE),
            (r"auto.?reply", IGNORED, FailureReason.NONE, 90, SERVICE),
            ("blocked by our policy", HARD, FailureReason.ON_DENYLIST, 5, LOCAL),
        },
        "mx": {
            ("*.mail.example.com", 5, 3600, '{"tls": "required"}', SERVICE),
            ("mx.other.example", None, None, "{}", SERVICE),
            ("*.partner.example", 2, None, '{"note": "agreed by phone"}', LOCAL),
        },
        "domain": {
            ("example.com", '{"max_per_hour": 100}', SERVICE),
            ("example.org", "{}", SERVICE),
            ("intranet.example", '{"max_per_hour": 10}', LOCAL),
        },
    }
    assert result.counters == {"bounce_rules": 3, "mx_rules": 2, "domain_rules": 2, "rules_added": 7, "rules_removed": 4}
    assert ("Rules from deliverability: bounce rules 3 (3 new, 2 dropped; 1 local kept); MX rules 2 (2 new, 1 dropped; "
            "1 local kept); domain rules 2 (2 new, 1 dropped; 1 local kept).") in journal(result)
    https_server.check_assertions()


def test_a_second_update_with_the_same_answer_changes_no_rule(account, https_server):
    https_server.expect_request("/api/rules").respond_with_json(RULES)
    assert run().status == RunStatus.SUCCEEDED
    first = rules_now()

    second = run()

    assert second.status == RunStatus.SUCCEEDED
    assert rules_now() == first
    assert (second.counters["rules_added"], second.counters["rules_removed"]) == (0, 0)


def test_an_empty_bounce_list_is_refused_unless_the_minimum_is_zero(account, current_rules, https_server):
    https_server.expect_request("/api/rules").respond_with_json({"bounce_rules": [], "mx_rules": [], "domain_rules": []})
    before = snapshot()

    refused = run()

    assert refused.status == RunStatus.FAILED
    assert refused.reason == ("malformed answer: GET /rules: 0 bounce rules, fewer than min_bounce_rules=1; "
                              "the current rules are kept")
    assert snapshot() == before

    accepted = run(min_bounce_rules=0)

    assert accepted.status == RunStatus.SUCCEEDED, accepted.reason
    assert rules_now() == {
        "bounce": {("blocked by our policy", HARD, FailureReason.ON_DENYLIST, 5, LOCAL)},
        "mx": {("*.partner.example", 2, None, '{"note": "agreed by phone"}', LOCAL)},
        "domain": {("intranet.example", '{"max_per_hour": 10}', LOCAL)},
    }


def test_500_then_success_is_retried_with_backoff(account, current_rules, https_server, waits):
    https_server.expect_ordered_request("/api/rules").respond_with_data("busy", status=500)
    https_server.expect_ordered_request("/api/rules").respond_with_json(RULES)

    result = run()

    assert result.status == RunStatus.SUCCEEDED, result.reason
    assert len(waits) == 1 and 0 <= waits[0] <= 0.5
    assert BounceRule.objects.filter(source=SERVICE).count() == 3


def test_429_waits_the_retry_after_then_succeeds(account, https_server, waits):
    https_server.expect_ordered_request("/api/rules").respond_with_response(
        Response("{}", status=429, headers={"Retry-After": "2"}, content_type="application/json"))
    https_server.expect_ordered_request("/api/rules").respond_with_json(RULES)

    assert run().status == RunStatus.SUCCEEDED
    assert waits == [2.0]


# -- failures: the rules stay exactly as they were -----------------------------------------------
def test_an_http_base_url_fails_the_run_with_a_configuration_error_naming_it(account, current_rules, httpserver):
    plain_url = httpserver.url_for("/api/")
    account.base_url = plain_url
    account.save()
    httpserver.expect_request("/api/rules").respond_with_json(RULES)
    before = snapshot()

    result = run()

    assert result.status == RunStatus.FAILED
    assert result.reason == f"deliverability: the base URL must use https:// (got {plain_url!r})"
    assert httpserver.log == []
    assert snapshot() == before


def test_an_unreachable_service_keeps_the_old_rules(account, current_rules, waits):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    account.base_url = f"https://127.0.0.1:{port}/"
    account.save()
    before = snapshot()

    result = run()

    assert result.status == RunStatus.FAILED
    assert result.reason == "deliverability: GET rules failed: ConnectionError (after 4 attempts)"
    assert len(waits) == 3
    assert snapshot() == before


def test_a_timeout_keeps_the_old_rules(account, current_rules, https_server, waits):
    account.timeout_s = 0.2
    account.save()

    def slow(request: Request) -> Response:
        time.sleep(0.6)
        return Response(json.dumps(RULES), content_type="application/json")

    https_server.expect_request("/api/rules").respond_with_handler(slow)
    before = snapshot()

    result = run()

    assert result.status == RunStatus.FAILED
    assert "ReadTimeout (after 4 attempts)" in result.reason
    assert snapshot() == before


def bounce(**overrides: Any) -> dict[str, Any]:
    return {**RULES, "bounce_rules": [RULES["bounce_rules"][0], {**RULES["bounce_rules"][1], **overrides}]}


@pytest.mark.parametrize(("body", "reason"), [
    ("{not json", "answered a body that is not JSON"),
    ([], "malformed answer: GET /rules: expected an object, got a list"),
    ({"bounce_rules": [], "mx_rules": []}, "malformed answer: GET /rules: no 'domain_rules' in the answer"),
    (bounce(pattern="quota (exceeded"), ("malformed answer: GET /rules bounce_rules[1].pattern 'quota (exceeded' is not a valid "
                                         "regular expression: missing ), unterminated subpattern at position 6")),
    (bounce(failure_type=4), "malformed answer: GET /rules bounce_rules[1].failure_type: expected 1 (soft), 2 (hard) or 3"),
    (bounce(failure_reason=42), "malformed answer: GET /rules bounce_rules[1].failure_reason: expected one of"),
    (bounce(priority="high"), "malformed answer: GET /rules bounce_rules[1].priority: expected an integer, got 'high'"),
    ({**RULES, "mx_rules": [{"mx_mask": 3}]}, "malformed answer: GET /rules mx_rules[0].mx_mask"),
    ({**RULES, "domain_rules": [{"domain": "a.example"}, {"domain": "a.example"}]},
     "domain_rules[1]: domain 'a.example' already"),
], ids=["not-json", "list", "missing-list", "bad-regex", "failure-type", "failure-reason", "priority", "mx-mask", "dup-domain"])
def test_a_malformed_answer_fails_the_run_and_writes_nothing(account, current_rules, https_server, body, reason):
    https_server.expect_request("/api/rules").respond_with_data(body if isinstance(body, str) else json.dumps(body),
                                                               content_type="application/json")
    before = snapshot()

    result = run()

    assert result.status == RunStatus.FAILED
    assert reason in result.reason
    assert snapshot() == before


def test_401_fails_the_run_and_the_token_appears_nowhere(account, current_rules, https_server, waits):
    https_server.expect_request("/api/rules").respond_with_data(f"unknown token {TOKEN}", status=401)
    before = snapshot()

    result = run()

    assert result.status == RunStatus.FAILED
    assert result.reason == "deliverability: GET rules answered 401: unknown token [token]"
    assert waits == []
    assert snapshot() == before
    assert not WorkflowLog.objects.filter(message__contains=TOKEN).exists()
    assert not ActivityRun.objects.filter(message__contains=TOKEN).exists()


@pytest.mark.postgres
def test_a_pattern_postgresql_cannot_compile_is_refused(account, current_rules, https_server):
    https_server.expect_request("/api/rules").respond_with_json(bounce(pattern=r"(?P<user>\w+)@ unknown"))  # Python-only syntax
    before = snapshot()

    result = run()

    assert result.status == RunStatus.FAILED
    assert result.reason.startswith("malformed answer: GET /rules bounce_rules[1].pattern '(?P<user>\\\\w+)@ unknown' "
                                    "is not a valid PostgreSQL regular expression: invalid regular expression")
    assert snapshot() == before


# -- skips ------------------------------------------------------------------------------------------
def test_no_enabled_account_skips_the_run(account, current_rules, https_server):
    account.enabled = False
    account.save()
    before = snapshot()

    result = run()

    assert (result.status, result.reason) == (RunStatus.SKIPPED, "no enabled deliverability account")
    assert https_server.log == []
    assert snapshot() == before


# -- the next updateDeliveryExecInfo uses the new rules ------------------------------------------
@pytest.mark.skipif(not update_delivery_exec_info.definition.implemented, reason="updateDeliveryExecInfo is not implemented")
def test_update_delivery_exec_info_qualifies_bounces_with_the_new_rules(account, current_rules, https_server):
    text = "552 5.2.2 mailbox quota exceeded for this recipient"
    first = SendingFeedbackFactory(outcome="bounce", error_text=text).delivery_log
    exec_info = commands.run_now(update_delivery_exec_info.WORKFLOW_ID, actor="test", sync=True)
    assert exec_info.status == RunStatus.SUCCEEDED, exec_info.reason
    first.refresh_from_db()
    # Still the old "quota" rule's qualification.
    assert (first.status, first.failure_type, first.failure_reason) == (LogStatus.FAILED, HARD, FailureReason.REFUSED)

    https_server.expect_request("/api/rules").respond_with_json(RULES)
    assert run().status == RunStatus.SUCCEEDED
    second = SendingFeedbackFactory(outcome="bounce", error_text=text,
                                    delivery_log=DeliveryLogFactory(address="other@example.net")).delivery_log
    exec_info = commands.run_now(update_delivery_exec_info.WORKFLOW_ID, actor="test", sync=True)

    assert exec_info.status == RunStatus.SUCCEEDED, exec_info.reason
    second = DeliveryLog.objects.get(pk=second.pk)
    assert (second.status, second.failure_type, second.failure_reason) == (LogStatus.FAILED, SOFT, FailureReason.MAILBOX_FULL)
